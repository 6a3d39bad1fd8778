"""Bad input as a user meets it: the real CLI on real files, exit status 2, one line that says what is wrong and
what to do, and an earlier run folder left byte for byte as it was.

Covers the data reader (duplicated columns, malformed rows, a stray quote, non-text cells), corrupt adapter files,
``--max-length 1``, ``score`` on an incomplete run folder and with some metrics, the plugin guide's promises
(``metrics list`` with a broken plugin, an entry point naming the README's ``METRICS`` list, a ``--plugin`` left out
of ``--metrics``), and the trainer's edges (an empty validation split, ``training.report_to``).
"""

from __future__ import annotations

import csv
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cli_runner import medqa

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_ADAPTER = ROOT / "data" / "adapters" / "smollm2-135m-symptoms-qlora"
METRICS = "loss,rougeL,token_f1"

README_PLUGIN = '''
from medqa_bench.metrics import Metric

def _mentions_doctor(predictions, references, items):
    return [float("doctor" in p.lower()) for p in predictions]

METRICS = [Metric(name="mentions_doctor", higher_is_better=True, score=_mentions_doctor,
                  signature="mentions_doctor|v1", kind="prediction")]
'''


def cli(*args: str, env: dict | None = None, cwd: Path | None = None, fresh: bool = False) -> subprocess.CompletedProcess:
    """``medqa-bench ARGS`` in this process (cli_runner), or with ``fresh`` in a process of its own (an entry point on
    PYTHONPATH is found when a process starts)."""
    if not fresh:
        return medqa(*args, env=env, cwd=cwd or ROOT)
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "medqa_bench.cli", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd or ROOT)


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The one error line of a failed command: exit status 2, no traceback, exactly one ``medqa-bench: error:``."""
    assert proc.returncode == 2, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("medqa-bench: error: ")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def symptoms_csv(rows: int = 30) -> str:
    """A CSV as a spreadsheet writes it: answers with commas are quoted, the rest are not."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["qid", "Question", "Answer", "qtype", "focus"])
    for i in range(rows):
        w.writerow([f"q{i}", f"What are the symptoms of disease {i} ?", f"Disease {i} causes fever, cough and pain.",
                    "symptoms", f"disease {i}"])
    return buf.getvalue()


# --------------------------------------------------------------------------------------------- a real run folder


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A real two-item run of the default model (baseline only, three cheap metrics, no report)."""
    out = tmp_path_factory.mktemp("runs") / "first"
    proc = cli("-q", "run", "--no-default-adapter", "--reference-rows", "none", "--limit", "2", "--max-new-tokens", "4",
               "--batch-size", "1", "--metrics", METRICS, "--no-report", "--no-cache", "--device", "cpu", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture
def earlier_run(run_dir, tmp_path) -> Path:
    """A copy of the real run folder that a failing command must leave as it was."""
    folder = tmp_path / "earlier"
    shutil.copytree(run_dir, folder)
    return folder


def run_into(folder: Path, *args: str) -> subprocess.CompletedProcess:
    return cli("-q", "run", "--limit", "1", "--max-new-tokens", "2", "--metrics", METRICS, "--no-report", "--no-cache",
               "--device", "cpu", "--out", str(folder), *args)


# --------------------------------------------------------------------------------------------- the data reader


def test_duplicated_column_is_refused(tmp_path, earlier_run):
    data = tmp_path / "dup.csv"
    text = symptoms_csv().splitlines()
    text[0] = "qid,Question,Answer,qtype,Answer"  # the last "Answer" (the focus) used to win silently
    data.write_text("\n".join(text) + "\n")
    before = snapshot(earlier_run)
    line = error_line(run_into(earlier_run, "--data", str(data), "--no-default-adapter"))
    assert "column 'Answer' appears twice in the header (columns 3 and 5)" in line
    assert snapshot(earlier_run) == before


@pytest.mark.parametrize("damage, where", [
    # one stray quote in a file whose answers are quoted: it runs into the next quote, which closes nothing
    (lambda t: t.replace("q10,What", 'q10,"What'), "line 12: a quoted field is closed on line 12 with text right after"),
    # one stray quote in a file without other quotes: it swallows every row after it
    (lambda t: t.replace('"', "").replace(", cough", " cough").replace("q10,What", 'q10,"What'),
     "line 12: a quoted field opened here never closes (the file ends inside it)"),
    # two stray quotes that pair up: the rows between them read as one question
    (lambda t: t.replace('"', "").replace(", cough", " cough").replace("q10,What", 'q10,"What')
     .replace("disease 12 ?,", 'disease 12 ?",'),
     "line 12: a quoted field opened here runs on over line 13, which reads as a row of its own"),
])
def test_stray_quote_is_reported_with_its_line(tmp_path, earlier_run, damage, where):
    """30 rows and one damaged one: before, the file read as 29 or 30 rows with a question holding its own answer."""
    data = tmp_path / "stray.csv"
    data.write_text(damage(symptoms_csv(30)))
    before = snapshot(earlier_run)
    line = error_line(run_into(earlier_run, "--data", str(data), "--no-default-adapter"))
    assert f"{data}: {where}" in line and "stray '\"'" in line
    assert snapshot(earlier_run) == before


def test_rows_with_the_wrong_field_count_are_listed(tmp_path, earlier_run):
    text = symptoms_csv().replace("q7,What", "q7,extra,What").replace(",disease 20\n", "\n")
    data = tmp_path / "fields.csv"
    data.write_text(text)
    before = snapshot(earlier_run)
    line = error_line(run_into(earlier_run, "--data", str(data), "--no-default-adapter"))
    assert "2 rows do not have the header's 5 fields: line 9 has 6, line 22 has 4" in line
    assert snapshot(earlier_run) == before


@pytest.mark.parametrize("row, message", [
    ({"Question": ["What are the symptoms of gout ?", "of flu ?"], "Answer": "Pain.", "qtype": "symptoms"},
     "line 2: column 'Question' holds a list (["),
    ({"Question": "Q ?", "Answer": {"text": "Pain."}, "qtype": "symptoms"}, "line 2: column 'Answer' holds an object"),
])
def test_non_text_cells_are_refused(tmp_path, earlier_run, row, message):
    data = tmp_path / "items.jsonl"
    good = {"Question": "What are the symptoms of flu ?", "Answer": "Fever.", "qtype": "symptoms"}
    data.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
    before = snapshot(earlier_run)
    line = error_line(run_into(earlier_run, "--data", str(data), "--no-default-adapter"))
    assert message in line
    assert snapshot(earlier_run) == before


def test_a_key_given_twice_in_a_json_line_is_refused(tmp_path):
    data = tmp_path / "items.jsonl"
    data.write_text('{"Question": "Q ?", "Answer": "first", "Answer": "second", "qtype": "symptoms"}\n')
    line = error_line(cli("data", "stats", "--data", str(data)))
    assert "line 1: key 'Answer' appears twice in one object" in line


# --------------------------------------------------------------------------------------------- model and adapter files


def _adapter_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "adapter"
    shutil.copytree(SHIPPED_ADAPTER, folder)
    return folder


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[: len(b) // 2], "adapter_model.safetensors is cut short: its header describes"),
    (lambda b: b"\x00garbage" * 100, "adapter_model.safetensors is not a safetensors file, or is cut short"),
    (lambda b: b"", "adapter_model.safetensors is 0 bytes: empty or cut short"),
])
def test_corrupt_adapter_safetensors_is_one_line(tmp_path, earlier_run, damage, message):
    adapter = _adapter_copy(tmp_path)
    weights = adapter / "adapter_model.safetensors"
    weights.write_bytes(damage(weights.read_bytes()))
    before = snapshot(earlier_run)
    line = error_line(run_into(earlier_run, "--adapter", f"ft={adapter}"))
    assert f"adapter 'ft' ({adapter}): {message}" in line and "SafetensorError" not in line
    assert snapshot(earlier_run) == before


def test_pickled_adapter_is_refused_with_a_conversion_that_works(tmp_path, earlier_run):
    adapter = _adapter_copy(tmp_path)
    subprocess.run([sys.executable, "-c", "import sys, torch, safetensors.torch as st; d = sys.argv[1]; "
                    "torch.save(st.load_file(d + '/adapter_model.safetensors'), d + '/adapter_model.bin')",
                    str(adapter)], check=True)
    (adapter / "adapter_model.safetensors").unlink()
    before = snapshot(earlier_run)
    line = error_line(run_into(earlier_run, "--adapter", f"ft={adapter}"))
    assert "adapter_model.bin is a pickled PyTorch file, which medqa-bench does not load" in line
    assert snapshot(earlier_run) == before
    # the command the message gives converts the file, and the adapter then reads
    command = line.split("convert it to adapter_model.safetensors: ", 1)[1]
    subprocess.run(shlex.split(command.replace("python", shlex.quote(sys.executable), 1)), check=True)
    from medqa_bench.inference.models import read_adapter

    assert read_adapter("ft", adapter).config["peft_type"] == "LORA"


def test_max_length_one_names_the_window_not_the_reference(tmp_path):
    out = tmp_path / "new-run"
    line = error_line(run_into(out, "--max-length", "1", "--no-default-adapter", "--reference-rows", "none"))
    assert "max_length" in line and "at least 2" in line and "empty reference" not in line
    assert not out.exists()
    # checked with the spec, before any model is looked for: a model that does not exist is not what it names
    line = error_line(run_into(out, "--max-length", "1", "--model", str(tmp_path / "nowhere.gguf")))
    assert "a window of 1 scores nothing" in line


# --------------------------------------------------------------------------------------------- score never shrinks a run


def test_score_refuses_a_cut_samples_file(earlier_run):
    samples = earlier_run / "samples.jsonl"
    samples.write_text(samples.read_text().splitlines()[0] + "\n")  # cut to one of two items
    before = snapshot(earlier_run)
    line = error_line(cli("-q", "score", str(earlier_run), "--no-report"))
    assert f"{samples} holds 1 item but results.json counts 2" in line
    assert snapshot(earlier_run) == before


def test_score_refuses_other_items(earlier_run):
    samples = earlier_run / "samples.jsonl"
    rows = [json.loads(x) for x in samples.read_text().splitlines()]
    rows[1]["id"] = "not-the-item-that-ran"
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    before = snapshot(earlier_run)
    line = error_line(cli("-q", "score", str(earlier_run), "--no-report"))
    assert "its item ids are not the ones results.json was computed on" in line
    assert snapshot(earlier_run) == before


def test_score_of_an_older_folder_checks_the_count_and_records_the_fingerprint(earlier_run):
    results_path = earlier_run / "results.json"
    results = json.loads(results_path.read_text())
    fingerprint = results["data"].pop("item_ids_fingerprint")
    results_path.write_text(json.dumps(results))
    assert cli("-q", "score", str(earlier_run), "--metrics", "token_f1", "--no-report").returncode == 0
    assert json.loads(results_path.read_text())["data"]["item_ids_fingerprint"] == fingerprint


def test_score_with_some_metrics_keeps_the_others(earlier_run):
    old = json.loads((earlier_run / "results.json").read_text())
    proc = cli("-q", "score", str(earlier_run), "--metrics", "fuzzy", "--no-report")
    assert proc.returncode == 0, proc.stderr
    new = json.loads((earlier_run / "results.json").read_text())
    assert list(new["metrics"]) == [*METRICS.split(","), "fuzzy"]
    assert list(new["spec"]["metrics"]) == [*METRICS.split(","), "fuzzy"]
    for metric in METRICS.split(","):
        assert new["results"]["baseline"][metric] == old["results"]["baseline"][metric]
    for line in (earlier_run / "samples.jsonl").read_text().splitlines():
        assert set(json.loads(line)["systems"]["baseline"]["scores"]) == {*METRICS.split(","), "fuzzy"}


def test_score_to_another_folder_leaves_the_run_as_it_was(earlier_run, tmp_path):
    before = snapshot(earlier_run)
    out = tmp_path / "rescored"
    proc = cli("-q", "score", str(earlier_run), "--metrics", "fuzzy", "--similarity-metric", "token_f1",
               "--threshold", "t=0.2", "--out", str(out), "--no-report")
    assert proc.returncode == 0, proc.stderr
    assert snapshot(earlier_run) == before
    results = json.loads((out / "results.json").read_text())
    assert list(results["metrics"]) == [*METRICS.split(","), "fuzzy"]
    analysis = results["analysis"]
    assert analysis["similarity_metric"] == "token_f1"
    assert analysis["thresholds"]["t"] == 0.2 and analysis["thresholds"]["source"] == "argument"
    # a second score into that folder with other settings is another run: refused without --overwrite
    line = error_line(cli("-q", "score", str(earlier_run), "--metrics", "exact_match", "--out", str(out), "--no-report"))
    assert "holds a different run" in line


def test_api_rescore_keeps_the_other_metrics(earlier_run):
    from medqa_bench.api import load_results

    res = load_results(earlier_run)
    assert len(repr(res)) < 300 and "\n" not in repr(res)
    res = res.rescore(metrics=["fuzzy"], report=False, progress=False)
    assert list(res.results["metrics"]) == [*METRICS.split(","), "fuzzy"]
    assert set(res.table().metric) == {*METRICS.split(","), "fuzzy"}


# --------------------------------------------------------------------------------------------- plugins


def test_metrics_list_lists_a_broken_plugin(tmp_path):
    broken = tmp_path / "broken_metrics.py"
    broken.write_text("import a_module_that_is_not_installed\n")
    good = tmp_path / "my_metrics.py"
    good.write_text(README_PLUGIN)
    proc = cli("metrics", "list", "--plugin", str(broken), "--plugin", str(good))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "rougeL" in proc.stdout and "mentions_doctor" in proc.stdout
    [line] = [x for x in proc.stdout.splitlines() if "broken_metrics" in x]
    assert "broken" in line and "No module named 'a_module_that_is_not_installed'" in line


def test_an_entry_point_may_name_the_readmes_metrics_list(tmp_path, earlier_run):
    """The README's plugin module as an installed package whose entry point targets ``METRICS``."""
    site = tmp_path / "site"
    (site / "readme_metrics-0.1.dist-info").mkdir(parents=True)
    (site / "readme_metrics.py").write_text(README_PLUGIN)
    (site / "readme_metrics-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: readme-metrics\n"
                                                                    "Version: 0.1\n")
    (site / "readme_metrics-0.1.dist-info" / "entry_points.txt").write_text(
        "[medqa_bench.metrics]\nmentions_doctor = readme_metrics:METRICS\nnot_there = readme_metrics:NOTHING\n")
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    proc = cli("metrics", "list", env=env, fresh=True)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    [line] = [x for x in proc.stdout.splitlines() if x.startswith("mentions_doctor")]
    assert "prediction" in line and "entry-point:readme-metrics" in line
    [line] = [x for x in proc.stdout.splitlines() if x.startswith("not_there")]
    assert "broken" in line and "NOTHING" in line
    # and it scores when named
    proc = cli("-q", "score", str(earlier_run), "--metrics", "mentions_doctor", "--no-report", env=env, fresh=True)
    assert proc.returncode == 0, proc.stderr
    assert "mentions_doctor" in json.loads((earlier_run / "results.json").read_text())["metrics"]


def test_a_plugin_left_out_of_metrics_is_scored_and_said(tmp_path, earlier_run):
    plugin = tmp_path / "my_metrics.py"
    plugin.write_text(README_PLUGIN)
    proc = cli("-q", "score", str(earlier_run), "--metrics", "fuzzy", "--plugin", str(plugin), "--no-report")
    assert proc.returncode == 0, proc.stderr
    assert f"--metrics leaves out mentions_doctor of --plugin {plugin}" in proc.stderr
    assert {"fuzzy", "mentions_doctor"} <= set(json.loads((earlier_run / "results.json").read_text())["metrics"])


# --------------------------------------------------------------------------------------------- training


TRAIN_SETTINGS = ["--set", "data.limit.train=2", "--set", "data.max_length=64", "--set", "training.batch_size=1",
                  "--set", "training.max_steps=2", "--set", "training.logging_steps=1", "--set", "training.device=cpu",
                  "--set", "training.gradient_checkpointing=false", "--set", "lora.r=4"]


def test_report_to_an_unknown_or_missing_tracker_stops_before_anything_runs(tmp_path):
    import importlib.util

    line = error_line(cli("-q", "train", "smollm2-135m-symptoms", "--set", "training.report_to=[mlflow_or_not]",
                          "--out", str(tmp_path / "a")))
    assert "unknown tracker 'mlflow_or_not'; choose from tensorboard, wandb, mlflow" in line
    if importlib.util.find_spec("mlflow") is None:
        line = error_line(cli("-q", "train", "smollm2-135m-symptoms", "--set", "training.report_to=mlflow",
                              "--out", str(tmp_path / "a")))
        assert "names mlflow, which is not installed: pip install mlflow" in line
    assert sorted(os.listdir(tmp_path)) == []


@pytest.mark.slow
def test_training_without_validation_warns_and_tensorboard_gets_the_metrics(tmp_path):
    pytest.importorskip("tensorboardX", reason="training.report_to=tensorboard needs tensorboardX (or tensorboard)")
    data = tmp_path / "symptoms.csv"
    data.write_text(symptoms_csv(20))
    out = tmp_path / "adapter"
    proc = cli("train", "smollm2-135m-symptoms", "--set", f"data.path={data}", "--set", "data.split.ratios=[0.9,0,0.1]",
               "--set", "training.report_to=tensorboard", *TRAIN_SETTINGS, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "the validation split is empty (split ratios [0.9, 0, 0.1] of 20 items give 18 train / 0 validation / " \
           "2 test)" in proc.stderr
    events = list((out / "runs").rglob("events.out.tfevents.*"))
    assert events, sorted(str(p) for p in out.rglob("*"))
    data_bytes = b"".join(p.read_bytes() for p in events)
    assert b"train/loss" in data_bytes and b"train/learning_rate" in data_bytes
    meta = json.loads((out / "medqa_bench.json").read_text())
    assert meta["data"]["n_validation"] == 0 and meta["training"]["final_eval_loss"] is None
