#!/usr/bin/env python3
"""ORT-GenAI reference for gemba's multimodal (phi4mm) token conformance.

  python tests/conformance/genai_mm_greedy.py CASES_JSON

CASES_JSON: {"bundle": DIR,
             "cases": [{"name": STR, "prompt": STR (the full prompt, chat template already applied),
                        "images": [FILE...], "audios": [FILE...], "max_length": INT}]}
Each case goes through ORT-GenAI's multimodal processor (og.Images / og.Audios, the prompt's
<|image_N|> / <|audio_N|> placeholders) and greedy search (do_sample=False).
stdout: {"ort_genai_version", "cases": [{"name", "prompt_tokens", "output_ids": [generated ids],
         "finish": "eos" | "length"}]} — like genai_greedy.py, output_ids never include the eos id
ORT-GenAI selects (it does not append it, batch 1). Relative paths are taken from the JSON's
directory when they do not exist as given. Exit status 2 on bad input.
"""
import json
import sys
from pathlib import Path


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    import onnxruntime_genai as og
    if hasattr(og, "disable_telemetry_events"):
        og.disable_telemetry_events()
    spec_path = Path(sys.argv[1])
    spec = json.loads(spec_path.read_text())

    def resolve(p: str) -> str:
        q = Path(p)
        return str(q if q.exists() else spec_path.parent / q)

    model = og.Model(resolve(spec["bundle"]))
    processor = model.create_multimodal_processor()
    eos = set()
    cfg = json.loads((Path(resolve(spec["bundle"])) / "genai_config.json").read_text())
    e = cfg["model"]["eos_token_id"]
    eos.update(e if isinstance(e, list) else [e])
    out = {"ort_genai_version": og.__version__, "cases": []}
    for case in spec["cases"]:
        images = og.Images.open(*[resolve(p) for p in case.get("images", [])]) if case.get("images") else None
        audios = og.Audios.open(*[resolve(p) for p in case.get("audios", [])]) if case.get("audios") else None
        inputs = processor(case["prompt"], images=images, audios=audios)
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=case["max_length"])
        gen = og.Generator(model, params)
        gen.set_inputs(inputs)
        n_prompt = gen.token_count()
        finish = "length"
        while not gen.is_done():
            gen.generate_next_token()
            if int(gen.get_next_tokens()[0]) in eos:
                finish = "eos"
        seq = [int(t) for t in gen.get_sequence(0)]
        ids = seq[n_prompt:]
        if ids and ids[-1] in eos:
            ids = ids[:-1]
        out["cases"].append({"name": case["name"], "prompt_tokens": n_prompt, "output_ids": ids, "finish": finish})
        print(f"{case['name']}: {len(ids)} tokens ({finish})", file=sys.stderr)
    json.dump(out, sys.stdout, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
