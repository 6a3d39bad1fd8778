"""A run's rows, planned from the spec, the model's tokenizer and the adapter folders' files: no weights load.

:func:`plan_rows` is the one planner of rows: a run's (:func:`medqa_bench.planning.plan_run`), the chat's and the LLM
judge's. The rows themselves are :class:`~medqa_bench.inference.systems.System` (:func:`~medqa_bench.inference.systems.plan_systems`
decides each row's prompt format and base); this module reads what they are decided from, and applies what a backend
declares of itself (a server that chooses the weights' quantization).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Mapping

from .models import AdapterInfo
from .systems import System
from ..data.training_corpus import adapter_folder


def read_adapters(adapters: Mapping[str, str]) -> dict[str, AdapterInfo]:
    """Each adapter's identity from its local folder (no weights loaded); a served adapter without one is left out."""
    from .models import read_adapter

    out = {}
    for name, value in adapters.items():
        folder = adapter_folder(value)
        if folder is not None:
            out[name] = read_adapter(name, folder)
    return out


def plan_rows(spec: Any, backend: type, tokenizer: Any, adapters: Mapping[str, str],
              infos: Mapping[str, AdapterInfo] | None = None) -> tuple[list[System], dict[str, AdapterInfo]]:
    """The run's rows and its adapters' identities, from the spec, the tokenizer (has it a chat template?) and the
    adapter folders' files (no weights are loaded: a bad adapter or format fails before the model loads); ``infos``:
    those identities when the caller has read them already (:func:`read_adapters`).

    A backend whose weights a server chooses (``served_quantization``: the value its rows record and why) puts every
    language-model row on that base; otherwise a row runs on the user's quantization, its adapter's training base, or
    the unquantized base (:func:`medqa_bench.inference.systems.plan_systems`)."""
    from ..data.rag import RagSpec
    from ..data.reference_rows import REFERENCE_ROWS
    from .systems import plan_systems, recorded_prompt_format, recorded_quantization

    infos = dict(infos) if infos is not None else read_adapters(adapters)
    served = getattr(backend, "served_quantization", None)
    systems = plan_systems(
        baseline_formats=spec.baseline_formats,
        prompt_format=spec.prompt_format,
        adapters=adapters,
        adapter_formats={name: recorded_prompt_format(info.meta) for name, info in infos.items()},
        reference_rows=REFERENCE_ROWS if spec.reference_rows is None else spec.reference_rows,
        has_chat_template=bool(getattr(tokenizer, "chat_template", None)),
        quantization=(spec.quantization or served[0]) if served else spec.quantization,
        adapter_quantizations=None if served else {name: recorded_quantization(info.meta)
                                                   for name, info in infos.items()},
        rag=RagSpec.parse(spec.rag) if spec.rag else None,
    )
    if served:
        why = served[2] if spec.quantization else served[1]
        systems = [replace(s, quantization_source=why) if s.generates else s for s in systems]
    return systems, infos


