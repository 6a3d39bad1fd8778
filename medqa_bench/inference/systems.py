"""A system is data: what answers a run's questions, and how it is asked.

Every row of a comparison is a :class:`System`:

- ``baseline``: the base model alone, in one prompt format. A model with a chat template is asked in that template
  by default, because that is the format it was made for; ``baseline_formats=("chat", "reference")`` adds one
  baseline row per format.
- ``adapter``: the base model with a LoRA adapter, asked in the prompt format recorded in the adapter's training
  metadata (the format it was trained on), on the base quantized as it was in training: a QLoRA adapter learned
  against the NF4 weights (measured on the shipped adapter: validation loss 0.96 on the 4-bit base, 1.52 on the
  unquantized one, where the base alone goes the other way, 2.76 against 2.46).
- ``reference``: a row that needs no language model (:mod:`medqa_bench.data.reference_rows`): the nearest training
  question's answer, one fixed typical answer, or the question itself. Each shows what a metric gives for free.

A user's ``prompt_format`` overrides every language-model row's format, and ``quantization`` every row's
quantization (baseline rows default to the unquantized base); ``format_source`` and ``quantization_source`` record
why each row has what it has, and the verdict lists unequal conditions.

**Retrieval is an attribute, not a kind.** ``rag=RagSpec(...)`` (``--rag bm25:k=3``) adds, after the plain rows, a
``<name>+rag`` row for every language-model row: the same kind, format, quantization and adapter, with ``retrieval``
set and ``variant_of`` naming the plain row. Its prompts carry training passages (:mod:`medqa_bench.data.rag`); it shares
its plain row's attached adapter (:attr:`System.adapter_name`). Later kinds (a model behind an inference server) are
more rows of this list, not special cases in the runner.

>>> plan_systems(baseline_formats=None, prompt_format=None, adapters={}, adapter_formats={},
...              reference_rows=("question",), has_chat_template=True)[0].name
'baseline'
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Mapping, Sequence

from ..data.adapter_meta import AdapterMeta, as_adapter_meta
from ..data.dataset import PROMPT_FORMATS
from ..errors import SpecError
from ..data.rag import RagSpec, prompt_key

SYSTEM_KINDS = ("baseline", "adapter", "reference")
BASELINE = "baseline"


@dataclass(frozen=True)
class System:
    """One row of a comparison. ``prompt_format`` is None for rows that generate nothing (reference rows)."""

    name: str
    kind: str  # "baseline" | "adapter" | "reference"
    prompt_format: str | None = None
    format_source: str = ""  # why this format: "the model's chat template", "training metadata", "prompt_format", ...
    quantization: str | None = None  # LM rows: "none" | "4bit", the base this row runs on
    quantization_source: str = ""  # why: "default", "training metadata", "quantization" (the user's), ...
    adapter: str | None = None  # kind "adapter": the adapter folder
    method: str | None = None  # kind "reference": a name of medqa_bench.data.reference_rows.REFERENCE_ROWS
    retrieval: RagSpec | None = None  # language-model rows: training passages in the prompt (medqa_bench.data.rag)
    variant_of: str | None = None  # a +rag row: the plain row it adds retrieval to

    def __post_init__(self):
        if self.kind not in SYSTEM_KINDS:
            raise SpecError(f"system '{self.name}': kind must be one of {', '.join(SYSTEM_KINDS)}, not '{self.kind}'")
        if self.kind != "reference" and self.prompt_format not in PROMPT_FORMATS:
            raise SpecError(f"system '{self.name}': prompt format must be one of {', '.join(PROMPT_FORMATS)}, "
                            f"not {self.prompt_format!r}")
        if self.retrieval is not None and self.kind == "reference":
            raise SpecError(f"system '{self.name}': a reference row takes no retrieval (it generates nothing)")

    @property
    def generates(self) -> bool:
        """Whether a language model answers (and can score the references' NLL) for this row."""
        return self.kind != "reference"

    @property
    def adapter_name(self) -> str | None:
        """The name its adapter is attached under: its own, or its plain row's for a +rag row (one adapter, loaded
        once); None for rows without an adapter."""
        if self.kind != "adapter":
            return None
        return self.variant_of or self.name

    @property
    def peft_name(self) -> str:
        """The adapter name PEFT knows this row by (``__base__``: the base model alone)."""
        return self.adapter_name or "__base__"

    @property
    def prompt_key(self) -> str:
        """Which prompts this row is given: its format's, or ``<format>+rag`` with retrieval (samples.jsonl)."""
        return prompt_key(self.prompt_format, self.retrieval)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def baseline_name(fmt: str, formats: Sequence[str]) -> str:
    """``baseline`` when the run asks the base model in one format, ``baseline-<format>`` for each of several."""
    return BASELINE if len(formats) == 1 else f"{BASELINE}-{fmt}"


def plan_systems(
    *,
    baseline_formats: Sequence[str] | None,
    prompt_format: str | None,
    adapters: Mapping[str, str],
    adapter_formats: Mapping[str, str | None],
    reference_rows: Sequence[str],
    has_chat_template: bool,
    quantization: str | None = None,
    adapter_quantizations: Mapping[str, str | None] | None = None,
    rag: RagSpec | None = None,
) -> list[System]:
    """The run's rows: baseline rows, then adapters, then (with ``rag``) a ``+rag`` row of each, then reference rows.

    ``adapter_formats[name]`` is the format recorded in the adapter's training metadata (None when it has none), and
    ``adapter_quantizations[name]`` the quantization of the base it was trained on. ``quantization`` (the user's)
    puts every language-model row on that base.
    Raises SpecError for a format the model cannot take or a name used twice; needs no model weights.
    """
    if baseline_formats:
        formats, why = list(dict.fromkeys(baseline_formats)), "baseline_formats"
    elif prompt_format:
        formats, why = [prompt_format], "prompt_format"
    elif has_chat_template:
        formats, why = ["chat"], "the model's chat template"
    else:
        formats, why = ["reference"], "the model has no chat template"
    for fmt in formats + ([prompt_format] if prompt_format else []):
        if fmt not in PROMPT_FORMATS:
            raise SpecError(f"prompt format '{fmt}' is unknown; choose from: {', '.join(PROMPT_FORMATS)}")
        if fmt == "chat" and not has_chat_template:
            raise SpecError("prompt format 'chat' needs a model with a chat template, and this tokenizer has none; "
                            "use --baseline-formats reference")
    base_q, base_q_why = (quantization, "quantization") if quantization else ("none", "default: the unquantized base")
    systems = [System(baseline_name(f, formats), "baseline", f, why, base_q, base_q_why) for f in formats]
    for name, path in adapters.items():
        recorded = adapter_formats.get(name)
        if prompt_format:
            fmt, source = prompt_format, "prompt_format (overrides the training metadata)" if recorded else "prompt_format"
        elif recorded:
            fmt, source = recorded, "training metadata"
        else:
            fmt, source = formats[0], "no training metadata: the first baseline row's format"
        if fmt == "chat" and not has_chat_template:
            raise SpecError(f"adapter '{name}' was trained in the chat format, but the model has no chat template")
        trained_q = (adapter_quantizations or {}).get(name)
        if quantization:
            q, q_why = quantization, "quantization" + (" (overrides the training metadata)" if trained_q else "")
        elif trained_q:
            q, q_why = trained_q, "training metadata"
        else:
            q, q_why = "none", "no training metadata: the unquantized base"
        systems.append(System(name, "adapter", fmt, source, q, q_why, adapter=str(path)))
    if rag is not None:
        systems += [replace(s, name=f"{s.name}+rag", retrieval=rag, variant_of=s.name) for s in list(systems)]
    for method in reference_rows:
        systems.append(System(method, "reference", None, "", method=method))
    names = [s.name for s in systems]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise SpecError(f"system name(s) {', '.join(clash)} used twice: an adapter cannot take the name of a baseline "
                        "or reference row; rename it (--adapter NEWNAME=PATH)")
    return systems


def recorded_quantization(training_meta: AdapterMeta | Mapping[str, Any] | None) -> str | None:
    """The quantization of the base an adapter was trained on, from its ``medqa_bench.json`` (the record, or the
    file's object; None when not recorded, or not one this harness loads)."""
    meta = as_adapter_meta(training_meta)
    q = meta.quantization if meta is not None else None
    return q if q in ("none", "4bit") else None


def recorded_prompt_format(training_meta: AdapterMeta | Mapping[str, Any] | None) -> str | None:
    """The prompt format an adapter was trained on, from its ``medqa_bench.json`` (the record, or the file's
    object; None when not recorded, or not a format of this harness)."""
    meta = as_adapter_meta(training_meta)
    fmt = meta.prompt_format if meta is not None else None
    return fmt if fmt in PROMPT_FORMATS else None
