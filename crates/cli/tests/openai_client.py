"""Drives `llama-gpu serve` with the official `openai` package, as users do.

Usage: python openai_client.py BASE_URL API_KEY   (the server allows 15 requests/min)
Prints one line per check and exits non-zero on the first failure.
"""
import sys

import openai

base, key = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
model = client.models.list().data[0].id
ask = [{"role": "user", "content": "What is the capital of France?"}]


def check(name, ok, detail=""):
    print(("ok   " if ok else "FAIL ") + name + (": " + str(detail) if detail else ""))
    if not ok:
        sys.exit(1)


r = client.chat.completions.create(model=model, messages=ask, max_tokens=12, temperature=0)
check("chat", r.choices[0].message.role == "assistant" and r.choices[0].message.content, r)
check("chat usage", r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens)

pieces, usage = [], None
for chunk in client.chat.completions.create(
    model=model, messages=ask, max_tokens=12, temperature=0, stream=True,
    stream_options={"include_usage": True},
):
    if chunk.usage:
        usage = chunk.usage
    for c in chunk.choices:
        pieces.append(c.delta.content or "")
check("chat stream", "".join(pieces) == r.choices[0].message.content, "".join(pieces))
check("stream usage", usage is not None and usage.completion_tokens == r.usage.completion_tokens, usage)

c = client.completions.create(model=model, prompt="The capital of France is", max_tokens=4, temperature=0, logprobs=2)
check("completions + logprobs", c.choices[0].text.startswith(" Paris") and len(c.choices[0].logprobs.tokens) == 4, c)

two = client.completions.create(model=model, prompt="Once upon a time", max_tokens=6, n=2, temperature=1.0, seed=1)
check("n=2", len(two.choices) == 2 and {ch.index for ch in two.choices} == {0, 1}, two)

lp = client.chat.completions.create(model=model, messages=ask, max_tokens=3, temperature=0, logprobs=True, top_logprobs=2)
entries = lp.choices[0].logprobs.content
check("chat logprobs", len(entries) >= 1 and len(entries[0].top_logprobs) == 2 and entries[0].logprob <= 0, entries)

s = client.completions.create(model=model, prompt="1, 2, 3, 4,", max_tokens=20, temperature=0, stop=[" 7"])
check("stop", " 7" not in s.choices[0].text and s.choices[0].finish_reason == "stop", s.choices[0])

a = client.completions.create(model=model, prompt="My favourite colour is", max_tokens=8, temperature=1.0, seed=7)
b = client.completions.create(model=model, prompt="My favourite colour is", max_tokens=8, temperature=1.0, seed=7)
check("seed reproducibility", a.choices[0].text == b.choices[0].text, (a.choices[0].text, b.choices[0].text))

try:
    openai.OpenAI(base_url=base + "/v1", api_key="wrong", max_retries=0).models.list()
    check("401", False, "no error")
except openai.AuthenticationError as e:
    check("401", e.status_code == 401 and "API key" in e.message, e)

try:
    for _ in range(20):
        client.completions.create(model=model, prompt="x", max_tokens=1)
    check("429", False, "never limited")
except openai.RateLimitError as e:
    check("429", e.status_code == 429 and e.response.headers.get("retry-after"), e)

try:
    client.chat.completions.create(model="no-such-model", messages=ask, max_tokens=1)
    check("404 model", False, "no error")
except openai.RateLimitError:
    check("404 model (rate limited first)", True)
except openai.NotFoundError as e:
    check("404 model", e.status_code == 404, e)
print("all checks passed")
