"""Writes llama.cpp's quantization of random values into tests/data/refs/quantize/.

`input.f32` holds 49 blocks of 256 values drawn to cover what real weights and the
quantizers' corner cases look like (normal rows of many sizes, heavy tails, a lone
outlier, one-signed rows, sparse rows, constant, zero and denormal-small rows, values
on exact halves, ternary ties). For each
type, TYPE.blocks holds the bytes that llama.cpp (without an importance matrix, as
`llama-quantize` runs) writes for them: `quantize_row_TYPE_ref` for the legacy,
K-quant and ternary types, `quantize_TYPE` for IQ4_NL and IQ4_XS (whose search runs even without
one). The test `quantizers_write_llama_cpp_bytes` in crates/quant reads them. Run with a
Python that has llama-cpp-python 0.3.36 (the venv scripts/compare-llama-cpp.sh builds),
from the repository root:

    ~/.cache/llama-gpu-bench/venv/bin/python scripts/quantize-refs.py
"""
import ctypes
import os

import llama_cpp
import numpy as np

LIB = ctypes.CDLL(os.path.join(os.path.dirname(llama_cpp.__file__), "lib", "libggml-base.so"))
OUT = "tests/data/refs/quantize"

# type name: bytes per 256 values
ROW_REF = {"q4_0": 144, "q4_1": 160, "q5_0": 176, "q5_1": 192, "q8_0": 272,
           "q2_K": 84, "q3_K": 110, "q4_K": 144, "q5_K": 176, "q6_K": 210, "tq1_0": 54, "tq2_0": 66}
SEARCHED = {"iq4_nl": 144, "iq4_xs": 136}

rng = np.random.default_rng(20261205)
blocks = []
for sigma in np.geomspace(1e-3, 2.0, 24):
    blocks.append(rng.normal(0.0, sigma, 256))
for df in (1.5, 3.0, 5.0):
    blocks.append(rng.standard_t(df, 256) * 0.02)
for sign in (1, -1):
    blocks.append(sign * np.abs(rng.normal(0.0, 0.05, 256)))
    blocks.append(sign * rng.uniform(0.01, 0.02, 256))
outlier = rng.normal(0.0, 0.01, 256)
outlier[77] = 0.9
blocks.append(outlier)
sparse = np.where(rng.uniform(size=256) < 0.9, 0.0, rng.normal(0.0, 0.1, 256))
blocks.append(sparse)
half_zero = rng.normal(0.0, 0.1, 256)
half_zero[:128] = 0.0
blocks.append(half_zero)
blocks.append(np.full(256, 0.125))
blocks.append(np.full(256, -0.03))
blocks.append(np.zeros(256))
blocks.append(rng.normal(0.0, 1e-20, 256))
ramp = np.linspace(-1.0, 1.0, 256)
blocks.append(ramp)
blocks.append(rng.permutation(ramp) * 0.01)
# Halves: the largest value is 127/128, so Q8_0's codes of the others fall on n + 1/2
# exactly (as in a matrix re-quantized from a 4-bit file), where roundings differ.
halves = (rng.integers(-127, 127, 256) + 0.5) / 128
halves[::32] = 127 / 128
blocks.append(halves)
while len(blocks) < 48:
    blocks.append(rng.normal(rng.normal(0.0, 0.02), rng.uniform(0.005, 0.1), 256))
# Ternary ties (added after the first 48, which stay as they were): values at exactly
# half the largest, where TQ1_0/TQ2_0 round away from zero.
blocks.append(rng.choice([-0.5, -0.25, -0.125, 0.0, 0.125, 0.25, 0.5], 256))
x = np.ascontiguousarray(np.concatenate(blocks).astype(np.float32))
n = x.size

os.makedirs(OUT, exist_ok=True)
x.tofile(f"{OUT}/input.f32")
for name, size in ROW_REF.items():
    out = np.zeros(n // 256 * size, dtype=np.uint8)
    fn = getattr(LIB, f"quantize_row_{name}_ref")
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    fn(x.ctypes.data, out.ctypes.data, n)
    out.tofile(f"{OUT}/{name.lower()}.blocks")
for name, size in SEARCHED.items():
    out = np.zeros(n // 256 * size, dtype=np.uint8)
    fn = getattr(LIB, f"quantize_{name}")
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    fn.restype = ctypes.c_size_t
    # Rows of 256, as a matrix of any width quantizes them (the row length only splits the work).
    fn(x.ctypes.data, out.ctypes.data, n // 256, 256, None)
    out.tofile(f"{OUT}/{name}.blocks")
print(f"{len(ROW_REF) + len(SEARCHED)} types, {n} values")
