#!/usr/bin/env bash
# Runs on a GPU machine, from the repository root, with the binaries that
# scripts/gpu-bundle.sh put in $BIN (default .gpu/) and the default model at $MODEL: the
# GPU kernel tests, the whole model on GPU vs CPU, the engine's batching tests on the GPU
# backend. `gpu-check.sh kernels` runs only the tests that need no model.
MODEL=${MODEL:-/root/model.gguf}
BIN=${BIN:-.gpu}
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:$LD_LIBRARY_PATH
export LLAMA_GPU_TEST_MODEL=$MODEL LLAMA_GPU_TEST_REFS=$PWD/tests/data/refs LLAMA_GPU_TEST_DEVICE=cuda
$BIN/llama-gpu doctor
if [ "${1:-all}" = kernels ]; then
  $BIN/engine-cuda --test-threads=1 --skip default_model 2>&1 | grep -E "^test |result|panicked|skipped|assert| vs "
  exit
fi
$BIN/engine-cuda --test-threads=1 --nocapture 2>&1 | grep -E " vs |^test |result|panicked|skipped|assert"
$BIN/batch_invariance 2>&1 | grep -E "^test |result|panicked"
$BIN/serving 2>&1 | grep -E "^test |result|panicked"
for d in cuda cpu; do
  $BIN/llama-gpu run -m "$MODEL" --device $d --temp 0 -n 32 "Why is the sky blue?" 2>&1 | tail -2
done
