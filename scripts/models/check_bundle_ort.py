#!/usr/bin/env python3
"""Run a text bundle's decoder with plain ONNX Runtime (no ORT-GenAI) and check its greedy answers.

Why: gemba runs bundles on ONNX Runtime down to 1.23.2 (its floor), while the ORT-GenAI builder
targets the newest release. This script shows a bundle's graph loads and decodes correctly in
whichever `onnxruntime` comes first on sys.path, e.g. an older one installed aside:

  pip install --target /tmp/ort1232 onnxruntime==1.23.2 --no-deps
  PYTHONPATH=/tmp/ort1232 python scripts/models/check_bundle_ort.py models/tiny-qwen2/fp32

  python scripts/models/check_bundle_ort.py BUNDLE [--qa QA_JSON] [--limit N] [--share-buffer]

For each question in qa.json (default: BUNDLE/../qa.json) it renders the bundle's chat template,
tokenizes with tokenizer.json (the `tokenizers` library), runs prefill then one token per step,
feeding present.N.* back as past_key_values.N.*, stops at an eos id of genai_config.json, and
compares the decoded answer with the expected one. --share-buffer decodes the way ORT-GenAI does
with past_present_share_buffer: one [b, kv_heads, max_length, head] buffer per cache tensor,
bound as both past input and present output through IOBinding.
Exit status 0 when every answer matches, 1 otherwise. Prints one JSON summary line last.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def load_bundle(bundle: Path):
    import onnxruntime as ort
    from tokenizers import Tokenizer

    cfg = json.loads((bundle / "genai_config.json").read_text(encoding="utf-8"))
    dec = cfg["model"]["decoder"]
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(bundle / dec["filename"]), so, providers=["CPUExecutionProvider"])
    tok = Tokenizer.from_file(str(bundle / "tokenizer.json"))
    tok_cfg = json.loads((bundle / "tokenizer_config.json").read_text(encoding="utf-8"))
    return ort, cfg, sess, tok, tok_cfg


def render(template: str, question: str) -> str:
    import jinja2
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(messages=[{"role": "user", "content": question}],
                                            add_generation_prompt=True)


def greedy(ort, cfg, sess, prompt: list[int], max_new: int, share_buffer: bool) -> list[int]:
    dec = cfg["model"]["decoder"]
    layers, kv, head = dec["num_hidden_layers"], dec["num_key_value_heads"], dec["head_size"]
    ins, outs = dec["inputs"], dec["outputs"]
    eos = cfg["model"]["eos_token_id"]
    eos = set(eos if isinstance(eos, list) else [eos])
    max_length = cfg["search"]["max_length"] or cfg["model"]["context_length"]
    pk, pv = ins["past_key_names"], ins["past_value_names"]
    ok, ov = outs["present_key_names"], outs["present_value_names"]
    graph_inputs = {i.name for i in sess.get_inputs()}

    tokens = list(prompt)
    generated: list[int] = []
    if share_buffer:
        caches = {}
        for i in range(layers):
            for name in (pk % i, pv % i):
                caches[name] = ort.OrtValue.ortvalue_from_numpy(np.zeros((1, kv, max_length, head), np.float32))
    else:
        past = {n % i: np.zeros((1, kv, 0, head), np.float32) for i in range(layers) for n in (pk, pv)}
    step_ids = tokens
    while len(generated) < max_new and len(tokens) < max_length:
        total = len(tokens)
        feed = {ins["input_ids"]: np.array([step_ids], np.int64),
                ins["attention_mask"]: np.ones((1, total), np.int64)}
        if "position_ids" in ins and ins["position_ids"] in graph_inputs:
            feed[ins["position_ids"]] = np.arange(total - len(step_ids), total, dtype=np.int64)[None, :]
        if share_buffer:
            bind = sess.io_binding()
            for name, value in feed.items():
                bind.bind_cpu_input(name, value)
            bind.bind_output(outs["logits"])  # bound first, so it is get_outputs()[0]
            for i in range(layers):
                for past_name, present_name in ((pk % i, ok % i), (pv % i, ov % i)):
                    bind.bind_ortvalue_input(past_name, caches[past_name])
                    bind.bind_ortvalue_output(present_name, caches[past_name])
            sess.run_with_iobinding(bind)
            logits = bind.get_outputs()[0].numpy()
        else:
            feed.update(past)
            names = [o.name for o in sess.get_outputs()]
            values = dict(zip(names, sess.run(names, feed)))
            logits = values[outs["logits"]]
            past = {}
            for i in range(layers):
                past[pk % i] = values[ok % i]
                past[pv % i] = values[ov % i]
        nxt = int(np.argmax(logits[0, -1]))
        generated.append(nxt)
        tokens.append(nxt)
        step_ids = [nxt]
        if nxt in eos:
            break
    return generated


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle")
    ap.add_argument("--qa", help="question/answer JSON (default: BUNDLE/../qa.json)")
    ap.add_argument("--limit", type=int, default=0, help="check only the first N questions")
    ap.add_argument("--share-buffer", action="store_true", help="decode with one shared past/present buffer")
    args = ap.parse_args()

    bundle = Path(args.bundle)
    ort, cfg, sess, tok, tok_cfg = load_bundle(bundle)
    qa = json.loads(Path(args.qa or bundle.parent / "qa.json").read_text(encoding="utf-8"))
    if args.limit:
        qa = qa[:args.limit]
    eos = cfg["model"]["eos_token_id"]
    eos = set(eos if isinstance(eos, list) else [eos])

    right = 0
    for item in qa:
        prompt = tok.encode(render(tok_cfg["chat_template"], item["question"]), add_special_tokens=False).ids
        out = greedy(ort, cfg, sess, prompt, 96, args.share_buffer)
        if out and out[-1] in eos:
            out = out[:-1]
        answer = tok.decode(out, skip_special_tokens=False)
        if answer == item["answer"]:
            right += 1
        else:
            print(f"wrong: {item['question']!r} -> {answer!r} (want {item['answer']!r})", flush=True)
    summary = {"onnxruntime_version": ort.__version__, "onnxruntime_path": str(Path(ort.__file__).parent),
               "bundle": str(bundle), "share_buffer": args.share_buffer, "questions": len(qa), "right": right}
    print(json.dumps(summary))
    return 0 if right == len(qa) else 1


if __name__ == "__main__":
    sys.exit(main())
