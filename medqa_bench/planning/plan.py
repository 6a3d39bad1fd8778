"""The planning stage: what a run will do, decided once, before any weights load.

:func:`plan_run` turns a :class:`~medqa_bench.spec.RunSpec` into a frozen :class:`RunPlan`: the evaluated data and the
training corpus, the items (the ``limit`` sample that every system answers, within the ``nll_limit`` sample that the
NLL metrics score), the rows (each language-model row with its prompt format, base and adapter; the reference rows),
the metrics, the generation budget, the source of validity figures, and the spec as ``results.json`` records it. It
reads data files, adapter metadata (``adapter_config.json``, ``medqa_bench.json``) and the model's tokenizer, and
nothing else: a bad adapter, format, metric or capability fails here, in seconds, before a model loads.

The backend is asked only for what it declares (its class: whether it loads adapter folders, whether a server
chooses its weights' quantization, its capabilities) and where it runs (its ``device``, which sets the automatic
``limit``); it is never asked to plan. The runner, the chat and the judge plan through this module, then hand the
rows to a backend that infers (HELM's ``RunSpec`` and inspect_ai's ``Task``: a plan is data).

>>> from medqa_bench.inference.systems import plan_systems
>>> rows = plan_systems(baseline_formats=None, prompt_format=None, adapters={}, adapter_formats={},
...                     reference_rows=("question",), has_chat_template=True)
>>> [(s.name, s.kind) for s in rows]
[('baseline', 'baseline'), ('question', 'reference')]
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from ..inference.backends import Backend, check_capabilities
from ..data.items import select_item_sets, select_items
from ..inference.models import DEFAULT_MODEL, AdapterInfo, model_tokenizer
from ..inference.rows import plan_rows, read_adapters
from ..spec import RunSpec
from ..inference.systems import System
from ..data.training_corpus import RunData, plan_data

if TYPE_CHECKING:
    from ..data.dataset import Example
    from ..metrics import Metric
    from ..validity.measured import ValiditySource

log = logging.getLogger(__name__)

#: The default model's shipped adapter (data/adapters/): the recipe sweep's choice on the validation split
#: (trainers/recipes/smollm2-135m-symptoms-all-linear.yaml; README, Results). The reference recipe's adapter,
#: the default until then, is shipped beside it as smollm2-135m-symptoms-qlora.
DEFAULT_ADAPTER = "smollm2-135m-symptoms-all-linear-qlora"


@dataclass(frozen=True)
class RunPlan:
    """What a run does, decided before any weights load (see the module docstring)."""

    spec: RunSpec  # as results.json records it: device-dependent defaults, budget, rows and plugin paths filled in
    data: RunData  # the evaluated dataset, its evaluated split (``pool``) and the training corpus
    items: tuple["Example", ...]  # every item of samples.jsonl: the NLL metrics' items
    generated: tuple[bool, ...]  # per item: whether every system answers it (the other metrics' items)
    systems: tuple[System, ...]  # the language-model rows, then the reference rows
    adapters: Mapping[str, AdapterInfo]  # each adapter's local folder, read (a served adapter without one: absent)
    metrics: tuple["Metric", ...]
    budget: Mapping[str, Any]  # medqa_bench.planning.budget: the generation budget and how it was chosen
    validity: "ValiditySource"  # where the validity figures results.json records come from

    @property
    def lm_systems(self) -> list[System]:
        """The rows a language model answers."""
        return [s for s in self.systems if s.generates]

    @property
    def generated_items(self) -> list["Example"]:
        """The items every system answers."""
        return [e for e, g in zip(self.items, self.generated) if g]

    @property
    def nll_metrics(self) -> list[str]:
        return [m.name for m in self.metrics if m.kind == "nll"]


def shipped_adapter() -> Path | None:
    """The default model's shipped adapter folder (None where the package data lacks it)."""
    from ..storage.paths import shipped_adapters_dir

    folder = shipped_adapters_dir() / DEFAULT_ADAPTER
    return folder if (folder / "adapter_config.json").exists() else None


def run_adapters(spec: RunSpec, backend: type | None = None) -> dict[str, str]:
    """The adapters a run of ``spec`` evaluates: its own, or the shipped adapter of the default model when the
    backend (a class; by default ``spec.backend``'s) attaches adapter folders itself (a served model's adapters are
    the server's, named)."""
    if spec.adapters:
        return dict(spec.adapters)
    if backend is None:
        from ..inference.backends import backend_class

        backend = backend_class(spec.backend)
    if spec.default_adapters and spec.model == DEFAULT_MODEL and getattr(backend, "loads_adapter_folders", True):
        folder = shipped_adapter()
        if folder is not None:
            return {DEFAULT_ADAPTER: str(folder)}
    return {}


def plan_run(spec: RunSpec, backend: Backend, *, ranks: Any = None, tokenizer: Any = None) -> RunPlan:
    """Plan a run of ``spec`` on ``backend`` (built, nothing loaded): see the module docstring. ``tokenizer``: the
    model's (its chat template decides the baseline's format), when the caller has it already; else the backend's
    own (no weights), else :func:`~medqa_bench.inference.models.model_tokenizer`. Token counts (the budget) are the backend's, the counts its
    samples record. Raises the error of the first thing wrong, before any weights load."""
    from ..storage.cache import check_cache
    from ..metrics import resolve_metrics
    from ..metrics.provenance import absolute_plugin_spec
    from ..validity.measured import read_validity_source

    validity = read_validity_source(spec.validity)  # a bad --validity file fails before anything loads
    check_cache(spec.cache)  # so does a --cache that names a folder or a file that is not a SQLite cache
    adapters = run_adapters(spec, type(backend))
    infos = read_adapters(adapters)  # each local adapter folder read once: identity and metadata, no weights
    # the evaluated items and the training corpus, data only; the training data the adapters record names the run
    data = plan_data(spec, adapters, {name: info.meta for name, info in infos.items()})
    spec = data.spec.resolved_for(backend.device)
    # a plugin file is recorded by its absolute path (its metrics' infos: also its fingerprint and a copy), so the
    # run folder can be re-scored from any directory; resolved before the model loads: a typo fails in a second
    spec = spec.replace(plugins=tuple(absolute_plugin_spec(p) for p in spec.plugins))
    metrics = resolve_metrics(list(spec.metrics) if spec.metrics else None, plugins=spec.plugins,
                              params=spec.metric_params)
    if tokenizer is None:
        tokenizer = getattr(backend, "tokenizer", None) or model_tokenizer(spec.model, ranks)
    systems, infos = plan_rows(spec, type(backend), tokenizer, adapters, infos)
    lm_systems = [s for s in systems if s.generates]
    nll_metrics = [m.name for m in metrics if m.kind == "nll"]
    check_capabilities(backend, lm_systems, nll_metrics=nll_metrics)
    # The NLL metrics (one forward pass an item) score more items than generation (up to max_new_tokens decoding
    # steps an answer) when nll_limit says so: each metric is tested on the items it scored.
    if nll_metrics and lm_systems:
        items, generated = select_item_sets(data.pool, spec.limit or 0, spec.nll_limit or 0, spec.sample_seed)
    else:
        items = select_items(data.pool, spec.limit or 0, spec.sample_seed)
        generated = [True] * len(items)
        spec = spec.replace(nll_limit=spec.limit)  # recorded as what ran: no item is scored by NLL alone
    _log_items(data.pool, items, sum(generated), spec)
    spec, budget = _budget(spec, backend.count_tokens([e.answer for e in data.pool]))
    # results.json records the rows that ran, so the spec it holds reproduces them
    plain = [s for s in lm_systems if s.retrieval is None]  # a +rag row comes back from spec.rag
    spec = spec.replace(adapters=tuple((s.name, s.adapter) for s in plain if s.kind == "adapter"),
                        baseline_formats=tuple(s.prompt_format for s in plain if s.kind == "baseline"),
                        reference_rows=tuple(s.method for s in systems if s.kind == "reference"))
    return RunPlan(spec, replace(data, spec=spec), tuple(items), tuple(generated), tuple(systems), infos,
                   tuple(metrics), budget, validity)


def _budget(spec: RunSpec, lengths: list[int]) -> tuple[RunSpec, dict[str, Any]]:
    """The run's generation budget: the user's, or the automatic one (medqa_bench.planning.budget) from the evaluated split's
    reference lengths, in the model's tokens."""
    from .budget import auto_max_new_tokens, given_budget

    if spec.decoding.max_new_tokens is not None:
        return spec, given_budget(spec.decoding.max_new_tokens, lengths)
    info = auto_max_new_tokens(lengths)
    return spec.replace(decoding=replace(spec.decoding, max_new_tokens=info["max_new_tokens"])), info


def _log_items(pool: list["Example"], items: list["Example"], n_generated: int, spec: RunSpec) -> None:
    if n_generated < len(pool):
        log.info("evaluating a seeded sample of %d of %d %s items (--limit 0 evaluates all)", n_generated, len(pool),
                 spec.split)
    else:
        log.info("evaluating all %d %s items", n_generated, spec.split)
    if len(items) > n_generated:
        log.info("loss and perplexity on %d items: the %d generated and %d more (one forward pass an item; "
                 "--nll-limit N sets how many)", len(items), n_generated, len(items) - n_generated)
