"""One offline HTML report per run folder (or per set of runs over the same items).

>>> from pathlib import Path
>>> from medqa_bench.report import render_report
>>> render_report([Path("reports/my-run")])            # doctest: +SKIP
PosixPath('reports/my-run/report.html')
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..storage import atomic
from ..errors import RunError, SpecError
from ..schema import Analysis, Results, read_analysis, read_results, spec_analysis

__all__ = ["render_report"]

_PLOTLY_MODES = ("inline", "cdn")


def render_report(run_dirs: list[Path], out: Path | None = None, *, plotly: str = "inline",
                  labels: list[str] | None = None) -> Path:
    """Read ``results.json`` + ``samples.jsonl`` from each run folder and write ``report.html`` atomically.

    The analysis and verdict stored in ``results["analysis"]`` and ``results["verdict"]`` are used when present
    (else :func:`medqa_bench.analysis.analyze` and :func:`medqa_bench.analysis.verdict.build_verdict` compute them).
    Several folders are combined into one comparison when they answered the same items: each run is labelled by its
    folder's name, or by ``labels`` (one per folder, unique), its rows become ``<label>/<system>`` (a baseline or
    reference row several runs share, once), and each run is analysed and judged on its own
    (:func:`medqa_bench.analysis.runs.analyze_runs`), so every statement takes its facts from its own run.

    ``out`` defaults to ``<run>/report.html`` for one run and ``<first run>/combined-report.html`` for several;
    a folder means ``<out>/report.html``. ``plotly="inline"`` embeds plotly.js (fully offline, ~4.6 MB);
    ``"cdn"`` links it from cdn.plot.ly. Raises :class:`RunError` for missing, damaged or incompatible runs and
    :class:`SpecError` for labels that do not fit the folders.
    """
    from ..analysis import ANALYSIS_VERSION, analyze
    from ..analysis.runs import analyze_runs, combine_verdicts
    from ..analysis.verdict import build_verdict
    from .page import render_html
    from .runs import join_runs, load_run, run_labels

    if plotly not in _PLOTLY_MODES:
        raise SpecError(f"plotly={plotly!r}: choose one of {', '.join(_PLOTLY_MODES)}")
    if isinstance(run_dirs, (str, Path)):
        run_dirs = [run_dirs]
    run_dirs = [Path(p) for p in run_dirs]
    if not run_dirs:
        raise RunError("no run folder given; pass at least one folder holding results.json and samples.jsonl")
    names = run_labels(run_dirs, labels)

    loaded = [load_run(p) for p in run_dirs]
    notes: list[str] = []
    if len(loaded) == 1:
        results, samples = loaded[0]
        typed = read_results(results)
        stored, judged = typed.analysis, typed.verdict
        if stored is None or not stored.raw or stored.version != ANALYSIS_VERSION:
            analysis = analyze(results, samples, **_analysis_options(typed))
            verdict = None
            notes.append("The analysis was computed while rendering (results.json held none of this version).")
        else:
            analysis, verdict = dict(stored.raw), dict(judged.raw) if judged else None
        if not verdict:  # reads the analysis only: no statistics of its own
            verdict = build_verdict({**results, "analysis": analysis})
    else:
        joined = join_runs(names, loaded, run_dirs)
        results, samples = joined.results, joined.samples
        analysis = analyze_runs(joined.parts, {n: _analysis_options(r) for n, (r, _) in zip(names, loaded)},
                                order=list(results["systems"]))
        verdict = combine_verdicts({n: ({**r, "analysis": analysis["runs"][n]},
                                        build_verdict({**r, "analysis": analysis["runs"][n]}))
                                    for n, (r, _) in joined.parts.items()})
        typed = read_results(results)
        if typed.signature_conflicts:
            notes.append(
                "Metric signatures differ between runs for "
                + ", ".join(typed.signature_conflicts)
                + ": their values are not directly comparable across runs."
            )
        differ = typed.references_differ
        if differ:
            notes.append(
                f"The references differ from run {names[0]}'s in "
                + ", ".join(f"run {label} ({k} items)" for label, k in differ.items())
                + " (another answer column or data file?): no row is shared with it, each run is scored against its "
                f"own references, and the item explorer shows run {names[0]}'s."
            )
    typed_analysis = read_analysis(analysis)
    if typed_analysis.similarity_metric is None:
        notes.append("No metric with bounds [0, 1] was scored, so the confusion matrices are omitted."
                     if len(loaded) == 1 or not typed_analysis.bounded_metrics else
                     "The runs share no bounded similarity metric analysed alike, so the confusion matrices are "
                     "omitted (each run's own report has them).")

    html = render_html(
        results, samples, analysis, verdict, list(zip(names, [r for r, _ in loaded])), plotly_mode=plotly, notes=notes
    )
    target = _target(run_dirs, out)
    atomic.write_text(target, html)
    return target


def _analysis_options(results: Results | Mapping[str, Any]) -> dict:
    """The options the runner used, as results.json records them: its analysis block, else the run spec's.

    Only thresholds that were given when analysing (source "argument") are passed on: calibrated and default ones
    are recomputed from the samples, and the spec's are read from the spec again, so each keeps its source.
    """
    results = read_results(results)
    stored = results.analysis or Analysis()
    asked = spec_analysis(results.spec)
    opts = {"similarity_metric": stored.similarity_metric or asked.similarity_metric}
    keys = ("t", "t_low", "t_high")
    given = {m: {k: th[k] for k in keys if k in th}
             for m, th in stored.match_thresholds.items() if th.get("source") == "argument"}
    th = stored.thresholds or {}
    if not given and th.get("source") == "argument" and stored.similarity_metric:
        given = {stored.similarity_metric: {k: th[k] for k in keys if k in th}}
    if given:
        opts["thresholds"] = given
    for key in ("seed", "n_bootstrap"):  # a key the analysis holds (even as null) is its; else the spec's
        value = stored.raw[key] if key in stored.raw else getattr(asked, key)
        if value is not None:
            opts[key] = value
    return opts


def _target(run_dirs: list[Path], out: Path | None) -> Path:
    if out is None:
        return run_dirs[0] / ("report.html" if len(run_dirs) == 1 else "combined-report.html")
    out = Path(out)
    return out / "report.html" if out.is_dir() else out
