"""Build a minimal phi4mm bundle that ORT-GenAI loads, for the pre-processing conformance test.

The graphs are placeholders (they load and touch every input, nothing more); what the test
exercises is ORT-GenAI's multimodal *processor*, which needs the bundle's genai_config.json,
vision_processor.json / speech_processor.json (the Phi-4-multimodal values, as in
onnxruntime-extensions' test/data/models/phi-4), the session input types, and a tokenizer in
which <|endoftext10|> / <|endoftext11|> are ids 200010 / 200011.

    python make_processor_bundle.py OUT_DIR [--float-type f32|f16|bf16]
        (the element type of the pixel_values, image_attention_mask and audio_embeds inputs)
"""
import argparse
import json
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto as TP
from onnx import helper as oh
from onnx import numpy_helper as nh
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

# Phi-4-multimodal's processor settings, the same the demo bundle ships
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts", "models"))
from demo_common import SPEECH_PROCESSOR, VISION_PROCESSOR  # noqa: E402

H, V, KV, HD = 16, 600, 1, 16


def save(out, graph, name):
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, os.path.join(out, name))


def weight(name, shape, rng):
    return nh.from_array(rng.standard_normal(shape).astype(np.float32) * 0.02, name)


def build_graphs(out, float_in):
    rng = np.random.default_rng(0)
    zero = nh.from_array(np.zeros((), np.float32), "zero")
    axis1 = nh.from_array(np.array([1], np.int64), "ax1")
    col = nh.from_array(np.array([-1, 1], np.int64), "col")
    save(out, oh.make_graph(
        [oh.make_node("MatMul", ["inputs_embeds", "Wo"], ["l0"]),
         oh.make_node("ReduceSum", ["attention_mask"], ["ms"], keepdims=0),
         oh.make_node("Cast", ["ms"], ["msf"], to=TP.FLOAT),
         oh.make_node("Mul", ["msf", "zero"], ["mz"]),
         oh.make_node("Add", ["l0", "mz"], ["logits"]),
         oh.make_node("MatMul", ["inputs_embeds", "Wk"], ["k0"]),
         oh.make_node("Unsqueeze", ["k0", "ax1"], ["k1"]),
         oh.make_node("Concat", ["past_key_values.0.key", "k1"], ["present.0.key"], axis=2),
         oh.make_node("Concat", ["past_key_values.0.value", "k1"], ["present.0.value"], axis=2)],
        "decoder",
        [oh.make_tensor_value_info("inputs_embeds", TP.FLOAT, ["b", "s", H]),
         oh.make_tensor_value_info("attention_mask", TP.INT64, ["b", "t"]),
         oh.make_tensor_value_info("past_key_values.0.key", TP.FLOAT, ["b", KV, "p", HD]),
         oh.make_tensor_value_info("past_key_values.0.value", TP.FLOAT, ["b", KV, "p", HD])],
        [oh.make_tensor_value_info("logits", TP.FLOAT, ["b", "s", V]),
         oh.make_tensor_value_info("present.0.key", TP.FLOAT, ["b", KV, "t", HD]),
         oh.make_tensor_value_info("present.0.value", TP.FLOAT, ["b", KV, "t", HD])],
        [weight("Wo", (H, V), rng), weight("Wk", (H, HD), rng), zero, axis1]), "text.onnx")
    save(out, oh.make_graph(
        [oh.make_node("Mod", ["input_ids", "vocab"], ["ids"]),
         oh.make_node("Gather", ["E", "ids"], ["e0"]),
         oh.make_node("ReduceSum", ["image_features"], ["is"], keepdims=0),
         oh.make_node("ReduceSum", ["audio_features"], ["as"], keepdims=0),
         oh.make_node("Add", ["is", "as"], ["s0"]), oh.make_node("Mul", ["s0", "zero"], ["s1"]),
         oh.make_node("Add", ["e0", "s1"], ["inputs_embeds"])],
        "embedding",
        [oh.make_tensor_value_info("input_ids", TP.INT64, ["b", "s"]),
         oh.make_tensor_value_info("image_features", TP.FLOAT, ["n", H]),
         oh.make_tensor_value_info("audio_features", TP.FLOAT, ["m", H])],
        [oh.make_tensor_value_info("inputs_embeds", TP.FLOAT, ["b", "s", H])],
        [weight("E", (V, H), rng), nh.from_array(np.array(V, np.int64), "vocab"), zero]), "embedding.onnx")
    save(out, oh.make_graph(
        [oh.make_node("Cast", ["pixel_values"], ["pv"], to=TP.FLOAT),
         oh.make_node("Cast", ["image_attention_mask"], ["am0"], to=TP.FLOAT),
         oh.make_node("ReduceMean", ["pv"], ["pm"], axes=[2, 3, 4], keepdims=0),
         oh.make_node("ReduceMean", ["am0"], ["am"], axes=[2, 3], keepdims=0),
         oh.make_node("Cast", ["image_sizes"], ["isf"], to=TP.FLOAT),
         oh.make_node("ReduceSum", ["isf"], ["iss"], keepdims=0),
         oh.make_node("Mul", ["iss", "zero"], ["isz"]),
         oh.make_node("Add", ["pm", "am"], ["pa"]), oh.make_node("Add", ["pa", "isz"], ["pb"]),
         oh.make_node("Reshape", ["pb", "col"], ["pc"]),
         oh.make_node("MatMul", ["pc", "Wv"], ["image_features"])],
        "vision",
        [oh.make_tensor_value_info("pixel_values", float_in, ["n", "c", 3, 448, 448]),
         oh.make_tensor_value_info("image_attention_mask", float_in, ["n", "c", 32, 32]),
         oh.make_tensor_value_info("image_sizes", TP.INT64, ["n", 2])],
        [oh.make_tensor_value_info("image_features", TP.FLOAT, ["t", H])],
        [weight("Wv", (1, H), rng), col, zero]), "vision.onnx")
    save(out, oh.make_graph(
        [oh.make_node("Cast", ["audio_embeds"], ["ae"], to=TP.FLOAT),
         oh.make_node("ReduceMean", ["ae"], ["a0"], axes=[2], keepdims=0),
         oh.make_node("Cast", ["audio_attention_mask"], ["mf"], to=TP.FLOAT),
         oh.make_node("Add", ["a0", "mf"], ["a1"]),
         oh.make_node("Cast", ["audio_sizes"], ["sf"], to=TP.FLOAT),
         oh.make_node("Cast", ["audio_projection_mode"], ["pf"], to=TP.FLOAT),
         oh.make_node("ReduceSum", ["sf"], ["ss"], keepdims=0),
         oh.make_node("ReduceSum", ["pf"], ["ps"], keepdims=0),
         oh.make_node("Add", ["ss", "ps"], ["s2"]), oh.make_node("Mul", ["s2", "zero"], ["s3"]),
         oh.make_node("Add", ["a1", "s3"], ["a2"]),
         oh.make_node("Reshape", ["a2", "col"], ["a3"]),
         oh.make_node("MatMul", ["a3", "Wa"], ["audio_features"])],
        "speech",
        [oh.make_tensor_value_info("audio_embeds", float_in, ["n", "t", 80]),
         oh.make_tensor_value_info("audio_attention_mask", TP.BOOL, ["n", "t"]),
         oh.make_tensor_value_info("audio_sizes", TP.INT64, ["n"]),
         oh.make_tensor_value_info("audio_projection_mode", TP.INT64, [1])],
        [oh.make_tensor_value_info("audio_features", TP.FLOAT, ["m", H])],
        [weight("Wa", (1, H), rng), col, zero]), "speech.onnx")


def build_tokenizer(out):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["Describe the image and the audio clip.", "What is shown? Transcribe the audio.",
              "the quick brown fox jumps over the lazy dog"] * 50
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    spec = json.loads(tok.to_str())
    # Hugging Face tokenizers renumbers added tokens that leave a gap after the vocabulary, so
    # fill it: the placeholders must really be ids 200010 / 200011.
    vocab = spec["model"]["vocab"]
    for i in range(len(vocab), 200010):
        vocab[f"<|filler_{i}|>"] = i
    for tid, content in [(200010, "<|endoftext10|>"), (200011, "<|endoftext11|>"),
                         (200012, "<|assistant|>"), (200013, "<|end|>"), (200014, "<|user|>")]:
        spec["added_tokens"].append({"id": tid, "content": content, "single_word": False, "lstrip": False,
                                     "rstrip": False, "normalized": False, "special": True})
    with open(os.path.join(out, "tokenizer.json"), "w") as f:
        json.dump(spec, f)
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "GPT2Tokenizer", "bos_token": "<|endoftext|>",
                   "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "add_bos_token": False,
                   "add_eos_token": False, "model_max_length": 8192}, f)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--float-type", choices=["f32", "f16", "bf16"], default="f32")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    build_graphs(args.out, {"f32": TP.FLOAT, "f16": TP.FLOAT16, "bf16": TP.BFLOAT16}[args.float_type])
    build_tokenizer(args.out)
    for name, spec in [("vision_processor.json", VISION_PROCESSOR), ("speech_processor.json", SPEECH_PROCESSOR)]:
        with open(os.path.join(args.out, name), "w") as f:
            json.dump(spec, f, indent=2)
    # Every id inside the vocabulary: `gemba preprocess` opens the bundle with the checks
    # `gemba run` applies (an eos id past vocab_size is refused there).
    config = {
        "model": {
            "type": "phi4mm", "bos_token_id": 0, "eos_token_id": [0], "pad_token_id": 0,
            "vocab_size": V, "context_length": 16384,
            "decoder": {"filename": "text.onnx", "session_options": {"provider_options": []},
                        "head_size": HD, "hidden_size": H, "num_attention_heads": 1, "num_hidden_layers": 1,
                        "num_key_value_heads": KV,
                        "inputs": {"inputs_embeds": "inputs_embeds", "attention_mask": "attention_mask",
                                   "past_key_names": "past_key_values.%d.key",
                                   "past_value_names": "past_key_values.%d.value"},
                        "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                                    "present_value_names": "present.%d.value"}},
            "embedding": {"filename": "embedding.onnx",
                          "inputs": {"input_ids": "input_ids", "image_features": "image_features",
                                     "audio_features": "audio_features"},
                          "outputs": {"inputs_embeds": "inputs_embeds"}},
            "vision": {"filename": "vision.onnx", "config_filename": "vision_processor.json",
                       "inputs": {"pixel_values": "pixel_values", "attention_mask": "image_attention_mask",
                                  "image_sizes": "image_sizes"},
                       "outputs": {"image_features": "image_features"}},
            "speech": {"filename": "speech.onnx", "config_filename": "speech_processor.json",
                       "inputs": {"audio_embeds": "audio_embeds", "attention_mask": "audio_attention_mask",
                                  "audio_sizes": "audio_sizes", "audio_projection_mode": "audio_projection_mode"},
                       "outputs": {"audio_features": "audio_features"}}},
        "search": {"do_sample": False, "max_length": 16384, "num_beams": 1,
                   "past_present_share_buffer": False, "top_k": 1}}
    with open(os.path.join(args.out, "genai_config.json"), "w") as f:
        json.dump(config, f, indent=2)


if __name__ == "__main__":
    main()
