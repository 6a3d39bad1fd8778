"""The evaluation run: items -> backend -> samples -> scores -> analysis -> run folder.

``run(spec)`` writes a run folder (results.json, samples.jsonl, report.html); ``score(run_dir)`` re-scores saved
generations without loading the language model. Both return the run folder's path.
"""

from __future__ import annotations

import logging
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__, atomic, distributed, run_folder
from .backends import Backend, GenerationRequest, NLLRequest, check_capabilities, create_backend, wrap
from .cache import InferenceCache, check_cache, open_cache
from .data import Example
from .errors import AdapterError, RunError
from .fingerprint import sha256_json
from .inference import CompletionNLL
from .items import select_item_sets, select_items
from .loss import run_loss_definition
from .models import DEFAULT_MODEL, AdapterInfo
from .paths import default_dataset
from .provenance import environment
from .rag import run_passages
from .schema import SCHEMA_VERSION
from .spec import RunSpec
from .systems import System
from .training_corpus import RunData

if TYPE_CHECKING:
    from .validity.measured import ValiditySource

log = logging.getLogger(__name__)

#: The default model's shipped adapter (data/adapters/): the recipe sweep's choice on the validation split
#: (trainers/recipes/smollm2-135m-symptoms-all-linear.yaml; README, Results). The reference recipe's adapter,
#: the default until then, is shipped beside it as smollm2-135m-symptoms-qlora.
DEFAULT_ADAPTER = "smollm2-135m-symptoms-all-linear-qlora"
#: Items on which each adapter must change the log-probabilities, checked before any generation.
ADAPTER_CHECK_ITEMS = 4


def shipped_adapter() -> Path | None:
    from .paths import shipped_adapters_dir

    folder = shipped_adapters_dir() / DEFAULT_ADAPTER
    return folder if (folder / "adapter_config.json").exists() else None


def _log_items(pool: list[Example], items: list[Example], generated: list[Example], spec: RunSpec) -> None:
    if len(generated) < len(pool):
        log.info("evaluating a seeded sample of %d of %d %s items (--limit 0 evaluates all)", len(generated), len(pool),
                 spec.split)
    else:
        log.info("evaluating all %d %s items", len(generated), spec.split)
    if len(items) > len(generated):
        log.info("loss and perplexity on %d items: the %d generated and %d more (one forward pass an item; "
                 "--nll-limit N sets how many)", len(items), len(generated), len(items) - len(generated))


def run_adapters(spec: RunSpec) -> dict[str, str]:
    """The adapters a run of ``spec`` evaluates: its own, or the shipped adapter of the default model."""
    if spec.adapters:
        return dict(spec.adapters)
    if spec.default_adapters and spec.model == DEFAULT_MODEL and _loads_adapter_folders(spec.backend):
        folder = shipped_adapter()
        if folder is not None:
            return {DEFAULT_ADAPTER: str(folder)}
    return {}


def _loads_adapter_folders(backend: str) -> bool:
    """Whether the backend attaches adapter folders itself (a served model's adapters are the server's, named)."""
    from .backends import backend_class

    return getattr(backend_class(backend), "loads_adapter_folders", True)


def _cache_for(spec: RunSpec) -> InferenceCache:
    return open_cache(spec.cache)


def check_adapters_change_model(adapter_nlls: dict[str, list[CompletionNLL]], base_nlls: dict[str, list[CompletionNLL]],
                                n: int = ADAPTER_CHECK_ITEMS) -> None:
    """Fail loudly if an adapter leaves the log-probabilities of the first items unchanged (other harnesses then
    silently evaluate the base model). ``base_nlls[adapter]`` is the base model's NLL of the same items in the
    adapter's own prompt format (a baseline row in another format would differ for that reason alone)."""
    for name, values in adapter_nlls.items():
        base = base_nlls[name][:n]
        if all(abs(a.nll_sum - b.nll_sum) <= 1e-6 * max(1.0, abs(b.nll_sum)) for a, b in zip(values[:n], base)):
            raise AdapterError(
                f"adapter '{name}' does not change the model: the log-probabilities of {len(base)} items equal the "
                "baseline's (LoRA B weights all zero, or the adapter's target modules are not in this model?)"
            )


def _budget(spec: RunSpec, backend: Backend, pool: list[Example]) -> tuple[RunSpec, dict[str, Any]]:
    """The run's generation budget: the user's, or the automatic one (medqa_bench.budget) from the evaluated split."""
    from dataclasses import replace

    from .budget import auto_max_new_tokens, given_budget

    lengths = backend.count_tokens([e.answer for e in pool])
    if spec.decoding.max_new_tokens is not None:
        return spec, given_budget(spec.decoding.max_new_tokens, lengths)
    info = auto_max_new_tokens(lengths)
    return spec.replace(decoding=replace(spec.decoding, max_new_tokens=info["max_new_tokens"])), info


def plan_run_systems(spec: RunSpec, tokenizer) -> tuple[list[System], dict[str, AdapterInfo]]:
    """The run's systems and its adapters' identities, as a run of ``spec`` plans them with the transformers backend
    (:func:`medqa_bench.backends.transformers.plan_run_systems`); no weights are loaded."""
    from .backends.transformers import plan_run_systems as plan

    return plan(spec, tokenizer, run_adapters(spec))


def run(spec: RunSpec | None = None, *, progress: bool = True) -> Path:
    """Evaluate every system of ``spec`` on the same items; write and return the run folder.

    The flow: the evaluated data and the training corpus (medqa_bench.training_corpus: ``--train-data``, the adapters'
    recorded training data, or the train split; no model) -> the backend (``spec.backend``, nothing loaded) -> systems
    (the backend's plan: tokenizer and adapter metadata, no weights) -> items (the ``limit`` sample, generated, within
    the ``nll_limit`` sample, scored by the NLL metrics) -> reference rows and the leakage audit (training corpus, no
    model) -> the backend loaded, behind the cache: NLL of every item and generations of the generated ones, for every
    language-model system -> samples -> scores (each metric on the items it applies to) -> analysis and verdict -> run
    folder.

    Under ``accelerate launch`` (several processes) the items are sharded across the processes and rank 0 writes
    the same run folder a single process would; every process returns its path (see medqa_bench.distributed).

    The run folder is checked before any work (writable, not a file) and locked until the run ends; before the model
    loads, a folder holding a different run stops the run unless ``spec.overwrite`` (see medqa_bench.run_folder).
    """
    from .training_corpus import plan_data
    from .validity.measured import read_validity_source

    spec = spec or RunSpec()
    t0 = time.perf_counter()
    validity = read_validity_source(spec.validity)  # a bad --validity file fails before anything loads
    check_cache(spec.cache)  # so does a --cache that names a folder or a file that is not a SQLite cache
    # the items and the training corpus, data only; the training corpus the adapters name also names the run folder
    data = plan_data(spec, run_adapters(spec))
    timings = {"data_s": time.perf_counter() - t0}
    if distributed.world_size() > 1 and os.environ.get("RANK", "0") != "0":
        return _run(data, validity, timings, progress)  # only the process that writes the run folder holds its lock
    with run_folder.lock(data.spec.output_path):
        return _run(data, validity, timings, progress)


def _run(data: RunData, validity: ValiditySource, timings: dict[str, float], progress: bool) -> Path:
    from .audit import audit_items
    from .reference_rows import reference_answers

    t0 = time.perf_counter() - timings["data_s"]
    spec, dataset, pool, corpus = data.spec, data.dataset, data.pool, data.corpus  # pool: never empty (plan_data)
    ranks = distributed.launched(spec.device)  # None unless launched with WORLD_SIZE > 1 (nothing imported then)
    progress = progress and (ranks is None or ranks.is_main)
    backend = create_backend(spec, adapters=run_adapters(spec), ranks=ranks)  # nothing loaded; an unknown name fails
    spec = spec.resolved_for(backend.device)

    # ---- items: data only
    train = corpus.items

    from .metrics import resolve_metrics  # resolve before the model loads: a typo fails in a second, not minutes
    from .metrics.provenance import absolute_plugin_spec, plugin_copies

    # a plugin file is recorded by its absolute path (its metrics' infos: also its fingerprint and a copy), so the
    # run folder can be re-scored from any directory
    spec = spec.replace(plugins=tuple(absolute_plugin_spec(p) for p in spec.plugins))
    metrics = resolve_metrics(list(spec.metrics) if spec.metrics else None, plugins=spec.plugins, params=spec.metric_params)

    # ---- systems: the backend's plan (tokenizer and adapter metadata, no weights)
    systems = backend.systems()
    lm_systems = [s for s in systems if s.generates]
    check_capabilities(backend, lm_systems, nll_metrics=[m.name for m in metrics if m.kind == "nll"])
    # A backend without completion NLL (a server without prompt log-probabilities) runs when no NLL metric is asked
    # for: its rows' nll fields are None, and the adapter check, which compares NLLs, cannot run.
    scores_nll = "nll" in backend.capabilities
    # The NLL metrics (one forward pass an item) score more items than generation (up to max_new_tokens decoding
    # steps an answer) when nll_limit says so: each metric is tested on the items it scored.
    if scores_nll and any(m.kind == "nll" for m in metrics) and lm_systems:
        items, generated = select_item_sets(pool, spec.limit or 0, spec.nll_limit or 0, spec.sample_seed)
    else:
        items = select_items(pool, spec.limit or 0, spec.sample_seed)
        generated = [True] * len(items)
        spec = spec.replace(nll_limit=spec.limit)  # recorded as what ran: no item is scored by NLL alone
    gen_items = [e for e, g in zip(items, generated) if g]
    _log_items(pool, items, gen_items, spec)
    spec, budget = _budget(spec, backend, pool)
    # results.json records the systems that ran, so the spec it holds reproduces them
    plain = [s for s in lm_systems if s.retrieval is None]  # a +rag row comes back from spec.rag
    spec = spec.replace(adapters=tuple((s.name, s.adapter) for s in plain if s.kind == "adapter"),
                        baseline_formats=tuple(s.prompt_format for s in plain if s.kind == "baseline"),
                        reference_rows=tuple(s.method for s in systems if s.kind == "reference"))
    run_folder.check_replaceable(spec.output_path, spec.to_dict(), overwrite=spec.overwrite,
                                 own_files=[spec.cache] if spec.cache not in (None, "default") else [])

    # ---- rows and audits that need no model: the training corpus only. Drawn from the evaluated data, a training
    # item with an evaluated item's id is that item and never its own candidate; from another file, ids say nothing.
    t = time.perf_counter()
    own = corpus.own_split
    answers = {s.name: reference_answers(s.method, gen_items, train, exclude_same_id=own)
               for s in systems if not s.generates}
    passages, retrieval_info = None, None
    rag = next((s.retrieval for s in lm_systems if s.retrieval is not None), None)
    if rag is not None:  # the corpus's index, built once per training fingerprint (rank 0 first)
        passages, retrieval_info = (run_passages(rag, items, train, spec.cache, exclude_same_id=own) if ranks is None
                                    else ranks.main_first(lambda: run_passages(rag, items, train, spec.cache,
                                                                               exclude_same_id=own)))
    overlap = (audit_items(items, train, exclude_same_id=own) if train and not (own and spec.split == "train")
               else None)
    timings["reference_rows_s"] = time.perf_counter() - t

    # ---- the backend: weights loaded, adapters attached
    t = time.perf_counter()
    backend.load(lm_systems)
    timings["load_s"] = time.perf_counter() - t

    prompts = _prompts(backend, items, lm_systems, passages)
    completions = {f: [e.completion(f) for e in items] for f in sorted({s.prompt_format for s in lm_systems})}
    # Multi-process: rank 0 creates the SQLite file (WAL, schema) before the other writers open it.
    cache = _cache_for(spec) if ranks is None else ranks.main_first(lambda: _cache_for(spec))
    try:
        inference = wrap(backend, cache, ranks)  # cached, and sharded across the ranks of a launch
        t = time.perf_counter()
        if scores_nll:
            nlls = _per_system(lm_systems, inference.completion_nll(
                [NLLRequest(s, p, c) for s in lm_systems
                 for p, c in zip(prompts[s.prompt_key], completions[s.prompt_format])], progress=progress))
            _check_adapters(inference, lm_systems, nlls, prompts, completions)
        else:
            nlls = {s.name: [None] * len(items) for s in lm_systems}
            if any(s.kind == "adapter" for s in lm_systems):
                log.warning("no completion NLL from backend '%s': cannot check that each adapter changes the model's "
                            "log-probabilities", backend.name)
        timings["nll_s"] = time.perf_counter() - t
        t = time.perf_counter()
        gens = _per_system(lm_systems, inference.generate(
            [GenerationRequest(s, p, spec.decoding) for s in lm_systems
             for p, g in zip(prompts[s.prompt_key], generated) if g], progress=progress))
        timings["generate_s"] = time.perf_counter() - t
        cache_stats = {"hits": cache.hits, "misses": cache.misses, "path": str(cache.path) if cache.path else None}
    finally:
        cache.close()
    if ranks is not None and not ranks.is_main:
        backend.close()
        return ranks.wait_for_main()  # rank 0 scores and writes the run folder; return its path

    # ---- samples
    samples = _samples(items, generated, systems, backend, prompts, nlls, gens, answers, passages, overlap, train)
    models = backend.describe()
    results: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "medqa_bench_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "run_name": spec.run_name,
        "spec": spec.to_dict(),
        "environment": environment(),
        "model": next(iter(models.values())),
        "models": models,
        "systems": _system_infos(systems, backend, spec, retrieval_info),
        "budget": budget,
        "loss_definition": run_loss_definition(split=spec.split, **backend.loss_settings()),
        "data": {
            "source": spec.data.path or str(default_dataset()),  # where the fetched MedQuAD was found
            "fingerprint": dataset.manifest.data_fingerprint,
            "manifest_fingerprint": dataset.manifest.fingerprint,
            "split": spec.split,
            "split_size": len(pool),
            "train_size": len(train),
            "training": corpus.record,  # where the training corpus came from (medqa_bench.training_corpus)
            "n_items": len(items),  # every item of samples.jsonl: the NLL metrics' items
            "n_generated": len(gen_items),  # the items every system answered: the other metrics' items
            "limit": spec.limit,
            "nll_limit": spec.nll_limit,
            "sample_seed": spec.sample_seed,
            "item_ids_fingerprint": "sha256:" + sha256_json([e.id for e in items]),
            "dropped_empty_rows": dataset.report.dropped_empty,
        },
        "cache": cache_stats,
    }
    if ranks is not None:
        results["environment"]["distributed"] = ranks.describe()
    backend.close()

    # ---- scores, analysis, run folder
    out_dir = spec.output_path
    timings["inference_total_s"] = time.perf_counter() - t0
    files = plugin_copies(metrics)
    if ranks is not None:  # the others wait in wait_for_main() above; a failure here is passed on to them
        return ranks.main_only(lambda: _score_and_write(out_dir, results, samples, metrics, spec, timings, progress,
                                                        validity, files))
    return _score_and_write(out_dir, results, samples, metrics, spec, timings, progress, validity, files)


def _prompts(backend: Backend, items: list[Example], lm_systems: list[System], passages) -> dict[str, list[str]]:
    """Each language-model row's prompts as the backend renders them, by :attr:`System.prompt_key`: the plain formats
    (sorted), then ``<format>+rag`` with each item's passages."""
    out: dict[str, list[str]] = {}
    for s in sorted((s for s in lm_systems if s.retrieval is None), key=lambda s: s.prompt_format):
        if s.prompt_key not in out:
            out[s.prompt_key] = [backend.render(e, s) for e in items]
    for s in lm_systems:
        if s.retrieval is not None and s.prompt_key not in out:
            out[s.prompt_key] = [backend.render(e, s, p) for e, p in zip(items, passages or ())]
    return out


def _per_system(lm_systems: list[System], values: list) -> dict[str, list]:
    """The values of requests made system after system, each system for every item, by system name."""
    n = len(values) // len(lm_systems) if lm_systems else 0
    return {s.name: values[k * n:(k + 1) * n] for k, s in enumerate(lm_systems)}


def _samples(items, generated, systems, backend: Backend, prompts, nlls, gens, answers, passages, overlap,
             train: list[Example]) -> list[dict[str, Any]]:
    """samples.jsonl: per item its prompts, references and every system's answer (with NLL for a language model);
    a near-duplicate of a training item also the training texts it nearly repeats (the report's contamination).

    An item scored by the NLL metrics alone has ``generated: false`` and, per language-model row, only its NLL
    fields (no prediction; no reference row: they answer for generation metrics only)."""
    from .audit import nearest_training_texts

    train_by_id = {t.id: t for t in reversed(train)}  # ids are unique in a Dataset; with repeats the first wins
    ref_tokens = backend.count_tokens([e.answer for e in items])
    samples = []
    k = -1  # position among the generated items (gens and answers hold those only)
    for i, e in enumerate(items):
        k += generated[i]
        record: dict[str, Any] = {
            "id": e.id, "qtype": e.qtype, "focus": e.focus, "question": e.question, "generated": generated[i],
            "prompts": {key: prompts[key][i] for key in prompts},
            "reference": e.answer, "references": list(e.references), "reference_tokens": ref_tokens[i],
            "systems": {},
        }
        if overlap is not None:
            record["train_overlap"] = {k: overlap[i][k] for k in ("reference", "question", "near_duplicate")}
            if overlap[i]["near_duplicate"]:
                record["train_overlap"]["nearest"] = nearest_training_texts(overlap[i], train_by_id)
        for s in systems:
            if s.generates:
                n = nlls[s.name][i]
                rec = record["systems"][s.name] = {}
                if generated[i]:
                    g = gens[s.name][k]
                    rec.update(prediction=g.text, generated_tokens=g.generated_tokens, truncated=g.truncated,
                               stop_reason=g.stop_reason)
                rec.update(nll_sum=n and n.nll_sum, nll_tokens=n and n.nll_tokens,
                           perplexity=n and n.perplexity)  # None: the backend scores no NLL
                if s.retrieval is not None:  # what the prompt gave it; the grounding metrics read them
                    rec["passages"] = [p.to_dict() for p in passages[i]]
            elif generated[i]:
                a = answers[s.name][k]
                record["systems"][s.name] = {
                    "prediction": a.text, "generated_tokens": backend.count_tokens([a.text])[0],
                    "truncated": False, "stop_reason": None, "source": a.source,
                }
        samples.append(record)
    return samples


def _check_adapters(inference: Backend, lm_systems, nlls, prompts, completions) -> None:
    """:func:`check_adapters_change_model` against the base model alone in each adapter's own prompt format and on
    its own (quantized or not) base. Plain rows only: a +rag row shares its plain row's adapter."""
    n = ADAPTER_CHECK_ITEMS
    adapters = [s for s in lm_systems if s.kind == "adapter" and s.retrieval is None]
    base_rows = {(s.prompt_format, s.quantization): s for s in lm_systems if s.kind == "baseline" and s.retrieval is None}
    base_nlls = {}
    for a in adapters:
        row = base_rows.get((a.prompt_format, a.quantization))
        if row is not None:
            base_nlls[a.name] = nlls[row.name]
        else:  # no such baseline row: score the base alone on the first items (cached like any NLL)
            probe = System("baseline", "baseline", a.prompt_format, "adapter check", a.quantization)
            base_nlls[a.name] = inference.completion_nll(
                [NLLRequest(probe, p, c) for p, c in zip(prompts[a.prompt_format][:n], completions[a.prompt_format][:n])])
    check_adapters_change_model({a.name: nlls[a.name] for a in adapters}, base_nlls, n)


def _system_infos(systems: list[System], backend: Backend, spec: RunSpec,
                  retrieval: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """``results["systems"]``: each row's kind, prompt format and quantization (and why), stop sequences and
    provenance (the backend's: an adapter's identity and training log); a +rag row also its plain row
    (``variant_of``) and ``retrieval`` (medqa_bench.rag.run_passages)."""
    from .reference_rows import describe_reference_row, method_settings

    out: dict[str, dict[str, Any]] = {}
    for s in systems:
        info: dict[str, Any] = {"kind": s.kind, "prompt_format": s.prompt_format, "format_source": s.format_source}
        if s.generates:
            info["stop_sequences"] = list(spec.decoding.stop_sequences(s.prompt_format))
            info.update(quantization=s.quantization, quantization_source=s.quantization_source)
        if s.retrieval is not None:
            info.update(variant_of=s.variant_of, retrieval=retrieval)
        if s.generates:
            info.update(backend.describe_system(s))
        else:
            info.update(method=s.method, description=describe_reference_row(s.method), settings=method_settings(s.method))
        out[s.name] = info
    return out


def _score_and_write(out_dir: Path, results, samples, metrics, spec: RunSpec, timings, progress,
                     validity: ValiditySource, files: dict[str, bytes] | None = None) -> Path:
    from .analysis import analyze
    from .metrics.scoring import score_item_sets
    from .validity.measured import run_validity

    systems = list(results["systems"])
    t = time.perf_counter()
    scored, metric_info = score_item_sets(samples, metrics, {n: i.get("kind") for n, i in results["systems"].items()},
                                          seed=spec.seed, progress=progress)
    timings["score_s"] = time.perf_counter() - t
    # `score` keeps the metrics it does not compute again: merge, the new values last
    results["metrics"] = {**(results.get("metrics") or {}), **metric_info}
    results["results"] = {s: {**(results.get("results") or {}).get(s, {}), **scored.get(s, {})} for s in systems}
    # after scoring: a judge's signature (its model) is known only once it has scored
    results["validity"] = run_validity(results["metrics"], validity)
    t = time.perf_counter()
    results["analysis"] = analyze(results, samples, similarity_metric=spec.analysis.similarity_metric,
                                  thresholds=spec.analysis.thresholds or None, seed=spec.analysis.seed)
    from .analysis.verdict import build_verdict

    results["verdict"] = build_verdict(results)
    timings["analysis_s"] = time.perf_counter() - t
    results["timings"] = {**results.get("timings", {}), **{k: round(v, 3) for k, v in timings.items()}}
    # The three files are written into a sibling folder that replaces the run folder in one rename: a failure (a
    # full disk, a failing report) leaves the earlier run folder as it was.
    with run_folder.staged(out_dir) as tmp:
        for name, data in (files or {}).items():  # the plugin sources its metrics record (plugins.plugin_copies)
            atomic.write_bytes(tmp / name, data)
        atomic.write_jsonl(tmp / "samples.jsonl", samples)
        atomic.write_json(tmp / "results.json", results)
        if spec.report:
            from .report import render_report

            t = time.perf_counter()
            render_report([tmp])
            results["timings"]["report_s"] = round(time.perf_counter() - t, 3)
            atomic.write_json(tmp / "results.json", results)
    log.info("wrote %s", out_dir)
    return out_dir


def read_run(run_dir: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Load (results, samples) of a run folder, checking the schema version (the report's loader) and that
    samples.jsonl holds every item results.json counts (:func:`check_samples_complete`)."""
    from .report.runs import load_run

    results, samples = load_run(run_dir)
    check_samples_complete(results, samples, Path(run_dir))
    return results, samples


def check_samples_complete(results: dict[str, Any], samples: list[dict[str, Any]], run_dir: Path) -> None:
    """A :class:`RunError` unless samples.jsonl holds the items results.json was computed on: their number, the
    fingerprint of their ids in order (``data.item_ids_fingerprint``; folders written before it are checked by count)
    and a record for every system. Scoring a cut samples.jsonl would rewrite the aggregates on fewer items."""
    data = results.get("data") or {}
    where = f"{run_dir / 'samples.jsonl'}"
    damaged = "; the run folder is damaged: restore it or run the evaluation again"
    n_items = data.get("n_items")
    if isinstance(n_items, int) and n_items != len(samples):
        raise RunError(f"{where} holds {len(samples)} item{'s' if len(samples) != 1 else ''} but results.json counts "
                       f"{n_items}{damaged}")
    recorded = data.get("item_ids_fingerprint")
    if recorded and recorded != "sha256:" + sha256_json([s["id"] for s in samples]):
        raise RunError(f"{where}: its item ids are not the ones results.json was computed on (item_ids_fingerprint "
                       f"differs){damaged}")
    infos = results.get("systems") or {}
    for sample in samples:
        # an item scored by the NLL metrics alone holds the language-model rows only
        expected = [name for name in infos if sample.get("generated", True) or (infos[name] or {}).get("kind") != "reference"]
        missing = [name for name in expected if name not in (sample.get("systems") or {})]
        if missing:
            raise RunError(f"{where}: item '{sample['id']}' has no record for system '{missing[0]}'{damaged}")


def score(run_dir: str | Path, *, metrics: list[str] | None = None, plugins: tuple[str, ...] = (),
          metric_params: dict | None = None, similarity_metric: str | None = None,
          thresholds: dict[str, Any] | None = None, out: str | Path | None = None, overwrite: bool = False,
          report: bool = True, progress: bool = True, validity: str | None = None) -> Path:
    """Re-score a run folder's saved generations (no language model is loaded), re-analyse and re-render it.

    ``metrics`` are computed again (or added); every other metric of the run keeps its scores. Without ``metrics``
    every metric of the run is computed again. The metrics of ``plugins`` are always computed, and a plugin given
    overrides the run's own for the metrics it brings; a run's plugin is otherwise loaded from the path it recorded,
    only for the metrics computed again (:func:`medqa_bench.metrics.registry.resolve_rescore_metrics`, which checks
    and records its fingerprint). The soft-match analysis keeps the metric the run used unless ``similarity_metric``
    names another; ``thresholds`` (``t``, ``t_low``, ``t_high``) change its thresholds. The run folder is replaced
    whole, or, with ``out``, left as it was and the re-scored run written to ``out`` (a folder holding a different
    run is replaced only with ``overwrite``). ``validity`` (a validity.json, or "bundled") replaces the run's source
    of validity figures; either way the validity block is computed again for the metrics the run now has. Returns
    the folder written.
    """
    from .metrics.provenance import plugin_copies
    from .validity.measured import read_validity_source

    run_dir = Path(run_dir)
    out_dir = Path(out) if out is not None else run_dir
    with run_folder.lock(run_dir):
        results, samples = read_run(run_dir)
        spec = RunSpec.from_dict(results["spec"])
        resolved, spec = _rescore_metrics(results, spec, metrics, tuple(plugins), metric_params or {}, run_dir)
        # the soft-match metric the run's analysis used stays, whatever metrics are added, unless another is named
        used = (results.get("analysis") or {}).get("similarity_metric")
        used = similarity_metric or (used if used in (results.get("metrics") or {}) else None)
        if used or thresholds:
            from .spec import AnalysisSpec

            spec = spec.replace(analysis=AnalysisSpec(used or spec.analysis.similarity_metric,
                                                      {**spec.analysis.thresholds, **(thresholds or {})},
                                                      spec.analysis.seed))
        spec = spec.replace(report=report)
        if validity is not None:
            spec = spec.replace(validity=None if validity == "bundled" else validity)
        source = read_validity_source(spec.validity)
        if out_dir.resolve() != run_dir.resolve():
            run_folder.check_replaceable(out_dir, spec.to_dict(), overwrite=overwrite)
        computed = {m.name for m in resolved}
        files = plugin_copies(resolved, {n: i for n, i in (results.get("metrics") or {}).items() if n not in computed},
                              run_dir)
        for record in samples:
            for sys_record in record["systems"].values():
                for key in ("scores", "best_reference", "distractor_scores", "nearest_qtype"):
                    _drop(sys_record.get(key), computed)
            _drop(record.get("null_scores"), computed)
        for per_metric in (results.get("results") or {}).values():
            _drop(per_metric, computed)  # results["metrics"] keeps its order: the new infos replace the old in place
        results["spec"] = spec.to_dict()
        results["schema_version"] = SCHEMA_VERSION  # same major version (read_run): the fields added since are written
        results.setdefault("data", {}).setdefault("item_ids_fingerprint", "sha256:" + sha256_json([s["id"] for s in samples]))
        return _score_and_write(out_dir, results, samples, resolved, spec, dict(results.get("timings", {})), progress,
                                source, files)


def _rescore_metrics(results: dict[str, Any], spec: RunSpec, metrics: list[str] | None, plugins: tuple[str, ...],
                     metric_params: dict[str, dict], run_dir: Path) -> tuple[list, RunSpec]:
    """The metrics to compute again and the spec that records the whole set (the run's metrics, then the new) and
    the plugins they now come from."""
    from .metrics.provenance import recorded_bases
    from .metrics.registry import GROUPS, resolve_rescore_metrics

    recorded = dict(results.get("metrics") or {})
    names = list(metrics) if metrics else list(recorded)
    params = {**spec.metric_params, **metric_params}
    # the run's own parameters go with the metrics computed again; a new parameter must name a metric computed
    asked = {k: v for k, v in params.items()
             if k in names or k in metric_params or set(GROUPS.get(k, ())) & set(names)}
    resolved, plugin_specs = resolve_rescore_metrics(
        names, recorded, recorded_plugins=spec.plugins, plugins=plugins, params=asked,
        bases=recorded_bases(run_dir, spec.output_path), run_dir=run_dir)
    all_names = tuple(dict.fromkeys([*recorded, *(m.name for m in resolved)]))
    return resolved, spec.replace(metrics=all_names, plugins=plugin_specs, metric_params=params)


def _drop(mapping: dict | None, keys: set[str]) -> None:
    for key in keys:
        if mapping:
            mapping.pop(key, None)
