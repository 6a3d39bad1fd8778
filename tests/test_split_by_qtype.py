"""The ``grouped-by-qtype`` split: a question type's evaluation items are the same whether a run reads that type
alone or every type, and no question or focus crosses from train to evaluation (the all-question-types recipe)."""

from __future__ import annotations

from medqa_bench.data.dataset import DataSpec, Example, SplitOptions, load_dataset, normalize_question, split_examples


def _content(examples, qtype=None):
    return [(e.question, e.references) for e in examples if qtype is None or e.qtype == qtype]


def test_every_type_keeps_each_types_evaluation_items_and_nothing_leaks():
    alone = load_dataset(DataSpec(qtype="symptoms"))
    every = load_dataset(DataSpec(qtype="all", split=SplitOptions(strategy="grouped-by-qtype")))
    for split in ("validation", "test"):
        assert _content(every.split(split), "symptoms") == _content(alone.split(split))
    # train is a subset of the type's own train: items sharing a focus with another type's evaluation item are gone
    assert set(_content(every.split("train"), "symptoms")) < set(_content(alone.split("train")))
    evaluated = every.split("validation") + every.split("test")
    eval_keys = {normalize_question(e.question) for e in evaluated} | {e.focus.lower() for e in evaluated if e.focus}
    for e in every.split("train"):
        assert normalize_question(e.question) not in eval_keys and (not e.focus or e.focus.lower() not in eval_keys)
    assert len({e.qtype for e in every.split("test")}) > 10


def test_one_type_is_the_grouped_split():
    examples = [Example(id=str(i), question=f"what is q{i}?", answer=f"a{i}", qtype="t", focus=f"f{i // 2}")
                for i in range(40)]
    a = split_examples(examples, SplitOptions(strategy="grouped"))
    b = split_examples(examples, SplitOptions(strategy="grouped-by-qtype"))
    assert {s: [e.id for e in v] for s, v in a.items()} == {s: [e.id for e in v] for s, v in b.items()}


def test_a_focus_shared_across_types_leaves_train():
    # type u's item 0 shares focus "gout" with type t's items; wherever t's gout items land outside train,
    # u's gout item cannot stay in train
    t = [Example(id=f"t{i}", question=f"t question {i}?", answer="x", qtype="t", focus="gout" if i == 0 else f"t{i}")
         for i in range(30)]
    u = [Example(id=f"u{i}", question=f"u question {i}?", answer="y", qtype="u", focus="gout" if i == 0 else f"u{i}")
         for i in range(30)]
    crossed = 0
    for seed in range(20):
        parts = split_examples(t + u, SplitOptions(seed=seed, strategy="grouped-by-qtype"))
        places = {e.id: s for s, v in parts.items() for e in v}
        where = {places.get("t0"), places.get("u0")}
        assert not ("train" in where and where & {"validation", "test"}), f"seed {seed}: gout in {where}"
        crossed += bool(where & {"validation", "test"})
    assert crossed  # the case arose: one type put its gout item outside train
