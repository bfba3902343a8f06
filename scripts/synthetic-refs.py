"""Writes llama.cpp's logits for the synthetic test models into tests/data/refs/.

The K-quant models (crates/engine/tests/kquant_logits.rs) go to refs/kquants/ (the
`-sequential` ones fed one token per batch), the
model-family models (crates/engine/tests/family_logits.rs) to refs/families/, the RoPE
scaling cases (crates/engine/tests/rope_scaling.rs) to refs/rope/. Run those tests first (they write the models to target/test-models/), then this script with a
Python that has llama-cpp-python 0.3.36 (the venv scripts/compare-llama-cpp.sh builds),
from the repository root:

    ~/.cache/llama-gpu-bench/venv/bin/python scripts/synthetic-refs.py [REF...]

With REF arguments (e.g. `kquants/iq4_xs`) it writes only those references.
"""
import os
import sys

import llama_cpp
import numpy as np

PROMPT = [40, 69, 76, 76, 79, 0, 87, 79, 82, 76, 68, 1]  # as in both tests

# (reference file, model file, flash attention, context, RoPE settings)
CASES = [(f"kquants/{q}", f"kquant-{q}", False, 32, {}) for q in ["q8_0", "q4_k_m", "q4_k", "q5_k", "q6_k", "q3_k", "q2_k", "iq4_xs", "iq4_nl", "f16",
    "iq2_xxs", "iq2_xs", "iq2_s", "iq3_xxs", "iq3_s", "iq1_s", "iq1_m", "tq1_0", "tq2_0"]]
# The same files fed one token at a time (llama.cpp's one-token kernels, `vec_dot`).
CASES += [(f"kquants/{q}-sequential", f"kquant-{q}", False, 32, {}) for q in ["q8_0", "q3_k", "q6_k", "iq4_xs",
    "iq2_xxs", "iq2_xs", "iq2_s", "iq3_xxs", "iq3_s", "iq1_s", "iq1_m", "tq1_0", "tq2_0"]]
CASES += [
    ("families/qwen3", "family-qwen3", False, 32, {}),
    ("families/gemma3", "family-gemma3", False, 32, {}),
    ("families/gemma3-flash", "family-gemma3", True, 32, {}),
    ("families/phi3", "family-phi3", False, 32, {}),
    ("families/phi3-long", "family-phi3", False, 512, {}),  # beyond the original 256: long factors
    ("families/gemma2", "family-gemma2", False, 32, {}),
    ("families/gemma2-flash", "family-gemma2", True, 32, {}),
    ("families/smollm3", "family-smollm3", False, 32, {}),
    ("rope/yarn", "rope-yarn", False, 32, {}),
    ("rope/yarn-override", "rope-qwen2-unscaled", False, 32, dict(
        rope_scaling_type=llama_cpp.LLAMA_ROPE_SCALING_TYPE_YARN, rope_freq_scale=1 / 8,
        rope_freq_base=20000.0, yarn_beta_fast=16.0)),
    ("rope/linear-override", "rope-qwen2-unscaled", False, 32, dict(
        rope_scaling_type=llama_cpp.LLAMA_ROPE_SCALING_TYPE_LINEAR, rope_freq_scale=1 / 2)),
]

for ref, model, flash, context, rope in CASES:
    if sys.argv[1:] and ref not in sys.argv[1:]:
        continue
    os.makedirs(os.path.dirname(f"tests/data/refs/{ref}"), exist_ok=True)
    batch = 1 if ref.endswith("-sequential") else 32
    llm = llama_cpp.Llama(
        model_path=f"target/test-models/{model}.gguf", n_ctx=context, n_batch=batch, n_ubatch=batch,
        n_threads=2, n_threads_batch=2, logits_all=True, flash_attn=flash, verbose=False, **rope,
    )
    llm.eval(PROMPT)
    logits = np.asarray(llm.scores[: len(PROMPT)], dtype=np.float32)
    logits.tofile(f"tests/data/refs/{ref}.f32")
    print(ref, logits.shape, logits[-1, :4])
