#!/usr/bin/env python3
"""Make the tiny text test bundles (models/tiny-qwen2/{fp32,int4}) for gemba's engine.

What it makes
  A toy Qwen2 chat model that memorises a synthetic fact table about a factory floor
  ("What is the pressure on press 2?" -> "The pressure on press 2 is 4.5 bar."), exported with
  the onnxruntime-genai (ORT-GenAI) model builder, so gemba's engine can be checked token for
  token against ORT-GenAI on answers that mean something: decimals, abbreviations ("Temp.",
  "approx.", "No. 3", "a.m."), numbered lists, multi-byte characters (°C, µm, ±) and emoji.

Steps (each prints its progress)
  1. corpus     seeded generator -> fact table -> ~2 questions per fact, 1-3 sentence answers
  2. tokenizer  byte-level BPE (Qwen2 pre-tokenizer), trained on the chat-formatted corpus,
                special tokens <|endoftext|> <|im_start|> <|im_end|>, Qwen-style chat template
  3. train      Qwen2ForCausalLM (hidden 64, 4 layers, 4 heads / 2 KV heads) on CPU, 2 threads,
                loss on the assistant turn only; prints greedy accuracy over every question
  4. build      python -m onnxruntime_genai.models.builder -p fp32 and -p int4 (-e cpu)
  5. check      greedy answers through ORT-GenAI for each bundle; prints accuracy

Reproducible: everything is seeded (--seed, default 20261124). The corpus and tokenizer are
bit-identical across runs; the weights are identical for the same torch version and thread
count (2), which the script fixes.

Usage
  python scripts/models/make_text_bundle.py                    # -> models/tiny-qwen2/{fp32,int4}
  python scripts/models/make_text_bundle.py --out DIR --work WORKDIR --steps 2500
  python scripts/models/make_text_bundle.py --large OUT_DIR [--precision fp32|int4]
      a random-weight Qwen2 of ~300M parameters (hidden 1024, 20 layers, vocab 32000) with the
      small tokenizer, for benchmarks where model compute dominates. Never commit it.

The Hugging Face checkpoint and the builder's cache stay in --work (default /tmp/tiny-qwen2-work);
only the ONNX bundles are written to --out.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_SEED = 20261124

SYSTEM_PROMPT = "You are a factory floor assistant."
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# Qwen2-style chat template: a default system turn when the conversation has none,
# `<|im_start|>role\ncontent<|im_end|>\n` per message, and the assistant header on request.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if loop.first and messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\n" + SYSTEM_PROMPT + "<|im_end|>\\n' }}"
    "{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)

# The pre-tokenizer regex of Qwen2's tokenizer.json: digits split one by one, letters with one
# leading non-letter, punctuation runs, newlines and spaces.
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

TINY = dict(hidden_size=64, intermediate_size=192, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512)
LARGE = dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=20, num_attention_heads=16,
             num_key_value_heads=4, max_position_embeddings=4096, vocab_size=32000)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------------------------
# 1. corpus
# --------------------------------------------------------------------------------------------

def make_facts(seed: int) -> list[dict]:
    """The fact table: each fact has question phrasings and one fixed answer."""
    rng = random.Random(seed)
    people = ["Ms. Sato", "Mr. Ito", "Dr. Weber", "Ms. Okafor", "Mr. Novak", "Ms. Lindqvist"]
    facts: list[dict] = []

    def fact(key: str, questions: list[str], answer: str) -> None:
        facts.append({"key": key, "questions": questions, "answer": answer})

    def dec(lo: float, hi: float) -> str:
        return f"{rng.uniform(lo, hi):.1f}"

    for n in range(1, 5):
        pressure, temp = dec(3.0, 9.5), dec(40.0, 75.0)
        strokes = rng.randint(20, 60)
        operator = people[(n + 1) % len(people)]
        over = float(pressure) > 8.0
        fact(f"press{n}.pressure",
             [f"What is the pressure on press {n}?", f"How high is the pressure on press {n}?"],
             f"The pressure on press {n} is {pressure} bar."
             + (" That is above the limit of 8.0 bar." if over else ""))
        fact(f"press{n}.oil",
             [f"What is the oil temperature of press {n}?", f"How warm is the oil in press {n}?"],
             f"Temp. of the oil in press {n} is {temp} °C."
             + (" Check cooler No. %d." % n if float(temp) > 65.0 else " It is within limits."))
        fact(f"press{n}.strokes",
             [f"How fast does press {n} run?", f"What is the stroke rate of press {n}?"],
             f"Press {n} runs at {strokes} strokes per minute.")
        fact(f"press{n}.operator",
             [f"Who operates press {n}?", f"Who runs press {n} today?"],
             f"Press {n} is run by {operator}.")
        fact(f"press{n}.status",
             [f"Give me the status of press {n}.", f"How is press {n} doing?"],
             f"Press No. {n} is running. Temp. is {temp} °C. The pressure is approx. {pressure} bar.")

    for n in range(1, 4):
        temp = f"{rng.randint(150, 260)}.{rng.randint(0, 9)}"
        dwell, cool = rng.randint(8, 40), rng.randint(3, 15)
        fact(f"oven{n}.temp",
             [f"What is the temperature in oven {n}?", f"How hot is oven {n}?"],
             f"Oven {n} is at {temp} °C.")
        fact(f"oven{n}.dwell",
             [f"How long is the dwell time in oven {n}?", f"What is the dwell time of oven {n}?"],
             f"The dwell time in oven {n} is {dwell} min. Parts must cool for approx. {cool} min after that.")

    states = [("running", "✅"), ("stopped", "⛔"), ("in maintenance", "🔧")]
    days = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]
    for i, line in enumerate("ABC"):
        speed = dec(2.0, 18.0)
        parts, pct = rng.randint(300, 2400), rng.randint(70, 99)
        state, mark = states[i]
        fact(f"line{line}.speed",
             [f"What is the speed of line {line}?", f"How fast is line {line}?"],
             f"Line {line} runs at {speed} m/min.")
        if state == "running":
            status = f"Yes, line {line} is running {mark}."
        else:
            status = f"No, line {line} is {state} {mark}. It restarts on {rng.choice(days)}."
        fact(f"line{line}.status",
             [f"Is line {line} running?", f"What is the state of line {line}?"],
             status)
        fact(f"line{line}.output",
             [f"How many parts did line {line} make this shift?", f"What is the output of line {line}?"],
             f"Line {line} made {parts} parts this shift. That is approx. {pct} % of the target.")

    for n in range(1, 4):
        flow, vib = dec(20.0, 140.0), dec(0.5, 7.5)
        fact(f"pump{n}.flow",
             [f"What is the flow of pump {n}?", f"How much does pump No. {n} deliver?"],
             f"Pump No. {n} delivers {flow} l/min.")
        fact(f"pump{n}.vibration",
             [f"What is the vibration on pump {n}?", f"How much does pump {n} vibrate?"],
             f"Vibration on pump No. {n} is {vib} mm/s."
             + (" ⚠️ That is too high." if float(vib) > 4.5 else ""))

    for n in range(1, 3):
        tol, rpm = rng.choice([2, 3, 5, 8]), rng.randint(20, 60) * 100
        fact(f"grinder{n}.tolerance",
             [f"What is the tolerance on grinder {n}?", f"How precise is grinder {n}?"],
             f"The tolerance on grinder {n} is ±{tol} µm.")
        fact(f"grinder{n}.spindle",
             [f"What is the spindle speed of grinder {n}?", f"How fast does grinder {n} spin?"],
             f"Grinder {n} spins at {rpm} rpm.")

    fact("compressor.pressure",
         ["What is the pressure of the compressor?", "How much pressure does the compressor hold?"],
         f"The compressor holds {dec(6.0, 10.0)} bar. It uses approx. {dec(15.0, 45.0)} kW.")
    fact("compressor.service",
         ["When was the compressor serviced?", "When is the compressor service due?"],
         f"The compressor was serviced on {rng.choice(days)}. The next service is due in {rng.randint(2, 9)} weeks.")
    fact("procedure.restart",
         ["How do I restart line B?", "What are the steps to restart line B?"],
         f"1. Stop the line. 2. Reset alarm No. {rng.randint(2, 9)}. 3. Press the green start button.")
    fact("procedure.overheat",
         ["What should I do if oven 2 overheats?", "Oven 2 is too hot, what do I do?"],
         f"1. Open vent No. 2. 2. Call {people[1]} on ext. {rng.randint(200, 299)}. 3. Log the temp. in the book.")
    fact("people.shift_lead",
         ["Who is the shift lead today?", "Who leads the shift?"],
         f"The shift lead is {people[3]}. She is on ext. {rng.randint(300, 399)}.")
    fact("people.safety",
         ["Who is the safety officer?", "Who is in charge of safety?"],
         f"{people[2]} is the safety officer.")
    fact("hall.humidity",
         ["What is the humidity in the hall?", "How humid is the hall?"],
         f"The humidity in the hall is {dec(30.0, 60.0)} %.")
    fact("hall.room_temp",
         ["What is the room temperature?", "How warm is the hall?"],
         f"Room temp. is approx. {dec(18.0, 26.0)} °C.")
    fact("lineC.coating",
         ["How thick is the coating on line C?", "What is the coating thickness on line C?"],
         f"The coating on line C is {dec(8.0, 30.0)} µm thick.")
    fact("break.next",
         ["When is the next break?", "What time is the next break?"],
         f"The next break is at {rng.randint(9, 11)}:{rng.choice(['00', '15', '30', '45'])} a.m. It lasts {rng.choice([10, 15, 20])} min.")
    return facts


def qa_pairs(facts: list[dict]) -> list[dict]:
    return [{"key": f["key"], "question": q, "answer": f["answer"]} for f in facts for q in f["questions"]]


# --------------------------------------------------------------------------------------------
# 2. tokenizer
# --------------------------------------------------------------------------------------------

def render_chat(question: str, answer: str | None) -> str:
    """The chat template, rendered with Jinja the way transformers does it."""
    import jinja2
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    messages = [{"role": "user", "content": question}]
    text = env.from_string(CHAT_TEMPLATE).render(messages=messages, add_generation_prompt=True)
    if answer is not None:
        text += answer + "<|im_end|>\n"
    return text


def train_tokenizer(pairs: list[dict], vocab_size: int, out_dir: Path,
                    model_max_length: int = TINY["max_position_embeddings"]) -> "tokenizers.Tokenizer":
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    # Trained without the special tokens, which are then appended after the merges, as in Qwen2.
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(SPECIAL_TOKENS), min_frequency=2, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    texts = [render_chat(p["question"], p["answer"]).replace("<|im_start|>", "\n").replace("<|im_end|>", "\n")
             for p in pairs]
    tok.train_from_iterator(texts, trainer=trainer)
    tok.add_special_tokens(SPECIAL_TOKENS)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))

    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    tokenizer_config = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(ids[t]): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                          "single_word": False, "special": True} for t in SPECIAL_TOKENS},
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": model_max_length,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2, ensure_ascii=False) + "\n",
                                                   encoding="utf-8")
    return tok


# --------------------------------------------------------------------------------------------
# 3. model
# --------------------------------------------------------------------------------------------

def qwen2_config(tok_vocab: int, special_ids: dict, shape: dict):
    from transformers import Qwen2Config
    # Qwen pads the embedding past the tokenizer's vocabulary (151936 > 151646); so do we, to a
    # multiple of 64, so an engine must take the vocabulary size from the logits, not the tokenizer.
    vocab = shape.get("vocab_size", int(math.ceil(tok_vocab / 64.0) * 64))
    return Qwen2Config(
        vocab_size=vocab,
        hidden_size=shape["hidden_size"],
        intermediate_size=shape["intermediate_size"],
        num_hidden_layers=shape["num_hidden_layers"],
        num_attention_heads=shape["num_attention_heads"],
        num_key_value_heads=shape["num_key_value_heads"],
        max_position_embeddings=shape["max_position_embeddings"],
        rms_norm_eps=1e-6,
        rope_parameters={"rope_theta": 10000.0, "rope_type": "default"},
        tie_word_embeddings=False,
        use_sliding_window=False,
        bos_token_id=special_ids["<|endoftext|>"],
        eos_token_id=special_ids["<|im_end|>"],
        pad_token_id=special_ids["<|endoftext|>"],
    )


def save_hf(model, special_ids: dict, hf_dir: Path) -> None:
    from transformers import GenerationConfig
    model.save_pretrained(hf_dir, safe_serialization=True)
    # Both turn end and text end stop generation, as in Qwen2-Instruct's generation_config.json.
    gen = GenerationConfig(
        bos_token_id=special_ids["<|endoftext|>"],
        eos_token_id=[special_ids["<|im_end|>"], special_ids["<|endoftext|>"]],
        pad_token_id=special_ids["<|endoftext|>"],
        do_sample=False,
    )
    gen.save_pretrained(hf_dir)


def encode_example(tok, question: str, answer: str) -> tuple[list[int], list[int]]:
    prompt = tok.encode(render_chat(question, None)).ids
    full = tok.encode(render_chat(question, answer)).ids
    assert full[:len(prompt)] == prompt, "prompt tokens must be a prefix of the full example"
    # Loss on the answer and its <|im_end|>; the trailing "\n" after it is never generated.
    im_end = tok.token_to_id("<|im_end|>")
    end = len(full) - full[::-1].index(im_end)
    full = full[:end]
    labels = [-100] * len(prompt) + full[len(prompt):]
    return full, labels


def greedy_answers(model, tok, questions: list[str], max_new: int = 64) -> list[str]:
    """Batched greedy decoding with the HF model (left padding), stopped at <|im_end|>."""
    import torch
    im_end, pad = tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")
    model.eval()
    out: list[str] = []
    with torch.no_grad():
        for i in range(0, len(questions), 32):
            batch = [tok.encode(render_chat(q, None)).ids for q in questions[i:i + 32]]
            width = max(len(b) for b in batch)
            ids = torch.tensor([[pad] * (width - len(b)) + b for b in batch])
            mask = torch.tensor([[0] * (width - len(b)) + [1] * len(b) for b in batch])
            gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False,
                                 eos_token_id=im_end, pad_token_id=pad)
            for row in gen[:, width:].tolist():
                if im_end in row:
                    row = row[:row.index(im_end)]
                out.append(tok.decode(row, skip_special_tokens=False))
    model.train()
    return out


def accuracy(answers: list[str], pairs: list[dict]) -> float:
    return sum(a == p["answer"] for a, p in zip(answers, pairs)) / len(pairs)


def train_model(tok, pairs: list[dict], hf_dir: Path, seed: int, steps: int) -> float:
    import torch
    from transformers import Qwen2ForCausalLM

    torch.set_num_threads(2)
    torch.manual_seed(seed)
    special_ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    config = qwen2_config(tok.get_vocab_size(), special_ids, TINY)
    model = Qwen2ForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: Qwen2ForCausalLM {n_params:,} parameters, vocab {config.vocab_size}, "
        f"hidden {config.hidden_size}, layers {config.num_hidden_layers}, "
        f"heads {config.num_attention_heads}/{config.num_key_value_heads}")

    examples = [encode_example(tok, p["question"], p["answer"]) for p in pairs]
    longest = max(len(e[0]) for e in examples)
    log(f"train: {len(examples)} examples, longest {longest} tokens, {steps} steps, batch 32")

    pad = special_ids["<|endoftext|>"]
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.98), weight_decay=0.0)
    warmup = 100

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    model.train()
    start = time.time()
    running = None
    for step in range(steps):
        idx = torch.randint(len(examples), (32,), generator=gen).tolist()
        batch = [examples[i] for i in idx]
        width = max(len(b[0]) for b in batch)
        ids = torch.tensor([b[0] + [pad] * (width - len(b[0])) for b in batch])
        labels = torch.tensor([b[1] + [-100] * (width - len(b[1])) for b in batch])
        mask = torch.tensor([[1] * len(b[0]) + [0] * (width - len(b[0])) for b in batch])
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        if (step + 1) % 100 == 0 or step + 1 == steps:
            rate = (step + 1) / (time.time() - start)
            log(f"train: step {step + 1}/{steps} loss {running:.4f} lr {sched.get_last_lr()[0]:.2e} "
                f"{rate:.1f} steps/s, eta {(steps - step - 1) / rate:.0f} s")
    log(f"train: done in {time.time() - start:.0f} s")

    answers = greedy_answers(model, tok, [p["question"] for p in pairs])
    acc = accuracy(answers, pairs)
    for a, p in zip(answers, pairs):
        if a != p["answer"]:
            log(f"  wrong: {p['question']!r} -> {a!r} (want {p['answer']!r})")
    log(f"train: greedy accuracy (torch) {acc * 100:.1f} % of {len(pairs)} questions")
    save_hf(model, special_ids, hf_dir)
    return acc


# --------------------------------------------------------------------------------------------
# 4. build, 5. check
# --------------------------------------------------------------------------------------------

def run_builder(hf_dir: Path, out_dir: Path, precision: str, cache_dir: Path) -> float:
    """The ORT-GenAI builder, as a user runs it; its chatty log goes to cache_dir/build-*.log."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir), "-o", str(out_dir),
           "-p", precision, "-e", "cpu", "-c", str(cache_dir)]
    log_path = cache_dir / f"build-{precision}.log"
    log("build: " + " ".join(cmd))
    log(f"build: log in {log_path}")
    start = time.time()
    with open(log_path, "w", encoding="utf-8") as log_file:
        proc = subprocess.run(cmd, stdout=log_file, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-30:]
        sys.exit(f"builder failed (exit {proc.returncode}); last lines of {log_path}:\n" + "\n".join(tail))
    took = time.time() - start
    log(f"build: {precision} done in {took:.1f} s")
    return took


def finish_bundle(out_dir: Path, hf_dir: Path) -> None:
    """Put the source tokenizer files in the bundle; genai_config.json is left as the builder wrote it.

    The builder re-saves the tokenizer through transformers, which moves the chat template out of
    tokenizer_config.json into chat_template.jinja and rewrites the config with loader state
    ("is_local", "backend"). ORT-GenAI and gemba read the template from tokenizer_config.json, and
    the hand-written files (Qwen2 layout: added_tokens_decoder, add_bos_token) are deterministic,
    so those are copied over the re-saved ones.
    """
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(hf_dir / name, out_dir / name)
    for extra in ("chat_template.jinja", "special_tokens_map.json", "vocab.json", "merges.txt"):
        if (out_dir / extra).exists():
            (out_dir / extra).unlink()


def genai_answers(bundle: Path, questions: list[str], max_length: int = 160) -> list[str]:
    import onnxruntime_genai as og
    model = og.Model(str(bundle))
    tok = og.Tokenizer(model)
    answers = []
    for q in questions:
        prompt = tok.apply_chat_template(json.dumps([{"role": "user", "content": q}]), add_generation_prompt=True)
        ids = tok.encode(prompt)
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=max_length)
        gen = og.Generator(model, params)
        gen.append_tokens(ids)
        out: list[int] = []
        while not gen.is_done():
            gen.generate_next_token()
            out.append(int(gen.get_next_tokens()[0]))
        eos = set(tok.eos_token_ids)
        if out and out[-1] in eos:
            out = out[:-1]
        answers.append(tok.decode(out))
    return answers


def bundle_size(d: Path) -> int:
    return sum(f.stat().st_size for f in d.iterdir() if f.is_file())


def make_tiny(args) -> None:
    work, out = Path(args.work), Path(args.out)
    hf_dir, cache = work / "hf", work / "cache"
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    facts = make_facts(args.seed)
    pairs = qa_pairs(facts)
    log(f"corpus: {len(facts)} facts, {len(pairs)} question/answer pairs (seed {args.seed})")
    (work / "qa.json").write_text(json.dumps(pairs, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")

    tok = train_tokenizer(pairs, args.vocab, hf_dir)
    sample = pairs[0]
    log(f"tokenizer: {tok.get_vocab_size()} tokens; {sample['answer']!r} -> "
        f"{len(tok.encode(sample['answer']).ids)} tokens")

    t_train = time.time()
    acc = train_model(tok, pairs, hf_dir, args.seed, args.steps)
    t_train = time.time() - t_train

    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for precision in ("fp32", "int4"):
        took = run_builder(hf_dir, out / precision, precision, cache)
        finish_bundle(out / precision, hf_dir)
        answers = genai_answers(out / precision, [p["question"] for p in pairs])
        acc_g = accuracy(answers, pairs)
        size = bundle_size(out / precision)
        log(f"check: {precision} ORT-GenAI greedy accuracy {acc_g * 100:.1f} %, bundle {size / 1e6:.2f} MB")
        results[precision] = {"accuracy": acc_g, "bytes": size, "build_s": took}
    shutil.copy(work / "qa.json", out / "qa.json")
    import onnxruntime, onnxruntime_genai, torch, transformers
    versions = {"torch": torch.__version__, "transformers": transformers.__version__,
                "onnxruntime": onnxruntime.__version__, "onnxruntime_genai": onnxruntime_genai.__version__}
    summary = {"versions": versions, "seed": args.seed, "steps": args.steps, "train_s": round(t_train), "torch_accuracy": acc,
               "bundles": results, "total_s": round(time.time() - t0)}
    log("summary: " + json.dumps(summary))


# --------------------------------------------------------------------------------------------
# --large
# --------------------------------------------------------------------------------------------

def make_large(args) -> None:
    import torch
    from transformers import Qwen2ForCausalLM

    out = Path(args.large)
    work = Path(args.work) / "large"
    hf_dir, cache = work / "hf", work / "cache"
    t0 = time.time()
    tok = train_tokenizer(qa_pairs(make_facts(args.seed)), args.vocab, hf_dir, LARGE["max_position_embeddings"])
    special_ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    torch.manual_seed(args.seed)
    config = qwen2_config(tok.get_vocab_size(), special_ids, LARGE)
    log(f"large: random Qwen2 hidden {config.hidden_size}, {config.num_hidden_layers} layers, "
        f"vocab {config.vocab_size} (tokenizer {tok.get_vocab_size()}), context {config.max_position_embeddings}")
    model = Qwen2ForCausalLM(config)
    log(f"large: {sum(p.numel() for p in model.parameters()) / 1e6:.0f} M parameters")
    save_hf(model, special_ids, hf_dir)
    del model
    run_builder(hf_dir, out, args.precision, cache)
    finish_bundle(out, hf_dir)
    shutil.rmtree(work)
    log(f"large: {out} {bundle_size(out) / 1e6:.0f} MB in {time.time() - t0:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "models" / "tiny-qwen2"), help="bundle root (fp32/ and int4/)")
    ap.add_argument("--work", default="/tmp/tiny-qwen2-work", help="HF checkpoint and builder cache")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--steps", type=int, default=600, help="training steps (batch 32)")
    ap.add_argument("--vocab", type=int, default=600, help="tokenizer vocabulary incl. special tokens")
    ap.add_argument("--large", metavar="OUT_DIR", help="make a random-weight ~300M model instead")
    ap.add_argument("--precision", choices=["fp32", "int4"], default="fp32", help="for --large")
    args = ap.parse_args()
    if args.large:
        make_large(args)
    else:
        make_tiny(args)


if __name__ == "__main__":
    main()
