"""The chat's models and conversation, without the web page: what ``medqa-bench chat`` serves and the tests drive.

A :class:`ChatSession` plans its rows exactly as a run does (:func:`medqa_bench.runner.plan_run_systems`: the
baseline in the model's chat template, each adapter in the format of its training metadata and on the base it was
trained on, a ``+rag`` row of each with ``rag``), loads each base once and attaches the adapters to it, and keeps the
training split's passage index when retrieval is on. A question is put to each chosen row in that row's own prompt
(:func:`medqa_bench.data.format_prompt`, :func:`medqa_bench.rag.rag_prompt`) and answered greedily, streamed token by
token, ended by EOS, the format's stop sequences (cut before them, as in a run) or ``max_new_tokens``.

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

from ..data import DataSpec, Example
from ..errors import SpecError
from ..models import DEFAULT_MODEL

log = logging.getLogger(__name__)

MARKS = ("correct", "wrong")
DEFAULT_MAX_NEW_TOKENS = 256


@dataclass(frozen=True)
class ChatOptions:
    """What the chat loads and how it answers. The model, adapter and format options are a run's
    (:class:`medqa_bench.spec.RunSpec`); ``rag`` defaults to ``bm25:k=3`` so every row can be asked with and without
    passages (``None``: no +rag rows); ``cache`` is where the passage index is kept (as a run's ``cache``)."""

    model: str = DEFAULT_MODEL
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
        return RunSpec(model=self.model, adapters=tuple(self.adapters), default_adapters=self.default_adapters,
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
    from .. import atomic

    rows = export_records(turns)
    path = Path(folder) / f"{name}.jsonl"
    atomic.write_jsonl(path, rows)
    return path, len(rows)


class ChatSession:
    """The loaded bases with their adapters, the rows on offer and, with retrieval, the training split's index."""

    def __init__(self, options: ChatOptions = ChatOptions(), *, progress: bool = True):
        from ..data import load_dataset
        from ..models import attach_adapters, load_base, load_tokenizer, pick_device, resolve_model
        from ..rag import cache_folder, load_or_build_index
        from ..runner import plan_run_systems

        self.options = options
        spec = options.run_spec()
        self.device = pick_device(spec.device)
        systems, _ = plan_run_systems(spec, load_tokenizer(resolve_model(spec.model)))
        self.systems = [s for s in systems if s.generates]
        self.rag = next((s.retrieval for s in self.systems if s.retrieval is not None), None)
        self.index = None
        if self.rag is not None:
            train = load_dataset(spec.data).split("train")
            self.index = load_or_build_index(self.rag.method, train, cache_folder(spec.cache))
        # As a run loads them: one base per quantization the rows need, each adapter attached to the base it was
        # trained on, under its plain row's name (a +rag row shares it).
        self.bases = {}
        for q in dict.fromkeys(s.quantization for s in self.systems):
            self.bases[q] = load_base(spec.model, quantization=q, device=self.device, dtype=spec.dtype,
                                      dequantize_once=True)
            attach_adapters(self.bases[q], {s.adapter_name: s.adapter for s in self.systems
                                            if s.kind == "adapter" and s.quantization == q})
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
            from ..rag import retrieve

            turn.passages = [p.to_dict() for p in retrieve(self.rag, self.index, [self._example(turn)])[0]]
        return turn

    def _example(self, turn: ChatTurn) -> Example:
        return Example(turn.id, turn.question, "", turn.qtype)

    def prompt(self, name: str, turn: ChatTurn) -> str:
        """The prompt ``name`` is given for ``turn``: its own format, with the turn's passages if it retrieves."""
        from ..rag import Passage, rag_prompt

        s = self.system(name)
        loaded = self.bases[s.quantization]
        example = self._example(turn)
        if s.retrieval is not None:
            return rag_prompt(example, s.prompt_format, loaded.tokenizer, [Passage(**p) for p in turn.passages or []])
        return example.prompt(s.prompt_format, loaded.tokenizer)

    def stream(self, name: str, turn: ChatTurn) -> Iterator[str]:
        """``name``'s answer to ``turn`` as it grows (the whole text so far at each step); the last one is kept in
        ``turn.answers``."""
        import torch
        from transformers import StoppingCriteriaList, TextIteratorStreamer

        from ..generation import DecodingParams, StopSequences, eos_token_ids
        from ..models import system_active

        s = self.system(name)
        loaded = self.bases[s.quantization]
        tokenizer = loaded.tokenizer
        prompt = self.prompt(name, turn)
        stops = tuple(DecodingParams(max_new_tokens=self.options.max_new_tokens).stop_sequences(s.prompt_format))
        with self._lock, system_active(loaded, s.adapter_name or "baseline") as model:
            ids = tokenizer(prompt, add_special_tokens=True, return_tensors="pt")["input_ids"]
            streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
            eos = eos_token_ids(model, tokenizer)
            kwargs: dict[str, Any] = {
                "input_ids": ids.to(next(model.parameters()).device),
                "attention_mask": torch.ones_like(ids).to(next(model.parameters()).device),
                "max_new_tokens": self.options.max_new_tokens, "do_sample": False, "temperature": None,
                "top_p": None, "top_k": None, "eos_token_id": eos,
                "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0],
                "streamer": streamer,
            }
            if stops:
                kwargs["stopping_criteria"] = StoppingCriteriaList([StopSequences(tokenizer, [stops], ids.shape[1])])
            failure: list[BaseException] = []

            def work():
                try:
                    with torch.inference_mode():
                        model.generate(**kwargs)
                except BaseException as exc:  # noqa: BLE001 - handed to the caller below
                    failure.append(exc)
                    streamer.end()

            thread = threading.Thread(target=work, daemon=True)
            thread.start()
            text = ""
            for piece in streamer:
                text += piece
                shown = _before_stop(text, stops)
                turn.answers[name] = shown
                yield shown
            thread.join()
            if failure:
                raise failure[0]
        turn.answers[name] = _before_stop(text, stops).strip()
        yield turn.answers[name]

    def export(self, turns: Sequence[ChatTurn], folder: str | Path | None = None) -> tuple[Path, int]:
        """Write the conversation's items to ``<export_dir>/<first turn's id>.jsonl`` (one file per conversation,
        rewritten as it grows; two browser tabs are two conversations); the path and row count."""
        if not turns:
            raise SpecError("nothing to export yet: ask a question first")
        return write_export(turns, folder or self.options.export_dir, turns[0].id)


def _before_stop(text: str, stops: Sequence[str]) -> str:
    """The text before the first stop sequence it holds (all of it when none)."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=None)
    return text if cut is None else text[:cut]
