"""The data pipeline on the bundled MedQuAD and on bad inputs."""

from __future__ import annotations

import gzip
import json

import pytest

from medqa_bench.data.dataset import (REFERENCE_TEMPLATE, ColumnMap, DataSpec, SplitOptions, load_dataset,
    normalize_question)
from medqa_bench.errors import DataError


def test_bundled_counts(symptoms):
    assert symptoms.report.rows == 16407
    assert symptoms.report.qtypes["symptoms"] == 2748
    # rows repeating a question are one item with several references
    assert symptoms.report.kept == 2748
    assert len(symptoms.examples) == 2669
    assert sum(len(e.references) > 1 for e in symptoms.examples) > 0
    assert all(e.qtype == "symptoms" for e in symptoms.examples)


def test_template_text_exact(symptoms):
    ex = symptoms.split("test")[0]
    assert REFERENCE_TEMPLATE == "### Question Type:\n{qtype}\n\n### Question:\n{question}\n\n### Answer:"
    assert ex.prompt() == f"### Question Type:\nsymptoms\n\n### Question:\n{ex.question}\n\n### Answer:"
    assert ex.completion() == " " + ex.answer


def test_split_ratios_and_no_leakage(symptoms):
    sizes = {k: len(v) for k, v in symptoms.splits.items()}
    n = sum(sizes.values())
    assert n == len(symptoms.examples)
    assert abs(sizes["train"] / n - 0.8) < 0.02 and abs(sizes["test"] / n - 0.1) < 0.02
    seen_q, seen_f = {}, {}
    for name, items in symptoms.splits.items():
        for e in items:
            q = normalize_question(e.question)
            assert seen_q.setdefault(q, name) == name, f"question {q!r} in two splits"
            assert seen_f.setdefault(e.focus.lower(), name) == name, f"focus {e.focus!r} in two splits"


def test_same_seed_same_split_other_seed_other_split():
    a, b = load_dataset(), load_dataset()
    assert a.manifest.splits == b.manifest.splits and a.manifest.fingerprint == b.manifest.fingerprint
    c = load_dataset(DataSpec(split=SplitOptions(seed=7)))
    assert c.manifest.splits["test"] != a.manifest.splits["test"]
    assert c.manifest.fingerprint != a.manifest.fingerprint


def _focus_leaks(ds):
    foci, leaked = {}, 0
    for name, items in ds.splits.items():
        for e in items:
            if e.focus:  # rows without a focus are grouped by question text alone
                leaked += foci.setdefault(e.focus.lower(), name) != name
    return leaked


def test_random_split_is_available_and_leaks():
    # Over all qtypes a focus has many questions: the naive split spreads topics over splits, the grouped one never.
    assert _focus_leaks(load_dataset(DataSpec(qtype="all", split=SplitOptions(strategy="random")))) > 0
    assert _focus_leaks(load_dataset(DataSpec(qtype="all"))) == 0


def test_qtype_list_and_all():
    two = load_dataset(DataSpec(qtype="symptoms,causes"))
    assert {e.qtype for e in two.examples} == {"symptoms", "causes"}
    every = load_dataset(DataSpec(qtype="all"))
    assert len({e.qtype for e in every.examples}) >= 15


def test_manifest_roundtrip(tmp_path, symptoms):
    from medqa_bench.api import prepare_data

    out = prepare_data(DataSpec(), tmp_path / "prep")
    lines = (out / "symptom_qa.jsonl").read_text().splitlines()
    assert len(lines) == len(symptoms.examples)
    assert set(json.loads(lines[0])) == {"prompt", "completion"}
    again = load_dataset(DataSpec(manifest=str(out / "manifest.json")))
    assert [e.id for e in again.split("test")] == [e.id for e in symptoms.split("test")]
    with pytest.raises(FileExistsError):
        prepare_data(DataSpec(), tmp_path / "prep")


def test_jsonl_and_column_mapping(tmp_path):
    rows = [{"q": f"What are the symptoms of D{i} ?", "a": f"Answer {i}", "t": "symptoms", "f": f"D{i}"} for i in range(20)]
    rows.append({"q": "", "a": "x", "t": "symptoms", "f": "x"})
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows))
    ds = load_dataset(DataSpec(path=str(p), columns=ColumnMap(question="q", answer="a", qtype="t", focus="f", id="id")))
    assert len(ds.examples) == 20 and ds.report.dropped_empty == 1


def test_list_column_gives_several_references(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"Question": "Q?", "Answer": ["one", "two"], "qtype": "symptoms"}) + "\n")
    ds = load_dataset(DataSpec(path=str(p)))
    assert ds.examples[0].references == ("one", "two")


def test_hf_dataset(tmp_path):
    import datasets

    from medqa_bench.data.dataset import load_dataset as load

    hf = datasets.Dataset.from_dict({"Question": [f"Q{i}?" for i in range(10)], "Answer": [f"A{i}" for i in range(10)],
                                     "qtype": ["symptoms"] * 10})
    ds = load(DataSpec(), hf_dataset=hf)
    assert len(ds.examples) == 10
    hf.save_to_disk(str(tmp_path / "saved"))
    assert len(load(DataSpec(path=str(tmp_path / "saved"))).examples) == 10


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("missing.csv", None, "does not exist"),
        ("data.parquet", b"x", "unknown format"),
        ("empty.csv", b"", "is empty"),
        ("header.csv", b"Question,Answer,qtype\n", "no rows"),
        ("cols.csv", b"Q,A,qtype\nq,a,symptoms\n", "column 'Question' not found; columns are: Q, A, qtype; map it with --question-column"),
        ("qt.csv", b"Question,Answer,qtype\nq,a,causes\n", "no rows for qtype ['symptoms']; qtypes present: causes (1)"),
        ("latin1.csv", "Question,Answer,qtype\nq,caf\u00e9,symptoms\n".encode("latin-1"), "not UTF-8 at byte"),
        ("bad.jsonl", b'{"Question": "q"\n', "line 1 is not valid JSON"),
        ("bad.csv.gz", b"not gzip", "not a valid gzip"),
    ],
)
def test_bad_inputs(tmp_path, name, content, message):
    p = tmp_path / name
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(DataError) as err:
        load_dataset(DataSpec(path=str(p)))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_gzip_csv(tmp_path):
    p = tmp_path / "d.csv.gz"
    p.write_bytes(gzip.compress(b"Question,Answer,qtype\nq1,a1,symptoms\nq2,a2,symptoms\n"))
    assert len(load_dataset(DataSpec(path=str(p))).examples) == 2


def test_chat_prompt_has_one_bos_when_the_tokenizer_adds_it(tmp_path, default_model):
    """A chat template that writes BOS (Llama 3's <|begin_of_text|>; here SmolLM2's template, whose first token is its
    BOS) with a tokenizer that adds BOS too: the prompt text drops the template's copy, so the tokenised prompt (as
    the harness and TRL tokenise it, special tokens on) has BOS once and equals the template tokenised directly. A
    tokenizer that adds no BOS gets the template's text unchanged."""
    from transformers import AutoTokenizer

    from medqa_bench.data.dataset import Example

    default_model.tokenizer.save_pretrained(tmp_path / "tok")
    adds_bos = AutoTokenizer.from_pretrained(tmp_path / "tok", add_bos_token=True)
    bos, bos_id = adds_bos.bos_token, adds_bos.bos_token_id
    ex = Example(id="q1", question="What are the symptoms of gout?", answer="Pain.", qtype="symptoms")
    messages = [{"role": "user", "content": "Question type: symptoms\n\nWhat are the symptoms of gout?"}]
    template = adds_bos.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert template.startswith(bos)  # the template writes BOS ...
    assert adds_bos("x")["input_ids"][0] == bos_id  # ... and the tokenizer adds it as well

    prompt = ex.prompt("chat", adds_bos)
    ids = adds_bos(prompt, add_special_tokens=True)["input_ids"]
    assert ids[0] == bos_id and ids[1] != bos_id
    assert ids == adds_bos(template, add_special_tokens=False)["input_ids"]
    # the default tokenizer adds no BOS: the chat text is the template's own
    assert ex.prompt("chat", default_model.tokenizer) == default_model.tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True)


# ------------------------------------------------------------------------- split strategies: grouped vs random


def _membership(ds):
    return {s: [e.id for e in ds.split(s)] for s in ("train", "validation", "test")}


def _crossing_questions(ds):
    """Normalised questions found in more than one split."""
    where: dict[str, set[str]] = {}
    for name in ("train", "validation", "test"):
        for e in ds.split(name):
            where.setdefault(normalize_question(e.question), set()).add(name)
    return {q for q, names in where.items() if len(names) > 1}


def test_random_and_grouped_differ_on_bundled_symptoms(symptoms):
    # Before the random split moved to rows it shuffled the same merged items with the same seed, and on the
    # symptoms data (no leak group bigger than one item) gave exactly the grouped membership.
    naive = load_dataset(DataSpec(split=SplitOptions(strategy="random")))
    grouped, random_ = _membership(symptoms), _membership(naive)
    for name in ("train", "validation", "test"):
        assert set(grouped[name]) != set(random_[name]), name
    assert naive.manifest.options["unit"] == "rows" and "unit" not in symptoms.manifest.options
    # random splits the 2748 rows, then merges within splits: every item is in exactly one split
    ids = [i for name in ("train", "validation", "test") for i in random_[name]]
    assert len(ids) == len(set(ids)) == len(naive.examples) == len(naive.split("all"))
    assert {e.id for e in naive.examples} == set(ids)


def test_grouped_shares_no_question_and_no_focus_across_splits(symptoms):
    assert not _crossing_questions(symptoms)
    where: dict[str, set[str]] = {}
    for name in ("train", "validation", "test"):
        for e in symptoms.split(name):
            if e.focus:
                where.setdefault(e.focus.casefold(), set()).add(name)
    assert all(len(names) == 1 for names in where.values())


def _repeated_questions_csv(tmp_path):
    """40 rows: 30 distinct questions, 5 of them asked again in 2 more rows (other case or spacing, other answer)."""
    rows = [("q%d" % i, f"What are the symptoms of Disease {i} ?", f"Answer about disease {i}.", f"Disease {i}")
            for i in range(30)]
    for i in range(5):
        second = (f"q{i}b", f"what are the symptoms of disease {i}?", f"Second answer {i}.", f"Disease {i}")
        rows.insert(8 * i + 3, second)
        rows.append((f"q{i}c", f"What are the symptoms of Disease {i}?", f"Third answer {i}.", f"Disease {i}"))
    lines = ["qid,Question,Answer,focus,qtype"] + [f'{a},"{b}","{c}",{d},symptoms' for a, b, c, d in rows]
    path = tmp_path / "repeated.csv"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_random_splits_rows_before_merging(tmp_path):
    path = _repeated_questions_csv(tmp_path)
    crossing_random = 0
    for seed in range(10):
        grouped = load_dataset(DataSpec(path=path, split=SplitOptions(seed=seed)))
        naive = load_dataset(DataSpec(path=path, split=SplitOptions(seed=seed, strategy="random")))
        assert not _crossing_questions(grouped)  # grouped never leaks a question
        assert len(grouped.examples) == 30 and sum(len(e.references) for e in grouped.examples) == 40
        crossing_random += bool(_crossing_questions(naive))
        # random: every row lands in exactly one split, repeated questions merge only inside it
        assert sum(len(e.references) for e in naive.examples) == 40
        ids = [e.id for name in ("train", "validation", "test") for e in naive.split(name)]
        assert len(ids) == len(set(ids)) == len(naive.examples)
        assert sorted(ids) == sorted(e.id for e in naive.split("all"))
        # rows are what the ratios cut: 32/4/4 rows
        assert [sum(len(e.references) for e in naive.split(s)) for s in ("train", "validation", "test")] == [32, 4, 4]
        # deterministic for a seed
        for strategy, ds in (("grouped", grouped), ("random", naive)):
            again = load_dataset(DataSpec(path=path, split=SplitOptions(seed=seed, strategy=strategy)))
            assert again.manifest.to_dict() == ds.manifest.to_dict()
            assert [e.to_dict() for e in again.examples] == [e.to_dict() for e in ds.examples]
    assert crossing_random >= 5  # most seeds put some repeated question in two splits


def test_random_ids_unique_without_an_id_column(tmp_path):
    p = tmp_path / "noid.csv"
    p.write_text("Question,Answer,qtype\n" + "".join(f"Q{i % 7}?,A{i},symptoms\n" for i in range(40)))
    for seed in range(5):
        ds = load_dataset(DataSpec(path=str(p), split=SplitOptions(seed=seed, strategy="random")))
        ids = [e.id for e in ds.examples]
        assert len(ids) == len(set(ids)) and all(i.startswith("row-") for i in ids)


@pytest.mark.parametrize("strategy", ["grouped", "random"])
def test_manifest_reload_both_strategies(tmp_path, strategy):
    path = _repeated_questions_csv(tmp_path)
    ds = load_dataset(DataSpec(path=path, split=SplitOptions(seed=3, strategy=strategy)))
    saved = tmp_path / "manifest.json"
    saved.write_text(json.dumps(ds.manifest.to_dict()))
    # the spec's own split options are ignored when a manifest is given: the manifest's are used
    again = load_dataset(DataSpec(path=path, manifest=str(saved), split=SplitOptions(seed=99)))
    for name in ("train", "validation", "test"):
        assert [e.to_dict() for e in again.split(name)] == [e.to_dict() for e in ds.split(name)]
    assert again.manifest.fingerprint == ds.manifest.fingerprint


def test_random_manifest_from_before_row_splits_still_loads(tmp_path):
    """A 'random' manifest written before the row-level split names merged items; it loads as it was made."""
    path = _repeated_questions_csv(tmp_path)
    merged = load_dataset(DataSpec(path=path))
    old = {**merged.manifest.to_dict(), "options": {**merged.manifest.options, "strategy": "random"}}
    saved = tmp_path / "old.json"
    saved.write_text(json.dumps(old))
    ds = load_dataset(DataSpec(path=path, manifest=str(saved)))
    assert [e.to_dict() for e in ds.split("test")] == [e.to_dict() for e in merged.split("test")]


def test_split_examples_refuses_random():
    from medqa_bench.data.dataset import Example, split_examples

    with pytest.raises(DataError, match="rows before merging"):
        split_examples([Example(id="a", question="q", answer="a")], SplitOptions(strategy="random"))
