#!/usr/bin/env bash
# Runs on a GPU machine, from the repository root, with the binaries that
# scripts/gpu-bundle.sh put in .gpu/: writes Llama-3-8B-shaped synthetic models and
# benchmarks them (pp512, tg128, batched decode). Results go to $OUT (default: .gpu/out).
OUT=${OUT:-.gpu/out}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:$LD_LIBRARY_PATH LLAMA_GPU_HOME=/tmp/home
B=.gpu/llama-gpu
$B quantize --synthetic llama3-1b Q4_K_M /tmp/l1b.gguf
$B run -m /tmp/l1b.gguf --device cuda --raw --temp 0 -n 16 "hello" 2>&1 | tail -3
for t in Q4_K_M Q8_0; do
  $B quantize --synthetic llama3-8b $t /tmp/l8b-$t.gguf 2>&1 | tail -1
  $B bench -m /tmp/l8b-$t.gguf --device cuda -c 1024 -p 512 -n 128 -r 3 -o md 2>&1 | tee $OUT/bench-$t.md
done
$B bench -m /tmp/l8b-Q4_K_M.gguf --device cuda -c 1024 --concurrency 1,16,64 -p 32 -n 64 2>&1 | tee $OUT/conc-Q4_K_M.txt
