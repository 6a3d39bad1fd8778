"""benchmarks/engine_identity.py, the item-by-item comparison of two runs made by two generation engines (issue 34):
what it counts as identical, how it reports a metric that moved, and what it refuses. Hand-made run folders; the
measured comparison itself (CPU and GPU runs of the default model) is in benchmarks/RESULTS.md."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from benchmark_scripts import benchmark_script
from conftest_report import make_run


@pytest.fixture(scope="module")
def ei():
    with benchmark_script("engine_identity") as module:
        yield module


@pytest.fixture
def runs(tmp_path):
    old = make_run(tmp_path / "old", n=12, seed=3)
    new = tmp_path / "new"
    shutil.copytree(old, new)
    return old, new


def _rewrite(folder: Path, change) -> None:
    lines = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]
    change(lines)
    (folder / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in lines))


def test_identical_runs_are_identical_everywhere(ei, runs, tmp_path, capsys):
    old, new = runs
    assert ei.main([str(old), str(new), "--json", str(tmp_path / "out.json")]) == 0
    report = json.loads((tmp_path / "out.json").read_text())
    assert report["identity"] and all(r["text"] == r["generated"] > 0 for r in report["identity"])
    assert all(r["generation"] == r["generated"] and r["nll"] == r["nll_items"] for r in report["identity"])
    assert report["metrics"] and all(m["items_differing"] == 0 and m["diff"][0] == 0 for m in report["metrics"])
    assert all(m["moves_less_than_ci"] is not False for m in report["metrics"])
    assert "| qlora-medquad |" in capsys.readouterr().out


def test_one_changed_answer_is_named_and_its_metric_moves(ei, runs, tmp_path, capsys):
    old, new = runs
    changed = {}

    def change(samples):
        s = next(s for s in samples if "prediction" in s["systems"]["qlora-medquad"])
        rec = s["systems"]["qlora-medquad"]
        rec["prediction"] += " (answered differently)"
        rec["stop_reason"] = "length" if rec.get("stop_reason") != "length" else "eos"
        rec["scores"]["rougeL"] = rec["scores"]["rougeL"] - 0.5
        changed["id"] = s["id"]

    _rewrite(new, change)
    assert ei.main([str(old), str(new), "--json", str(tmp_path / "out.json")]) == 0
    report = json.loads((tmp_path / "out.json").read_text())
    row = next(r for r in report["identity"] if r["row"] == "qlora-medquad")
    assert row["text"] == row["generated"] - 1 and row["generation"] == row["generated"] - 1
    assert row["differ"] == [changed["id"]]
    moved = next(m for m in report["metrics"] if m["metric"] == "rougeL" and m["row"] == "qlora-medquad")
    assert moved["items_differing"] == 1 and moved["diff"][0] == pytest.approx(-0.5 / moved["items"])
    assert moved["p_holm"] is not None
    assert all(m["items_differing"] == 0 for m in report["metrics"] if m is not moved)
    assert "cannot be told from zero" in capsys.readouterr().out  # one differing item: no power, said so


def test_runs_of_different_items_are_refused(ei, tmp_path, capsys):
    old = make_run(tmp_path / "old", n=12, seed=3)
    other = make_run(tmp_path / "other", n=12, seed=3, id_prefix="z")
    assert ei.main([str(old), str(other)]) == 2
    assert "different items" in capsys.readouterr().err
    assert ei.main([str(old), str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_runs_of_different_rows_are_refused(ei, tmp_path, capsys):
    old = make_run(tmp_path / "old", n=12, seed=3)
    other = make_run(tmp_path / "other", n=12, seed=3, adapters=("another",))
    assert ei.main([str(old), str(other)]) == 2
    assert "different language-model rows" in capsys.readouterr().err
