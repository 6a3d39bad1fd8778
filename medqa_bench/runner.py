"""The evaluation run: data -> model + adapters -> NLL and generations (cached) -> scores -> analysis -> report.

``run(spec)`` writes a run folder (results.json, samples.jsonl, report.html); ``score(run_dir)`` re-scores saved
generations without loading the language model. Both return the run folder's path.
"""

from __future__ import annotations

import logging
import random
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import __version__, atomic, distributed
from .cache import InferenceCache, cache_key
from .data import Example, load_dataset
from .errors import AdapterError
from .fingerprint import sha256_json
from .inference import CompletionNLL, Generation, completion_nll, generate, model_context_length
from .models import DEFAULT_MODEL, LoadedModel, attach_adapters, load_base, pick_device, resolve_model, system_active
from .provenance import environment
from .schema import SCHEMA_VERSION
from .spec import RunSpec

log = logging.getLogger(__name__)

DEFAULT_ADAPTER = "smollm2-135m-symptoms-qlora"
#: Items on which each adapter must change the log-probabilities, checked before any generation.
ADAPTER_CHECK_ITEMS = 4


def shipped_adapter() -> Path | None:
    from .paths import shipped_adapters_dir

    folder = shipped_adapters_dir() / DEFAULT_ADAPTER
    return folder if (folder / "adapter_config.json").exists() else None


def select_items(examples: list[Example], limit: int, seed: int) -> list[Example]:
    """A seeded sample of ``limit`` items (0: all), kept in split order."""
    if not limit or limit >= len(examples):
        return list(examples)
    keep = set(random.Random(seed).sample(range(len(examples)), limit))
    return [e for i, e in enumerate(examples) if i in keep]


def _adapters_for(spec: RunSpec) -> dict[str, str]:
    if spec.adapters:
        return dict(spec.adapters)
    if spec.default_adapters and spec.model == DEFAULT_MODEL:
        folder = shipped_adapter()
        if folder is not None:
            return {DEFAULT_ADAPTER: str(folder)}
    return {}


def _cache_for(spec: RunSpec) -> InferenceCache:
    if spec.cache is None:
        return InferenceCache(None)
    if spec.cache == "default":
        from .paths import cache_dir

        return InferenceCache(cache_dir() / "inference.sqlite")
    return InferenceCache(spec.cache)


def _identity(loaded: LoadedModel, system: str) -> dict[str, Any]:
    adapter = loaded.adapters.get(system)
    return {
        "model": loaded.source.fingerprint,
        "adapter": adapter.fingerprint if adapter else None,
        "quantization": loaded.quantization,
        "dtype": loaded.dtype,
        "device": loaded.device.split(":")[0],
    }


def _lookup(cache: InferenceCache, keys: list[str], ranks) -> dict[str, Any]:
    # Multi-process: rank 0 reads the cache and tells the others, so every rank agrees on what is left to do.
    return cache.get_many(keys) if ranks is None else ranks.from_main(lambda: cache.get_many(keys))


def _cached_nll(loaded, system, prompts, completions, spec, cache, progress, ranks=None) -> list[CompletionNLL]:
    max_length = spec.max_length or model_context_length(loaded.model, loaded.tokenizer)
    ident = _identity(loaded, system)
    keys = [cache_key("nll", ident, {"prompt": p, "completion": c, "max_length": max_length})
            for p, c in zip(prompts, completions)]
    found = _lookup(cache, keys, ranks)
    out: list[CompletionNLL | None] = [CompletionNLL(**found[k]) if k in found else None for k in keys]
    todo = [i for i, v in enumerate(out) if v is None]
    if todo:
        with system_active(loaded, system) as model:
            def nll(part: list[int]) -> list[CompletionNLL]:  # part: positions in todo
                def store(j: int, value: CompletionNLL) -> None:
                    cache.put_many([(keys[todo[part[j]]], "nll", {"nll_sum": value.nll_sum, "nll_tokens": value.nll_tokens})])

                return completion_nll(model, loaded.tokenizer, [prompts[todo[p]] for p in part],
                                      [completions[todo[p]] for p in part], batch_size=spec.batch_size,
                                      max_length=max_length, progress=progress, desc=f"nll {system}", on_result=store)

            if ranks is None:
                fresh = nll(list(range(len(todo))))
            else:  # each rank scores whole batches of the single-process plan (see medqa_bench.distributed)
                plan = ranks.from_main(lambda: distributed.nll_batches(
                    model, loaded.tokenizer, [prompts[i] for i in todo], [completions[i] for i in todo],
                    batch_size=spec.batch_size, max_length=max_length))
                fresh = ranks.compute_sharded(len(todo), plan, nll)
        for j, i in enumerate(todo):
            out[i] = fresh[j]
    return out  # type: ignore[return-value]


def _generation_lookup(loaded, system, prompts, spec, cache, ranks) -> tuple[list[str], list[Generation | None]]:
    """The cache keys of ``system``'s generations of ``prompts``, and the cached ones (None where not cached)."""
    ident, decoding = _identity(loaded, system), spec.decoding.to_dict()
    keys = [cache_key("generate", ident, {"prompt": p, "decoding": decoding}) for p in prompts]
    found = _lookup(cache, keys, ranks)
    return keys, [Generation(**found[k]) if k in found else None for k in keys]


def _cached_generate(loaded, system, prompts, spec, cache, progress, ranks=None) -> list[Generation]:
    keys, out = _generation_lookup(loaded, system, prompts, spec, cache, ranks)
    todo = [i for i, v in enumerate(out) if v is None]
    if todo:
        with system_active(loaded, system) as model:
            def gen(part: list[int]) -> list[Generation]:  # part: positions in todo
                def store(j: int, g: Generation) -> None:
                    cache.put_many([(keys[todo[part[j]]], "generate", _generation_record(g))])

                return generate(model, loaded.tokenizer, [prompts[todo[p]] for p in part], spec.decoding,
                                batch_size=spec.batch_size, progress=progress, desc=f"generate {system}", on_result=store)

            if ranks is None:
                fresh = gen(list(range(len(todo))))
            else:  # each rank generates whole batches of the single-process plan (see medqa_bench.distributed)
                plan = ranks.from_main(lambda: distributed.generation_batches(
                    model, loaded.tokenizer, [prompts[i] for i in todo], batch_size=spec.batch_size,
                    max_new_tokens=spec.decoding.max_new_tokens))
                fresh = ranks.compute_sharded(len(todo), plan, gen)
        for j, i in enumerate(todo):
            out[i] = fresh[j]
    return out  # type: ignore[return-value]


def _generation_record(g: Generation) -> dict[str, Any]:
    return {"text": g.text, "generated_tokens": g.generated_tokens, "truncated": g.truncated}


def _cached_generate_systems(loaded, systems, prompts, spec, cache, progress, ranks=None) -> dict[str, list[Generation]]:
    """Every system's generations. In one process with LoRA adapters, all systems' uncached items are generated
    together in mixed-adapter batches (:func:`generate`'s ``adapter_names``): each decoding step reads the base
    weights once for every system instead of once per system. Otherwise system after system."""
    mixable = ranks is None and len(systems) > 1 and loaded.adapters and all(
        getattr(cfg, "peft_type", None) == "LORA" for cfg in getattr(loaded.model, "peft_config", {}).values())
    if not mixable:
        return {s: _cached_generate(loaded, s, prompts, spec, cache, progress, ranks) for s in systems}
    keys, out, todo = {}, {}, []
    for s in systems:
        keys[s], out[s] = _generation_lookup(loaded, s, prompts, spec, cache, None)
        todo += [(s, i) for i, v in enumerate(out[s]) if v is None]
    if todo:
        def store(j: int, g: Generation) -> None:
            s, i = todo[j]
            cache.put_many([(keys[s][i], "generate", _generation_record(g))])

        fresh = generate(loaded.model, loaded.tokenizer, [prompts[i] for _, i in todo], spec.decoding,
                         batch_size=spec.batch_size, progress=progress, desc="generate", on_result=store,
                         adapter_names=["__base__" if s == "baseline" else s for s, _ in todo])
        for (s, i), g in zip(todo, fresh):
            out[s][i] = g
    return out


def check_adapters_change_model(nlls: dict[str, list[CompletionNLL]], n: int = ADAPTER_CHECK_ITEMS) -> None:
    """Fail loudly if an adapter leaves the log-probabilities of the first items unchanged (other harnesses then
    silently evaluate the base model)."""
    base = nlls["baseline"][:n]
    for name, values in nlls.items():
        if name == "baseline":
            continue
        if all(abs(a.nll_sum - b.nll_sum) <= 1e-6 * max(1.0, abs(b.nll_sum)) for a, b in zip(values[:n], base)):
            raise AdapterError(
                f"adapter '{name}' does not change the model: the log-probabilities of {len(base)} items equal the "
                "baseline's (LoRA B weights all zero, or the adapter's target modules are not in this model?)"
            )


def run(spec: RunSpec | None = None, *, progress: bool = True) -> Path:
    """Evaluate the baseline and every adapter of ``spec``; write and return the run folder.

    Under ``accelerate launch`` (several processes) the items are sharded across the processes and rank 0 writes
    the same run folder a single process would; every process returns its path (see medqa_bench.distributed).
    """
    spec = spec or RunSpec()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    ranks = distributed.launched(spec.device)  # None unless launched with WORLD_SIZE > 1 (nothing imported then)
    progress = progress and (ranks is None or ranks.is_main)
    device = pick_device(spec.device) if ranks is None else ranks.device
    spec = spec.resolved_for(device)
    adapters = _adapters_for(spec)
    spec = spec.replace(adapters=tuple(adapters.items()))

    t = time.perf_counter()
    dataset = load_dataset(spec.data)
    pool = dataset.split(spec.split)
    items = select_items(pool, spec.limit or 0, spec.sample_seed)
    if spec.limit and spec.limit < len(pool):
        log.info("evaluating a seeded sample of %d of %d %s items (--limit 0 evaluates all)", len(items), len(pool), spec.split)
    else:
        log.info("evaluating all %d %s items", len(items), spec.split)
    timings["data_s"] = time.perf_counter() - t

    from .metrics import resolve_metrics  # resolve before the model loads: a typo fails in a second, not minutes

    metrics = resolve_metrics(list(spec.metrics) if spec.metrics else None, plugins=spec.plugins, params=spec.metric_params)

    t = time.perf_counter()
    if ranks is not None:  # one process converts a GGUF file / downloads from the Hub; the others then find it
        ranks.main_first(lambda: resolve_model(spec.model))
    loaded = load_base(spec.model, quantization=spec.quantization, device=device, dtype=spec.dtype)
    attach_adapters(loaded, adapters)
    timings["load_s"] = time.perf_counter() - t

    tok = loaded.tokenizer
    prompts = [e.prompt(spec.prompt_format, tok) for e in items]
    completions = [e.completion(spec.prompt_format) for e in items]
    systems = ["baseline", *adapters]
    # Multi-process: rank 0 creates the SQLite file (WAL, schema) before the other writers open it.
    cache = _cache_for(spec) if ranks is None else ranks.main_first(lambda: _cache_for(spec))
    try:
        t = time.perf_counter()
        nlls = {s: _cached_nll(loaded, s, prompts, completions, spec, cache, progress, ranks) for s in systems}
        check_adapters_change_model(nlls)  # on the gathered NLLs: every rank reaches the same verdict
        timings["nll_s"] = time.perf_counter() - t
        t = time.perf_counter()
        gens = _cached_generate_systems(loaded, systems, prompts, spec, cache, progress, ranks)
        timings["generate_s"] = time.perf_counter() - t
        cache_stats = {"hits": cache.hits, "misses": cache.misses, "path": str(cache.path) if cache.path else None}
    finally:
        cache.close()
    if ranks is not None and not ranks.is_main:
        del loaded
        return ranks.wait_for_main()  # rank 0 scores and writes the run folder; return its path

    samples = []
    for i, e in enumerate(items):
        record: dict[str, Any] = {
            "id": e.id, "qtype": e.qtype, "focus": e.focus, "question": e.question, "prompt": prompts[i],
            "reference": e.answer, "references": list(e.references),
            "reference_tokens": len(tok(e.answer, add_special_tokens=False)["input_ids"]),
            "systems": {},
        }
        for s in systems:
            g, n = gens[s][i], nlls[s][i]
            record["systems"][s] = {
                "prediction": g.text, "generated_tokens": g.generated_tokens, "truncated": g.truncated,
                "nll_sum": n.nll_sum, "nll_tokens": n.nll_tokens, "perplexity": n.perplexity,
            }
        samples.append(record)

    from .analysis.training import read_training_log

    results: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "medqa_bench_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "run_name": spec.run_name,
        "spec": spec.to_dict(),
        "environment": environment(),
        "model": loaded.describe(),
        "systems": {"baseline": {"kind": "baseline", "adapter": None, "training_log": None}},
        "data": {
            "source": spec.data.path or "bundled:medquad.csv.gz",
            "fingerprint": dataset.manifest.data_fingerprint,
            "manifest_fingerprint": dataset.manifest.fingerprint,
            "split": spec.split,
            "split_size": len(pool),
            "n_items": len(items),
            "limit": spec.limit,
            "sample_seed": spec.sample_seed,
            "item_ids_fingerprint": "sha256:" + sha256_json([e.id for e in items]),
            "dropped_empty_rows": dataset.report.dropped_empty,
        },
        "cache": cache_stats,
    }
    if ranks is not None:
        results["environment"]["distributed"] = ranks.describe()
    for name, info in loaded.adapters.items():
        results["systems"][name] = {"kind": "adapter", "adapter": info.to_dict(), "training_log": read_training_log(info.path)}
    del loaded
    out_dir = spec.output_path
    timings["inference_total_s"] = time.perf_counter() - t0
    if ranks is not None:  # the others wait in wait_for_main() above; a failure here is passed on to them
        return ranks.main_only(lambda: _score_and_write(out_dir, results, samples, metrics, spec, timings, progress))
    return _score_and_write(out_dir, results, samples, metrics, spec, timings, progress)


def _score_and_write(out_dir: Path, results, samples, metrics, spec: RunSpec, timings, progress) -> Path:
    from .analysis import analyze
    from .metrics.scoring import score_samples

    systems = list(results["systems"])
    t = time.perf_counter()
    scored, metric_info = score_samples(samples, metrics, systems, seed=spec.seed, progress=progress)
    timings["score_s"] = time.perf_counter() - t
    results["metrics"] = metric_info
    results["results"] = scored
    t = time.perf_counter()
    results["analysis"] = analyze(results, samples, similarity_metric=spec.analysis.similarity_metric,
                                  thresholds=spec.analysis.thresholds or None, seed=spec.analysis.seed)
    timings["analysis_s"] = time.perf_counter() - t
    results["timings"] = {**results.get("timings", {}), **{k: round(v, 3) for k, v in timings.items()}}
    out_dir.mkdir(parents=True, exist_ok=True)
    # samples first, results last: a results.json always has its samples beside it.
    atomic.write_jsonl(out_dir / "samples.jsonl", samples)
    atomic.write_json(out_dir / "results.json", results)
    if spec.report:
        from .report import render_report

        t = time.perf_counter()
        render_report([out_dir])
        results["timings"]["report_s"] = round(time.perf_counter() - t, 3)
        atomic.write_json(out_dir / "results.json", results)
    log.info("wrote %s", out_dir)
    return out_dir


def read_run(run_dir: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Load (results, samples) of a run folder, checking the schema version (the report's loader)."""
    from .report.runs import load_run

    return load_run(run_dir)


def score(run_dir: str | Path, *, metrics: list[str] | None = None, plugins: tuple[str, ...] = (),
          metric_params: dict | None = None, report: bool = True, progress: bool = True) -> Path:
    """Re-score a run folder's saved generations (no language model is loaded) and re-render its report."""
    from .metrics import resolve_metrics

    run_dir = Path(run_dir)
    results, samples = read_run(run_dir)
    spec = RunSpec.from_dict(results["spec"])
    changes: dict[str, Any] = {"report": report}
    if metrics:
        changes["metrics"] = tuple(metrics)
    if plugins:
        changes["plugins"] = tuple(plugins)
    if metric_params:
        changes["metric_params"] = {**spec.metric_params, **metric_params}
    spec = spec.replace(**changes)
    resolved = resolve_metrics(list(spec.metrics) if spec.metrics else None, plugins=spec.plugins, params=spec.metric_params)
    for record in samples:
        for sys_record in record["systems"].values():
            for key in ("scores", "best_reference", "distractor_scores", "nearest_qtype"):
                sys_record.pop(key, None)
    results["spec"] = spec.to_dict()
    return _score_and_write(run_dir, results, samples, resolved, spec, dict(results.get("timings", {})), progress)
