"""The chat's models and conversation, without the web page: what ``medqa-bench chat`` serves and the tests drive.

A :class:`ChatSession` plans its rows exactly as a run does (:func:`medqa_bench.planning.plan_rows`: the baseline in
the model's chat template, each adapter in the format of its training metadata and on the base it was trained on, a
``+rag`` row of each with ``rag``) and hands them to a backend that infers, as a run does (``backend``: the
transformers backend loads each base once and attaches the adapters to it; ``--backend openai`` asks a server). It
keeps the training split's passage index when retrieval is on. A question is put to each chosen row in that row's own
prompt (the backend's :meth:`~medqa_bench.inference.backends.Backend.render`) and answered greedily, ended by EOS, the format's
stop sequences (cut before them, as in a run) or ``max_new_tokens``: streamed token by token where the backend can
(the "stream" capability), else shown whole when it is done.

**Export.** A reviewer marks answers ``correct`` or ``wrong`` and may type a reference answer of their own.
:func:`export_records` turns the conversation into rows that ``medqa-bench run --data FILE`` reads with the default
column names: a question becomes an item when it has a reference, i.e. the reviewer's own answer and every answer
marked ``correct`` (in that order; ``Answer`` is then a list, several references of one item). Each row also keeps
what was said (``answers``: per system its text, mark, prompt format and retrieval; ``passages``), which a run
ignores. Evaluate an export with ``--split all`` (a short file leaves the 80/10/10 test split empty) and, when its
question type is not ``symptoms``, ``--qtype all``.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..data.dataset import DataSpec, Example
from ..errors import SpecError
from ..inference.models import DEFAULT_MODEL

log = logging.getLogger(__name__)

MARKS = ("correct", "wrong")
DEFAULT_MAX_NEW_TOKENS = 256


@dataclass(frozen=True)
class ChatOptions:
    """What the chat loads and how it answers. The model, adapter and format options are a run's
    (:class:`medqa_bench.spec.RunSpec`), and so are ``backend`` and its ``backend_options``; ``rag`` defaults to
    ``bm25:k=3`` so every row can be asked with and without passages (``None``: no +rag rows); ``cache`` is where the
    passage index is kept (as a run's ``cache``)."""

    model: str = DEFAULT_MODEL
    backend: str = "transformers"
    backend_options: dict[str, Any] = field(default_factory=dict)
    adapters: tuple[tuple[str, str], ...] = ()
    default_adapters: bool = True
    prompt_format: str | None = None
    baseline_formats: tuple[str, ...] | None = None
    quantization: str | None = None
    rag: str | None = "bm25:k=3"
    data: DataSpec = DataSpec()
    device: str = "auto"
    dtype: str = "auto"
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    cache: str | None = "default"
    export_dir: str = "chat-exports"

    def run_spec(self):
        """The run spec whose rows the chat offers (no reference rows: they answer from the training split alone)."""
        from ..spec import RunSpec

        if self.max_new_tokens < 1:
            raise SpecError(f"max_new_tokens must be a positive number of tokens, not {self.max_new_tokens}")
        return RunSpec(model=self.model, backend=self.backend, backend_options=dict(self.backend_options),
                       adapters=tuple(self.adapters), default_adapters=self.default_adapters,
                       prompt_format=self.prompt_format, baseline_formats=self.baseline_formats,
                       quantization=self.quantization, rag=self.rag, reference_rows=(), data=self.data,
                       device=self.device, dtype=self.dtype, cache=self.cache)


@dataclass
class ChatTurn:
    """One question and what each chosen system answered; the reviewer's marks and reference answer."""

    id: str
    question: str
    qtype: str = ""
    answers: dict[str, str] = field(default_factory=dict)
    systems: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> prompt_format, retrieval
    passages: list[dict[str, Any]] | None = None
    marks: dict[str, str] = field(default_factory=dict)  # name -> "correct" | "wrong"
    reference: str = ""
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def references(self) -> list[str]:
        """The reviewer's own answer, then every answer marked correct (empty texts and repeats dropped)."""
        refs = [self.reference.strip()] + [self.answers.get(n, "").strip() for n, m in self.marks.items()
                                           if m == "correct"]
        return list(dict.fromkeys(r for r in refs if r))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def export_records(turns: Sequence[ChatTurn]) -> list[dict[str, Any]]:
    """One ``run --data`` row per turn that has a reference (module docstring); turns without one are left out."""
    rows = []
    for t in turns:
        refs = t.references()
        if not refs:
            continue
        rows.append({
            "qid": t.id, "Question": t.question, "Answer": refs if len(refs) > 1 else refs[0], "qtype": t.qtype,
            "focus": "", "source": "medqa-bench chat", "created": t.created,
            "answers": {n: {"text": a, "mark": t.marks.get(n), **t.systems.get(n, {})} for n, a in t.answers.items()},
            "passages": t.passages,
        })
    return rows


def write_export(turns: Sequence[ChatTurn], folder: str | Path, name: str) -> tuple[Path, int]:
    """Write :func:`export_records` as ``<folder>/<name>.jsonl`` (atomically); the path and the number of rows."""
    from ..storage import atomic

    rows = export_records(turns)
    path = Path(folder) / f"{name}.jsonl"
    atomic.write_jsonl(path, rows)
    return path, len(rows)


class ChatSession:
    """The rows on offer, the backend that answers them (loaded) and, with retrieval, the training split's index."""

    def __init__(self, options: ChatOptions = ChatOptions(), *, progress: bool = True):
        from ..inference.backends import check_capabilities, create_backend
        from ..data.dataset import load_dataset
        from ..inference.models import model_tokenizer
        from ..planning.plan import plan_rows, run_adapters
        from ..data.rag import cache_folder, load_or_build_index

        self.options = options
        spec = options.run_spec()
        backend = create_backend(spec)  # nothing loaded: a bad backend name or option fails first
        adapters = run_adapters(spec, type(backend))
        systems, _ = plan_rows(spec, type(backend), model_tokenizer(spec.model), adapters)
        self.systems = [s for s in systems if s.generates]
        check_capabilities(backend, self.systems)
        self.rag = next((s.retrieval for s in self.systems if s.retrieval is not None), None)
        self.index = None
        if self.rag is not None:
            train = load_dataset(spec.data).split("train")
            self.index = load_or_build_index(self.rag.method, train, cache_folder(spec.cache))
        backend.load(self.systems)  # as a run loads them: one base per quantization, or the server checked
        check_capabilities(backend, self.systems)
        self.backend, self.device = backend, backend.device
        self._lock = threading.Lock()  # one generation at a time: the active adapter is the model's, not a thread's
        self.started = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        self._turns = 0

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.systems]

    def system(self, name: str):
        for s in self.systems:
            if s.name == name:
                return s
        raise SpecError(f"no system named '{name}'; systems are: {', '.join(self.names)}")

    def describe(self, name: str) -> dict[str, Any]:
        """What the page and the export say about a row: its prompt format and retrieval."""
        s = self.system(name)
        return {"kind": s.kind, "prompt_format": s.prompt_format,
                "retrieval": s.retrieval.label if s.retrieval is not None else None}

    def new_turn(self, question: str, qtype: str, names: Sequence[str]) -> ChatTurn:
        """A turn for ``question``, with the passages when a chosen row retrieves (best first)."""
        question = (question or "").strip()
        if not question:
            raise SpecError("type a question first")
        unknown = [n for n in names if n not in self.names]
        if unknown:
            raise SpecError(f"no system named '{unknown[0]}'; systems are: {', '.join(self.names)}")
        self._turns += 1
        turn = ChatTurn(f"chat-{self.started}-{self._turns}", question, (qtype or "").strip(),
                        systems={n: self.describe(n) for n in names})
        if self.index is not None and any(self.system(n).retrieval is not None for n in names):
            from ..data.rag import retrieve

            turn.passages = [p.to_dict() for p in retrieve(self.rag, self.index, [self._example(turn)])[0]]
        return turn

    def _example(self, turn: ChatTurn) -> Example:
        return Example(turn.id, turn.question, "", turn.qtype)

    def prompt(self, name: str, turn: ChatTurn) -> str:
        """The prompt ``name`` is given for ``turn``: its own format, with the turn's passages if it retrieves."""
        from ..data.rag import Passage

        s = self.system(name)
        passages = [Passage(**p) for p in turn.passages or []] if s.retrieval is not None else None
        return self.backend.render(self._example(turn), s, passages)

    def stream(self, name: str, turn: ChatTurn) -> Iterator[str]:
        """``name``'s answer to ``turn`` as it grows (the whole text so far at each step; one step where the backend
        does not stream); the last one is kept in ``turn.answers``."""
        from ..inference.backends import GenerationRequest
        from ..inference.decoding import DecodingParams

        s = self.system(name)
        request = GenerationRequest(s, self.prompt(name, turn), DecodingParams(max_new_tokens=self.options.max_new_tokens))
        with self._lock:
            if "stream" in self.backend.capabilities:
                for text in self.backend.stream(request):
                    turn.answers[name] = text
                    yield text
                return
            turn.answers[name] = self.backend.generate([request])[0].text
        yield turn.answers[name]

    def export(self, turns: Sequence[ChatTurn], folder: str | Path | None = None) -> tuple[Path, int]:
        """Write the conversation's items to ``<export_dir>/<first turn's id>.jsonl`` (one file per conversation,
        rewritten as it grows; two browser tabs are two conversations); the path and row count."""
        if not turns:
            raise SpecError("nothing to export yet: ask a question first")
        return write_export(turns, folder or self.options.export_dir, turns[0].id)

