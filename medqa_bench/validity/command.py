"""``medqa-bench metrics validate``: read the judged set, pick the metrics, validate, write, summarise.

Everything that can be refused is refused before a metric scores (so before any model loads): the options, an
existing output that ``--overwrite`` does not allow to replace, the judged file, the metric names and parameters.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..errors import SpecError
from .schema import Validity

log = logging.getLogger(__name__)

VALIDITY_FILE = "validity.json"
PAGE_FILE = "validity.html"
DEFAULT_OUT = Path("reports") / "validity"


@dataclass(frozen=True)
class ValidateOptions:
    """What ``metrics validate`` was asked; ``file`` None means the bundled judged set."""

    file: str | None = None
    #: the column flags given, as keyword arguments of :func:`~.judged.read_judged_file` (``group_column``, …)
    columns: dict[str, Any] = field(default_factory=dict)
    metrics: tuple[str, ...] | None = None  # None: default_metrics()
    metric_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    plugins: tuple[str, ...] = ()
    good_threshold: float = 3.0
    related_grade: float = 2.0
    n_bootstrap: int = 2000
    seed: int = 0
    out: str | None = None
    overwrite: bool = False

    def out_dir(self) -> Path:
        if self.out:
            return Path(self.out)
        if self.file is None:
            return DEFAULT_OUT / "medquad-judged"
        name = Path(self.file).name
        while Path(name).suffix.lower() in (".gz", ".csv", ".tsv", ".jsonl", ".ndjson", ".json"):
            name = Path(name).stem
        return DEFAULT_OUT / (name or "judged")


def default_metrics(plugins: Sequence[str] = ()) -> list[str]:
    """Every built-in metric that scores an answer against a reference without a language model: kind "reference",
    not an LLM judge (those are validated when named, ``--metrics judge``)."""
    from ..metrics import list_metrics
    from ..metrics.registry import GROUPS

    judges = {m for members in GROUPS.values() for m in members}
    rows = [r for r in list_metrics(plugins) if r["source"] == "builtin" and r["name"] not in judges
            and not r["name"].startswith("judge")]
    for r in rows:
        if r.get("error"):  # e.g. a metric whose corpus has not been fetched: the others are still validated
            log.warning("not validating %s: %s", r["name"], r["error"])
    return [r["name"] for r in rows if not r.get("error") and r.get("kind") == "reference"]


def _check_options(options: ValidateOptions) -> None:
    for name, value in (("--good-threshold", options.good_threshold), ("--related-grade", options.related_grade)):
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise SpecError(f"{name} must be a number, not {value!r}")
    if options.related_grade >= options.good_threshold:
        raise SpecError(f"--related-grade ({options.related_grade:g}) must be below --good-threshold "
                        f"({options.good_threshold:g})")
    if options.file is None and options.columns:
        flags = ", ".join("--" + k.replace("_", "-") for k in options.columns)
        raise SpecError(f"{flags} map the columns of a judged FILE; the bundled set needs none (give a FILE)")
    if options.n_bootstrap < 1:
        raise SpecError(f"--bootstrap must be at least 1, not {options.n_bootstrap}")


def run_validate(options: ValidateOptions, *, progress: bool = True) -> tuple[Validity, Path]:
    """Validate, write ``validity.json`` and ``validity.html`` into the output folder; return the record and folder."""
    from ..storage import atomic
    from ..metrics import resolve_metrics
    from .judged import bundled_judged_set, read_judged_file
    from .page import render_validity_html
    from .validate import validate, write_validity

    _check_options(options)
    out = options.out_dir()
    for name in (VALIDITY_FILE, PAGE_FILE):
        if (out / name).exists() and not options.overwrite:
            raise FileExistsError(str(out / name))
    if options.file is None:
        judged = bundled_judged_set()
    else:
        judged = read_judged_file(options.file, **options.columns, good_threshold=options.good_threshold)
    names = list(options.metrics) if options.metrics else default_metrics(options.plugins)
    metrics = resolve_metrics(names, plugins=options.plugins, params=options.metric_params or None)
    data = validate(judged, metrics, good_threshold=options.good_threshold, related_grade=options.related_grade,
                    n_bootstrap=options.n_bootstrap, seed=options.seed, progress=progress)
    html = render_validity_html(data)
    write_validity(out / VALIDITY_FILE, data)
    atomic.write_text(out / PAGE_FILE, html)
    return data, out


def _cell(interval: dict, digits: int = 2) -> str:
    if interval.get("value") is None:
        return "–"
    if interval.get("ci_low") is None:
        return f"{interval['value']:.{digits}f}"
    return f"{interval['value']:.{digits}f} [{interval['ci_low']:.{digits}f}, {interval['ci_high']:.{digits}f}]"


def format_table(data: Validity) -> str:
    """The terminal summary: one row per metric, then the primary metric and why."""
    header = ["metric", "Spearman", "within-q Spearman", "pairwise acc", "AUC good", "AUC on-topic",
              "robustness min win rate"]
    lines = []
    for row in data["metrics"].values():
        f = row["figures"]
        worst_name, worst = min(row["robustness"].items(),
                                key=lambda kv: kv[1]["ci_low"] if kv[1]["ci_low"] is not None else -1.0)
        robust = f"{_cell(worst)} {worst_name}" + (" (passes)" if row["passes_robustness"] else "")
        name = row["name"] + (" (baseline)" if row["kind"] == "baseline" else "")
        if row["n_unscored"]:
            name += f" ({row['n_unscored']} unscored)"
        lines.append([name, _cell(f["spearman"]), _cell(f["within_question_spearman"]),
                      _cell(f["pairwise_accuracy"]), _cell(f["auc_good"]), _cell(f["auc_on_topic"]), robust])
    widths = [max(len(r[k]) for r in [header, *lines]) for k in range(len(header))]
    text = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *lines]]
    counts = data["judged_set"]["counts"]
    text.insert(0, f"{data['judged_set']['name']}: {counts['candidates']} candidates of {counts['questions']} "
                   f"questions; 95% CIs from {data['settings']['n_bootstrap']} resamples of questions")
    for s in data["skipped_metrics"]:
        text.append(f"not validated: {s['name']}: {s['reason']}")
    text.append(f"primary metric: {data['primary'] or 'none'}: {data['primary_reason']}")
    return "\n".join(text)
