#!/usr/bin/env python3
"""ORT-GenAI's prefill and decode speed on a bundle: the peer `gemba bench decode` compares with.

CLI
  python scripts/bench/genai_decode.py BUNDLE --prompt-tokens N --gen-tokens M --threads T
                                       --repeat R [--warmup W]

What is measured (ORT-GenAI 0.18, greedy, batch 1)
  prefill   Generator.append_tokens(N prompt ids): one decoder run over the N-token prompt.
            prefill_tok_s = N / its wall time.
  decode    the M generate_next_token() calls that follow. The first only picks a token from the
            prefill's logits; each of the other M - 1 runs the decoder on one token and picks.
            decode_tok_s = (M - 1) / wall time of calls 2..M.
  Generation always makes exactly M tokens: search.min_length = search.max_length = N + M, so
  eos is suppressed (checked afterwards). Each run uses a fresh Generator on one loaded Model;
  W warm-up runs (default 1) come first and are not counted. Reported figures are medians over
  R runs; the per-run seconds are listed too.
  --serve: load and warm up, print {"ready": true, ...}, then time one run for each line "run" on
  stdin and print {"prefill_s", "decode_s", "past_present_share_buffer"} per run (one JSON line,
  flushed) until stdin closes. `gemba bench decode` uses this to alternate its contenders.
  --serve-ids: load, print {"ready": true, ...}, then for each stdin line {"ids": [...],
  "max_new": M} run a greedy generation from those prompt ids until eos or M new tokens and print
  {"prefill_s", "decode_s", "ids": [generated ids]} (decode_s: wall time after the first token).
  `gemba bench decode --workload report` uses this for its report-style prompts.
  Threads: model.decoder.session_options.intra_op_num_threads = T, set with og.Config.overlay
  (the bundle on disk is not touched). Prompt ids: a fixed seeded sequence of byte-level token
  ids (0..255), the same every run; the content does not matter for speed.

stdout (one JSON object)
  {"bundle", "ort_genai_version", "onnxruntime_version", "prompt_tokens", "gen_tokens", "threads",
   "repeat", "warmup", "past_present_share_buffer", "prefill_tok_s", "decode_tok_s",
   "prefill_s": [..], "decode_s": [..]}
Progress goes to stderr. Exit status 2 on bad arguments (message on stderr).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path


def ort_version(og) -> str:
    """The ONNX Runtime library ORT-GenAI loaded (it may differ from `import onnxruntime`)."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            for line in maps:
                name = line.rsplit("/", 1)[-1].strip()
                if name.startswith("libonnxruntime.so."):
                    return name[len("libonnxruntime.so."):]
    except OSError:
        pass
    import onnxruntime
    return onnxruntime.__version__


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle")
    ap.add_argument("--prompt-tokens", type=int, required=True)
    ap.add_argument("--gen-tokens", type=int, required=True)
    ap.add_argument("--threads", type=int, required=True, help="intra-op threads of the decoder session")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--serve", action="store_true",
                    help="after the warm-up print a ready line, then time one run per 'run' line on stdin")
    ap.add_argument("--serve-ids", action="store_true",
                    help="print a ready line, then run one greedy generation per JSON line {ids, max_new} on stdin")
    args = ap.parse_args()

    bundle = Path(args.bundle)
    cfg_path = bundle / "genai_config.json"
    if not cfg_path.is_file():
        print(f"error: {cfg_path} not found", file=sys.stderr)
        return 2
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    n, m = args.prompt_tokens, args.gen_tokens
    total = n + m
    context = cfg["model"]["context_length"]
    if n < 1 or m < 2 or args.threads < 1 or args.repeat < 1 or args.warmup < 0:
        print("error: need --prompt-tokens >= 1, --gen-tokens >= 2, --threads >= 1, --repeat >= 1, --warmup >= 0",
              file=sys.stderr)
        return 2
    if total > context:
        print(f"error: prompt + generated = {total} exceeds the bundle's context_length {context} ({cfg_path})",
              file=sys.stderr)
        return 2

    import numpy as np
    import onnxruntime_genai as og
    if hasattr(og, "disable_telemetry_events"):
        og.disable_telemetry_events()

    config = og.Config(str(bundle))
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": args.threads}}}}))
    model = og.Model(config)
    if args.serve_ids:
        print(json.dumps({"ready": True, "ort_genai_version": og.__version__,
                          "onnxruntime_version": ort_version(og)}), flush=True)
        for line in sys.stdin:
            if not line.strip():
                continue
            req = json.loads(line)
            ids = np.array(req["ids"], dtype=np.int32)
            params = og.GeneratorParams(model)
            params.set_search_options(do_sample=False, max_length=len(ids) + int(req["max_new"]))
            gen = og.Generator(model, params)
            t0 = time.perf_counter()
            gen.append_tokens(ids)
            t1 = time.perf_counter()
            gen.generate_next_token()
            t2 = time.perf_counter()
            while not gen.is_done():
                gen.generate_next_token()
            t3 = time.perf_counter()
            out = [int(t) for t in gen.get_sequence(0)[len(ids):]]
            del gen
            print(json.dumps({"prefill_s": t1 - t0, "decode_s": t3 - t2, "ids": out}), flush=True)
        return 0
    rng = random.Random(1234)
    prompt = np.array([rng.randrange(256) for _ in range(n)], dtype=np.int32)

    def one_run() -> tuple[float, float, object]:
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=total, min_length=total)
        share = params.get_search_options().get("past_present_share_buffer")
        gen = og.Generator(model, params)
        t0 = time.perf_counter()
        gen.append_tokens(prompt)
        t1 = time.perf_counter()
        gen.generate_next_token()
        t2 = time.perf_counter()
        for _ in range(m - 1):
            gen.generate_next_token()
        t3 = time.perf_counter()
        made = len(gen.get_sequence(0)) - n
        if made != m:
            raise RuntimeError(f"generated {made} tokens, expected {m} (min_length did not hold)")
        del gen
        return t1 - t0, t3 - t2, share

    prefill_s: list[float] = []
    decode_s: list[float] = []
    share = None
    try:
        for run in range(args.warmup):
            p, d, share = one_run()
            print(f"warm-up: prefill {n / p:.1f} tok/s, decode {(m - 1) / d:.1f} tok/s", file=sys.stderr)
        if args.serve:
            # One run per "run" line on stdin, one JSON line back: the caller interleaves these
            # with its own runs so that drift on a shared machine hits every contender alike.
            print(json.dumps({"ready": True, "ort_genai_version": og.__version__,
                              "onnxruntime_version": ort_version(og)}), flush=True)
            for line in sys.stdin:
                if line.strip() != "run":
                    continue
                p, d, share = one_run()
                print(json.dumps({"prefill_s": p, "decode_s": d, "past_present_share_buffer": share}), flush=True)
            return 0
        for run in range(args.repeat):
            p, d, share = one_run()
            print(f"run {run + 1}/{args.repeat}: prefill {n / p:.1f} tok/s, decode {(m - 1) / d:.1f} tok/s",
                  file=sys.stderr)
            prefill_s.append(p)
            decode_s.append(d)
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    result = {
        "bundle": str(bundle),
        "ort_genai_version": og.__version__,
        "onnxruntime_version": ort_version(og),
        "prompt_tokens": n,
        "gen_tokens": m,
        "threads": args.threads,
        "repeat": args.repeat,
        "warmup": args.warmup,
        "past_present_share_buffer": share,
        "prefill_tok_s": n / statistics.median(prefill_s),
        "decode_tok_s": (m - 1) / statistics.median(decode_s),
        "prefill_s": prefill_s,
        "decode_s": decode_s,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
