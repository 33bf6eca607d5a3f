#!/usr/bin/env python3
"""Makes the small, deliberately wrong decoder graphs under tests/fixtures/bad-graphs/.

Each graph has the I/O of the tiny Qwen2 test decoder (models/tiny-qwen2) except for one defect,
so that gemba's bundle validation can be shown to name it precisely (tests/bad_bundles.rs). The
graphs compute nothing useful (zeros and identities): they are loaded, never run.

    .venv/bin/python scripts/models/make_bad_graphs.py    (needs the `onnx` package)
"""
from pathlib import Path

import onnx
from onnx import TensorProto, helper

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "bad-graphs"
LAYERS, KV_HEADS, HEAD, VOCAB = 4, 2, 16, 640


def decoder(ids_type=TensorProto.INT64, past_rank=4, drop_output=None, extra_input=None):
    inputs = [
        helper.make_tensor_value_info("input_ids", ids_type, ["batch_size", "sequence_length"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch_size", "total_sequence_length"]),
    ]
    outputs, nodes = [], []
    past_shape = ["batch_size", KV_HEADS, "past_sequence_length", HEAD][:past_rank]
    for i in range(LAYERS):
        for kind in ("key", "value"):
            past, present = f"past_key_values.{i}.{kind}", f"present.{i}.{kind}"
            inputs.append(helper.make_tensor_value_info(past, TensorProto.FLOAT, past_shape))
            if present == drop_output:
                continue
            nodes.append(helper.make_node("Identity", [past], [present]))
            outputs.append(helper.make_tensor_value_info(present, TensorProto.FLOAT, past_shape))
    if extra_input:
        inputs.append(helper.make_tensor_value_info(extra_input, TensorProto.INT64, ["batch_size", "sequence_length"]))
    # logits = zeros([batch, seq, VOCAB])
    nodes += [
        helper.make_node("Shape", ["input_ids"], ["ids_shape"]),
        helper.make_node("Constant", [], ["vocab"], value=helper.make_tensor("v", TensorProto.INT64, [1], [VOCAB])),
        helper.make_node("Concat", ["ids_shape", "vocab"], ["logits_shape"], axis=0),
        helper.make_node("ConstantOfShape", ["logits_shape"], ["logits"],
                         value=helper.make_tensor("z", TensorProto.FLOAT, [1], [0.0])),
    ]
    outputs.insert(0, helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch_size", "sequence_length", VOCAB]))
    graph = helper.make_graph(nodes, "bad_decoder", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="gemba-bad-graphs")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    variants = {
        "wrong_dtype.onnx": dict(ids_type=TensorProto.FLOAT),
        "wrong_rank.onnx": dict(past_rank=3),
        "missing_present.onnx": dict(drop_output="present.3.value"),
        "extra_input.onnx": dict(extra_input="token_type_ids"),
    }
    for name, kw in variants.items():
        onnx.save(decoder(**kw), OUT / name)
        print("wrote", OUT / name)


if __name__ == "__main__":
    main()
