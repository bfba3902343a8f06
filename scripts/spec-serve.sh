#!/usr/bin/env bash
# Speculative decoding in the server: serves a model (MODEL, the default model if unset)
# without and with `--spec ngram`, and with `--spec draft --draft-model $DRAFT` when
# DRAFT is set, and load-tests each with `bench serve` on the 20 input-grounded prompts
# of tests/data/spec_prompts.jsonl (greedy chat completions, up to 128 tokens), one
# stream and then eight at once; prints each run's summary and the proposals kept.
# Usage: [MODEL=M] [DRAFT=D] scripts/spec-serve.sh [SERVE FLAGS…]   (e.g. -t 2)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q
out=${OUT:-target/spec-serve}
mkdir -p "$out"
port=${PORT:-18124}
source scripts/serve-in-background.sh
modes=(plain ngram)
[ -n "${DRAFT:-}" ] && modes+=(draft)
for mode in "${modes[@]}"; do
    case $mode in
        plain) spec=() ;;
        ngram) spec=(--spec ngram) ;;
        draft) spec=(--spec draft --draft-model "$DRAFT") ;;
    esac
    serve_in_background "$port" "$out/serve-$mode.log" -m "${MODEL:-default}" -c 2048 --parallel 8 \
        "${spec[@]}" "$@"
    echo "== $mode"
    ./target/release/llama-gpu bench serve --url "http://localhost:$port" \
        --dataset tests/data/spec_prompts.jsonl --num-requests 20 --output-len 128 \
        --concurrency 1,8 --label "$mode" --out "$out/result-$mode.json"
    curl -s "localhost:$port/metrics" | grep -E '^llama_gpu_(speculative|generation_tokens|engine_steps)'
    kill $server
    wait $server 2>/dev/null || true
done
