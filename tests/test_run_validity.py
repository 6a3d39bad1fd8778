"""The run uses the validity figures (issue 31, item 6): results.json records each metric's figures matched by
signature, the verdict names the primary metric and warns when a conclusion rests only on weak or unmeasured
metrics, ``--validity FILE`` on run and score, the report shows them, and the committed measured.json holds numbers
only, of today's metric definitions. No model is loaded: run folders are hand-made (conftest_report)."""

from __future__ import annotations

import copy
import json
import lzma
import shutil
from pathlib import Path

import pytest
from conftest_report import make_records

from medqa_bench.storage import atomic
from medqa_bench.analysis.verdict import build_verdict
from medqa_bench.cli import main
from medqa_bench.errors import DataError
from medqa_bench.metrics import DEFAULT_METRICS, resolve_metrics
from medqa_bench.schema import SCHEMA_VERSION
from medqa_bench.validity import choose_primary
from medqa_bench.validity.measured import (WITHIN_QUESTION_FLOOR, bundled_path, compact, read_validity_source,
    run_validity)

ROOT = Path(__file__).resolve().parents[1]
JUDGED = ROOT.parent / "shared" / "data" / "medquad-judged"
needs_judged = pytest.mark.skipif(not (JUDGED / "qrels.txt").is_file(), reason="../shared/data/medquad-judged missing")
RUN_METRICS = ("embedding_similarity", "fuzzy", "rougeL", "perplexity")  # the hand-made run's metrics


@pytest.fixture(scope="module")
def measured() -> dict:
    return json.loads(bundled_path().read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def bundled():
    return read_validity_source(None)


def _infos(names, params=None) -> dict[str, dict]:
    """``results["metrics"]`` as a run records it: each metric's describe() (signature, source, kind, ...)."""
    return {m.name: {"name": m.name, **m.describe(), "kind": m.kind, "higher_is_better": m.higher_is_better}
            for m in resolve_metrics(list(names), params=params)}


def _records(n: int = 30, **kwargs) -> tuple[dict, list[dict]]:
    """A hand-made run whose metrics carry today's real signatures (the fixture's are made up)."""
    results, samples = make_records(n=n, **kwargs)
    for name, info in _infos(RUN_METRICS).items():
        results["metrics"][name]["signature"] = info["signature"]
    results["spec"]["data"] = {"qtype": "symptoms,treatment"}  # the fixture's data block is not a spec's
    return results, samples


def _write(folder: Path, results: dict, samples: list[dict]) -> Path:
    atomic.write_json(folder / "results.json", results)
    atomic.write_jsonl(folder / "samples.jsonl", samples)
    return folder


# ------------------------------------------------------------------------------------------ matching


def test_a_default_run_gets_figures_for_every_answer_metric_and_a_named_primary(bundled, measured):
    block = run_validity(_infos(DEFAULT_METRICS), bundled)
    answer_metrics = [m.name for m in resolve_metrics(DEFAULT_METRICS) if m.kind == "reference"]
    assert answer_metrics and all(block["metrics"][m]["measured"] for m in answer_metrics)
    assert block["primary"]["metric"] == measured["primary"] is not None
    assert block["source"] == "bundled" and block["fingerprint"].startswith("sha256:")
    assert block["floor"] == {"figure": "within_question_spearman", "value": WITHIN_QUESTION_FLOOR,
                              "rule": block["floor"]["rule"]} and "Cohen" in block["floor"]["rule"]
    for name in ("loss", "perplexity"):  # not answer-quality metrics: said so, never given figures
        assert block["metrics"][name] == {"measured": False, "signature": block["metrics"][name]["signature"],
                                          "reason": block["metrics"][name]["reason"]}
        assert "not an answer-quality metric" in block["metrics"][name]["reason"]
    for name in ("context_recall", "answer_grounding"):
        assert not block["metrics"][name]["measured"] and "passages" in block["metrics"][name]["reason"]
    row = measured["metrics"]["rouge2"]
    entry = block["metrics"]["rouge2"]
    assert entry["figures"] == row["figures"] and entry["robustness"] == row["robustness"]
    assert entry["below_floor"] == (row["figures"]["within_question_spearman"]["value"] < WITHIN_QUESTION_FLOOR)


def test_figures_are_matched_by_signature_a_changed_parameter_is_not_measured(bundled):
    infos = _infos(["embedding_similarity", "rouge2"], params={"embedding_similarity": {"max_seq_length": 128}})
    block = run_validity(infos, bundled)
    entry = block["metrics"]["embedding_similarity"]
    assert entry["measured"] is False and "figures" not in entry
    assert "another configuration" in entry["reason"] and "max_seq_length=128" in entry["reason"]
    assert block["metrics"]["rouge2"]["measured"] is True
    # a plugin (or any metric) the file does not hold: not measured, and how to measure it
    infos["my_plugin"] = {"name": "my_plugin", "signature": "my_plugin|v1", "kind": "reference", "source": "plugin:x"}
    block = run_validity(infos, bundled)
    assert not block["metrics"]["my_plugin"]["measured"]
    assert "metrics validate --metrics my_plugin" in block["metrics"]["my_plugin"]["reason"]
    # a plugin that takes a built-in's name but computes something else is not given the built-in's figures
    impostor = {"rouge2": {"name": "rouge2", "signature": "rouge2|my own", "kind": "reference", "source": "plugin:y"}}
    assert not run_validity(impostor, bundled)["metrics"]["rouge2"]["measured"]


def test_the_primary_is_chosen_by_the_validity_packages_rule_among_the_runs_measured_metrics(bundled, measured):
    names = [m for m in DEFAULT_METRICS if m in measured["metrics"]]
    rows = {m: measured["metrics"][m] for m in names}
    block = run_validity(_infos(DEFAULT_METRICS), bundled)
    assert (block["primary"]["metric"], block["primary"]["reason"]) == choose_primary(rows)
    # without the primary, the next metric that passes the suite by within-question Spearman
    first = block["primary"]["metric"]
    rest = [m for m in DEFAULT_METRICS if m != first]
    passing = [m for m in rest if m in rows and rows[m]["passes_robustness"]]
    best = max(passing, key=lambda m: rows[m]["figures"]["within_question_spearman"]["value"])
    assert run_validity(_infos(rest), bundled)["primary"]["metric"] == best
    # only metrics that fail the suite: no primary, and why
    failing = [m for m in names if not rows[m]["passes_robustness"]]
    assert failing
    primary = run_validity(_infos(failing), bundled)["primary"]
    assert primary["metric"] is None and "no metric passes the robustness suite" in primary["reason"]
    # nothing measured at all
    primary = run_validity(_infos(["perplexity"]), bundled)["primary"]
    assert primary["metric"] is None and "no metric of this run was measured" in primary["reason"]


# ------------------------------------------------------------------------------------------ the verdict


def _validity(primary: str | None, figures: dict[str, float | None]) -> dict:
    """A validity block: each metric's within-question Spearman (None: not measured)."""
    metrics = {}
    for name, wq in figures.items():
        if wq is None:
            metrics[name] = {"measured": False, "signature": name, "reason": f"{name} is not measured here"}
        else:
            interval = {"value": wq, "ci_low": wq - 0.08, "ci_high": wq + 0.08}
            metrics[name] = {"measured": True, "signature": name, "figures": {"within_question_spearman": interval},
                             "robustness": {}, "passes_robustness": True, "below_floor": wq < WITHIN_QUESTION_FLOOR}
    return {"source": "bundled", "floor": {"figure": "within_question_spearman", "value": WITHIN_QUESTION_FLOOR,
                                           "rule": "r"},
            "primary": {"metric": primary, "rule": "rule", "reason": "the reason"}, "metrics": metrics}


def _judged(outcomes: dict[str, str], n_items: int = 60) -> dict:
    """A results dict with one adapter judged against one baseline: outcome per metric."""
    rows = {}
    for m, outcome in outcomes.items():
        diff = {"improves": 0.05, "regresses": -0.05, "none": 0.004}[outcome]
        rows[m] = {"against": "baseline", "mean_diff": diff, "ci_low": diff - 0.02, "ci_high": diff + 0.02,
                   "p_holm": 0.3 if outcome == "none" else 0.001, "better": diff > 0}
    return {"analysis": {"n_items": n_items, "kinds": {"baseline": "baseline", "ft": "adapter"},
                         "systems": ["baseline", "ft"], "paired": {"ft": {"metrics": rows}},
                         "strongest_baseline": {"ft": {m: "baseline" for m in outcomes}}}}


def test_the_floor_warning_fires_when_every_significant_metric_is_weak_or_unmeasured():
    figures = {"rouge2": 0.38, "fuzzy": 0.10, "rouge1": 0.26, "loss": None}
    results = {**_judged({"rouge2": "none", "fuzzy": "improves", "rouge1": "improves", "loss": "regresses"}),
               "validity": _validity("rouge2", figures)}
    verdict = build_verdict(results)
    ft = verdict["adapters"]["ft"]
    [weak] = [w for w in ft["warnings"] if w["code"] == "weak_metrics"]
    assert weak["metrics"] == ["fuzzy", "rouge1", "loss"]
    assert "fuzzy (improves; within-question Spearman 0.10 [0.02, 0.18] < 0.3)" in weak["message"]
    assert "loss (regresses; not measured against expert grades: loss is not measured here)" in weak["message"]
    assert "on the primary metric rouge2 the difference is not significant" in weak["message"]
    assert ft["primary"]["metric"] == "rouge2" and ft["primary"]["outcome"] == "no_difference"
    assert verdict["lines"][0].startswith("primary metric: rouge2, within-question Spearman with expert grades 0.38")
    assert "ft on the primary metric rouge2: no significant difference (+0.004" in verdict["lines"][1]
    assert any(line.startswith("warning: the conclusion rests only on metrics that agree weakly") for line in
               verdict["lines"])


@pytest.mark.parametrize("outcomes", [
    {"rouge2": "improves", "fuzzy": "improves", "loss": "regresses"},  # the primary improves significantly
    {"rouge2": "regresses", "fuzzy": "improves"},  # a valid metric carries the (negative) conclusion
    {"rouge2": "none", "fuzzy": "none", "loss": "none"},  # no conclusion at all
])
def test_no_floor_warning_when_a_valid_metric_differs_or_nothing_does(outcomes):
    results = {**_judged(outcomes), "validity": _validity("rouge2", {"rouge2": 0.38, "fuzzy": 0.10, "loss": None})}
    verdict = build_verdict(results)
    ft = verdict["adapters"]["ft"]
    assert not [w for w in ft["warnings"] if w["code"] == "weak_metrics"]
    assert ft["primary"]["outcome"] == {"improves": "improves", "regresses": "regresses", "none": "no_difference"}[
        outcomes["rouge2"]]
    said = {"improves": "improves (+0.050", "regresses": "regresses (-0.050", "none": "no significant difference"}
    assert f"ft on the primary metric rouge2: {said[outcomes['rouge2']]}" in "\n".join(ft["lines"])


def test_no_primary_and_results_without_validity():
    results = {**_judged({"fuzzy": "improves"}), "validity": _validity(None, {"fuzzy": 0.1})}
    verdict = build_verdict(results)
    assert verdict["lines"][0] == ("no primary metric: the reason (validity figures: the bundled measurement)")
    assert verdict["adapters"]["ft"]["primary"] is None
    assert [w["code"] for w in verdict["adapters"]["ft"]["warnings"]] == ["weak_metrics"]
    old = build_verdict(_judged({"fuzzy": "improves"}))  # a run folder written before validity was recorded
    assert old["primary"] is None and old["adapters"]["ft"]["primary"] is None
    assert not any("primary" in line or "weakly" in line for line in old["lines"])


# ------------------------------------------------------------------------------------------ --validity


def _user_file(folder: Path, measured: dict, **changes) -> Path:
    data = copy.deepcopy(measured)
    data.update(changes)
    path = folder / "validity.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    ("{not json", "is not a readable validity.json"),
    ('{"version": "2", "metrics": {}}', "validity.json version '2'"),
    ('{"version": "1", "metrics": {}}', "has no metric rows"),
    ('{"version": "1", "metrics": {"rouge2": {"kind": "metric", "signature": "x"}}}', "'metrics.rouge2.figures'"),
])
def test_a_bad_validity_file_is_refused_in_one_line_before_anything_loads(tmp_path, monkeypatch, capsys, content,
                                                                           message):
    import medqa_bench.inference.models as models
    import medqa_bench.planning.plan as planning
    from medqa_bench.inference.backends.transformers import TransformersBackend

    def refuse(*args, **kwargs):
        raise AssertionError("the data, the tokenizer or the model was loaded before --validity was checked")

    # the backend is built first (it loads nothing, and picks no device until asked); the data, the model's
    # tokenizer, the device and the weights all come after the check
    monkeypatch.setattr(planning, "plan_data", refuse)
    monkeypatch.setattr(models, "load_tokenizer", refuse)
    monkeypatch.setattr(models, "pick_device", refuse)
    monkeypatch.setattr(TransformersBackend, "load", refuse)
    path = tmp_path / "mine.json"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    out = tmp_path / "run"
    assert main(["-q", "run", "--validity", str(path), "--out", str(out), "--no-cache"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("medqa-bench: error: ") and "\n" not in err and message in err
    assert not out.exists()
    with pytest.raises(DataError):
        read_validity_source(path)


def test_score_recomputes_the_block_and_takes_a_users_file(tmp_path, measured):
    results, samples = _records()
    results["metrics"]["rougeL"]["signature"] = "rougeL|an older definition"  # as scored before
    results["schema_version"] = "2.1"
    run = _write(tmp_path / "run", results, samples)  # a run folder without a validity block
    assert main(["-q", "score", str(run), "--metrics", "rougeL", "--no-report"]) == 0
    scored = json.loads((run / "results.json").read_text())
    block = scored["validity"]
    assert block["source"] == "bundled" and scored["schema_version"] == SCHEMA_VERSION
    assert block["metrics"]["rougeL"]["measured"]  # scored again with today's definition: its figures now
    assert block["metrics"]["rougeL"]["figures"] == measured["metrics"]["rougeL"]["figures"]
    assert not block["metrics"]["perplexity"]["measured"]
    assert scored["verdict"]["lines"][0].startswith("primary metric: ")
    assert scored["verdict"]["primary"] == block["primary"]

    # a user's validity.json: the run records its path and fingerprint; score keeps it in the spec
    mine = copy.deepcopy(measured)
    mine["metrics"]["fuzzy"]["figures"]["within_question_spearman"]["value"] = 0.9
    mine["metrics"]["fuzzy"]["passes_robustness"] = True
    user = tmp_path / "mine" / "validity.json"
    user.parent.mkdir()
    user.write_text(json.dumps(mine), encoding="utf-8")
    assert main(["-q", "score", str(run), "--metrics", "fuzzy", "--validity", str(user), "--no-report"]) == 0
    scored = json.loads((run / "results.json").read_text())
    assert scored["spec"]["validity"] == str(user) and scored["validity"]["source"] == str(user)
    assert scored["validity"]["primary"]["metric"] == "fuzzy"
    assert scored["validity"]["fingerprint"] != block["fingerprint"]
    # back to the bundled measurement
    assert main(["-q", "score", str(run), "--metrics", "fuzzy", "--validity", "bundled", "--no-report"]) == 0
    scored = json.loads((run / "results.json").read_text())
    assert scored["spec"]["validity"] is None and scored["validity"]["source"] == "bundled"
    # a bad file: one line, exit 2, the run folder untouched
    before = (run / "results.json").read_bytes()
    assert main(["-q", "score", str(run), "--validity", str(tmp_path / "nope.json"), "--no-report"]) == 2
    assert (run / "results.json").read_bytes() == before


def test_a_folder_with_validity_json_and_compact_files_are_read_alike(tmp_path, measured):
    folder = tmp_path / "v"
    folder.mkdir()
    _user_file(folder, measured)
    source = read_validity_source(folder)
    assert source.data == compact(measured) == compact(compact(measured))


# ------------------------------------------------------------------------------------------ the report


def test_the_report_shows_the_figures_beside_each_metric_and_escapes_them(tmp_path, bundled):
    from medqa_bench.report import render_report

    results, samples = _records(n=24)
    results["validity"] = run_validity(results["metrics"], bundled)
    payload = "<img src=x onerror=alert(1)>"
    results["validity"]["metrics"]["perplexity"]["reason"] += payload
    results["validity"]["source"] = f"mine/{payload}.json"
    results["verdict"] = build_verdict(results)
    html = render_report([_write(tmp_path / "run", results, samples)]).read_text(encoding="utf-8")
    assert payload not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert 'id="trust"' in html and "Which number to trust" in html and "not recorded" not in html
    primary = results["validity"]["primary"]["metric"]
    assert primary == "rougeL" and f'data-primary="{primary}"' in html
    assert '<span class="vbadge primary"' in html and '<span class="vbadge below-floor"' in html  # fuzzy: 0.10
    figures = results["validity"]["metrics"][primary]["figures"]
    beside = (f"within-q ρ {figures['within_question_spearman']['value']:.2f} · on-topic AUC "
              f"{figures['auc_on_topic']['value']:.2f}")
    assert beside in html  # the primary's figures beside its value in the headline table
    assert f"On the primary metric <b>{primary}</b>" in html


def test_run_folders_without_validity_still_render_with_a_note(tmp_path):
    """A 2.1 run folder as committed under reports/ (its samples compressed there)."""
    from medqa_bench.report import render_report

    src = ROOT / "reports" / "headline-other-types"
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(src / "results.json", run / "results.json")
    with lzma.open(src / "samples.jsonl.xz", "rb") as fh:
        (run / "samples.jsonl").write_bytes(fh.read())
    assert "validity" not in json.loads((run / "results.json").read_text())
    html = render_report([run]).read_text(encoding="utf-8")
    assert "records no validity figures" in html and "medqa-bench score RUN_DIR" in html
    assert 'class="vbadge' not in html.split('id="summary"')[1].split("</table>")[0]


# ------------------------------------------------------------------------------------------ measured.json


def _strings(node):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)


@needs_judged
def test_the_committed_measurement_holds_no_text_of_the_judged_set(measured):
    from medqa_bench.validity import bundled_judged_set

    judged = bundled_judged_set(JUDGED)
    assert measured["judged_set"]["fingerprint"] == judged.fingerprint  # measured on the set as built today
    corpus = "\n".join({t for c in judged.candidates for t in (c.candidate, c.question, *c.references)})
    window = 100
    for text in _strings(measured):
        for start in range(0, max(1, len(text) - window + 1), 10):
            piece = text[start:start + window]
            assert len(piece) < window or piece not in corpus, f"measured.json quotes the judged set: {piece!r}"
    assert "candidates" not in measured and all("scores" not in r for r in measured["metrics"].values())
    assert "boilerplate" not in measured["robustness"]


def test_the_committed_measurement_is_of_todays_metric_definitions(measured):
    """A changed definition (or library version) of a built-in metric must be measured again:
    `.venv/bin/python benchmarks/bench_validity.py --write-measured`."""
    rows = {n: r for n, r in measured["metrics"].items() if r["kind"] == "metric"}
    today = _infos(rows)
    stale = {n: (r["signature"], today[n]["signature"]) for n, r in rows.items()
             if r["signature"] != today[n]["signature"]}
    assert not stale, f"re-run benchmarks/bench_validity.py --write-measured: {stale}"
    assert measured["primary"] == choose_primary(rows)[0]


def test_a_combined_report_carries_the_figures_only_when_the_runs_agree(tmp_path, bundled, measured):
    from medqa_bench.report import render_report

    folders = []
    for k, source in enumerate((bundled, bundled)):
        results, samples = _records(n=12, seed=k, run_name=f"run{k}", analysed=False)
        results["validity"] = run_validity(results["metrics"], source)
        folders.append(_write(tmp_path / f"r{k}", results, samples))
    html = render_report(folders, tmp_path / "both.html").read_text(encoding="utf-8")
    assert 'table class="validity"' in html and "records no validity figures" not in html
    results = json.loads((folders[1] / "results.json").read_text())
    results["validity"]["source"] = "other/validity.json"
    (folders[1] / "results.json").write_text(json.dumps(results))
    html = render_report(folders, tmp_path / "both.html").read_text(encoding="utf-8")
    assert "record different validity figures" in html and 'table class="validity"' not in html
