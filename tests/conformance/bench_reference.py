"""Time ORT-GenAI's multimodal processor on images and audio clips, one input per call.

The reference half of `gemba bench preprocess --reference-python`: each input is timed on its
own, file to tensors (og.Images.open / og.Audios.open read the file inside the timed call, as
gemba's timing reads it too), after one warm-up call. Prints JSON in the shape gemba's
`PreprocessBench` serialises to:

    {"implementation": "onnxruntime-genai 0.18.0",
     "images": [{"file", "median_ms", "min_ms", "mean_ms", "runs"}], "audios": [...]}

    python bench_reference.py --model DIR [--image F]... [--audio F]... [--runs N]
"""
import argparse
import json
import statistics
import time

import onnxruntime_genai as og


def timed(fn, runs):
    fn()  # warm-up
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000.0)
    samples.sort()
    return {"median_ms": samples[len(samples) // 2], "min_ms": samples[0],
            "mean_ms": statistics.fmean(samples), "runs": len(samples)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--image", action="append", default=[])
    ap.add_argument("--audio", action="append", default=[])
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()

    processor = og.Model(args.model).create_multimodal_processor()

    def image_call(path):
        inputs = processor("<|image_1|>Describe.", images=og.Images.open(path))
        inputs["pixel_values"].as_numpy()

    def audio_call(path):
        inputs = processor("<|audio_1|>Transcribe.", audios=og.Audios.open(path))
        inputs["audio_embeds"].as_numpy()

    report = {"implementation": f"onnxruntime-genai {og.__version__}", "images": [], "audios": []}
    for path in args.image:
        report["images"].append({"file": path, **timed(lambda: image_call(path), max(args.runs, 1))})
    for path in args.audio:
        report["audios"].append({"file": path, **timed(lambda: audio_call(path), max(args.runs, 1))})
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
