#!/usr/bin/env python3
"""Accuracy of gemba's demo bundle through the reference runtime (pip onnxruntime_genai), greedy.

    eval_demo.py [--bundle models/demo] [--cases tests/fixtures/demo_eval]   the committed held-out set
    eval_demo.py --generate 200 [--seed S]         a fresh held-out set (voices/speeds/camera words
                                                   never used in training) in a temp dir
    eval_demo.py --typed                           ask the question as text instead of audio
    eval_demo.py --smoke                           one text, image, audio, image+audio prompt each
                                                   (works on the --untrained bundle too)

Each case: one or two frames (named "Camera NAME:" or unnamed) + a spoken question. The answer is
right when, for every frame in prompt order, it cites the frame's marker [cam:NAME] (named frames
only) and states exactly the facts the question asks for, matching the scene (demo_common.check_answer):
lamp colour, pressure zone (normal / high / too high), box count, or "I cannot see ..." for an
element that is not in the frame. A status report must state every element in the frame. Text-only
prompts must ask for a camera image and state no facts.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo_common import (INTENTS, QUESTIONS, PromptSpec, SceneFacts, chat_prompt, check_answer)  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


class Runner:
    def __init__(self, bundle: Path, max_new: int = 480):
        import onnxruntime_genai as og
        self.max_new = max_new
        self.og = og
        self.model = og.Model(str(bundle))
        self.proc = self.model.create_multimodal_processor()
        self.tok = og.Tokenizer(self.model)

    def generate(self, prompt: str, images=None, audios=None, max_new=None) -> tuple[str, int]:
        og = self.og
        inputs = self.proc(prompt, images=og.Images.open(*images) if images else None,
                           audios=og.Audios.open(*audios) if audios else None)
        n_prompt = int(inputs["input_ids"].shape()[1])
        params = og.GeneratorParams(self.model)
        params.set_search_options(do_sample=False, max_length=n_prompt + (max_new or self.max_new))
        gen = og.Generator(self.model, params)
        gen.set_inputs(inputs)
        out = []
        while not gen.is_done():
            gen.generate_next_token()
            out.append(int(gen.get_next_tokens()[0]))
        return self.tok.decode(np.array(out, dtype=np.int32)), n_prompt


def facts_of(d: dict) -> SceneFacts:
    return SceneFacts(d["lamp"], d["gauge"], d["boxes"])


def run_cases(r: Runner, root: Path, cases: list[dict], typed: bool, show: int):
    per_intent, per_cams = defaultdict(lambda: [0, 0]), defaultdict(lambda: [0, 0])
    failures = []
    t0 = time.time()
    for c in cases:
        names = [cam["name"] for cam in c["cameras"]]
        spec = PromptSpec(cameras=names, spoken=not typed, question=c["question_text"] if typed else None)
        prompt = chat_prompt(spec)
        answer, _ = r.generate(prompt, images=[str(root / cam["frame"]) for cam in c["cameras"]],
                               audios=None if typed else [str(root / c["audio"])])
        ok, why = check_answer(answer, c["intent"], [(cam["name"], facts_of(cam["facts"])) for cam in c["cameras"]])
        for d, k in ((per_intent, c["intent"]), (per_cams, len(names))):
            d[k][0] += ok
            d[k][1] += 1
        if not ok:
            failures.append((c["id"], c.get("voice"), c.get("speed"), c["question_text"], answer, why))
    dt = time.time() - t0
    total = sum(v[0] for v in per_intent.values()), sum(v[1] for v in per_intent.values())
    mode = "typed questions" if typed else "spoken questions (held-out voices/speeds)"
    print(f"\n{len(cases)} cases, {mode}, {dt:.0f} s ({dt / max(1, len(cases)):.2f} s/case)")
    for k in INTENTS:
        if per_intent[k][1]:
            print(f"  {k:9s} {per_intent[k][0]:4d}/{per_intent[k][1]:<4d} {100 * per_intent[k][0] / per_intent[k][1]:5.1f} %")
    for k in sorted(per_cams):
        print(f"  {k} camera{'s' if k > 1 else ' '} {per_cams[k][0]:4d}/{per_cams[k][1]:<4d} "
              f"{100 * per_cams[k][0] / per_cams[k][1]:5.1f} %")
    print(f"  overall   {total[0]:4d}/{total[1]:<4d} {100 * total[0] / max(1, total[1]):5.1f} %")
    for f in failures[:show]:
        print(f"  FAIL {f[0]} [{f[1]} s{f[2]}] {f[3]!r}\n       -> {f[4]!r}\n       ({f[5]})")
    return total


def run_text_only(r: Runner):
    ok_n = 0
    qs = [q for k in INTENTS for q in QUESTIONS[k][:3]]
    for q in qs:
        ans, _ = r.generate(chat_prompt(PromptSpec(question=q)))
        ok, why = check_answer(ans, None, [])
        ok_n += ok
        if not ok:
            print(f"  FAIL text-only {q!r} -> {ans!r}")
    print(f"  text-only (no image) {ok_n}/{len(qs)}")
    return ok_n, len(qs)


def smoke(r: Runner, root: Path):
    doc = json.loads((root / "cases.json").read_text())
    c = next(c for c in doc["cases"] if len(c["cameras"]) == 1 and c["cameras"][0]["name"])
    img, wav, name = str(root / c["cameras"][0]["frame"]), str(root / c["audio"]), c["cameras"][0]["name"]
    for label, spec, ims, auds in [
        ("text", PromptSpec(question="What colour is the lamp?"), None, None),
        ("image", PromptSpec(cameras=[name], question="Give me a status report."), [img], None),
        ("audio", PromptSpec(spoken=True), None, [wav]),
        ("image+audio", PromptSpec(cameras=[name], spoken=True), [img], [wav]),
    ]:
        t = time.time()
        ans, n = r.generate(chat_prompt(spec), ims, auds, max_new=240)
        print(f"{label:12s} prompt {n:5d} tokens, {time.time() - t:.2f} s: {ans!r}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=REPO / "models/demo")
    ap.add_argument("--cases", type=Path, default=REPO / "tests/fixtures/demo_eval")
    ap.add_argument("--generate", type=int, default=0, help="evaluate a freshly generated held-out set of N cases")
    ap.add_argument("--seed", type=int, default=None, help="seed of the generated set")
    ap.add_argument("--typed", action="store_true")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--show", type=int, default=8, help="failures to print")
    ap.add_argument("--max-new", type=int, default=480,
                    help="answer tokens allowed (a two-camera status report with six region markers "
                         "runs to ~300)")
    a = ap.parse_args()
    r = Runner(a.bundle, a.max_new)
    with tempfile.TemporaryDirectory() as td:
        root = a.cases
        if a.generate:
            import make_demo_scenes as mds
            root = Path(td)
            mds.make_eval_set(root, a.generate, a.seed if a.seed is not None else mds.EVAL_SEED + 1)
        if a.smoke:
            smoke(r, root)
            return
        doc = json.loads((root / "cases.json").read_text())
        run_cases(r, root, doc["cases"], a.typed, a.show)
        run_text_only(r)


if __name__ == "__main__":
    main()
