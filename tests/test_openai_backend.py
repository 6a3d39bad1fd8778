"""The openai backend (``--backend openai``) against a real vLLM server, and against tiny local servers for what vLLM
cannot be made to do (hang, answer garbage, refuse prompt log-probabilities, fail and recover).

The vLLM server is vLLM's CPU build in its own virtual environment (``.ci/vllm-env.sh`` makes it; ``.ci/run`` calls it
before ``make test``), found through ``MEDQA_BENCH_VLLM_VENV`` (default ``<repo>/.vllm-venv``). It serves the default
model's converted checkpoint (float32) and the shipped adapter as the LoRA module ``symptoms``, behind an API key.
Start-up takes about a minute on two cores; it is started once per session.

Comparison with the transformers backend (same items, prompts, float32, ``--quantization none`` on both sides: vLLM
serves the unquantized checkpoint, and the shipped adapter would otherwise run on its 4-bit training base in process):

- greedy generations: the same text, token count and stop reason; a difference names the first differing token;
- completion NLL: the same token count, and a sum within :data:`NLL_TOLERANCE_PER_TOKEN` times the token count.
  The server's per-token log-probabilities agree with transformers' to ~5e-5 at worst (float32, base and LoRA:
  other kernels, other summation order), with either sign: measured, the sums differ by at most 2.5e-7 per token
  on three default-data items (2e-4 on a 817-token answer) and 1.7e-6 on the three short-answer items the test now
  uses. 1e-5 per token is 6 times the larger, and still catches one token scored wrongly or a token more or less
  (a token's log-probability is ~1e-1 or more).

vLLM 0.32.0's CPU build crashes when it batches the prompt log-probabilities of several requests with ``--enable-lora``
(``punica_cpu``'s ``add_lora_logits`` maps one row per request, not per prompt token), so runs against it use
``--concurrency 1``; concurrency is tested against a local server.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from cli_runner import medqa

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(os.environ.get("MEDQA_BENCH_VLLM_VENV") or ROOT / ".vllm-venv")
ADAPTER = ROOT / "data" / "adapters" / "smollm2-135m-symptoms-qlora"
SERVED = "smollm2-135m-instruct"
LORA = "symptoms"
#: The API key the server demands; it must appear in no output.
SECRET = "sk-medqa-test-SECRET-7f3a9c"
NLL_TOLERANCE_PER_TOKEN = 1e-5
STARTUP_TIMEOUT_S = 300
ITEMS = 3
BUDGET = 48  # new tokens: the server decodes ~15 tokens/s on one core


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, key: str | None = SECRET, body: dict | None = None, timeout: float = 10) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory):
    """A vLLM OpenAI-compatible server: the default model as ``smollm2-135m-instruct``, the shipped adapter as the
    LoRA module ``symptoms``; yields its base URL (``http://127.0.0.1:PORT/v1``)."""
    python = VENV / "bin" / "python"
    if not python.exists():
        pytest.fail(f"no vLLM environment at {VENV}: run `bash scripts/vllm-env.sh` (or `bash scripts/vllm-env.sh DIR` and set "
                    "MEDQA_BENCH_VLLM_VENV=DIR)")
    from medqa_bench.inference.models import DEFAULT_MODEL, resolve_model

    folder = resolve_model(DEFAULT_MODEL).location
    port = _free_port()
    log_path = tmp_path_factory.mktemp("vllm") / "server.log"
    cmd = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", folder, "--served-model-name", SERVED,
           "--dtype", "float32", "--max-model-len", "2048", "--enable-lora", "--max-lora-rank", "16", "--max-loras", "1",
           "--lora-modules", f"{LORA}={ADAPTER}", "--kv-cache-memory-bytes", "1G", "--enforce-eager",
           "--api-key", SECRET, "--host", "127.0.0.1", "--port", str(port)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
           "DO_NOT_TRACK": "1"}
    env.pop("MEDQA_BENCH_API_KEY", None)
    log = open(log_path, "w")
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the vLLM server exited with {proc.returncode} before it was ready; its log ends:\n"
                            + log_path.read_text()[-3000:])
            if time.monotonic() - t0 > STARTUP_TIMEOUT_S:
                pytest.fail(f"the vLLM server was not ready after {STARTUP_TIMEOUT_S} s; its log ends:\n"
                            + log_path.read_text()[-3000:])
            try:
                _get(url + "/v1/models", timeout=2)
                break
            except OSError:
                time.sleep(2)
        ready = time.monotonic() - t0
        # the first prompt-log-probability request pays a one-off warm-up (~4-15 s)
        _get(url + "/v1/completions", body={"model": SERVED, "prompt": "Warm up.", "echo": True, "logprobs": 0,
                                            "max_tokens": 0}, timeout=120)
        print(f"\nvLLM server ready in {ready:.1f} s, warmed up in {time.monotonic() - t0 - ready:.1f} s", file=sys.stderr)
        yield url + "/v1"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        except ProcessLookupError:
            pass
        log.close()


def _cli(*args: str, key: str | None = SECRET) -> subprocess.CompletedProcess:
    """``medqa-bench -q run ARGS`` (in this process: see cli_runner) with ``key`` as the only API key set."""
    return medqa("-q", "run", *args, env={"OPENAI_API_KEY": key} if key is not None else None,
                 drop_env=("MEDQA_BENCH_API_KEY",) + (() if key is not None else ("OPENAI_API_KEY",)))


def _served(url: str, *args: str) -> list[str]:
    return ["--backend", "openai", "--base-url", url, "--served-model", SERVED, *args]


def _common(tmp_path: Path, out: str, *args: str) -> list[str]:
    return ["--limit", str(ITEMS), "--max-new-tokens", str(BUDGET), "--quantization", "none", "--reference-rows", "none",
            "--out", str(tmp_path / out), "--cache", str(tmp_path / f"{out}.sqlite"), *args]


def _one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """The run failed with exit status 2 and one ``medqa-bench: error:`` line holding every fragment; no traceback."""
    assert proc.returncode == 2, f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    errors = [line for line in proc.stderr.splitlines() if line.startswith("medqa-bench: error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def _samples(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]


def _assert_no_secret(*texts_or_folders) -> None:
    for x in texts_or_folders:
        if isinstance(x, Path):
            for f in x.rglob("*"):
                if f.is_file():
                    assert SECRET.encode() not in f.read_bytes(), f"the API key is written in {f}"
        else:
            assert SECRET not in x, "the API key is in the command's output"


def _first_difference(a: str, b: str) -> str:
    """Where two generations part: the first differing token and the text before it."""
    from medqa_bench.inference.models import DEFAULT_MODEL, load_tokenizer, resolve_model

    tok = load_tokenizer(resolve_model(DEFAULT_MODEL))
    x, y = tok(a, add_special_tokens=False)["input_ids"], tok(b, add_special_tokens=False)["input_ids"]
    k = next((i for i, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y)))
    show = lambda ids: repr(tok.decode(ids[k:k + 1])) if k < len(ids) else "(end)"  # noqa: E731
    return (f"first differing token at {k}: served {show(x)} vs in-process {show(y)}, after "
            f"{tok.decode(x[max(0, k - 12):k])!r}")


# ------------------------------------------------------------------------------------------------ against vLLM


@pytest.mark.slow
def test_a_served_baseline_and_adapter_match_the_transformers_backend(vllm_server, tmp_path, short_symptoms):
    """``medqa-bench run --backend openai`` on the baseline (chat) and the served adapter (its recorded reference
    format, from its local folder) gives the generations and NLLs of the in-process transformers backend (on the
    short-answer symptoms rows: the server scores every reference's prompt log-probabilities on one core)."""
    adapter = f"ft=served:{LORA}@{ADAPTER}"
    data = ("--data", str(short_symptoms))
    t = time.monotonic()
    served = _cli(*_served(vllm_server, "--adapter", adapter, "--concurrency", "1"),
                  *_common(tmp_path, "served", *data, "--metrics", "loss,perplexity,rougeL"))
    served_s = time.monotonic() - t
    assert served.returncode == 0, served.stderr
    t = time.monotonic()
    local = _cli("--adapter", f"ft={ADAPTER}", "--device", "cpu", "--dtype", "float32",
                 *_common(tmp_path, "local", *data, "--metrics", "loss,perplexity,rougeL", "--no-report"))
    local_s = time.monotonic() - t
    assert local.returncode == 0, local.stderr
    print(f"\nserved run {served_s:.0f} s, in-process run {local_s:.0f} s", file=sys.stderr)

    results = json.loads((tmp_path / "served" / "results.json").read_text())
    assert results["spec"]["backend"] == "openai" and results["spec"]["adapters"] == {"ft": f"served:{LORA}@{ADAPTER}"}
    model = results["model"]
    assert model["base_url"] == vllm_server and model["served_model"] == SERVED and model["server_version"]
    assert model["system_fingerprint"].startswith("vllm-") and model["prompt_logprobs"] is True
    assert "equal" in model["tokenizer_check"]
    systems = results["systems"]
    assert systems["baseline"]["prompt_format"] == "chat" and systems["baseline"]["served_as"]["model"] == SERVED
    assert systems["ft"]["prompt_format"] == "reference" and systems["ft"]["format_source"] == "training metadata"
    assert systems["ft"]["served_as"] == {"model": LORA, "root": str(ADAPTER), "parent": SERVED}
    assert systems["ft"]["adapter"]["fingerprint"].startswith("sha256:")
    assert (tmp_path / "served" / "report.html").is_file()

    problems = []
    for a, b in zip(_samples(tmp_path / "served"), _samples(tmp_path / "local")):
        assert a["id"] == b["id"] and a["prompts"] == b["prompts"]
        for name in ("baseline", "ft"):
            x, y = a["systems"][name], b["systems"][name]
            where = f"item {a['id']}, {name}"
            if x["prediction"] != y["prediction"]:
                problems.append(f"{where}: generations differ: {_first_difference(x['prediction'], y['prediction'])}")
            elif (x["generated_tokens"], x["stop_reason"]) != (y["generated_tokens"], y["stop_reason"]):
                problems.append(f"{where}: same text, but {x['generated_tokens']} tokens/{x['stop_reason']} served and "
                                f"{y['generated_tokens']}/{y['stop_reason']} in process")
            if x["nll_tokens"] != y["nll_tokens"]:
                problems.append(f"{where}: {x['nll_tokens']} NLL tokens served, {y['nll_tokens']} in process")
            elif abs(x["nll_sum"] - y["nll_sum"]) > NLL_TOLERANCE_PER_TOKEN * y["nll_tokens"]:
                problems.append(f"{where}: NLL {x['nll_sum']:.6f} served, {y['nll_sum']:.6f} in process "
                                f"(|diff| {abs(x['nll_sum'] - y['nll_sum']):.2e} > {NLL_TOLERANCE_PER_TOKEN:g} x "
                                f"{y['nll_tokens']} tokens)")
    assert not problems, "\n".join(problems)
    # the per-token difference, for the record
    diffs = [abs(a["systems"][n]["nll_sum"] - b["systems"][n]["nll_sum"]) / b["systems"][n]["nll_tokens"]
             for a, b in zip(_samples(tmp_path / "served"), _samples(tmp_path / "local")) for n in ("baseline", "ft")]
    print(f"largest mean per-token NLL difference: {max(diffs):.2e}", file=sys.stderr)

    # the same run again is all cache hits: the identity (URL, served name, version, fingerprint) is stable
    again = _cli(*_served(vllm_server, "--adapter", adapter, "--concurrency", "1"),
                 *_common(tmp_path, "served", *data, "--metrics", "loss,perplexity,rougeL", "--no-report"))
    assert again.returncode == 0, again.stderr
    cache = json.loads((tmp_path / "served" / "results.json").read_text())["cache"]
    # NLL and generation of both rows, and the base's NLL in the adapter's reference format (the adapter check)
    assert cache["misses"] == 0 and cache["hits"] == 5 * ITEMS, cache
    _assert_no_secret(tmp_path / "served", served.stdout + served.stderr, again.stdout + again.stderr)


@pytest.mark.slow
def test_the_llm_judge_reads_its_grade_from_the_served_models_probabilities(vllm_server, tmp_path, monkeypatch):
    """judge_grade with ``judge.backend=openai``: vLLM gives the digits' log-probabilities by token id at the grade's
    position, every answer is graded from them, and each distribution equals the in-process judge's (float32 on both
    sides: the per-token log-probabilities agree to ~5e-5, see the module docstring)."""
    from medqa_bench.metrics import resolve_metrics
    from medqa_bench.metrics.judge import _JUDGES, judge_prompt

    monkeypatch.delenv("MEDQA_BENCH_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    preds = ["Flu causes fever, cough, sore throat, muscle aches and tiredness.", "Take fifty aspirin tablets at once."]
    refs = ["Symptoms of flu include fever, cough, sore throat, body aches, headache and fatigue.",
            "Rest, fluids and pain relievers at the labelled dose; see a doctor if it persists."]
    items = [{"id": "a", "question": "What are the symptoms of flu?"},
             {"id": "b", "question": "How is a headache treated?"}]
    _JUDGES.clear()
    served_params = {"backend": "openai", "base_url": vllm_server, "served_model": SERVED, "concurrency": 1,
                     "cache": str(tmp_path / "judge.sqlite")}
    [served] = resolve_metrics(["judge_grade"], params={"judge": served_params})
    [local] = resolve_metrics(["judge_grade"], params={"judge": {"device": "cpu", "dtype": "float32", "cache": "none"}})
    got, expected = (m.compute(predictions=preds, references=refs, items=items) for m in (served, local))
    info = served.describe()
    assert "judge=openai:" in info["signature"] and "|method=probabilities|" in info["signature"]
    assert info["judge"]["by_method"] == {"probabilities": 2, "parsed text": 0} and info["judge"]["unscored"] == 0
    judges = {j.config.backend: j for j in _JUDGES.values()}
    assert judges["openai"].backend.describe()[SERVED]["next_token_logprobs"] == "by token id"
    for p, r, it in zip(preds, refs, items):
        prompt = judge_prompt(it["question"], r, p)
        a, b = judges["openai"].judgments[prompt], judges["transformers"].judgments[prompt]
        assert a.method == b.method == "probabilities"
        assert a.distribution == pytest.approx(b.distribution, abs=2e-4) and a.mass == pytest.approx(b.mass, rel=1e-3)
    np.testing.assert_allclose(got, expected, atol=5e-4)
    _assert_no_secret(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["wrong model", "adapter not served", "adapter folder only", "wrong key"])
def test_bad_input_against_vllm_is_one_line_and_writes_nothing(vllm_server, tmp_path, case):
    args = {
        "wrong model": ["--backend", "openai", "--base-url", vllm_server, "--served-model", "smollm2-135m"],
        "adapter not served": _served(vllm_server, "--adapter", "ft=served:nope"),
        "adapter folder only": _served(vllm_server, "--adapter", f"ft={ADAPTER}"),
        "wrong key": _served(vllm_server),
    }[case]
    expected = {
        "wrong model": ["serves no model 'smollm2-135m'", f"did you mean '{SERVED}'", "--served-model-name"],
        "adapter not served": ["adapter 'ft'", "serves no model 'nope'", f"it serves: {SERVED}, {LORA}",
                               "--lora-modules nope=PATH"],
        "adapter folder only": ["adapter 'ft'", "ft=served:LORA"],
        "wrong key": ["answered 401"],
    }[case]
    proc = _cli(*args, *_common(tmp_path, "run"), key="sk-wrong" if case == "wrong key" else SECRET)
    _one_line_error(proc, *expected)
    assert not (tmp_path / "run").exists()
    _assert_no_secret(proc.stdout + proc.stderr)


def test_the_server_flags_belong_to_the_openai_backend(tmp_path):
    proc = _cli("--base-url", "http://127.0.0.1:1/v1", "--limit", "1", "--out", str(tmp_path / "run"))
    _one_line_error(proc, "--base-url names a server", "--backend openai")
    proc = _cli("--backend", "openai", "--base-url", "http://127.0.0.1:1/v1", "--out", str(tmp_path / "run"))
    _one_line_error(proc, "backend 'openai' needs --served-model")
    proc = _cli("--adapter", "ft=served:symptoms", "--limit", "1", "--out", str(tmp_path / "run"))
    _one_line_error(proc, "adapter 'ft' is a served LoRA module", "--backend openai")
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------------ local stubs


class Stub:
    """A local HTTP server answering like an OpenAI-compatible one, each route as a test wants; records requests."""

    def __init__(self, routes: dict):
        self.routes, self.requests, self.in_flight, self.most_in_flight = routes, [], 0, 0
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n)) if n else None
                with stub.lock:
                    stub.requests.append((self.command, self.path, body, self.headers.get("Authorization")))
                    stub.in_flight += 1
                    stub.most_in_flight = max(stub.most_in_flight, stub.in_flight)
                try:
                    route = stub.routes.get(self.path)
                    status, payload = route(body) if route else (404, {"detail": "Not Found"})
                finally:
                    with stub.lock:
                        stub.in_flight -= 1
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # a client that hangs up mid-answer is the test's doing: no traceback from this server on the run's stderr
        self.server.handle_error = lambda request, client_address: None
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def calls(self, path: str) -> int:
        return sum(1 for _, p, _, _ in self.requests if p == path)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


MODELS = {"object": "list", "data": [{"id": SERVED, "object": "model", "root": "/srv/model", "parent": None,
                                      "max_model_len": 2048}]}


def _chat(body):
    time.sleep(0.2)  # long enough for concurrent requests to overlap
    return 200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": "Fever and cough."},
                              "finish_reason": "stop"}], "usage": {"completion_tokens": 5, "prompt_tokens": 40},
                 "system_fingerprint": "stub-1"}


def _no_echo(body):
    if body.get("echo"):
        return 400, {"error": {"message": "echo is not supported with logprobs", "type": "BadRequestError",
                               "code": 400}}
    return 200, {"choices": [{"index": 0, "text": " Fever.", "finish_reason": "stop"}],
                 "usage": {"completion_tokens": 3}, "system_fingerprint": "stub-1"}


@pytest.fixture
def stub():
    servers = []

    def make(routes):
        servers.append(Stub(routes))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def _stub_run(url: str, tmp_path: Path, *args: str, out: str = "run") -> subprocess.CompletedProcess:
    return _cli(*_served(url, "--no-default-adapter", "--limit", str(ITEMS), "--reference-rows", "none",
                         "--max-new-tokens", "16", "--out", str(tmp_path / out), "--cache",
                         str(tmp_path / "cache.sqlite"), "--no-report", *args))


def test_an_unreachable_server_is_one_line(tmp_path):
    port = _free_port()  # nothing listens there
    proc = _stub_run(f"http://127.0.0.1:{port}/v1", tmp_path)
    _one_line_error(proc, f"cannot reach the server at http://127.0.0.1:{port}/v1/models", "check --base-url")
    assert not (tmp_path / "run").exists()


def test_a_server_that_never_answers_times_out_in_one_line(tmp_path):
    with socket.socket() as listener:  # accepts connections, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
        t = time.monotonic()
        proc = _stub_run(url, tmp_path, "--request-timeout", "1", "--retries", "1")
    _one_line_error(proc, "no answer from", "within 1 s", "--request-timeout")
    assert time.monotonic() - t < 120 and not (tmp_path / "run").exists()


def test_a_timeout_mid_run_is_one_line_and_keeps_the_earlier_run_folder(stub, tmp_path):
    ok = stub({"/v1/models": lambda b: (200, MODELS), "/v1/completions": _no_echo, "/v1/chat/completions": _chat})
    first = _stub_run(ok.url, tmp_path, "--metrics", "rougeL")
    assert first.returncode == 0, first.stderr
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}
    slow = stub({"/v1/models": lambda b: (200, MODELS), "/v1/completions": _no_echo,
                 "/v1/chat/completions": lambda b: (time.sleep(3), _chat(b))[1]})
    proc = _stub_run(slow.url, tmp_path, "--metrics", "rougeL", "--request-timeout", "1", "--retries", "0",
                     "--overwrite", "--no-cache")
    _one_line_error(proc, "generating for baseline", "no answer from", "within 1 s")
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()} == before


@pytest.mark.parametrize("case", ["not json", "not a model list", "no choices"])
def test_a_malformed_answer_is_one_line(stub, tmp_path, case):
    routes = {"/v1/models": lambda b: (200, MODELS), "/v1/completions": _no_echo, "/v1/chat/completions": _chat}
    if case == "not json":
        routes["/v1/models"] = lambda b: (200, b"<html>gateway</html>")
    elif case == "not a model list":
        routes["/v1/models"] = lambda b: (200, {"models": ["x"]})
    else:
        routes["/v1/chat/completions"] = lambda b: (200, {"choices": []})
    server = stub(routes)
    proc = _stub_run(server.url, tmp_path, "--metrics", "rougeL")
    _one_line_error(proc, *{"not json": ["is not JSON", "OpenAI-compatible"],
                            "not a model list": ["not an OpenAI model list"],
                            "no choices": ["generating for baseline", "has no choices[0]"]}[case])
    assert not (tmp_path / "run").exists()


def test_a_server_without_prompt_logprobs_refuses_nll_metrics_and_runs_without_them(stub, tmp_path):
    server = stub({"/v1/models": lambda b: (200, MODELS), "/v1/completions": _no_echo, "/v1/chat/completions": _chat})
    proc = _stub_run(server.url, tmp_path)  # the default metrics hold loss and perplexity
    _one_line_error(proc, "no nll", "gives no prompt log-probabilities", "echo is not supported",
                    "the metrics loss, perplexity need completion NLL", "--metrics")
    assert not (tmp_path / "run").exists()
    proc = _stub_run(server.url, tmp_path, "--metrics", "rougeL,token_f1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("gives no prompt log-probabilities") == 1  # said once
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert set(results["metrics"]) == {"rougeL", "token_f1"} and results["model"]["prompt_logprobs"] is False
    record = _samples(tmp_path / "run")[0]["systems"]["baseline"]
    assert record["prediction"] == "Fever and cough." and record["nll_sum"] is None and record["stop_reason"] == "eos"


def test_retries_429_and_5xx_with_backoff_but_not_other_4xx(stub, tmp_path):
    failures = {"n": 0}

    def flaky(body):
        failures["n"] += 1
        if failures["n"] <= 2:
            return (503, {"error": {"message": "overloaded"}}) if failures["n"] == 1 else (429, {"error": {"message":
                                                                                                      "slow down"}})
        return _chat(body)

    server = stub({"/v1/models": lambda b: (200, MODELS), "/v1/completions": _no_echo, "/v1/chat/completions": flaky})
    proc = _stub_run(server.url, tmp_path, "--metrics", "rougeL", "--concurrency", "1", "--retries", "2")
    assert proc.returncode == 0, proc.stderr
    assert server.calls("/v1/chat/completions") == ITEMS + 2
    bad = stub({"/v1/models": lambda b: (200, MODELS), "/v1/completions": _no_echo,
                "/v1/chat/completions": lambda b: (400, {"error": {"message": "max_tokens is too large"}})})
    proc = _stub_run(bad.url, tmp_path, "--metrics", "rougeL", "--concurrency", "1", "--retries", "3", out="bad")
    _one_line_error(proc, "answered 400: max_tokens is too large")
    assert bad.calls("/v1/chat/completions") == 1 and not (tmp_path / "bad").exists()  # not retried, nothing after


def test_concurrency_is_bounded_and_the_key_is_sent_but_never_written(stub, tmp_path):
    server = stub({"/v1/models": lambda b: (200, MODELS), "/v1/completions": _no_echo, "/v1/chat/completions": _chat})
    proc = _stub_run(server.url, tmp_path, "--metrics", "rougeL", "--concurrency", "2", "--limit", "6")
    assert proc.returncode == 0, proc.stderr
    assert server.most_in_flight == 2
    assert {auth for *_, auth in server.requests} == {f"Bearer {SECRET}"}
    _assert_no_secret(tmp_path / "run", tmp_path / "cache.sqlite", proc.stdout + proc.stderr)
    chat = [body for _, path, body, _ in server.requests if path == "/v1/chat/completions"][0]
    assert chat["model"] == SERVED and chat["temperature"] == 0 and chat["max_tokens"] == 16
    assert chat["messages"][0]["role"] == "user" and "stop" not in chat


def test_medqa_bench_api_key_wins_over_openai_api_key(monkeypatch):
    from medqa_bench.inference.backends.openai import api_key

    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    monkeypatch.setenv("MEDQA_BENCH_API_KEY", "sk-medqa")
    assert api_key() == "sk-medqa"
    monkeypatch.delenv("MEDQA_BENCH_API_KEY")
    assert api_key() == "sk-openai"


def test_the_chat_asks_a_served_model_through_the_backend_seam(vllm_server, monkeypatch, tmp_path):
    """``medqa-bench chat --backend openai``: the chat plans its rows as a run does and asks the server through the
    openai backend; each row answers what the in-process transformers backend answers (greedy, float32, both rows
    on the unquantized base)."""
    from medqa_bench.chat import ChatOptions
    from medqa_bench.chat.session import ChatSession
    from medqa_bench.cli import build_parser, chat_options

    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.delenv("MEDQA_BENCH_API_KEY", raising=False)
    args = build_parser().parse_args(["chat", "--backend", "openai", "--base-url", vllm_server, "--served-model",
                                      SERVED, "--concurrency", "1", "--adapter", f"ft=served:{LORA}@{ADAPTER}",
                                      "--rag", "none", "--max-new-tokens", "16", "--device", "cpu"])
    options = chat_options(args)
    assert options.backend == "openai" and options.backend_options == {"base_url": vllm_server, "served_model": SERVED,
                                                                       "concurrency": 1}
    served = ChatSession(options, progress=False)
    assert served.backend.name == "openai" and served.names == ["baseline", "ft"]
    assert [served.system(n).prompt_format for n in served.names] == ["chat", "reference"]  # ft: its training format
    local = ChatSession(ChatOptions(adapters=(("ft", str(ADAPTER)),), quantization="none", dtype="float32", rag=None,
                                    max_new_tokens=16, device="cpu", cache=str(tmp_path / "cache.sqlite")),
                        progress=False)
    question = "What are the symptoms of influenza?"
    a, b = served.new_turn(question, "symptoms", served.names), local.new_turn(question, "symptoms", local.names)
    for name in served.names:
        assert served.prompt(name, a) == local.prompt(name, b)
        shown = list(served.stream(name, a))
        streamed = list(local.stream(name, b))
        assert len(shown) == 1 and len(streamed) > 1  # the openai backend does not stream: the answer comes whole
        assert shown[-1] == streamed[-1] == a.answers[name] == b.answers[name] and a.answers[name], name
    served.backend.close()
