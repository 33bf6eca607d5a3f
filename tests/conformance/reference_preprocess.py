"""Write ORT-GenAI's multimodal processor outputs for prompts and media to .npz files.

The reference side of gemba's pre-processing conformance test: onnxruntime_genai's
`create_multimodal_processor()` (onnxruntime-extensions' Phi-4 image and audio transforms)
run on the same bundle, prompts and files that `gemba preprocess` gets.

    python reference_preprocess.py --model DIR [--image F]... [--audio F]... --out REF.npz [PROMPT]
    python reference_preprocess.py --model DIR --cases CASES.json
        CASES.json: [{"prompt": "...", "images": [...], "audios": [...], "out": "REF.npz"}, ...]
"""
import argparse
import ctypes
import json
import math

import numpy as np
import onnxruntime_genai as og

NAMES = [
    "input_ids", "pixel_values", "image_attention_mask", "image_sizes", "num_image_tokens",
    "audio_embeds", "audio_attention_mask", "audio_sizes", "audio_projection_mode",
]


def bfloat16_bits(tensor):
    """A bfloat16 tensor's raw bits as uint16 (numpy has no bfloat16, so `as_numpy` fails).

    `Tensor.data()` is a capsule around the element buffer; gemba's .npz files store bfloat16
    the same way, as '<u2'.
    """
    capsule = tensor.data()
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype, get_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
    get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    get_pointer.restype, get_pointer.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    pointer = get_pointer(capsule, get_name(capsule))
    shape = tensor.shape()
    raw = ctypes.string_at(pointer, math.prod(shape) * 2)
    return np.frombuffer(raw, dtype="<u2").reshape(shape)


def run_case(processor, prompt, images, audios, out):
    inputs = processor(
        prompt,
        images=og.Images.open(*images) if images else None,
        audios=og.Audios.open(*audios) if audios else None,
    )
    arrays = {}
    for name in NAMES:
        try:
            tensor = inputs[name]
        except Exception:  # absent for prompts without that modality
            continue
        try:
            arrays[name] = tensor.as_numpy()
        except (TypeError, RuntimeError):  # bfloat16: no numpy type
            arrays[name] = bfloat16_bits(tensor)
    np.savez(out, **arrays)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--image", action="append", default=[])
    ap.add_argument("--audio", action="append", default=[])
    ap.add_argument("--out")
    ap.add_argument("--cases", help="JSON list of cases, run with one loaded model")
    ap.add_argument("prompt", nargs="?", default="")
    args = ap.parse_args()

    model = og.Model(args.model)
    processor = model.create_multimodal_processor()
    if args.cases:
        with open(args.cases) as f:
            for case in json.load(f):
                run_case(processor, case["prompt"], case.get("images", []), case.get("audios", []), case["out"])
    else:
        run_case(processor, args.prompt, args.image, args.audio, args.out)


if __name__ == "__main__":
    main()
