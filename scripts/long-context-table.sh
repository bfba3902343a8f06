#!/usr/bin/env bash
# The long-context figures in one run, against llama.cpp on the same machine
# (docs/benchmarks.md): decoding and prompts at depth with the f16 cache (llama.cpp then
# ours, ROUNDS times) and ours with a q8_0 cache; pp4096; Gemma 3 270M at depth 8,192;
# the default model's perplexity at -c 4096 with each cache type; and the inter-token
# latency of seven streams while an 8k-token prompt prefills. Then EXTRA alternating
# rounds of decoding at depths 2,048 and 3,968 alone, the figures that vary most.
# Takes about 40 minutes on a 2-vCPU VM.
# Usage: [EXTRA=6] scripts/long-context-table.sh [ROUNDS, default 2]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-2}
extra=${EXTRA:-6}
compare=scripts/compare-llama-cpp.sh
bin=./target/release/llama-gpu
q8_0=(--cache-type-k q8_0 --cache-type-v q8_0)
stamp() { echo "== $* ($(date -u +%H:%M:%S) UTC)"; }
cargo build --release -q
for round in $(seq "$rounds"); do
    stamp "round $round: decoding at depth, llama.cpp then ours (f16 cache)"
    "$compare" default -p 0 -n 64 -d 0,2048,3968,8128 -c 8192 -t 2 -r 2
    stamp "round $round: ours with a q8_0 cache"
    "$bin" bench -m default -p 0 -n 64 -d 0,2048,3968,8128 -c 8192 -t 2 -r 2 "${q8_0[@]}"
    stamp "round $round: prompts at depth, llama.cpp then ours (f16 cache)"
    "$compare" default -p 512 -n 0 -d 0,2048,3968,7680 -c 8192 -t 2 -r 2
    stamp "round $round: ours with a q8_0 cache"
    "$bin" bench -m default -p 512 -n 0 -d 0,2048,3968,7680 -c 8192 -t 2 -r 2 "${q8_0[@]}"
done
stamp "a 4,096-token prompt"
"$compare" default -p 4096 -n 0 -c 4200 -t 2 -r 1
stamp "Gemma 3 270M at depth 8,192"
"$compare" gemma3-270m -p 0 -n 32 -d 0,8192 -c 8448 -t 2 -r 2
for cache in f16 q8_0; do
    stamp "perplexity at -c 4096, $cache cache"
    "$bin" perplexity -m default -f tests/data/refs/ppl_text.txt -c 4096 -b 4096 --chunks 4 \
        -t 2 --cache-type-k "$cache" --cache-type-v "$cache" 2>&1 | tail -3
done
stamp "inter-token latency beside a long prefill"
scripts/long-prefill-itl.sh -t 2
for round in $(seq "$extra"); do
    stamp "extra round $round: decoding at depths 2,048 and 3,968"
    "$compare" default -p 0 -n 64 -d 2048,3968 -c 4096 -t 2 -r 1
done
stamp done
