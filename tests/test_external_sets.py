"""External test sets (issue 30, item 4): a foreign file evaluated whole, its reference rows, leakage audit and
contamination section drawn from a training corpus of another file (--train-data, or the adapters' recorded training
data, found by their fingerprints)."""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import pytest

from test_run import cli

# Six consumer-health questions in a file of its own shape: no qtype or focus column, its own column names. c3 nearly
# repeats a training item that has the same id in the training file (two files: a shared id says nothing, and the
# audit must still find it).
FOREIGN = [
    ("c1", "What are the signs of a migraine?",
     "A throbbing headache, often on one side, with nausea and sensitivity to light and sound."),
    ("c2", "How do I know if I have the flu?",
     "Fever, chills, muscle aches, cough, sore throat and tiredness that come on suddenly."),
    ("c3", "What are the symptoms of gout?",
     "Gout causes sudden, severe attacks of pain, swelling, redness and tenderness in one or more joints, most often "
     "the joint at the base of the big toe."),
    ("c4", "What does asthma feel like?", "Wheezing, shortness of breath, chest tightness and coughing, worse at night."),
    ("c5", "What are the warning signs of a stroke?",
     "Sudden numbness or weakness of the face, arm or leg, confusion, trouble speaking or seeing."),
    ("c6", "What are the symptoms of anemia?", "Tiredness, weakness, pale skin, shortness of breath and cold hands."),
]
GOUT_COPY = ("c3", "What are the symptoms of gout ?",
             "Gout causes sudden, severe attacks of pain, swelling, redness and tenderness in one or more joints, most "
             "often the joint at the base of the big toe.")
FOREIGN_FLAGS = ["--data", "{foreign}", "--qtype", "all", "--question-column", "ask", "--answer-column", "reply",
                 "--id-column", "ref"]
TRAIN_FLAGS = ["--train-qtype", "all", "--train-question-column", "q", "--train-answer-column", "a",
               "--train-id-column", "tid"]
FAST = ["--max-new-tokens", "4", "--metrics", "rougeL,token_f1", "--batch-size", "4", "--device", "cpu"]


def _write(path: Path, header: tuple[str, ...], rows) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory, symptoms):
    """The foreign file, and a training file (its own column names) of 40 MedQuAD training items plus a copy of
    the foreign gout item."""
    root = tmp_path_factory.mktemp("external")
    foreign = _write(root / "foreign.csv", ("ref", "ask", "reply"), FOREIGN)
    train_rows = [(f"t{i}", e.question, e.answer) for i, e in enumerate(symptoms.split("train")[:40])]
    train = _write(root / "train.csv", ("tid", "q", "a"), [*train_rows, GOUT_COPY])
    return {"root": root, "foreign": foreign, "train": train, "train_ids": {r[0] for r in train_rows} | {"c3"},
            "train_answers": {r[2] for r in train_rows} | {GOUT_COPY[2]}}


def _flags(files) -> list[str]:
    return [f.format(foreign=files["foreign"]) for f in FOREIGN_FLAGS]


def _read(out: Path):
    results = json.loads((out / "results.json").read_text())
    samples = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    return results, samples


def test_train_data_gives_reference_rows_audit_and_contamination(files, lora_adapter):
    out = files["root"] / "given"
    proc = cli("run", "--adapter", f"ft={lora_adapter}", *_flags(files), "--train-data", str(files["train"]),
               *TRAIN_FLAGS, "--limit", "0", *FAST, "--out", str(out), "--cache", str(files["root"] / "c.sqlite"),
               check=True)
    assert "training corpus: 41 items of" in proc.stderr
    results, samples = _read(out)
    # the evaluated file is used whole
    assert results["data"]["split"] == "all" and results["data"]["n_items"] == 6 == len(samples)
    assert [s["id"] for s in samples] == [r[0] for r in FOREIGN]
    training = results["data"]["training"]
    assert (training["source"], training["split"], training["n_items"]) == ("given", "all", 41)
    assert results["spec"]["train_data"]["path"] == str(files["train"]) and results["spec"]["train_split"] == "all"
    for s in samples:
        # reference rows answer from the training corpus, never from the evaluated file
        for row in ("retrieval", "boilerplate"):
            rec = s["systems"][row]
            assert rec["source"]["train_id"] in files["train_ids"] and rec["prediction"] in files["train_answers"]
        # the audit compares with the training corpus
        overlap = s["train_overlap"]
        assert overlap["reference"]["train_id"] in files["train_ids"]
        assert overlap["question"]["train_id"] in files["train_ids"]
    gout = samples[2]["train_overlap"]
    # same id in the two files, and still found: ids of another file are not excluded
    assert gout["near_duplicate"] and gout["question"]["train_id"] == "c3" and gout["reference"]["score"] > 0.95
    assert gout["nearest"]["question"]["question"] == GOUT_COPY[1]
    assert samples[2]["systems"]["retrieval"]["source"]["train_id"] == "c3"
    assert not any(s["train_overlap"]["near_duplicate"] for i, s in enumerate(samples) if i != 2)
    # the report's contamination section: the item, its nearest training item, the similarity
    html = (out / "report.html").read_text()
    section = html[html.index('<section id="contamination">'):]
    section = section[:section.index("</section>")]
    assert "<b>1 of 6</b>" in section and "What are the symptoms of gout ?" in section and "c3" in section
    assert "1.000" in section


@pytest.fixture(scope="module")
def trained_on_file(files, lora_adapter):
    """The test adapter with training metadata saying it was trained on the training file's train split."""
    from medqa_bench.data.dataset import ColumnMap, DataSpec, load_dataset

    folder = files["root"] / "adapter"
    shutil.copytree(lora_adapter, folder)
    spec = DataSpec(path=str(files["train"]), qtype="all", columns=ColumnMap(question="q", answer="a", id="tid"))
    ds = load_dataset(spec)
    (folder / "medqa_bench.json").write_text(json.dumps({"version": 2, "data": {
        "fingerprint": ds.manifest.data_fingerprint, "manifest_fingerprint": ds.manifest.fingerprint,
        "n_train": len(ds.split("train")), "spec": spec.to_dict()}}))
    return folder, ds


def test_adapters_training_data_is_the_default(files, trained_on_file):
    folder, ds = trained_on_file
    out = files["root"] / "from-adapters"
    proc = cli("run", "--adapter", f"ft={folder}", *_flags(files), "--limit", "0", *FAST, "--no-report",
               "--reference-rows", "retrieval", "--out", str(out), "--cache", str(files["root"] / "c.sqlite"),
               check=True)
    lines = [x for x in proc.stderr.splitlines() if x.startswith("training corpus:")]
    assert len(lines) == 1 and "the train split the adapters were trained on" in lines[0]
    results, samples = _read(out)
    train_ids = {e.id for e in ds.split("train")}
    training = results["data"]["training"]
    assert (training["source"], training["split"], training["adapters"]) == ("adapters", "train", ["ft"])
    assert training["n_items"] == len(train_ids) and training["fingerprint"] == ds.manifest.data_fingerprint
    assert results["spec"]["train_data"]["path"] == str(files["train"]) and results["spec"]["train_split"] == "train"
    assert results["data"]["split"] == "all" and len(samples) == 6
    for s in samples:
        assert s["systems"]["retrieval"]["source"]["train_id"] in train_ids
        assert s["train_overlap"]["question"]["train_id"] in train_ids


# ------------------------------------------------------------------------------------------ planning, no model


def _spec(files, **kw):
    from medqa_bench.data.dataset import ColumnMap, DataSpec
    from medqa_bench.spec import RunSpec

    data = DataSpec(path=str(files["foreign"]), qtype="all", columns=ColumnMap(question="ask", answer="reply", id="ref"))
    return RunSpec(data=data, **kw)


def test_shipped_adapter_names_medquad_train_split(files, symptoms, caplog):
    """The shipped adapter records MedQuAD symptoms, grouped split seed 42: rebuilt from those options, its
    fingerprints match, and its train split is the corpus of an external file."""
    from medqa_bench.planning.plan import run_adapters
    from medqa_bench.spec import RunSpec
    from medqa_bench.data.training_corpus import plan_data

    spec = _spec(files)
    with caplog.at_level(logging.INFO, logger="medqa_bench.data.training_corpus"):
        data = plan_data(spec, run_adapters(spec))
    assert data.corpus.source == "adapters" and [e.id for e in data.corpus.items] == [e.id for e in symptoms.split("train")]
    assert data.spec.split == "all" and len(data.pool) == 6 and data.spec.run_name.endswith("-all-all")
    assert data.spec.train_data.qtype == "symptoms" and data.spec.train_data.split.seed == 42
    assert data.corpus.record["manifest_fingerprint"] == symptoms.manifest.fingerprint
    assert [r.message for r in caplog.records if r.message.startswith("training corpus:")]
    # MedQuAD evaluated with its own adapter: nothing changes (its own train split, the test split evaluated)
    own = plan_data(RunSpec(), run_adapters(spec))
    assert own.corpus.source == "evaluated" and own.spec.split == "test" and own.spec.train_data is None
    # an explicit training corpus always wins
    given = plan_data(_spec(files, train_data={"path": str(files["train"]), "qtype": "all",
                                               "columns": {"question": "q", "answer": "a", "id": "tid"}}),
                      run_adapters(spec))
    assert given.corpus.source == "given" and len(given.corpus.items) == 41


def test_the_planner_reads_each_adapter_folder_once(files, monkeypatch):
    """plan_run reads the shipped adapter's medqa_bench.json once, and that one record serves both the adapter's
    identity (its row's format and base) and the training corpus it names."""
    from medqa_bench.data.adapter_meta import META_FILE, AdapterMeta
    from medqa_bench.inference.backends import create_backend
    from medqa_bench.planning import plan_run

    reads = []
    original = AdapterMeta.from_dict.__func__

    def counted(cls, raw, doc="adapter metadata"):
        if doc.endswith(META_FILE):
            reads.append(doc)
        return original(cls, raw, doc=doc)

    monkeypatch.setattr(AdapterMeta, "from_dict", classmethod(counted))
    spec = _spec(files)
    plan = plan_run(spec, create_backend(spec))
    assert len(reads) == 1, reads
    assert plan.data.corpus.source == "adapters" and len(plan.adapters) == 1
    (info,) = plan.adapters.values()
    assert info.meta is not None and info.meta.data_spec() == plan.spec.train_data


def test_changed_or_missing_training_data_is_said_in_one_line(files, trained_on_file, caplog, tmp_path):
    from medqa_bench.data.training_corpus import plan_data

    folder, _ = trained_on_file
    changed = tmp_path / "changed"
    shutil.copytree(folder, changed)
    meta = json.loads((changed / "medqa_bench.json").read_text())
    meta["data"]["fingerprint"] = "sha256:" + "0" * 64
    (changed / "medqa_bench.json").write_text(json.dumps(meta))
    missing = tmp_path / "missing"
    shutil.copytree(folder, missing)
    meta["data"]["spec"]["path"] = str(tmp_path / "gone.csv")
    (missing / "medqa_bench.json").write_text(json.dumps(meta))
    for adapter, words in ((changed, "is not the file they were trained on"), (missing, "is not found")):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="medqa_bench.data.training_corpus"):
            data = plan_data(_spec(files, split="all"), {"ft": str(adapter)})
        said = [r.message for r in caplog.records]
        assert len(said) == 1 and words in said[0] and "--train-data" in said[0]
        assert data.corpus.source == "evaluated" and data.corpus.record["note"] == said[0]
    # adapters that disagree
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="medqa_bench.data.training_corpus"):
        plan_data(_spec(files, split="all"), {"a": str(folder), "b": str(changed)})
    assert len(caplog.records) == 1 and "trained on different data" in caplog.records[0].message


def test_train_flags_need_train_data_and_name_their_own_columns(files, tmp_path):
    proc = cli("run", "--train-qtype", "all", "--out", str(tmp_path / "x"), "--no-default-adapter")
    assert proc.returncode == 2 and "give it too" in proc.stderr
    proc = cli("run", *_flags(files), "--train-data", str(files["train"]), "--train-qtype", "all",
               "--out", str(tmp_path / "x"), "--no-default-adapter")
    assert proc.returncode == 2 and "--train-question-column" in proc.stderr.strip().splitlines()[-1]
