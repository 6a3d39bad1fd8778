"""End-to-end runs through the CLI and the API: outputs, cache hits, resume after kill -9, re-scoring, bad input."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli_runner import medqa

from medqa_bench.schema import SCHEMA_VERSION

METRICS = "loss,perplexity,exact_match,fuzzy,rougeL,token_f1,embedding_similarity"


def cli(*args: str, env_extra: dict | None = None, check: bool = False, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``medqa-bench ARGS`` in this process (cli_runner); the resume test starts a process of its own to kill."""
    proc = medqa(*args, env=env_extra, cwd=cwd)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def base_args(out: Path, cache: Path, adapter: Path, limit: int = 3, tokens: int = 8, metrics: str = METRICS,
              report: bool = True, data: Path | None = None) -> list[str]:
    """A small run; ``data``: the short-answer symptoms file (conftest ``short_symptoms``), else the default data."""
    return ["-q", "run", *(["--data", str(data)] if data else []), "--adapter", f"ft={adapter}", "--limit", str(limit), "--max-new-tokens", str(tokens),
            "--batch-size", "1", "--metrics", metrics, "--out", str(out), "--cache", str(cache), "--device", "cpu",
            *([] if report else ["--no-report"])]


# The resume tests compare runs with each other: cheap metrics and no report keep them fast.
FAST = {"metrics": "loss,perplexity,rougeL,fuzzy", "report": False}


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, lora_adapter, short_symptoms):
    root = tmp_path_factory.mktemp("run")
    cli(*base_args(root / "run", root / "cache.sqlite", lora_adapter, data=short_symptoms), check=True)
    return root


def test_run_folder_contents(small_run):
    run = small_run / "run"
    results = json.loads((run / "results.json").read_text())
    samples = [json.loads(x) for x in (run / "samples.jsonl").read_text().splitlines()]
    assert (run / "report.html").exists()
    assert results["schema_version"] == SCHEMA_VERSION
    assert list(results["systems"]) == ["baseline", "ft", "retrieval", "boilerplate", "question"]
    assert [results["systems"][s]["kind"] for s in results["systems"]] == ["baseline", "adapter"] + ["reference"] * 3
    # the instruct baseline is asked in its own chat template; an adapter without training metadata in the same
    assert results["systems"]["baseline"]["prompt_format"] == "chat" == results["systems"]["ft"]["prompt_format"]
    assert results["budget"]["source"] == "given" and results["budget"]["max_new_tokens"] == 8
    assert results["verdict"]["adapters"]["ft"]["lines"]
    assert results["model"]["fingerprint"].startswith("gguf-sha256:")
    assert results["systems"]["ft"]["adapter"]["fingerprint"].startswith("sha256:")
    assert results["data"]["manifest_fingerprint"].startswith("sha256:") and results["data"]["n_items"] == 3
    assert results["spec"]["limit"] == 3 and results["spec"]["decoding"]["max_new_tokens"] == 8
    assert results["environment"]["versions"]["torch"]
    # each metric's validity from the bundled measurement; the verdict opens with the primary metric
    validity = results["validity"]
    assert validity["source"] == "bundled" and validity["primary"]["metric"] in METRICS.split(",")
    assert validity["metrics"]["rougeL"]["measured"] and not validity["metrics"]["loss"]["measured"]
    assert results["verdict"]["lines"][0].startswith(f"primary metric: {validity['primary']['metric']}")
    for m in METRICS.split(","):
        for s in ("baseline", "ft"):
            v = results["results"][s][m]
            assert v["ci_low"] <= v["value"] <= v["ci_high"], (s, m, v)
    assert len(samples) == 3
    for rec in samples:
        assert set(rec["prompts"]) == {"chat"} and rec["prompts"]["chat"].startswith("<|im_start|>")
        overlap = rec["train_overlap"]  # a near-duplicate also carries the training texts it nearly repeats
        assert set(overlap) == {"reference", "question", "near_duplicate", *(["nearest"] if overlap["near_duplicate"] else [])}
        for s in ("baseline", "ft"):
            r = rec["systems"][s]
            assert {"prediction", "truncated", "stop_reason", "generated_tokens", "nll_sum", "nll_tokens"} <= set(r)
            assert set(METRICS.split(",")) <= set(r["scores"])
        for s in ("retrieval", "boilerplate", "question"):  # no language model: no NLL metrics, no stop reason
            r = rec["systems"][s]
            assert r["stop_reason"] is None and "nll_sum" not in r and "loss" not in r["scores"]
        assert rec["systems"]["question"]["prediction"] == rec["question"]
        assert rec["systems"]["retrieval"]["source"]["train_id"] != rec["id"]
    # corpus perplexity is exp(sum NLL / sum tokens)
    import math

    base = [r["systems"]["baseline"] for r in samples]
    expected = math.exp(sum(r["nll_sum"] for r in base) / sum(r["nll_tokens"] for r in base))
    assert results["results"]["baseline"]["perplexity"]["value"] == pytest.approx(expected, rel=1e-9)


def test_adapter_is_asked_in_its_recorded_format(tmp_path, lora_adapter, short_symptoms):
    """An adapter whose training metadata records the reference template and a 4-bit base is evaluated in that
    template on that base, beside the chat baseline on the unquantized base; the adapter check then scores the 4-bit
    base alone in the reference template."""
    import shutil

    adapter = tmp_path / "ft-ref"
    shutil.copytree(lora_adapter, adapter)
    (adapter / "medqa_bench.json").write_text(json.dumps({"resolved": {"prompt_format": "reference",
                                                                     "quantization": "4bit"}}))
    out = tmp_path / "run"
    cli(*base_args(out, tmp_path / "cache.sqlite", adapter, limit=2, tokens=6, metrics="loss,rougeL", report=False,
                   data=short_symptoms),
        "--reference-rows", "question", check=True)
    results = json.loads((out / "results.json").read_text())
    samples = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    ft, base = results["systems"]["ft"], results["systems"]["baseline"]
    assert (ft["prompt_format"], ft["format_source"]) == ("reference", "training metadata")
    assert (base["prompt_format"], base["format_source"]) == ("chat", "the model's chat template")
    assert ft["stop_sequences"] == ["### Question", "### Answer"] and base["stop_sequences"] == []
    # and on the base it was trained on: two bases loaded, the baseline on the unquantized one
    assert (ft["quantization"], base["quantization"]) == ("4bit", "none")
    assert set(results["models"]) == {"none", "4bit"}
    assert set(results["systems"]) == {"baseline", "ft", "question"}
    assert samples[0]["prompts"]["reference"].startswith("### Question Type:")
    # NLL: baseline (chat) + ft (reference) + the base alone in the reference template; generations: two systems
    assert results["cache"]["misses"] == 3 * 2 + 2 * 2
    conditions = {c["code"] for c in results["verdict"]["adapters"]["ft"]["conditions"]}
    assert "prompt_format" in conditions and "stop_sequences" in conditions


def test_second_run_is_all_cache_hits(small_run, lora_adapter, short_symptoms):
    out = small_run / "again"
    cli(*base_args(out, small_run / "cache.sqlite", lora_adapter, data=short_symptoms), check=True)
    first = json.loads((small_run / "run" / "results.json").read_text())
    second = json.loads((out / "results.json").read_text())
    assert second["cache"]["misses"] == 0 and second["cache"]["hits"] == 2 * 2 * 3  # nll + generation, 2 systems
    assert second["results"] == first["results"]


def test_changing_the_key_misses(small_run, lora_adapter, short_symptoms):
    out = small_run / "other-tokens"
    cli(*base_args(out, small_run / "cache.sqlite", lora_adapter, tokens=9, data=short_symptoms, **FAST), check=True)
    res = json.loads((out / "results.json").read_text())
    assert res["cache"]["misses"] == 2 * 3  # generations are new (decoding changed); NLLs are reused
    assert res["cache"]["hits"] == 2 * 3


def test_resume_after_kill_9(tmp_path, lora_adapter, small_run, short_symptoms):
    """Killed (SIGKILL) after its first cached results, then started again: nothing finished is recomputed, and the
    outputs equal an uninterrupted run's (``small_run``: the same items, adapter, decoding and batch size, with a
    fresh cache; more metrics, which do not enter the cache keys)."""
    cache = tmp_path / "cache.sqlite"
    args = base_args(tmp_path / "killed", cache, lora_adapter, data=short_symptoms, **FAST)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "medqa_bench.cli", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if cache.exists():
            try:
                with sqlite3.connect(cache) as c:
                    done = c.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
            except sqlite3.OperationalError:
                done = 0
            if done >= 2:  # the first NLLs: killed in the middle of scoring
                break
        time.sleep(0.2)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "results.json").exists()
    with sqlite3.connect(cache) as c:
        finished = c.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
    assert finished < 2 * 2 * 3
    cli(*args, check=True)
    resumed = json.loads((tmp_path / "killed" / "results.json").read_text())
    assert resumed["cache"]["hits"] == finished  # nothing finished was recomputed
    assert resumed["cache"]["hits"] + resumed["cache"]["misses"] == 2 * 2 * 3
    # identical to the uninterrupted run, metric by metric and item by item
    clean = json.loads((small_run / "run" / "results.json").read_text())
    metrics = FAST["metrics"].split(",")
    for system in ("baseline", "ft"):
        assert {m: resumed["results"][system][m] for m in metrics} == {m: clean["results"][system][m] for m in metrics}
    fields = ("prediction", "truncated", "generated_tokens", "nll_sum", "nll_tokens", "perplexity")

    def per_item(run_dir):
        rows = [json.loads(x) for x in (run_dir / "samples.jsonl").read_text().splitlines()]
        return [(r["id"], {s: ({f: v.get(f) for f in fields}, {m: v["scores"].get(m) for m in metrics})
                           for s, v in r["systems"].items()}) for r in rows]

    assert per_item(tmp_path / "killed") == per_item(small_run / "run")


def test_score_rescores_without_the_language_model(small_run, monkeypatch):
    import shutil

    from medqa_bench import api
    from medqa_bench.inference import models

    run = small_run / "rescored"
    shutil.copytree(small_run / "run", run)

    def no_model(*a, **k):
        raise AssertionError("score must not load the language model")

    monkeypatch.setattr(models, "load_base", no_model)
    before = json.loads((run / "results.json").read_text())
    res = api.score(run, metrics=["rouge1", "fuzzy_token_set"], progress=False)
    # the two metrics are added; the run's own are kept as they were
    assert set(res.results["results"]["baseline"]) == {*METRICS.split(","), "rouge1", "fuzzy_token_set"}
    for metric in METRICS.split(","):
        assert res.results["results"]["ft"][metric] == before["results"]["ft"][metric]
    assert "rouge1" in res.samples[0]["systems"]["ft"]["scores"]
    # 5 systems (3 reference rows without NLL metrics), 3 items
    assert res.table().shape[0] == 2 * (7 + 2) + 3 * (5 + 2) and len(res.items()) == 3 * 5


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--metrics", "rougeL,perplexty"], "did you mean perplexity"),
        (["--adapter", "x=/no/such/adapter"], "does not exist"),
        (["--limit", "-1"], "limit must be >= 0"),
        (["--model", "no-such-model"], "resolves to nothing"),
        (["--qtype", "nonsense"], "qtypes present"),
    ],
)
def test_bad_input_one_line_exit_2_and_earlier_results_kept(small_run, extra, message):
    out = small_run / "run"
    before = (out / "results.json").read_bytes()
    proc = cli("run", "--limit", "2", "--out", str(out), "--no-default-adapter", *extra)
    assert proc.returncode == 2, proc.stderr
    lines = [x for x in proc.stderr.strip().splitlines() if x.strip()]
    assert lines[-1].startswith("medqa-bench: error:") and message in lines[-1]
    assert "Traceback" not in proc.stderr
    assert (out / "results.json").read_bytes() == before


def test_failing_plugin_names_itself(tmp_path, small_run):
    plugin = tmp_path / "bad_plugin.py"
    plugin.write_text(
        "from medqa_bench.metrics import Metric\n"
        "def boom(predictions, references, items):\n"
        "    raise ValueError('kaboom')\n"
        "METRICS = [Metric(name='boom', higher_is_better=True, score=boom)]\n"
    )
    proc = cli("score", str(small_run / "run"), "--plugin", str(plugin), "--metrics", "boom", "--no-report")
    assert proc.returncode == 2
    assert "boom" in proc.stderr and "Traceback" not in proc.stderr


def test_adapter_without_effect_fails_loudly(tmp_path, default_model, short_symptoms):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(default_model.source.location)
    get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM")).save_pretrained(tmp_path / "zero")
    proc = cli("run", "--data", str(short_symptoms), "--adapter", f"zero={tmp_path / 'zero'}", "--limit", "2", "--out", str(tmp_path / "out"),
               "--no-cache", "--max-new-tokens", "4")
    assert proc.returncode == 2
    assert "does not change the model" in proc.stderr
    assert not (tmp_path / "out" / "results.json").exists()


def test_spec_file_with_flag_override(tmp_path, lora_adapter):
    from medqa_bench.spec import RunSpec

    (tmp_path / "spec.yaml").write_text(f"name: t\nlimit: 7\nadapters: {{ft: {lora_adapter}}}\ndecoding: {{max_new_tokens: 5}}\n")
    (tmp_path / "spec.toml").write_text("name = 't'\nlimit = 7\n[decoding]\nmax_new_tokens = 5\n")
    y = RunSpec.from_file(tmp_path / "spec.yaml", limit=2)
    t = RunSpec.from_file(tmp_path / "spec.toml")
    assert y.limit == 2 and y.decoding.max_new_tokens == 5 and y.adapters == (("ft", str(lora_adapter)),)
    assert t.limit == 7 and t.decoding.max_new_tokens == 5
    assert RunSpec.from_dict(y.to_dict()) == y
    (tmp_path / "bad.yaml").write_text("limt: 3\n")
    from medqa_bench.errors import SpecError

    with pytest.raises(SpecError, match="did you mean 'limit'"):
        RunSpec.from_file(tmp_path / "bad.yaml")
