#!/usr/bin/env bash
# Inter-token latency of 7 generating streams while an 8k-token prompt prefills: serves
# the default model with the given `serve` flags (e.g. --itl-target-ms 0 to compare) and
# load-tests it with `bench serve` (one ~7,900-token prompt and 7 short ones, 8 at once).
# Usage: scripts/long-prefill-itl.sh [SERVE FLAGS…]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q
out=${OUT:-target/long-prefill-itl}
mkdir -p "$out"
python3 - "$out/prompts.jsonl" <<'PY'
import json, sys
text = open("tests/data/refs/ppl_text.txt").read()
with open(sys.argv[1], "w") as f:
    f.write(json.dumps({"prompt": text[:31000], "max_tokens": 8}) + "\n")
    for i in range(7):
        at = 40000 + 3000 * i
        f.write(json.dumps({"prompt": text[at:at + 600], "max_tokens": 300}) + "\n")
PY
port=${PORT:-18123}
source scripts/serve-in-background.sh
serve_in_background "$port" "$out/serve.log" -m default -c 8192 --parallel 8 "$@"
./target/release/llama-gpu bench serve --url "http://localhost:$port" --endpoint completions \
    --dataset "$out/prompts.jsonl" --concurrency 8 --num-requests 8 --ignore-eos \
    --out "$out/result.json"
