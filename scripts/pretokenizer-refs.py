"""Writes llama.cpp's token ids for each pre-tokenizer rule into
tests/data/refs/pretokenizers.jsonl (crates/engine/tests/pretokenizers.rs).

Run that test first (it writes target/test-models/pre-NAME.gguf: a vocabulary made for
tests/data/refs/pretokenizer_texts.json, nothing else, under each rule's name), then this script with a Python that
has llama-cpp-python 0.3.36 (the venv scripts/compare-llama-cpp.sh builds), from the
repository root:

    ~/.cache/llama-gpu-bench/venv/bin/python scripts/pretokenizer-refs.py
"""
import glob
import json
import os

import llama_cpp

TEXTS = json.load(open("tests/data/refs/pretokenizer_texts.json"))

out = []
for path in sorted(glob.glob("target/test-models/pre-*.gguf")):
    pre = os.path.basename(path)[len("pre-"):-len(".gguf")]
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(path.encode(), params)
    assert model, path
    vocab = llama_cpp.llama_model_get_vocab(model)
    for text in TEXTS:
        data = text.encode()
        buf = (llama_cpp.llama_token * (4 * len(data) + 8))()
        n = llama_cpp.llama_tokenize(vocab, data, len(data), buf, len(buf), False, False)
        assert n >= 0, (pre, text)
        out.append({"pre": pre, "text": text, "ids": list(buf[:n])})
    llama_cpp.llama_model_free(model)
    print(pre, len(TEXTS))

with open("tests/data/refs/pretokenizers.jsonl", "w") as f:
    for case in out:
        f.write(json.dumps(case, ensure_ascii=False) + "\n")
