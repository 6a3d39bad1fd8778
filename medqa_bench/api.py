"""Everything the CLI does, one call away from Python (for notebooks).

>>> from medqa_bench.api import RunSpec, run                                  # doctest: +SKIP
>>> res = run(RunSpec(limit=20))      # the default model and its shipped adapter
>>> res.table(deltas=True)           # per-system aggregates with 95% CIs; each adapter's delta and p vs its baseline
>>> res.items()                      # one row per item and system
>>> res = res.rescore(metrics=["fuzzy"])   # fuzzy added, the other metrics kept
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from .data.dataset import DataSpec, answer_length_percentiles, load_dataset, prompt_completion_records
from .spec import RunSpec

if TYPE_CHECKING:
    from .schema import Results as ResultsRecord

__all__ = ["RunSpec", "DataSpec", "Results", "run", "score", "load_results", "prepare_data", "data_stats"]


@dataclass
class Results:
    """A run folder loaded: ``results`` (results.json) and ``samples`` (samples.jsonl)."""

    run_dir: Path
    results: dict[str, Any]
    samples: list[dict[str, Any]]

    @property
    def systems(self) -> list[str]:
        return list(self.results["systems"])

    @functools.cached_property
    def record(self) -> "ResultsRecord":
        """results.json as its typed record (:func:`medqa_bench.schema.read_results`): the declared fields."""
        from .schema import read_results

        return read_results(self.results)

    def table(self, *, deltas: bool = False):
        """Aggregates as a DataFrame: one row per (system, metric) with value, ci_low, ci_high, n.

        ``deltas=True`` adds, for each row the verdict judges (adapters, rows with retrieval), the comparison with its
        strongest baseline row on that metric: ``against``, ``delta`` (this row minus that one, the metric's own
        aggregate) with its paired 95% bootstrap CI ``delta_ci_low``/``delta_ci_high``, the paired permutation test's
        ``p`` and ``p_holm`` (Holm over the row's metrics, what the verdict reads) and ``better``: True only when the
        difference is significant after Holm (``p_holm`` below the verdict's alpha, 0.05) and in the metric's better
        direction, False otherwise (worse, or no significant difference: ``delta``'s sign says which way it leans);
        empty for the baseline and reference rows.
        """
        import pandas as pd

        from .analysis.verdict import _significant  # the verdict's rule: Holm p below its alpha

        record = self.record
        paired = record.analysis.paired if deltas and record.analysis is not None else {}
        rows = []
        for s, per in self.results["results"].items():
            for m, v in per.items():
                row = {"system": s, "metric": m, **v, "higher_is_better": record.metrics[m].higher_is_better}
                if deltas:
                    c = paired[s].metrics.get(m, {}) if s in paired else {}
                    row.update(against=c.get("against"), delta=c.get("mean_diff"), delta_ci_low=c.get("ci_low"),
                               delta_ci_high=c.get("ci_high"), p=c.get("p_permutation"), p_holm=c.get("p_holm"),
                               better=(c.get("better") is True and _significant(c)) if c else None)
                rows.append(row)
        return pd.DataFrame(rows)

    def items(self):
        """Per-item records as a DataFrame: one row per (item, system) with prediction, NLL and every score."""
        import pandas as pd

        rows = []
        for rec in self.samples:
            for s, r in rec["systems"].items():
                rows.append({
                    "id": rec["id"], "qtype": rec.get("qtype"), "question": rec["question"], "reference": rec["reference"],
                    "system": s, "prediction": r.get("prediction"), "truncated": r.get("truncated"),
                    "generated_tokens": r.get("generated_tokens"), "nll_sum": r.get("nll_sum"),
                    "nll_tokens": r.get("nll_tokens"), **{f"score.{k}": v for k, v in (r.get("scores") or {}).items()},
                })
        return pd.DataFrame(rows)

    def rescore(self, *, metrics: Sequence[str] | None = None, plugins: Sequence[str] = (), **kw: Any) -> "Results":
        """:func:`score` this run folder: ``metrics`` computed again or added, the others kept, and the soft-match
        analysis on the metric the run used unless ``similarity_metric=`` names another; ``out=DIR`` writes the
        re-scored run there and leaves this folder as it is. Returns the folder written, loaded."""
        return score(self.run_dir, metrics=list(metrics) if metrics else None, plugins=tuple(plugins), **kw)

    def plugin_notes(self) -> list[str]:
        """One line per plugin metric the last ``score`` computed again: where its code came from and what changed
        since the run recorded it (``results["metrics"][m]["plugin_check"]``), warnings first."""
        checks = {m: i.plugin_check for m, i in self.record.metrics.items() if i.plugin_check is not None}
        ordered = sorted(checks.items(), key=lambda kv: not kv[1].get("warning"))
        return [f"{'warning: ' if c.get('warning') else ''}plugin metric {m}: {c.get('note')}" for m, c in ordered]

    def verdict(self) -> list[str]:
        """The verdict's sentences (``results["verdict"]["lines"]``): what holds and what to distrust."""
        return list(self.record.verdict.lines) if self.record.verdict is not None else []

    def __repr__(self) -> str:
        return (f"Results({str(self.run_dir)!r}, systems={self.systems}, n_items={self.record.data.n_items}, "
                f"metrics={list(self.record.metrics)})")

    def summary(self, *, full_verdict: bool = False) -> str:
        """The headline as text: one line per metric, one column per system, value [CI]; then the verdict in brief
        (:func:`medqa_bench.report.terminal.verdict_brief`: at most five findings, the warnings by kind, where the
        rest is), or every line of it with ``full_verdict``."""
        from .report.terminal import summary_table

        data = self.record.data
        n_generated = data.n_generated if data.n_generated is not None else data.n_items
        nll = f"; loss and perplexity on {data.n_items}" if data.n_items > n_generated else ""
        lines = [f"run: {self.run_dir}  ({n_generated} items{nll})", *summary_table(self.results)]
        lines += self.plugin_notes()
        verdict = self.verdict()
        if verdict and not full_verdict:
            from .report.terminal import verdict_brief

            return "\n".join(lines + verdict_brief(self.results, self.run_dir))
        if verdict:
            lines.append("verdict:")
            lines += [f"  - {line}" for line in verdict]
        report = self.run_dir / "report.html"
        if report.exists():
            lines.append(f"report: {report}")
        return "\n".join(lines)


def load_results(run_dir: str | Path) -> Results:
    from .runner import read_run

    results, samples = read_run(run_dir)
    return Results(Path(run_dir), results, samples)


def run(spec: RunSpec | None = None, *, progress: bool = True) -> Results:
    """Evaluate a spec (the defaults when None) and return its :class:`Results`."""
    from . import runner

    return load_results(runner.run(spec, progress=progress))


def score(run_dir: str | Path, *, metrics: list[str] | None = None, plugins: tuple[str, ...] = (),
          metric_params: dict | None = None, similarity_metric: str | None = None,
          thresholds: dict[str, float] | None = None, out: str | Path | None = None, overwrite: bool = False,
          report: bool = True, progress: bool = True, validity: str | None = None) -> Results:
    """Re-score saved generations of a run folder without loading the language model.

    ``metrics`` are computed again (or added) and the run's other metrics kept; none: all of them again. A plugin
    metric is computed from the plugin the run recorded (loaded from its recorded absolute path, its fingerprint
    checked), from ``plugins`` given here, which override it, or from an installed entry point with its signature.
    The soft-match analysis keeps the run's metric unless ``similarity_metric`` names another; ``thresholds`` change
    its thresholds. ``out`` writes the result to another folder. ``validity`` (a validity.json, or "bundled") changes
    where the metrics' validity figures come from. See :func:`medqa_bench.runner.score`.
    """
    from . import runner

    return load_results(runner.score(run_dir, metrics=metrics, plugins=plugins, metric_params=metric_params,
                                     similarity_metric=similarity_metric, thresholds=thresholds, out=out,
                                     overwrite=overwrite, report=report, progress=progress, validity=validity))


def prepare_data(spec: DataSpec | None = None, out: str | Path = "data/prepared", *, overwrite: bool = False) -> Path:
    """Write ``symptom_qa.jsonl`` (all items, reference prompt/completion), ``{train,validation,test}.jsonl`` and
    ``manifest.json`` into ``out``, atomically."""
    from .storage import atomic

    ds = load_dataset(spec)
    with atomic.directory(out, overwrite=overwrite) as tmp:
        qtype = (ds.spec.qtype or "all").replace(",", "+").replace(" ", "_")
        atomic.write_jsonl(tmp / f"{qtype if qtype != 'symptoms' else 'symptom'}_qa.jsonl",
                           [{"prompt": r["prompt"], "completion": r["completion"]} for r in prompt_completion_records(ds.examples)])
        for name in ("train", "validation", "test"):
            atomic.write_jsonl(tmp / f"{name}.jsonl",
                               [{**e.to_dict(), "prompt": e.prompt(), "completion": e.completion()} for e in ds.split(name)])
        atomic.write_json(tmp / "manifest.json", ds.manifest.to_dict())
    return Path(out)


def data_stats(spec: DataSpec | None = None) -> str:
    """Rows per qtype in the file, items per split, answer-length percentiles (words), as text."""
    ds = load_dataset(spec)
    lines = [f"rows: {ds.report.rows}  (dropped with an empty question or answer: {ds.report.dropped_empty})"]
    if ds.report.qtypes:
        lines.append("rows per qtype:")
        for q, n in sorted(ds.report.qtypes.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"  {q or '(none)':<20} {n:>6}")
    multi = sum(len(e.references) > 1 for e in ds.examples)
    lines.append(f"items (qtype {ds.spec.qtype}): {len(ds.examples)}  ({multi} with several reference answers)")
    lines.append(f"split ({ds.spec.split.strategy}, seed {ds.spec.split.seed}):  " +
                 "  ".join(f"{s} {len(ds.split(s))}" for s in ("train", "validation", "test")))
    lines.append("answer length in words (percentiles):")
    for name in ("train", "validation", "test", "all"):
        pct = answer_length_percentiles(ds.split(name))
        lines.append(f"  {name:<11}" + "  ".join(f"p{p}={v}" for p, v in pct.items()))
    lines.append(f"manifest: {ds.manifest.fingerprint}")
    return "\n".join(lines)
