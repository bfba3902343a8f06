"""Times llama.cpp (through the llama-cpp-python package) the way `llama-gpu bench` times
our engine: ppN = one N-token prompt in one pass, tgN = N tokens decoded one at a time from
an empty context (or after D tokens already in it, `-d D`, filled once and not timed), one
warm-up run, then mean ± stddev tokens/s over repetitions.

Usage: python llama_cpp_bench.py MODEL.gguf [-p 512] [-n 128] [-d 0] [-t 1,2] [-r 5] [-c 0]
"""
import argparse
import statistics
import time

import llama_cpp


def run(model, n_prompt, n_gen, depth, threads, reps, flash_attn, n_ctx):
    llm = llama_cpp.Llama(
        model_path=model, n_ctx=max(n_ctx, depth + max(n_prompt, n_gen) + 16), n_batch=512, n_ubatch=512,
        n_threads=threads, n_threads_batch=threads, flash_attn=flash_attn, verbose=False,
    )
    vocab = llm.n_vocab()
    rows = []
    for name, n, prompt in ((f"pp{n_prompt}", n_prompt, True), (f"tg{n_gen}", n_gen, False)):
        if n == 0:
            continue
        if depth:
            name = f"{name} @ d{depth}"
        tokens = [(i * 7919 + 13) % vocab for i in range(n)]
        # The same filler tokens as `llama-gpu bench -d`.
        filler = [(i * 7919 + 14) % vocab for i in range(depth)]
        llm.reset()
        llm._ctx.kv_cache_clear()
        if depth:
            llm.eval(filler)
        samples = []
        for rep in range(reps + 1):
            # Back to the filled context: the tokens past it are dropped.
            llm.n_tokens = depth
            llm._ctx.kv_cache_seq_rm(-1, depth, -1)
            start = time.perf_counter()
            if prompt:
                llm.eval(tokens)
            else:
                for t in tokens:
                    llm.eval([t])
            seconds = time.perf_counter() - start
            if rep > 0:
                samples.append(n / seconds)
        sd = statistics.stdev(samples) if len(samples) > 1 else 0.0
        rows.append((threads, name, statistics.mean(samples), sd))
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("-p", type=int, default=512)
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("-d", default="0", help="tokens already in the context (comma-separated)")
    ap.add_argument("-t", default="2")
    ap.add_argument("-r", type=int, default=5)
    ap.add_argument("-c", type=int, default=0, help="context size (at least what a test needs)")
    ap.add_argument("--flash-attn", action="store_true", help="llama.cpp's -fa on")
    a = ap.parse_args()
    print(f"| engine | threads | test | t/s |")
    print(f"| --- | ---: | ---: | ---: |")
    runs = [(int(t), int(d)) for t in a.t.split(",") for d in a.d.split(",")]
    for t, depth in runs:
        for threads, name, mean, sd in run(a.model, a.p, a.n, depth, t, a.r, a.flash_attn, a.c):
            print(f"| llama.cpp (llama-cpp-python {llama_cpp.__version__}) | {threads} | {name} | {mean:.2f} ± {sd:.2f} |")


if __name__ == "__main__":
    main()
