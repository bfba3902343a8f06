"""lm-evaluation-harness against our server through its `local-completions` model, on two
small tasks of our own (lm_eval_tasks/): multiple choice scored by log-likelihood, and
greedy generation. The harness must complete, and each log-likelihood it reports must
equal what `llama-gpu perplexity --score` computes for the same tokens (to 1e-4), with the
same greedy flags.

The server is started by run.py (LLAMA_GPU_BASE_URL, serving the default model);
LLAMA_GPU_BIN is the binary, for the offline scoring.
"""

import glob
import json
import os
import subprocess
import sys

from lm_eval.models.openai_completions import LocalCompletionsAPI

BASE = os.environ["LLAMA_GPU_BASE_URL"]
BINARY = os.environ["LLAMA_GPU_BIN"]
TASKS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lm_eval_tasks")
MODEL_ARGS = {
    "base_url": f"{BASE}/v1/completions",
    "model": "llama-gpu-default",
    # The harness reads token counts through the server's /tokenize, /detokenize and
    # /tokenizer_info (vLLM's endpoints), so it needs no tokenizer download.
    "tokenizer_backend": "remote",
    "num_concurrent": 2,
    "max_retries": 1,
}


def run_harness(out):
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    command = [
        sys.executable, "-m", "lm_eval",
        "--model", "local-completions",
        "--model_args", ",".join(f"{k}={v}" for k, v in MODEL_ARGS.items()),
        "--tasks", "llama_gpu_choice,llama_gpu_generate",
        "--include_path", TASKS,
        "--output_path", str(out),
        "--log_samples",
    ]
    done = subprocess.run(command, cwd=TASKS, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def samples(out, task):
    (path,) = glob.glob(str(out / "**" / f"samples_{task}_*.jsonl"), recursive=True)
    return [json.loads(line) for line in open(path)]


def test_harness_log_likelihoods_equal_perplexity_scoring(tmp_path):
    table = run_harness(tmp_path / "out")
    assert "llama_gpu_choice" in table and "llama_gpu_generate" in table, table

    (results_path,) = glob.glob(str(tmp_path / "out" / "**" / "results_*.json"), recursive=True)
    results = json.load(open(results_path))["results"]
    assert 0.0 <= results["llama_gpu_choice"]["acc,none"] <= 1.0
    assert 0.0 <= results["llama_gpu_generate"]["exact_match,none"] <= 1.0
    for sample in samples(tmp_path / "out", "llama_gpu_generate"):
        assert isinstance(sample["resps"][0][0], str)

    # The harness's own split of each request into context and continuation tokens.
    lm = LocalCompletionsAPI(**MODEL_ARGS)
    requests, reported = [], []
    for sample in samples(tmp_path / "out", "llama_gpu_choice"):
        for args, resp in zip(sample["arguments"].values(), sample["resps"]):
            context, continuation = lm._encode_pair(args["arg_0"], args["arg_1"])
            requests.append({"context_tokens": context, "continuation_tokens": continuation})
            logprob, is_greedy = resp[0]
            reported.append((float(logprob), is_greedy in (True, "True")))
    assert len(requests) == 24

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in requests))
    scored = subprocess.run(
        [BINARY, "perplexity", "--score", str(pairs), "-c", "512"], capture_output=True, text=True, timeout=300
    )
    assert scored.returncode == 0, scored.stderr
    ours = [json.loads(line) for line in scored.stdout.splitlines()]
    assert len(ours) == len(reported)
    for request, (logprob, is_greedy), mine in zip(requests, reported, ours):
        assert abs(logprob - mine["logprob"]) <= 1e-4, (request, logprob, mine)
        assert is_greedy == mine["is_greedy"], (request, is_greedy, mine)
