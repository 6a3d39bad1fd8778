"""Degeneration in plain view: did a system stop, answer at all, loop, or run to the token budget?

Overlap metrics say nothing about *why* an answer scores low. An adapter that never learned to stop writes until
``max_new_tokens`` and is then compared, cut off, with a complete reference; one that loops scores on recall-type
metrics with one sentence said ten times. These statistics, computed per system from the sample records
(``samples.jsonl``), say so before anyone reads a score.

Definitions (words are the lowercased ``\\w+`` tokens of a text; an item counts for a system when its sample
record holds a record for that system; a missing prediction is the empty text):

- **stop reason** of an item: ``stop_reason`` of the system's record: ``"eos"`` (the model ended its turn),
  ``"stop"`` (a stop sequence such as ``### Question`` ended it), ``"length"`` (it hit ``max_new_tokens``), or
  ``None`` (a reference row that generates nothing, e.g. a retrieved training answer). Records written before
  ``stop_reason`` existed are read from ``truncated``: ``True`` -> ``"length"``, ``False`` -> ``"eos"`` (neither
  key -> ``None``).
- ``stop_rate``: items whose stop reason is ``"eos"`` or ``"stop"``, over items whose stop reason is not
  ``None``. ``truncation_share``: items whose stop reason is ``"length"``, over the same items. Both are
  ``None`` when no item has a stop reason (a reference row). ``stop_reasons`` counts each reason seen.
- ``empty_share``: items whose prediction is empty after ``strip()``, over ``n``.
- ``repeated_4gram_share``: mean, over items whose prediction has at least 4 words, of (word 4-grams equal to
  an earlier 4-gram of the same prediction) / (word 4-grams). 0 without repetition; ``"a b c d"`` said three
  times gives 5/9; a long loop tends to 1.
- ``distinct_2``: mean, over items whose prediction has at least 2 words, of (distinct word bigrams) / (word
  bigrams). 1 without a repeated pair, low for a loop.
- ``length_ratio``: median, over items whose first reference has at least one word, of words(prediction) /
  words(first reference). The first reference is ``reference``, else ``references[0]``.
- ``n``: items counted. A statistic with no item to average is ``None``.

:func:`degeneration_warnings` compares the statistics with :data:`WARNING_THRESHOLDS` and words each breach
for a reader; a value equal to its threshold does not warn.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from collections.abc import Mapping
from typing import Any, Iterable, Optional

from ..schema import Results, read_results

__all__ = [
    "WARNING_THRESHOLDS",
    "words",
    "text_repetition",
    "stop_reason",
    "degeneration_stats",
    "degeneration_warnings",
    "degeneration_label",
    "degeneration_value",
    "degeneration_found",
]

_WORD = re.compile(r"\w+")
STOPPED = frozenset({"eos", "stop"})  # the generation ended on its own rather than at the budget

# code -> the statistic it reads, the side that warns (strictly beyond the value), the value, and why it matters.
WARNING_THRESHOLDS: dict[str, dict] = {
    "empty": {
        "stat": "empty_share", "above": True, "threshold": 0.05,
        "reason": "an empty answer scores zero on every metric, so the mean mixes no answer with wrong answers",
    },
    "truncation": {
        "stat": "truncation_share", "above": True, "threshold": 0.25,
        "reason": "overlap metrics compare cut-off text",
    },
    "repetition": {
        "stat": "repeated_4gram_share", "above": True, "threshold": 0.20,
        "reason": "a looping answer repeats itself; its length and recall-type scores are not content",
    },
    "low_diversity": {
        "stat": "distinct_2", "above": False, "threshold": 0.50,
        "reason": "most word pairs recur, the text goes round in circles",
    },
    "too_short": {
        "stat": "length_ratio", "above": False, "threshold": 0.33,
        "reason": "too short to cover the reference; recall-type metrics fall for length alone",
    },
    "too_long": {
        "stat": "length_ratio", "above": True, "threshold": 3.0,
        "reason": "far longer than the reference; precision-type metrics fall for length alone",
    },
}


def words(text: str | None) -> list[str]:
    """Lowercased ``\\w+`` tokens: ``words("Take 2 pills, twice!") == ["take", "2", "pills", "twice"]``."""
    return _WORD.findall((text or "").lower())


def _ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def text_repetition(text: str | None) -> tuple[Optional[float], Optional[float]]:
    """(repeated 4-gram share, distinct-2) of one text; each ``None`` when the text has too few words.

    >>> text_repetition("a b c d a b c d a b c d")  # 9 4-grams, 5 repeat an earlier one; 4 distinct of 11 bigrams
    (0.5555555555555556, 0.36363636363636365)
    >>> text_repetition("one word")
    (None, 1.0)
    """
    tokens = words(text)
    rep = None
    if len(tokens) >= 4:
        grams = _ngrams(tokens, 4)
        rep = (len(grams) - len(set(grams))) / len(grams)  # every occurrence after the first is a repeat
    dist = None
    if len(tokens) >= 2:
        pairs = _ngrams(tokens, 2)
        dist = len(set(pairs)) / len(pairs)
    return rep, dist


def stop_reason(record: dict) -> Optional[str]:
    """The record's ``stop_reason``; for records written before it existed, ``truncated`` read as one."""
    if "stop_reason" in record:
        return record["stop_reason"]
    if record.get("truncated") is None:
        return None
    return "length" if record["truncated"] else "eos"


def _first_reference(sample: dict) -> str:
    if sample.get("reference"):
        return sample["reference"]
    refs = sample.get("references") or []
    return refs[0] if refs and isinstance(refs[0], str) else ""


def _mean(values: list[float]) -> Optional[float]:
    return sum(values) / len(values) if values else None


def degeneration_stats(samples: list[dict], systems: list[str]) -> dict[str, dict]:
    """Per system: ``n``, ``stop_rate``, ``truncation_share``, ``stop_reasons``, ``empty_share``,
    ``repeated_4gram_share``, ``distinct_2``, ``length_ratio`` (see the module docstring); JSON-ready.

    >>> s = [{"id": "q1", "reference": "rest and fluids",
    ...       "systems": {"ft": {"prediction": "rest rest rest rest rest", "stop_reason": "length"}}}]
    >>> st = degeneration_stats(s, ["ft"])["ft"]
    >>> st["truncation_share"], st["repeated_4gram_share"], st["length_ratio"]
    (1.0, 0.5, 1.6666666666666667)
    """
    ref_words = {id(s): len(words(_first_reference(s))) for s in samples}
    out: dict[str, dict] = {}
    for name in systems:
        n = empty = 0
        reasons: Counter = Counter()
        reps, dists, ratios = [], [], []
        for s in samples:
            rec = (s.get("systems") or {}).get(name)
            if rec is None:
                continue
            n += 1
            reason = stop_reason(rec)
            if reason is not None:
                reasons[reason] += 1
            text = rec.get("prediction") or ""
            if not text.strip():
                empty += 1
            rep, dist = text_repetition(text)
            if rep is not None:
                reps.append(rep)
            if dist is not None:
                dists.append(dist)
            if ref_words[id(s)]:
                ratios.append(len(words(text)) / ref_words[id(s)])
        known = sum(reasons.values())
        out[name] = {
            "n": n,
            "stop_rate": sum(reasons[r] for r in STOPPED) / known if known else None,
            "truncation_share": reasons["length"] / known if known else None,
            "stop_reasons": dict(sorted(reasons.items())),
            "empty_share": empty / n if n else None,
            "repeated_4gram_share": _mean(reps),
            "distinct_2": _mean(dists),
            "length_ratio": statistics.median(ratios) if ratios else None,
        }
    return out


def _share(x: float) -> str:
    return f"{x:.0%}" if x >= 0.1 else f"{x:.1%}"  # one decimal near small thresholds: 5.1% is not "5%"


def _message(code: str, system: str, value: float, threshold: float, max_new_tokens: Optional[int]) -> str:
    reason = WARNING_THRESHOLDS[code]["reason"]
    if code == "empty":
        return f"{_share(value)} of {system}'s answers are empty (warning above {_share(threshold)}): {reason}"
    if code == "truncation":
        budget = f"the {max_new_tokens}-token budget" if max_new_tokens else "the token budget (max_new_tokens)"
        return f"{_share(value)} of {system}'s answers hit {budget}: {reason}"
    if code == "repetition":
        return (f"on average {_share(value)} of the word 4-grams in {system}'s answers repeat an earlier one "
                f"(warning above {_share(threshold)}): {reason}")
    if code == "low_diversity":
        return (f"{system}'s answers have distinct-2 {value:.2f}, only {_share(value)} of their word pairs are "
                f"distinct (warning below {threshold:.2f}): {reason}")
    side = "below" if code == "too_short" else "above"
    return (f"{system}'s answers are a median {value:.2f}x the length of the reference in words "
            f"(warning {side} {threshold:g}x): {reason}")


def degeneration_warnings(
    stats: dict[str, dict], *, max_new_tokens: Optional[int] = None, skip: Iterable[str] = ()
) -> list[dict]:
    """JSON-ready warnings, systems in the order of ``stats`` and codes in that of :data:`WARNING_THRESHOLDS`.

    Each is ``{"code", "system", "value", "threshold", "message"}``. ``max_new_tokens`` puts the budget into the
    truncation message; systems in ``skip`` (e.g. reference rows) are not checked. A ``None`` statistic never
    warns, so a reference row without stop reasons gets no truncation warning.

    >>> w = degeneration_warnings({"ft": {"truncation_share": 0.98}}, max_new_tokens=512)
    >>> w[0]["message"]
    "98% of ft's answers hit the 512-token budget: overlap metrics compare cut-off text"
    """
    skipped = set(skip)
    out = []
    for system, st in stats.items():
        if system in skipped:
            continue
        for code, rule in WARNING_THRESHOLDS.items():
            value, threshold = st.get(rule["stat"]), rule["threshold"]
            if value is None or not (value > threshold if rule["above"] else value < threshold):
                continue
            out.append({
                "code": code,
                "system": system,
                "value": float(value),
                "threshold": threshold,
                "message": _message(code, system, float(value), threshold, max_new_tokens),
            })
    return out


# The few words a warning is named by where there is no room for its message (the terminal's verdict, the gate).
_DEGENERATION_WORDS = {"empty": "empty", "truncation": "truncated", "repetition": "repeated 4-grams",
                       "low_diversity": "distinct-2", "too_short": "median length", "too_long": "median length"}


def degeneration_value(code: str, value: float) -> str:
    """A degeneration statistic (or its threshold) as its warning reads it: "79%", "0.29", "3.14x"."""
    if code in ("empty", "truncation", "repetition"):
        return f"{value:.0%}"
    if code in ("too_short", "too_long"):
        return f"{value:.2f}x".replace(".00x", "x")
    return f"{value:.2f}"


def degeneration_label(code: str, value: float | None) -> str:
    """A degeneration warning in a few words ("truncated 79%"), for the terminal and the gate."""
    word = _DEGENERATION_WORDS.get(code, code.replace("_", " "))
    return word if value is None else f"{word} {degeneration_value(code, value)}"


def degeneration_found(results: Results | Mapping[str, Any], system: str) -> list[dict]:
    """The degeneration warnings of ``system`` as the analysis recorded them (``code``, ``value``, ``threshold``,
    ``message``): the verdict's own copies lack the values in run folders written before it kept them."""
    analysis = read_results(results).analysis
    return [w for w in (analysis.degeneration.warnings if analysis else []) if w.get("system") == system]
