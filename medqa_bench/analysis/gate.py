"""A gate for CI: does a run folder's verdict let its adapters through? (``medqa-bench check RUN_DIR``)

It reads ``results.json`` alone, the verdict the run recorded (:mod:`medqa_bench.analysis.verdict`): no model, no
samples, no statistic computed again. Each condition is checked for every adapter of the run (rows of kind
``adapter``, their ``+rag`` rows included; ``adapters=`` narrows it) and fails with one line saying why:

- ``primary``: the adapter does not significantly beat its strongest baseline on the run's primary metric (no
  significant difference, a regression, no paired scores of it, or a test that cannot reach significance with the
  items it has). A run folder written before the primary metric was recorded (no ``validity`` block: schema < 2.2),
  or one without a primary metric, cannot be checked: that fails too, with the reason;
- ``regression``: it is significantly worse than its strongest baseline on any metric;
- ``degeneration``: a degeneration warning fires on its own answers (empty, truncated, looping, low diversity, far
  too short or long: :data:`medqa_bench.analysis.degeneration.WARNING_THRESHOLDS`). The baseline rows' degeneration
  is not the adapter's doing and fails nothing (the verdict still warns of it);
- ``leakage`` (not by default): the verdict on it changes without the items that nearly repeat a training item;
- ``weak_metrics`` (not by default): every metric it differs on significantly agrees weakly with expert grades or
  was never measured against them.

:data:`DEFAULT_CONDITIONS` are the first three. :data:`EXIT_FAILED` (1) is the exit status when a condition fails;
bad input (no such folder, an unknown condition or adapter) keeps the CLI's status 2.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

from .. import schema
from ..errors import RunError, SpecError
from ..schema import AdapterVerdict, PrimaryResult, Results, VerdictRow
from ..storage.run_folder import read_results_file
from .degeneration import WARNING_THRESHOLDS, degeneration_found, degeneration_label, degeneration_value

EXIT_PASSED = 0
EXIT_FAILED = 1
DEFAULT_CONDITIONS = ("primary", "regression", "degeneration")


@dataclass(frozen=True)
class Failure:
    """One failed condition of one adapter (or of the run: ``system`` None)."""

    condition: str
    system: str | None
    message: str

    def line(self) -> str:
        return f"failed {self.condition}: {self.message}"


@dataclass(frozen=True)
class GateResult:
    run_dir: Path
    conditions: tuple[str, ...]
    adapters: tuple[str, ...]
    failures: tuple[Failure, ...]

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def exit_status(self) -> int:
        return EXIT_PASSED if self.passed else EXIT_FAILED

    def lines(self) -> list[str]:
        """One line per failed condition; one line saying what passed when none failed."""
        if self.failures:
            return [f.line() for f in self.failures]
        return [f"passed: {', '.join(self.adapters)} on {', '.join(self.conditions)} ({self.run_dir})"]


def _numbers(r: VerdictRow) -> str:
    diff, ci, p = r.diff, r.ci, r.p_holm

    def f(x):
        return "–" if x is None else (f"{x:+.3f}" if abs(x) < 10 else f"{x:+.2f}")

    cis = f" [{f(ci[0])}, {f(ci[1])}]" if ci[0] is not None and ci[1] is not None else ""
    ps = "–" if p is None else ("< 0.001" if p < 0.001 else f"{p:.3f}")
    return f"{f(diff)}{cis} vs {r.against}, p_holm {ps}"


def _older(version: str, than: str) -> bool:
    def parts(v: str) -> tuple[int, ...]:
        return tuple(int(x) for x in v.split(".") if x.isdigit())

    return parts(version) < parts(than)


def _primary(results: Results, name: str, v: AdapterVerdict) -> str | None:
    verdict = results.verdict
    if "primary" not in verdict.raw or results.validity is None:  # a verdict written before 2.2 has no primary key
        version = str(results.schema_version or "")
        why = (f"its results.json (schema {version}) was written before the primary metric was recorded"
               if _older(version, "2.2") else "its results.json records no validity figures, so no primary metric")
        return (f"{name} cannot be checked on the primary metric: {why}; `medqa-bench score RUN_DIR` records it "
                "(no language model loaded), or leave 'primary' out of --conditions")
    primary = verdict.primary or {}
    if not primary.get("metric"):
        return (f"{name} cannot be checked on the primary metric: the run has none ({primary.get('reason')}); "
                "leave 'primary' out of --conditions")
    p = v.primary or PrimaryResult()
    metric = primary["metric"]
    outcome = p.outcome
    if outcome == "improves":
        return None
    if outcome == "regresses":
        return f"{name} is significantly worse than {p.against} on the primary metric {metric} ({_numbers(p)})"
    if outcome == "no_difference" and p.reachable is False:
        advice = "; evaluate more items (--limit)" if p.n_differ else ""  # none differ: more items won't do
        return (f"{name} cannot be shown to beat {p.against} on the primary metric {metric}: it cannot reach "
                f"significance, {p.why_unreachable} ({_numbers(p)}){advice}")
    if outcome == "no_difference":
        return f"{name} does not significantly beat {p.against} on the primary metric {metric} ({_numbers(p)})"
    return f"{name} was not compared on the primary metric {metric} (no paired scores of it)"


def _regression(results: Results, name: str, v: AdapterVerdict) -> str | None:
    rows = v.regresses
    if not rows:
        return None
    listing = "; ".join(f"{r.metric} {_numbers(r)}" for r in rows)
    return (f"{name} is significantly worse than its strongest baseline on {len(rows)} "
            f"metric{'s' if len(rows) != 1 else ''}: {listing}")


def _degeneration(results: Results, name: str, v: AdapterVerdict) -> str | None:
    found = [w for w in v.warnings if w.get("code") in WARNING_THRESHOLDS]
    if not found:
        return None
    recorded = {w.get("code"): w for w in degeneration_found(results, name)}
    labels = []
    for w in found:
        full = {**recorded.get(w["code"], {}), **w}
        threshold = full.get("threshold")
        side = "below" if WARNING_THRESHOLDS[w["code"]].get("above") is False else "above"
        bar = degeneration_value(w["code"], threshold) if isinstance(threshold, (int, float)) else None
        labels.append(degeneration_label(w["code"], full.get("value")) + (f" (warning {side} {bar})" if bar else ""))
    return f"{name}'s answers degenerate: {'; '.join(labels)}"


def _leakage(results: Results, name: str, v: AdapterVerdict) -> str | None:
    changed = v.clean_subset.changed if v.clean_subset else []
    if not changed:
        return None
    return (f"{name}: without the items that nearly repeat a training item the verdict changes on "
            f"{', '.join(changed)}")


def _weak_metrics(results: Results, name: str, v: AdapterVerdict) -> str | None:
    weak = next((w for w in v.warnings if w.get("code") == "weak_metrics"), None)
    return f"{name}: {weak['message']}" if weak else None


CONDITIONS: dict[str, Callable[[Results, str, AdapterVerdict], str | None]] = {
    "primary": _primary, "regression": _regression, "degeneration": _degeneration, "leakage": _leakage,
    "weak_metrics": _weak_metrics,
}


def _did_you_mean(name: str, known) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def parse_conditions(text: str | None) -> tuple[str, ...]:
    """``"primary,regression"`` → the conditions, in the order given; None → the defaults; ``all`` → every one.
    An unknown name is a :class:`SpecError` that answers "did you mean …"."""
    if text is None:
        return DEFAULT_CONDITIONS
    names = [x.strip() for x in text.split(",") if x.strip()]
    if names == ["all"]:
        return tuple(CONDITIONS)
    if not names:
        raise SpecError(f"--conditions names no condition; choose from {', '.join(CONDITIONS)} (or all)")
    unknown = [f"'{name}'{_did_you_mean(name, CONDITIONS)}" for name in names if name not in CONDITIONS]
    if unknown:
        raise SpecError(f"unknown condition {', '.join(unknown)}; the conditions are {', '.join(CONDITIONS)}, or all")
    return tuple(dict.fromkeys(names))


def read_results(run_dir: str | Path) -> Results:
    """``results.json`` of a run folder as its typed record, checked for what the gate reads: the schema's major
    version, a verdict."""
    folder = Path(run_dir)
    path = folder / "results.json"
    if not folder.is_dir():
        raise RunError(f"run folder {folder} does not exist")
    if not path.is_file():
        raise RunError(f"{folder} holds no results.json: not a run folder (run `medqa-bench run` first)")
    results = read_results_file(path)
    if not isinstance(results.get("verdict"), dict) or not isinstance(results["verdict"].get("adapters"), dict):
        raise RunError(f"{path} holds no verdict; `medqa-bench score {folder}` analyses the run again")
    return schema.read_results(results)


def judged_adapters(results: Results | Mapping[str, Any]) -> list[str]:
    """The verdict's rows of kind ``adapter`` (a ``+rag`` baseline row is judged too, but is no adapter)."""
    results = schema.read_results(results)
    kinds = results.analysis.kinds if results.analysis else {}
    return [name for name in results.verdict.adapters if (kinds.get(name) or results.system(name).kind) == "adapter"]


def check_results(results: Results | Mapping[str, Any], conditions: tuple[str, ...] = DEFAULT_CONDITIONS,
                  adapters: tuple[str, ...] | None = None) -> tuple[tuple[str, ...], list[Failure]]:
    """``(the adapters checked, the failures)`` of a loaded ``results.json`` (its typed record or its object, holding
    a verdict)."""
    results = schema.read_results(results)
    known = judged_adapters(results)
    for name in adapters or ():
        if name not in known:
            raise SpecError(f"--adapter '{name}' is not an adapter of this run{_did_you_mean(name, known)}; its "
                            f"adapters are: {', '.join(known) or 'none'}")
    chosen = tuple(adapters) if adapters else tuple(known)
    if not chosen:
        return chosen, [Failure("adapters", None, "the run evaluated no adapter: there is nothing to let through")]
    verdicts = results.verdict.adapters
    failures = []
    for condition in conditions:
        for name in chosen:
            message = CONDITIONS[condition](results, name, verdicts[name])
            if message:
                failures.append(Failure(condition, name, message))
    return chosen, failures


def check_run(run_dir: str | Path, conditions: tuple[str, ...] = DEFAULT_CONDITIONS,
              adapters: tuple[str, ...] | None = None) -> GateResult:
    """Check a run folder's adapters against ``conditions``.

    >>> result = check_run("reports/headline-other-types")            # doctest: +SKIP
    >>> result.exit_status, result.lines()[1][:60]                    # doctest: +SKIP
    (1, 'failed regression: s07-ref-all is significantly worse than i')
    """
    results = read_results(run_dir)
    chosen, failures = check_results(results, conditions, adapters)
    return GateResult(Path(run_dir), tuple(conditions), chosen, tuple(failures))
