"""Shared pieces of gemba's demo model: scene facts, prompts, answers, voices, tokenizer, checker.

The demo model answers questions about synthetic factory-floor frames (a machine panel with a
status lamp, a pressure gauge, a conveyor with boxes). Everything that must agree between the
scene generator, training, export and evaluation lives here, so the four scripts cannot drift:

- the facts a scene carries and the answer sentences each fact produces (`answer_for`),
- the question paraphrases (typed and spoken) and their intents,
- the prompt layout (Phi-4-multimodal chat format, `<|image_N|>` / `<|audio_N|>` placeholders),
- the voice/speed split between training and held-out evaluation,
- the tokenizer (byte-level BPE + Phi-4-mm's special tokens, placeholders at ids 200010/200011),
- the answer checker used by eval_demo.py (and, through the fixtures' facts JSON, by gemba's tests).
"""
from __future__ import annotations

import json
import math
import random
import re
from dataclasses import dataclass, field, asdict
from pathlib import Path

# ---------------------------------------------------------------------------------------------
# Facts
# ---------------------------------------------------------------------------------------------
LAMP_STATES = ("red", "amber", "green", "off")
GAUGE_ZONES = ("green", "amber", "red")
MAX_BOXES = 3
NUMBER_WORDS = ("no", "one", "two", "three")

# ORT-GenAI's phi4mm processor rewrites <|image_N|> / <|audio_N|> to these tokens and expects
# them at these ids (src/models/phi_multimodal_processor.cpp); the embedding graph scatters the
# vision / speech features into their positions.
IMAGE_TOKEN, IMAGE_TOKEN_ID = "<|endoftext10|>", 200010
AUDIO_TOKEN, AUDIO_TOKEN_ID = "<|endoftext11|>", 200011
# Chat tokens of Phi-4-multimodal, at small ids here: the decoder's logits cover only the small
# vocabulary, and nothing but the two placeholders has a hard-coded id in ORT-GenAI.
SPECIAL_TOKENS = ("<|endoftext|>", "<|user|>", "<|assistant|>", "<|end|>", "<|system|>")
VOCAB_SIZE = 640  # BPE vocabulary incl. the special tokens above = decoder vocab (logits width)

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


@dataclass
class SceneFacts:
    """What one frame shows. None = the element is not in the frame."""
    lamp: str | None
    gauge: str | None
    boxes: int | None

    def present(self) -> list[str]:
        return [k for k in ("lamp", "gauge", "belt") if self.get(k) is not None]

    def get(self, element: str):
        return {"lamp": self.lamp, "gauge": self.gauge, "belt": self.boxes}[element]


# ---------------------------------------------------------------------------------------------
# Questions (intents and paraphrases)
# ---------------------------------------------------------------------------------------------
INTENTS = ("lamp", "pressure", "boxes", "status")
QUESTIONS = {
    "lamp": [
        "What colour is the lamp?", "What color is the status light?", "Is the lamp red, amber or green?",
        "What is the lamp showing?", "Which colour is the light on the panel?", "Tell me the lamp colour.",
        "What does the status lamp show?", "Is the warning light on?",
    ],
    "pressure": [
        "Is the pressure normal?", "What does the gauge read?", "Is the pressure okay?",
        "Where is the needle on the gauge?", "Check the pressure.", "How is the pressure?",
        "Is the pressure too high?", "Read the pressure gauge.",
    ],
    "boxes": [
        "How many boxes are on the belt?", "How many boxes are on the conveyor?", "Count the boxes on the belt.",
        "Are there boxes on the belt?", "How many parcels are on the belt?", "Is the belt empty?",
        "How many boxes do you see on the conveyor?", "Count the parcels on the conveyor.",
    ],
    "status": [
        "Give me a status report.", "Status report, please.", "How is everything looking?",
        "What is the status?", "Report the status of the line.", "Give me an update.",
        "Describe what you see.", "Is everything all right?",
    ],
}

# Text-only chat (no image): the model must not invent facts.
NO_IMAGE_ANSWER = "I need a camera image to answer that."
SMALLTALK = {
    "Hello.": "Hello. Show me a camera image and ask about the lamp, the pressure or the belt.",
    "Hi there!": "Hello. Show me a camera image and ask about the lamp, the pressure or the belt.",
    "What can you do?": "I read the status lamp, the pressure gauge and the conveyor belt in camera images. "
                        "Ask me about one of them or for a status report.",
    "Who are you?": "I am a small demonstration model for the factory floor. "
                    "I read the status lamp, the pressure gauge and the conveyor belt in camera images.",
    "Help.": "I read the status lamp, the pressure gauge and the conveyor belt in camera images. "
             "Ask me about one of them or for a status report.",
    "Thank you.": "You are welcome.",
}

SYSTEM_PROMPTS = [
    "You are a factory floor assistant.",
    "You watch the production line through cameras and answer briefly.",
    "Answer in short sentences.",
]

# ---------------------------------------------------------------------------------------------
# Answers
# ---------------------------------------------------------------------------------------------
LAMP_ANSWER = {
    "red": "The lamp is red. Stop the machine and call maintenance.",
    "amber": "The lamp is amber. Check the press before the next cycle.",
    "green": "The lamp is green. The machine is running normally.",
    "off": "The lamp is off. The machine has no power.",
}
PRESSURE_ANSWER = {
    "green": "The pressure is normal. The needle is in the green zone.",
    "amber": "The pressure is high. The needle is in the amber zone.",
    "red": "The pressure is too high. The needle is in the red zone, so release the valve now.",
}
BOXES_ANSWER = {
    0: "The belt is empty.",
    1: "There is one box on the belt.",
    2: "There are two boxes on the belt.",
    3: "There are three boxes on the belt.",
}
ABSENT_ANSWER = {
    "lamp": "I cannot see a status lamp in this image.",
    "gauge": "I cannot see a pressure gauge in this image.",
    "belt": "I cannot see a conveyor belt in this image.",
}
STATUS_LAMP = {"red": "The lamp is red.", "amber": "The lamp is amber.", "green": "The lamp is green.",
               "off": "The lamp is off."}
STATUS_GAUGE = {"green": "The pressure is normal.", "amber": "The pressure is high.", "red": "The pressure is too high."}
INTENT_ELEMENT = {"lamp": "lamp", "pressure": "gauge", "boxes": "belt"}


def answer_for(intent: str, facts: SceneFacts) -> str:
    """The answer (1-3 sentences) to one intent about one frame."""
    if intent == "status":
        parts = []
        if facts.lamp is not None:
            parts.append(STATUS_LAMP[facts.lamp])
        if facts.gauge is not None:
            parts.append(STATUS_GAUGE[facts.gauge])
        if facts.boxes is not None:
            parts.append(BOXES_ANSWER[facts.boxes])
        return " ".join(parts)
    element = INTENT_ELEMENT[intent]
    value = facts.get(element)
    if value is None:
        return ABSENT_ANSWER[element]
    return {"lamp": LAMP_ANSWER, "gauge": PRESSURE_ANSWER, "belt": BOXES_ANSWER}[element][value]


def marker(camera: str) -> str:
    return f"[cam:{camera}]"


def full_answer(intent: str, cameras: list[tuple[str | None, SceneFacts]], regions: list | None = None) -> str:
    """Answer for a prompt with one or more frames; named frames are cited with [cam:NAME].

    regions (version 3): per camera the drawn rectangles in thousandths ({"lamp": (x0, y0, x1, y1),
    "gauge": ..., "boxes": [...]}, make_demo_scenes.regions_k) or None; a named frame's sentences
    then cite the region of the object they name right after its noun (region_answer)."""
    out = []
    for i, (name, facts) in enumerate(cameras):
        body = answer_for(intent, facts)
        if name and regions and regions[i] is not None:
            body = region_answer(body, name, regions[i])
        out.append(f"{marker(name)} {body}" if name else body)
    return " ".join(out)


def box_marker(camera: str, r) -> str:
    return f"[cam:{camera} box:{int(r[0])},{int(r[1])},{int(r[2])},{int(r[3])}]"


def region_answer(body: str, camera: str, regions: dict) -> str:
    """Region markers after the nouns they ground: "The lamp [cam:C box:..] is amber.", "The
    pressure [cam:C box:..] is normal.", "There are two boxes [cam:C box:..][cam:C box:..] on the
    belt." (boxes left to right). Empty belts and absent elements get none."""
    if regions.get("lamp") is not None:
        body = body.replace("The lamp is", f"The lamp {box_marker(camera, regions['lamp'])} is")
    if regions.get("gauge") is not None:
        body = body.replace("The pressure is", f"The pressure {box_marker(camera, regions['gauge'])} is")
    boxes = regions.get("boxes") or []
    if boxes:
        ms = "".join(box_marker(camera, b) for b in boxes)
        body = body.replace("box on the belt", f"box {ms} on the belt").replace(
            "boxes on the belt", f"boxes {ms} on the belt")
    return body


# A region marker as gemba strips it (src/report/cite.rs): `[cam:NAME box:x0,y0,x1,y1]`
REGION_MARK = re.compile(r"\[\s*cam\s*:\s*([^\]\s]+)\s+box\s*:\s*\(?\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*\)?\s*\]",
                         re.IGNORECASE)


def strip_regions(text: str) -> str:
    """The answer as gemba shows it: region markers out, spacing tidied."""
    t = REGION_MARK.sub("", text)
    t = re.sub(r"[ \t]{2,}", " ", t)
    return re.sub(r" +([.,;:!?])", r"\1", t)


# ---------------------------------------------------------------------------------------------
# Structured answers (alert rules: the lead's decisions in the alerts issue, models/demo/gemba-demo.toml)
# ---------------------------------------------------------------------------------------------
# gemba sends an alert rule's question as written and forces the answer's shape with a constraint
# (a JSON schema, or the choice list yes / no). The JSON text is what `json.dumps` writes (", " and
# ": " separators, the schema's property order, one line); the demo model learns that form, plus a
# few compact ones ("," / ":") so that a constraint without whitespace still meets trained text.
STRUCT_LAMP = ("green", "amber", "red", "off", "none")   # "none": no lamp in the frame
STRUCT_ZONE = ("green", "amber", "red", "none")          # "none": no gauge in the frame
STRUCTURED = {
    # kind: (question, response format, answer from the facts or None when the rule does not apply)
    "lamp": ("What colour is the status lamp?",
             {"type": "object", "properties": {"lamp": {"enum": list(STRUCT_LAMP)}}, "required": ["lamp"]}),
    "zone": ("Is the pressure gauge in the red zone?",
             {"type": "object", "properties": {"zone": {"enum": list(STRUCT_ZONE)}}, "required": ["zone"]}),
    "boxes": ("How many boxes are on the belt?",
              {"type": "object", "properties": {"boxes": {"type": "integer", "minimum": 0, "maximum": MAX_BOXES}},
               "required": ["boxes"]}),
    "lamp-red": ("Is the lamp red?", ["yes", "no"]),
    "belt-empty": ("Is the belt empty?", ["yes", "no"]),
    "pressure-high": ("Is the pressure too high?", ["yes", "no"]),
}
# The prose intent of each structured question, for prompts without a constraint.
STRUCT_INTENT = {"lamp": "lamp", "zone": "pressure", "boxes": "boxes", "lamp-red": "lamp",
                 "belt-empty": "boxes", "pressure-high": "pressure"}


def structured_value(kind: str, facts: SceneFacts):
    """The right structured answer (a dict for a JSON schema, "yes"/"no" for a choice), or None
    where the question has no answer in the schema (box count of a frame without a belt)."""
    if kind == "lamp":
        return {"lamp": facts.lamp or "none"}
    if kind == "zone":
        return {"zone": facts.gauge or "none"}
    if kind == "boxes":
        return None if facts.boxes is None else {"boxes": facts.boxes}
    yes = {"lamp-red": facts.lamp == "red", "belt-empty": facts.boxes == 0,
           "pressure-high": facts.gauge == "red"}[kind]
    return "yes" if yes else "no"


def structured_text(value, compact: bool = False) -> str:
    """The answer text a constraint lets through: json.dumps form (or compact) / the choice itself."""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":")) if compact else json.dumps(value)


# ---------------------------------------------------------------------------------------------
# Phi-4-multimodal's own pre-processing settings (ORT-extensions format, as in its test data):
# the demo bundle's vision_processor.json / speech_processor.json, and the conformance fixture's
# (tests/conformance/make_processor_bundle.py)
# ---------------------------------------------------------------------------------------------
VISION_PROCESSOR = {
    "processor": {
        "name": "phi_4_vision_processor",
        "transforms": [
            {"operation": {"name": "decode_image", "type": "DecodeImage", "attrs": {"color_space": "RGB"}}},
            {"operation": {"name": "phi4_vision_dynamic_preprocess", "type": "Phi4VisionDynamicPreprocess",
                           "attrs": {"dynamic_hd": 36, "dyhd_base_resolution": 448}}},
            {"operation": {"name": "rescale", "type": "Rescale", "inputs": [":0"]}},
            {"operation": {"name": "normalize", "type": "Normalize",
                           "attrs": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}},
            {"operation": {"name": "phi4_vision_processor", "type": "Phi4VisionProcessor",
                           "inputs": [":0", "phi4_vision_dynamic_preprocess:1"],
                           "attrs": {"dyhd_base_resolution": 448, "interpolation": "CUBIC"}}},
        ],
        "output_aligner": "phi4-vision-aligner",
    }
}

SPEECH_PROCESSOR = {
    "feature_extraction": {
        "sequence": [
            {"operation": {"name": "audio_decoder", "type": "AudioDecoderEx",
                           "attrs": {"target_sample_rates": [8000, 16000]}}},
            {"operation": {"name": "phi_4_audio_embed", "type": "Phi4AudioEmbed", "attrs": {
                "audio_compression_rate": 8,
                "stft_normal/n_fft": 512, "stft_normal/frame_length": 400, "stft_normal/hop_length": 160,
                "stft_normal/win_fn": "hamming",
                "logmel/chunk_size": 30, "logmel/hop_length": 160, "logmel/n_fft": 512, "logmel/n_mel": 80,
                "logmel/feature_first": 0, "logmel/no_padding": 1,
                "stft_normal_8k/n_fft": 256, "stft_normal_8k/frame_length": 200, "stft_normal_8k/hop_length": 80,
                "stft_normal_8k/win_fn": "hamming",
                "logmel_8k/chunk_size": 30, "logmel_8k/hop_length": 80, "logmel_8k/n_fft": 512, "logmel_8k/n_mel": 80,
                "logmel_8k/feature_first": 0, "logmel_8k/no_padding": 1}}},
        ],
        "output_aligner": "phi4-audio-aligner",
    }
}


# ---------------------------------------------------------------------------------------------
# Camera names
# ---------------------------------------------------------------------------------------------
NAME_WORDS = ["press", "belt", "dock", "oven", "mixer", "pump", "line", "cell", "bay", "kiln", "lathe", "mill",
              "weld", "paint", "pack", "sort", "boiler", "crane", "tank", "cnc", "gate", "store", "robot", "cutter",
              "dryer", "filler", "hall", "yard", "assembly", "test"]
EVAL_NAME_WORDS = ["foundry", "stamp", "chiller", "wash", "label"]  # never in training


def camera_name(rng: random.Random, held_out: bool = False) -> str:
    r = rng.random()
    if held_out:
        word = rng.choice(EVAL_NAME_WORDS + NAME_WORDS)
    elif r < 0.2:  # pseudo-words force general copying rather than a memorised list
        word = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 7)))
    elif r < 0.4:  # pronounceable pseudo-words: tokenised into multi-letter pieces like real words
        word = "".join(rng.choice("bcdfghklmnprstvwz") + rng.choice("aeiou") + rng.choice(["", "", "l", "n", "r", "s"])
                       for _ in range(rng.randint(1, 3)))
    else:
        word = rng.choice(NAME_WORDS)
    style = rng.random()
    if style < 0.55:
        return f"{word}-{rng.randint(1, 12)}"
    if style < 0.7:
        return f"{word}-{rng.choice('abcdef')}"
    if style < 0.8:
        return f"{word}{rng.randint(1, 9)}"
    if style < 0.9:
        return f"{word}_{rng.choice(['north', 'south', 'east', 'west', 'top', 'left', 'right'])}"
    return word


# ---------------------------------------------------------------------------------------------
# Voices for spoken questions (espeak-ng) and the train / held-out split
# ---------------------------------------------------------------------------------------------
TRAIN_BASES = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan"]
TRAIN_VARIANTS = ["", "m1", "m2", "m3", "m5", "m7", "m8", "f1", "f2", "f3", "f5", "Alex", "Andy", "Annie", "Denis",
                  "ed", "Gene", "Jacky", "Lee", "linda", "Mario", "Michael", "paul", "rob", "robert", "steph",
                  "Tweaky", "anika", "john", "max", "grandpa", "klatt", "klatt2", "boris", "edward", "iven",
                  "quincy", "pablo"]
TRAIN_SPEEDS = [125, 150, 170, 195, 230]
# Held out entirely: accents, voice variants and speeds that never occur in training.
EVAL_BASES = ["en-us-nyc", "en-gb-x-gbcwmd", "en-us", "en-gb"]
EVAL_VARIANTS = ["m4", "m6", "f4", "Andrea", "belinda", "Mike", "zac", "adam", "david", "klatt3"]
EVAL_SPEEDS = [140, 185, 210]


@dataclass
class Voice:
    base: str
    variant: str
    speed: int
    pitch: int

    @property
    def espeak_voice(self) -> str:
        return f"{self.base}+{self.variant}" if self.variant else self.base

    def tag(self) -> str:
        return f"{self.espeak_voice}-s{self.speed}-p{self.pitch}"


def sample_voice(rng: random.Random, held_out: bool) -> Voice:
    if held_out:
        return Voice(rng.choice(EVAL_BASES), rng.choice(EVAL_VARIANTS), rng.choice(EVAL_SPEEDS), rng.randint(30, 70))
    return Voice(rng.choice(TRAIN_BASES), rng.choice(TRAIN_VARIANTS), rng.choice(TRAIN_SPEEDS), rng.randint(25, 75))


# ---------------------------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------------------------
@dataclass
class PromptSpec:
    """A user turn: frames (named or not), a typed or spoken question, optional system prompt."""
    cameras: list[str | None] = field(default_factory=list)  # one entry per image; None = unnamed
    question: str | None = None      # typed question (None when spoken or absent)
    spoken: bool = False             # the question is <|audio_1|>
    system: str | None = None
    seps: tuple[str, str] = (" ", "")  # separator after each image, before the question


def user_content(spec: PromptSpec) -> str:
    parts = []
    for i, name in enumerate(spec.cameras, start=1):
        prefix = f"Camera {name}: " if name else ""
        parts.append(f"{prefix}<|image_{i}|>")
    text = spec.seps[0].join(parts)
    if parts:
        text += spec.seps[1]
    if spec.spoken:
        text += "<|audio_1|>"
    elif spec.question:
        text += spec.question
    return text


def chat_prompt(spec: PromptSpec) -> str:
    """The full prompt string exactly as the chat template renders it (with generation prompt)."""
    s = ""
    if spec.system:
        s += f"<|system|>{spec.system}<|end|>"
    s += f"<|user|>{user_content(spec)}<|end|><|assistant|>"
    return s


def ort_prompt(prompt: str) -> str:
    """What ORT-GenAI tokenizes: placeholders rewritten to the two special tokens."""
    prompt = re.sub(r"<\|image_\d+\|>", IMAGE_TOKEN, prompt)
    return re.sub(r"<\|audio_\d+\|>", AUDIO_TOKEN, prompt)


# ---------------------------------------------------------------------------------------------
# Phi-4-multimodal pre-processing arithmetic (ORT-extensions Phi4VisionDynamicPreprocess)
# ---------------------------------------------------------------------------------------------
BASE = 448
MASK_RES = BASE // 14  # 32


def phi4_layout(width: int, height: int, max_crops: int = 36):
    """(w_crops, h_crops, new_w, new_h) of the aspect-preserving resize into whole 448 crops."""
    wc, hc = math.ceil(width / BASE), math.ceil(height / BASE)
    if wc * hc > max_crops:
        aspect = width / height
        ratios = sorted({(i, j) for n in range(1, max_crops + 1) for i in range(1, n + 1) for j in range(1, n + 1)
                         if i * j <= max_crops}, key=lambda r: r[0] * r[1])
        best, best_diff = (1, 1), float("inf")
        for r in ratios:
            diff = abs(aspect - r[0] / r[1])
            if diff < best_diff:
                best, best_diff = r, diff
            elif diff == best_diff and width * height > 0.5 * BASE * BASE * r[0] * r[1]:
                best = r
        wc, hc = best
    tw, th = BASE * wc, BASE * hc
    rw, rh = tw / width, th / height
    # float32 arithmetic as in the C++ (static_cast<int64_t>(orig * ratio))
    import numpy as np
    rw32, rh32 = np.float32(tw) / np.float32(width), np.float32(th) / np.float32(height)
    if rw32 < rh32:
        nw, nh = tw, int(np.float32(height) * rw32)
    else:
        nw, nh = int(np.float32(width) * rh32), th
    return wc, hc, nw, nh


def phi4_num_image_tokens(width: int, height: int) -> int:
    import numpy as np
    wc, hc, nw, nh = phi4_layout(width, height)
    mask = np.ones((MASK_RES * hc, MASK_RES * wc), dtype=np.int64)
    pw, ph = BASE * wc - nw, BASE * hc - nh
    if pw >= 14:
        mask[:, mask.shape[1] - pw // 14:] = 0
    if ph >= 14:
        mask[mask.shape[0] - ph // 14:, :] = 0
    return int(256 + 1 + mask[::2, ::2].sum() + mask[::2, 0].sum() + 16)


def phi4_num_audio_tokens(frames: int) -> int:
    return math.ceil(frames / 8)


# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------
def tokenizer_corpus(rng: random.Random, n: int = 6000) -> list[str]:
    """Text the BPE merges are learned from: every sentence the model reads or writes."""
    lines = []
    for qs in QUESTIONS.values():
        lines += qs * 20
    for a in list(LAMP_ANSWER.values()) + list(PRESSURE_ANSWER.values()) + list(BOXES_ANSWER.values()) + \
            list(ABSENT_ANSWER.values()):
        lines += [a] * 20
    for q, a in SMALLTALK.items():
        lines += [q, a] * 5
    lines += [NO_IMAGE_ANSWER] * 20 + SYSTEM_PROMPTS * 10
    for _ in range(n):
        name = camera_name(rng)
        lines.append(f"Camera {name}: [cam:{name}]")
    return lines


def build_tokenizer(out_dir: Path, seed: int = 1234):
    """Train the byte-level BPE and write tokenizer.json + tokenizer_config.json into out_dir."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers, processors
    from tokenizers import Regex
    rng = random.Random(seed)
    tok = Tokenizer(models.BPE())
    # Merges are learned with whitespace isolated, so no token joins a space to a word: " press"
    # encodes as "Ġ" + "press", the same "press" as in "[cam:press-2]". The model then copies a
    # camera name from the prompt into its marker token by token, instead of having to re-spell
    # it. The saved pre-tokenizer is plain GPT-2 byte-level (read alike by HF tokenizers and
    # ORT-extensions); only the merges differ.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\s+"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=list(SPECIAL_TOKENS), min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(tokenizer_corpus(rng), trainer=trainer)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    assert tok.get_vocab_size() <= VOCAB_SIZE, tok.get_vocab_size()
    data = json.loads(tok.to_str())
    # The placeholders live far above the BPE vocabulary, at the ids ORT-GenAI hard-codes. They are
    # entered in the BPE vocab too: Hugging Face `tokenizers` (Python and the Rust crate) renumbers
    # an added token whose id is not in the model's vocab to the next free id.
    for content, tid in ((IMAGE_TOKEN, IMAGE_TOKEN_ID), (AUDIO_TOKEN, AUDIO_TOKEN_ID)):
        data["model"]["vocab"][content] = tid
        data["added_tokens"].append({"id": tid, "content": content, "single_word": False, "lstrip": False,
                                     "rstrip": False, "normalized": False, "special": True})
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n")
    ids = {t["content"]: t["id"] for t in data["added_tokens"]}
    cfg = {
        "add_bos_token": False,
        "add_eos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(ids[c]): {"content": c, "lstrip": False, "normalized": False, "rstrip": False,
                          "single_word": False, "special": True}
            for c in list(SPECIAL_TOKENS) + [IMAGE_TOKEN, AUDIO_TOKEN]
        },
        "bos_token": "<|endoftext|>",
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|end|>",
        "model_max_length": 8192,
        "pad_token": "<|endoftext|>",
        "tokenizer_class": "GPT2Tokenizer",
        "unk_token": "<|endoftext|>",
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return ids


def special_ids(tokenizer_dir: Path) -> dict:
    data = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    return {t["content"]: t["id"] for t in data["added_tokens"]}


# ---------------------------------------------------------------------------------------------
# Answer checker
# ---------------------------------------------------------------------------------------------
_MARK = re.compile(r"\[cam:([^\]\s]+)\]")
_LAMP = re.compile(r"\bThe lamp is (red|amber|green|off)\b")
_PRESS = re.compile(r"\bThe pressure is (normal|high|too high)\b")
_BOX = re.compile(r"\b(The belt is empty|There is one box|There are (two|three) boxes)\b")
_ABSENT = re.compile(r"\bI cannot see an? (status lamp|pressure gauge|conveyor belt)\b")
_PRESS_ZONE = {"normal": "green", "high": "amber", "too high": "red"}
_ABSENT_EL = {"status lamp": "lamp", "pressure gauge": "gauge", "conveyor belt": "belt"}


def extract_facts(text: str) -> dict:
    """Facts stated in one camera's part of an answer: {'lamp': 'amber', 'gauge': None (absent), ...}."""
    found: dict = {}
    conflicts = []

    def put(k, v):
        if k in found and found[k] != v:
            conflicts.append(k)
        found[k] = v

    for m in _LAMP.finditer(text):
        put("lamp", m.group(1))
    # "too high" must win over "high" at the same place: the regex alternation tries "normal|high|too high"
    for m in re.finditer(r"\bThe pressure is (too high|high|normal)\b", text):
        put("gauge", _PRESS_ZONE[m.group(1)])
    for m in _BOX.finditer(text):
        s = m.group(1)
        put("belt", 0 if "empty" in s else 1 if "one box" in s else 2 if "two" in s else 3)
    for m in _ABSENT.finditer(text):
        put(_ABSENT_EL[m.group(1)], None)
    if conflicts:
        found["_conflict"] = conflicts
    return found


def expected_facts(intent: str, facts: SceneFacts) -> dict:
    if intent == "status":
        return {k: facts.get(k) for k in facts.present()}
    el = INTENT_ELEMENT[intent]
    return {el: facts.get(el)}


def check_answer(answer: str, intent: str | None, cameras: list[tuple[str | None, SceneFacts]]) -> tuple[bool, str]:
    """Is `answer` right for this prompt? Returns (ok, reason). intent None = no image expected."""
    answer = strip_regions(answer.strip())
    if not cameras:
        ok = "camera image" in answer and not extract_facts(answer)
        return ok, "" if ok else "text-only prompt answered with facts or without asking for an image"
    named = [n for n, _ in cameras if n]
    if named:
        marks = [(m.group(1), m.start(), m.end()) for m in _MARK.finditer(answer)]
        if [m[0] for m in marks] != named:
            return False, f"markers {[m[0] for m in marks]} != cameras {named}"
        segs = [answer[marks[i][2]: marks[i + 1][1] if i + 1 < len(marks) else len(answer)]
                for i in range(len(marks))]
        if answer[: marks[0][1]].strip():
            return False, "text before the first marker"
    else:
        if _MARK.search(answer):
            return False, "marker for an unnamed image"
        segs = [answer]
    for seg, (name, facts) in zip(segs, cameras):
        got = extract_facts(seg)
        want = expected_facts(intent, facts)
        if got != want:
            return False, f"{name or 'image'}: said {got}, scene {want}"
    return True, ""


def facts_json(f: SceneFacts) -> dict:
    return asdict(f)


# ---------------------------------------------------------------------------------------------
# Python replica of the processor's global view (for training data; checked against ORT-GenAI)
# ---------------------------------------------------------------------------------------------
def global_view(img) -> "np.ndarray":
    """PIL RGB image -> the processor's 448x448 global view, float32 [3, 448, 448] in [-1, 1].

    Aspect-preserving bilinear resize into whole 448 crops, white padding, rescale + normalise
    (mean = std = 0.5), then a bicubic resize of the whole padded image to 448x448 per channel.
    """
    import numpy as np
    from PIL import Image
    w, h = img.size
    wc, hc, nw, nh = phi4_layout(w, h)
    r = img.convert("RGB").resize((nw, nh), Image.BILINEAR)
    canvas = Image.new("RGB", (wc * BASE, hc * BASE), (255, 255, 255))
    canvas.paste(r, (0, 0))
    # bicubic resampling is linear, so resizing the 0..255 band and normalising afterwards is the
    # same as normalising first (up to float rounding) and much cheaper on the large canvas
    out = np.empty((3, BASE, BASE), np.float32)
    for c, band in enumerate(canvas.split()):
        out[c] = np.asarray(band.convert("F").resize((BASE, BASE), Image.BICUBIC))
    return (out / 255.0 - 0.5) / 0.5


def pooled_view(img, pool: int = 2) -> "np.ndarray":
    """The vision encoder's actual input: global view average-pooled by `pool`, as uint8 [3, s, s]."""
    import numpy as np
    g = global_view(img)
    s = BASE // pool
    g = g.reshape(3, s, pool, s, pool).mean(axis=(2, 4))
    return np.clip(np.round((g + 1.0) * 127.5), 0, 255).astype(np.uint8)
