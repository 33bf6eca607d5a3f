#!/usr/bin/env python3
"""Rebuild train_demo.py's stage checkpoints from a finished demo bundle (the reverse of export_demo.py).

    import_demo.py --bundle models/demo --work WORK [--check-only]

Writes into WORK (train_demo.py's work directory):
  tokenizer/            the bundle's tokenizer.json / tokenizer_config.json
  vision_stage.pt       {"backbone": VisionBackbone state, "imported": bundle}   (no fact heads:
                        they are not part of the bundle)
  speech_stage.pt       {"backbone": SpeechBackbone state, "imported": bundle}
  names_stage.pt        {"decoder", "config", "vision_proj", "speech_proj", "step": "imported"}, the
                        last decoder stage, from which later stages (structured_stage.pt) fine-tune

and proves the reconstruction: every torch module is run beside the bundle's ONNX graph (plain
onnxruntime, CPU) on the same inputs, and the script fails unless the outputs agree (max abs diff
under 1e-4; it prints the figures, ~1e-6):
  vision     random pixels and the six demo frames through ORT-GenAI's own processor
  speech     random log-mel and a demo question through ORT-GenAI's processor
  embedding  ids with image / audio placeholders
  decoder    logits and present keys/values of a 40-token prompt

How the graphs map back:
  vision.onnx / speech.onnx  torch.onnx.export (eval mode) folded each BatchNorm into the Conv
      before it (Conv weight and bias = conv * gamma / sqrt(var + eps), beta - mean * ...). The Conv
      nodes are read in graph order (= module order); the BatchNorm behind each becomes the identity
      plus the folded bias (weight 1, mean 0, var 1 - eps, bias = the Conv's bias), which is the same
      function. The pad vectors are the [1, 128] constants the graphs Expand; speech's attention
      score weight is the [128, 1] MatMul constant (= att.weight transposed).
  decoder.onnx (ORT-GenAI builder, onnxruntime_genai/models/builder.py, Phi3 path):
      model.layers.N.attn.qkv_proj.MatMul.weight [H, (nh + 2 nkv) hd]  = qkv_proj.weight.T (fused as HF's)
      model.layers.N.attn.o_proj.MatMul.weight                          = o_proj.weight.T
      model.layers.N.mlp.gate_proj / up_proj .MatMul.weight [H, I]      = the halves of HF's fused
                                                                          gate_up_proj.weight, transposed
      model.layers.N.mlp.down_proj.MatMul.weight                        = down_proj.weight.T
      model.layers.N.input_layernorm / post_attention_layernorm.weight  = as is
      model.layers.<num_layers>.final_norm_layernorm.weight             = model.norm.weight
      lm_head.MatMul.weight                                             = lm_head.weight.T
      cos_cache / sin_cache                                             = rope of rope_theta (checked)
  embedding.onnx  `table` = the decoder's embed_tokens.weight (the builder excludes the embeddings).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo_model import (DECODER, HIDDEN, Embedding, Phi3Decoder, SpeechBackbone, SpeechEncoder,  # noqa: E402
                        SpeechProjector, VisionBackbone, VisionEncoder, VisionProjector, rope_cos_sin)

REPO = Path(__file__).resolve().parents[2]
TOL = 1e-4


def inits(model) -> dict:
    from onnx import numpy_helper
    return {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in model.graph.initializer}


def conv_params(model, w: dict) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(w[n.input[1]], w[n.input[2]]) for n in model.graph.node if n.op_type == "Conv"]


def const_by_op(model, w: dict, op: str, shape: list[int]) -> torch.Tensor:
    found = [w[i] for n in model.graph.node if n.op_type == op for i in n.input
             if i in w and list(w[i].shape) == shape]
    assert len(found) == 1, f"{op} constant of shape {shape}: found {len(found)}"
    return found[0]


def load_conv_bn(seq: torch.nn.Sequential, weight: torch.Tensor, bias: torch.Tensor):
    """A conv_bn block (Conv without bias, BatchNorm, ReLU) from a BN-folded Conv."""
    conv, bn = seq[0], seq[1]
    assert conv.weight.shape == weight.shape, (conv.weight.shape, weight.shape)
    with torch.no_grad():
        conv.weight.copy_(weight)
        bn.weight.fill_(1.0)
        bn.bias.copy_(bias)
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0 - bn.eps)


def import_vision(path: Path) -> VisionEncoder:
    import onnx
    m = onnx.load(str(path))
    w = inits(m)
    bb, pj = VisionBackbone(), VisionProjector()
    convs = conv_params(m, w)
    assert len(convs) == len(bb.net), f"{path}: {len(convs)} Conv nodes, the backbone has {len(bb.net)}"
    for seq, (cw, cb) in zip(bb.net, convs):
        load_conv_bn(seq, cw, cb)
    with torch.no_grad():
        bb.fc[0].weight.copy_(w["backbone.fc.0.weight"])
        bb.fc[0].bias.copy_(w["backbone.fc.0.bias"])
        pj.info.weight.copy_(w["proj.info.weight"])
        pj.info.bias.copy_(w["proj.info.bias"])
        pj.pad.copy_(const_by_op(m, w, "Expand", [1, HIDDEN])[0])
    return VisionEncoder(bb, pj).eval()


def import_speech(path: Path) -> SpeechEncoder:
    import onnx
    m = onnx.load(str(path))
    w = inits(m)
    bb, pj = SpeechBackbone(), SpeechProjector()
    convs = conv_params(m, w)
    assert len(convs) == len(bb.convs), f"{path}: {len(convs)} Conv nodes, the backbone has {len(bb.convs)}"
    for seq, (cw, cb) in zip(bb.convs, convs):
        load_conv_bn(seq, cw, cb)
    with torch.no_grad():
        bb.att.weight.copy_(const_by_op(m, w, "MatMul", [128, 1]).T)
        bb.att.bias.copy_(w["backbone.att.bias"])
        bb.fc[0].weight.copy_(w["backbone.fc.0.weight"])
        bb.fc[0].bias.copy_(w["backbone.fc.0.bias"])
        pj.info.weight.copy_(w["proj.info.weight"])
        pj.info.bias.copy_(w["proj.info.bias"])
        pj.mode.weight.copy_(w["proj.mode.weight"])
        pj.pad.copy_(const_by_op(m, w, "Expand", [1, HIDDEN])[0])
    return SpeechEncoder(bb, pj).eval()


def import_decoder(dec_path: Path, emb_path: Path, genai: dict) -> Phi3Decoder:
    import onnx
    w = inits(onnx.load(str(dec_path)))
    table = inits(onnx.load(str(emb_path)))["table"]
    d = genai["model"]["decoder"]
    c = dict(DECODER)
    c["vocab_size"] = table.shape[0]
    c["num_hidden_layers"] = d["num_hidden_layers"]
    c["num_attention_heads"] = d["num_attention_heads"]
    c["num_key_value_heads"] = d["num_key_value_heads"]
    c["hidden_size"] = d["hidden_size"]
    c["intermediate_size"] = w["model.layers.0.mlp.gate_proj.MatMul.weight"].shape[1]
    dec = Phi3Decoder(c)
    n = c["num_hidden_layers"]
    sd = {"model.embed_tokens.weight": table,
          "model.norm.weight": w[f"model.layers.{n}.final_norm_layernorm.weight"],
          "lm_head.weight": w["lm_head.MatMul.weight"].T}
    for i in range(n):
        p = f"model.layers.{i}"
        sd[f"{p}.input_layernorm.weight"] = w[f"{p}.input_layernorm.weight"]
        sd[f"{p}.post_attention_layernorm.weight"] = w[f"{p}.post_attention_layernorm.weight"]
        sd[f"{p}.self_attn.qkv_proj.weight"] = w[f"{p}.attn.qkv_proj.MatMul.weight"].T
        sd[f"{p}.self_attn.o_proj.weight"] = w[f"{p}.attn.o_proj.MatMul.weight"].T
        sd[f"{p}.mlp.gate_up_proj.weight"] = torch.cat([w[f"{p}.mlp.gate_proj.MatMul.weight"].T,
                                                        w[f"{p}.mlp.up_proj.MatMul.weight"].T], 0)
        sd[f"{p}.mlp.down_proj.weight"] = w[f"{p}.mlp.down_proj.MatMul.weight"].T
    dec.load_state_dict({k: v.contiguous() for k, v in sd.items()}, strict=True)
    # the rope the builder baked in must be the one the torch module computes
    hd = c["hidden_size"] // c["num_attention_heads"]
    cos, sin = rope_cos_sin(torch.arange(w["cos_cache"].shape[0]), hd, c["rope_theta"])
    rope_diff = max((cos[:, : hd // 2] - w["cos_cache"]).abs().max().item(),
                    (sin[:, : hd // 2] - w["sin_cache"]).abs().max().item())
    assert rope_diff < 1e-3, f"rope caches differ from rope_theta {c['rope_theta']}: {rope_diff}"
    return dec.eval()


# ---------------------------------------------------------------------------------------------
# Proof: torch vs ORT on the same inputs
# ---------------------------------------------------------------------------------------------
def ort_session(path: Path):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def report(name: str, a, b) -> float:
    a = a.detach().numpy() if isinstance(a, torch.Tensor) else a
    assert a.shape == b.shape, f"{name}: torch {a.shape} vs ORT {b.shape}"
    d = float(np.abs(a - b).max())
    print(f"  {name:48s} shape {str(tuple(b.shape)):18s} max |torch - ORT| = {d:.2e}  (max |ORT| {np.abs(b).max():.2f})")
    assert d < TOL, f"{name}: torch and ORT differ by {d}"
    return d


def processor_inputs(bundle: Path, images=None, audios=None, prompt=None):
    import onnxruntime_genai as og
    model = og.Model(str(bundle))
    proc = model.create_multimodal_processor()
    out = proc(prompt, images=og.Images.open(*images) if images else None,
               audios=og.Audios.open(*audios) if audios else None)
    return {k: out[k].as_numpy() for k in out.keys()} if hasattr(out, "keys") else out


@torch.no_grad()
def check(bundle: Path, venc, senc, dec, emb, seed: int):
    rng = np.random.default_rng(seed)
    print("vision.onnx")
    s = ort_session(bundle / "vision.onnx")
    pv = rng.uniform(-1, 1, (2, 3, 3, 448, 448)).astype(np.float32)
    mask = np.ones((2, 3, 32, 32), np.float32)
    mask[1, 2:, :, 16:] = 0
    sizes = np.array([[448, 896], [448, 448]], np.int64)
    ref = s.run(None, {"pixel_values": pv, "image_attention_mask": mask, "image_sizes": sizes})[0]
    report("random pixels, 2 images", venc(torch.from_numpy(pv), torch.from_numpy(mask), torch.from_numpy(sizes)), ref)
    frames = sorted((bundle / "frames").glob("*.jpg")) if (bundle / "frames").is_dir() else []
    import onnxruntime_genai as og
    model = og.Model(str(bundle))
    proc = model.create_multimodal_processor()
    for f in frames:
        inp = proc("<|user|><|image_1|>x<|end|><|assistant|>", images=og.Images.open(str(f)))
        feed = {k: inp[k].as_numpy() for k in ("pixel_values", "image_attention_mask", "image_sizes")}
        ref = s.run(None, feed)[0]
        report(f"frame {f.name}", venc(*(torch.from_numpy(feed[k]) for k in feed)), ref)

    print("speech.onnx")
    s = ort_session(bundle / "speech.onnx")
    mel = (rng.normal(9, 4, (2, 203, 80))).astype(np.float32)
    am = np.ones((2, 203), bool)
    am[1, 160:] = False
    asz = np.array([26, 20], np.int64)
    mode = np.array([2], np.int64)
    ref = s.run(None, {"audio_embeds": mel, "audio_attention_mask": am, "audio_sizes": asz,
                       "audio_projection_mode": mode})[0]
    report("random log-mel, 2 audios", senc(*(torch.from_numpy(x) for x in (mel, am, asz, mode))), ref)
    wavs = sorted((bundle / "audio").glob("*.wav")) if (bundle / "audio").is_dir() else []
    for f in wavs[:2]:
        inp = proc("<|user|><|audio_1|><|end|><|assistant|>", audios=og.Audios.open(str(f)))
        feed = {"audio_embeds": inp["audio_embeds"].as_numpy(),
                "audio_attention_mask": inp["audio_attention_mask"].as_numpy(),
                "audio_sizes": inp["audio_sizes"].as_numpy(),
                "audio_projection_mode": inp["audio_projection_mode"].as_numpy()}
        ref = s.run(None, feed)[0]
        report(f"audio {f.name}", senc(*(torch.from_numpy(feed[k]) for k in feed)), ref)

    print("embedding.onnx")
    s = ort_session(bundle / "embedding.onnx")
    ids = np.array([[1, 200010, 200010, 5, 200011, 7, 300, 639]], np.int64)
    img = rng.normal(size=(2, HIDDEN)).astype(np.float32)
    aud = rng.normal(size=(1, HIDDEN)).astype(np.float32)
    ref = s.run(None, {"input_ids": ids, "image_features": img, "audio_features": aud})[0]
    report("ids with placeholders", emb(*(torch.from_numpy(x) for x in (ids, img, aud))), ref)

    print("decoder.onnx")
    s = ort_session(bundle / "decoder.onnx")
    c = dec.c
    nkv, hd = c["num_key_value_heads"], c["hidden_size"] // c["num_attention_heads"]
    x = emb(torch.from_numpy(rng.integers(0, c["vocab_size"], (2, 40)).astype(np.int64)),
            torch.zeros(0, HIDDEN), torch.zeros(0, HIDDEN))
    feed = {"inputs_embeds": x.numpy(), "attention_mask": np.ones((2, 40), np.int64)}
    for i in range(c["num_hidden_layers"]):
        feed[f"past_key_values.{i}.key"] = np.zeros((2, nkv, 0, hd), np.float32)
        feed[f"past_key_values.{i}.value"] = np.zeros((2, nkv, 0, hd), np.float32)
    names = [o.name for o in s.get_outputs()]
    outs = dict(zip(names, s.run(None, feed)))
    logits, presents = dec(x)
    report("logits, 2 x 40 tokens", logits, outs["logits"])
    for i, (k, v) in enumerate(presents):
        report(f"present.{i}.key", k, outs[f"present.{i}.key"])
        report(f"present.{i}.value", v, outs[f"present.{i}.value"])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=REPO / "models/demo")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--check-only", action="store_true", help="prove the reconstruction, write nothing")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    genai = json.loads((a.bundle / "genai_config.json").read_text())
    venc = import_vision(a.bundle / "vision.onnx")
    senc = import_speech(a.bundle / "speech.onnx")
    dec = import_decoder(a.bundle / "decoder.onnx", a.bundle / "embedding.onnx", genai)
    emb = Embedding(dec.model.embed_tokens.weight).eval()
    check(a.bundle, venc, senc, dec, emb, a.seed)
    print("all graphs: torch == ORT within", TOL)
    if a.check_only:
        return
    a.work.mkdir(parents=True, exist_ok=True)
    tok = a.work / "tokenizer"
    tok.mkdir(exist_ok=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(a.bundle / f, tok / f)
    src = str(a.bundle)
    torch.save({"backbone": venc.backbone.state_dict(), "imported": src}, a.work / "vision_stage.pt")
    torch.save({"backbone": senc.backbone.state_dict(), "imported": src}, a.work / "speech_stage.pt")
    torch.save({"decoder": dec.state_dict(), "config": dec.c, "vision_proj": venc.proj.state_dict(),
                "speech_proj": senc.proj.state_dict(), "step": "imported", "imported": src},
               a.work / "names_stage.pt")
    print(f"wrote {a.work}/tokenizer, vision_stage.pt, speech_stage.pt, names_stage.pt")


if __name__ == "__main__":
    main()
