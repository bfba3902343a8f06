"""Writes llama.cpp's logits for the K-quant test models into tests/data/refs/kquants/.

Run `cargo test --release -p engine --test kquant_logits` first (it writes the models to
target/test-models/), then this script with a Python that has llama-cpp-python 0.3.36
(the venv scripts/compare-llama-cpp.sh builds), from the repository root:

    ~/.cache/llama-gpu-bench/venv/bin/python scripts/kquant-refs.py
"""
import os

import llama_cpp
import numpy as np

PROMPT = [40, 69, 76, 76, 79, 0, 87, 79, 82, 76, 68, 1]  # as in kquant_logits.rs
NAMES = ["q8_0", "q4_k_m", "q5_k", "q6_k", "q3_k"]

os.makedirs("tests/data/refs/kquants", exist_ok=True)
for name in NAMES:
    llm = llama_cpp.Llama(
        model_path=f"target/test-models/kquant-{name}.gguf", n_ctx=32, n_batch=32,
        n_ubatch=32, n_threads=2, n_threads_batch=2, logits_all=True, verbose=False,
    )
    llm.eval(PROMPT)
    logits = np.asarray(llm.scores[: len(PROMPT)], dtype=np.float32)
    logits.tofile(f"tests/data/refs/kquants/{name}.f32")
    print(name, logits.shape, logits[-1, :4])
