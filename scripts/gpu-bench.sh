#!/usr/bin/env bash
# Runs on a GPU machine, from the repository root: writes Llama-3-8B-shaped synthetic
# models and benchmarks them (pp512, tg128, batched decode) with each llama-gpu binary
# named in $BINARIES (default: the one scripts/gpu-bundle.sh put in .gpu/), so a before
# and an after are measured on the same device in the same session. Results go to $OUT
# (default: .gpu/out): the device, then one file per binary.
OUT=${OUT:-.gpu/out}
BINARIES=${BINARIES:-.gpu/llama-gpu}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:$LD_LIBRARY_PATH LLAMA_GPU_HOME=${LLAMA_GPU_HOME:-/tmp/home}
first=${BINARIES%% *}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv |
  tee "$OUT/device.csv"
for t in Q4_K_M Q8_0; do
  [ -f /tmp/l8b-$t.gguf ] || $first quantize --synthetic llama3-8b $t /tmp/l8b-$t.gguf 2>&1 | tail -1 &
done
wait
for b in $BINARIES; do
  name=$(basename "$b")
  for t in Q4_K_M Q8_0; do
    echo "## $name $t"
    $b bench -m /tmp/l8b-$t.gguf --device cuda -c 1024 -p 512 -n 128 -r 3 -o md 2>&1
  done
  echo "## $name Q4_K_M, concurrent sequences"
  $b bench -m /tmp/l8b-Q4_K_M.gguf --device cuda -c 1024 --concurrency 1,16,64 -p 32 -n 64 2>&1
done 2>&1 | grep -v '^\s*$' | tee "$OUT/bench.txt"
