#!/usr/bin/env python3
"""ORT-GenAI reference for gemba's token conformance tests.

gemba's engine must produce the same tokens as onnxruntime-genai (ORT-GenAI). This script runs
ORT-GenAI (the pip package, 0.18) on the same inputs and prints what it produced as JSON on
stdout; the Rust tests compare. Progress and warnings go to stderr only.

CLI
  python tests/conformance/genai_greedy.py greedy CASES_JSON [--top-logits K]
      CASES_JSON: {"bundle": DIR, "share_buffer": BOOL (optional),
                   "cases": [{"name": STR, "input_ids": [INT...], "max_length": INT,
                              "share_buffer": BOOL (optional, overrides the top level)}]}
      Greedy search (do_sample=False) from the given prompt ids. max_length is ORT-GenAI's:
      prompt plus generated tokens; omitted means the bundle's search.max_length. share_buffer
      overrides search.past_present_share_buffer through og.Config.overlay (the bundle on disk
      is not touched); omitted means the bundle's value.
      stdout: {"ort_genai_version": STR, "onnxruntime_version": STR,
               "cases": [{"name": STR, "output_ids": [INT...], "finish": "eos" | "length"}]}
      output_ids are the generated ids only (Generator.get_sequence minus the prompt). ORT-GenAI
      does not append the eos id it selects to the sequence (batch 1), so output_ids never end
      with it; "finish" says whether generation stopped on an eos id or at max_length.
      --top-logits K adds "top_logits": [[[id, logit] x K] per generated token] to each case,
      to see how close a divergence point was.

  python tests/conformance/genai_greedy.py tokenize BUNDLE PROMPTS_JSON
      PROMPTS_JSON: {"prompts": [{"name": STR, "user": STR, "system": STR (optional)}, ...]}
      stdout: {"ort_genai_version", "onnxruntime_version",
               "prompts": [{"name", "plain_ids": encode(user),
                            "chat_text": apply_chat_template(messages, add_generation_prompt=True),
                            "chat_ids": encode(chat_text), "decoded": decode(chat_ids)}]}
      Chat templating is ORT-GenAI 0.18's Tokenizer.apply_chat_template with the template in the
      bundle's tokenizer_config.json; messages are [system?, user].

  python tests/conformance/genai_greedy.py answer BUNDLE PROMPTS_JSON [--max-length N]
      Chat-template each prompt, greedy-generate, and report "chat_ids", "output_ids", "finish",
      "output_text" and, when the prompt has "expected", "correct": BOOL.

Bundle paths are taken as given (relative to the current directory), else relative to the JSON
file's directory. Exit status: 0 on success, 2 on bad input (message on stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


class InputError(Exception):
    pass


def og_module():
    import onnxruntime_genai as og
    if hasattr(og, "disable_telemetry_events"):
        og.disable_telemetry_events()
    return og


def versions(og) -> dict:
    """The ORT-GenAI version, and the ONNX Runtime library it actually loaded."""
    ort_version = None
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            for line in maps:
                name = line.rsplit("/", 1)[-1].strip()
                if name.startswith("libonnxruntime.so."):
                    ort_version = name[len("libonnxruntime.so."):]
                    break
    except OSError:
        pass
    if ort_version is None:
        import onnxruntime
        ort_version = onnxruntime.__version__
    return {"ort_genai_version": og.__version__, "onnxruntime_version": ort_version}


def read_json(path: str) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise InputError(f"cannot read {path}: {e}") from e
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not JSON: {e}") from e


def resolve_bundle(bundle: str, json_path: str) -> Path:
    for candidate in (Path(bundle), Path(json_path).parent / bundle):
        if (candidate / "genai_config.json").is_file():
            return candidate
    raise InputError(f"{json_path}: bundle {bundle!r} has no genai_config.json "
                     f"(looked in {Path(bundle).resolve()} and {(Path(json_path).parent / bundle).resolve()})")


def load_model(og, bundle: Path, share_buffer: bool | None):
    config = og.Config(str(bundle))
    if share_buffer is not None:
        config.overlay(json.dumps({"search": {"past_present_share_buffer": bool(share_buffer)}}))
    return og.Model(config)


def generate(og, model, input_ids: list[int], max_length: int | None, top_logits: int = 0):
    import numpy as np
    params = og.GeneratorParams(model)
    options = {"do_sample": False}
    if max_length is not None:
        options["max_length"] = int(max_length)
    params.set_search_options(**options)
    gen = og.Generator(model, params)
    gen.append_tokens(np.asarray(input_ids, dtype=np.int32))
    tops = []
    while not gen.is_done():
        if top_logits:
            logits = np.asarray(gen.get_logits()).reshape(-1)
            order = np.argsort(-logits, kind="stable")[:top_logits]
            tops.append([[int(i), float(logits[i])] for i in order])
        gen.generate_next_token()
    seq = [int(t) for t in gen.get_sequence(0)]
    eos = model_eos(model)
    finish = "eos" if int(gen.get_next_tokens()[0]) in eos and len(seq) < params_max_length(params) else "length"
    return seq[len(input_ids):], tops, finish


_EOS: dict[int, set[int]] = {}


def model_eos(model) -> set[int]:
    import onnxruntime_genai as og
    if id(model) not in _EOS:
        _EOS[id(model)] = {int(t) for t in og.Tokenizer(model).eos_token_ids}
    return _EOS[id(model)]


def params_max_length(params) -> int:
    return int(params.get_search_options()["max_length"])


def cmd_greedy(args) -> dict:
    og = og_module()
    spec = read_json(args.cases)
    if not isinstance(spec, dict) or "bundle" not in spec or not isinstance(spec.get("cases"), list):
        raise InputError(f"{args.cases}: expected an object with \"bundle\" and a \"cases\" array")
    bundle = resolve_bundle(spec["bundle"], args.cases)
    default_share = spec.get("share_buffer")
    models: dict = {}
    out = []
    for i, case in enumerate(spec["cases"]):
        where = f"{args.cases}: cases[{i}]"
        if not isinstance(case, dict):
            raise InputError(f"{where}: expected an object")
        name = case.get("name", f"case{i}")
        ids = case.get("input_ids")
        if not isinstance(ids, list) or not ids or not all(isinstance(t, int) for t in ids):
            raise InputError(f"{where} ({name}): \"input_ids\" must be a non-empty array of integers")
        max_length = case.get("max_length")
        if max_length is not None and (not isinstance(max_length, int) or max_length <= len(ids)):
            raise InputError(f"{where} ({name}): \"max_length\" must be an integer > len(input_ids) = {len(ids)}, "
                             f"got {max_length!r}")
        share = case.get("share_buffer", default_share)
        if share is not None and not isinstance(share, bool):
            raise InputError(f"{where} ({name}): \"share_buffer\" must be true or false, got {share!r}")
        if share not in models:
            models[share] = load_model(og, bundle, share)
        output_ids, tops, finish = generate(og, models[share], ids, max_length, args.top_logits)
        print(f"{name}: {len(ids)} prompt -> {len(output_ids)} generated (share_buffer={share})", file=sys.stderr)
        item = {"name": name, "output_ids": output_ids, "finish": finish}
        if args.top_logits:
            item["top_logits"] = tops
        out.append(item)
    return {**versions(og), "cases": out}


def read_prompts(path: str) -> list[dict]:
    spec = read_json(path)
    prompts = spec.get("prompts") if isinstance(spec, dict) else None
    if not isinstance(prompts, list):
        raise InputError(f"{path}: expected an object with a \"prompts\" array")
    for i, p in enumerate(prompts):
        if not isinstance(p, dict) or not isinstance(p.get("user"), str):
            raise InputError(f"{path}: prompts[{i}] needs a string \"user\"")
    return prompts


def messages_of(prompt: dict) -> list[dict]:
    messages = []
    if isinstance(prompt.get("system"), str):
        messages.append({"role": "system", "content": prompt["system"]})
    messages.append({"role": "user", "content": prompt["user"]})
    return messages


def cmd_tokenize(args) -> dict:
    og = og_module()
    bundle = resolve_bundle(args.bundle, args.prompts)
    prompts = read_prompts(args.prompts)
    model = og.Model(str(bundle))
    tok = og.Tokenizer(model)
    out = []
    for i, p in enumerate(prompts):
        chat_text = tok.apply_chat_template(json.dumps(messages_of(p)), add_generation_prompt=True)
        chat_ids = [int(t) for t in tok.encode(chat_text)]
        out.append({"name": p.get("name", f"prompt{i}"),
                    "plain_ids": [int(t) for t in tok.encode(p["user"])],
                    "chat_text": chat_text, "chat_ids": chat_ids, "decoded": tok.decode(chat_ids)})
    return {**versions(og), "prompts": out}


def cmd_answer(args) -> dict:
    og = og_module()
    bundle = resolve_bundle(args.bundle, args.prompts)
    prompts = read_prompts(args.prompts)
    model = og.Model(str(bundle))
    tok = og.Tokenizer(model)
    out = []
    for i, p in enumerate(prompts):
        chat_text = tok.apply_chat_template(json.dumps(messages_of(p)), add_generation_prompt=True)
        chat_ids = [int(t) for t in tok.encode(chat_text)]
        output_ids, _, finish = generate(og, model, chat_ids, args.max_length)
        item = {"name": p.get("name", f"prompt{i}"), "chat_ids": chat_ids, "output_ids": output_ids,
                "finish": finish, "output_text": tok.decode(output_ids)}
        if "expected" in p:
            item["correct"] = item["output_text"] == p["expected"]
        print(f"{item['name']}: {item['output_text']!r}", file=sys.stderr)
        out.append(item)
    return {**versions(og), "prompts": out}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode", required=True)
    g = sub.add_parser("greedy", help="greedy output ids for prompt ids")
    g.add_argument("cases")
    g.add_argument("--top-logits", type=int, default=0, metavar="K")
    t = sub.add_parser("tokenize", help="ORT-GenAI tokenization of text prompts, plain and chat-templated")
    t.add_argument("bundle")
    t.add_argument("prompts")
    a = sub.add_parser("answer", help="chat-template, tokenize and greedy-answer text prompts")
    a.add_argument("bundle")
    a.add_argument("prompts")
    a.add_argument("--max-length", type=int, default=None)
    args = ap.parse_args()
    try:
        result = {"greedy": cmd_greedy, "tokenize": cmd_tokenize, "answer": cmd_answer}[args.mode](args)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    json.dump(result, sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
