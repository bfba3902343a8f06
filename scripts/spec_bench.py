"""Measures speculative decoding (n-gram lookup, or a draft model with --draft-model)
against plain decoding on the 20 input-grounded prompts of tests/data/spec_prompts.jsonl
(rewrite, extend or quote a given text or code), one stream, greedy, with
`llama-gpu run --json`; prints each prompt's generation speed both ways and the
totals' ratio, and stops if speculation changed an output. Run from the repository
root after `cargo build --release`:

    python3 scripts/spec_bench.py [-m MODEL] [-t THREADS] [-n TOKENS] [--spec-k K]
                                  [--draft-model DRAFT] [--spec-p-min P]
"""
import argparse
import json
import subprocess
import sys

parser = argparse.ArgumentParser()
parser.add_argument("-m", "--model", default="default")
parser.add_argument("-t", "--threads", default="2")
parser.add_argument("-n", "--tokens", default="128")
parser.add_argument("--spec-k", default="8")
parser.add_argument("--draft-model", help="speculate with this draft model instead of n-grams")
parser.add_argument("--spec-p-min", default="0.75")
args = parser.parse_args()
kind = "draft" if args.draft_model else "n-gram"

prompts = [json.loads(line)["prompt"] for line in open("tests/data/spec_prompts.jsonl")]


def run(prompt, speculate):
    cmd = ["./target/release/llama-gpu", "run", "-m", args.model, "-t", args.threads,
           "--temp", "0", "-n", args.tokens, "--json", prompt]
    if speculate and args.draft_model:
        cmd[2:2] = ["--spec", "draft", "--draft-model", args.draft_model,
                    "--spec-k", args.spec_k, "--spec-p-min", args.spec_p_min]
    elif speculate:
        cmd[2:2] = ["--spec", "ngram", "--spec-k", args.spec_k]
    out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    return out


totals = {False: [0, 0.0], True: [0, 0.0]}
drafted = accepted = 0
print(f"| prompt | tokens | plain tok/s | {kind} tok/s | speedup | kept / proposed |")
print("| ---: | ---: | ---: | ---: | ---: | ---: |")
for i, prompt in enumerate(prompts):
    rates = {}
    for speculate in (False, True):
        out = run(prompt, speculate)
        t = out["timings"]
        totals[speculate][0] += t["generated_tokens"]
        totals[speculate][1] += t["generation_seconds"]
        rates[speculate] = t["generation_tokens_per_second"]
        if speculate:
            s = t["speculation"]
            drafted += s["drafted"]
            accepted += s["accepted"]
            if out["gen_ids"] != plain_ids:
                sys.exit(f"prompt {i}: speculation changed the output")
            kept = f'{s["accepted"]} / {s["drafted"]}'
        else:
            plain_ids = out["gen_ids"]
    print(f"| {i + 1} | {len(plain_ids)} | {rates[False]:.1f} | {rates[True]:.1f} | "
          f"{rates[True] / rates[False]:.2f}× | {kept} |")
plain = totals[False][0] / totals[False][1]
spec = totals[True][0] / totals[True][1]
print(f"\ntotal: plain {plain:.1f} tok/s, {kind} {spec:.1f} tok/s, {spec / plain:.2f}×; "
      f"{accepted} of {drafted} proposed tokens kept ({100 * accepted / max(drafted, 1):.0f} %)")
