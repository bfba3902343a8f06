"""Runs the client suites written by others against our real server: for each suite, one
`llama-gpu serve` on a free port with the default model, then pytest (or the harness)
pointed at it. Called by run.sh, which provides the Python packages.

    python tests/clients/run.py BINARY OPENAI_SDIST_DIR [SUITE ...]

Suites: spec, openai, langchain, lm-eval (all when none is named).
"""

import os
import subprocess
import sys
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))


class Server:
    """`llama-gpu serve --port 0`, its address read from its log."""

    def __init__(self, binary, args):
        self.process = subprocess.Popen(
            [binary, "serve", "--port", "0", "-c", "2048", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.log = []
        for line in self.process.stderr:
            self.log.append(line)
            if "listening on " in line:
                self.base = line.split("listening on ", 1)[1].strip()
                break
        else:
            raise SystemExit("llama-gpu serve exited before listening:\n" + "".join(self.log))
        # Keep draining the log so the server never blocks on a full pipe.
        threading.Thread(target=lambda: self.log.extend(self.process.stderr), daemon=True).start()
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(self.base + "/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise SystemExit("llama-gpu serve never became healthy:\n" + "".join(self.log))
            time.sleep(0.1)

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def pytest(args, cwd, env):
    return subprocess.call([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=cwd, env=env)


def openai_suite(base, sdist):
    """openai-python's own generated API tests (its sdist's tests/), strict and loose
    response validation, sync and async clients (httpx and aiohttp)."""
    env = dict(os.environ, TEST_API_BASE_URL=base + "/v1")
    files = [
        "tests/api_resources/chat/test_completions.py",
        "tests/api_resources/test_completions.py",
        "tests/api_resources/test_models.py",
    ]
    # Chat and completions `create`, models `list` and `retrieve`. Left out:
    # - `*_with_all_params_*`: they send values OpenAI's own API refuses with a 400, and
    #   so do we: `logit_bias` keyed by "foo" (not a token id), `max_tokens` and
    #   `max_completion_tokens` of 0, `suffix` (fill-in-the-middle, which we do not
    #   serve). Only the mock server those tests were generated for accepts them.
    # - chat `retrieve`/`update`/`list`/`delete` and models `delete`: stored completions and
    #   fine-tuned model deletion, which a local server does not have.
    select = "(create or (Models and (list or retrieve))) and not with_all_params"
    # Their pyproject asks for pytest-xdist (`-n auto`); one server is shared, so they run
    # in order, with their other options.
    return pytest(["-q", "-o", "addopts=--tb=short", "-k", select, *files], cwd=sdist, env=env)


def our_pytest(test_file, base, extra_env=None):
    env = dict(os.environ, LLAMA_GPU_BASE_URL=base, **(extra_env or {}))
    return pytest(["-q", "--tb=short", "-c", os.path.join(HERE, "pytest.ini"), test_file], cwd=HERE, env=env)


def main():
    binary, sdist = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    wanted = sys.argv[3:] or ["spec", "openai", "langchain", "lm-eval"]
    # The names the suites send: openai-python's tests use these model ids; ours use
    # gpt-4o (first, so `/v1/models` lists it) and "string" (the spec's placeholder).
    suites = {
        "spec": (["--served-model-name", "gpt-4o", "--served-model-name", "string", "--max-body-bytes", "100000"],
                 lambda base: our_pytest("test_openai_spec.py", base)),
        "openai": (["--served-model-name", "gpt-6-astra", "--served-model-name", "gpt-3.5-turbo-instruct",
                    "--max-tokens-default", "16"],
                   lambda base: openai_suite(base, sdist)),
        "langchain": (["--served-model-name", "llama-gpu-default"],
                      lambda base: our_pytest("test_langchain.py", base + "/v1")),
        "lm-eval": (["--served-model-name", "llama-gpu-default"],
                    lambda base: our_pytest("test_lm_eval.py", base, {"LLAMA_GPU_BIN": binary})),
    }
    failed = []
    for name in wanted:
        server_args, run = suites[name]
        started = time.time()
        server = Server(binary, server_args)
        try:
            code = run(server.base)
        finally:
            server.stop()
        print(f"== client suite {name}: {'passed' if code == 0 else 'FAILED'} in {time.time() - started:.0f} s", flush=True)
        if code != 0:
            failed.append(name)
    if failed:
        raise SystemExit(f"client suites failed: {', '.join(failed)}")


main()
