"""The README's Results rest on committed run folders: the test runs evaluate the shipped default adapter (the same
weights, by fingerprint) on the splits and with the options the README says, the README quotes their numbers, and
benchmarks/results/template_split.md is what benchmarks/template_split.py computes from them."""

from __future__ import annotations

import contextlib
import io
import json
import runpy
import sys
from unittest import mock
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REPORTS = ROOT / "reports"
TEST_RUNS = ("headline", "headline-rag", "headline-decoding", "headline-other-types")


def _results(run: str) -> dict:
    return json.loads((REPORTS / run / "results.json").read_text())


def _value(d: dict, system: str, metric: str) -> float:
    return d["results"][system][metric]["value"]


@pytest.fixture(scope="module")
def shipped_fingerprint() -> str:
    from medqa_bench.inference.models import read_adapter
    from medqa_bench.planning.plan import shipped_adapter

    return read_adapter("default", shipped_adapter()).fingerprint


@pytest.mark.parametrize("run", [*TEST_RUNS, "headline-no-repeat-ngram", "sweep-validation/decoding"])
def test_each_run_evaluates_the_shipped_default_adapter(run, shipped_fingerprint):
    d = _results(run)
    adapters = {n: s for n, s in d["systems"].items() if s["kind"] == "adapter"}
    assert adapters, f"{run} has no adapter row"
    assert {s["adapter"]["fingerprint"] for s in adapters.values()} == {shipped_fingerprint}
    assert all(s["quantization"] == "4bit" and s["prompt_format"] == "reference" for s in adapters.values())
    baselines = {s["prompt_format"] for s in d["systems"].values() if s["kind"] == "baseline"}
    assert "chat" in baselines  # the strongest baseline row, in the model's own template
    assert d["data"]["split"] == ("validation" if run.startswith("sweep-validation") else "test")
    assert d["verdict"]["adapters"]


def test_the_headline_is_the_full_symptoms_test_split_with_both_baseline_rows_and_the_reference_rows():
    d = _results("headline")
    assert d["spec"]["data"]["qtype"] == "symptoms" and d["data"]["n_items"] == d["data"]["split_size"] == 266
    kinds = {n: s["kind"] for n, s in d["systems"].items()}
    assert {n for n, k in kinds.items() if k == "reference"} == {"retrieval", "boilerplate", "question"}
    assert sorted(s["prompt_format"] for s in d["systems"].values() if s["kind"] == "baseline") == ["chat", "reference"]
    assert d["spec"]["decoding"]["repetition_penalty"] == 1.0 and not d["spec"]["decoding"]["do_sample"]


def test_the_variants_differ_from_the_headline_in_their_one_option():
    head, rag, dec, other = (_results(r) for r in TEST_RUNS)
    # retrieval: a +rag row of the baseline and of the adapter, BM25 with three training passages
    plus = {n: s["retrieval"] for n, s in rag["systems"].items() if n.endswith("+rag")}
    assert set(plus) == {"baseline+rag", "s07-ref-all+rag"}
    assert all(r["label"] == "bm25:k=3" and r["index"]["n_passages"] == head["data"]["train_size"] for r in plus.values())
    # decoding: the penalty for every system of the run (it is the run's), nothing else changed
    assert dec["spec"]["decoding"] == {**head["spec"]["decoding"], "repetition_penalty": 1.2}
    assert dec["data"]["item_ids_fingerprint"] == head["data"]["item_ids_fingerprint"]
    ngram = _results("headline-no-repeat-ngram")
    assert ngram["spec"]["decoding"] == {**head["spec"]["decoding"], "no_repeat_ngram_size": 3}
    assert ngram["data"]["item_ids_fingerprint"] == head["data"]["item_ids_fingerprint"]
    # the other question types: none of them symptoms, 200 items of their test split
    qtypes = other["spec"]["data"]["qtype"].split(",")
    assert "symptoms" not in qtypes and len(qtypes) == 15 and other["data"]["n_items"] == 200
    assert {s["qtype"] for s in map(json.loads, _xz_lines(REPORTS / "headline-other-types"))} <= set(qtypes)


def _xz_lines(folder: Path) -> list[str]:
    import lzma

    with lzma.open(folder / "samples.jsonl.xz", "rt", encoding="utf-8") as fh:
        return [line for line in fh if line.strip()]


def test_the_readme_quotes_the_committed_runs():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    results = readme[readme.index("## Results"):readme.index("## Development")]
    head, rag, dec, other = (_results(r) for r in TEST_RUNS)
    val = _results("sweep-validation/decoding")
    quoted = [
        (head, "s07-ref-all", ("loss", "rougeL", "token_f1", "embedding_similarity")),
        (head, "baseline-chat", ("loss", "rougeL", "token_f1", "embedding_similarity")),
        (head, "retrieval", ("rougeL", "token_f1", "embedding_similarity")),
        (head, "boilerplate", ("rougeL", "token_f1", "embedding_similarity")),
        (rag, "s07-ref-all+rag", ("loss", "rougeL", "token_f1", "embedding_similarity", "answer_grounding")),
        (rag, "baseline+rag", ("loss", "rougeL", "token_f1", "embedding_similarity", "context_recall")),
        (dec, "s07-ref-all", ("rougeL", "token_f1", "embedding_similarity")),
        (dec, "baseline", ("rougeL", "token_f1", "embedding_similarity")),
        (other, "s07-ref-all", ("loss", "rougeL", "token_f1", "embedding_similarity")),
        (other, "baseline", ("loss", "rougeL", "token_f1", "embedding_similarity")),
        (val, "s07-ref-all", ("rougeL", "token_f1", "embedding_similarity")),
        (_results("headline-no-repeat-ngram"), "s07-ref-all", ("rougeL", "token_f1", "embedding_similarity")),
        (_results("headline-no-repeat-ngram"), "baseline", ("rougeL", "token_f1", "embedding_similarity")),
    ]
    missing = [f"{d['run_name']}/{s}/{m}={_value(d, s, m):.3f}" for d, s, ms in quoted for m in ms
               if f"{_value(d, s, m):.3f}" not in results]
    assert not missing, f"README Results does not quote: {missing}"
    verdict = {r["metric"]: r for r in head["verdict"]["adapters"]["s07-ref-all"]["improves"]}
    for m in ("rougeL", "token_f1", "embedding_similarity"):
        assert f"{verdict[m]['diff']:+.3f}" in results
    # the shipped adapter misses the bar: the README must say so while the run carries degeneration warnings
    assert head["verdict"]["adapters"]["s07-ref-all"]["warnings"]
    assert "no configuration meets the bar" in results.lower()


def test_template_split_output_is_what_the_script_computes_from_the_committed_runs():
    runs = ["reports/sweep-validation/s07-ref-all", "reports/sweep-validation/decoding", "reports/headline",
            "reports/headline-decoding", "reports/headline-no-repeat-ngram", "reports/headline-rag",
            "reports/headline-other-types"]
    # the script as `python benchmarks/template_split.py RUNS` runs it, in this process (its imports are loaded here)
    buf = io.StringIO()
    with mock.patch.object(sys, "argv", ["template_split.py", *(str(ROOT / r) for r in runs)]), \
            contextlib.redirect_stdout(buf):
        runpy.run_path(str(ROOT / "benchmarks" / "template_split.py"), run_name="__main__")
    out = buf.getvalue().replace(f"{ROOT}/", "")
    assert out == (ROOT / "benchmarks" / "results" / "template_split.md").read_text(encoding="utf-8")
    # the README's table of the split is this output's
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    head = out[out.index("### reports/headline (") :]
    other = next(line for line in head.splitlines() if line.startswith("| other (46) | **s07-ref-all"))
    for cell in other.split("|")[3:6]:
        assert cell.split("(")[0].strip().replace("-", "−") in readme
    # the README's counts of answers that are the template
    flat = " ".join(readme.split())
    for run, total in (("headline", 266), ("headline-other-types", 200)):
        part = out[out.index(f"### reports/{run} ("):]
        line = next(x for x in part.splitlines() if x.startswith("Answers that contain"))
        n = int(line.split("s07-ref-all ")[1].rstrip(".").split(",")[0])
        assert f"{n} of its {total} answers" in flat, (run, n)
