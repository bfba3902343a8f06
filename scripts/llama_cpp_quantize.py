"""Quantizes a GGUF file with llama.cpp's `llama-quantize` (through llama-cpp-python's
`llama_model_quantize`, no importance matrix), to compare its output with
`llama-gpu quantize` on the same source (docs/benchmarks.md). A quantized source is
re-quantized (llama-quantize's `--allow-requantize`). With `--pure`, every matrix gets
TYPE (llama-quantize's `--pure`, which is what `llama-gpu quantize` does for a single
type; the mixes Q3_K_M, Q4_K_M and Q5_K_M follow llama-quantize's rules without it).

    ~/.cache/llama-gpu-bench/venv/bin/python scripts/llama_cpp_quantize.py IN OUT Q4_K_M
    ~/.cache/llama-gpu-bench/venv/bin/python scripts/llama_cpp_quantize.py IN OUT Q4_0 --pure
"""
import sys

import llama_cpp

source, target, name = sys.argv[1:4]
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{name.upper()}")
params.allow_requantize = True
params.nthread = 2
params.pure = "--pure" in sys.argv[4:]
if llama_cpp.llama_model_quantize(source.encode(), target.encode(), params) != 0:
    sys.exit(f"llama_model_quantize failed for {source}")
