"""A file of your own evaluated in one try, and the small traps a user steps in (issue 32, items 5 and 6).

Own data: a file without a ``qtype`` column is read whole (an explicit ``--qtype`` on it stays an error), a row dropped
for an empty question or answer is named by its line, and a file too small for the default test split stops before
the model loads with ``--split all`` proposed. The traps: files written into an atomic folder by a library
(safetensors writes ``adapter_model.safetensors`` 0600) follow the umask, the run's lock file is removed when the run
ends (and never while another process holds it, nor once it is another run's), ``--cache`` naming a folder or a file
of the user's is not answered "delete it" and stops the run before the model loads, the umask is read without being
set, and the terminal table shows every system's name in full.

Everything but one real run (the baseline alone, 1 item, 4 new tokens) and one CLI call that stops before the model
is data only, in this process.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from medqa_bench.storage import atomic, run_folder
from medqa_bench.storage.cache import InferenceCache
from medqa_bench.data.dataset import ColumnMap, DataSpec, load_dataset
from medqa_bench.errors import DataError, RunError
from medqa_bench.spec import RunSpec
from medqa_bench.data.training_corpus import plan_data
from test_run import cli

DISEASES = ("asthma", "gout", "flu", "measles", "anemia", "migraine", "psoriasis", "rickets", "scurvy", "tetanus",
            "rabies", "mumps")


def write_csv(path: Path, n: int, *, qtype: str | None = None) -> Path:
    """``n`` rows of distinct questions; with ``qtype``, a ``qtype`` column holding it."""
    head = "Question,Answer" + (",qtype" if qtype else "")
    rows = [f"What are the symptoms of {d}?,Signs of {d} vary from person to person." + (f",{qtype}" if qtype else "")
            for d in DISEASES[:n]]
    path.write_text("\n".join([head, *rows]) + "\n", encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------- own data


def test_a_file_without_a_qtype_column_is_read_whole_unless_a_qtype_is_asked_for(tmp_path):
    csv = write_csv(tmp_path / "mine.csv", 6)
    jsonl = tmp_path / "mine.jsonl"
    jsonl.write_text("".join(json.dumps({"Question": f"What is {d}?", "Answer": f"{d} is a disease."}) + "\n"
                             for d in DISEASES[:4]), encoding="utf-8")
    for path, n in ((csv, 6), (jsonl, 4)):
        ds = load_dataset(DataSpec(path=str(path)))
        assert len(ds.examples) == n and ds.spec.qtype == "all"  # the resolved filter, as results.json records it
    # asked for by name, a question type still needs the column: the message names it and the way out
    for spec in (DataSpec(path=str(csv), qtype="symptoms"), DataSpec(path=str(csv), columns=ColumnMap(qtype="type"))):
        with pytest.raises(DataError, match="filtering by qtype needs column '(qtype|type)'.*pass --qtype all"):
            load_dataset(spec)
    # a file with the column keeps the default filter: symptoms only
    mixed = tmp_path / "mixed.csv"
    mixed.write_text(write_csv(tmp_path / "s.csv", 3, qtype="symptoms").read_text()
                     + "What causes gout?,Uric acid crystals.,causes\n", encoding="utf-8")
    ds = load_dataset(DataSpec(path=str(mixed)))
    assert ds.spec.qtype == "symptoms" and len(ds.examples) == 3


def test_dropped_rows_are_named_by_their_line_in_the_file(tmp_path, caplog):
    csv = tmp_path / "mine.csv"
    # line 1 header; line 2-3 one row whose quoted answer holds a line break; line 4 blank; line 5 an empty answer;
    # line 6 kept; line 7 an empty question; line 8 both empty
    csv.write_text('qid,Question,Answer\n1,What is flu?,"A virus.\nIt spreads."\n\n2,What is gout?,\n3,What is '
                   'rickets?,Soft bones.\n4,,Orphan answer.\n5,"",  \n', encoding="utf-8")
    jsonl = tmp_path / "mine.jsonl"
    jsonl.write_text('{"Question": "What is flu?", "Answer": "A virus."}\n\n{"Question": "What is gout?", "Answer": '
                     '["", " "]}\n{"Question": " ", "Answer": "x"}\n', encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="medqa_bench"):
        assert len(load_dataset(DataSpec(path=str(csv), qtype="all")).examples) == 2
        assert len(load_dataset(DataSpec(path=str(jsonl), qtype="all")).examples) == 1
    said = [r.getMessage() for r in caplog.records]
    assert f"{csv}: dropped 3 rows: line 5 (empty answer), line 7 (empty question), line 8 (empty question and " \
           "answer)" in said
    assert f"{jsonl}: dropped 2 rows: line 3 (empty answer), line 4 (empty question)" in said

    many = tmp_path / "many.csv"
    many.write_text("Question,Answer\nWhat is flu?,A virus.\n" + "".join(f"What is {d}?,\n" for d in DISEASES[:7]),
                    encoding="utf-8")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="medqa_bench"):
        ds = load_dataset(DataSpec(path=str(many), qtype="all"))
    assert ds.report.dropped_empty == 7
    assert [r.getMessage() for r in caplog.records] == [
        f"{many}: dropped 7 rows: line 3 (empty answer), line 4 (empty answer), line 5 (empty answer) and 4 more"]


def test_a_file_too_small_for_the_test_split_stops_before_the_model_proposing_split_all(tmp_path):
    six = write_csv(tmp_path / "six.csv", 6)
    spec = RunSpec(data=DataSpec(path=str(six), qtype="all"), default_adapters=False)
    with pytest.raises(DataError) as err:
        plan_data(spec, {})
    message = str(err.value)
    assert "\n" not in message
    assert message == ("the test split is empty: the qtype filter 'all' kept 6 of 6 rows (6 items: train 5, "
                       "validation 1, test 0); evaluate every item with --split all or use more data")
    # and that is what it takes: every item evaluated, the file's own train split the training corpus
    data = plan_data(spec.replace(split="all"), {})
    assert len(data.pool) == 6 and data.corpus.source == "evaluated" and data.spec.data.qtype == "all"

    # an adapter trained on this very file: --split all would evaluate it on its training items, so it is not proposed
    adapter = tmp_path / "ft"
    adapter.mkdir()
    ds = load_dataset(DataSpec(path=str(six), qtype="all"))
    (adapter / "medqa_bench.json").write_text(json.dumps({"data": {
        "spec": ds.spec.to_dict(), "fingerprint": ds.manifest.data_fingerprint,
        "manifest_fingerprint": ds.manifest.fingerprint}}), encoding="utf-8")
    with pytest.raises(DataError, match=r"test 0\); --split all would evaluate ft on its training items; use more "
                                        r"data$"):
        plan_data(spec, {"ft": str(adapter)})


@pytest.mark.slow
def test_own_file_without_qtype_column_runs_in_one_try_and_leaves_no_lock(tmp_path):
    """The real CLI on a 12-row file without a qtype column, no --qtype, no --split: the run ends, the lock file is
    gone, and the run folder's files follow the umask."""
    data = write_csv(tmp_path / "mine.csv", 12)
    out = tmp_path / "runs" / "mine"
    umask = os.umask(0o027)  # the command runs in this process (cli_runner): the umask is set around it
    try:
        proc = cli("-q", "run", "--data", str(data), "--no-default-adapter", "--limit", "1", "--max-new-tokens", "4",
                   "--metrics", "rougeL", "--reference-rows", "none", "--no-report", "--no-cache", "--device", "cpu",
                   "--out", str(out), cwd=tmp_path)
    finally:
        os.umask(umask)
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert results["spec"]["data"]["qtype"] == "all" and results["data"]["split"] == "test"
    assert sorted(p.name for p in out.parent.iterdir()) == ["mine"]  # no .mine.lock beside it
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {"results.json": 0o640,
                                                                              "samples.jsonl": 0o640}


# ------------------------------------------------------------------------------------------- file modes


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_files_a_library_writes_into_an_atomic_folder_follow_the_umask(tmp_path, umask_027):
    """safetensors (what PEFT's save_pretrained and so the trainer's adapter folder use) writes its file 0600."""
    import torch
    from safetensors.torch import save_file

    old = tmp_path / "adapter"
    old.mkdir()
    (old / "notes.txt").write_text("mine")
    os.chmod(old / "notes.txt", 0o600)  # the user's own file, carried over: its mode is the user's
    with atomic.directory(old, overwrite=True, carry_except=()) as tmp:
        save_file({"w": torch.zeros(2)}, str(tmp / "adapter_model.safetensors"))
        (tmp / "runs").mkdir(mode=0o700)
        (tmp / "runs" / "events").write_bytes(b"x")
        os.chmod(tmp / "runs" / "events", 0o600)
        (tmp / "run.sh").write_text("#!/bin/sh\n")
        os.chmod(tmp / "run.sh", 0o700)
        atomic.write_json(tmp / "medqa_bench.json", {})
    assert mode(old / "adapter_model.safetensors") == 0o640
    assert mode(old / "runs") == 0o750 and mode(old / "runs" / "events") == 0o640
    assert mode(old / "run.sh") == 0o750 and mode(old / "medqa_bench.json") == 0o640
    assert mode(old / "notes.txt") == 0o600


# ------------------------------------------------------------------------------------------- lock files


def test_the_lock_file_goes_when_the_run_ends_however_it_ends(tmp_path):
    folder = tmp_path / "run"
    lock = run_folder.lock_path(folder)
    with run_folder.lock(folder):
        assert lock.exists()
        with run_folder.lock(folder):  # re-entrant: the inner block does not remove the outer one's lock
            pass
        assert lock.exists()
    assert not lock.exists()
    with pytest.raises(ValueError):
        with run_folder.lock(folder):
            raise ValueError("the run failed")
    assert not lock.exists()


def test_a_failing_run_leaves_no_lock_file(tmp_path):
    from medqa_bench.runner import run

    data = write_csv(tmp_path / "mine.csv", 12)
    out = tmp_path / "notes"
    out.mkdir()
    (out / "mine.txt").write_text("not a run")
    spec = RunSpec(data=DataSpec(path=str(data), qtype="all"), default_adapters=False, limit=1, metrics=("rougeL",),
                   reference_rows=(), report=False, cache=None, device="cpu", output_dir=str(out))
    with pytest.raises(RunError, match="is not a run folder"):
        run(spec, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.csv", "notes"]
    assert (out / "mine.txt").read_text() == "not a run"


def test_a_lock_another_process_holds_is_left_to_it(tmp_path):
    folder = tmp_path / "run"
    lock = run_folder.lock_path(folder)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys\nfrom medqa_bench import run_folder\n"
         f"with run_folder.lock({str(folder)!r}):\n    print('held', flush=True)\n    sys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunError, match=rf"another medqa-bench run \(pid {holder.pid}\) is writing"):
            with run_folder.lock(folder):
                pass
        assert lock.read_text().strip() == str(holder.pid)  # still there, still the holder's
    finally:
        holder.communicate("", timeout=30)
    assert holder.returncode == 0 and not lock.exists()
    with run_folder.lock(folder):  # free again
        assert lock.read_text().strip() == str(os.getpid())
    assert not lock.exists()


# ------------------------------------------------------------------------------------------- cache, terminal


def test_a_cache_path_that_is_a_folder_or_a_file_of_yours_is_never_to_be_deleted(tmp_path):
    folder = tmp_path / "my-notes"
    folder.mkdir()
    (folder / "a.txt").write_text("mine")
    with pytest.raises(RunError) as err:
        InferenceCache(folder)
    assert str(err.value) == (f"cache {folder} is a folder; --cache names the SQLite file the cache is kept in "
                              f"(e.g. --cache {folder / 'inference.sqlite'}), or pass --no-cache")
    own = tmp_path / "answers.csv"
    own.write_text("Question,Answer\n" * 200)
    with pytest.raises(RunError) as err:
        InferenceCache(own)
    assert "not a SQLite database" in str(err.value) and "delete" not in str(err.value)
    assert "name a new file with --cache, or pass --no-cache" in str(err.value)
    assert [p.name for p in folder.iterdir()] == ["a.txt"] and own.read_text().startswith("Question")
    # a damaged SQLite file is a cache this tool made: deleting it is the way out
    damaged = tmp_path / "inference.sqlite"
    damaged.write_bytes(b"SQLite format 3\x00" + b"\xff" * 200)
    with pytest.raises(RunError, match="is not a usable SQLite database .*; delete it or pass --no-cache"):
        InferenceCache(damaged)


def test_a_cache_folder_stops_the_cli_before_anything_loads(tmp_path):
    """The real CLI, not quiet (loading the model prints "Loading weights"): the error is all it prints."""
    folder = tmp_path / "caches"
    folder.mkdir()
    proc = cli("run", "--no-default-adapter", "--reference-rows", "none", "--limit", "1", "--max-new-tokens", "2",
               "--metrics", "rougeL", "--no-report", "--device", "cpu", "--cache", "caches", "--out",
               str(tmp_path / "run"), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr == ("medqa-bench: error: cache caches is a folder; --cache names the SQLite file the cache is "
                           "kept in (e.g. --cache caches/inference.sqlite), or pass --no-cache\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["caches"] and not any(folder.iterdir())


def test_a_cache_file_that_is_not_a_cache_stops_the_run_before_the_model_is_looked_for(tmp_path):
    """In-process ``run``: the model named does not exist, so an error about anything else comes before the model."""
    from medqa_bench.storage.cache import check_cache
    from medqa_bench.runner import run

    own = tmp_path / "answers.csv"
    own.write_text("Question,Answer\n")
    damaged = tmp_path / "inference.sqlite"
    damaged.write_bytes(b"SQLite format 3\x00" + b"\xff" * 200)
    cases = {own: f"cache {own} is not a SQLite database (it does not start with the SQLite header): it may be a file "
                  "of yours, so it is left as it is; name a new file with --cache, or pass --no-cache",
             damaged: f"cache {damaged} is not a usable SQLite database (file is not a database); delete it or pass "
                      "--no-cache",
             own / "inference.sqlite": f"cannot create the cache {own / 'inference.sqlite'}: {own} is a file; name "
                                       "another file with --cache, or pass --no-cache"}
    before = {p: p.read_bytes() for p in (own, damaged)}
    for cache, message in cases.items():
        spec = RunSpec(model=str(tmp_path / "nowhere"), default_adapters=False, limit=1, metrics=("rougeL",),
                       reference_rows=(), report=False, cache=str(cache), device="cpu", output_dir=str(tmp_path / "run"))
        with pytest.raises(RunError) as err:
            run(spec, progress=False)
        assert str(err.value) == message
    assert {p: p.read_bytes() for p in before} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["answers.csv", "inference.sqlite"]
    # a cache the tool made, an empty file and a file not there yet pass, and the check writes nothing
    made = tmp_path / "made" / "cache.sqlite"
    InferenceCache(made).close()
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    files = {p: p.read_bytes() for p in (made, empty)}
    for cache in (made, empty, tmp_path / "new" / "cache.sqlite", None):
        check_cache(cache)
    assert {p: p.read_bytes() for p in files} == files and not (tmp_path / "new").exists()
    assert sorted(p.name for p in made.parent.iterdir()) == ["cache.sqlite"]


def test_the_umask_is_read_without_being_set(umask_027, monkeypatch):
    """Setting the umask and setting it back changes it for every thread meanwhile: on Linux it is only read."""
    calls = []
    real = os.umask
    monkeypatch.setattr(os, "umask", lambda mask: calls.append(mask) or real(mask))
    assert atomic.umask() == 0o027 and calls == []


def test_a_lock_file_that_is_no_longer_the_runs_own_stays(tmp_path):
    """A lock deleted by hand and taken by another run meanwhile: the first run's end leaves the other's file."""
    folder = tmp_path / "run"
    lock = run_folder.lock_path(folder)
    with run_folder.lock(folder):
        lock.unlink()
        lock.write_text("4242\n")  # another run's lock, at the same path
    assert lock.read_text() == "4242\n"


def test_the_terminal_table_shows_every_name_in_full():
    from medqa_bench.report.terminal import summary_table

    long = "qlora-r16-alpha32-lr2e-4-symptoms-3-epochs-seed-7-all-linear"
    agg = {"value": 0.25, "ci_low": 0.1, "ci_high": 0.4}
    results = {"systems": {"baseline": {}, long: {}, "ft": {}},
               "metrics": {"rougeL": {}, "a_plugin_metric_with_a_long_name": {}},
               "results": {"baseline": {"rougeL": agg}, long: {"rougeL": {**agg, "n_missing": 2}},
                           "ft": {"rougeL": {**agg, "value": None}}}}
    head, *rows = summary_table(results)
    assert head.split() == ["metric", "baseline", long, "ft"]
    assert rows[0].split("  ")[0].rstrip() == "rougeL" and rows[0].endswith("none scored")
    assert "0.2500 [0.1000, 0.4000] (2 unscored)" in rows[0] and rows[1].split()[1:] == ["-", "-", "-"]
    # every column ends where its name ends
    for name in ("baseline", long):
        end = head.index(name) + len(name)
        assert all(row[end - 1] != " " and (len(row) == end or row[end:end + 2] == "  ") for row in rows)


def test_the_run_summary_a_user_sees_shows_every_name_in_full(tmp_path):
    """``Results.summary()`` (what `run` and `score` print) is built from that table: no name cut to 30 characters."""
    from conftest_report import make_run

    from medqa_bench.api import load_results

    long = "qlora-r16-alpha32-lr2e-4-symptoms-3-epochs-seed-7-all-linear"
    summary = load_results(make_run(tmp_path / "run", n=8, adapters=(long,))).summary()
    head = summary.splitlines()[1]
    assert head.split()[0] == "metric" and long in head.split()
