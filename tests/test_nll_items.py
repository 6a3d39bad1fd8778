"""Loss and perplexity on more items than generation (issue 30, item 5): each metric is scored, aggregated and tested
on the items it applies to; samples.jsonl marks the items scored by the NLL metrics alone (generated: false)."""

from __future__ import annotations

import json
import math

import pytest

from test_run import cli


@pytest.fixture(scope="module")
def nll_run(tmp_path_factory, lora_adapter, short_symptoms):
    root = tmp_path_factory.mktemp("nll-items")
    cli("-q", "run", "--data", str(short_symptoms), "--adapter", f"ft={lora_adapter}", "--limit", "2", "--nll-limit",
        "4", "--max-new-tokens", "4", "--metrics", "loss,perplexity,rougeL,token_f1", "--batch-size", "4",
        "--device", "cpu", "--no-report", "--out", str(root / "run"), "--cache", str(root / "c.sqlite"), check=True)
    return root / "run"


def _read(run):
    return (json.loads((run / "results.json").read_text()),
            [json.loads(x) for x in (run / "samples.jsonl").read_text().splitlines()])


def test_each_metric_on_the_items_it_scored(nll_run):
    results, samples = _read(nll_run)
    assert [s["generated"] for s in samples].count(True) == 2 and len(samples) == 4
    data = results["data"]
    assert (data["n_items"], data["n_generated"], data["limit"], data["nll_limit"]) == (4, 2, 2, 4)
    for s in samples:
        if s["generated"]:
            assert set(s["systems"]) == {"baseline", "ft", "retrieval", "boilerplate", "question"}
            assert "prediction" in s["systems"]["ft"] and "rougeL" in s["systems"]["ft"]["scores"]
        else:  # the language-model rows' NLL only: no answer, no reference row, no distractor
            assert set(s["systems"]) == {"baseline", "ft"} and "distractor_id" not in s
            for rec in s["systems"].values():
                assert "prediction" not in rec and rec["nll_tokens"] > 0
                assert set(rec["scores"]) == {"loss", "perplexity"}
    info = results["metrics"]
    assert (info["loss"]["items"], info["rougeL"]["items"]) == ("all", "generated")
    for system in ("baseline", "ft"):
        assert results["results"][system]["loss"]["n"] == 4 and results["results"][system]["rougeL"]["n"] == 2
        rows = [s["systems"][system] for s in samples]
        corpus = sum(r["nll_sum"] for r in rows) / sum(r["nll_tokens"] for r in rows)
        assert results["results"][system]["loss"]["value"] == pytest.approx(corpus, rel=1e-9)
        assert results["results"][system]["perplexity"]["value"] == pytest.approx(math.exp(corpus), rel=1e-9)
    assert results["results"]["question"]["rougeL"]["n"] == 2 and "loss" not in results["results"]["question"]
    # the paired tests and the answer views read the same item sets
    analysis = results["analysis"]
    assert (analysis["n_items"], analysis["n_nll_items"]) == (2, 4)
    judged = analysis["paired"]["ft"]["metrics"]
    assert judged["loss"]["n"] == 4 and judged["rougeL"]["n"] == 2
    assert analysis["degeneration"]["stats"]["ft"]["n"] == 2
    assert analysis["language_modeling"]["systems"]["ft"]["n_items"] == 4


def test_the_generated_items_are_the_limit_sample_and_rescoring_keeps_the_sets(nll_run, short_symptoms, monkeypatch):
    from medqa_bench import api
    from medqa_bench.inference import models
    from medqa_bench.data.dataset import DataSpec, load_dataset
    from medqa_bench.data.items import select_item_sets, select_items

    results, samples = _read(nll_run)
    pool = load_dataset(DataSpec(path=str(short_symptoms))).split("test")
    assert [s["id"] for s in samples if s["generated"]] == [e.id for e in select_items(pool, 2, 0)]
    items, generated = select_item_sets(pool, 2, 4, 0)
    assert [e.id for e in items] == [s["id"] for s in samples] and sum(generated) == 2
    assert select_item_sets(pool, 2, 0, 0)[0] == pool and select_item_sets(pool, 2, 2, 0)[1] == [True, True]

    monkeypatch.setattr(models, "load_base", lambda *a, **k: pytest.fail("score must not load the model"))
    res = api.score(nll_run, metrics=["rouge1", "loss"], out=nll_run.parent / "rescored", progress=False,
                    report=False)
    assert res.results["results"]["ft"]["rouge1"]["n"] == 2 and res.results["results"]["ft"]["loss"]["n"] == 4
    assert res.results["results"]["ft"]["loss"] == results["results"]["ft"]["loss"]
    # the report: both counts in its header, the generated items alone in its explorer
    from medqa_bench.report import render_report

    html = render_report([nll_run], nll_run.parent / "report.html").read_text()
    assert "(loss and perplexity on <b>4</b>" in html
    assert all(f'"id":"{s["id"]}"' in html.replace('": "', '":"') for s in samples if s["generated"])
    assert not any(f'"id":"{s["id"]}"' in html.replace('": "', '":"') for s in samples if not s["generated"])


def test_cpu_default_scores_nll_on_more_items():
    from medqa_bench.errors import SpecError
    from medqa_bench.spec import CPU_DEFAULT_LIMIT, CPU_DEFAULT_NLL_LIMIT, RunSpec

    cpu = RunSpec().resolved_for("cpu")
    assert (cpu.limit, cpu.nll_limit) == (CPU_DEFAULT_LIMIT, CPU_DEFAULT_NLL_LIMIT) and CPU_DEFAULT_NLL_LIMIT >= 10
    assert (RunSpec().resolved_for("cuda").limit, RunSpec().resolved_for("cuda").nll_limit) == (0, 0)
    assert RunSpec(limit=3).resolved_for("cpu").nll_limit == 3  # an explicit --limit: the same items
    assert RunSpec(nll_limit=0).resolved_for("cpu").nll_limit == 0
    with pytest.raises(SpecError, match="must not be below limit"):
        RunSpec(limit=5, nll_limit=3)
