#!/usr/bin/env bash
# The client suites written by others (openai-python's API tests, langchain-tests,
# lm-evaluation-harness) and our OpenAPI spec check, against the release binary and the
# default model. Installs their pinned Python packages in target/clients-venv once.
#
#   bash tests/clients/run.sh [spec|openai|langchain|lm-eval ...]
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
target=${CARGO_TARGET_DIR:-$root/target}
venv=$target/clients-venv
requirements=$root/tests/clients/requirements.txt

stamp=$(sha256sum "$requirements" | cut -c1-16)
if [ "$(cat "$venv/.requirements" 2>/dev/null)" != "$stamp" ]; then
    echo "== installing the client suites' packages in $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$requirements"
    echo "$stamp" >"$venv/.requirements"
fi

# openai-python's tests ship in its source distribution, not in the wheel.
openai_version=$(sed -n 's/^openai\[[a-z]*\]==//p' "$requirements")
sdist=$target/clients/openai-$openai_version
if [ ! -d "$sdist/tests" ]; then
    mkdir -p "$target/clients"
    "$venv/bin/pip" download -q --disable-pip-version-check --no-binary :all: --no-deps \
        -d "$target/clients" "openai==$openai_version"
    tar -xzf "$target/clients/openai-$openai_version.tar.gz" -C "$target/clients"
fi

cargo build --release -q -p llama-gpu
export LLAMA_GPU_HOME=${LLAMA_GPU_HOME:-$target/test-home}
"$target/release/llama-gpu" models pull default >/dev/null
"$venv/bin/python" tests/clients/run.py "$target/release/llama-gpu" "$sdist" "$@"
