#!/usr/bin/env python3
"""Interpolate two decoder checkpoints of train_demo.py: OUT = W * B + (1 - W) * A, per tensor.

    mix_demo.py --work WORK --a structured2_stage.pt --b structured3_stage.pt --w 0.8 --out mix80_stage.pt

Both checkpoints must come from the same run (stage 6c fine-tunes stage 6b, so their weights lie in
one basin and the straight line between them is a family of working models: W = 0 is A, 1 is B).
The decoder, the vision and the speech projections are all interpolated; the encoders are shared.
Export the result with `export_demo.py --work WORK --out OUT --decoder mix80_stage.pt`.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch


def mix(a: dict, b: dict, w: float) -> dict:
    assert a.keys() == b.keys(), (a.keys(), b.keys())
    out = {}
    for k in a:
        ta, tb = a[k], b[k]
        out[k] = (1 - w) * ta + w * tb if torch.is_floating_point(ta) else ta
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--a", required=True, help="checkpoint at W = 0")
    ap.add_argument("--b", required=True, help="checkpoint at W = 1")
    ap.add_argument("--w", type=float, required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    ca = torch.load(a.work / a.a, map_location="cpu")
    cb = torch.load(a.work / a.b, map_location="cpu")
    out = {k: mix(ca[k], cb[k], a.w) for k in ("decoder", "vision_proj", "speech_proj")}
    out["config"] = ca["config"]
    assert cb["config"] == ca["config"]
    out["step"] = f"{a.w} * {a.b} + {1 - a.w:g} * {a.a}"
    torch.save(out, a.work / a.out)
    print(f"{a.out}: {out['step']}")


if __name__ == "__main__":
    main()
