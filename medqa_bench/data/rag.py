"""Retrieval-augmented systems: passages from the training split put into the prompt, as one more attribute of a system.

A system with ``retrieval`` set (:class:`RagSpec`, e.g. ``--rag bm25:k=3``) is asked the same question with the
``k`` nearest training passages in its prompt. It is scored, cached and compared like any other row.

**Passages.** One passage per TRAINING item: its question, a newline, its first reference answer. The evaluated split
is never indexed: the index is built from the run's training corpus alone (the train split, or ``--train-data``, or
the adapters' training data: medqa_bench.data.training_corpus), and an evaluated item that is itself a training item
(``--split train`` or ``all``) never retrieves itself. Question and answer together, because the
training pairs are what the model is meant to draw on (a question alone has nothing to ground an answer in, an answer
alone loses which disease it is about). In the prompt each answer is cut to its first ``words`` whitespace-separated
words (200 by default; ``" …"`` marks a cut, the original line breaks are kept): three full MedQuAD answers can run
past a small model's context (the longest training answer has 2,048 words). The index searches the full texts.

**Retrieval.** The query is the item's question.

- ``bm25``: :class:`medqa_bench.data.retrieval.BM25Index` (bm25s, Lucene BM25, k1 1.5, b 0.75) over question + answer;
- ``dense``: cosine similarity of all-MiniLM-L6-v2 embeddings (:class:`medqa_bench.data.encoders.SentenceEncoder`, the
  ``embedding_similarity`` metric's model and encoder, texts truncated to its 256 word pieces) of the question and of
  each passage;

ties by position in the training split. The index is built once per training-split fingerprint (a digest of every
training item's id, question and answer) and retriever settings, and kept in the cache folder
(``<cache>/rag/<method>-<key>/``): ``passages.json`` and bm25s's own files (JSON and numpy arrays, no pickle) or the
passage embeddings (``vectors.npz``). ``--no-cache`` builds it in memory.

**The prompt** (:data:`TEMPLATE_VERSION` 1). The passages, numbered ``[1]``..``[k]``, best first, go where the format
puts the question's content:

- ``reference``: a ``### Context:`` section between the question type and the question::

      ### Question Type:
      symptoms

      ### Context:
      [1] What are the symptoms of gout?
      Painful swollen joints.

      ### Question:
      What are the signs of gout?

      ### Answer:

- ``chat``: the user turn, after the question type line and before the question::

      Question type: symptoms

      Passages from the training set (question and answer), which may help:
      [1] What are the symptoms of gout?
      Painful swollen joints.

      Question: What are the signs of gout?

The spec, the template version and the index key enter the cache key of a RAG system's outputs, and
``results.json`` records them under ``systems[name]["retrieval"]``; each item's passages (training id, BM25 or
cosine score, the text as given) are in its system record in ``samples.jsonl``.

>>> RagSpec.parse("bm25:k=3").label
'bm25:k=3'
>>> from medqa_bench.data import Example
>>> train = [Example("t1", "What are the symptoms of gout?", "Painful swollen joints."),
...          Example("t2", "What are the symptoms of asthma?", "Wheezing.")]
>>> [p.id for p in retrieve(RagSpec(k=1), build_index("bm25", train), [Example("e1", "Signs of asthma?", "x")])[0]]
['t2']
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from .dataset import REFERENCE_TEMPLATE, Example, format_prompt
from ..errors import SpecError
from ..storage.fingerprint import sha256_json

log = logging.getLogger(__name__)

RAG_METHODS = ("bm25", "dense")
#: The prompt template's version: it enters the cache key, so changing the template never returns old outputs.
TEMPLATE_VERSION = 1
#: The on-disk index layout's version: part of the index key.
INDEX_VERSION = 1
DEFAULT_K = 3
DEFAULT_WORDS = 200

REFERENCE_RAG_TEMPLATE = REFERENCE_TEMPLATE.replace("### Question:\n", "### Context:\n{context}\n\n### Question:\n", 1)
CHAT_CONTEXT_HEADER = "Passages from the training set (question and answer), which may help:"
CHAT_RAG_USER = CHAT_CONTEXT_HEADER + "\n{context}\n\nQuestion: {question}"  # after "Question type: ..." when there is one


@dataclass(frozen=True)
class RagSpec:
    """How a system retrieves: ``method`` (``bm25`` or ``dense``), ``k`` passages, each answer cut to ``words``."""

    method: str = "bm25"
    k: int = DEFAULT_K
    words: int = DEFAULT_WORDS

    def __post_init__(self):
        if self.method not in RAG_METHODS:
            raise SpecError(f"rag: method must be one of {', '.join(RAG_METHODS)}, not '{self.method}'")
        for key, low in (("k", 1), ("words", 1)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise SpecError(f"rag: {key} must be an integer >= {low}, not {value!r}")

    @classmethod
    def parse(cls, value: "str | Mapping[str, Any] | RagSpec") -> "RagSpec":
        """``"bm25"``, ``"bm25:k=3"``, ``"dense:k=5,words=100"``, or a mapping ``{"method": "bm25", "k": 3}``."""
        if isinstance(value, RagSpec):
            return value
        if isinstance(value, Mapping):
            unknown = sorted(set(value) - {f.name for f in dataclasses.fields(cls)} - {"template_version"})
            if unknown:
                raise SpecError(f"rag: unknown key(s) {', '.join(unknown)}; keys are method, k, words")
            return cls(**{k: v for k, v in value.items() if k != "template_version"})
        if not isinstance(value, str) or not value.strip():
            raise SpecError(f"rag: give METHOD[:k=N[,words=N]], e.g. bm25:k=3, not {value!r}")
        method, _, rest = value.strip().partition(":")
        params: dict[str, Any] = {}
        for part in filter(None, (p.strip() for p in rest.split(","))):
            key, sep, raw = part.partition("=")
            key = key.strip()
            if not sep or key not in ("k", "words"):
                raise SpecError(f"rag '{value}': '{part}' must be k=N or words=N")
            try:
                params[key] = int(raw)
            except ValueError:
                raise SpecError(f"rag '{value}': {key} must be an integer, not '{raw.strip()}'") from None
        return cls(method.strip(), **params)

    @property
    def label(self) -> str:
        """The spec as ``--rag`` takes it (``words`` only when not the default)."""
        extra = f",words={self.words}" if self.words != DEFAULT_WORDS else ""
        return f"{self.method}:k={self.k}{extra}"

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "k": self.k, "words": self.words, "template_version": TEMPLATE_VERSION}


@dataclass(frozen=True)
class Passage:
    """One retrieved training passage: the training item's id, its retrieval score and the text as prompted."""

    id: str
    score: float
    text: str

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "score": self.score, "text": self.text}


# --------------------------------------------------------------------------------------------- passages


def cut_words(text: str, words: int) -> str:
    """The first ``words`` whitespace-separated words of ``text`` with its own spacing, ``" …"`` appended if cut.

    >>> cut_words("Fever,\\n- cough and pain", 2)
    'Fever,\\n- …'
    """
    ends = [m.end() for m in re.finditer(r"\S+", text)]
    if len(ends) <= words:
        return text
    return text[: ends[words - 1]] + " …"


def passage_text(item: Example, words: int | None = None) -> str:
    """A training item as a passage: its question, a newline, its first reference (cut to ``words`` words)."""
    answer = item.answer if words is None else cut_words(item.answer, words)
    return f"{item.question}\n{answer}"


def train_fingerprint(train: Sequence[Example]) -> str:
    """What the index depends on in the data: every training item's id, question and first reference, in order."""
    return "sha256:" + sha256_json([[t.id, t.question, t.answer] for t in train])


# --------------------------------------------------------------------------------------------- index


def _dense_settings() -> dict[str, Any]:
    from importlib.metadata import version

    from .encoders import default_model_path, model_fingerprint

    path = default_model_path()
    return {"model": f"all-MiniLM-L6-v2@{model_fingerprint(path)[:12]}", "similarity": "cosine",
            "max_seq_length": "the folder's (256)", "sentence-transformers": version("sentence-transformers")}


def _bm25_settings() -> dict[str, Any]:
    from importlib.metadata import version

    from .retrieval import STOPWORDS, TOKEN_PATTERN

    return {"library": "bm25s", "version": version("bm25s"), "method": "lucene", "k1": 1.5, "b": 0.75,
            "tokenizer": {"lower": True, "pattern": TOKEN_PATTERN, "stopwords": STOPWORDS, "stemmer": None}}


def _embedder():
    from .encoders import SentenceEncoder, default_model_path

    return SentenceEncoder(default_model_path(), batch_size=64, device=None, max_seq_length=None)


class PassageIndex:
    """The training passages and a retriever over them (BM25 or dense); :func:`build_index` or
    :func:`load_or_build_index` makes one."""

    def __init__(self, method: str, items: Sequence[Example], key: str, settings: dict[str, Any], *,
                 bm25=None, vectors=None, path: Path | None = None):
        self.method, self.items, self.key, self.settings = method, list(items), key, settings
        self.ids = [t.id for t in self.items]
        self._bm25, self._vectors, self.path = bm25, vectors, path
        self._embed = None

    def search(self, queries: Sequence[str], k: int, exclude: Sequence[Sequence[str]] | None = None
               ) -> list[list[tuple[int, float]]]:
        """Per query the ``k`` best ``(position in the training items, score)``, best first, ties by position."""
        import numpy as np

        exclude = exclude if exclude is not None else [()] * len(queries)
        positions: dict[str, list[int]] = {}
        for n, i in enumerate(self.ids):
            positions.setdefault(i, []).append(n)
        if self.method == "bm25":
            hits = self._bm25.search(list(queries), k, exclude=[tuple(e) for e in exclude])
            return [[(positions[i][0], s) for i, s in row] for row in hits]
        if self._embed is None:
            self._embed = _embedder()
        q = np.asarray(self._embed.embed(list(queries)), dtype=np.float32)
        scores = q @ self._vectors.T if len(queries) else np.zeros((0, len(self.ids)), dtype=np.float32)
        out = []
        for row, skip in zip(scores, exclude):
            keep = np.ones(len(self.ids), dtype=bool)
            for i in skip:
                keep[positions.get(i, [])] = False
            order = np.flatnonzero(keep)[np.argsort(-row[keep], kind="stable")]
            out.append([(int(n), float(row[n])) for n in order[:k]])
        return out

    def describe(self) -> dict[str, Any]:
        """What ``results.json`` records about the index."""
        return {"method": self.method, "key": self.key, "n_passages": len(self.items),
                "train_fingerprint": train_fingerprint(self.items), "settings": self.settings,
                "path": str(self.path) if self.path else None,
                "passages": "one per training item: its question, a newline, its first reference"}


def index_key(method: str, train: Sequence[Example]) -> tuple[str, dict[str, Any]]:
    """The index's key (a digest of the training split's fingerprint, the method and its settings) and settings."""
    settings = _bm25_settings() if method == "bm25" else _dense_settings()
    key = sha256_json({"version": INDEX_VERSION, "method": method, "train": train_fingerprint(train),
                       "settings": settings})
    return key, settings


def build_index(method: str, train: Sequence[Example]) -> PassageIndex:
    """Index the training items' passages (question + full first reference) in memory."""
    if method not in RAG_METHODS:
        raise SpecError(f"rag: method must be one of {', '.join(RAG_METHODS)}, not '{method}'")
    if not train:
        raise SpecError("retrieval draws its passages from the training split, and this data has no training items; "
                        "use data or split ratios that leave some, or drop --rag")
    key, settings = index_key(method, train)
    texts = [passage_text(t) for t in train]
    if method == "bm25":
        from .retrieval import BM25Index

        return PassageIndex(method, train, key, settings, bm25=BM25Index.build(texts, [t.id for t in train]))
    import numpy as np

    vectors = np.asarray(_embedder().embed(texts), dtype=np.float32)
    return PassageIndex(method, train, key, settings, vectors=vectors)


def load_or_build_index(method: str, train: Sequence[Example], folder: Path | None) -> PassageIndex:
    """The index of ``train`` from ``folder`` (``<folder>/<method>-<key>/``), built and saved there when absent.

    ``folder=None``: built in memory, nothing written. A damaged entry is rebuilt and replaced.
    """
    if folder is None:
        return build_index(method, train)
    key, _ = index_key(method, train)
    where = Path(folder) / f"{method}-{key[:24]}"
    if where.is_dir():
        try:
            return _load(method, train, key, where)
        except Exception as exc:  # noqa: BLE001 - a damaged or foreign entry: rebuild it
            log.warning("retrieval index %s cannot be read (%s: %s); rebuilding it", where, type(exc).__name__, exc)
    index = build_index(method, train)
    _save(index, where)
    index.path = where
    return index


def _save(index: PassageIndex, where: Path) -> None:
    from ..storage import atomic

    try:
        with atomic.directory(where, overwrite=where.exists()) as tmp:
            meta = {"version": INDEX_VERSION, "method": index.method, "key": index.key, "settings": index.settings,
                    "train_fingerprint": train_fingerprint(index.items), "ids": index.ids}
            (tmp / "passages.json").write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
            if index.method == "bm25":
                index._bm25.save(tmp / "bm25")
            else:
                import numpy as np

                np.savez(tmp / "vectors.npz", vectors=index._vectors)
    except OSError as exc:  # another process wrote it first, or the cache is read-only: the index in memory serves
        log.info("retrieval index not cached at %s: %s", where, exc)


def _load(method: str, train: Sequence[Example], key: str, where: Path) -> PassageIndex:
    meta = json.loads((where / "passages.json").read_text(encoding="utf-8"))
    if meta.get("key") != key or meta.get("ids") != [t.id for t in train]:
        raise ValueError("its key or passage ids differ from this training split's")
    if method == "bm25":
        from .retrieval import BM25Index

        return PassageIndex(method, train, key, meta["settings"], bm25=BM25Index.load(where / "bm25"), path=where)
    import numpy as np

    with np.load(where / "vectors.npz", allow_pickle=False) as data:
        vectors = data["vectors"]
    if vectors.shape[0] != len(train):
        raise ValueError(f"{vectors.shape[0]} vectors for {len(train)} passages")
    return PassageIndex(method, train, key, meta["settings"], vectors=vectors, path=where)


def cache_folder(cache: str | None) -> Path | None:
    """Where indexes are kept for a run spec's ``cache``: ``rag/`` in the user cache folder (``"default"``), beside a
    given cache file, or nowhere (``None``: built in memory)."""
    if cache is None:
        return None
    if cache == "default":
        from ..storage.paths import cache_dir

        return cache_dir() / "rag"
    return Path(cache).expanduser().parent / "rag"


# --------------------------------------------------------------------------------------------- retrieval


def retrieve(spec: RagSpec, index: PassageIndex, items: Sequence[Example], *,
             exclude_same_id: bool = True) -> list[list[Passage]]:
    """The ``spec.k`` passages of each item, best first; an item never retrieves its own training entry (the
    training item with its id), unless ``exclude_same_id`` is False: training passages from another file than the
    items, whose ids say nothing about theirs."""
    if index.method != spec.method:
        raise SpecError(f"rag: a {spec.method} spec cannot search a {index.method} index")
    hits = index.search([e.question for e in items], spec.k,
                        exclude=[(e.id,) if exclude_same_id else () for e in items])
    return [[Passage(index.ids[n], score, passage_text(index.items[n], spec.words)) for n, score in row]
            for row in hits]


def context_block(passages: Sequence[Passage]) -> str:
    """The passages as the prompt shows them: ``[n] text``, one blank line apart."""
    return "\n\n".join(f"[{n}] {p.text}" for n, p in enumerate(passages, 1))


def rag_prompt(item: Example, fmt: str, tokenizer: Any, passages: Sequence[Passage]) -> str:
    """The item's prompt in format ``fmt`` with ``passages`` (see the module docstring for both templates)."""
    context = context_block(passages)
    if fmt == "reference":
        return REFERENCE_RAG_TEMPLATE.format(qtype=item.qtype, context=context, question=item.question)
    return format_prompt(rag_chat_example(item, passages), fmt, tokenizer)


def rag_chat_example(item: Example, passages: Sequence[Passage]) -> Example:
    """The item as the chat format asks it with ``passages``: the plain chat prompt (data.format_prompt: chat
    template, BOS handling) with the passages put in the user turn before the question."""
    return dataclasses.replace(item, question=CHAT_RAG_USER.format(context=context_block(passages),
                                                                   question=item.question))


def prompt_key(fmt: str, retrieval: RagSpec | None) -> str:
    """The key of a system's prompts in ``samples.jsonl``'s ``prompts``: the format, ``<format>+rag`` with retrieval."""
    return fmt if retrieval is None else f"{fmt}+rag"


def describe_template() -> dict[str, Any]:
    """The templates as ``results.json`` records them."""
    return {"version": TEMPLATE_VERSION, "reference": REFERENCE_RAG_TEMPLATE,
            "chat_user_turn": "Question type: {qtype}\n\n" + CHAT_RAG_USER,
            "passage": "[n] {question}\\n{answer cut to `words` words}; passages one blank line apart, best first"}


# --------------------------------------------------------------------------------------------- a run's retrieval


def run_passages(rag: RagSpec, items: Sequence[Example], train: Sequence[Example], cache: str | None, *,
                 exclude_same_id: bool = True) -> tuple[list[list[Passage]], dict[str, Any]]:
    """Each item's passages for a run, and what ``results.json`` records of the retrieval: the index of the run's
    training corpus is loaded from the cache folder of the run's ``cache`` (built there once per training corpus),
    searched with the items' questions (``exclude_same_id``: see :func:`retrieve`)."""
    index = load_or_build_index(rag.method, train, cache_folder(cache))
    info = {**rag.to_dict(), "label": rag.label, "index": index.describe(), "template": describe_template()}
    return retrieve(rag, index, items, exclude_same_id=exclude_same_id), info


def rag_prompts(items: Sequence[Example], systems: Sequence[Any], tokenizer: Any,
                passages: Sequence[Sequence[Passage]] | None) -> dict[str, list[str]]:
    """The prompts of the systems with retrieval, by :attr:`System.prompt_key` (``<format>+rag``)."""
    out: dict[str, list[str]] = {}
    for s in systems:
        if s.retrieval is not None and s.prompt_key not in out:
            out[s.prompt_key] = [rag_prompt(e, s.prompt_format, tokenizer, p) for e, p in zip(items, passages or ())]
    return out
