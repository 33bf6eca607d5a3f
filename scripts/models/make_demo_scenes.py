#!/usr/bin/env python3
"""Synthetic factory-floor frames and spoken questions for gemba's demo model.

A frame shows some or all of three elements, each placed, scaled and lit at random:
  - a machine panel with a status lamp: red / amber / green / off,
  - an analog pressure gauge whose needle sits in the green / amber / red zone of the dial,
  - a conveyor belt carrying 0-3 cardboard boxes.
Frames hold a random non-empty subset of the elements (each present with p=0.75): real cameras
watch part of a line (a press camera sees the panel and gauge, a belt camera sees the conveyor),
and the model must say "I cannot see ..." instead of inventing a reading for an element that is
not in view. Frame sizes run from 320x240 to 1280x720 in 4:3, 16:9, 3:2 and 1:1; lighting, tint,
noise, blur and JPEG quality vary.

Spoken questions are synthesised with espeak-ng (Debian package `espeak-ng`) in many voices,
variants, speeds and pitches, and resampled to 16 kHz mono with sox. demo_common.py fixes which
voices/speeds are used for training and which are held out for evaluation.

Subcommands:
  scenes OUT --n N --seed S [--held-out]   JPEG frames + facts.jsonl
  speech OUT --n N --seed S [--held-out]   WAVs + questions.jsonl
  demo  --seed S                            models/demo/frames, models/demo/audio
  fixtures --seed S                         tests/fixtures/demo_eval (held-out eval set)
  alert-lamp --seed S                       tests/fixtures/alert_lamp (a press camera's lamp
                                            green x3, red x4, green x4: the alert daemon test)
"""
from __future__ import annotations

import argparse
import io
import json
import math
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo_common import (GAUGE_ZONES, INTENTS, LAMP_STATES, MAX_BOXES, QUESTIONS, SceneFacts,  # noqa: E402
                         Voice, sample_voice, camera_name)

REPO = Path(__file__).resolve().parents[2]

FRAME_SIZES = [(320, 240), (400, 300), (512, 384), (480, 360), (640, 360), (640, 480), (800, 450), (800, 600),
               (960, 540), (1024, 576), (1280, 720), (480, 480), (720, 720), (600, 400), (960, 640)]

LAMP_RGB = {"red": (225, 30, 25), "amber": (255, 165, 0), "green": (35, 205, 60), "off": (55, 58, 60)}
# Gauge dial: -135 deg (min) .. +135 deg (max) clockwise from 12 o'clock; zone edges as fractions.
ZONE_EDGES = {"green": (0.0, 0.6), "amber": (0.6, 0.8), "red": (0.8, 1.0)}
ZONE_RGB = {"green": (40, 170, 60), "amber": (240, 160, 20), "red": (210, 35, 30)}


def random_facts(rng: random.Random) -> SceneFacts:
    while True:
        lamp = rng.choice(LAMP_STATES) if rng.random() < 0.75 else None
        gauge = rng.choice(GAUGE_ZONES) if rng.random() < 0.75 else None
        boxes = rng.randint(0, MAX_BOXES) if rng.random() < 0.75 else None
        f = SceneFacts(lamp, gauge, boxes)
        if f.present():
            return f


def _jitter(rgb, rng, amount=18):
    return tuple(int(np.clip(c + rng.randint(-amount, amount), 0, 255)) for c in rgb)


def _muted(rng):
    base = rng.randint(60, 190)
    return tuple(int(np.clip(base + rng.randint(-25, 25), 0, 255)) for _ in range(3))


def _draw_background(img: Image.Image, rng: random.Random):
    w, h = img.size
    d = ImageDraw.Draw(img)
    top, bottom = np.array(_muted(rng), float), np.array(_muted(rng), float) * 0.7
    horizon = int(h * rng.uniform(0.55, 0.8))
    for y in range(h):
        t = y / max(1, h - 1)
        c = top * (1 - t) + bottom * t
        if y > horizon:
            c = c * 0.75
        d.line([(0, y), (w, y)], fill=tuple(int(v) for v in c))
    # clutter: pipes, shelves, cabinets in muted colours
    for _ in range(rng.randint(2, 8)):
        x0, y0 = rng.randint(0, w), rng.randint(0, h)
        if rng.random() < 0.5:  # pipe
            thick = rng.randint(3, max(4, h // 25))
            if rng.random() < 0.5:
                d.rectangle([0, y0, w, y0 + thick], fill=_muted(rng))
            else:
                d.rectangle([x0, 0, x0 + thick, h], fill=_muted(rng))
        else:
            bw, bh = rng.randint(w // 12, w // 4), rng.randint(h // 10, h // 3)
            d.rectangle([x0, y0, x0 + bw, y0 + bh], fill=_muted(rng), outline=_muted(rng))


def _draw_panel(img, rng, box, lamp: str):
    x0, y0, x1, y1 = box
    bw, bh = x1 - x0, y1 - y0
    pw = int(min(bw, bh / 1.35) * rng.uniform(0.75, 1.0))
    ph = int(pw * rng.uniform(1.15, 1.4))
    px, py = x0 + rng.randint(0, max(0, bw - pw)), y0 + rng.randint(0, max(0, bh - ph))
    d = ImageDraw.Draw(img)
    grey = rng.randint(95, 175)
    body = (grey, grey + rng.randint(-8, 8), grey + rng.randint(-5, 12))
    d.rectangle([px, py, px + pw, py + ph], fill=body, outline=(40, 40, 40), width=max(1, pw // 60))
    # lamp bezel + lamp
    r = int(pw * rng.uniform(0.15, 0.21))
    cx, cy = px + pw // 2 + rng.randint(-pw // 10, pw // 10), py + int(ph * rng.uniform(0.2, 0.3))
    d.ellipse([cx - r - r // 4, cy - r - r // 4, cx + r + r // 4, cy + r + r // 4], fill=(35, 35, 38))
    color = _jitter(LAMP_RGB[lamp], rng, 15)
    if lamp != "off":  # a soft glow, composited in a window around the lamp only
        gr = int(r * rng.uniform(1.6, 2.3))
        m = gr + 2 * max(1, r // 2) + 2
        x0w, y0w = max(0, cx - m), max(0, cy - m)
        x1w, y1w = min(img.size[0], cx + m), min(img.size[1], cy + m)
        win = img.crop((x0w, y0w, x1w, y1w)).convert("RGBA")
        glow = Image.new("RGBA", win.size, (0, 0, 0, 0))
        ImageDraw.Draw(glow).ellipse([cx - gr - x0w, cy - gr - y0w, cx + gr - x0w, cy + gr - y0w],
                                     fill=color + (rng.randint(70, 140),))
        glow = glow.filter(ImageFilter.GaussianBlur(max(1, r // 2)))
        img.paste(Image.alpha_composite(win, glow).convert("RGB"), (x0w, y0w))
        d = ImageDraw.Draw(img)
    d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=color)
    hl = max(1, r // 3)  # specular highlight
    hx, hy = cx - r // 3, cy - r // 3
    spec = (255, 255, 255) if lamp != "off" else (110, 110, 112)
    d.ellipse([hx - hl // 2, hy - hl // 2, hx + hl // 2, hy + hl // 2], fill=spec)
    # buttons and a label strip (distractors in neutral colours)
    by = py + int(ph * rng.uniform(0.55, 0.7))
    nb = rng.randint(2, 4)
    for i in range(nb):
        bx = px + int(pw * (i + 0.5) / nb)
        s = max(2, pw // 14)
        col = rng.choice([(20, 20, 20), (235, 235, 235), (40, 70, 160), (90, 90, 90)])
        if rng.random() < 0.5:
            d.ellipse([bx - s, by - s, bx + s, by + s], fill=col)
        else:
            d.rectangle([bx - s, by - s, bx + s, by + s], fill=col)
    ly = py + int(ph * 0.85)
    d.rectangle([px + pw // 6, ly, px + 5 * pw // 6, ly + max(2, ph // 14)], fill=(230, 230, 220))
    rb = r + r // 4  # the lamp: its disc with the dark bezel around it
    return {"lamp": (cx - rb, cy - rb, cx + rb, cy + rb), "panel": (px, py, px + pw, py + ph)}


def _draw_gauge(img, rng, box, zone: str):
    x0, y0, x1, y1 = box
    bw, bh = x1 - x0, y1 - y0
    R = int(min(bw, bh) / 2 * rng.uniform(0.7, 0.95))
    cx, cy = x0 + R + rng.randint(0, max(0, bw - 2 * R)), y0 + R + rng.randint(0, max(0, bh - 2 * R))
    d = ImageDraw.Draw(img)
    d.ellipse([cx - R, cy - R, cx + R, cy + R], fill=_jitter((70, 72, 75), rng, 20))  # housing
    r = int(R * 0.86)
    d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=_jitter((240, 238, 230), rng, 12))
    # coloured zones as thick arcs; PIL angles: 0 = 3 o'clock, clockwise. Dial: -135..+135 from 12.
    arc_w = max(2, int(r * rng.uniform(0.13, 0.2)))
    ar = int(r * 0.9)
    for z, (a, b) in ZONE_EDGES.items():
        s, e = -225 + 270 * a, -225 + 270 * b
        d.arc([cx - ar, cy - ar, cx + ar, cy + ar], start=s, end=e, fill=_jitter(ZONE_RGB[z], rng, 12), width=arc_w)
    for i in range(11):  # ticks
        ang = math.radians(-225 + 27 * i)
        r0, r1 = r * 0.62, r * 0.72
        d.line([(cx + r0 * math.cos(ang), cy + r0 * math.sin(ang)), (cx + r1 * math.cos(ang), cy + r1 * math.sin(ang))],
               fill=(30, 30, 30), width=max(1, r // 40))
    lo, hi = ZONE_EDGES[zone]
    frac = rng.uniform(lo + 0.035, hi - 0.035)
    ang = math.radians(-225 + 270 * frac)
    nl = r * rng.uniform(0.75, 0.85)
    nw = max(2, r // 14)
    tip = (cx + nl * math.cos(ang), cy + nl * math.sin(ang))
    tail = (cx - 0.15 * r * math.cos(ang), cy - 0.15 * r * math.sin(ang))
    d.line([tail, tip], fill=rng.choice([(15, 15, 15), (25, 25, 90), (60, 10, 10)]), width=nw)
    cr = max(2, r // 9)
    d.ellipse([cx - cr, cy - cr, cx + cr, cy + cr], fill=(30, 30, 30))
    return {"gauge": (cx - R, cy - R, cx + R, cy + R)}


def _draw_conveyor(img, rng, box, n_boxes: int):
    x0, y0, x1, y1 = box
    bw, bh = x1 - x0, y1 - y0
    L = int(bw * rng.uniform(0.85, 1.0))
    T = int(min(bh * 0.22, L * rng.uniform(0.09, 0.14)))
    lx = x0 + rng.randint(0, max(0, bw - L))
    ty = y0 + int(bh * rng.uniform(0.55, 0.75))  # belt top
    d = ImageDraw.Draw(img)
    frame_c = _jitter((80, 85, 95), rng, 20)
    for lxp in (lx + L // 8, lx + 7 * L // 8):  # legs
        d.rectangle([lxp - max(2, T // 5), ty + T, lxp + max(2, T // 5), min(y1, ty + T + int(bh * 0.25))], fill=frame_c)
    d.rectangle([lx, ty, lx + L, ty + T], fill=_jitter((45, 45, 48), rng, 10), outline=frame_c, width=max(1, T // 8))
    for i in range(0, L, max(4, T)):  # belt slats
        d.line([(lx + i, ty + 1), (lx + i, ty + T - 1)], fill=(65, 65, 68), width=1)
    rr = max(2, T // 2)
    for cxr in (lx, lx + L):
        d.ellipse([cxr - rr, ty + T // 2 - rr, cxr + rr, ty + T // 2 + rr], fill=frame_c)
    # boxes: non-overlapping slots along the belt
    slots = list(range(4))
    rng.shuffle(slots)
    slot_w = L / 4
    out = {"belt": (lx - rr, ty, lx + L + rr, ty + T), "boxes": []}
    for s in sorted(slots[:n_boxes]):
        w = int(slot_w * rng.uniform(0.55, 0.85))
        h = int(w * rng.uniform(0.6, 1.1))
        bx = int(lx + s * slot_w + rng.uniform(0.05, 0.95) * (slot_w - w))
        col = _jitter((185, 135, 80), rng, 22)
        d.rectangle([bx, ty - h, bx + w, ty], fill=col, outline=tuple(int(c * 0.6) for c in col), width=max(1, w // 25))
        d.line([(bx + w // 2, ty - h), (bx + w // 2, ty)], fill=_jitter((215, 190, 140), rng, 15), width=max(1, w // 10))
        out["boxes"].append((bx, ty - h, bx + w, ty))
    return out


def render_scene(rng: random.Random, facts: SceneFacts, size: tuple[int, int]) -> Image.Image:
    return render_scene_regions(rng, facts, size)[0]


def render_scene_regions(rng: random.Random, facts: SceneFacts, size: tuple[int, int]):
    """render_scene, plus the rectangles it drew, in frame pixels (x0, y0, x1, y1), corners inclusive
    as PIL draws them: "lamp" (the lamp disc with its bezel), "panel", "gauge" (the dial's housing),
    "belt" (the conveyor between its end rollers), "boxes" (left to right). The same rng draws as
    render_scene, so the pixels for a seed are unchanged."""
    w, h = size
    regions = {}
    img = Image.new("RGB", (w, h))
    _draw_background(img, rng)
    present = facts.present()
    rng.shuffle(present)
    # split the width into one column per element (random widths), leave margins
    weights = [rng.uniform(0.8, 1.3) * (1.4 if e == "belt" else 1.0) for e in present]
    total = sum(weights)
    margin = int(w * rng.uniform(0.02, 0.06))
    usable = w - 2 * margin
    x = margin
    for e, wt in zip(present, weights):
        cw = int(usable * wt / total)
        scale = rng.uniform(0.72, 0.98) if len(present) > 1 else rng.uniform(0.4, 0.75)
        bw = int(cw * (scale if len(present) > 1 else 1.0))
        bh = int(h * rng.uniform(0.55, 0.9))
        if len(present) == 1:
            bw = int(w * scale)
        bx = x + rng.randint(0, max(0, cw - bw)) if len(present) > 1 else rng.randint(margin, max(margin, w - margin - bw))
        by = rng.randint(int(h * 0.05), max(int(h * 0.05), h - bh - int(h * 0.05)))
        region = (bx, by, bx + bw, by + bh)
        if e == "lamp":
            regions.update(_draw_panel(img, rng, region, facts.lamp))
        elif e == "gauge":
            regions.update(_draw_gauge(img, rng, region, facts.gauge))
        else:
            regions.update(_draw_conveyor(img, rng, region, facts.boxes))
        x += cw
    # lighting: brightness, tint, a soft light gradient, noise, blur
    a = np.asarray(img).astype(np.float32)
    gain = rng.uniform(0.6, 1.25)
    tint = np.array([rng.uniform(0.88, 1.12) for _ in range(3)], np.float32)
    gx = np.linspace(rng.uniform(0.75, 1.1), rng.uniform(0.75, 1.1), w, dtype=np.float32)
    a *= (gain * gx[:, None] * tint[None, :])[None, :, :]
    nprng = np.random.default_rng(rng.randrange(1 << 30))
    sigma = rng.uniform(0, 10)
    if sigma > 0.5:
        a += nprng.standard_normal(a.shape, dtype=np.float32) * np.float32(sigma)
    img = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    return img, regions


def regions_k(regions: dict, size: tuple[int, int]) -> dict:
    """The rectangles of render_scene_regions in thousandths of the frame (0..1000, as gemba's
    region markers): a pixel rectangle [x0, x1] inclusive covers [x0, x1 + 1) of the frame."""
    w, h = size

    def k(r):
        x0, y0, x1, y1 = r
        c = lambda v, n: max(0, min(1000, round(1000 * v / n)))
        return (c(x0, w), c(y0, h), c(x1 + 1, w), c(y1 + 1, h))
    out = {key: k(r) for key, r in regions.items() if key != "boxes"}
    if "boxes" in regions:
        out["boxes"] = [k(r) for r in regions["boxes"]]
    return out


def jpeg_bytes(img: Image.Image, rng: random.Random) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=rng.randint(30, 92))
    return buf.getvalue()


def make_scene(rng: random.Random, size=None) -> tuple[bytes, SceneFacts, tuple[int, int]]:
    data, facts, size, _ = make_scene_regions(rng, size)
    return data, facts, size


def make_scene_regions(rng: random.Random, size=None, facts=None):
    """make_scene plus the drawn rectangles in thousandths of the frame (regions_k)."""
    facts = facts or random_facts(rng)
    size = size or rng.choice(FRAME_SIZES)
    img, regions = render_scene_regions(rng, facts, size)
    return jpeg_bytes(img, rng), facts, size, regions_k(regions, size)


# ---------------------------------------------------------------------------------------------
# Speech
# ---------------------------------------------------------------------------------------------
def speak(text: str, voice: Voice, wav_out: Path, tmpdir: Path) -> None:
    """espeak-ng -> 22.05 kHz WAV -> sox -> 16 kHz mono 16-bit WAV."""
    raw = tmpdir / "raw.wav"
    subprocess.run(["espeak-ng", "-v", voice.espeak_voice, "-s", str(voice.speed), "-p", str(voice.pitch),
                    "-w", str(raw), text], check=True, capture_output=True)
    subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(wav_out)], check=True,
                   capture_output=True)


def make_speech_set(out: Path, n: int, seed: int, held_out: bool) -> list[dict]:
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as td:
        for i in range(n):
            intent = INTENTS[i % len(INTENTS)]
            text = rng.choice(QUESTIONS[intent])
            voice = sample_voice(rng, held_out)
            name = f"q{i:05d}.wav"
            speak(text, voice, out / name, Path(td))
            rows.append({"file": name, "intent": intent, "text": text, "voice": voice.espeak_voice,
                         "speed": voice.speed, "pitch": voice.pitch})
    (out / "questions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def make_scene_set(out: Path, n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        data, facts, size = make_scene(rng)
        name = f"s{i:05d}.jpg"
        (out / name).write_bytes(data)
        rows.append({"file": name, "width": size[0], "height": size[1], "lamp": facts.lamp, "gauge": facts.gauge,
                     "boxes": facts.boxes})
    (out / "facts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


# ---------------------------------------------------------------------------------------------
# Held-out evaluation set (tests/fixtures/demo_eval) and demo assets (models/demo)
# ---------------------------------------------------------------------------------------------
EVAL_SEED = 900_001  # scenes, voices and names of the evaluation set; training never uses it


def make_eval_set(out: Path, n_cases: int = 120, seed: int = EVAL_SEED, n_clips: int | None = None) -> dict:
    """n_cases held-out cases: a frame (or two) + a spoken question in a held-out voice/speed.

    Writes frames/*.jpg, audio/*.wav and cases.json (the format is described in its "format" key).
    n_clips: speak only that many questions (balanced over intents) and let cases share them, to keep
    the committed fixture small; None = one fresh clip per case.
    """
    rng = random.Random(seed)
    if out.exists():
        shutil.rmtree(out)
    (out / "frames").mkdir(parents=True)
    (out / "audio").mkdir(parents=True)
    cases, frames, clips = [], {}, {}
    sizes = FRAME_SIZES
    with tempfile.TemporaryDirectory() as td:
        pool = {k: [] for k in INTENTS}
        for j in range(n_clips or 0):
            intent = INTENTS[j % len(INTENTS)]
            text = QUESTIONS[intent][(j // len(INTENTS)) % len(QUESTIONS[intent])]
            voice = sample_voice(rng, held_out=True)
            aname = f"audio/q{len(clips):03d}.wav"
            speak(text, voice, out / aname, Path(td))
            clips[aname] = True
            pool[intent].append((aname, text, voice))
        for i in range(n_cases):
            intent = INTENTS[i % len(INTENTS)]
            n_cams = 2 if i % 6 == 5 else 1
            cams = []
            for _ in range(n_cams):
                facts = random_facts(rng)
                size = rng.choice(sizes)
                img = render_scene(rng, facts, size)
                fname = f"frames/f{len(frames):03d}.jpg"
                img.save(out / fname, format="JPEG", quality=rng.randint(35, 65))
                frames[fname] = True
                name = camera_name(rng, held_out=True) if (n_cams > 1 or rng.random() < 0.7) else None
                cams.append({"name": name, "frame": fname, "width": size[0], "height": size[1],
                             "facts": {"lamp": facts.lamp, "gauge": facts.gauge, "boxes": facts.boxes}})
            if n_clips:
                aname, text, voice = pool[intent][(i // len(INTENTS)) % len(pool[intent])]
            else:
                text = rng.choice(QUESTIONS[intent])
                voice = sample_voice(rng, held_out=True)
                aname = f"audio/q{len(clips):03d}.wav"
                speak(text, voice, out / aname, Path(td))
                clips[aname] = True
            cases.append({"id": f"case{i:03d}", "intent": intent, "question_text": text, "audio": aname,
                          "voice": voice.espeak_voice, "speed": voice.speed, "pitch": voice.pitch, "cameras": cams})
    doc = {
        "format": ("Each case: 'cameras' (in prompt order; 'name' null = an unnamed image) with 'frame' (JPEG, "
                   "relative path) and 'facts' (lamp: red|amber|green|off|null, gauge: green|amber|red|null "
                   "(needle zone), boxes: 0-3|null; null = element not in the frame); 'audio' (16 kHz mono WAV "
                   "of 'question_text' spoken by espeak-ng voice 'voice' at 'speed' wpm, a voice/speed never "
                   "used in training); 'intent' lamp|pressure|boxes|status. Prompt: chat template over the user "
                   "content \"Camera NAME: <|image_1|> Camera NAME2: <|image_2|><|audio_1|>\" (\"<|image_k|>\" "
                   "alone for an unnamed image). Right answer: scripts/models/demo_common.py check_answer."),
        "seed": seed,
        "cases": cases,
    }
    (out / "cases.json").write_text(json.dumps(doc, indent=1) + "\n")
    return doc


def make_demo_assets(seed: int) -> None:
    """A few small frames for the daemon's replay cameras and spoken questions (held-out voices)."""
    rng = random.Random(seed)
    fdir, adir = REPO / "models/demo/frames", REPO / "models/demo/audio"
    for d in (fdir, adir):
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
    plan = [("press-2", SceneFacts("amber", "green", None), (640, 480)),
            ("press-2", SceneFacts("red", "red", None), (640, 480)),
            ("press-2", SceneFacts("green", "green", None), (640, 480)),
            ("belt-1", SceneFacts(None, None, 2), (640, 360)),
            ("belt-1", SceneFacts(None, None, 0), (640, 360)),
            ("line-3", SceneFacts("green", "amber", 3), (800, 450))]
    facts_out = []
    for i, (cam, f, size) in enumerate(plan):
        img, regions = render_scene_regions(rng, f, size)
        name = f"{cam}_{i:02d}.jpg"
        img.save(fdir / name, format="JPEG", quality=80)
        facts_out.append({"file": name, "camera": cam, "lamp": f.lamp, "gauge": f.gauge, "boxes": f.boxes,
                          "regions": regions_k(regions, size)})
    (fdir / "facts.json").write_text(json.dumps(facts_out, indent=1) + "\n")
    qs = [("lamp", "What colour is the lamp?"), ("pressure", "Is the pressure normal?"),
          ("boxes", "How many boxes are on the belt?"), ("status", "Give me a status report.")]
    with tempfile.TemporaryDirectory() as td:
        rows = []
        for intent, text in qs:
            v = sample_voice(rng, held_out=True)
            name = f"{intent}.wav"
            speak(text, v, adir / name, Path(td))
            rows.append({"file": name, "intent": intent, "text": text, "voice": v.espeak_voice, "speed": v.speed})
    (adir / "questions.json").write_text(json.dumps(rows, indent=1) + "\n")


ALERT_LAMP_PLAN = ["green"] * 3 + ["red"] * 4 + ["green"] * 4


def make_alert_lamp(out: Path, seed: int) -> None:
    """Frames of one press camera (panel and gauge) whose lamp goes green -> red -> green, each
    frame freshly placed and lit (so the change gate fires on every one); facts.json says which."""
    rng = random.Random(seed)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    facts_out = []
    for i, lamp in enumerate(ALERT_LAMP_PLAN):
        img = render_scene(rng, SceneFacts(lamp, "green", None), (640, 480))
        name = f"press-1_{i:02d}.jpg"
        img.save(out / name, format="JPEG", quality=80)
        facts_out.append({"file": name, "lamp": lamp, "gauge": "green", "boxes": None})
    (out / "facts.json").write_text(json.dumps(facts_out, indent=1) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for c in ("scenes", "speech"):
        p = sub.add_parser(c)
        p.add_argument("out", type=Path)
        p.add_argument("--n", type=int, default=16)
        p.add_argument("--seed", type=int, default=1)
        p.add_argument("--held-out", action="store_true")
    p = sub.add_parser("demo")
    p.add_argument("--seed", type=int, default=4242)
    p = sub.add_parser("fixtures")
    p.add_argument("--seed", type=int, default=EVAL_SEED)
    p.add_argument("--n", type=int, default=108)
    p.add_argument("--clips", type=int, default=32)
    p.add_argument("--out", type=Path, default=REPO / "tests/fixtures/demo_eval")
    p = sub.add_parser("alert-lamp")
    p.add_argument("--seed", type=int, default=1212)
    p.add_argument("--out", type=Path, default=REPO / "tests/fixtures/alert_lamp")
    a = ap.parse_args()
    if a.cmd == "scenes":
        make_scene_set(a.out, a.n, a.seed)
    elif a.cmd == "speech":
        make_speech_set(a.out, a.n, a.seed, a.held_out)
    elif a.cmd == "demo":
        make_demo_assets(a.seed)
    elif a.cmd == "fixtures":
        make_eval_set(a.out, a.n, a.seed, a.clips)
    elif a.cmd == "alert-lamp":
        make_alert_lamp(a.out, a.seed)


if __name__ == "__main__":
    main()
