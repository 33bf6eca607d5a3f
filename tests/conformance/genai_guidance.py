#!/usr/bin/env python3
"""ORT-GenAI reference for gemba's constrained decoding (tests/constrain_real.rs).

python tests/conformance/genai_guidance.py CASES_JSON
    CASES_JSON: {"bundle": DIR, "cases": [{"name": STR, "question": STR, "max_new_tokens": INT,
                 "guidance_type": "json_schema" | "regex" | "lark_grammar", "guidance_data": STR}]}
    Each question goes through the bundle's chat template (as `gemba ask` does), then greedy
    search with GeneratorParams.set_guidance(type, data) (ORT-GenAI's llguidance processor).
    stdout: {"ort_genai_version": STR, "cases": [{"name", "prompt_ids", "output_ids", "text"}]}
    output_ids are the generated ids without the eos id that ended the answer.
Exit status: 0 on success, 2 on bad input (message on stderr).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    spec_path = Path(sys.argv[1])
    spec = json.loads(spec_path.read_text())
    import onnxruntime_genai as og

    bundle = Path(spec["bundle"])
    if not bundle.is_dir():
        bundle = spec_path.parent / bundle
    model = og.Model(str(bundle))
    tok = og.Tokenizer(model)
    cfg = json.loads((bundle / "genai_config.json").read_text())
    eos = cfg["model"]["eos_token_id"]
    eos = set(eos if isinstance(eos, list) else [eos])
    out = []
    for case in spec["cases"]:
        messages = json.dumps([{"role": "user", "content": case["question"]}])
        text = tok.apply_chat_template(messages, add_generation_prompt=True)
        ids = [int(i) for i in tok.encode(text)]
        params = og.GeneratorParams(model)
        params.set_search_options(
            max_length=len(ids) + int(case["max_new_tokens"]), do_sample=False
        )
        params.set_guidance(case["guidance_type"], case["guidance_data"])
        gen = og.Generator(model, params)
        gen.append_tokens([ids])
        while not gen.is_done():
            gen.generate_next_token()
        seq = [int(i) for i in gen.get_sequence(0)][len(ids):]
        while seq and seq[-1] in eos:
            seq.pop()
        out.append(
            {"name": case["name"], "prompt_ids": ids, "output_ids": seq, "text": tok.decode(seq)}
        )
    print(json.dumps({"ort_genai_version": og.__version__, "cases": out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
