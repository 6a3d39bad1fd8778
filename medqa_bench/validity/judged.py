"""Judged sets: candidate answers with an expert grade, each scored against one or more reference answers.

Two sources give the same records:

- :func:`bundled_judged_set`: MedQuAD answers judged by experts for the TREC-2017 LiveQA medical questions
  (``medqa-bench data fetch medquad-judged``; CC BY 4.0, Ben Abacha and Demner-Fushman 2019), turned into a
  leave-one-out set, since the consumer questions and their reference answers are not published with it;
- :func:`read_judged_file`: a user's CSV/JSONL, one candidate a row, columns mapped like ``run``'s.

**The leave-one-out construction** (:data:`CONSTRUCTION`), from ``qrels.txt`` (``QID GRADE ANSWER_ID``) and
``answers.csv.gz``:

1. every answer loses MedQuAD's header lines (``Question: …``, ``URL: …``, ``Answer:``): the text is what follows
   ``Answer:``; an answer with no text left is dropped (counted as ``empty_answers``);
2. upstream judged 168 (question, answer) pairs twice, with different grades (e.g. once 3-Incomplete, once
   4-Excellent): an answer's grade for a question is the **mean of its judgments** (so 1.5, 2.5, 3.5 occur);
3. an answer is a **reference** of its question when that grade is at least 3.5: every judgment 4-Excellent, or
   one Excellent and one Incomplete. An answer judged once Excellent and once Related or Incorrect is a candidate
   only: the experts did not agree that it answers the question;
4. a question enters when it has a reference and at least one other answer;
5. every answer of such a question is a candidate (references included) and is scored against every reference
   **other than itself** (not the same answer id, nor the same text); its score is the mean over those
   references ("use each in turn and average"). A candidate with no reference left (the question's only
   reference) is dropped (counted as ``no_reference_left``);
6. ``question`` is the ``Question:`` header of the question's first reference (qrels order). It is a proxy: the
   MedQuAD question that answer was written for, not the consumer's question, which is not available. The question
   echo of :mod:`.robustness` echoes this proxy, which shares more words with the reference than a consumer's
   question would, so the echo is a harder case for a metric here than in a run.

>>> judged = bundled_judged_set()                       # doctest: +SKIP
>>> judged.counts["questions"], len(judged.candidates)  # doctest: +SKIP
(46, 939)
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..errors import DataError

#: Grade at or above which a judged answer is a reference of its question (the mean of its judgments).
REFERENCE_GRADE = 3.5
GRADE_NAMES = {1: "1-Incorrect", 2: "2-Related", 3: "3-Incomplete", 4: "4-Excellent"}

CONSTRUCTION = (
    "Leave-one-out over MedQuAD answers judged for the TREC-2017 LiveQA medical questions: header lines stripped, "
    "empty answers dropped; an answer's grade is the mean of its judgments for the question (168 pairs were judged "
    "twice); answers with grade >= 3.5 are the question's references; every answer of a question with a reference and "
    "another answer is a candidate, scored against every reference other than itself (by id and by text) and "
    "averaged over them; a candidate with no reference left is dropped. question = the Question: header of the "
    "question's first reference (a proxy: the consumer question is not available)."
)


@dataclass(frozen=True)
class JudgedCandidate:
    """One graded answer. ``group`` (the question id) is the unit the bootstrap resamples; the candidate's score
    under a metric is the mean over ``references``."""

    group: str
    candidate_id: str
    question: str
    references: tuple[str, ...]
    candidate: str
    grade: float


@dataclass(frozen=True)
class JudgedSet:
    """Candidates plus what a ``validity.json`` records about where they came from."""

    candidates: tuple[JudgedCandidate, ...]
    name: str  # "medquad-judged" or the file's path
    construction: str
    counts: dict[str, Any]
    fingerprint: str
    license: str = ""

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "construction": self.construction, "counts": dict(self.counts),
                "fingerprint": self.fingerprint, "license": self.license,
                "reference_aggregation": "mean over the candidate's references"}


def strip_medquad_header(text: str) -> str | None:
    """The answer text after MedQuAD's ``Question:``/``URL:``/``Answer:`` header lines; None without that header.

    >>> strip_medquad_header("Question: What is gout?\\nURL: https://x\\nAnswer: A kind of arthritis.\\n")
    'A kind of arthritis.'
    """
    lines = text.split("\n")
    if len(lines) < 3 or not lines[0].startswith("Question:") or not lines[1].startswith("URL:") \
            or not lines[2].startswith("Answer:"):
        return None
    return "\n".join([lines[2][len("Answer:"):], *lines[3:]]).strip()


def medquad_question(text: str) -> str:
    """The ``Question:`` header line's text."""
    return text.split("\n", 1)[0][len("Question:"):].strip()


def bundled_judged_set(folder: str | Path | None = None) -> JudgedSet:
    """The leave-one-out judged set of the module docstring, from ``folder`` (default :func:`paths.judged_dir`)."""
    from ..storage.fingerprint import sha256_files
    from ..storage.paths import judged_dir
    from ..data.readers import load_table

    folder = Path(folder) if folder is not None else judged_dir()
    qrels_path, answers_path = folder / "qrels.txt", folder / "answers.csv.gz"
    for p in (qrels_path, answers_path):
        if not p.is_file():
            raise DataError(f"{p} is missing: run `medqa-bench data fetch medquad-judged`")
    table = load_table(answers_path)
    for column in ("AnswerID", "Answer"):
        if column not in table.columns:
            raise DataError(f"{answers_path}: column '{column}' not found; columns are: {', '.join(table.columns)}")
    raw: dict[str, str] = {}
    for row in table.rows:
        raw.setdefault(str(row["AnswerID"]), str(row["Answer"]))
    judgments: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))  # qid -> answer -> grades
    n_judgments = 0
    for lineno, line in enumerate(qrels_path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 3 or not parts[1][:1].isdigit() or int(parts[1][0]) not in GRADE_NAMES:
            raise DataError(f"{qrels_path}: line {lineno} is not 'QUESTION_ID GRADE ANSWER_ID' with a grade 1-4: {line!r}")
        qid, grade, answer_id = parts
        if answer_id not in raw:
            raise DataError(f"{qrels_path}: line {lineno}: answer '{answer_id}' is not in {answers_path.name}")
        judgments[qid][answer_id].append(int(grade[0]))
        n_judgments += 1

    texts: dict[str, str | None] = {}
    for answer_id, text in raw.items():
        body = strip_medquad_header(text)
        if body is None:
            raise DataError(f"{answers_path}: answer '{answer_id}' does not start with MedQuAD's Question:/URL:/Answer: "
                            "header lines")
        texts[answer_id] = body or None
    candidates: list[JudgedCandidate] = []
    empty = no_reference = twice = 0
    questions_entered = judged_in = answers_in = 0
    for qid, answers in judgments.items():
        twice += sum(1 for g in answers.values() if len(g) > 1)
        kept = {a: sum(g) / len(g) for a, g in answers.items() if texts[a]}
        empty += len(answers) - len(kept)
        refs = [a for a, grade in kept.items() if grade >= REFERENCE_GRADE]
        if not refs or len(kept) < 2:
            continue
        questions_entered += 1
        judged_in += sum(len(g) for g in answers.values())
        answers_in += len(kept)
        question = medquad_question(raw[refs[0]])
        for answer_id, grade in kept.items():
            own = texts[answer_id]
            others = tuple(texts[r] for r in refs if r != answer_id and texts[r] != own)
            if not others:
                no_reference += 1
                continue
            candidates.append(JudgedCandidate(qid, answer_id, question, others, own, grade))
    by_grade: dict[str, int] = defaultdict(int)
    for c in candidates:
        by_grade[f"{c.grade:g}"] += 1
    counts = {
        "judgments": n_judgments,
        "questions_judged": len(judgments),
        "pairs_judged_twice": twice,
        "empty_answers": empty,
        "questions": questions_entered,
        "judgments_in_questions": judged_in,
        "answers_in_questions": answers_in,
        "candidates": len(candidates),
        "candidates_by_grade": dict(sorted(by_grade.items(), key=lambda kv: float(kv[0]))),
        "no_reference_left": no_reference,
        "reference_pairs": sum(len(c.references) for c in candidates),
    }
    return JudgedSet(
        candidates=tuple(candidates), name="medquad-judged", construction=CONSTRUCTION, counts=counts,
        fingerprint="sha256:" + sha256_files([qrels_path, answers_path]),
        license="CC BY 4.0: Ben Abacha and Demner-Fushman, A Question-Entailment Approach to Question Answering, "
                "BMC Bioinformatics 20, 511 (2019); header lines stripped, grades averaged, leave-one-out references",
    )


# --------------------------------------------------------------------------------------------- a user's file


#: The ``metrics validate`` flag that maps each column, named in "column not found" messages.
COLUMN_FLAGS = {"group": "--group-column", "question": "--question-column", "reference": "--reference-column",
                "candidate": "--candidate-column", "grade": "--grade-column"}


def read_judged_file(path: str | Path, *, group_column: str = "question_id", question_column: str = "question",
                     reference_column: str | Sequence[str] = "reference", candidate_column: str = "candidate",
                     grade_column: str = "grade", good_threshold: float = 3.0) -> JudgedSet:
    """A judged set from a CSV/TSV/JSONL file (optionally .gz), one candidate answer a row.

    ``reference_column``: one column name, several (a list, or comma-separated), each cell one reference; in JSONL a
    cell may also be a list of references. Every reference of a row is scored and the scores averaged. Refused with
    a one-line :class:`DataError`: a missing column, a grade that is not a number, an empty question id, a row without a
    reference, a question with a single candidate, no candidate with grade ≥ ``good_threshold``, or
    none below it.
    """
    from ..data.readers import load_table

    names = [reference_column] if isinstance(reference_column, str) else list(reference_column)
    refs_cols = [c.strip() for name in names for c in name.split(",") if c.strip()]
    if not refs_cols:
        raise DataError("no reference column given; name one with --reference-column")
    table = load_table(path)
    wanted = [("group", group_column), ("question", question_column), *[("reference", c) for c in refs_cols],
              ("candidate", candidate_column), ("grade", grade_column)]
    for role, column in wanted:
        if column not in table.columns:
            raise DataError(f"{table.source}: column '{column}' not found; columns are: {', '.join(table.columns)}; "
                            f"map the {role} with {COLUMN_FLAGS[role]}")
    table.require_text([group_column, question_column, candidate_column], list_columns=refs_cols)
    rows: list[tuple[int, str, str, tuple[str, ...], str, float]] = []
    for i, row in enumerate(table.rows):
        where = f"{table.source}: {table.where(i)}"
        grade = _grade(row.get(grade_column), where, grade_column)
        group = _text(row.get(group_column))
        if not group:
            raise DataError(f"{where}: column '{group_column}' (the question id) is empty")
        references: list[str] = []
        for column in refs_cols:
            value = row.get(column)
            references += [_text(v) for v in (value if isinstance(value, list) else [value]) if _text(v)]
        if not references:
            raise DataError(f"{where}: no reference answer in {', '.join(repr(c) for c in refs_cols)}")
        rows.append((i, group, _text(row.get(question_column)), tuple(references), _text(row.get(candidate_column)),
                     grade))
    by_group: dict[str, list[int]] = defaultdict(list)
    for k, r in enumerate(rows):
        by_group[r[1]].append(k)
    for group, members in by_group.items():
        if len(members) < 2:
            raise DataError(f"{table.source}: question '{group}' ({table.where(rows[members[0]][0])}) has one candidate; "
                            "the within-question figures need at least two per question: add candidates or drop it")
    grades = [r[5] for r in rows]
    if not any(g >= good_threshold for g in grades):
        raise DataError(f"{table.source}: no candidate has a grade >= {good_threshold:g} (grades run "
                        f"{min(grades):g} to {max(grades):g}); set --good-threshold or check --grade-column")
    if all(g >= good_threshold for g in grades):
        raise DataError(f"{table.source}: every candidate has a grade >= {good_threshold:g}, so good cannot be told "
                        "from the rest; set --good-threshold or check --grade-column")
    candidates = tuple(JudgedCandidate(group, table.where(i), question, refs, cand, grade)
                       for i, group, question, refs, cand, grade in rows)
    by_grade: dict[str, int] = defaultdict(int)
    for g in grades:
        by_grade[f"{g:g}"] += 1
    counts = {"questions": len(by_group), "candidates": len(candidates),
              "candidates_by_grade": dict(sorted(by_grade.items(), key=lambda kv: float(kv[0]))),
              "reference_pairs": sum(len(c.references) for c in candidates)}
    columns = {"group": group_column, "question": question_column, "reference": refs_cols,
               "candidate": candidate_column, "grade": grade_column}
    return JudgedSet(candidates, str(table.source),
                     f"a user's file, one candidate a row; columns {json.dumps(columns)}; each candidate scored "
                     "against each of its row's references and averaged", counts, table.fingerprint)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def _grade(value: Any, where: str, column: str) -> float:
    if isinstance(value, bool):
        raise DataError(f"{where}: grade {value!r} in column '{column}' is not a number")
    try:
        grade = float(value)
    except (TypeError, ValueError):
        shown = "empty" if value in (None, "") else repr(value)
        raise DataError(f"{where}: grade {shown} in column '{column}' is not a number") from None
    if not math.isfinite(grade):
        raise DataError(f"{where}: grade {value!r} in column '{column}' is not a finite number")
    return grade
