"""The validity figures a run records beside each metric, and the floor the verdict holds them to.

A run reads one validity file (:class:`ValiditySource`): by default the **bundled measurement**, ``measured.json`` in
this package, the compact form (:func:`compact`) of the ``validity.json`` that ``benchmarks/bench_validity.py
--write-measured`` writes from the bundled judged set; or a user's own ``validity.json`` (``--validity FILE``, from
``medqa-bench metrics validate``). The compact form keeps numbers and our own definitions only: no answer, question,
boilerplate text or per-candidate score of the judged set (its data are not ours to commit).

:func:`run_validity` matches the file's rows to a run's metrics **by signature**: a metric whose signature differs
from the measured one (other parameters, another library version, a plugin of the same name) is "not measured", with
the reason; it never borrows another configuration's figures. ``nll`` metrics (loss, perplexity) score the model's
likelihood of the reference, not an answer, and ``context`` metrics need a system's passages: neither can be measured
against expert grades of answers. The run's **primary metric** is :func:`~.validate.choose_primary` over the measured
metrics of the run (one rule, :data:`~.schema.PRIMARY_RULE`).

**The floor** (:data:`WITHIN_QUESTION_FLOOR`): a metric whose within-question Spearman with the expert grade (point
estimate) is below 0.3 agrees weakly with the experts. 0.3 is the lower bound of a "moderate" correlation by Cohen's
convention (1988), fixed before any model's results were looked at, not tuned on them. The verdict warns when every
metric a conclusion rests on is below it or unmeasured (:mod:`medqa_bench.analysis.verdict`).

>>> source = read_validity_source(None)                                # doctest: +SKIP
>>> run_validity({"rouge2": info}, source)["primary"]["metric"]         # doctest: +SKIP
'rouge2'
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Optional, TypedDict

from ..errors import DataError
from .schema import PRIMARY_RULE, Interval, JudgedSetInfo, RobustnessInfo, Settings, WinRate
from .stats import FIGURES

MEASURED_FILE = "measured.json"
BUNDLED = "bundled"
#: The figure the floor applies to and its value (module docstring): one definition, recorded in results.json.
FLOOR_FIGURE = "within_question_spearman"
WITHIN_QUESTION_FLOOR = 0.3
FLOOR_RULE = (f"a metric whose within-question Spearman with the expert grade (point estimate) is below "
              f"{WITHIN_QUESTION_FLOOR} agrees weakly with the experts; {WITHIN_QUESTION_FLOOR} is the lower bound of "
              "a moderate correlation by Cohen's convention, fixed in advance, not tuned on any model's results")
#: Why a metric kind cannot be measured against expert grades of answers.
NOT_GRADABLE = {
    "nll": "not an answer-quality metric: it scores the model's likelihood of the reference answer, not an answer, "
           "so it cannot be measured against expert grades of answers",
    "context": "needs the passages a system was given, which a graded answer does not have: not measured against "
               "expert grades",
}
#: Comparisons kept in the compact form: the two figures the primary rule and the floor read.
_COMPACT_FIGURES = ("within_question_spearman", "auc_on_topic")
_ROW_KEYS = ("name", "kind", "higher_is_better", "signature", "source", "n_scored", "n_unscored", "figures",
             "robustness", "passes_robustness")


class MeasuredMetric(TypedDict):
    """A row of ``validity.json`` without its per-candidate scores and timing."""

    name: str
    kind: str  # "metric" | "baseline"
    higher_is_better: bool
    signature: str
    source: str
    n_scored: int
    n_unscored: int
    figures: dict[str, Interval]
    robustness: dict[str, WinRate]
    passes_robustness: bool


class MeasuredValidity(TypedDict):
    """``measured.json``: a :class:`~.schema.Validity` (version "1") reduced to numbers and definitions."""

    version: str
    compact_of: dict[str, Any]  # the full file's created, medqa_bench_version and the comparisons kept
    created: str
    medqa_bench_version: str
    judged_set: JudgedSetInfo
    settings: Settings
    figures: dict[str, str]
    metrics: dict[str, MeasuredMetric]
    skipped_metrics: list[dict[str, str]]
    comparisons: list[dict[str, Any]]
    robustness: RobustnessInfo  # without the boilerplate text and the other-reference map
    primary: Optional[str]
    primary_rule: str
    primary_reason: str


def compact(data: Mapping[str, Any]) -> MeasuredValidity:
    """The numbers of a ``validity.json`` (or of a compact one: idempotent), with no text of the judged set."""
    robustness = data.get("robustness") or {}
    return {
        "version": data["version"],
        "compact_of": data.get("compact_of") or {"created": data.get("created"),
                                                 "medqa_bench_version": data.get("medqa_bench_version"),
                                                 "comparisons": list(_COMPACT_FIGURES)},
        "created": data.get("created", ""),
        "medqa_bench_version": data.get("medqa_bench_version", ""),
        "judged_set": {k: v for k, v in (data.get("judged_set") or {}).items()},
        "settings": dict(data.get("settings") or {}),
        "figures": dict(data.get("figures") or {}),
        "metrics": {name: {k: row[k] for k in _ROW_KEYS if k in row} for name, row in data["metrics"].items()},
        "skipped_metrics": [dict(s) for s in data.get("skipped_metrics") or []],
        "comparisons": [dict(c) for c in data.get("comparisons") or [] if c.get("figure") in _COMPACT_FIGURES],
        "robustness": {k: robustness[k] for k in ("perturbations", "good_candidates", "skipped", "pass_rule")
                       if k in robustness},
        "primary": data.get("primary"),
        "primary_rule": data.get("primary_rule", PRIMARY_RULE),
        "primary_reason": data.get("primary_reason", ""),
    }


def write_measured(path: str | Path, data: Mapping[str, Any]) -> Path:
    """Write the compact form of ``data`` (a validity.json's content) as ``measured.json``, atomically."""
    from ..storage import atomic

    path = Path(path)
    atomic.write_text(path, json.dumps(compact(data), indent=1, ensure_ascii=False, allow_nan=False) + "\n")
    return path


def bundled_path() -> Path:
    return Path(str(resources.files(__package__).joinpath(MEASURED_FILE)))


@dataclass(frozen=True)
class ValiditySource:
    """A validity file read and checked: its compact content, ``source`` ("bundled" or the path as given) and the
    sha256 of its bytes."""

    data: MeasuredValidity
    source: str
    fingerprint: str


def read_validity_source(path: str | Path | None) -> ValiditySource:
    """The bundled measurement (``path`` None or "bundled") or a user's ``validity.json``, checked; a one-line
    :class:`DataError` for a file that is missing, not JSON, of another version or without metric rows."""
    from .validate import load_validity

    bundled = path is None or str(path) == BUNDLED
    file = bundled_path() if bundled else Path(path)
    if not bundled and not file.exists():
        raise DataError(f"validity file {path} does not exist; give a validity.json written by `medqa-bench metrics "
                        "validate` (--validity FILE), or 'bundled' for the bundled measurement")
    if not bundled and file.is_dir():
        file = file / "validity.json" if (file / "validity.json").is_file() else file
        if file.is_dir():
            raise DataError(f"--validity {path}: a folder without validity.json; give the validity.json that "
                            "`medqa-bench metrics validate` wrote")
    data = load_validity(file)
    _check_rows(data, file)
    raw = file.read_bytes()
    return ValiditySource(compact(data), BUNDLED if bundled else str(path), "sha256:" + hashlib.sha256(raw).hexdigest())


def _check_rows(data: Mapping[str, Any], file: Path) -> None:
    """Every key :func:`run_validity` and the primary rule read, named by its dotted key when missing."""
    metrics = data.get("metrics")
    if not isinstance(metrics, dict) or not metrics:
        raise DataError(f"{file}: validity.json has no metric rows ('metrics' is empty or missing); run "
                        "`medqa-bench metrics validate` again")
    for name, row in metrics.items():
        where = f"{file}: validity.json key 'metrics.{name}"
        if not isinstance(row, dict):
            raise DataError(f"{where}' is not a mapping")
        for key, tp in (("kind", str), ("signature", str), ("figures", dict), ("robustness", dict),
                        ("passes_robustness", bool)):
            if not isinstance(row.get(key), tp):
                raise DataError(f"{where}.{key}' is missing or not a {tp.__name__}; run `medqa-bench metrics "
                                "validate` again")
        for figure in FIGURES:
            interval = row["figures"].get(figure)
            if not isinstance(interval, dict) or "value" not in interval:
                raise DataError(f"{where}.figures.{figure}' is missing; run `medqa-bench metrics validate` again")


# ------------------------------------------------------------------------------------------- a run's block


def _measured_entry(row: Mapping[str, Any]) -> dict[str, Any]:
    wq = row["figures"].get(FLOOR_FIGURE) or {}
    return {"measured": True, "signature": row["signature"], "figures": row["figures"],
            "robustness": row["robustness"], "passes_robustness": row["passes_robustness"],
            "n_scored": row.get("n_scored"), "n_unscored": row.get("n_unscored"),
            "below_floor": None if wq.get("value") is None else wq["value"] < WITHIN_QUESTION_FLOOR}


def _signature_difference(measured: str, run: str) -> str:
    """The ``|``-separated parts that differ, e.g. "rouge-score=0.1.2 measured, rouge-score=0.1.3 here"."""
    a, b = measured.split("|"), run.split("|")
    only_a, only_b = [p for p in a if p not in b], [p for p in b if p not in a]
    if not only_a and not only_b:
        return f"measured '{measured}', here '{run}'"
    return f"measured with {', '.join(only_a) or '(nothing else)'}, here {', '.join(only_b) or '(nothing else)'}"


def _where(source: ValiditySource) -> str:
    return "the bundled measurement" if source.source == BUNDLED else source.source


def run_validity(metrics: Mapping[str, Mapping[str, Any]], source: ValiditySource) -> dict[str, Any]:
    """``results["validity"]`` (:class:`medqa_bench.schema.RunValidity`) for a run's metric infos
    (``results["metrics"]``): each metric's figures from ``source`` where its signature was measured, else why not;
    the floor; the primary metric among them by the primary rule."""
    from .validate import choose_primary

    rows = source.data["metrics"]
    where = _where(source)
    entries: dict[str, dict[str, Any]] = {}
    matched: dict[str, Any] = {}
    for name, info in metrics.items():
        signature = info.get("signature") or ""
        row = rows.get(name)
        if info.get("kind") in NOT_GRADABLE:
            reason = f"{name} is {NOT_GRADABLE[info['kind']]}" if info["kind"] == "nll" else \
                f"{name} {NOT_GRADABLE[info['kind']]}"
        elif row is None or row.get("kind") != "metric":
            reason = (f"{name} is not in {where}; `medqa-bench metrics validate --metrics {name}` measures it, "
                      "and --validity FILE gives its figures to a run")
        elif row["signature"] != signature:
            reason = (f"{name} was measured in another configuration ({_signature_difference(row['signature'], signature)}); "
                      "another configuration's figures are not used")
        else:
            entries[name] = _measured_entry(row)
            matched[name] = row
            continue
        entries[name] = {"measured": False, "signature": signature, "reason": reason}
    if matched:
        primary, reason = choose_primary(matched)
    else:
        primary, reason = None, f"no metric of this run was measured in {where}"
    judged = source.data["judged_set"]
    return {
        "source": source.source,
        "fingerprint": source.fingerprint,
        "created": source.data.get("created", ""),
        "medqa_bench_version": source.data.get("medqa_bench_version", ""),
        "judged_set": {"name": judged.get("name"), "fingerprint": judged.get("fingerprint"),
                       "counts": judged.get("counts") or {}},
        "settings": source.data.get("settings") or {},
        "floor": {"figure": FLOOR_FIGURE, "value": WITHIN_QUESTION_FLOOR, "rule": FLOOR_RULE},
        "primary": {"metric": primary, "rule": PRIMARY_RULE, "reason": reason},
        "metrics": entries,
    }
