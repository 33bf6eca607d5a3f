#!/usr/bin/env python3
"""Structured answers of gemba's demo bundle on held-out scenes, under a constraint, greedy.

    eval_structured.py [--bundle models/demo] [--scenes 60] [--seed 31337] [--via guidance|mask]
    eval_structured.py --write-set DIR [--scenes N]     write the cases (frames + cases.json) and stop
    eval_structured.py --fixture DIR [--kinds lamp,...] the frames of DIR/facts.json instead (e.g. the
                                                        alert-lamp fixture), each named after its file

Scenes are rendered with a seed the training never used (training: 1234000.., validation
1235000.., eval_demo.py: 900001/900002). Each scene is asked every alert question of
demo_common.STRUCTURED that applies (the box count only where a belt is in view), as written in
the rules, once with the frame unnamed and once named ("Camera NAME: <|image_1|>\nQUESTION", as
gemba's alert look writes the user turn), in
the JSON form of the rule's schema or the choice yes / no. An answer is right when it parses and
equals the scene's value (demo_common.structured_value).

The constraint:
  --via guidance  ORT-GenAI's own (llguidance) through GeneratorParams.set_guidance: "json_schema"
                  with the rule's schema, or "regex" `(yes|no)` for a choice
  --via gemba     gemba itself: `gemba ask --model BUNDLE --image FRAME --json-schema FILE | --choice
                  yes,no PROMPT` per case (--gemba PATH, default target/debug/gemba), gemba's own
                  pre-processing, sessions and llguidance mask; the JSON schema is sent in the compact
                  form the alert rules use (x-guidance: ", " and ": " separators, no free whitespace)
  --via mask      the set of answer texts (JSON as json.dumps writes it, or the choices) applied
                  as a token mask on ORT-GenAI's logits: at each step only tokens that keep the
                  text a prefix of an allowed answer, and <|end|> once it is complete
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo_common import (MAX_BOXES, STRUCT_LAMP, STRUCT_ZONE, STRUCTURED, PromptSpec, SceneFacts,  # noqa: E402
                         camera_name, chat_prompt, facts_json, structured_text, structured_value)

REPO = Path(__file__).resolve().parents[2]
SEED = 31337


def make_set(root: Path, n: int, seed: int) -> list[dict]:
    import make_demo_scenes as mds
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    cases = []
    for i in range(n):
        data, facts, size = mds.make_scene(rng)
        frame = f"s{i:03d}.jpg"
        (root / frame).write_bytes(data)
        name = camera_name(rng, held_out=True)
        for kind, (question, fmt) in STRUCTURED.items():
            value = structured_value(kind, facts)
            if value is None:
                continue
            for named in (False, True):
                cases.append({"id": f"s{i:03d}-{kind}-{'named' if named else 'plain'}", "frame": frame,
                              "camera": name if named else None, "facts": facts_json(facts), "kind": kind,
                              "question": question,
                              "response_format": {"type": "json_schema", "schema": fmt} if isinstance(fmt, dict)
                              else {"type": "choice", "choices": fmt},
                              "expected": value, "expected_text": structured_text(value)})
    (root / "cases.json").write_text(json.dumps({"seed": seed, "scenes": n, "cases": cases}, indent=1) + "\n")
    return cases


def fixture_set(root: Path, kinds: list[str]) -> list[dict]:
    """Cases from a directory of frames with a facts.json (as make_demo_scenes.py's alert-lamp
    fixture): every frame asked the given alert questions, named after its file ("press-1_03.jpg"
    is camera press-1) and unnamed."""
    cases = []
    for f in json.loads((root / "facts.json").read_text()):
        facts = SceneFacts(f["lamp"], f["gauge"], f["boxes"])
        name = f["file"].rsplit("_", 1)[0]
        for kind in kinds:
            question, fmt = STRUCTURED[kind]
            value = structured_value(kind, facts)
            if value is None:
                continue
            for named in (False, True):
                cases.append({"id": f"{f['file']}-{kind}-{'named' if named else 'plain'}",
                              "frame": str(root.resolve() / f["file"]), "camera": name if named else None,
                              "facts": facts_json(facts), "kind": kind, "question": question,
                              "response_format": {"type": "json_schema", "schema": fmt} if isinstance(fmt, dict)
                              else {"type": "choice", "choices": fmt},
                              "expected": value, "expected_text": structured_text(value)})
    return cases


def allowed_texts(fmt: dict) -> list[str]:
    if fmt["type"] == "choice":
        return list(fmt["choices"])
    (key, prop), = fmt["schema"]["properties"].items()
    if "enum" in prop:
        values = prop["enum"]
    else:
        values = list(range(prop.get("minimum", 0), prop.get("maximum", MAX_BOXES) + 1))
    return [json.dumps({key: v}) for v in values]


class Runner:
    def __init__(self, bundle: Path, via: str, gemba: Path | None = None):
        self.bundle, self.gemba, self.via = bundle, gemba, via
        if via == "gemba":
            return
        import onnxruntime_genai as og
        self.og, self.via = og, via
        self.model = og.Model(str(bundle))
        self.proc = self.model.create_multimodal_processor()
        self.tok = og.Tokenizer(self.model)
        tj = json.loads((bundle / "tokenizer.json").read_text())
        from tokenizers import Tokenizer
        t = Tokenizer.from_str(json.dumps(tj))
        self.vocab_text = {i: t.decode([i]) for i in range(t.get_vocab_size()) if i < 200000}
        ids = {a["content"]: a["id"] for a in tj["added_tokens"]}
        self.end = ids["<|end|>"]

    def answer_gemba(self, user: str, image: str, fmt: dict, td: Path) -> str:
        import subprocess
        cmd = [str(self.gemba), "ask", "--model", str(self.bundle), "--image", image, "--max-tokens", "24"]
        if fmt["type"] == "choice":
            cmd += ["--choice", ",".join(fmt["choices"])]
        else:
            schema = dict(fmt["schema"])
            schema["x-guidance"] = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
            f = td / "schema.json"
            f.write_text(json.dumps(schema))
            cmd += ["--json-schema", str(f)]
        r = subprocess.run(cmd + [user], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()}")
        return r.stdout.strip()

    def answer(self, prompt: str, image: str, fmt: dict) -> str:
        og = self.og
        inputs = self.proc(prompt, images=og.Images.open(image))
        n_prompt = int(inputs["input_ids"].shape()[1])
        params = og.GeneratorParams(self.model)
        params.set_search_options(do_sample=False, max_length=n_prompt + 24)
        if self.via == "guidance":
            if fmt["type"] == "choice":
                params.set_guidance("regex", "(" + "|".join(fmt["choices"]) + ")")
            else:
                params.set_guidance("json_schema", json.dumps(fmt["schema"]))
        gen = og.Generator(self.model, params)
        gen.set_inputs(inputs)
        out, text = [], ""
        texts = allowed_texts(fmt)
        while not gen.is_done():
            if self.via == "mask":
                logits = gen.get_logits()
                mask = np.full(logits.shape[-1], -np.inf, np.float32)
                for i, t in self.vocab_text.items():
                    if t and any(a.startswith(text + t) for a in texts):
                        mask[i] = 0.0
                if text in texts:
                    mask[self.end] = 0.0
                gen.set_logits((logits + mask).astype(np.float32))
            gen.generate_next_token()
            tid = int(gen.get_next_tokens()[0])
            out.append(tid)
            text = self.tok.decode(np.array(out, dtype=np.int32))
            if self.via == "mask" and tid == self.end:
                break
        return self.tok.decode(np.array([t for t in out if t != self.end], dtype=np.int32))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=REPO / "models/demo")
    ap.add_argument("--scenes", type=int, default=60)
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--via", choices=("guidance", "mask", "gemba"), default="guidance")
    ap.add_argument("--gemba", type=Path, default=REPO / "target/debug/gemba", help="gemba binary (--via gemba)")
    ap.add_argument("--write-set", type=Path, help="write the held-out cases here and stop")
    ap.add_argument("--show", type=int, default=10)
    ap.add_argument("--fixture", type=Path,
                    help="instead of rendered scenes: the frames of DIR/facts.json (e.g. tests/fixtures/alert_lamp)")
    ap.add_argument("--kinds", default="lamp", help="with --fixture: the alert questions to ask, comma-separated")
    a = ap.parse_args()
    if a.write_set:
        cases = make_set(a.write_set, a.scenes, a.seed)
        print(f"{len(cases)} cases on {a.scenes} scenes in {a.write_set}")
        return
    r = Runner(a.bundle, a.via, a.gemba)
    per_kind = defaultdict(lambda: [0, 0])
    fails = []
    t0 = time.time()
    with tempfile.TemporaryDirectory() as td:
        cases = fixture_set(a.fixture, a.kinds.split(",")) if a.fixture else make_set(Path(td), a.scenes, a.seed)
        for c in cases:
            # gemba's user turn: "Camera NAME: <|image_1|>\nQUESTION" (model::engine::user_content)
            spec = PromptSpec(cameras=[c["camera"]], question=c["question"], seps=("\n", "\n"))
            if a.via == "gemba":
                user = (f"Camera {c['camera']}: " if c["camera"] else "") + "<|image_1|>\n" + c["question"]
                text = r.answer_gemba(user, str(Path(td) / c["frame"]), c["response_format"], Path(td))
            else:
                text = r.answer(chat_prompt(spec), str(Path(td) / c["frame"]), c["response_format"])
            try:
                got = text if c["response_format"]["type"] == "choice" else json.loads(text)
            except json.JSONDecodeError:
                got = None
            ok = got == c["expected"]
            for k in (c["kind"], "named" if c["camera"] else "unnamed", "all"):
                per_kind[k][0] += ok
                per_kind[k][1] += 1
            if not ok:
                fails.append((c["id"], c["facts"], c["expected_text"], text))
    dt = time.time() - t0
    where = f"the frames of {a.fixture}" if a.fixture else f"{a.scenes} held-out scenes (seed {a.seed})"
    print(f"\n{len(cases)} structured answers on {where}, constraint via {a.via}, {dt:.0f} s")
    for k in list(STRUCTURED) + ["unnamed", "named", "all"]:
        ok, n = per_kind[k]
        if n:
            print(f"  {k:14s} {ok:4d}/{n:<4d} {100 * ok / n:5.1f} %")
    for f in fails[: a.show]:
        print(f"  FAIL {f[0]} {f[1]}: want {f[2]!r} got {f[3]!r}")
    return per_kind["all"]


if __name__ == "__main__":
    main()
