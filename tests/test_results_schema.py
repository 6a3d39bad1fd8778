"""results.json as a typed record: one writer (medqa_bench.results_record) and one reader (schema.read_results).

The writer rebuilds committed run folders' results.json byte for byte from their pieces; the reader reads every
committed run folder (2.0 and 2.1) and the hand-made 2.x ones the report tests use, fills what older minor versions
did not write, and names the dotted key of a value of the wrong type.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest_report import make_records
from medqa_bench.storage import atomic
from medqa_bench.errors import RunError
from medqa_bench.results_record import SECTIONS, build_results, record_dict, with_sections
from medqa_bench.schema import (SCHEMA_VERSION, AdapterVerdict, Analysis, DataRecord, Judged, Leakage, MetricInfo,
                                 MetricValidity, PrimaryResult, Results, SystemInfo, Verdict, VerdictRow, read_analysis,
                                 read_results, read_verdict)

REPORTS = Path(__file__).resolve().parent.parent / "reports"
COMMITTED = sorted(REPORTS.glob("**/results.json"))
_HEAD = ("spec", "environment", "models", "systems", "budget", "loss_definition", "data", "cache")


def _rebuild(d: dict) -> dict:
    """A results.json object made again by the writer from its pieces, as a run makes it."""
    head = build_results(**{k: d[k] for k in _HEAD}, run_name=d["run_name"], created=d["created"],
                         schema_version=d["schema_version"], medqa_bench_version=d["medqa_bench_version"])
    scored = with_sections(head, metrics=d["metrics"], results=d["results"],
                           **({"validity": d["validity"]} if "validity" in d else {}))
    scored = with_sections(scored, analysis=d["analysis"])
    return with_sections(scored, verdict=d["verdict"], timings=d["timings"])


@pytest.mark.parametrize("name", ["headline", "headline-rag", "reference-recipe"])
def test_writer_rebuilds_committed_results_byte_for_byte(tmp_path, name):
    path = REPORTS / name / "results.json"
    d = json.loads(path.read_text(encoding="utf-8"))
    atomic.write_json(tmp_path / "results.json", _rebuild(d))
    assert (tmp_path / "results.json").read_bytes() == path.read_bytes()


def test_writer_order_of_this_version_and_of_a_score_of_an_older_folder():
    d = json.loads((REPORTS / "headline" / "results.json").read_text(encoding="utf-8"))
    current = _rebuild({**d, "validity": {"source": "bundled"}})
    assert tuple(current) == SECTIONS
    # score sets validity on a 2.1 folder, which has none: the file keeps its order and validity goes last
    rescored = with_sections(d, metrics=d["metrics"], results=d["results"], validity={"source": "bundled"})
    rescored = with_sections(rescored, analysis=d["analysis"], verdict=d["verdict"], timings=d["timings"])
    assert list(rescored) == [*d, "validity"]
    with pytest.raises(TypeError, match="'spec' is not a scored section"):
        with_sections(d, spec={})


def test_data_record_is_written_in_the_runners_order():
    record = DataRecord(source="bundled:medquad.csv.gz", split="test", n_items=3, n_generated=2, training=None)
    assert list(record_dict(record)) == [
        "source", "fingerprint", "manifest_fingerprint", "split", "split_size", "train_size", "training", "n_items",
        "n_generated", "limit", "nll_limit", "sample_seed", "item_ids_fingerprint", "dropped_empty_rows"]
    assert record_dict(record)["n_generated"] == 2 and record_dict({"a": 1}) == {"a": 1}


@pytest.mark.parametrize("path", COMMITTED, ids=[str(p.relative_to(REPORTS)) for p in COMMITTED])
def test_every_committed_run_folder_reads(path):
    d = json.loads(path.read_text(encoding="utf-8"))
    r = read_results(d)
    assert r.schema_version in ("2.0", "2.1") and r.raw is d
    assert list(r.systems) == list(d["systems"]) and all(isinstance(i, SystemInfo) for i in r.systems.values())
    for system, per_metric in d["results"].items():
        for metric, v in per_metric.items():
            assert r.value(system, metric) == v["value"] and r.results[system][metric].n == v["n"]
    assert r.data.n_items == d["data"]["n_items"] and r.data.raw == d["data"]
    assert r.budget.max_new_tokens == d["budget"]["max_new_tokens"]
    # written before validity (2.2), the training corpus and NLL-only items (2.3): their defaults
    assert r.validity is None and r.primary_metric is None and r.data.n_generated is None
    for name, info in r.metrics.items():
        assert info.items == ("all" if d["metrics"][name]["kind"] == "nll" else "generated")
    assert read_results(r) is r
    # the analysis and the verdict, as 2.0 and 2.1 wrote them (no n_nll_items, no primary)
    a, v = r.analysis, r.verdict
    assert a.raw is d["analysis"] and a.systems == d["analysis"]["systems"] and a.kinds == d["analysis"]["kinds"]
    assert a.n_nll_items is None and a.n_items == d["analysis"]["n_items"] and a.combined is False
    clean = d["analysis"]["leakage"]["clean"]
    assert isinstance(a.leakage, Leakage) and a.leakage.clean.n_items == clean["n_items"]
    judged = {n: j["metrics"] for n, j in clean["judged"].items()}
    assert {n: j.metrics for n, j in a.leakage.clean.judged.items()} == judged
    assert all(isinstance(j, Judged) for per in a.comparisons.values() for j in per.values())
    assert a.degeneration.warnings == d["analysis"]["degeneration"]["warnings"]
    assert a.confusion.metric == d["analysis"]["confusion"]["metric"] and a.confusion.row_thresholds is None
    assert a.confusion.graded.transitions == d["analysis"]["confusion"]["graded"]["transitions"]
    lengths = d["analysis"]["lengths"]
    assert a.lengths.edges == lengths["edges"] and a.lengths.max_new_tokens == lengths["max_new_tokens"]
    for name, row in a.lengths.systems.items():
        written = lengths["systems"][name]
        assert row.histogram("all") == written["all"] and row.truncated == written["truncated"]
    assert v.lines == d["verdict"]["lines"] and v.primary is None and list(v.adapters) == list(d["verdict"]["adapters"])
    for name, adapter in v.adapters.items():
        improves = d["verdict"]["adapters"][name]["improves"]
        assert adapter.primary is None and [r.raw for r in adapter.improves] == improves
        assert all(isinstance(r, VerdictRow) and r.metric == o["metric"] and r.ci == o["ci"]
                   for r, o in zip(adapter.improves, improves))
        clean_verdict = d["verdict"]["adapters"][name]["clean_subset"]
        assert adapter.clean_subset is None or adapter.clean_subset.raw == clean_verdict


def test_hand_made_runs_of_this_version_read():
    results, _ = make_records(n=6, primary="fuzzy", nll_only=2, n_bootstrap=100)
    r = read_results(results)
    assert r.schema_version == SCHEMA_VERSION and r.primary_metric == "fuzzy"
    assert r.validity.floor.figure == results["validity"]["floor"]["figure"]
    fuzzy = r.validity.metrics["fuzzy"]  # a hand-made run's metrics were never measured
    assert isinstance(fuzzy, MetricValidity) and fuzzy.raw is results["validity"]["metrics"]["fuzzy"]
    assert fuzzy.measured is False and fuzzy.reason == "a hand-made run's metric" and fuzzy.figures == {}
    figure = {"value": 0.5, "ci_low": 0.4, "ci_high": 0.6}
    measured = read_results({"validity": {"metrics": {"m": {"measured": True, "signature": "m", "below_floor": False,
                                                           "figures": {"spearman": figure}}}}}).validity.metrics["m"]
    assert measured.measured and measured.figures["spearman"] == figure and measured.below_floor is False
    assert measured.passes_robustness is False and measured.robustness == {}  # absent: the defaults
    assert r.system("qlora-medquad").kind == "adapter" and r.system("nothing") == SystemInfo()
    tel = r.system("qlora-medquad").training_eval_loss
    assert tel.value == 1.4321 and tel.definition["form"] == "batch-mean"
    assert r.system("baseline").training_eval_loss is None
    assert r.analysis.raw is results["analysis"] and r.verdict.raw is results["verdict"]
    assert r.analysis.paired["qlora-medquad"].metrics == results["analysis"]["paired"]["qlora-medquad"]["metrics"]
    assert r.analysis.paired["qlora-medquad"].baseline == "baseline" and r.analysis.n_nll_items == 8
    adapter = r.verdict.adapters["qlora-medquad"]
    assert isinstance(adapter, AdapterVerdict)
    assert adapter.lines == results["verdict"]["adapters"]["qlora-medquad"]["lines"]
    assert isinstance(adapter.primary, PrimaryResult) and adapter.primary.metric == "fuzzy"
    assert adapter.primary.outcome in ("improves", "regresses", "no_difference", "not_compared")
    assert r.verdict.primary == results["verdict"]["primary"]
    # a minimal, older or hand-made file: every field a reader asks for is there, with its default
    bare = read_results({"schema_version": "2.0"})
    assert bare == Results(schema_version="2.0") and bare.data == DataRecord() and bare.budget is None
    assert bare.systems == {} and bare.analysis is None and bare.signature_conflicts == []
    # null where an object is declared reads as absent; a declared "items" is kept
    nulls = read_results({"data": None, "metrics": {"m": {"kind": "nll", "items": "generated", "bounds": None}}})
    assert nulls.data == DataRecord() and nulls.metrics["m"] == MetricInfo(kind="nll", items="generated")


@pytest.mark.parametrize("change, key, shown", [
    ({"systems": {"baseline-chat": {"kind": 3}}}, "systems.baseline-chat.kind", "int 3, not str"),
    ({"results": {"baseline-chat": {"fuzzy": {"value": "0.5"}}}}, "results.baseline-chat.fuzzy.value", "str '0.5'"),
    ({"results": {"baseline-chat": {"fuzzy": {"n": True}}}}, "results.baseline-chat.fuzzy.n", "bool True, not int"),
    ({"metrics": {"fuzzy": {"bounds": [0, "1"]}}}, "metrics.fuzzy.bounds[1]", "not float"),
    ({"data": {"n_items": 2.5}}, "data.n_items", "float 2.5, not int"),
    ({"data": []}, "data", "list …, not an object"),
    ({"validity": {"primary": {"metric": ["fuzzy"]}}}, "validity.primary.metric", "list …, not str"),
    ({"systems": {"a": {"stop_sequences": "###"}}}, "systems.a.stop_sequences", "str '###', not a list"),
    ({"analysis": "done"}, "analysis", "not an object"),
    ({"analysis": {"kinds": {"a": 1}}}, "analysis.kinds.a", "int 1, not str"),
    ({"analysis": {"leakage": {"n_near_duplicates": "2"}}}, "analysis.leakage.n_near_duplicates", "str '2'"),
    ({"verdict": {"adapters": {"a": {"lines": "x"}}}}, "verdict.adapters.a.lines", "str 'x', not a list"),
    ({"verdict": {"warnings": {}}}, "verdict.warnings", "dict …, not a list"),
    ({"verdict": {"adapters": {"a": {"improves": [{"diff": "x"}]}}}}, "verdict.adapters.a.improves[0].diff", "str 'x'"),
    ({"validity": {"metrics": {"fuzzy": {"measured": "yes"}}}}, "validity.metrics.fuzzy.measured", "str 'yes'"),
    ({"analysis": {"confusion": {"graded": {"labels": "wrong"}}}}, "analysis.confusion.graded.labels", "not a list"),
])
def test_a_wrong_type_names_its_dotted_key(change, key, shown):
    with pytest.raises(RunError, match="results.json: '" + key.replace("[", r"\[").replace("]", r"\]") + "' is") as exc:
        read_results({"schema_version": SCHEMA_VERSION, **change})
    assert shown in str(exc.value) and "the run folder is damaged" in str(exc.value)
    with pytest.raises(RunError, match="'results' is list"):
        read_results([])


def test_analysis_and_verdict_read_alone():
    """read_analysis / read_verdict: the record of an object analyze() or build_verdict() returns, defaults for what an
    older or hand-made one lacks (a run without a leakage audit, a verdict without adapters)."""
    bare = read_analysis({"version": 3})
    assert bare == Analysis(version=3) and bare.leakage is None and bare.degeneration.warnings == []
    assert read_analysis(bare) is bare and read_verdict({}) == Verdict() and read_verdict({}).adapters == {}
    assert read_verdict({"adapters": {"a": None}}).adapters["a"] == AdapterVerdict()
    combined = read_verdict({"runs": {"A": {"primary": {"metric": "fuzzy", "rule": "r"}}, "B": {"primary": None}}})
    assert combined.runs["A"].primary.metric == "fuzzy" and combined.runs["B"].primary is None
    with pytest.raises(RunError, match="'analysis.paired' is list"):
        read_analysis({"paired": []})


def test_the_recorded_specs_analysis_and_decoding_read_as_records():
    from medqa_bench.errors import RunError
    from medqa_bench.schema import spec_analysis, spec_decoding
    from medqa_bench.spec import RunSpec

    spec = RunSpec(analysis={"similarity_metric": "rougeL", "thresholds": {"t": 0.4}, "seed": 3},
                   decoding={"max_new_tokens": 64, "no_repeat_ngram_size": 3}).to_dict()
    asked, decoding = spec_analysis(spec), spec_decoding(spec)
    assert (asked.similarity_metric, asked.thresholds, asked.seed) == ("rougeL", {"t": 0.4}, 3)
    assert (decoding.max_new_tokens, decoding.no_repeat_ngram_size, decoding.repetition_penalty) == (64, 3, 1.0)
    assert spec_analysis({}).thresholds == {} and spec_decoding({"decoding": None}).max_new_tokens is None
    with pytest.raises(RunError, match="spec.analysis.similarity_metric"):
        spec_analysis({"analysis": {"similarity_metric": 3}})
    with pytest.raises(RunError, match="spec.decoding.max_new_tokens"):
        spec_decoding({"decoding": {"max_new_tokens": "64"}})
