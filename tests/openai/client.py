"""The official `openai` Python client against gemba's /v1 endpoints (run by tests/openai_api.rs).

argv: BASE_URL TOKEN DEMO_DIR. Prints one JSON line of what it saw; exits non-zero (with the
assertion) when an answer or a chunk is not what OpenAI's API would send.
"""
import base64
import json
import sys
from pathlib import Path

import urllib.request

import openai

base, token, demo = sys.argv[1], sys.argv[2], Path(sys.argv[3])
client = openai.OpenAI(base_url=base, api_key=token, max_retries=0, timeout=120)
seen = {}


def data_uri(path):
    return "data:image/jpeg;base64," + base64.b64encode(path.read_bytes()).decode()


frame = data_uri(demo / "frames" / "press-2_01.jpg")  # lamp red, gauge red (frames/facts.json)

# The loaded bundle.
models = client.models.list()
ids = [m.id for m in models.data]
assert ids == ["demo"], ids
seen["models"] = ids

# A text question.
r = client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "What colour is the lamp?"}])
assert r.object == "chat.completion" and r.id.startswith("chatcmpl-"), r
assert r.choices[0].message.role == "assistant" and r.choices[0].message.content, r
assert r.choices[0].finish_reason in ("stop", "length"), r
assert r.usage.completion_tokens > 0 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens, r.usage
seen["text"] = r.choices[0].message.content

# An image question (data URI), with the sampling parameters.
image_question = [
    {"role": "user", "content": [
        {"type": "text", "text": "What colour is the lamp?"},
        {"type": "image_url", "image_url": {"url": frame}},
    ]},
]
r = client.chat.completions.create(model="demo", messages=image_question, max_tokens=160, temperature=0, top_p=1, seed=7, stop=["###"])
answer = r.choices[0].message.content
assert "lamp is red" in answer.lower(), answer
assert "[cam:" not in answer, answer
seen["image"] = answer

# A spoken question (input_audio, WAV) about the same frame.
wav = base64.b64encode((demo / "audio" / "lamp.wav").read_bytes()).decode()
r = client.chat.completions.create(model="demo", messages=[{"role": "user", "content": [
    {"type": "image_url", "image_url": {"url": frame}},
    {"type": "input_audio", "input_audio": {"data": wav, "format": "wav"}},
]}])
assert "lamp is red" in r.choices[0].message.content.lower(), r.choices[0].message.content
seen["audio"] = r.choices[0].message.content

# Streamed: every chunk well formed, the same answer as unstreamed (greedy).
chunks = list(client.chat.completions.create(model="demo", messages=image_question, max_tokens=160, temperature=0,
                                             stream=True, stream_options={"include_usage": True}))
assert len(chunks) >= 3, chunks
ids = {c.id for c in chunks}
assert len(ids) == 1 and next(iter(ids)).startswith("chatcmpl-"), ids
text = ""
finishes = []
for c in chunks:
    assert c.object == "chat.completion.chunk" and c.model == "demo" and isinstance(c.created, int), c
    if c.usage is not None:
        assert c.choices == [] and c.usage.completion_tokens > 0, c
        continue
    assert len(c.choices) == 1 and c.choices[0].index == 0, c
    text += c.choices[0].delta.content or ""
    if c.choices[0].finish_reason is not None:
        finishes.append(c.choices[0].finish_reason)
assert chunks[0].choices[0].delta.role == "assistant", chunks[0]
assert finishes in (["stop"], ["length"]), finishes
assert chunks[-1].usage is not None, chunks[-1]
assert text == answer, (text, answer)
seen["stream_chunks"] = len(chunks)

# The raw stream: only `data:` lines of JSON, ending with `data: [DONE]`.
raw = urllib.request.Request(base + "/chat/completions", method="POST",
                             headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                             data=json.dumps({"model": "demo", "messages": image_question, "stream": True}).encode())
with urllib.request.urlopen(raw, timeout=120) as resp:
    assert resp.status == 200 and resp.headers["content-type"].startswith("text/event-stream"), resp.headers
    lines = resp.read().decode().split("\n")
data = [line[len("data: "):] for line in lines if line.startswith("data: ")]
other = [line for line in lines if line and not line.startswith(("data: ", ":"))]
assert data[-1] == "[DONE]" and not other, (data, other)
for d in data[:-1]:
    assert json.loads(d)["object"] == "chat.completion.chunk", d

# Same token rules as the rest of the API.
try:
    openai.OpenAI(base_url=base, api_key="not-the-token-0123456789", max_retries=0).models.list()
    raise AssertionError("a wrong key was accepted")
except openai.AuthenticationError:
    pass

# Bad input: an OpenAI-shaped error.
try:
    client.chat.completions.create(model="demo", messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/frame.jpg"}}]}])
    raise AssertionError("a URL was fetched?")
except openai.UnprocessableEntityError as e:
    assert "does not fetch URLs" in e.body["message"], e.body
print(json.dumps(seen))
