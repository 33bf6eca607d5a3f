#!/usr/bin/env python3
"""Region citations of gemba's demo bundle (version 3) on held-out scenes, greedy.

    eval_regions.py [--bundle models/demo] [--scenes 40] [--seed 4711] [--via genai|gemba]
                    [--gemba target/debug/gemba]

Scenes are rendered with their drawn rectangles (make_demo_scenes.make_scene_regions) from a seed
the training never used (training 1240000.., validation 1241000..). Each scene is asked, typed,
with the frame named by a held-out camera name ("Camera NAME: <|image_1|>\\nQUESTION", as gemba
writes the user turn), one question of each intent (lamp, pressure, boxes, status).

A sentence that names an object (the lamp, the pressure / gauge, a box) is right when the regions it
cites are exactly the drawn ones, each with IoU >= 0.5 and the prompt's camera: the lamp disc (with
its bezel) for a lamp sentence, the gauge dial for a pressure sentence, every box on the belt for a
box sentence (each cited box matched to a distinct drawn box; a missing or extra box is wrong), and
no region for "I cannot see ..." sentences. "The belt is empty." names no box and is not scored.

  --via genai  ORT-GenAI (pip onnxruntime-genai); sentences split as gemba does (at ". " outside
               markers) and regions parsed with gemba's marker grammar (demo_common.REGION_MARK)
  --via gemba  `gemba ask --model BUNDLE --image FRAME --json PROMPT` per question; its sentence
               events give the sentences, their regions are read from each sentence's text
"""
from __future__ import annotations

import argparse
import itertools
import json
import random
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo_common import REGION_MARK, QUESTIONS, PromptSpec, camera_name, chat_prompt, strip_regions  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SEED = 4711
ASK = {"lamp": QUESTIONS["lamp"][0], "pressure": QUESTIONS["pressure"][0], "boxes": QUESTIONS["boxes"][0],
       "status": QUESTIONS["status"][0]}


def iou(a, b):
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    u = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / u if u > 0 else 0.0


def split_sentences(text: str) -> list[str]:
    """At '.', '!' or '?' followed by whitespace (or the end), never inside [...]."""
    out, cur, depth = [], "", 0
    for i, ch in enumerate(text):
        cur += ch
        depth += ch == "["
        depth -= ch == "]" and depth > 0
        if ch in ".!?" and depth == 0 and (i + 1 == len(text) or text[i + 1].isspace()):
            out.append(cur.strip())
            cur = ""
    if cur.strip():
        out.append(cur.strip())
    return out


def regions_of(sentence: str) -> list[tuple[str, tuple]]:
    return [(m.group(1), tuple(int(m.group(k)) for k in range(2, 6))) for m in REGION_MARK.finditer(sentence)]


def expected_regions(sentence: str, reg: dict):
    """The drawn rectangles a sentence must cite, or None when it names no object (not scored)."""
    s = strip_regions(sentence)
    if s.startswith("I cannot see") or "cannot see" in s:
        return []
    if re.search(r"\bThe lamp is\b", s):
        return [reg["lamp"]] if "lamp" in reg else []
    if re.search(r"\bThe pressure is\b", s):
        return [reg["gauge"]] if "gauge" in reg else []
    if re.search(r"\b(There is one box|There are \w+ boxes)\b", s):
        return list(reg.get("boxes", []))
    return None


def sentence_ok(cited, want, camera) -> tuple[bool, str]:
    if any(c != camera for c, _ in cited):
        return False, "wrong camera"
    boxes = [b for _, b in cited]
    if len(boxes) != len(want):
        return False, f"{len(boxes)} regions cited, {len(want)} drawn"
    if not want:
        return True, ""
    best = max(min(iou(b, w) for b, w in zip(boxes, perm)) for perm in itertools.permutations(want))
    return best >= 0.5, f"min IoU {best:.2f}"


class GenaiRunner:
    def __init__(self, bundle: Path):
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from eval_demo import Runner
        self.r = Runner(bundle)

    def ask(self, camera, frame, question, td):
        ans, _ = self.r.generate(chat_prompt(PromptSpec(cameras=[camera], question=question, seps=("\n", "\n"))),
                                 images=[frame])
        return ans, split_sentences(ans)


class GembaRunner:
    def __init__(self, bundle: Path, gemba: Path):
        self.bundle, self.gemba = bundle, gemba

    def ask(self, camera, frame, question, td):
        user = f"Camera {camera}: <|image_1|>\n{question}" if camera else f"<|image_1|>\n{question}"
        cmd = [str(self.gemba), "ask", "--model", str(self.bundle), "--image", frame, "--json", "--threads", "1",
               "--max-tokens", "480", user]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()}")
        sents, full = [], ""
        for line in r.stdout.splitlines():
            ev = json.loads(line)
            if ev.get("event") == "sentence":
                sents.append(ev["text"])
            elif ev.get("event") == "done":
                full = ev.get("text", "")
        return full, sents


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=REPO / "models/demo")
    ap.add_argument("--scenes", type=int, default=40)
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--via", choices=("genai", "gemba"), default="genai")
    ap.add_argument("--gemba", type=Path, default=REPO / "target/debug/gemba")
    ap.add_argument("--show", type=int, default=10)
    ap.add_argument("--belts", type=int, default=0,
                    help="instead: N belt-only scenes with 1-3 boxes (seed --seed), asked the box count typed, "
                         "named and unnamed; the count said is scored")
    ap.add_argument("--frames", action="store_true",
                    help="instead: models/demo/frames, every question of models/demo/audio typed and spoken, "
                         "named and unnamed (check_answer), and the regions of the named typed answers")
    a = ap.parse_args()
    if a.frames:
        return frames(a)
    if a.belts:
        return belts(a)
    import make_demo_scenes as mds
    runner = GenaiRunner(a.bundle) if a.via == "genai" else GembaRunner(a.bundle, a.gemba)
    rng = random.Random(a.seed)
    per = defaultdict(lambda: [0, 0])
    fails = []
    t0 = time.time()
    with tempfile.TemporaryDirectory() as td:
        for i in range(a.scenes):
            data, facts, size, reg = mds.make_scene_regions(rng)
            name = camera_name(rng, held_out=True)
            frame = str(Path(td) / f"s{i:03d}.jpg")
            Path(frame).write_bytes(data)
            for intent, q in ASK.items():
                full, sents = runner.ask(name, frame, q, td)
                for s in sents:
                    want = expected_regions(s, reg)
                    if want is None:
                        continue
                    ok, why = sentence_ok(regions_of(s), want, name)
                    kind = "absent" if not want else ("lamp" if "lamp" in strip_regions(s) and "lamp" in reg
                                                      and want == [reg["lamp"]] else
                                                      "pressure" if "pressure" in strip_regions(s) else "boxes")
                    for k in (kind, "all"):
                        per[k][0] += ok
                        per[k][1] += 1
                    if not ok:
                        fails.append((i, intent, size, s, want, why))
    dt = time.time() - t0
    print(f"\n{a.scenes} held-out scenes (seed {a.seed}), 4 typed questions each, via {a.via}, {dt:.0f} s")
    for k in ("lamp", "pressure", "boxes", "absent", "all"):
        ok, n = per[k]
        if n:
            print(f"  {k:9s} {ok:4d}/{n:<4d} {100 * ok / n:5.1f} %")
    for f in fails[: a.show]:
        print(f"  FAIL scene {f[0]} {f[1]} {f[2]}: {f[3]!r}\n       drawn {f[4]} ({f[5]})")


COUNT_WORDS = {"one": 1, "two": 2, "three": 3}


def said_count(answer: str):
    """The box count an answer says: 0 for an empty belt, None when it says none."""
    s = strip_regions(answer)
    if re.search(r"\bbelt is empty\b", s):
        return 0
    m = re.search(r"\bThere (?:is|are) (one|two|three) box", s)
    return COUNT_WORDS[m.group(1)] if m else None


def belts(a):
    """Belt-only scenes (make_demo_scenes with facts: no lamp, no gauge, 1-3 boxes), the kind of
    frame belt-1_03.jpg is; each asked "How many boxes are on the belt?" unnamed and named."""
    import make_demo_scenes as mds
    from demo_common import SceneFacts
    runner = GenaiRunner(a.bundle) if a.via == "genai" else GembaRunner(a.bundle, a.gemba)
    rng = random.Random(a.seed)
    per = defaultdict(lambda: [0, 0])
    fails = []
    with tempfile.TemporaryDirectory() as td:
        for i in range(a.belts):
            n = rng.randint(1, 3)
            data, facts, size, reg = mds.make_scene_regions(rng, facts=SceneFacts(None, None, n))
            name = camera_name(rng, held_out=True)
            frame = str(Path(td) / f"b{i:03d}.jpg")
            Path(frame).write_bytes(data)
            for named in (False, True):
                # camera None: the frame unnamed (both runners)
                full, _ = runner.ask(name if named else None, frame, ASK["boxes"], td)
                ok = said_count(full) == n
                for k in (f"{n} box{'es' if n > 1 else ''}", "all"):
                    per[k][0] += ok
                    per[k][1] += 1
                if not ok:
                    fails.append((i, size, n, named, full))
    print(f"\n{a.belts} belt-only scenes (seed {a.seed}), box count asked unnamed and named, via {a.via}")
    for k in ("1 box", "2 boxes", "3 boxes", "all"):
        ok, n = per[k]
        if n:
            print(f"  {k:9s} {ok:4d}/{n:<4d} {100 * ok / n:5.1f} %")
    for f in fails[: a.show]:
        print(f"  FAIL scene {f[0]} {f[1]} {f[2]} boxes, {'named' if f[3] else 'unnamed'}: {f[4]!r}")


def frames(a):
    """The six demo frames (rendered with seed 4242; their drawn rectangles re-rendered here)."""
    import io
    import make_demo_scenes as mds
    from demo_common import SceneFacts, check_answer
    from eval_demo import Runner
    fdir, adir = REPO / "models/demo/frames", REPO / "models/demo/audio"
    facts = json.loads((fdir / "facts.json").read_text())
    rng = random.Random(4242)
    regs = {}
    for f in facts:
        size = __import__("PIL.Image", fromlist=["Image"]).open(fdir / f["file"]).size
        img, r = mds.render_scene_regions(rng, SceneFacts(f["lamp"], f["gauge"], f["boxes"]), size)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=80)
        assert buf.getvalue() == (fdir / f["file"]).read_bytes(), f["file"]
        regs[f["file"]] = mds.regions_k(r, size)
    r = Runner(a.bundle)
    qs = json.loads((adir / "questions.json").read_text())
    right = total = reg_ok = reg_n = 0
    for f in facts:
        sf = SceneFacts(f["lamp"], f["gauge"], f["boxes"])
        for q in qs:
            for named in (True, False):
                for spoken in (False, True):
                    cam = f["camera"] if named else None
                    spec = PromptSpec(cameras=[cam], question=None if spoken else q["text"], spoken=spoken)
                    ans, _ = r.generate(chat_prompt(spec), images=[str(fdir / f["file"])],
                                        audios=[str(adir / q["file"])] if spoken else None)
                    ok, why = check_answer(ans, q["intent"], [(cam, sf)])
                    right += ok
                    total += 1
                    line = f"  {'ok  ' if ok else 'FAIL'} {f['file']} {'named' if named else 'plain'} " \
                           f"{'spoken' if spoken else 'typed '} {q['text']!r} -> {ans!r}"
                    if named and not spoken:
                        for s in split_sentences(ans):
                            want = expected_regions(s, regs[f["file"]])
                            if want is not None:
                                good, w2 = sentence_ok(regions_of(s), want, cam)
                                reg_ok += good
                                reg_n += 1
                                if not good:
                                    line += f" [region: {w2}]"
                    if not ok or "region:" in line or "belt-1_03" in f["file"]:
                        print(line + ("" if ok else f" ({why})"))
    print(f"frames: {right}/{total} answers right; regions of the named typed answers {reg_ok}/{reg_n}")


if __name__ == "__main__":
    main()
