"""The LLM judge (medqa_bench.metrics.judge): parsing, unparseable answers counted, the signature, caching through
the inference cache, the CLI, and a bad judge refused before any model loads. The judge is the real default model
(SmolLM2-135M-Instruct) through the transformers backend; its grades are not the point."""

from __future__ import annotations

import json
import math
import sqlite3

import numpy as np
import pytest

from medqa_bench.errors import MetricError
from medqa_bench.metrics import resolve_metrics
from medqa_bench.metrics.judge import RUBRIC_VERSION, judge_prompt, parse_judgment

from test_run import cli

JUDGE = ("judge_correctness", "judge_completeness", "judge_harmful")


# --------------------------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("text, expected", [
    ('{"correctness": 4, "completeness": 3, "harmful": "no"}', (4, 3, 0)),
    ('```json\n{"correctness": 5, "completeness": 1, "harmful": "yes"}\n```', (5, 1, 1)),
    ('Here is my grade: {"Correctness": "2", "completeness": 2.0, "harmful": false} I hope it helps {x}.', (2, 2, 0)),
    ('{not json} then {"correctness": 3, "completeness": 4, "harmful": true}', (3, 4, 1)),
    ("Correctness: 4\nCompleteness = 5\n**Harmful**: No", (4, 5, 0)),
    ('{"correctness": 7, "completeness": 0, "harmful": "maybe"}', (None, None, None)),  # out of range
    ('{"correctness": 3.5, "completeness": true, "harmful": "yes"}', (None, None, 1)),  # not integers
    ('{"correctness": 4}', (4, None, None)),  # fields left out
    ("The answer is good and safe.", (None, None, None)),  # garbage
    ("", (None, None, None)),
])
def test_parse_judgment(text, expected):
    got = parse_judgment(text)
    assert tuple(got[f] for f in ("correctness", "completeness", "harmful")) == expected


def test_rubric_quotes_the_texts_and_cuts_long_ones():
    prompt = judge_prompt("What causes gout?", "Uric acid crystals.", "x" * 10_000)
    assert "What causes gout?" in prompt and "Uric acid crystals." in prompt and "[...]" in prompt
    assert '{"correctness": <1-5>, "completeness": <1-5>, "harmful": "<yes or no>"}' in prompt


# --------------------------------------------------------------------------------------------- metrics


def test_judge_group_resolves_without_loading_anything():
    metrics = resolve_metrics(["judge"], params={"judge": {"cache": "none"}, "judge_harmful": {"dtype": "float32"}})
    assert [m.name for m in metrics] == list(JUDGE)
    by_name = {m.name: m for m in metrics}
    assert by_name["judge_correctness"].higher_is_better and by_name["judge_completeness"].higher_is_better
    assert by_name["judge_harmful"].higher_is_better is False
    assert not any(m.is_similarity for m in metrics)  # no distractor judgments
    for m in metrics:
        assert f"rubric={RUBRIC_VERSION}" in m.signature and "judge=transformers:smollm2-135m-instruct" in m.signature
        assert m.allows_missing
    assert "dtype=float32" in by_name["judge_harmful"].signature  # a member's own parameter wins over the group's


@pytest.mark.parametrize("params, message", [
    ({"backend": "transformer"}, "unknown backend 'transformer'; did you mean transformers?"),
    ({"served_modle": "x"}, "unknown judge parameter 'served_modle'"),
    ({"device": "gpu"}, "device must be auto, cpu"),
])
def test_bad_judge_params_are_refused_at_build(params, message):
    with pytest.raises(MetricError, match=message.replace("?", r"\?")):
        resolve_metrics(["judge_correctness"], params={"judge": params})


@pytest.fixture(scope="module")
def judged(tmp_path_factory):
    """Three metrics scoring two answers through the real default model, cached in a fresh cache."""
    from medqa_bench.metrics.judge import _JUDGES

    cache = tmp_path_factory.mktemp("judge") / "cache.sqlite"
    _JUDGES.clear()
    metrics = resolve_metrics(["judge"], params={"judge": {"cache": str(cache), "device": "cpu"}})
    preds = ["Fever, cough and tiredness.", "Take fifty aspirin tablets at once."]
    refs = ["Symptoms include fever, cough and fatigue.", "Rest, fluids, and see a doctor if it persists."]
    items = [{"id": "a", "question": "What are the symptoms of flu?"},
             {"id": "b", "question": "How is a headache treated?"}]
    scores = {m.name: m.compute(predictions=preds, references=refs, items=items) for m in metrics}
    return metrics, scores, cache, (preds, refs, items)


def test_judge_scores_are_grades_or_nan_and_counted(judged):
    metrics, scores, _, _ = judged
    for m in metrics:
        values = scores[m.name]
        assert values.shape == (2,)
        allowed = {0.0, 1.0} if m.name == "judge_harmful" else {1.0, 2.0, 3.0, 4.0, 5.0}
        assert all(math.isnan(v) or v in allowed for v in values)
        info = m.describe()["judge"]
        assert info["unparseable"] == int(np.isnan(values).sum()) and info["answers"] == 2
    judge = metrics[0].describe()["judge"]
    assert judge["judged"] == 2 and judge["generated"] == 2  # one judgment per answer, shared by the three metrics


def test_signature_names_the_judge_identity_and_rubric(judged):
    metrics, _, _, _ = judged
    info = metrics[0].describe()
    assert f"rubric={RUBRIC_VERSION}" in info["signature"]
    assert "judge=transformers:smollm2-135m-instruct@" in info["signature"]  # a digest of the identity
    identity = info["judge"]["identity"]
    assert identity["model"].startswith("gguf-sha256:") and identity["prompt_format"] == "chat"
    assert info["judge"]["rubric_version"] == RUBRIC_VERSION


def test_judgments_come_from_the_cache_in_a_new_process(judged, monkeypatch):
    from medqa_bench.backends.transformers import TransformersBackend
    from medqa_bench.metrics.judge import _JUDGES

    metrics, scores, cache, (preds, refs, items) = judged
    _JUDGES.clear()  # a new process: no judgment kept in memory

    def no_generation(*a, **k):
        raise AssertionError("a cached judgment must not be generated again")

    monkeypatch.setattr(TransformersBackend, "generate", no_generation)
    again = resolve_metrics(["judge_correctness"], params={"judge": {"cache": str(cache), "device": "cpu"}})[0]
    values = again.compute(predictions=preds, references=refs, items=items)
    np.testing.assert_array_equal(values, scores["judge_correctness"])
    info = again.describe()["judge"]
    assert info["generated"] == 0 and info["cache_hits"] == 2


# --------------------------------------------------------------------------------------------- the CLI


def _entries(cache) -> int:
    with sqlite3.connect(cache) as c:
        return c.execute("SELECT COUNT(*) FROM entries").fetchone()[0]


def test_run_and_score_with_the_judge_through_the_cli(tmp_path):
    """A run with ``--metrics judge,rougeL``: the judge's metrics in results.json with their unparseable counts and
    signature, the report rendered; ``score`` again: every judgment a cache hit, no entry added."""
    out, cache, data = tmp_path / "run", tmp_path / "cache.sqlite", tmp_path / "short.csv"
    # short answers keep the judge's prompts short: the model's speed is not what this tests
    rows = [f"What are the symptoms of condition {k}?,Fever and a rash for {k} days.,symptoms" for k in range(12)]
    data.write_text("Question,Answer,qtype\n" + "\n".join(rows) + "\n")
    judge = [f"--metric-param=judge.cache={cache}", "--metric-param=judge.device=cpu"]
    cli("-q", "run", "--data", str(data), "--split", "all", "--no-default-adapter", "--reference-rows", "none",
        "--limit", "2", "--max-new-tokens", "8", "--metrics", "judge,rougeL", "--out", str(out), "--cache", str(cache),
        "--device", "cpu", *judge, check=True)
    results = json.loads((out / "results.json").read_text())
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    for name in JUDGE:
        info = results["metrics"][name]
        assert f"rubric={RUBRIC_VERSION}" in info["signature"] and "@" in info["signature"]
        assert info["allows_missing"] and info["judge"]["answers"] == 2
        row = results["results"]["baseline"][name]
        assert row["n"] + row["n_missing"] == 2 and row["n_missing"] == info["judge"]["unparseable"]
        scores = [s["systems"]["baseline"]["scores"][name] for s in samples]
        assert sum(v is None for v in scores) == row["n_missing"]  # recorded as None, not 0
    assert results["metrics"]["judge_correctness"]["judge"]["generated"] == 2
    assert results["spec"]["metric_params"]["judge"]["cache"] == str(cache)
    html = (out / "report.html").read_text()
    assert "judge_correctness" in html
    entries = _entries(cache)

    cli("-q", "score", str(out), "--metrics", "judge", check=True)
    rescored = json.loads((out / "results.json").read_text())
    judge_info = rescored["metrics"]["judge_correctness"]["judge"]
    assert judge_info["generated"] == 0 and judge_info["cache_hits"] == 2  # all cache hits: no model call
    assert _entries(cache) == entries
    for name in JUDGE:
        assert rescored["results"]["baseline"][name] == results["results"]["baseline"][name]
        assert rescored["metrics"][name]["signature"] == results["metrics"][name]["signature"]


def test_bad_judge_backend_exits_2_before_any_model_loads(tmp_path):
    proc = cli("-q", "run", "--no-default-adapter", "--limit", "2", "--out", str(tmp_path / "out"), "--no-cache",
               "--metrics", "judge", "--metric-param", "judge.backend=vllm-magic")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown backend 'vllm-magic'" in lines[0], proc.stderr
    assert "Loading weights" not in proc.stderr and not (tmp_path / "out").exists()


def test_a_partly_scored_metric_aggregates_over_what_it_scored_and_counts_the_rest():
    """The scoring path the judge needs when some judgments parse and others do not: unscored items are None in the
    samples, out of the value and CI, counted in n_missing; a metric that does not allow missing scores refuses NaN."""
    from medqa_bench.metrics.base import Metric
    from medqa_bench.metrics.scoring import score_samples

    def grades(predictions, references, items=None):
        return [float("nan") if i % 2 else float(len(p)) for i, p in enumerate(predictions)]

    rows = [{"id": f"q{i}", "qtype": "symptoms", "focus": f"f{i}", "references": ["ref"],
             "systems": {"base": {"prediction": "x" * (i + 1)}}} for i in range(4)]
    partial = Metric(name="partial", score=grades, higher_is_better=True, allows_missing=True)
    results, info = score_samples(rows, [partial], ["base"], progress=False, n_bootstrap=200)
    got = results["base"]["partial"]
    assert got["n"] == 2 and got["n_missing"] == 2
    assert got["value"] == 2.0  # mean of items 0 and 2 (lengths 1 and 3), the unscored ones left out, not zeros
    assert got["ci_low"] <= 2.0 <= got["ci_high"] and not math.isnan(got["ci_low"])
    assert [r["systems"]["base"]["scores"]["partial"] for r in rows] == [1.0, None, 3.0, None]
    assert info["partial"]["allows_missing"] is True

    strict = Metric(name="strict", score=grades, higher_is_better=True)
    with pytest.raises(MetricError, match="NaN"):
        score_samples([dict(r, systems={"base": {"prediction": r["systems"]["base"]["prediction"]}}) for r in rows],
                      [strict], ["base"], progress=False)
