"""`medqa-bench check RUN_DIR`, the CI gate (issue 30, item 7): exit 1 with one line per failed condition, 0 when
every adapter passes, 2 on bad input. On committed run folders (reports/: one where the shipped adapter loses to the
chat baseline, one where it wins but degenerates) and on hand-made ones (conftest_report) where the answer is known.
Nothing loads a model; results.json is all the gate reads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest_report import make_records

from medqa_bench.storage import atomic
from medqa_bench.analysis import analyze
from medqa_bench.analysis.gate import (CONDITIONS, DEFAULT_CONDITIONS, EXIT_FAILED, check_results, check_run,
    parse_conditions)
from medqa_bench.analysis.verdict import build_verdict
from medqa_bench.cli import main
from medqa_bench.errors import RunError, SpecError

ROOT = Path(__file__).resolve().parents[1]
LOSES = ROOT / "reports" / "headline-other-types"  # the shipped adapter on other question types: worse on 7 metrics
WINS = ROOT / "reports" / "headline"  # better on 9 metrics, but its answers loop and run to the budget
SIMILARITIES = ("embedding_similarity", "fuzzy", "rougeL")


def _validity(primary: str = "embedding_similarity") -> dict:
    """A validity block whose primary metric agrees well with expert grades (no weak_metrics warning)."""
    metrics = {m: {"measured": True, "signature": m, "below_floor": False, "passes_robustness": True,
                   "figures": {"within_question_spearman": {"value": 0.5, "ci_low": 0.4, "ci_high": 0.6}}}
               for m in SIMILARITIES}
    metrics["perplexity"] = {"measured": False, "signature": "perplexity", "reason": "not an answer-quality metric"}
    return {"source": "bundled", "floor": {"figure": "within_question_spearman", "value": 0.3, "rule": "r"},
            "primary": {"metric": primary, "rule": "rule", "reason": "highest within-question Spearman"},
            "metrics": metrics}


def _records(n: int = 30, *, gain: float = 0.1, jitter: float = 0.0, degenerate: bool = False,
             adapters=("qlora-medquad",), near_duplicates: int = 0) -> dict:
    """A run whose adapters answer like the chat baseline plus ``gain`` on every similarity (± ``jitter`` item by
    item; their perplexity is lower already), stop by themselves and answer at the reference's length;
    ``degenerate``: the first runs to the budget on every item."""
    results, samples = make_records(n=n, adapters=adapters, near_duplicates=near_duplicates, analysed=False)
    for i, s in enumerate(samples):
        base = s["systems"]["baseline"]
        for k, name in enumerate(adapters):
            rec = s["systems"][name]
            shift = gain * (k + 1) + (jitter if i % 2 else -jitter)
            rec["scores"].update({m: min(1.0, max(0.0, base["scores"][m] + shift)) for m in SIMILARITIES})
            truncated = degenerate and k == 0
            rec.update(prediction=f"{s['focus']}: " + s["reference"], truncated=truncated, generated_tokens=40,
                       stop_reason="length" if truncated else "stop")
    results["validity"] = _validity()
    results["analysis"] = analyze(results, samples, n_bootstrap=200)
    results["verdict"] = build_verdict(results)
    return results


def _folder(tmp_path: Path, results: dict, name: str = "run") -> Path:
    folder = tmp_path / name
    atomic.write_json(folder / "results.json", results)
    return folder


# ------------------------------------------------------------------------------------------ committed run folders


def test_a_committed_run_where_the_adapter_loses_fails_with_one_line_per_condition(capsys):
    assert main(["check", str(LOSES)]) == EXIT_FAILED == 1
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["failed primary", "failed regression", "failed degeneration"]
    # written before the primary metric was recorded: said, not guessed
    assert "cannot be checked on the primary metric" in lines[0] and "schema 2.1" in lines[0]
    assert "significantly worse than its strongest baseline on 7 metrics: fuzzy -0.037" in lines[1]
    assert "vs baseline, p_holm 0.001" in lines[1]
    assert "truncated 66% (warning above 25%)" in lines[2] and "median length 3.14x (warning above 3x)" in lines[2]
    # the regression alone fails it too
    assert main(["check", str(LOSES), "--conditions", "regression"]) == 1


def test_a_committed_run_where_the_adapter_wins_passes_on_regression_and_fails_on_its_loops(capsys):
    assert main(["check", str(WINS), "--conditions", "regression"]) == 0
    assert capsys.readouterr().out.strip() == f"passed: s07-ref-all on regression ({WINS})"
    assert main(["check", str(WINS)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in out] == ["failed primary", "failed degeneration"]
    assert "repeated 4-grams 66%" in out[1]  # the baselines loop too, but that is not the adapter's failure
    assert not any("baseline" in line for line in out)
    assert main(["check", str(WINS), "--conditions", "regression,leakage"]) == 0  # the verdict holds without them


def test_a_run_with_retrieval_rows_checks_each_adapter_row_and_not_the_baselines_own():
    result = check_run(ROOT / "reports" / "headline-rag", ("regression", "degeneration"))
    assert result.adapters == ("s07-ref-all", "s07-ref-all+rag")  # baseline+rag is judged but is no adapter
    assert [(f.condition, f.system) for f in result.failures] == [("degeneration", "s07-ref-all"),
                                                                 ("degeneration", "s07-ref-all+rag")]
    assert check_run(ROOT / "reports" / "headline-rag", ("regression",), ("s07-ref-all+rag",)).passed


# ------------------------------------------------------------------------------------------ hand-made run folders


@pytest.fixture(scope="module")
def passing() -> dict:
    return _records()


def test_an_adapter_that_beats_its_baseline_on_the_primary_metric_passes(passing, tmp_path, capsys):
    folder = _folder(tmp_path, passing)
    assert main(["check", str(folder)]) == 0
    assert capsys.readouterr().out.strip() == f"passed: qlora-medquad on primary, regression, degeneration ({folder})"
    # the baseline's answers hit the budget: warned of in the verdict, but not the adapter's failure
    assert any(w["code"] == "truncation" and w["system"] == "baseline" for w in passing["verdict"]["warnings"])
    assert main(["check", str(folder), "--conditions", "all"]) == 0


def test_each_default_condition_fails_on_its_own_cause(tmp_path, capsys):
    no_gain = _records(gain=0.0, jitter=0.05)
    primary = [f for f in check_results(no_gain)[1] if f.condition == "primary"]
    assert len(primary) == 1 and primary[0].message.startswith(
        "qlora-medquad does not significantly beat baseline on the primary metric embedding_similarity (")
    alike = _records(gain=0.0)  # the same score on every item: no test can tell them apart, whatever the items
    [failure] = [f for f in check_results(alike)[1] if f.condition == "primary"]
    assert "cannot reach significance, the two rows score alike on all 30 items" in failure.message
    assert "more items" not in failure.message

    worse = _records(gain=-0.1)
    failures = {f.condition: f.message for f in check_results(worse)[1]}
    assert "significantly worse than baseline on the primary metric" in failures["primary"]
    assert failures["regression"].startswith("qlora-medquad is significantly worse than its strongest baseline on 3 "
                                             "metrics: embedding_similarity -0.100")

    looping = _folder(tmp_path, _records(degenerate=True))
    assert main(["check", str(looping)]) == 1
    assert capsys.readouterr().out.splitlines() == [
        "failed degeneration: qlora-medquad's answers degenerate: truncated 100% (warning above 25%)"]
    assert main(["check", str(looping), "--conditions", "primary,regression"]) == 0


def test_five_items_cannot_pass_the_primary_condition_and_the_line_says_why():
    results = _records(n=5)
    [failure] = check_results(results, ("primary",))[1]
    assert "cannot reach significance, with 5 items the smallest p the paired test can give is 0.0625" in \
        failure.message and "evaluate more items" in failure.message


def test_adapters_are_checked_one_by_one_and_can_be_chosen(tmp_path, capsys):
    results = _records(adapters=("a1", "a2"), degenerate=True)
    folder = _folder(tmp_path, results)
    assert main(["check", str(folder)]) == 1
    assert capsys.readouterr().out.splitlines()[0].startswith("failed degeneration: a1's answers degenerate")
    assert main(["check", str(folder), "--adapter", "a2"]) == 0
    assert main(["check", str(folder), "--adapter", "a3"]) == 2
    assert "--adapter 'a3' is not an adapter of this run (did you mean 'a" in capsys.readouterr().err


def test_a_run_without_adapters_or_primary_metric_fails_with_the_reason():
    results = _records()
    no_primary = {**results, "validity": {**results["validity"], "primary": {"metric": None, "reason": "none passed"}}}
    no_primary["verdict"] = {**results["verdict"], "primary": no_primary["validity"]["primary"]}
    [failure] = check_results(no_primary, ("primary",))[1]
    assert "the run has none (none passed)" in failure.message
    without = {**results, "verdict": {**results["verdict"], "adapters": {}}}
    assert [f.line() for f in check_results(without)[1]] == [
        "failed adapters: the run evaluated no adapter: there is nothing to let through"]


def test_opt_in_conditions_leakage_and_weak_metrics():
    results = _records(near_duplicates=3)
    v = results["verdict"]["adapters"]["qlora-medquad"]
    v["clean_subset"] = {**(v["clean_subset"] or {}), "changed": ["fuzzy"]}
    v["warnings"].append({"code": "weak_metrics", "message": "the conclusion rests only on weak metrics"})
    failures = check_results(results, ("leakage", "weak_metrics"))[1]
    assert [f.line() for f in failures] == [
        "failed leakage: qlora-medquad: without the items that nearly repeat a training item the verdict changes on "
        "fuzzy", "failed weak_metrics: qlora-medquad: the conclusion rests only on weak metrics"]
    assert not [f for f in check_results(results)[1]]  # neither is a default condition


# ------------------------------------------------------------------------------------------ bad input: exit 2


def test_condition_names_are_checked_with_did_you_mean(capsys):
    assert parse_conditions(None) == DEFAULT_CONDITIONS == ("primary", "regression", "degeneration")
    assert parse_conditions("all") == tuple(CONDITIONS)
    assert parse_conditions(" regression, primary,regression") == ("regression", "primary")
    with pytest.raises(SpecError, match="names no condition"):
        parse_conditions(" , ")
    assert main(["check", str(LOSES), "--conditions", "primary,regresion"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("medqa-bench: error: unknown condition 'regresion' (did you mean 'regression'?)")
    assert len(err.strip().splitlines()) == 1


def test_what_is_not_a_checkable_run_folder_exits_2(tmp_path, capsys):
    assert main(["check", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["check", str(tmp_path / "empty")]) == 2
    assert "holds no results.json" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "results.json").write_text("{", encoding="utf-8")
    with pytest.raises(RunError, match="not valid JSON"):
        check_run(bad)
    old = json.loads((LOSES / "results.json").read_text(encoding="utf-8"))
    for change, message in (({"verdict": None}, "holds no verdict"), ({"schema_version": "1.0"}, "schema_version")):
        folder = _folder(tmp_path, {**old, **change}, name=message.replace(" ", "-"))
        with pytest.raises(RunError, match=message):
            check_run(folder)


def test_check_reads_results_json_alone(tmp_path):
    """No samples file, no model: a copy of results.json is a run folder the gate can check."""
    folder = tmp_path / "only-results"
    folder.mkdir()
    shutil.copy(LOSES / "results.json", folder / "results.json")
    assert check_run(folder).exit_status == 1
