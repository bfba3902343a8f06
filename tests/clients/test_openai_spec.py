"""Every object the server answers, checked field by field against OpenAI's published
OpenAPI schemas (spec/openai-responses.json, reduced from github.com/openai/openai-openapi):
required fields, types, nullability and enums, for chat completions and their stream
chunks, completions (streamed and not), models, and errors of every status we send.

The server is started by run.py (LLAMA_GPU_BASE_URL); the model is the default one.
"""

import copy
import json
import os
import urllib.error
import urllib.request

import pytest
from jsonschema import Draft202012Validator

BASE = os.environ["LLAMA_GPU_BASE_URL"]
SPEC = json.load(open(os.path.join(os.path.dirname(__file__), "spec", "openai-responses.json")))
MODEL = "gpt-4o"

# Fields the spec leaves optional that OpenAI's API always sends, and so do we: clients
# read them without checking.
ALWAYS_CHAT = ["system_fingerprint", "service_tier", "usage"]
ALWAYS_COMPLETION = ["system_fingerprint", "usage"]
ALWAYS_CHUNK = ["system_fingerprint", "service_tier"]


def validator(name, defs=None):
    schema = {"$defs": defs or SPEC["$defs"], "$ref": f"#/$defs/{name}"}
    return Draft202012Validator(schema)


def assert_valid(name, value, defs=None, always=()):
    errors = sorted(validator(name, defs).iter_errors(value), key=lambda e: list(e.absolute_path))
    report = "\n".join(f"  {'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in errors)
    assert not errors, f"{name} does not match OpenAI's spec:\n{report}\nin {json.dumps(value)[:2000]}"
    missing = [field for field in always if field not in value]
    assert not missing, f"{name} without {missing}"


def call(method, path, body=None, raw=None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(
        BASE + path, data=data, method=method, headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def post(path, body):
    status, text = call("POST", path, body)
    assert status == 200, text
    return json.loads(text)


def stream(path, body):
    status, text = call("POST", path, dict(body, stream=True))
    assert status == 200, text
    payloads = [line[len("data: "):] for line in text.splitlines() if line.startswith("data: ")]
    assert payloads[-1] == "[DONE]"
    return [json.loads(p) for p in payloads[:-1]]


def chat(content="Say hello.", **extra):
    return dict(
        {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 8, "temperature": 0},
        **extra,
    )


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}

CHAT_REQUESTS = {
    "plain": chat(),
    "system_and_history": dict(
        chat(),
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Name a color."},
        ],
    ),
    "logprobs": chat(logprobs=True, top_logprobs=2),
    "n_and_stop": chat(n=2, stop=["\n"], temperature=0.8, seed=1),
    "length": chat(max_tokens=1),
    "json_schema": chat(
        "Give a name.",
        max_tokens=24,
        response_format={
            "type": "json_schema",
            "json_schema": {
                "name": "person",
                "strict": True,
                "schema": {
                    "type": "object",
                    "properties": {"name": {"type": "string", "maxLength": 8}},
                    "required": ["name"],
                    "additionalProperties": False,
                },
            },
        },
    ),
    "json_object": chat("Give a JSON object.", max_tokens=16, response_format={"type": "json_object"}),
    "tool_required": chat("Weather in Paris?", max_tokens=32, tools=[WEATHER], tool_choice="required"),
    "tool_auto": chat("Weather in Paris?", max_tokens=32, tools=[WEATHER]),
    "tool_result": dict(
        chat(max_tokens=12, tools=[WEATHER]),
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21 C"},
        ],
    ),
}


@pytest.mark.parametrize("name", CHAT_REQUESTS)
def test_chat_completion_matches_the_spec(name):
    response = post("/v1/chat/completions", CHAT_REQUESTS[name])
    assert_valid("CreateChatCompletionResponse", response, always=ALWAYS_CHAT)
    for choice in response["choices"]:
        assert "refusal" in choice["message"] and "logprobs" in choice
    usage = response["usage"]
    assert "completion_tokens_details" in usage and "prompt_tokens_details" in usage
    if name == "tool_required":
        assert response["choices"][0]["message"]["tool_calls"]


@pytest.mark.parametrize("name", ["plain", "logprobs", "n_and_stop", "json_object", "tool_required", "tool_auto"])
def test_chat_stream_chunks_match_the_spec(name):
    body = dict(CHAT_REQUESTS[name], stream_options={"include_usage": True})
    chunks = stream("/v1/chat/completions", body)
    for chunk in chunks:
        assert_valid("CreateChatCompletionStreamResponse", chunk, always=ALWAYS_CHUNK)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
    finishes = [c["finish_reason"] for k in chunks for c in k["choices"] if c["finish_reason"]]
    assert len(finishes) == body.get("n", 1)


COMPLETION_REQUESTS = {
    "plain": {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 8, "temperature": 0},
    "logprobs": {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 4, "logprobs": 2},
    "n_and_stop": {"model": MODEL, "prompt": ["One", "Two"], "max_tokens": 6, "n": 2, "stop": "\n", "seed": 3},
    "token_prompt": {"model": MODEL, "prompt": [1, 2, 3], "max_tokens": 3, "temperature": 0},
}


@pytest.mark.parametrize("name", COMPLETION_REQUESTS)
def test_completion_matches_the_spec(name):
    response = post("/v1/completions", COMPLETION_REQUESTS[name])
    assert_valid("CreateCompletionResponse", response, always=ALWAYS_COMPLETION)


@pytest.mark.parametrize("name", ["plain", "logprobs", "n_and_stop"])
def test_completion_stream_chunks_match_the_spec(name):
    body = dict(COMPLETION_REQUESTS[name], stream_options={"include_usage": True})
    chunks = stream("/v1/completions", body)
    for chunk in chunks:
        assert_valid("CreateCompletionResponse", chunk, streamed_completion_defs())
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0


def completion_choice(defs):
    return defs["CreateCompletionResponse"]["properties"]["choices"]["items"]["properties"]


def streamed_completion_defs(defs=None):
    """Where we knowingly differ from the spec (1): it gives streamed completions the
    response's own shape, with a non-null `finish_reason`, but a chunk before the last
    has no finish reason yet: it is null there, as in OpenAI's own API and vLLM."""
    defs = copy.deepcopy(defs or SPEC["$defs"])
    finish = completion_choice(defs)["finish_reason"]
    completion_choice(defs)["finish_reason"] = {"anyOf": [finish, {"type": "null"}]}
    return defs


def echo_defs():
    """Where we knowingly differ from the spec (2): with `echo`, the prompt's first token
    has no log-probability, so its `token_logprobs` and `top_logprobs` entries are null,
    as in OpenAI's own legacy API and vLLM (the spec types them as numbers)."""
    defs = copy.deepcopy(SPEC["$defs"])
    fields = completion_choice(defs)["logprobs"]["anyOf"][0]["properties"]
    fields["token_logprobs"]["items"] = {"anyOf": [fields["token_logprobs"]["items"], {"type": "null"}]}
    fields["top_logprobs"]["items"] = {"anyOf": [fields["top_logprobs"]["items"], {"type": "null"}]}
    return defs


def test_echo_matches_the_spec_but_for_the_first_prompt_token():
    body = {"model": MODEL, "prompt": "The sky is", "max_tokens": 2, "echo": True, "logprobs": 1, "temperature": 0}
    response = post("/v1/completions", body)
    assert_valid("CreateCompletionResponse", response, echo_defs())
    logprobs = response["choices"][0]["logprobs"]
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
    assert all(isinstance(lp, float) for lp in logprobs["token_logprobs"][1:])
    for chunk in stream("/v1/completions", body):
        assert_valid("CreateCompletionResponse", chunk, streamed_completion_defs(echo_defs()))


def test_models_match_the_spec():
    status, text = call("GET", "/v1/models")
    assert status == 200
    listed = json.loads(text)
    assert_valid("ListModelsResponse", listed)
    assert [m["id"] for m in listed["data"]] == [MODEL]
    for name in [MODEL, "string"]:
        status, text = call("GET", f"/v1/models/{name}")
        assert status == 200, text
        assert_valid("Model", json.loads(text))


ERRORS = {
    "unknown model": ("POST", "/v1/chat/completions", dict(chat(), model="nope"), None, 404),
    "unknown model, completions": ("POST", "/v1/completions", {"model": "nope", "prompt": "x"}, None, 404),
    "unknown model, retrieve": ("GET", "/v1/models/nope", None, None, 404),
    "unknown route": ("GET", "/v1/nothing-here", None, None, 404),
    "wrong method": ("GET", "/v1/chat/completions", None, None, 405),
    "not JSON": ("POST", "/v1/chat/completions", None, b"{not json", 400),
    "no messages": ("POST", "/v1/chat/completions", {"model": MODEL}, None, 400),
    "bad type": ("POST", "/v1/chat/completions", dict(chat(), temperature="hot"), None, 400),
    "out of range": ("POST", "/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": -1}, None, 400),
    "bad schema": ("POST", "/v1/chat/completions", dict(chat(), response_format={"type": "json_schema"}), None, 400),
    "too large": ("POST", "/v1/completions", {"model": MODEL, "prompt": "x" * 200_000}, None, 413),
}


@pytest.mark.parametrize("name", ERRORS)
def test_errors_match_the_spec(name):
    method, path, body, raw, expected = ERRORS[name]
    status, text = call(method, path, body, raw)
    assert status == expected, text
    error = json.loads(text)
    assert_valid("ErrorResponse", error)
    assert error["error"]["message"]
