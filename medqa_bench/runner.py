"""The evaluation run: plan -> infer -> score -> analyze -> write.

``run(spec)`` writes a run folder (results.json, samples.jsonl, report.html); ``score(run_dir)`` re-scores saved
generations without loading the language model. Both return the run folder's path.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .storage import atomic, run_folder
from .inference import distributed
from .inference.backends import Backend, GenerationRequest, NLLRequest, check_capabilities, create_backend
from .inference.backends.caching import wrap
from .inference.backends.options import comparable
from .storage.cache import InferenceCache, open_cache
from .data.dataset import Example
from .errors import AdapterError, RunError
from .storage.fingerprint import sha256_json
from .inference.nll import CompletionNLL
from .inference.loss import run_loss_definition
from .storage.paths import default_dataset
from .planning.plan import RunPlan, plan_run
from .storage.provenance import environment
from .data.rag import run_passages
from .schema import SCHEMA_VERSION
from .spec import RunSpec
from .inference.systems import System

if TYPE_CHECKING:
    from .validity.measured import ValiditySource

log = logging.getLogger(__name__)

#: Items on which each adapter must change the log-probabilities, checked before any generation.
ADAPTER_CHECK_ITEMS = 4


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


def run(spec: RunSpec | None = None, *, progress: bool = True) -> Path:
    """Evaluate every system of ``spec`` on the same items; write and return the run folder.

    The flow is a straight line: plan (:func:`medqa_bench.planning.plan_run`: data, training corpus, items, rows,
    metrics, budget; no weights) -> infer (the backend, behind the cache: NLL of every item and generations of the
    generated ones, for every language-model row; reference rows and the leakage audit from the training corpus) ->
    score (each metric on the items it applies to) -> analyze (analysis and verdict) -> write (the run folder).

    Under ``accelerate launch`` (several processes) the items are sharded across the processes and rank 0 writes
    the same run folder a single process would; every process returns its path (see medqa_bench.inference.distributed).

    The run folder is checked before any work (writable, not a file) and locked until the run ends; before the model
    loads, a folder holding a different run stops the run unless ``spec.overwrite`` (see medqa_bench.storage.run_folder).
    """
    spec = spec or RunSpec()
    t0 = time.perf_counter()
    ranks = distributed.launched(spec.device)  # None unless launched with WORLD_SIZE > 1 (nothing imported then)
    backend = create_backend(spec, ranks=ranks)  # nothing loaded; an unknown name fails
    plan = plan_run(spec, backend, ranks=ranks)
    timings = {"data_s": time.perf_counter() - t0}
    if ranks is not None and not ranks.is_main:
        return _run(plan, backend, ranks, timings, progress)  # only the process that writes the folder holds its lock
    with run_folder.lock(plan.spec.output_path):
        return _run(plan, backend, ranks, timings, progress)


def _run(plan: RunPlan, backend: Backend, ranks, timings: dict[str, float], progress: bool) -> Path:
    t0 = time.perf_counter() - timings["data_s"]
    spec = plan.spec
    progress = progress and (ranks is None or ranks.is_main)
    run_folder.check_replaceable(spec.output_path, spec.to_dict(), overwrite=spec.overwrite,
                                 own_files=[spec.cache] if spec.cache not in (None, "default") else [],
                                 comparable=comparable)
    t = time.perf_counter()
    context = _context(plan, ranks)  # reference rows, passages and the leakage audit: the training corpus, no model
    timings["reference_rows_s"] = time.perf_counter() - t
    t = time.perf_counter()
    backend.load(plan.lm_systems)  # weights loaded and adapters attached, or a server connected and checked
    timings["load_s"] = time.perf_counter() - t
    check_capabilities(backend, plan.lm_systems, nll_metrics=plan.nll_metrics)  # what a connected server can do
    outputs = _infer(plan, backend, ranks, context, progress, timings)
    if ranks is not None and not ranks.is_main:
        backend.close()
        return ranks.wait_for_main()  # rank 0 scores and writes the run folder; return its path
    samples = _samples(plan, backend, outputs, context)
    results = _results(plan, backend, ranks, outputs, context)
    backend.close()
    from .metrics.provenance import plugin_copies

    out_dir = spec.output_path
    timings["inference_total_s"] = time.perf_counter() - t0
    files = plugin_copies(plan.metrics)
    metrics = list(plan.metrics)
    if ranks is not None:  # the others wait in wait_for_main() above; a failure here is passed on to them
        return ranks.main_only(lambda: _score_and_write(out_dir, results, samples, metrics, spec, timings, progress,
                                                        plan.validity, files))
    return _score_and_write(out_dir, results, samples, metrics, spec, timings, progress, plan.validity, files)


@dataclass(frozen=True)
class _Context:
    """What the rows are given or measured against besides the model: reference rows' answers, +rag passages (and
    how they were retrieved) and the leakage audit's overlaps."""

    answers: dict[str, list[Any]]
    passages: list | None
    retrieval: dict[str, Any] | None
    overlap: list | None


def _context(plan: RunPlan, ranks) -> _Context:
    """Reference rows and audits that need no model: the training corpus only. Drawn from the evaluated data, a
    training item with an evaluated item's id is that item and never its own candidate; from another file, ids say
    nothing. The corpus's passage index is built once per training fingerprint (rank 0 first)."""
    from .data.audit import audit_items
    from .data.reference_rows import reference_answers

    spec, train, own, items = plan.spec, plan.data.corpus.items, plan.data.corpus.own_split, list(plan.items)
    gen_items = plan.generated_items
    answers = {s.name: reference_answers(s.method, gen_items, train, exclude_same_id=own)
               for s in plan.systems if not s.generates}
    passages, retrieval = None, None
    rag = next((s.retrieval for s in plan.lm_systems if s.retrieval is not None), None)
    if rag is not None:
        passages, retrieval = (run_passages(rag, items, train, spec.cache, exclude_same_id=own) if ranks is None
                               else ranks.main_first(lambda: run_passages(rag, items, train, spec.cache,
                                                                          exclude_same_id=own)))
    overlap = (audit_items(items, train, exclude_same_id=own) if train and not (own and spec.split == "train")
               else None)
    return _Context(answers, passages, retrieval, overlap)


@dataclass(frozen=True)
class _Outputs:
    """What the backend answered: each row's prompts, NLLs (None without NLL) and generations; the cache's use."""

    prompts: dict[str, list[str]]
    nlls: dict[str, list[Any]]
    gens: dict[str, list[Any]]
    cache: dict[str, Any]


def _infer(plan: RunPlan, backend: Backend, ranks, context: _Context, progress: bool,
           timings: dict[str, float]) -> _Outputs:
    """NLL of every item and generations of the generated ones, for every language-model row, behind the run's
    cache and, under a launch, sharded across the processes; each adapter checked to change the model."""
    spec, lm_systems, items = plan.spec, plan.lm_systems, list(plan.items)
    prompts = _prompts(backend, items, lm_systems, context.passages)
    completions = {f: [e.completion(f) for e in items] for f in sorted({s.prompt_format for s in lm_systems})}
    # Multi-process: rank 0 creates the SQLite file (WAL, schema) before the other writers open it.
    cache = _cache_for(spec) if ranks is None else ranks.main_first(lambda: _cache_for(spec))
    try:
        inference = wrap(backend, cache, ranks)  # cached, and sharded across the ranks of a launch
        t = time.perf_counter()
        # A backend without completion NLL (a server without prompt log-probabilities) runs when no NLL metric is
        # asked for: its rows' nll fields are None, and the adapter check, which compares NLLs, cannot run.
        if "nll" in backend.capabilities:
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
             for p, g in zip(prompts[s.prompt_key], plan.generated) if g], progress=progress))
        timings["generate_s"] = time.perf_counter() - t
        stats = {"hits": cache.hits, "misses": cache.misses, "path": str(cache.path) if cache.path else None}
    finally:
        cache.close()
    return _Outputs(prompts, nlls, gens, stats)


def _results(plan: RunPlan, backend: Backend, ranks, outputs: _Outputs, context: _Context) -> dict[str, Any]:
    """results.json before scoring (its one writer, :func:`medqa_bench.results_record.build_results`): provenance,
    the rows, the budget, the loss definition, the data and the cache."""
    from .results_record import build_results
    from .schema import DataRecord

    spec, dataset, corpus = plan.spec, plan.data.dataset, plan.data.corpus
    env = environment()
    if ranks is not None:
        env["distributed"] = ranks.describe()
    return build_results(
        run_name=spec.run_name,
        spec=spec.to_dict(),
        environment=env,
        models=backend.describe(),  # "model" is its first entry
        systems=_system_infos(plan, backend, context.retrieval),
        budget=dict(plan.budget),
        loss_definition=run_loss_definition(
            split=spec.split, max_length=backend.max_length, compute_dtype=backend.compute_dtype,
            quantization="/".join(dict.fromkeys(s.quantization for s in plan.lm_systems))),
        data=DataRecord(
            source=spec.data.path or str(default_dataset()),  # where the fetched MedQuAD was found
            fingerprint=dataset.manifest.data_fingerprint,
            manifest_fingerprint=dataset.manifest.fingerprint,
            split=spec.split,
            split_size=len(plan.data.pool),
            train_size=len(corpus.items),
            training=corpus.record,  # where the training corpus came from (medqa_bench.data.training_corpus)
            n_items=len(plan.items),  # every item of samples.jsonl: the NLL metrics' items
            n_generated=len(plan.generated_items),  # the items every system answered: the other metrics' items
            limit=spec.limit,
            nll_limit=spec.nll_limit,
            sample_seed=spec.sample_seed,
            item_ids_fingerprint="sha256:" + sha256_json([e.id for e in plan.items]),
            dropped_empty_rows=dataset.report.dropped_empty,
        ),
        cache=outputs.cache,
    )


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


def _samples(plan: RunPlan, backend: Backend, outputs: _Outputs, context: _Context) -> list[dict[str, Any]]:
    """samples.jsonl: per item its prompts, references and every system's answer (with NLL for a language model);
    a near-duplicate of a training item also the training texts it nearly repeats (the report's contamination).

    An item scored by the NLL metrics alone has ``generated: false`` and, per language-model row, only its NLL
    fields (no prediction; no reference row: they answer for generation metrics only)."""
    from .data.audit import nearest_training_texts

    items, generated, systems, train = plan.items, plan.generated, plan.systems, plan.data.corpus.items
    prompts, nlls, gens = outputs.prompts, outputs.nlls, outputs.gens
    answers, passages, overlap = context.answers, context.passages, context.overlap
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


def _system_infos(plan: RunPlan, backend: Backend, retrieval: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """``results["systems"]``: each row's kind, prompt format and quantization (and why), stop sequences and
    provenance (what the backend adds of a row, e.g. a served model's name; an adapter's identity and training log,
    from the plan); a +rag row also its plain row (``variant_of``) and ``retrieval`` (medqa_bench.data.rag.run_passages)."""
    from .analysis.training import read_training_log
    from .inference.loss import training_eval_loss_info
    from .data.reference_rows import describe_reference_row, method_settings

    out: dict[str, dict[str, Any]] = {}
    for s in plan.systems:
        info: dict[str, Any] = {"kind": s.kind, "prompt_format": s.prompt_format, "format_source": s.format_source}
        if s.generates:
            info["stop_sequences"] = list(plan.spec.decoding.stop_sequences(s.prompt_format))
            info.update(quantization=s.quantization, quantization_source=s.quantization_source)
        if s.retrieval is not None:
            info.update(variant_of=s.variant_of, retrieval=retrieval)
        if s.generates:
            describe_row = getattr(backend, "describe_row", None)  # optional: what only the backend knows of a row
            info.update(describe_row(s) if describe_row is not None else {})
            adapter = plan.adapters.get(s.adapter_name) if s.adapter_name else None
            if adapter is not None:
                info.update(adapter=adapter.to_dict(), training_log=read_training_log(adapter.path),
                            training_eval_loss=training_eval_loss_info(adapter.meta))
        else:
            info.update(method=s.method, description=describe_reference_row(s.method), settings=method_settings(s.method))
        out[s.name] = info
    return out


def _score_and_write(out_dir: Path, results, samples, metrics, spec: RunSpec, timings, progress,
                     validity: ValiditySource, files: dict[str, bytes] | None = None) -> Path:
    from .analysis import analyze
    from .metrics.scoring import score_item_sets
    from .results_record import with_sections
    from .validity.measured import run_validity

    systems = list(results["systems"])
    t = time.perf_counter()
    scored, metric_info = score_item_sets(samples, metrics, {n: i.get("kind") for n, i in results["systems"].items()},
                                          seed=spec.seed, progress=progress)
    timings["score_s"] = time.perf_counter() - t
    # `score` keeps the metrics it does not compute again: merge, the new values last
    merged = {**(results.get("metrics") or {}), **metric_info}
    results = with_sections(
        results, metrics=merged,
        results={s: {**(results.get("results") or {}).get(s, {}), **scored.get(s, {})} for s in systems},
        validity=run_validity(merged, validity))  # after scoring: a judge's signature is known only once it has scored
    t = time.perf_counter()
    results = with_sections(results, analysis=analyze(results, samples,
                                                      similarity_metric=spec.analysis.similarity_metric,
                                                      thresholds=spec.analysis.thresholds or None,
                                                      seed=spec.analysis.seed))
    from .analysis.verdict import build_verdict

    results = with_sections(results, verdict=build_verdict(results))
    timings["analysis_s"] = time.perf_counter() - t
    results = with_sections(results, timings={**results.get("timings", {}),
                                              **{k: round(v, 3) for k, v in timings.items()}})
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
            run_folder.check_replaceable(out_dir, spec.to_dict(), overwrite=overwrite, comparable=comparable)
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
