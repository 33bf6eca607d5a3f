"""Write ORT-GenAI's multimodal processor outputs for a prompt and media to an .npz file.

The reference side of gemba's pre-processing conformance test: onnxruntime_genai's
`create_multimodal_processor()` (which runs onnxruntime-extensions' Phi-4 image and audio
transforms) on the same bundle, prompt and files that `gemba preprocess` gets.

    python reference_preprocess.py --model DIR [--image F]... [--audio F]... --out REF.npz [PROMPT]
"""
import argparse

import numpy as np
import onnxruntime_genai as og

NAMES = [
    "input_ids", "pixel_values", "image_attention_mask", "image_sizes", "num_image_tokens",
    "audio_embeds", "audio_attention_mask", "audio_sizes", "audio_projection_mode",
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--image", action="append", default=[])
    ap.add_argument("--audio", action="append", default=[])
    ap.add_argument("--out", required=True)
    ap.add_argument("prompt", nargs="?", default="")
    args = ap.parse_args()

    model = og.Model(args.model)
    processor = model.create_multimodal_processor()
    images = og.Images.open(*args.image) if args.image else None
    audios = og.Audios.open(*args.audio) if args.audio else None
    inputs = processor(args.prompt, images=images, audios=audios)
    arrays = {}
    for name in NAMES:
        try:
            arrays[name] = inputs[name].as_numpy()
        except Exception:  # absent for prompts without that modality
            continue
    np.savez(args.out, **arrays)


if __name__ == "__main__":
    main()
