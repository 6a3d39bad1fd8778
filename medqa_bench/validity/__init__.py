"""Validity of the instruments: each metric's agreement with expert grades and its robustness, with uncertainty.

``medqa-bench metrics validate`` in four stages, one module each:

- :mod:`.judged`: the judged set (the bundled MedQuAD leave-one-out set, or a user's CSV/JSONL) as
  :class:`JudgedCandidate` records;
- :mod:`.stats`: Spearman, Kendall τ-b, within-question Spearman, pairwise accuracy, AUCs, each with a CI from a
  bootstrap over questions, and metric-against-metric comparisons with Holm's correction;
- :mod:`.robustness`: five answers a good answer must beat, and each metric's win rate against them;
- :mod:`.validate`: scoring with the metrics and the ``validity.json`` record (:mod:`.schema`); :mod:`.page` renders
  ``validity.html`` from it, :mod:`.command` is the command;
- :mod:`.measured`: what a run records from a validity file (the bundled ``measured.json`` or ``--validity FILE``):
  each metric's figures matched by signature, the floor, the primary metric.

>>> from medqa_bench.validity import bundled_judged_set, validate          # doctest: +SKIP
"""

from __future__ import annotations

from .judged import JudgedCandidate, JudgedSet, bundled_judged_set, read_judged_file
from .schema import VALIDITY_VERSION, Validity
from .validate import LENGTH_BASELINE, choose_primary, load_validity, validate, write_validity

__all__ = [
    "LENGTH_BASELINE",
    "VALIDITY_VERSION",
    "JudgedCandidate",
    "JudgedSet",
    "Validity",
    "bundled_judged_set",
    "choose_primary",
    "load_validity",
    "read_judged_file",
    "validate",
    "write_validity",
]
