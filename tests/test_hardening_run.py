"""The run folder and the spec as a hostile user meets them: the real CLI on real files, its exit status and message,
and the run folder's bytes before and after.

One real run (1 item, 4 new tokens, the baseline alone) makes the folder the other tests copy and attack; the checks
that need no model fail before any data or model is read.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cli_runner import medqa

UMASK = 0o002  # not the usual 022: a mode the old 0600/0700 outputs cannot pass by chance
REPO = Path(__file__).resolve().parents[1]

# A metric plugin that, when FAIL_REPORT is set, makes writing report.html fail as a full disk would (the report is the
# last of the three files: the old runner had written results.json and samples.jsonl into the live folder by then).
PLUGIN = '''
import errno
import os

from medqa_bench.metrics import Metric

if os.environ.get("FAIL_REPORT"):
    import medqa_bench.report.page as page

    def render_html(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    page.render_html = render_html


def _length(predictions, references, items):
    return [float(len(p)) for p in predictions]


METRICS = [Metric(name="answer_chars", higher_is_better=True, score=_length, signature="answer_chars|v1",
                  kind="prediction")]
'''


def medqa_bench() -> list[str]:
    script = Path(sys.executable).parent / "medqa-bench"
    return [str(script)] if script.exists() else [sys.executable, "-m", "medqa_bench.cli"]


def cli(*args: str, cwd: Path, env_extra: dict | None = None, umask: int | None = None) -> subprocess.CompletedProcess:
    """The ``medqa-bench`` script in a process of its own where a umask or FAIL_REPORT (a plugin that breaks report
    writing for the whole process) is asked for; else the command in this process (cli_runner)."""
    if env_extra is None and umask is None:
        return medqa(*args, cwd=cwd)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(env_extra or {})}
    return subprocess.run([*medqa_bench(), *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=1800,
                          preexec_fn=(lambda: os.umask(umask)) if umask is not None else None)


def run_args(tmp: Path, out: Path | None, *extra: str, metrics: str = "loss,answer_chars") -> list[str]:
    return ["-q", "run", "--limit", "1", "--max-new-tokens", "4", "--no-default-adapter", "--reference-rows", "none",
            "--device", "cpu", "--metrics", metrics, "--plugin", str(tmp / "plugin.py"),
            "--cache", str(tmp / "cache.sqlite"), *(["--out", str(out)] if out else []), *extra]


def one_line_error(proc: subprocess.CompletedProcess, message: str) -> None:
    assert proc.returncode == 2, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("medqa-bench: error:"), proc.stderr
    assert message in lines[0], lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.endswith((".tmp", ".old", ".probe"))]


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    """One real run into reports/first with a plugin metric and the report, under umask 002."""
    tmp = tmp_path_factory.mktemp("hardening")
    (tmp / "plugin.py").write_text(PLUGIN)
    out = tmp / "reports" / "first"
    proc = cli(*run_args(tmp, out), cwd=tmp, umask=UMASK)
    assert proc.returncode == 0, proc.stderr
    return tmp, out, proc


@pytest.fixture
def copy(first, tmp_path):
    """A copy of the first run in the same reports folder (same spec, cache and plugin)."""
    tmp, out, _ = first
    folder = tmp / "reports" / f"copy-{tmp_path.name}"
    shutil.copytree(out, folder)
    return tmp, folder


# ------------------------------------------------------------------------------------------ the first run itself


def test_outputs_follow_the_umask(first):
    _, out, _ = first
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~UMASK
    for name in ("results.json", "samples.jsonl", "report.html"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o666 & ~UMASK, name


def test_a_plain_run_prints_no_kernel_warning(first):
    _, _, proc = first
    assert "gemm_4bit_forward" not in proc.stderr and "Failed to load CPU" not in proc.stderr


def test_the_python_api_prints_no_kernel_warning_either():
    # bitsandbytes logs it at import on CPUs with AVX512-BF16; the API loads it for every 4-bit base
    code = "import logging; logging.basicConfig(); import medqa_bench.api, bitsandbytes; print('imported')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "imported", proc.stderr
    assert "gemm_4bit_forward" not in proc.stderr and "Failed to load CPU" not in proc.stderr


# ------------------------------------------------------------------------------- replaced whole or not at all


def test_a_failing_rerun_leaves_the_earlier_run_byte_identical_and_a_good_one_replaces_it(copy):
    tmp, folder = copy
    (folder / "notes.txt").write_text("mine\n")  # the user's own file in the run folder
    before = snapshot(folder)
    proc = cli(*run_args(tmp, folder), cwd=tmp, env_extra={"FAIL_REPORT": "1"})
    assert snapshot(folder) == before  # no new results.json beside the old report
    assert not leftovers(folder.parent)
    one_line_error(proc, "No space left on device")
    # the same spec again, nothing failing: replaced without --overwrite, the user's file carried over
    proc = cli(*run_args(tmp, folder), cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    after = snapshot(folder)
    assert after["notes.txt"] == b"mine\n" and set(after) == set(before)
    assert after["results.json"] != before["results.json"]  # a new run (its timings and creation time)
    assert not leftovers(folder.parent)


def test_a_different_run_needs_overwrite(copy):
    tmp, folder = copy
    before = snapshot(folder)
    proc = cli(*run_args(tmp, folder, "--no-report", "--seed", "7"), cwd=tmp)
    one_line_error(proc, f"{folder} holds a different run (its spec differs in: seed); pass --overwrite")
    assert snapshot(folder) == before
    proc = cli(*run_args(tmp, folder, "--no-report", "--seed", "7", "--overwrite"), cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((folder / "results.json").read_text())["spec"]["seed"] == 7
    assert not (folder / "report.html").exists()  # the earlier run's report is not left beside the new results


def test_a_second_run_into_a_locked_folder_stops_at_once(copy):
    tmp, folder = copy
    before = snapshot(folder)
    fd = os.open(folder.parent / f".{folder.name}.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a run in progress holds it
        os.write(fd, f"{os.getpid()}\n".encode())
        proc = cli(*run_args(tmp, folder), cwd=tmp)
    finally:
        os.close(fd)
    one_line_error(proc, f"another medqa-bench run (pid {os.getpid()}) is writing {folder}")
    assert snapshot(folder) == before


def test_a_folder_that_is_no_run_is_never_replaced(first, tmp_path):
    tmp, _, _ = first
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me\n")
    proc = cli(*run_args(tmp, folder, "--overwrite"), cwd=tmp)
    one_line_error(proc, "is not a run folder (it holds 'notes.txt' and no results.json)")
    assert snapshot(folder) == {"notes.txt": b"keep me\n"}


@pytest.mark.parametrize("name", ["../../escaped", "/tmp/medqa-bench-escaped", "a/b", ".."])
def test_name_never_writes_outside_reports(tmp_path, name):
    (tmp_path / "plugin.py").write_text(PLUGIN)
    cwd = tmp_path / "x" / "y"
    cwd.mkdir(parents=True)
    proc = cli(*run_args(tmp_path, None, "--name", name), cwd=cwd)  # no --out: reports/<name>
    one_line_error(proc, "must be a plain folder name")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["plugin.py", "x", "y"]
    assert not Path("/tmp/medqa-bench-escaped").exists()


# --------------------------------------------------------------------------------- checks before the model loads


@pytest.mark.parametrize("extra, message", [
    (["--device", "tpu"], "device must be auto, cpu, cuda, cuda:N or mps, not 'tpu'"),
    (["--max-new-tokens", "-5"], "max_new_tokens must be a positive number of tokens, not -5"),
    (["--max-length", "-3"], "max_length must be a positive number of tokens, not -3"),
    (["--max-length", "0"], "max_length must be a positive number of tokens, not 0"),
    (["--threshold", "t=1.5"], "analysis.thresholds.t must be a number in [0, 1], not 1.5"),
    (["--threshold", "t_low=0.9", "--threshold", "t_high=0.2"], "t_low (0.9) must not exceed t_high (0.2)"),
])
def test_bad_option_one_line_before_any_work(tmp_path, extra, message):
    (tmp_path / "plugin.py").write_text(PLUGIN)
    proc = cli(*run_args(tmp_path, tmp_path / "out", *extra), cwd=tmp_path)
    one_line_error(proc, message)
    assert not (tmp_path / "out").exists()


def test_output_folder_that_is_a_file(tmp_path):
    (tmp_path / "plugin.py").write_text(PLUGIN)
    (tmp_path / "taken").write_text("a file\n")
    one_line_error(cli(*run_args(tmp_path, tmp_path / "taken"), cwd=tmp_path), f"the run folder {tmp_path / 'taken'} is a file")
    one_line_error(cli(*run_args(tmp_path, tmp_path / "taken" / "run"), cwd=tmp_path), f"{tmp_path / 'taken'} is a file")
    assert (tmp_path / "taken").read_text() == "a file\n"


def test_empty_split_says_which_and_how_many_rows_the_filter_kept(tmp_path):
    (tmp_path / "plugin.py").write_text(PLUGIN)
    (tmp_path / "tiny.csv").write_text("qid,Question,Answer,qtype,focus\n"
                                       "1,What are the symptoms of A?,Fever.,symptoms,A\n"
                                       "2,What are the symptoms of B?,Cough.,symptoms,B\n"
                                       "3,What causes C?,Genes.,causes,C\n")
    proc = cli(*run_args(tmp_path, tmp_path / "out", "--data", str(tmp_path / "tiny.csv")), cwd=tmp_path)
    one_line_error(proc, "the test split is empty: the qtype filter 'symptoms' kept 2 of 3 rows")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------- spec types


@pytest.mark.parametrize("line, message", [
    ("limit: abc", "run spec key 'limit' must be an integer, not 'abc'"),
    ("data: x", "run spec key 'data' must be a section (a mapping), not 'x'"),
    ("metrics: 5", "run spec key 'metrics' must be a list, not 5"),
    ("adapters: [1, 2]", "run spec key 'adapters' maps names to adapter folders"),
    ("decoding: {max_new_tokens: lots}", "run spec key 'decoding.max_new_tokens' must be an integer, not 'lots'"),
    ("data: {split: {ratios: [0.5, 0.5]}}", "run spec key 'data.split.ratios' must be a list of 3 items"),
    ("data: {qtyp: symptoms}", "unknown run spec key 'data.qtyp'; did you mean 'data.qtype'?"),
    ("name: ../../x", "run name '../../x' must be a plain folder name"),
])
def test_spec_file_values_are_checked_by_type(tmp_path, line, message):
    (tmp_path / "spec.yaml").write_text(line + "\n")
    (tmp_path / "plugin.py").write_text(PLUGIN)
    args = run_args(tmp_path, tmp_path / "out")  # flags that keep a run short had the bad value been taken
    proc = cli(args[0], args[1], str(tmp_path / "spec.yaml"), *args[2:], cwd=tmp_path)
    one_line_error(proc, f"{tmp_path / 'spec.yaml'}: {message}")
    assert not (tmp_path / "out").exists()


def test_python_api_spec_is_checked_when_made():
    from medqa_bench.errors import SpecError
    from medqa_bench.spec import RunSpec

    spec = RunSpec(decoding={"max_new_tokens": 8}, adapters={"ft": "a"}, metrics="loss, rougeL")
    assert spec.decoding.max_new_tokens == 8 and spec.adapters == (("ft", "a"),) and spec.metrics == ("loss", "rougeL")
    assert RunSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(SpecError, match=r"run spec key 'decoding.max_new_tokens' must be an integer, not 'lots'"):
        RunSpec(decoding={"max_new_tokens": "lots"})


def test_recipe_uses_the_same_coercion(tmp_path):
    proc = cli("-q", "train", "smollm2-135m-symptoms", "--set", "lora.r=abc", "--out", str(tmp_path / "a"), cwd=tmp_path)
    one_line_error(proc, "recipe key 'lora.r' must be an integer, not 'abc'")
    proc = cli("-q", "train", "smollm2-135m-symptoms", "--set", "training.max_steps=lots", cwd=tmp_path)
    one_line_error(proc, "recipe key 'training.max_steps' must be an integer, not 'lots'")


# ------------------------------------------------------------------------------------------- a fresh machine


def _fake_bin(tmp_path: Path, uid: int, apt: bool) -> Path:
    """A PATH without any Chromium: ``id`` says ``uid``; ``apt-get`` (when there) installs nothing."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "id").write_text(f"#!/bin/sh\necho {uid}\n")
    if apt:
        (fake / "apt-get").write_text("#!/bin/sh\nexit 0\n")
    for p in fake.iterdir():
        p.chmod(0o755)
    return fake


@pytest.mark.parametrize("uid, apt, message", [
    (1000, True, "headless Chromium is missing (the browser test needs it): install it with `sudo apt-get install -y chromium`"),
    (1000, False, "headless Chromium is missing (the browser test needs it): install Chromium with your package manager"),
    (0, True, "apt-get install chromium failed"),  # root on Debian: tried, and says so when it did not work
])
def test_make_test_without_chromium_stops_at_once_with_one_line(tmp_path, uid, apt, message):
    env = {"PATH": str(_fake_bin(tmp_path, uid, apt)), "HOME": str(tmp_path)}
    proc = subprocess.run(["/bin/sh", str(REPO / "scripts" / "ensure-chromium.sh")], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert message in lines[-1]
    assert len(lines) == (2 if uid == 0 else 1)  # root: "installing …", then why it did not work


def test_make_test_checks_chromium_before_installing_anything():
    if not shutil.which("make"):
        pytest.skip("make is not installed")
    # CI runs the suite under `make test`: the outer make's MAKEFLAGS/MAKELEVEL would make this one print
    # "make[1]: Entering directory" lines, so it runs as a make started by hand would.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MAKEOVERRIDES")}
    proc = subprocess.run(["make", "--no-print-directory", "-n", "-B", "test"], cwd=REPO, capture_output=True,
                          text=True, timeout=60, env=env)
    lines = [x for x in proc.stdout.splitlines() if not x.startswith("make")]
    assert lines[0] == "sh scripts/ensure-chromium.sh"
    assert any("pytest" in x for x in lines)
