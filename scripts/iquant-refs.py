"""Writes llama.cpp's dequantization of random IQ1/IQ2/IQ3 and TQ1_0/TQ2_0 blocks into tests/data/refs/iquants/.

For each type, 32 blocks of random bytes (their f16 step set to a random value of a
plausible size) go to TYPE.blocks, and the 256 · 32 values that llama.cpp's
`dequantize_row_TYPE` gives for them to TYPE.f32 (little-endian). The test
`lattice_dequantization_equals_llama_cpp` in crates/quant reads both. Run with a Python
that has llama-cpp-python 0.3.36 (the venv scripts/compare-llama-cpp.sh builds), from
the repository root:

    ~/.cache/llama-gpu-bench/venv/bin/python scripts/iquant-refs.py
"""
import ctypes
import os

import llama_cpp
import numpy as np

LIB = ctypes.CDLL(os.path.join(os.path.dirname(llama_cpp.__file__), "lib", "libggml-base.so"))
BLOCKS = 32

# type name: block bytes
TYPES = {"iq2_xxs": 66, "iq2_xs": 74, "iq2_s": 82, "iq3_xxs": 98, "iq3_s": 110, "iq1_s": 50, "iq1_m": 56,
         "tq1_0": 54, "tq2_0": 66}
# Where the f16 step sits, where it is not the first two bytes.
STEP_AT = {"tq1_0": 52, "tq2_0": 64}

rng = np.random.default_rng(20261204)
for name, size in TYPES.items():
    blocks = rng.integers(0, 256, size=(BLOCKS, size), dtype=np.uint8)
    steps = (rng.uniform(1e-3, 0.1, BLOCKS) * rng.choice([-1, 1], BLOCKS)).astype(np.float16)
    for b, step in zip(blocks, steps):
        bits = int(step.view(np.uint16))
        if name == "iq1_m":
            # The step's four nibbles are the top nibbles of the four u16 scale words.
            for k in range(4):
                b[48 + 2 * k + 1] = (b[48 + 2 * k + 1] & 0x0F) | (((bits >> (4 * k)) & 0xF) << 4)
        else:
            at = STEP_AT.get(name, 0)
            b[at], b[at + 1] = bits & 0xFF, bits >> 8
    out = np.zeros(BLOCKS * 256, dtype=np.float32)
    fn = getattr(LIB, f"dequantize_row_{name}")
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    fn(blocks.ctypes.data, out.ctypes.data, BLOCKS * 256)
    blocks.tofile(f"tests/data/refs/iquants/{name}.blocks")
    out.tofile(f"tests/data/refs/iquants/{name}.f32")
    print(name, out[:4], np.abs(out).max())
