#!/usr/bin/env python3
"""Assemble gemba's demo model as an ORT-GenAI `phi4mm` bundle.

    export_demo.py --untrained OUT            random weights (same graphs, same files) - a loadable
                                              phi4mm bundle for pre-processing / plumbing tests
    export_demo.py --work WORK --out OUT      from train_demo.py's checkpoints in WORK
                   [--decoder CKPT]           (a given decoder checkpoint in WORK, e.g. mix_demo.py's)

Bundle files:
  genai_config.json       type phi4mm: vision, speech, embedding, decoder sections
  vision.onnx             pixel_values, image_attention_mask, image_sizes -> image_features
  speech.onnx             audio_embeds, audio_attention_mask, audio_sizes, audio_projection_mode -> audio_features
  embedding.onnx          input_ids, image_features, audio_features -> inputs_embeds
  decoder.onnx            Phi3 decoder from ORT-GenAI's builder (exclude_embeds=true), weights inline
  vision_processor.json   Phi-4-multimodal's image processor settings (ORT-extensions format)
  speech_processor.json   Phi-4-multimodal's audio feature extraction settings
  tokenizer.json, tokenizer_config.json

The decoder is HF Phi3ForCausalLM, the family of Phi-4-multimodal's own language model, so the
decoder graph has the same operators and I/O layout as a real Phi-4-multimodal export
(GroupQueryAttention, no position_ids input, past/present KV per layer).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo_common import (SPECIAL_TOKENS, SPEECH_PROCESSOR, VISION_PROCESSOR, VOCAB_SIZE,  # noqa: E402
                         build_tokenizer, special_ids)
from demo_model import (DECODER, HIDDEN, Embedding, Phi3Decoder, SpeechBackbone, SpeechEncoder,  # noqa: E402
                        SpeechProjector, VisionBackbone, VisionEncoder, VisionProjector, hf_config)

OPSET = 17
CONTEXT = DECODER["max_position_embeddings"]



def set_hidden_dim(path: Path, output: str):
    """The tracer leaves the feature width symbolic; state it (HIDDEN) so readers of the graph's
    metadata see [tokens, 128] like the embedding graph's matching inputs."""
    import onnx
    m = onnx.load(str(path))
    for o in m.graph.output:
        if o.name == output:
            d = o.type.tensor_type.shape.dim[1]
            d.ClearField("dim_param")
            d.dim_value = HIDDEN
    onnx.checker.check_model(m)
    onnx.save(m, str(path))


def export_vision(enc: VisionEncoder, path: Path):
    enc.eval()
    pv = torch.randn(2, 3, 3, 448, 448)
    mask = torch.ones(2, 3, 32, 32)
    sizes = torch.tensor([[448, 896], [448, 448]], dtype=torch.int64)
    torch.onnx.export(enc, (pv, mask, sizes), str(path), dynamo=False, opset_version=OPSET,
                      input_names=["pixel_values", "image_attention_mask", "image_sizes"],
                      output_names=["image_features"],
                      dynamic_axes={"pixel_values": {0: "num_images", 1: "num_crops"},
                                    "image_attention_mask": {0: "num_images", 1: "num_crops"},
                                    "image_sizes": {0: "num_images"},
                                    "image_features": {0: "num_image_tokens"}})
    set_hidden_dim(path, "image_features")


def export_speech(enc: SpeechEncoder, path: Path):
    enc.eval()
    mel = torch.randn(2, 203, 80) + 9
    mask = torch.ones(2, 203, dtype=torch.bool)
    sizes = torch.tensor([26, 20], dtype=torch.int64)
    mode = torch.tensor([2], dtype=torch.int64)
    torch.onnx.export(enc, (mel, mask, sizes, mode), str(path), dynamo=False, opset_version=OPSET,
                      input_names=["audio_embeds", "audio_attention_mask", "audio_sizes", "audio_projection_mode"],
                      output_names=["audio_features"],
                      dynamic_axes={"audio_embeds": {0: "num_audios", 1: "num_frames"},
                                    "audio_attention_mask": {0: "num_audios", 1: "num_frames"},
                                    "audio_sizes": {0: "num_audios"},
                                    "audio_features": {0: "num_audio_tokens"}})
    set_hidden_dim(path, "audio_features")


def export_embedding(emb: Embedding, path: Path):
    emb.eval()
    ids = torch.tensor([[1, 200010, 200010, 5, 200011, 7]], dtype=torch.int64)
    img = torch.randn(2, HIDDEN)
    aud = torch.randn(1, HIDDEN)
    torch.onnx.export(emb, (ids, img, aud), str(path), dynamo=False, opset_version=OPSET,
                      input_names=["input_ids", "image_features", "audio_features"],
                      output_names=["inputs_embeds"],
                      dynamic_axes={"input_ids": {0: "batch_size", 1: "sequence_length"},
                                    "image_features": {0: "num_image_tokens"},
                                    "audio_features": {0: "num_audio_tokens"},
                                    "inputs_embeds": {0: "batch_size", 1: "sequence_length"}})


def build_decoder(dec: Phi3Decoder, tok_dir: Path, out: Path, work: Path) -> dict:
    """HF Phi3 dir -> ORT-GenAI builder (fp32, cpu, exclude_embeds) -> decoder.onnx; returns its genai_config."""
    from transformers import Phi3ForCausalLM
    import onnx
    ids = special_ids(tok_dir)
    hf_dir, b_out = work / "hf", work / "built"
    cfg = hf_config(dec.c, eos=(ids["<|end|>"], ids["<|endoftext|>"]), pad=ids["<|endoftext|>"],
                    bos=ids["<|endoftext|>"])
    hf = Phi3ForCausalLM(cfg)
    missing, unexpected = hf.load_state_dict(dec.state_dict(), strict=False)
    assert not unexpected and all("rotary" in m for m in missing), (missing, unexpected)
    hf.save_pretrained(hf_dir)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tok_dir / f, hf_dir / f)
    subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir), "-o", str(b_out),
                    "-p", "fp32", "-e", "cpu", "-c", str(work / "cache"), "--extra_options", "exclude_embeds=true"],
                   check=True, stdout=subprocess.DEVNULL)
    model = onnx.load(str(b_out / "model.onnx"), load_external_data=True)
    onnx.save(model, str(out / "decoder.onnx"), save_as_external_data=False)
    return json.loads((b_out / "genai_config.json").read_text())


def genai_config(built: dict, tok_dir: Path) -> dict:
    ids = special_ids(tok_dir)
    d = built["model"]["decoder"]
    decoder = {
        "session_options": d.get("session_options", {"log_id": "onnxruntime-genai", "provider_options": []}),
        "filename": "decoder.onnx",
        "head_size": d["head_size"],
        "hidden_size": d["hidden_size"],
        "inputs": d["inputs"],
        "outputs": d["outputs"],
        "num_attention_heads": d["num_attention_heads"],
        "num_hidden_layers": d["num_hidden_layers"],
        "num_key_value_heads": d["num_key_value_heads"],
    }
    assert "inputs_embeds" in decoder["inputs"] and "input_ids" not in decoder["inputs"], decoder["inputs"]
    return {
        "model": {
            "bos_token_id": ids["<|endoftext|>"],
            "context_length": CONTEXT,
            "decoder": decoder,
            "embedding": {
                "filename": "embedding.onnx",
                "inputs": {"input_ids": "input_ids", "image_features": "image_features",
                           "audio_features": "audio_features"},
                "outputs": {"inputs_embeds": "inputs_embeds"},
            },
            "vision": {
                "filename": "vision.onnx",
                "config_filename": "vision_processor.json",
                "inputs": {"pixel_values": "pixel_values", "attention_mask": "image_attention_mask",
                           "image_sizes": "image_sizes"},
                "outputs": {"image_features": "image_features"},
            },
            "speech": {
                "filename": "speech.onnx",
                "config_filename": "speech_processor.json",
                "inputs": {"audio_embeds": "audio_embeds", "attention_mask": "audio_attention_mask",
                           "audio_sizes": "audio_sizes", "audio_projection_mode": "audio_projection_mode"},
                "outputs": {"audio_features": "audio_features"},
            },
            "eos_token_id": [ids["<|end|>"], ids["<|endoftext|>"]],
            "pad_token_id": ids["<|endoftext|>"],
            "type": "phi4mm",
            "vocab_size": VOCAB_SIZE,
        },
        "search": {
            "diversity_penalty": 0.0, "do_sample": False, "early_stopping": True, "length_penalty": 1.0,
            "max_length": CONTEXT, "min_length": 0, "no_repeat_ngram_size": 0, "num_beams": 1,
            "num_return_sequences": 1, "past_present_share_buffer": True, "repetition_penalty": 1.0,
            "temperature": 1.0, "top_k": 1, "top_p": 1.0,
        },
    }


def assemble(out: Path, tok_dir: Path, venc: VisionEncoder, senc: SpeechEncoder, dec: Phi3Decoder):
    out.mkdir(parents=True, exist_ok=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        if tok_dir != out:
            shutil.copy(tok_dir / f, out / f)
    with tempfile.TemporaryDirectory() as td:
        built = build_decoder(dec, tok_dir, out, Path(td))
    export_vision(venc, out / "vision.onnx")
    export_speech(senc, out / "speech.onnx")
    export_embedding(Embedding(dec.model.embed_tokens.weight), out / "embedding.onnx")
    (out / "vision_processor.json").write_text(json.dumps(VISION_PROCESSOR, indent=2) + "\n")
    (out / "speech_processor.json").write_text(json.dumps(SPEECH_PROCESSOR, indent=2) + "\n")
    (out / "genai_config.json").write_text(json.dumps(genai_config(built, tok_dir), indent=4) + "\n")
    for f in sorted(out.iterdir()):
        if f.is_file():
            print(f"  {f.name:24s} {f.stat().st_size / 1e6:7.2f} MB")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--untrained", type=Path, help="write a random-weight bundle here")
    ap.add_argument("--work", type=Path, help="train_demo.py work dir (checkpoints, tokenizer)")
    ap.add_argument("--out", type=Path, help="bundle directory (with --work)")
    ap.add_argument("--decoder", help="decoder checkpoint in WORK to export (default: the last stage that has run)")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--loc-threshold", type=float, default=0.3, help="version 3: centre score an object must reach")
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    if a.untrained:
        out = a.untrained
        out.mkdir(parents=True, exist_ok=True)
        build_tokenizer(out, seed=a.seed)
        dec = Phi3Decoder()
        venc = VisionEncoder()
        senc = SpeechEncoder()
        # BatchNorm running stats at their defaults are fine for a random bundle
        assemble(out, out, venc, senc, dec)
        return
    if not (a.work and a.out):
        ap.error("give --untrained OUT, or --work WORK --out OUT")
    # the last decoder stage that has run: structured answers, name copying, or the base decoder
    final = a.work / a.decoder if a.decoder else next(
        p for p in (a.work / "regions_stage.pt", a.work / "structured3_stage.pt", a.work / "structured2_stage.pt", a.work / "structured_stage.pt",
                    a.work / "names_stage.pt", a.work / "decoder_stage.pt") if p.exists())
    print(f"decoder from {final.name}")
    ck = torch.load(final, map_location="cpu")
    dec = Phi3Decoder(ck.get("config", DECODER))
    dec.load_state_dict(ck["decoder"])
    vb, vp, sb, sp = VisionBackbone(), VisionProjector(), SpeechBackbone(), SpeechProjector()
    vb.load_state_dict(torch.load(a.work / "vision_stage.pt", map_location="cpu")["backbone"])
    sb.load_state_dict(torch.load(a.work / "speech_stage.pt", map_location="cpu")["backbone"])
    if "vision_last" in ck:
        # train_regions.py vfc: the backbone's last two convolutions and last layer, retrained under
        # the frozen decoder
        vb.net[5].load_state_dict(ck["vision_last"]["conv14"])
        vb.net[6].load_state_dict(ck["vision_last"]["conv"])
        vb.fc.load_state_dict(ck["vision_last"]["fc"])
        print("vision: last two convolutions and last layer from the decoder checkpoint (vfc)")
    vp.load_state_dict(ck["vision_proj"])
    sp.load_state_dict(ck["speech_proj"])
    venc = VisionEncoder(vb, vp)
    if "locrows" in ck:
        # version 3: the localisation head (train_regions.py loc) and the region rows
        from tokenizers import Tokenizer
        from demo_model import LocHead, VisionEncoderV3
        from train_regions_dec import make_locrows
        head = LocHead()
        head.load_state_dict(torch.load(a.work / "loc_stage.pt", map_location="cpu")["head"])
        rows = make_locrows(Tokenizer.from_file(str(a.work / "tokenizer" / "tokenizer.json")))
        rows.load_state_dict(ck["locrows"])
        probe = torch.load(a.work / "count_probe.pt", map_location="cpu")
        venc = VisionEncoderV3(vb, vp, head, rows, dec.model.embed_tokens.weight, a.loc_threshold,
                               {"weight": probe["weight"], "bias": probe["bias"]})
        print(f"vision: version 3 (region rows, threshold {a.loc_threshold})")
    a.out.mkdir(parents=True, exist_ok=True)
    assemble(a.out, a.work / "tokenizer", venc, SpeechEncoder(sb, sp), dec)


if __name__ == "__main__":
    main()
