"""The LLM judge (medqa_bench.metrics.judge): the expected grade over the grade tokens' probabilities on the real
default model (SmolLM2-135M-Instruct, transformers backend), checked against the same softmax computed here from the
model's logits; every answer scored; judgments from the cache in a new process; the OpenAI backend's next-token
log-probabilities read by token id or from a top-k, and the parsed-text fallback, against local stub servers (the
real vLLM server's judge is tested in test_openai_backend.py, beside its fixture); the CLI. The judge's grades are
not the point here: `medqa-bench metrics validate --metrics judge_grade` measures them."""

from __future__ import annotations

import json
import math
import os
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

from medqa_bench.errors import MetricError
from medqa_bench.metrics import resolve_metrics
from medqa_bench.metrics.judge import GRADES, PREFIX, RUBRIC_VERSION, expected_grade, judge_prompt, parse_judgment

from test_openai_backend import MODELS, SERVED, Stub
from test_run import cli

#: Three answers of different quality, short so that a forward pass on two CPU cores takes a second or two.
PREDICTIONS = ["Flu causes fever, cough, sore throat, muscle aches and tiredness.",
               "Influenza is a virus that spreads in winter.",
               "Take fifty aspirin tablets at once."]
REFERENCES = ["Symptoms of flu include fever, cough, sore throat, body aches, headache and fatigue."] * 2 + [
    "Rest, fluids and pain relievers at the labelled dose; see a doctor if it persists."]
ITEMS = [{"id": "a", "question": "What are the symptoms of flu?"},
         {"id": "b", "question": "What are the symptoms of flu?"},
         {"id": "c", "question": "How is a headache treated?"}]


# --------------------------------------------------------------------------------------------- reading a grade


@pytest.mark.parametrize("text, expected", [
    ("Grade: 3", 3), ("grade:4", 4), ("**Grade:** 2 (Related)", 2), ("Grade: Excellent", 4),
    ("The grade is 1", 1),  # "grade" then a digit: a grade
    ("3", 3), (" 2 - Related: it is on topic", 2), ("(4)", 4),
    ("Grade: 5", None), ("Grade: 3.5", None), ("3.5", None), ("12 weeks", None),  # out of range, not an integer
    ("I cannot grade this answer.", None), ("The answer is excellent.", None), ("", None),  # no grade
])
def test_parse_judgment(text, expected):
    assert parse_judgment(text) == (None if expected is None else float(expected))


def test_expected_grade_is_the_mean_of_the_renormalised_distribution():
    logprobs = {"1": math.log(0.01), "2": math.log(0.02), "3": math.log(0.03), "4": math.log(0.04)}
    j = expected_grade(logprobs)
    assert j.method == "probabilities" and j.mass == pytest.approx(0.10)
    assert j.distribution == pytest.approx({1: 0.1, 2: 0.2, 3: 0.3, 4: 0.4})
    assert j.grade == pytest.approx(3.0)
    # a grade the backend could not see (outside a server's top-k) has p = 0; none seen: no judgment
    assert expected_grade({"1": None, "2": None, "3": None, "4": math.log(0.5)}).grade == 4.0
    assert expected_grade({"1": None, "2": None, "3": None, "4": None}) is None
    assert expected_grade({"1": -math.inf, "2": -math.inf, "3": -math.inf, "4": -math.inf}) is None
    # tiny probabilities (a judge that hardly meant a grade) still give a distribution
    tiny = expected_grade({"1": -800.0, "2": -801.0, "3": -900.0, "4": -900.0})
    assert 1.0 < tiny.grade < 2.0 and tiny.mass == 0.0 and sum(tiny.distribution.values()) == pytest.approx(1.0)


def test_rubric_quotes_the_texts_names_the_grades_and_cuts_long_ones():
    prompt = judge_prompt("What causes gout?", "Uric acid crystals.", "x" * 10_000)
    assert "What causes gout?" in prompt and "Uric acid crystals." in prompt and "[...]" in prompt
    for g, name in GRADES.items():
        assert f"{g} = {name}:" in prompt
    assert prompt.endswith('Reply with "Grade: " and the grade\'s digit.') and PREFIX == "Grade: "


# --------------------------------------------------------------------------------------------- the metric


def test_judge_group_resolves_without_loading_anything():
    metrics = resolve_metrics(["judge"], params={"judge": {"cache": "none", "dtype": "float32"}})
    assert [m.name for m in metrics] == ["judge_grade"]
    m = metrics[0]
    assert m.higher_is_better and m.allows_missing and m.bounds == (1.0, 4.0) and not m.is_similarity
    assert f"rubric={RUBRIC_VERSION}" in m.signature and "judge=transformers:smollm2-135m-instruct" in m.signature
    assert "grade=expected over 1-4 after 'Grade:'" in m.signature and "dtype=float32" in m.signature
    assert m.describe().get("judge") is None  # nothing loaded, nothing judged


@pytest.mark.parametrize("params, message", [
    ({"backend": "transformer"}, "unknown backend 'transformer'; did you mean transformers?"),
    ({"served_modle": "x"}, "unknown judge parameter 'served_modle'"),
    ({"device": "gpu"}, "device must be auto, cpu"),
])
def test_bad_judge_params_are_refused_at_build(params, message):
    with pytest.raises(MetricError, match=message.replace("?", r"\?")):
        resolve_metrics(["judge_grade"], params={"judge": params})


def test_the_rubric_1_metrics_are_gone():
    with pytest.raises(MetricError, match="unknown metric 'judge_correctness'"):
        resolve_metrics(["judge_correctness"])


@pytest.fixture(scope="module")
def judged(tmp_path_factory):
    """judge_grade scoring the three answers through the real default model, float32 on the CPU, in a fresh cache."""
    from medqa_bench.metrics.judge import _JUDGES

    cache = tmp_path_factory.mktemp("judge") / "cache.sqlite"
    _JUDGES.clear()
    [metric] = resolve_metrics(["judge_grade"], params={"judge": {"cache": str(cache), "device": "cpu"}})
    scores = metric.compute(predictions=PREDICTIONS, references=REFERENCES, items=ITEMS)
    return metric, scores, cache


def _the_judge():
    from medqa_bench.metrics.judge import _JUDGES

    [judge] = _JUDGES.values()
    return judge


def test_the_default_model_grades_every_answer_from_probabilities(judged):
    metric, scores, _ = judged
    assert scores.shape == (3,) and not np.isnan(scores).any()
    assert ((scores >= 1.0) & (scores <= 4.0)).all()
    judgments = [_the_judge().judgments[judge_prompt(it["question"], r, p)]
                 for p, r, it in zip(PREDICTIONS, REFERENCES, ITEMS)]
    for j, s in zip(judgments, scores):
        assert j.method == "probabilities" and j.grade == s and j.text is None
        assert set(j.distribution) == set(GRADES) and sum(j.distribution.values()) == pytest.approx(1.0, abs=1e-12)
        assert j.grade == pytest.approx(sum(g * p for g, p in j.distribution.items()))
        assert 0.0 < j.mass <= 1.0
    info = metric.describe()
    judge = info["judge"]
    assert judge["answers"] == 3 and judge["unscored"] == 0 and judge["judged"] == 3
    assert judge["by_method"] == {"probabilities": 3, "parsed text": 0} and judge["method"] == "probabilities"
    assert judge["computed"] == 3 and judge["cache_hits"] == 0  # one forward pass per answer
    assert judge["grade_mass"]["min"] == pytest.approx(min(j.mass for j in judgments))
    assert "judge=transformers:smollm2-135m-instruct@" in info["signature"]  # a digest of the identity
    assert "|method=probabilities|" in info["signature"] and f"rubric={RUBRIC_VERSION}" in info["signature"]
    identity = judge["identity"]
    assert identity["model"].startswith("gguf-sha256:") and identity["prompt_format"] == "chat"
    assert identity["dtype"] == "float32"


def test_the_grade_equals_the_softmax_of_the_models_logits_computed_here(judged):
    """The prompt the judge scores is the chat template with its generation prompt, then "Grade: "; the next
    token's distribution over the digits 1-4 at that position, renormalised, is what the judge recorded."""
    import torch

    judge = _the_judge()
    loaded = judge.backend.bases[judge.system.quantization]
    tok, model = loaded.tokenizer, loaded.model
    digits = [tok.convert_tokens_to_ids(str(g)) for g in GRADES]
    assert all(len(tok(str(g), add_special_tokens=False)["input_ids"]) == 1 for g in GRADES)
    for k in (0, 2):
        prompt = judge_prompt(ITEMS[k]["question"], REFERENCES[k], PREDICTIONS[k])
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                       add_generation_prompt=True) + "Grade: "
        ids = tok(text, return_tensors="pt")["input_ids"]
        assert tok(text + "3", return_tensors="pt")["input_ids"][0, :-1].tolist() == ids[0].tolist()  # one token
        with torch.no_grad():
            logits = model(ids).logits[0, -1].double()
        p = torch.softmax(logits, -1)[digits]
        expected = {g: float(x) for g, x in zip(GRADES, p / p.sum())}
        got = judge.judgments[prompt]
        assert got.distribution == pytest.approx(expected, abs=1e-5)
        assert got.mass == pytest.approx(float(p.sum()), rel=1e-4)
        assert got.grade == pytest.approx(sum(g * q for g, q in expected.items()), abs=1e-5)


def test_judgments_come_from_the_cache_in_a_new_process(judged, monkeypatch):
    from medqa_bench.inference.backends.transformers import TransformersBackend
    from medqa_bench.metrics.judge import _JUDGES

    metric, scores, cache = judged
    _JUDGES.clear()  # a new process: no judgment kept in memory

    def no_model_call(*a, **k):
        raise AssertionError("a cached judgment must not be computed again")

    monkeypatch.setattr(TransformersBackend, "next_token_logprobs", no_model_call)
    monkeypatch.setattr(TransformersBackend, "generate", no_model_call)
    [again] = resolve_metrics(["judge_grade"], params={"judge": {"cache": str(cache), "device": "cpu"}})
    np.testing.assert_array_equal(again.compute(predictions=PREDICTIONS, references=REFERENCES, items=ITEMS), scores)
    info = again.describe()["judge"]
    assert info["computed"] == 0 and info["cache_hits"] == 3
    with sqlite3.connect(cache) as c:
        assert c.execute("SELECT kind, COUNT(*) FROM entries GROUP BY kind").fetchall() == [("next_token", 3)]


# --------------------------------------------------------------------------------------------- served judges (stubs)


def _completions(top_logprobs):
    """A /v1/completions route: echo (prompt log-probabilities) and vLLM's token-id extension refused, as a strict
    server does; one generated token with ``top_logprobs()`` (None: no log-probabilities at all)."""
    def route(body):
        if body.get("echo") or "logprob_token_ids" in body:
            return 400, {"error": {"message": "unsupported parameter"}}
        top = top_logprobs() if body.get("logprobs") is not None else None
        choice = {"index": 0, "text": "3", "finish_reason": "length"}
        if top is not None:
            choice["logprobs"] = {"tokens": ["3"], "token_logprobs": [-0.5], "top_logprobs": [top]}
        return 200, {"choices": [choice], "usage": {"completion_tokens": 1}, "system_fingerprint": "stub-1"}
    return route


def _chat(body):
    return 200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": "Grade: 2"},
                              "finish_reason": "stop"}], "usage": {"completion_tokens": 4}}


@pytest.fixture
def served_judge(tmp_path):
    """``make(top_logprobs)``: judge_grade against a stub server giving ``top_logprobs()`` at a generated token."""
    from medqa_bench.metrics.judge import _JUDGES

    servers = []

    def make(top_logprobs):
        servers.append(Stub({"/v1/models": lambda b: (200, MODELS), "/v1/completions": _completions(top_logprobs),
                             "/v1/chat/completions": _chat}))
        _JUDGES.clear()
        params = {"backend": "openai", "base_url": servers[-1].url, "served_model": SERVED, "concurrency": 1,
                  "cache": str(tmp_path / f"judge{len(servers)}.sqlite")}
        [metric] = resolve_metrics(["judge_grade"], params={"judge": params})
        return metric, servers[-1]

    yield make
    for s in servers:
        s.close()


def test_a_served_top_k_judge_reads_the_digits_it_lists_and_parses_text_where_it_lists_none(served_judge):
    tops = iter([{"Grade": -3.0},  # the probe (PROBE_TEXT's next token)
                 {"3": -0.5, "4": -1.5, "The": -2.0}, {"3": -0.5, "4": -1.5, "The": -2.0},
                 {"The": -0.1, "I": -2.5}])  # no digit among the top tokens: the fallback
    metric, server = served_judge(lambda: next(tops))
    scores = metric.compute(predictions=PREDICTIONS, references=REFERENCES, items=ITEMS)
    p3, p4 = math.exp(-0.5), math.exp(-1.5)
    assert scores.tolist() == pytest.approx([(3 * p3 + 4 * p4) / (p3 + p4)] * 2 + [2.0])
    info = metric.describe()["judge"]
    assert info["by_method"] == {"probabilities": 2, "parsed text": 1} and info["unscored"] == 0
    assert info["method"] == "probabilities" and info["identity"]["backend"] == "openai"
    judge_requests = [b for _, path, b, _ in server.requests if path == "/v1/completions" and "logprobs" in b
                      and not b.get("echo") and "logprob_token_ids" not in b][1:]
    assert len(judge_requests) == 3 and all(b["max_tokens"] == 1 and b["logprobs"] == 20 for b in judge_requests)
    assert server.calls("/v1/chat/completions") == 1


def test_a_served_judge_without_log_probabilities_parses_generated_text(served_judge):
    metric, server = served_judge(lambda: None)
    scores = metric.compute(predictions=PREDICTIONS[:2], references=REFERENCES[:2], items=ITEMS[:2])
    assert scores.tolist() == [2.0, 2.0]
    info = metric.describe()
    assert info["judge"]["method"] == "parsed text" and info["judge"]["by_method"]["parsed text"] == 2
    assert "|method=parsed text|" in info["signature"] and info["judge"]["grade_mass"] is None
    assert server.calls("/v1/chat/completions") == 2


# --------------------------------------------------------------------------------------------- the CLI


def _entries(cache) -> int:
    with sqlite3.connect(cache) as c:
        return c.execute("SELECT COUNT(*) FROM entries").fetchone()[0]


def test_run_and_score_with_the_judge_through_the_cli(tmp_path):
    """A run with ``--metrics judge,rougeL``: judge_grade in results.json for every answer, with its signature and
    counts, the report rendered; ``score`` again: every judgment a cache hit, no entry added."""
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
    info = results["metrics"]["judge_grade"]
    assert f"rubric={RUBRIC_VERSION}" in info["signature"] and "@" in info["signature"]
    assert info["allows_missing"] and info["judge"]["answers"] == 2 and info["judge"]["computed"] == 2
    row = results["results"]["baseline"]["judge_grade"]
    assert row["n"] == 2 and not row.get("n_missing") and 1.0 <= row["value"] <= 4.0  # every answer graded
    assert all(1.0 <= s["systems"]["baseline"]["scores"]["judge_grade"] <= 4.0 for s in samples)
    assert results["spec"]["metric_params"]["judge"]["cache"] == str(cache)
    assert "judge_grade" in (out / "report.html").read_text()
    entries = _entries(cache)

    # another process: every judgment from the cache
    proc = subprocess.run([sys.executable, "-m", "medqa_bench.cli", "-q", "score", str(out), "--metrics", "judge"],
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    rescored = json.loads((out / "results.json").read_text())
    judge_info = rescored["metrics"]["judge_grade"]["judge"]
    assert judge_info["computed"] == 0 and judge_info["cache_hits"] == 2  # all cache hits: no model call
    assert _entries(cache) == entries
    assert rescored["results"]["baseline"]["judge_grade"] == results["results"]["baseline"]["judge_grade"]
    assert rescored["metrics"]["judge_grade"]["signature"] == info["signature"]
    # the same process as the run: its judge already holds the judgments, and this score's counts are its own
    cli("-q", "score", str(out), "--metrics", "judge", check=True)
    again = json.loads((out / "results.json").read_text())["metrics"]["judge_grade"]["judge"]
    assert (again["computed"], again["cache_hits"], again["reused"], again["judged"]) == (0, 0, 2, 2)


def test_bad_judge_backend_exits_2_before_any_model_loads(tmp_path):
    proc = cli("-q", "run", "--no-default-adapter", "--limit", "2", "--out", str(tmp_path / "out"), "--no-cache",
               "--metrics", "judge", "--metric-param", "judge.backend=vllm-magic")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown backend 'vllm-magic'" in lines[0], proc.stderr
    assert "Loading weights" not in proc.stderr and not (tmp_path / "out").exists()


def test_a_partly_scored_metric_aggregates_over_what_it_scored_and_counts_the_rest():
    """The scoring path the parsed-text fallback needs when some judgments parse and others do not: unscored items
    are None in the samples, out of the value and CI, counted in n_missing; a metric that does not allow missing
    scores refuses NaN."""
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
