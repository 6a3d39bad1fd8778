"""Run folders that re-score from anywhere, and a re-score that keeps what it was not asked to change (issue 32).

A real run with a plugin file (``--plugin my_metrics.py``, relative, from a project folder) against a local
OpenAI-compatible stub server (no model weights: the subject is what the run records, not what the model says), made
once; each test re-scores its own copy of the folder: from another directory in a real subprocess (the working
directory is the subject), with ``--plugin`` overriding the recorded file, with the recorded file edited since, as a
folder written before runs recorded plugins by content, and with the same metric installed as an entry point of a real
distribution (a ``dist-info`` folder on ``sys.path``). From the review of issue 32: hand-made run folders handed over
by someone else, whose recorded plugin names code inside the folder (that code writes a marker file if imported: it
never is, unless passed with ``--plugin``); a plugin without a signature of its own, validated by one path and run by
another (one signature, so the run's validity block finds its measurement), and older folders whose signatures wrote
the plugin's path. Then the soft-match metric kept by ``rescore`` and the API table's ``better`` read only after Holm,
on hand-made run folders.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest_report import make_records
from test_openai_backend import MODELS, SERVED, Stub, _no_echo

from medqa_bench.storage import atomic
from medqa_bench.analysis.verdict import ALPHA
from medqa_bench.api import load_results, score
from medqa_bench.cli import main
from medqa_bench.errors import MetricError

ROOT = Path(__file__).resolve().parents[1]

PLUGIN = '''from medqa_bench.metrics import Metric

def _mentions_doctor(predictions, references, items):
    return [float("doctor" in p.lower()) for p in predictions]

METRICS = [Metric(name="mentions_doctor", higher_is_better=True, score=_mentions_doctor,
                  signature="mentions_doctor|v1", kind="prediction")]
'''
SHA = hashlib.sha256(PLUGIN.encode()).hexdigest()
COPY = f"plugins/my_metrics-{SHA[:12]}.py"


def _chat(body):
    return 200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": "Please see a doctor."},
                              "finish_reason": "stop"}], "usage": {"completion_tokens": 5}}


@contextlib.contextmanager
def _cwd(folder: Path):
    before = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def _stub_run(folder: Path, *args: str) -> None:
    """A real two-item run of a served baseline on ``folder``'s tiny.csv, made from ``folder``: the stub server answers
    every question "Please see a doctor."."""
    rows = [f'q{i},What are the symptoms of disease {i} ?,"Disease {i} causes fever, cough and pain.",symptoms,d{i}'
            for i in range(4)]
    (folder / "tiny.csv").write_text("qid,Question,Answer,qtype,focus\n" + "\n".join(rows) + "\n")
    server = Stub({"/v1/models": lambda b: (200, MODELS), "/v1/completions": _no_echo, "/v1/chat/completions": _chat})
    try:
        with _cwd(folder):
            assert main(["-q", "run", "--backend", "openai", "--base-url", server.url, "--served-model", SERVED,
                         "--no-default-adapter", "--reference-rows", "none", "--limit", "2", "--max-new-tokens", "8",
                         "--data", "tiny.csv", "--split", "all", "--no-report", "--no-cache", *args]) == 0
    finally:
        server.close()


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A project folder with my_metrics.py, a 4-row CSV and reports/plugin-run: a real two-item run of a served
    baseline, made from the project folder with ``--plugin my_metrics.py --metrics rougeL``."""
    proj = tmp_path_factory.mktemp("project")
    (proj / "my_metrics.py").write_text(PLUGIN)
    _stub_run(proj, "--metrics", "rougeL", "--plugin", "my_metrics.py", "--out", "reports/plugin-run")
    return proj


@pytest.fixture
def run(project, tmp_path) -> Path:
    """This test's copy of the run folder, where the run put it (reports/<name> under the project)."""
    folder = project / "reports" / f"copy-{tmp_path.name}"
    shutil.copytree(project / "reports" / "plugin-run", folder)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _results(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())


def _rescore(folder: Path, *args: str, cwd: Path) -> dict:
    with _cwd(cwd):
        assert main(["-q", "score", str(folder), "--no-report", *args]) == 0
    return _results(folder)


def test_the_run_records_its_plugin_by_absolute_path_fingerprint_and_copy(project):
    folder = project / "reports" / "plugin-run"
    results = _results(folder)
    plugin = str((project / "my_metrics.py").resolve())
    assert results["spec"]["plugins"] == [plugin]  # was "my_metrics.py", relative to the directory of the run
    info = results["metrics"]["mentions_doctor"]
    assert info["plugin"] == {"spec": plugin, "kind": "file", "path": plugin, "sha256": SHA, "copy": COPY}
    assert (folder / COPY).read_text() == PLUGIN
    assert results["results"]["baseline"]["mentions_doctor"]["value"] == 1.0


def test_score_from_another_directory_reloads_the_recorded_plugin(run):
    proc = subprocess.run([sys.executable, "-m", "medqa_bench.cli", "-q", "score", str(run), "--no-report"],
                          cwd="/", capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    check = _results(run)["metrics"]["mentions_doctor"]["plugin_check"]
    assert check["status"] == "same" and check["sha256"] == SHA and not check["warning"]
    assert f"plugin metric mentions_doctor: reloaded from {run.parents[1] / 'my_metrics.py'}" in proc.stdout


def test_a_plugin_given_to_score_overrides_the_recorded_one(run, tmp_path):
    mine = tmp_path / "elsewhere" / "my_metrics.py"
    mine.parent.mkdir()
    mine.write_text(PLUGIN.replace('"doctor" in p.lower()', '"physician" in p.lower()'))
    results = _rescore(run, "--plugin", "elsewhere/my_metrics.py", cwd=tmp_path)
    info = results["metrics"]["mentions_doctor"]
    assert results["spec"]["plugins"] == [str(mine)]  # the recorded file is no longer the run's
    assert info["plugin"]["spec"] == str(mine) and info["source"] == f"plugin:{mine}"
    assert results["results"]["baseline"]["mentions_doctor"]["value"] == 0.0  # the given source scored
    check = info["plugin_check"]
    assert check["status"] == "overridden" and check["warning"] and check["recorded"]["sha256"] == SHA
    assert "another source" in check["note"]
    # the given source is kept beside the run's, which the check refers to
    assert (run / info["plugin"]["copy"]).read_text() == mine.read_text() and (run / COPY).read_text() == PLUGIN


def test_a_changed_plugin_source_is_reported_not_silently_used(run, project, capsys):
    plugin = project / "my_metrics.py"
    try:
        plugin.write_text(PLUGIN.replace('"doctor"', '"nurse"'))
        results = _rescore(run, "--metrics", "mentions_doctor", cwd=Path("/"))
    finally:
        plugin.write_text(PLUGIN)
    check = results["metrics"]["mentions_doctor"]["plugin_check"]
    assert check["status"] == "changed" and check["warning"] and check["recorded"]["sha256"] == SHA != check["sha256"]
    assert f"changed since the run recorded it (sha256 {SHA[:12]} recorded" in check["note"]
    assert f"the run's source is kept in {COPY}" in check["note"] and (run / COPY).read_text() == PLUGIN
    assert "warning: plugin metric mentions_doctor" in capsys.readouterr().out
    assert load_results(run).plugin_notes()[0].startswith("warning: plugin metric mentions_doctor: ")


def _as_written_before(folder: Path) -> None:
    """The folder as medqa-bench wrote it before runs recorded plugins by content: the path as typed, no fingerprint,
    no copy."""
    results = _results(folder)
    results["spec"]["plugins"] = ["my_metrics.py"]
    results["spec"]["output_dir"] = f"reports/{folder.name}"
    info = results["metrics"]["mentions_doctor"]
    info.pop("plugin")
    info["source"] = "plugin:my_metrics.py"
    shutil.rmtree(folder / "plugins")
    atomic.write_json(folder / "results.json", results)


def test_an_older_run_folder_rescores_from_anywhere(run, tmp_path):
    _as_written_before(run)
    # the relative path is found where the run was made (the folder less its output path)
    results = _rescore(run, cwd=tmp_path)
    check = results["metrics"]["mentions_doctor"]["plugin_check"]
    assert check["status"] == "unverified" and check["warning"]
    assert results["spec"]["plugins"] == [str(run.parents[1] / "my_metrics.py")]
    # and an absolute --plugin, which answered "plugin file my_metrics.py does not exist", overrides it
    _as_written_before(run)
    results = _rescore(run, "--plugin", str(run.parents[1] / "my_metrics.py"), cwd=tmp_path)
    assert results["metrics"]["mentions_doctor"]["plugin_check"]["status"] == "overridden"


def _install(site: Path, module: str, signature: str) -> None:
    """A real installed distribution: the plugin as a package, and a dist-info folder declaring its entry point."""
    (site / module).mkdir(parents=True)
    (site / module / "__init__.py").write_text(PLUGIN.replace("mentions_doctor|v1", signature))
    info = site / f"{module}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[medqa_bench.metrics]\nmentions_doctor = {module}:METRICS\n")


@pytest.fixture
def installed(tmp_path, monkeypatch):
    def install(module: str, signature: str) -> None:
        _install(tmp_path / "site", module, signature)
        monkeypatch.syspath_prepend(str(tmp_path / "site"))
        importlib.invalidate_caches()

    yield install
    for name in ("doctor_terms", "doctor_terms_v2"):
        sys.modules.pop(name, None)


def test_an_entry_point_with_the_recorded_signature_replaces_the_plugin_file(run, installed, tmp_path):
    installed("doctor_terms", "mentions_doctor|v1")
    results = _rescore(run, cwd=tmp_path)  # was: "already registered by entry-point:doctor_terms"
    info = results["metrics"]["mentions_doctor"]
    assert info["source"] == "entry-point:doctor_terms" and info["plugin_check"]["status"] == "entry-point"
    assert results["spec"]["plugins"] == []  # a run of this spec takes the installed metric
    assert results["results"]["baseline"]["mentions_doctor"]["value"] == 1.0


def test_an_entry_point_with_another_signature_leaves_the_run_on_its_plugin_file(run, installed, tmp_path):
    installed("doctor_terms_v2", "mentions_doctor|v2")
    results = _rescore(run, cwd=tmp_path)
    info = results["metrics"]["mentions_doctor"]
    assert info["plugin"]["sha256"] == SHA and info["plugin_check"]["status"] == "same"
    assert "the installed entry-point:doctor_terms_v2 was not used" in info["plugin_check"]["note"]
    # with the recorded file gone, the error says what to pass and where the run's copy is
    _as_written_before(run)
    with _cwd(tmp_path), pytest.raises(MetricError, match=r"mentions_doctor of this run came from the plugin file "
                                       r"my_metrics.py .*another signature \('mentions_doctor\|v2'"):
        score(run.rename(tmp_path / "moved"), report=False, progress=False)


# ------------------------------------------------------------------------- a run folder's code is data (review 32)

EVIL = '''import pathlib
pathlib.Path(MARKER).write_text("imported")  # what code handed over in a run folder could do instead
from medqa_bench.metrics import Metric

METRICS = [Metric(name="evil_metric", higher_is_better=True, score=lambda p, r, i: [1.0] * len(p),
                  signature="evil|v1", kind="prediction")]
'''


def _handed_over(folder: Path, plugin: str, marker: Path, output_dir: str | None = None) -> Path:
    """A hand-made run folder as someone else could hand it over: rougeL, and evil_metric from the recorded plugin
    ``plugin`` (the older format: a source, no fingerprint), which names code kept inside the folder: plugins/evil.py,
    plugins/evil_metric/evil_metric.py (an evaluate module) and evil_pkg.py, each writing ``marker`` when imported."""
    results, samples = make_records(n=6, analysed=False, metrics=("rougeL",))
    results["spec"]["data"] = {"qtype": "symptoms,treatment"}
    results["spec"].update(metrics=["rougeL", "evil_metric"], plugins=[plugin], output_dir=output_dir)
    results["metrics"]["evil_metric"] = {"name": "evil_metric", "higher_is_better": True, "kind": "prediction",
                                         "signature": "evil|v1",
                                         "source": plugin if plugin.startswith("evaluate:") else f"plugin:{plugin}"}
    for name in ("plugins/evil.py", "plugins/evil_metric/evil_metric.py", "evil_pkg.py"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(EVIL.replace("MARKER", repr(str(marker))))
    atomic.write_json(folder / "results.json", results)
    atomic.write_jsonl(folder / "samples.jsonl", samples)
    return folder


@pytest.mark.parametrize("case", ["absolute", "link-from-outside", "evaluate", "module", "relative-to-cwd"])
def test_score_never_imports_code_from_inside_the_run_folder(case, tmp_path, monkeypatch):
    run, marker = tmp_path / "download" / "evil", tmp_path / "imported"
    plugin = {"absolute": str(run / "plugins" / "evil.py"), "link-from-outside": str(tmp_path / "looks-outside.py"),
              "evaluate": f"evaluate:{run / 'plugins' / 'evil_metric'}", "module": "evil_pkg",
              "relative-to-cwd": "evil/plugins/evil.py"}[case]
    _handed_over(run, plugin, marker)
    if case == "link-from-outside":
        (tmp_path / "looks-outside.py").symlink_to(run / "plugins" / "evil.py")
    if case == "module":  # the folder on sys.path, as `python -m` or a notebook started in it has it
        monkeypatch.syspath_prepend(str(run))
    monkeypatch.chdir(run.parent if case == "relative-to-cwd" else tmp_path)  # (score refuses to run inside it)
    with pytest.raises(MetricError, match=r"evil_metric of this run came from the plugin .* lies inside the run "
                                          r"folder .*: score never runs code from a run folder on its own") as err:
        score(run, report=False, progress=False)
    assert not marker.exists() and "evil_pkg" not in sys.modules
    assert "\n" not in str(err.value) and "pass --plugin " in str(err.value)


def test_a_folder_that_points_into_itself_is_refused_by_the_cli_unless_its_file_is_passed(tmp_path, capsys):
    # the review's folder: its own output_dir makes "the directory the run was made in" its parent
    run, marker = tmp_path / "dl" / "evil", tmp_path / "imported"
    _handed_over(run, "evil/plugins/evil.py", marker, output_dir="evil")
    (tmp_path / "elsewhere").mkdir()
    with _cwd(tmp_path / "elsewhere"):
        assert main(["score", str(run), "--no-report"]) == 2
        err = capsys.readouterr().err.strip()
        assert not marker.exists()
        assert len(err.splitlines()) == 1 and f"pass --plugin {run / 'plugins' / 'evil.py'} if you trust it" in err
        # named with --plugin, it is the user's choice: imported and scored
        assert main(["-q", "score", str(run), "--no-report", "--plugin", str(run / "plugins" / "evil.py")]) == 0
    assert marker.read_text() == "imported"
    results = _results(run)
    assert results["metrics"]["evil_metric"]["plugin_check"]["status"] == "overridden"
    assert results["results"]["baseline"]["evil_metric"]["value"] == 1.0
    # the spec now records that file, inside the folder: a plain re-score asks for it again
    marker.unlink()
    with pytest.raises(MetricError, match="lies inside the run folder"):
        score(run, report=False, progress=False)
    assert not marker.exists()


# ------------------------------------------------------------------- a default signature holds no path (review 32)

NOSIG = '''from medqa_bench.metrics import Metric

def _mentions_fever(predictions, references, items):
    return [float("fever" in p.lower()) for p in predictions]

METRICS = [Metric(name="nosig_metric", higher_is_better=True, score=_mentions_fever, bounds=(0, 1))]
'''
NOSIG_SIGNATURE = f"nosig_metric|plugin:nosig.py|sha256={hashlib.sha256(NOSIG.encode()).hexdigest()[:12]}"


def test_validate_and_run_give_a_plugin_without_signature_one_signature(tmp_path):
    (tmp_path / "nosig.py").write_text(NOSIG)
    (tmp_path / "other").mkdir()
    with _cwd(tmp_path):  # validated by its relative path, as a user types it
        assert main(["-q", "metrics", "validate", "--plugin", "nosig.py", "--metrics", "nosig_metric", "--bootstrap",
                     "20", "--out", "validity"]) == 0
    measured = json.loads((tmp_path / "validity" / "validity.json").read_text())["metrics"]["nosig_metric"]
    assert measured["signature"] == NOSIG_SIGNATURE  # was the typed path; a run's, the absolute path
    # a run given the file by another path, from another directory, is matched to that measurement
    _stub_run(tmp_path / "other", "--plugin", "../nosig.py", "--metrics", "nosig_metric",
              "--validity", str(tmp_path / "validity" / "validity.json"), "--out", "run")
    results = _results(tmp_path / "other" / "run")
    assert results["metrics"]["nosig_metric"]["signature"] == NOSIG_SIGNATURE
    assert results["validity"]["metrics"]["nosig_metric"]["measured"] is True


@pytest.mark.parametrize("recorded", ["typed", "absolute"])
def test_rescoring_an_older_folder_does_not_call_the_path_form_a_changed_signature(recorded, tmp_path, monkeypatch):
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "nosig.py").write_text(NOSIG)
    monkeypatch.chdir(tmp_path)
    # its default signature held the path as typed before issue 32, the absolute path since
    path = "metrics/nosig.py" if recorded == "typed" else str(tmp_path / "metrics" / "nosig.py")
    results, samples = make_records(n=6, analysed=False, metrics=("rougeL",))
    results["spec"]["data"] = {"qtype": "symptoms,treatment"}
    results["spec"].update(metrics=["rougeL", "nosig_metric"], plugins=[path])
    sha = hashlib.sha256(NOSIG.encode()).hexdigest()
    results["metrics"]["nosig_metric"] = {
        "name": "nosig_metric", "higher_is_better": True, "kind": "reference", "bounds": [0, 1],
        "signature": f"nosig_metric|plugin:{path}|sha256={sha[:12]}", "source": f"plugin:{path}",
        "plugin": {"spec": path, "kind": "file", "path": str(tmp_path / "metrics" / "nosig.py"), "sha256": sha,
                   "copy": None}}
    atomic.write_json(tmp_path / "run" / "results.json", results)
    atomic.write_jsonl(tmp_path / "run" / "samples.jsonl", samples)
    info = score(tmp_path / "run", metrics=["nosig_metric"], report=False, progress=False).results["metrics"]
    check = info["nosig_metric"]["plugin_check"]
    assert check["status"] == "same" and not check["warning"] and "signature changed" not in check["note"]
    assert info["nosig_metric"]["signature"] == NOSIG_SIGNATURE


# ------------------------------------------------------------------------------------------ item 4


def _hand_made(folder: Path, metrics: tuple[str, ...] = ("rougeL", "perplexity")) -> Path:
    """A hand-made run folder (tests/conftest_report.py) scoring ``metrics`` only, analysed as ``score`` does."""
    results, samples = make_records(n=20, analysed=False)
    results["spec"]["data"] = {"qtype": "symptoms,treatment"}  # the fixture's data block is not a spec's
    for table in (results["metrics"], *results["results"].values(),
                  *(r.get(k) or {} for s in samples for r in s["systems"].values()
                    for k in ("scores", "best_reference", "distractor_scores", "nearest_qtype")),
                  *(s.get("null_scores") or {} for s in samples)):
        for m in [m for m in table if m not in metrics]:
            del table[m]
    results["spec"]["metrics"] = list(metrics)
    atomic.write_json(folder / "results.json", results)
    atomic.write_jsonl(folder / "samples.jsonl", samples)
    return score(folder, metrics=["rougeL"], report=False, progress=False).run_dir


def test_rescore_keeps_the_runs_soft_match_metric(tmp_path):
    res = load_results(_hand_made(tmp_path / "run"))
    assert res.results["analysis"]["similarity_metric"] == "rougeL"
    res = res.rescore(metrics=["fuzzy"], report=False, progress=False)  # fuzzy ranks before rougeL when chosen anew
    assert list(res.results["metrics"]) == ["rougeL", "perplexity", "fuzzy"]
    assert res.results["analysis"]["similarity_metric"] == "rougeL"
    res = res.rescore(metrics=["fuzzy"], similarity_metric="fuzzy", report=False, progress=False)
    assert res.results["analysis"]["similarity_metric"] == "fuzzy"  # changed when asked


def test_better_is_true_only_when_significant_after_holm(tmp_path):
    results, samples = make_records(n=20)
    paired = results["analysis"]["paired"]["qlora-medquad"]["metrics"]
    paired["rougeL"].update(better=True, p_holm=0.75)  # the row: the better direction, not significant
    atomic.write_json(tmp_path / "results.json", results)
    atomic.write_jsonl(tmp_path / "samples.jsonl", samples)
    table = load_results(tmp_path).table(deltas=True)
    judged = table[table.system == "qlora-medquad"].set_index("metric")
    assert judged.loc["rougeL", "better"] is False and judged.loc["rougeL", "p_holm"] == 0.75
    for metric, row in paired.items():
        expected = row["better"] is True and row["p_holm"] is not None and row["p_holm"] < ALPHA
        assert bool(judged.loc[metric, "better"]) == expected, metric
    assert table[table.system == "baseline"].better.isna().all()  # no comparison: empty
