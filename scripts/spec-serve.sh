#!/usr/bin/env bash
# Speculative decoding in the server: serves a model (MODEL, the default model if unset)
# without and with `--spec ngram`, and with `--spec draft --draft-model $DRAFT` when
# DRAFT is set, and load-tests each with `bench serve` on the 20 input-grounded prompts
# of tests/data/spec_prompts.jsonl (greedy chat completions, up to 128 tokens), one
# stream and then eight at once; prints each run's summary and the proposals kept.
# MODES (e.g. "plain draft"), CONCURRENCY (e.g. 8) and NUM_REQUESTS (20; the prompts are
# cycled) narrow or widen what runs.
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
[ -n "${MODES:-}" ] && read -ra modes <<< "$MODES"
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
        --dataset tests/data/spec_prompts.jsonl --num-requests "${NUM_REQUESTS:-20}" --output-len 128 \
        --concurrency "${CONCURRENCY:-1,8}" --label "$mode" --out "$out/result-$mode.json"
    curl -s "localhost:$port/metrics" | grep -E '^llama_gpu_(speculative|draft_(tokens|seconds)|generation_tokens|engine_steps)'
    kill $server
    wait $server 2>/dev/null || true
done
