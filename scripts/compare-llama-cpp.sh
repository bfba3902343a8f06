#!/usr/bin/env bash
# Measures llama.cpp (llama-cpp-python from PyPI, built from its sdist into a venv outside
# the tree) and llama-gpu on the same model, threads and lengths, one after the other.
# Usage: scripts/compare-llama-cpp.sh [MODEL] [-p 512] [-n 128] [-d 0,2048] [-t 1,2] [-r 5] [-c N]
set -euo pipefail
cd "$(dirname "$0")/.."
model_arg=${1:-default}; shift || true
venv=${LLAMA_CPP_VENV:-$HOME/.cache/llama-gpu-bench/venv}
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import llama_cpp" 2>/dev/null; then
    python3 -m venv "$venv"
    CMAKE_ARGS="-DGGML_NATIVE=ON" "$venv/bin/pip" install -q llama-cpp-python==0.3.36
fi
cargo build --release -q
model=$(./target/release/llama-gpu models list --json | python3 -c "
import json, sys, os
arg = sys.argv[1]
if os.path.isfile(arg): print(arg); sys.exit()
home = os.environ.get('LLAMA_GPU_HOME') or os.path.expanduser('~/.cache/llama-gpu')
for m in json.load(sys.stdin):
    if m['name'] == arg or (arg == 'default' and m['name'] == 'smollm2-135m-instruct'):
        print(os.path.join(home, 'blobs', 'sha256-' + m['digest'])); break
" "$model_arg")
[ -n "$model" ] || { ./target/release/llama-gpu models pull "$model_arg" >/dev/null; exec "$0" "$model_arg" "$@"; }
echo "model: $model"
"$venv/bin/python" scripts/llama_cpp_bench.py "$model" "$@"
./target/release/llama-gpu bench -m "$model" "$@"
