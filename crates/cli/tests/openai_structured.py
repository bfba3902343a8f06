"""Structured output and tools through the official `openai` package, unchanged.

Usage: python openai_structured.py BASE_URL
Prints one line per check and exits non-zero on the first failure.
"""
import json
import sys
from typing import List

import openai
import pydantic

base = sys.argv[1]
client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
model = client.models.list().data[0].id


def check(name, ok, detail=""):
    print(("ok   " if ok else "FAIL ") + name + (": " + str(detail) if detail else ""))
    if not ok:
        sys.exit(1)


class City(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=30)
    country: str = pydantic.Field(max_length=30)
    landmarks: List[str] = pydantic.Field(max_length=3)


parsed = client.chat.completions.parse(
    model=model,
    messages=[{"role": "user", "content": "Describe Paris as JSON."}],
    response_format=City,
    max_tokens=200,
    temperature=0,
)
message = parsed.choices[0].message
check("parse(response_format=PydanticModel)", isinstance(message.parsed, City), message)

weather = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 40}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
ask = [{"role": "user", "content": "What is the weather in Paris?"}]
r = client.chat.completions.create(
    model=model, messages=ask, tools=[weather], tool_choice="required", max_tokens=100, temperature=0
)
choice = r.choices[0]
calls = choice.message.tool_calls or []
check("tool call", choice.finish_reason == "tool_calls" and len(calls) >= 1, choice)
call = calls[0]
args = json.loads(call.function.arguments)
check("tool call arguments", call.function.name == "get_weather" and isinstance(args.get("city"), str), call)

history = ask + [
    {"role": "assistant", "content": None, "tool_calls": [c.model_dump() for c in calls]},
    {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature_c": 18, "sky": "sunny"})},
]
answer = client.chat.completions.create(
    model=model, messages=history, tools=[weather], tool_choice="none", max_tokens=40, temperature=0
)
check(
    "answer after the tool result",
    answer.choices[0].message.content and not answer.choices[0].message.tool_calls,
    answer.choices[0],
)

streamed_calls = {}
for chunk in client.chat.completions.create(
    model=model, messages=ask, tools=[weather], tool_choice="required", max_tokens=100, temperature=0, stream=True
):
    for d in chunk.choices[0].delta.tool_calls or []:
        entry = streamed_calls.setdefault(d.index, {"name": "", "arguments": ""})
        entry["name"] += d.function.name or ""
        entry["arguments"] += d.function.arguments or ""
check(
    "streamed tool call",
    streamed_calls.get(0) == {"name": call.function.name, "arguments": call.function.arguments},
    streamed_calls,
)
print("all checks passed")
