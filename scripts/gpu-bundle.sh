#!/usr/bin/env bash
# Builds the release binary and the GPU-relevant test binaries here and copies them,
# stripped, into .gpu/ (git-ignored) so they can be carried to a GPU machine that has
# no Rust toolchain. Usage: scripts/gpu-bundle.sh
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .gpu
cargo build --release -p llama-gpu
cp target/release/llama-gpu .gpu/llama-gpu
cargo test --release --no-run --message-format=json -p engine -p cuda 2>/dev/null |
    python3 -c '
import json, sys, shutil
wanted = {("engine", "cuda"): "engine-cuda", ("engine", "batch_invariance"): "batch_invariance",
          ("engine", "serving"): "serving", ("cuda", "nvrtc"): "nvrtc"}
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    key = (m["package_id"].split("#")[0].rsplit("/", 1)[-1], m["target"]["name"])
    if key in wanted and "test" in m["target"]["kind"]:
        shutil.copy(m["executable"], ".gpu/" + wanted[key])
'
find .gpu -maxdepth 1 -type f -exec strip {} +
ls -la .gpu
