"""Load, validate, filter by qtype, format prompts and split: the records every other stage consumes.

The pipeline, in order::

    load_table(path)                    CSV (plain or .gz), JSONL, or a Hugging Face `datasets` dataset, read as written
                                        or refused with the line at fault (medqa_bench.data.readers)
    -> select_rows(rows, qtypes)        drop empty rows (named by line), filter by qtype (none given: symptoms, or
                                        every row of a file without a qtype column)
    -> build_splits(rows, options)      items and their splits; the order depends on the strategy:
         grouped (default):  merge_rows   group rows asking the same question into one multi-reference item
                             split_examples  80/10/10 by item, so no question text and no focus crosses splits
         random (reference): split_rows   shuffle the ROWS with the seed and cut them 80/10/10, as the
                                          reference work did, so a repeated question can sit in train and test
                             merge_rows   then group rows of one question within each split only
    -> SplitManifest                    item ids per split + fingerprints, shared by trainer and harness

``random`` exists to reproduce the reference work's numbers, leakage included; ``grouped`` is what to trust.

>>> ds = load_dataset()                       # the bundled MedQuAD, symptoms questions  # doctest: +SKIP
>>> ds.split("test")[0].prompt()              # doctest: +SKIP
'### Question Type:\\nsymptoms\\n\\n### Question:\\nWhat are the symptoms of ...?\\n\\n### Answer:'
"""

from __future__ import annotations

import functools
import json
import logging
import os
import random
import re
import unicodedata
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from ..errors import DataError
from ..storage.fingerprint import sha256_json
from .readers import load_table

log = logging.getLogger(__name__)

#: The reference workflow's prompt, exactly; the answer is the completion.
REFERENCE_TEMPLATE = "### Question Type:\n{qtype}\n\n### Question:\n{question}\n\n### Answer:"
PROMPT_FORMATS = ("reference", "chat")
SPLITS = ("train", "validation", "test")
DEFAULT_QTYPE = "symptoms"


@dataclass(frozen=True)
class ColumnMap:
    """Which columns hold what. ``qtype``, ``focus`` and ``id`` are optional in the file."""

    question: str = "Question"
    answer: str = "Answer"
    qtype: str = "qtype"
    focus: str = "focus"
    id: str = "qid"


@dataclass(frozen=True)
class Example:
    """One evaluation or training item: a question with one or more reference answers."""

    id: str
    question: str
    answer: str  # the first reference; the training completion
    qtype: str = ""
    focus: str = ""
    references: tuple[str, ...] = ()

    def __post_init__(self):
        if not self.references:
            object.__setattr__(self, "references", (self.answer,))

    def prompt(self, fmt: str = "reference", tokenizer: Any = None) -> str:
        return format_prompt(self, fmt, tokenizer)

    def completion(self, fmt: str = "reference") -> str:
        # The reference template ends with "### Answer:"; the completion starts with a space so the answer is
        # tokenised the way it reads. A chat prompt ends with the assistant header, so no space.
        return (" " if fmt == "reference" else "") + self.answer

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["references"] = list(self.references)
        return d


def format_prompt(example: Example, fmt: str = "reference", tokenizer: Any = None) -> str:
    """The prompt text: the reference template, or the model's chat template with the same content."""
    if fmt == "reference":
        return REFERENCE_TEMPLATE.format(qtype=example.qtype, question=example.question)
    if fmt == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise DataError("prompt format 'chat' needs a tokenizer with a chat template; use --prompt-format reference")
        text = tokenizer.apply_chat_template(chat_messages(example), tokenize=False, add_generation_prompt=True)
        return _without_template_bos(text, tokenizer)
    raise DataError(f"unknown prompt format '{fmt}'; choose one of: {', '.join(PROMPT_FORMATS)}")


def chat_messages(example: Example) -> list[dict[str, str]]:
    """The chat format's conversation: one user turn (the model's chat template adds its own system prompt). A chat
    endpoint is sent these; :func:`format_prompt` renders them with the tokenizer's template."""
    user = f"Question type: {example.qtype}\n\n{example.question}" if example.qtype else example.question
    return [{"role": "user", "content": user}]


def _without_template_bos(text: str, tokenizer: Any) -> str:
    """A chat prompt without its leading BOS text when the tokenizer adds BOS itself.

    Chat templates such as Llama 3's write ``<|begin_of_text|>``, and its tokenizer adds the same token again when
    the prompt is tokenised (the harness and TRL both tokenise with special tokens): the model would see BOS twice,
    which it never saw in training. Dropping the template's copy leaves exactly one, as
    ``apply_chat_template(..., tokenize=True)`` gives. Tokenizers that add no BOS (SmolLM2's) keep the text as is.
    """
    bos = getattr(tokenizer, "bos_token", None)
    if bos and text.startswith(bos) and _adds_bos(tokenizer):
        return text[len(bos):]
    return text


@functools.lru_cache(maxsize=8)
def _adds_bos(tokenizer: Any) -> bool:
    """Whether tokenising with special tokens puts BOS first (asked once per tokenizer, not once per prompt)."""
    bos_id = getattr(tokenizer, "bos_token_id", None)
    ids = tokenizer("x", add_special_tokens=True)["input_ids"]
    return bos_id is not None and bool(ids) and ids[0] == bos_id


# --------------------------------------------------------------------------------------------- examples


def normalize_question(text: str) -> str:
    """Case-, punctuation- and whitespace-folded question text: MedQuAD's "X ?" and "X?" are the same question."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = re.sub(r"[^\w\s]", " ", text)
    return " ".join(text.split())


#: Dropped rows named in the warning; the rest are counted.
_DROPPED_SHOWN = 3


@dataclass
class LoadReport:
    rows: int = 0
    dropped_empty: int = 0
    kept: int = 0  # rows that passed the qtype filter (several may form one multi-reference item)
    qtypes: dict[str, int] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)  # each dropped row: where it is and why ("line 4 (empty answer)")

    def dropped_line(self, source: str) -> str:
        """The warning that names the dropped rows: ``own.csv: dropped 2 rows: line 4 (empty answer), line 9 (empty
        question)``; past :data:`_DROPPED_SHOWN` rows, the first ones and how many more."""
        n = len(self.dropped)
        more = f" and {n - _DROPPED_SHOWN} more" if n > _DROPPED_SHOWN else ""
        return f"{source}: dropped {n} row{'s' if n != 1 else ''}: {', '.join(self.dropped[:_DROPPED_SHOWN])}{more}"


def resolve_qtype(qtype: str | None, columns_found: Sequence[str], columns: ColumnMap = ColumnMap()) -> str:
    """The question-type filter ``qtype`` stands for: as given, or when none is given (None), :data:`DEFAULT_QTYPE`
    in a file with a question-type column and ``all`` in a file without one (a file of your own). A question-type
    column mapped by name (``--qtype-column``) but absent keeps the filter, so the error says the column is missing.

    >>> resolve_qtype(None, ["Question", "Answer"]), resolve_qtype(None, ["qtype", "Question", "Answer"])
    ('all', 'symptoms')
    """
    if qtype is not None:
        return qtype
    if columns.qtype in columns_found or columns.qtype != ColumnMap().qtype:
        return DEFAULT_QTYPE
    return "all"


def _empty_parts(question: str, answers: list[str]) -> str:
    return "empty question and answer" if not question and not answers else \
        "empty question" if not question else "empty answer"


def build_examples(
    rows: list[dict[str, Any]],
    columns_found: Sequence[str],
    columns: ColumnMap = ColumnMap(),
    qtype: str | Sequence[str] = DEFAULT_QTYPE,
    *,
    source: str = "data",
) -> tuple[list[Example], LoadReport]:
    """Validate columns, drop empty rows (counted), filter by qtype and group rows asking the same question.

    Rows whose normalised question text is the same become one item with several references (MedQuAD repeats
    questions across sources); a list-valued answer column gives several references directly.
    """
    kept, report = select_rows(rows, columns_found, columns, qtype, source=source)
    return [ex for _, ex in merge_rows(kept, columns_found, columns)], report


def select_rows(
    rows: list[dict[str, Any]],
    columns_found: Sequence[str],
    columns: ColumnMap = ColumnMap(),
    qtype: str | Sequence[str] = DEFAULT_QTYPE,
    *,
    source: str = "data",
    flag_prefix: str = "",
    where: Callable[[int], str] | None = None,
) -> tuple[list[dict[str, Any]], LoadReport]:
    """Validate columns, drop empty rows (named and counted) and filter by qtype, keeping file order.

    Kept rows are returned as they were plus ``_q`` (question), ``_qt`` (qtype) and ``_answers`` (non-empty
    answers): the row-level stage, so a split can be made on rows (``random``) or on merged items (``grouped``).
    ``flag_prefix`` names the command-line flags the messages suggest (``"train-"``: ``--train-qtype all``).
    ``where(i)`` names row ``i`` in the warning about dropped rows (:meth:`medqa_bench.data.readers.Table.where`: the line
    of the file); without it rows are numbered from 1.
    """
    found = set(columns_found)
    for role in ("question", "answer"):
        name = getattr(columns, role)
        if name not in found:
            raise DataError(
                f"{source}: column '{name}' not found; columns are: {', '.join(columns_found)}; "
                f"map it with --{flag_prefix}{role}-column"
            )
    wanted = _parse_qtypes(qtype)
    has_qtype = columns.qtype in found
    if wanted is not None and not has_qtype:
        raise DataError(
            f"{source}: filtering by qtype needs column '{columns.qtype}'; columns are: {', '.join(columns_found)}; "
            f"map it with --{flag_prefix}qtype-column or pass --{flag_prefix}qtype all"
        )
    report = LoadReport(rows=len(rows))
    report.qtypes = dict(Counter(str(r.get(columns.qtype, "") or "").strip() for r in rows)) if has_qtype else {}
    kept: list[dict[str, Any]] = []
    for i, row in enumerate(rows):
        q = str(row.get(columns.question) or "").strip()
        a = row.get(columns.answer)
        answers = [str(x).strip() for x in a] if isinstance(a, list) else [str(a or "").strip()]
        answers = [x for x in answers if x]
        if not q or not answers:
            report.dropped_empty += 1
            report.dropped.append(f"{where(i) if where else f'row {i + 1}'} ({_empty_parts(q, answers)})")
            continue
        qt = str(row.get(columns.qtype, "") or "").strip() if has_qtype else ""
        if wanted is not None and qt not in wanted:
            continue
        kept.append({**row, "_answers": answers, "_q": q, "_qt": qt})
    report.kept = len(kept)
    if report.dropped_empty:
        log.warning("%s", report.dropped_line(source))
    if not kept:
        present = ", ".join(f"{k} ({v})" for k, v in sorted(report.qtypes.items(), key=lambda kv: -kv[1])) or "none"
        raise DataError(f"{source}: no rows for qtype {sorted(wanted) if wanted else 'all'}; qtypes present: {present}")
    return kept, report


def merge_rows(
    kept: Sequence[dict[str, Any]],
    columns_found: Sequence[str],
    columns: ColumnMap = ColumnMap(),
    split_of: Sequence[str] | None = None,
) -> list[tuple[str, Example]]:
    """Group rows asking the same normalised question (same qtype) into items: ``(split, item)`` pairs.

    With ``split_of`` (one split name per row) rows merge only within their split, so the ``random`` strategy's
    leakage is kept; without it the split is ``""``. Items come in the order of their first row, and an item's id
    is its first row's id (``row-<n>`` without an id column), with ``.2``, ``.3``… on repeats: ids are unique
    across all splits, because one counter runs over the whole file.
    """
    found = set(columns_found)
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for n, row in enumerate(kept):
        key = (split_of[n] if split_of is not None else "", row["_qt"] + "\0" + normalize_question(row["_q"]))
        groups.setdefault(key, []).append(row)
    merged = []
    used_ids: Counter[str] = Counter()
    for n, ((split, _), members) in enumerate(groups.items()):
        first = members[0]
        refs = tuple(dict.fromkeys(a for m in members for a in m["_answers"]))
        raw_id = str(first.get(columns.id) or "").strip() if columns.id in found else ""
        base_id = raw_id or f"row-{n}"
        used_ids[base_id] += 1
        item_id = base_id if used_ids[base_id] == 1 else f"{base_id}.{used_ids[base_id]}"
        item = Example(
            id=item_id,
            question=first["_q"],
            answer=refs[0],
            qtype=first["_qt"],
            focus=str(first.get(columns.focus, "") or "").strip() if columns.focus in found else "",
            references=refs,
        )
        merged.append((split, item))
    return merged


def _parse_qtypes(qtype: str | Sequence[str] | None) -> set[str] | None:
    if qtype is None:
        return None
    if isinstance(qtype, str):
        if qtype.strip().lower() == "all":
            return None
        qtype = [q for q in qtype.split(",")]
    return {q.strip() for q in qtype if q.strip()}


# --------------------------------------------------------------------------------------------- splitting


SPLIT_STRATEGIES = ("grouped", "random", "grouped-by-qtype")


@dataclass(frozen=True)
class SplitOptions:
    seed: int = 42
    # "grouped": no question text or focus in two splits. "random": the reference work's naive split of rows, made
    # before repeated questions are merged, so one question can be in train and test (leaky, for comparison only).
    # "grouped-by-qtype": each question type split on its own as "grouped" splits it alone, so the test items of a
    # question type are the same whether a run reads that type alone or every type; training items that share a
    # question or a focus with any validation or test item (of any type) are then dropped from train.
    strategy: str = "grouped"
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)

    def __post_init__(self):
        if self.strategy not in SPLIT_STRATEGIES:
            raise DataError(f"split strategy must be one of {', '.join(SPLIT_STRATEGIES)}, not '{self.strategy}'")
        if len(self.ratios) != 3 or abs(sum(self.ratios) - 1.0) > 1e-6 or min(self.ratios) < 0:
            raise DataError(f"split ratios must be three non-negative numbers summing to 1, not {self.ratios}")


def _leak_groups(examples: Sequence[Example]) -> list[list[int]]:
    """Connected components of items that share a normalised question or a focus (union-find)."""
    parent = list(range(len(examples)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_seen: dict[str, int] = {}
    for i, ex in enumerate(examples):
        for key in ("q:" + normalize_question(ex.question), "f:" + ex.focus.lower() if ex.focus else None):
            if key is None:
                continue
            if key in first_seen:
                a, b = find(i), find(first_seen[key])
                if a != b:
                    parent[a] = b
            else:
                first_seen[key] = i
    comps: dict[int, list[int]] = defaultdict(list)
    for i in range(len(examples)):
        comps[find(i)].append(i)
    return list(comps.values())


def _fill(units: list[list[int]], n: int, options: SplitOptions) -> dict[str, list[int]]:
    """Shuffle the units with the seed and fill train, then validation, then test, by cumulative count."""
    random.Random(options.seed).shuffle(units)
    targets = [options.ratios[0] * n, (options.ratios[0] + options.ratios[1]) * n]
    out: dict[str, list[int]] = {s: [] for s in SPLITS}
    filled = 0
    for unit in units:
        # Deterministic, and close to the ratios whatever the unit sizes.
        name = "train" if filled < targets[0] else "validation" if filled < targets[1] else "test"
        out[name].extend(unit)
        filled += len(unit)
    return {s: sorted(idx) for s, idx in out.items()}


def split_examples(examples: Sequence[Example], options: SplitOptions = SplitOptions()) -> dict[str, list[Example]]:
    """Split merged items 80/10/10 with a seed, keeping every question text and focus inside one split (``grouped``).

    The ``random`` strategy splits rows before they are merged, so it cannot start from items: use
    :func:`build_splits` (or :func:`load_dataset`) for it.
    """
    if options.strategy == "grouped-by-qtype":
        return _split_by_qtype(examples, options)
    if options.strategy != "grouped":
        raise DataError(
            f"split_examples makes the 'grouped' split of merged items; the '{options.strategy}' split is made on "
            "rows before merging: use build_splits or load_dataset"
        )
    units = sorted(_leak_groups(examples), key=lambda g: g[0])
    return {s: [examples[i] for i in idx] for s, idx in _fill(units, len(examples), options).items()}


def _split_by_qtype(examples: Sequence[Example], options: SplitOptions) -> dict[str, list[Example]]:
    """Each question type's own grouped split, joined; then train loses every item that shares a leak group (over
    all types) with a validation or test item, so no question or focus crosses from train to evaluation."""
    grouped = SplitOptions(seed=options.seed, strategy="grouped", ratios=options.ratios)
    by_type: dict[str, list[int]] = defaultdict(list)
    for i, ex in enumerate(examples):
        by_type[ex.qtype].append(i)
    split_of: dict[int, str] = {}
    for idx in by_type.values():
        part = [examples[i] for i in idx]
        position = {id(ex): i for i, ex in zip(idx, part)}
        for name, chosen in split_examples(part, grouped).items():
            split_of.update((position[id(ex)], name) for ex in chosen)
    for group in _leak_groups(examples):
        if any(split_of[i] != "train" for i in group):
            split_of.update((i, "dropped") for i in group if split_of[i] == "train")
    return {s: [ex for i, ex in enumerate(examples) if split_of[i] == s] for s in SPLITS}


def split_rows(n_rows: int, options: SplitOptions) -> list[str]:
    """The split of each row, in row order: the reference work's naive split (rows shuffled, cut 80/10/10)."""
    split_of = [""] * n_rows
    for name, idx in _fill([[i] for i in range(n_rows)], n_rows, options).items():
        for i in idx:
            split_of[i] = name
    return split_of


def build_splits(
    kept: Sequence[dict[str, Any]],
    columns_found: Sequence[str],
    columns: ColumnMap = ColumnMap(),
    options: SplitOptions = SplitOptions(),
) -> tuple[list[Example], dict[str, list[Example]]]:
    """All items and the items of each split, from the rows :func:`select_rows` kept.

    ``grouped`` merges rows of one question into items, then splits the items by leak group. ``random`` splits the
    rows first and merges within each split, so a question asked by several rows can be in several splits, each
    copy an item of its own (with its own id); all items are then the union of the three splits.
    """
    if options.strategy in ("grouped", "grouped-by-qtype"):
        examples = [ex for _, ex in merge_rows(kept, columns_found, columns)]
        return examples, split_examples(examples, options)
    merged = merge_rows(kept, columns_found, columns, split_rows(len(kept), options))
    return [ex for _, ex in merged], {s: [ex for split, ex in merged if split == s] for s in SPLITS}


# --------------------------------------------------------------------------------------------- manifest


@dataclass(frozen=True)
class SplitManifest:
    """Which item ids fall in which split, and fingerprints of the data and the options that made it."""

    data_fingerprint: str
    options: dict[str, Any]
    splits: dict[str, list[str]]
    version: int = 1

    @property
    def fingerprint(self) -> str:
        return "sha256:" + sha256_json({"data": self.data_fingerprint, "options": self.options, "splits": self.splits})

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "data_fingerprint": self.data_fingerprint,
            "options": self.options,
            "fingerprint": self.fingerprint,
            "counts": {k: len(v) for k, v in self.splits.items()},
            "splits": self.splits,
        }

    def split_options(self) -> SplitOptions:
        """The split options that rebuild the items this manifest's ids name (``grouped`` items need no seed).

        A ``random`` manifest without ``"unit": "rows"`` was written before that strategy split rows: its ids name
        merged items, as ``grouped`` ones do, so it is read that way and still gives the items it was made with.
        """
        if self.options.get("strategy") != "random" or self.options.get("unit") != "rows":
            return SplitOptions()
        return SplitOptions(seed=self.options["seed"], strategy="random", ratios=tuple(self.options["ratios"]))

    @classmethod
    def read(cls, path: str | os.PathLike) -> "SplitManifest":
        try:
            d = json.loads(Path(path).read_text())
            return cls(d["data_fingerprint"], d["options"], d["splits"], d.get("version", 1))
        except FileNotFoundError:
            raise DataError(f"split manifest {path} does not exist") from None
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DataError(f"{path} is not a split manifest ({exc})") from None


@dataclass(frozen=True)
class DataSpec:
    """Everything that determines the items: the source, columns, qtype filter and split options."""

    path: str | None = None  # None: the bundled MedQuAD
    # None: symptoms in a file with a qtype column, all in a file without one (resolve_qtype; a loaded Dataset's spec
    # holds the resolved value)
    qtype: str | None = None
    columns: ColumnMap = ColumnMap()
    split: SplitOptions = SplitOptions()
    manifest: str | None = None  # a saved manifest to reuse instead of re-splitting

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "qtype": self.qtype,
            "columns": asdict(self.columns),
            "split": {**asdict(self.split), "ratios": list(self.split.ratios)},
            "manifest": self.manifest,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DataSpec":
        split = dict(d.get("split") or {})
        if "ratios" in split:
            split["ratios"] = tuple(split["ratios"])
        return cls(
            path=d.get("path"),
            qtype=d.get("qtype", DEFAULT_QTYPE),
            columns=ColumnMap(**(d.get("columns") or {})),
            split=SplitOptions(**split),
            manifest=d.get("manifest"),
        )


@dataclass
class Dataset:
    """The loaded, filtered, split items with their manifest."""

    spec: DataSpec
    examples: list[Example]
    splits: dict[str, list[Example]]
    manifest: SplitManifest
    report: LoadReport

    def split(self, name: str) -> list[Example]:
        if name == "all":
            return list(self.examples)
        if name not in self.splits:
            raise DataError(f"unknown split '{name}'; choose one of: {', '.join(SPLITS)}, all")
        return self.splits[name]


def load_dataset(spec: DataSpec | None = None, hf_dataset: Any = None, *, flag_prefix: str = "") -> Dataset:
    """Load and split the data a :class:`DataSpec` describes (the bundled MedQuAD symptoms by default). The returned
    dataset's spec has the question-type filter resolved (:func:`resolve_qtype`).

    ``flag_prefix`` names the flags an error suggests: ``"train-"`` for the training corpus of a run
    (``--train-question-column``)."""
    from ..storage.paths import default_dataset

    spec = spec or DataSpec()
    source = hf_dataset if hf_dataset is not None else (spec.path or default_dataset())
    table = load_table(source)
    cols = spec.columns
    table.require_text([cols.question, cols.qtype, cols.focus, cols.id], list_columns=[cols.answer])
    rows, columns_found, data_fp = table.rows, table.columns, table.fingerprint
    spec = replace(spec, qtype=resolve_qtype(spec.qtype, columns_found, cols))
    kept, report = select_rows(rows, columns_found, spec.columns, spec.qtype, source=table.source,
                               flag_prefix=flag_prefix, where=table.where)
    options = {
        "qtype": spec.qtype,
        "columns": asdict(spec.columns),
        "seed": spec.split.seed,
        "strategy": spec.split.strategy,
        "ratios": list(spec.split.ratios),
    }
    if spec.split.strategy == "random":
        # Marks a row-level split; only here, so grouped manifests (and the adapters trained on them) keep their
        # fingerprints.
        options["unit"] = "rows"
    if spec.manifest:
        manifest = SplitManifest.read(spec.manifest)
        if manifest.data_fingerprint != data_fp:
            raise DataError(
                f"split manifest {spec.manifest} was made from other data ({manifest.data_fingerprint[:19]}…, "
                f"this file is {data_fp[:19]}…); run `medqa-bench data prepare` again"
            )
        examples, _ = build_splits(kept, columns_found, spec.columns, manifest.split_options())
        by_id = {e.id: e for e in examples}
        missing = [i for ids in manifest.splits.values() for i in ids if i not in by_id]
        if missing:
            raise DataError(f"split manifest {spec.manifest} names {len(missing)} unknown items, e.g. {missing[0]}")
        splits = {s: [by_id[i] for i in manifest.splits.get(s, [])] for s in SPLITS}
    else:
        examples, splits = build_splits(kept, columns_found, spec.columns, spec.split)
        manifest = SplitManifest(data_fp, options, {s: [e.id for e in splits[s]] for s in SPLITS})
    return Dataset(spec, examples, splits, manifest, report)


def prompt_completion_records(examples: Iterable[Example], fmt: str = "reference", tokenizer: Any = None) -> list[dict]:
    """The reference workflow's ``symptom_qa.jsonl`` rows: ``{"prompt", "completion"}`` plus the item id."""
    return [{"id": e.id, "prompt": e.prompt(fmt, tokenizer), "completion": e.completion(fmt)} for e in examples]


def answer_length_percentiles(examples: Sequence[Example], pcts: Sequence[int] = (5, 25, 50, 75, 95, 100)) -> dict[int, int]:
    """Answer length in words at the given percentiles (nearest rank)."""
    lengths = sorted(len(e.answer.split()) for e in examples)
    if not lengths:
        return {p: 0 for p in pcts}
    return {p: lengths[min(len(lengths) - 1, max(0, round(p / 100 * len(lengths)) - 1))] for p in pcts}
