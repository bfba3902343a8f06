"""Reduces OpenAI's published OpenAPI document (github.com/openai/openai-openapi,
`openapi.json`) to the response schemas the server produces, structure only: types,
required fields, nullability, enums and references. Descriptions and examples are
dropped. Run it by hand when the spec moves:

    python3 tests/clients/spec/extract.py openapi.json COMMIT > tests/clients/spec/openai-responses.json
"""

import json
import sys

ROOTS = [
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "CreateCompletionResponse",
    "ListModelsResponse",
    "Model",
    "ErrorResponse",
]
KEEP = {"type", "properties", "required", "items", "enum", "anyOf", "oneOf", "allOf",
        "additionalProperties", "const", "$ref", "default"}


def reduce(node, wanted):
    if isinstance(node, list):
        return [reduce(n, wanted) for n in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: reduce(s, wanted) for name, s in value.items()}
        elif key == "$ref":
            name = value.rsplit("/", 1)[-1]
            wanted.append(name)
            out[key] = f"#/$defs/{name}"
        elif key in KEEP:
            out[key] = reduce(value, wanted)
    # OpenAPI 3.0's `nullable: true` is JSON Schema's "or null".
    if node.get("nullable") is True:
        out = {"anyOf": [out, {"type": "null"}]}
    return out


def main():
    spec = json.load(open(sys.argv[1]))
    schemas = spec["components"]["schemas"]
    defs, wanted = {}, list(ROOTS)
    while wanted:
        name = wanted.pop()
        if name not in defs:
            defs[name] = reduce(schemas[name], wanted)
    json.dump(
        {
            "source": f"github.com/openai/openai-openapi openapi.json at {sys.argv[2]} (MIT), "
            "reduced to structure by tests/clients/spec/extract.py",
            "$defs": dict(sorted(defs.items())),
        },
        sys.stdout,
        indent=1,
        sort_keys=False,
    )
    print()


main()
