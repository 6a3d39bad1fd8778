"""A hand-made run folder in the shape of :mod:`medqa_bench.schema` (2.x), for the analysis, report and browser tests.

``make_run(folder)`` writes ``results.json`` and ``samples.jsonl``: ~30 items over two qtypes; baseline rows (one per
prompt format in ``baseline_formats``: the chat row is sound, a base model asked in the reference template answers
worse and sometimes not at all), adapters with a training log and a training eval loss, the reference rows
(retrieval, boilerplate, question echo) that need no model; four metrics (three similarities in [0, 1] and
perplexity); stop reasons; a leakage audit with a few near-duplicates; null scores (fuzzy calibrates, rougeL is
two-valued and embedding_similarity has too few pairs, so both fall back with a reason); and, with
``analysed=True``, the analysis and the verdict the runner would store. Seeded and realistic enough to draw every
chart. ``payload`` is planted in a prediction, the question, reference and focus, a reference row's description and
training item, an adapter's format source and its loss definition, and a flagged item's training id.

For combined reports, a run can differ from another in its budget (``max_new_tokens``), its metrics (``metrics``),
the items scored by loss and perplexity alone (``nll_only``), its null pairs (``null_items``: null scores on the first
items only), its thresholds (``spec_thresholds``), the similarity metric its spec asks for (``similarity_metric``)
and its primary metric (``primary``: a validity block naming it);
``adapter_seed`` draws the adapters' answers apart, so runs of one ``seed`` share their baseline and reference rows.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

from medqa_bench.storage import atomic
from medqa_bench.planning.budget import given_budget
from medqa_bench.data.reference_rows import REFERENCE_ROWS, describe_reference_row
from medqa_bench.schema import SCHEMA_VERSION
from medqa_bench.inference.systems import baseline_name

XSS_PAYLOADS = (
    "<script>window.__xss = 1; document.title = 'XSS';</script>",
    "<img src=x onerror=\"window.__xss = 2; document.title = 'XSS'\">",
    "</script><script>window.__xss = 3; document.title = 'XSS'</script>",
    '<svg onload="window.__xss = 4"></svg>',
)
XSS = " ".join(XSS_PAYLOADS)

_METRICS = {
    "embedding_similarity": {
        "higher_is_better": True,
        "kind": "reference",
        "bounds": [0.0, 1.0],
        "signature": "embedding_similarity|all-MiniLM-L6-v2|cosine",
        "source": "builtin",
    },
    "fuzzy": {
        "higher_is_better": True,
        "kind": "reference",
        "bounds": [0.0, 1.0],
        "signature": "fuzzy|token_set_ratio/100|rapidfuzz=3.9",
        "source": "builtin",
    },
    "rougeL": {
        "higher_is_better": True,
        "kind": "reference",
        "bounds": [0.0, 1.0],
        "signature": "rougeL|stemmer=on|rouge-score=0.1.2",
        "source": "builtin",
    },
    "perplexity": {
        "higher_is_better": False,
        "kind": "nll",
        "bounds": None,
        "signature": "perplexity|exp(sum nll / sum tokens)",
        "source": "builtin",
    },
}
_SIMILARITIES = ("embedding_similarity", "fuzzy", "rougeL")
_QTYPES = ("symptoms", "treatment")
_FOCI = ("Glaucoma", "Asthma", "Diabetes", "Anemia", "Psoriasis", "Gout", "Migraine", "Lupus", "Scoliosis", "Rickets")
_STOPS = {"chat": [], "reference": ["### Question", "### Answer"]}
# Item positions of the near-duplicates: by reference, by both, by question.
_NEAR_DUPLICATES = ((3, "reference"), (7, "both"), (11, "question"))
_BOILERPLATE = (
    "The Human Phenotype Ontology provides the following list of signs and symptoms. If the information is available, "
    "the table below includes how often the symptom is seen in people with this condition."
)
MAX_NEW_TOKENS = 64


def _training_log() -> dict:
    steps = [
        {
            "step": s,
            "epoch": round(s / 20, 3),
            "loss": round(2.6 * math.exp(-s / 25) + 1.1, 4),
            "learning_rate": 2e-4 * (1 - s / 61),
            "tokens": 512 * s,
        }
        for s in range(2, 61, 2)
    ]
    epochs = [
        {
            "epoch": e,
            "train_loss": round(2.6 * math.exp(-e * 20 / 25) + 1.2, 4),
            "eval_loss": round(2.6 * math.exp(-e * 20 / 25) + 1.35 + 0.05 * e, 4),
        }
        for e in (1, 2, 3)
    ]
    return {"source": "training_log.jsonl", "steps": steps, "epochs": epochs}


def _training_eval_loss(payload: str | None) -> dict:
    return {
        "value": 1.4321,
        "definition": {
            "form": "batch-mean",
            "formula": "TRL/transformers' evaluation loop: the mean over evaluation batches of each batch's mean token "
            "loss (weighted by batch size, not by tokens)" + (f" {payload}" if payload else ""),
            "eos": True,
            "truncation": "prompt + completion cut to max_length = 512 tokens (keep start)",
            "quantization": "4bit",
            "compute_dtype": "bfloat16",
            "split": "validation",
        },
    }


def _aggregate(values: list[float], rng: random.Random) -> dict:
    n = len(values)
    means = sorted(sum(rng.choice(values) for _ in range(n)) / n for _ in range(200))
    return {"value": sum(values) / n, "ci_low": means[5], "ci_high": means[194], "n": n}


def _scores(quality: float, rng: random.Random, rouge_shift: float = 0.0) -> dict[str, float]:
    return {
        "embedding_similarity": round(quality, 4),
        "fuzzy": round(min(1.0, max(0.0, quality - 0.15 + rng.gauss(0, 0.05))), 4),
        "rougeL": round(min(1.0, max(0.0, quality * 0.55 + rouge_shift + rng.gauss(0, 0.04))), 4),
    }


def _similarity_fields(quality: float, qtype: str, other_qtype: str, rng: random.Random) -> dict:
    return {
        "best_reference": {m: 0 for m in _SIMILARITIES},
        "distractor_scores": {
            "embedding_similarity": round(min(0.95, max(0.0, rng.gauss(0.45, 0.12))), 4),
            "fuzzy": round(min(1.0, max(0.0, rng.gauss(0.3, 0.1))), 4),
            "rougeL": round(min(1.0, max(0.0, rng.gauss(0.15, 0.05))), 4),
        },
        "nearest_qtype": {m: [other_qtype, round(quality + 0.02, 4)] for m in _SIMILARITIES},
    }


def _prediction(focus: str, name: str, tokens: int, *, looping: bool) -> str:
    """About ``tokens`` / 4 words; a looping row repeats one word (the degeneration table flags it)."""
    words = ["symptom"] * (tokens // 4) if looping else [f"sign{j % 17}" for j in range(tokens // 4)]
    return f"{focus} ({name}): " + " ".join(words)


def _overlap(i: int, n_near: int, rng: random.Random) -> dict:
    side = dict(_NEAR_DUPLICATES[:n_near]).get(i)
    ref = round(min(0.89, max(0.05, rng.gauss(0.55, 0.12))), 4)
    q = round(min(0.89, max(0.02, rng.gauss(0.45, 0.15))), 4)
    if side in ("reference", "both"):
        ref = 0.95 + 0.01 * (i % 4)
    if side in ("question", "both"):
        q = 0.91 + 0.01 * (i % 5)
    return {
        "reference": {"score": ref, "train_id": f"t{rng.randint(0, 2135):04d}-1"},
        "question": {"score": q, "train_id": f"t{rng.randint(0, 2135):04d}-1"},
        "near_duplicate": ref >= 0.9 or q >= 0.9,
    }


def make_records(
    n: int = 30,
    *,
    seed: int = 0,
    adapters: tuple[str, ...] = ("qlora-medquad",),
    payload: str | None = None,
    id_prefix: str = "q",
    run_name: str = "smollm2-medquad",
    baseline_quality: float = 0.55,
    qtypes: tuple[str, ...] = _QTYPES,
    baseline_formats: tuple[str, ...] = ("chat",),
    reference_rows: tuple[str, ...] = REFERENCE_ROWS,
    near_duplicates: int = 2,
    analysed: bool = True,
    n_bootstrap: int = 500,
    max_new_tokens: int = MAX_NEW_TOKENS,
    metrics: tuple[str, ...] = tuple(_METRICS),
    nll_only: int = 0,
    null_items: int | None = None,
    spec_thresholds: dict | None = None,
    primary: str | None = None,
    adapter_seed: int | None = None,
    similarity_metric: str | None = None,
) -> tuple[dict, list[dict]]:
    """``(results, samples)`` as dicts; the adapter is better than the chat baseline on average but worse on rougeL
    (and not better than retrieval there); a reference-format baseline row is weaker and leaves some answers empty."""
    rng = random.Random(seed)
    arng = rng if adapter_seed is None else random.Random(adapter_seed)
    baselines = {baseline_name(f, baseline_formats): f for f in baseline_formats}
    formats = {**baselines, **{a: "reference" for a in adapters}}  # language-model rows and their prompt formats
    lm_quality = {b: baseline_quality - (0.25 if f == "reference" else 0.0) for b, f in baselines.items()}
    lm_quality.update({a: baseline_quality + 0.15 * (k + 1) for k, a in enumerate(adapters)})
    ref_quality = {"retrieval": 0.5, "boilerplate": 0.42, "question": 0.3}
    samples = []
    for i in range(n):
        qtype = qtypes[i % len(qtypes)]
        focus = _FOCI[i % len(_FOCI)]
        question = f"What are the {qtype} of {focus} ?"
        reference = f"The {qtype} of {focus} include " + ", ".join(f"finding {k}" for k in range(rng.randint(3, 12)))
        ref_tokens = len(reference.split()) * 3
        rec = {
            "id": f"{id_prefix}{i:03d}",
            "qtype": qtype,
            "focus": focus,
            "question": question,
            "prompts": {
                f: (
                    f"<|im_start|>user\nQuestion type: {qtype}\n\n{question}<|im_end|>\n<|im_start|>assistant\n"
                    if f == "chat"
                    else f"### Question Type:\n{qtype}\n\n### Question:\n{question}\n\n### Answer:"
                )
                for f in sorted(set(formats.values()))
            },
            "reference": reference,
            "references": [reference],
            "reference_tokens": ref_tokens,
            "distractor_id": f"{id_prefix}{(i + 7) % n:03d}",
            "null_scores": {
                "fuzzy": round(min(1.0, max(0.0, rng.gauss(0.3, 0.08))), 4),
                "rougeL": rng.choice((0.0, 0.1)),  # two-valued: calibration falls back, with the reason
                **({"embedding_similarity": round(rng.gauss(0.45, 0.1), 4)} if i < 6 else {}),  # too few pairs
            } if null_items is None or i < null_items else {},
            "train_overlap": _overlap(i, near_duplicates, rng),
            "systems": {},
        }
        for k, (name, fmt) in enumerate(formats.items()):
            rng_ = rng
            rng = arng if name in adapters else rng_  # the adapters' draws apart, when adapter_seed asks for it
            quality = min(0.97, max(0.05, rng.gauss(lm_quality[name], 0.15)))
            empty = name in baselines and fmt == "reference" and rng.random() < 0.2
            gen = 1 if empty else max(3, int(rng.gauss(ref_tokens * (1.4 - 0.3 * k), 12)))
            truncated = gen >= max_new_tokens
            gen = min(gen, max_new_tokens)
            nll_tokens = ref_tokens
            nll_sum = nll_tokens * (2.3 - 0.35 * k + rng.gauss(0, 0.2))
            other_qtype = qtype if rng.random() < 0.75 + 0.1 * k else qtypes[(i + 1) % len(qtypes)]
            # adapters paraphrase: closer in meaning, fewer of the reference's exact word sequences (rougeL regresses)
            shift = -0.15 if name in adapters else 0.0
            scores = {m: 0.0 for m in _SIMILARITIES} if empty else _scores(quality, rng, shift)
            looping = fmt == "reference" and name in baselines  # a base model in a template it was not made for
            stop = "stop" if fmt == "reference" and i % 3 and not empty else "eos"  # an empty answer is an EOS
            rec["systems"][name] = {
                "prediction": "" if empty else _prediction(focus, name, gen, looping=looping),
                "generated_tokens": gen,
                "truncated": truncated,
                "stop_reason": "length" if truncated else stop,
                "nll_sum": nll_sum,
                "nll_tokens": nll_tokens,
                "perplexity": math.exp(nll_sum / nll_tokens),
                "scores": {**scores, "perplexity": math.exp(nll_sum / nll_tokens)},
                **_similarity_fields(quality, qtype, other_qtype, rng),
            }
            rng = rng_
        for method in reference_rows:
            quality = min(0.97, max(0.05, rng.gauss(ref_quality[method], 0.08)))
            other = _FOCI[(i + 3) % len(_FOCI)]
            text, source = {
                "retrieval": (f"The {qtype} of {other} include finding 1, finding 2",
                              {"train_id": f"t{rng.randint(0, 2135):04d}-2", "score": round(rng.uniform(4, 15), 3)}),
                "boilerplate": (_BOILERPLATE, {"train_id": "t0042-1", "score": 0.695}),
                "question": (question, None),
            }[method]
            rec["systems"][method] = {
                "prediction": text,
                "generated_tokens": len(text.split()) * 2,
                "truncated": False,
                "stop_reason": None,
                "source": source,
                "scores": _scores(quality, rng),
                **_similarity_fields(quality, qtype, qtype, rng),
            }
        samples.append(rec)
    if payload is not None:
        samples[0]["question"] += " " + payload
        samples[0]["reference"] += " " + payload
        samples[0]["references"] = [samples[0]["reference"]]
        first_lm = adapters[0] if adapters else next(iter(baselines))
        samples[0]["systems"][first_lm]["prediction"] = payload
        samples[1]["systems"][next(iter(baselines))]["prediction"] = payload
        samples[0]["focus"] = payload
        if "retrieval" in reference_rows:
            samples[0]["systems"]["retrieval"]["source"]["train_id"] = "t0001 " + payload
        flagged = [s for s in samples if s["train_overlap"]["near_duplicate"]]
        if flagged:
            flagged[0]["train_overlap"]["reference"]["train_id"] = "t0002 " + payload
    chosen = {m: info for m, info in _METRICS.items() if m in metrics}
    if len(chosen) < len(_METRICS):
        _keep_metrics(samples, chosen)
    generated_refs = [s["reference_tokens"] for s in samples]
    samples += _nll_only_items(nll_only, n, formats, id_prefix, rng)

    agg_rng = random.Random(seed + 1)
    results = {}
    for name in [*formats, *reference_rows]:
        results[name] = {}
        for m, info in chosen.items():
            if info["kind"] == "nll" and name not in formats:
                continue  # a reference row has no model, so no loss or perplexity
            vals = [s["systems"][name]["scores"][m] for s in samples
                    if m in (s["systems"].get(name) or {}).get("scores", {})]
            results[name][m] = _aggregate(vals, agg_rng)
        if name in formats and "perplexity" in chosen:
            nll = sum(s["systems"][name]["nll_sum"] for s in samples)
            tok = sum(s["systems"][name]["nll_tokens"] for s in samples)
            results[name]["perplexity"]["value"] = math.exp(nll / tok)
    several = len(baseline_formats) > 1
    systems = {
        **{
            b: {
                "kind": "baseline",
                "prompt_format": f,
                "format_source": "baseline_formats" if several else "the model's chat template",
                "stop_sequences": list(_STOPS[f]),
                "adapter": None,
                "training_log": None,
            }
            for b, f in baselines.items()
        },
        **{
            a: {
                "kind": "adapter",
                "prompt_format": "reference",
                "format_source": "training metadata" + (f" {payload}" if payload else ""),
                "stop_sequences": list(_STOPS["reference"]),
                "adapter": {
                    "name": a,
                    "path": f"adapters/{a}",
                    "fingerprint": "sha256:" + "b" * 64,
                    "base_model": "smollm2-135m-instruct",
                    "r": 16,
                    "lora_alpha": 32,
                    "training": {"resolved": {"quantization": "4bit", "compute_dtype": "bfloat16"}},
                },
                "training_log": _training_log(),
                "training_eval_loss": _training_eval_loss(payload),
            }
            for a in adapters
        },
        **{
            r: {
                "kind": "reference",
                "prompt_format": None,
                "format_source": "",
                "method": r,
                "description": describe_reference_row(r) + (f" {payload}" if payload and r == "boilerplate" else ""),
            }
            for r in reference_rows
        },
    }
    results_file = {
        "schema_version": SCHEMA_VERSION,
        "medqa_bench_version": "0.1.0",
        "created": "2025-01-01T00:00:00+00:00",
        "run_name": run_name,
        "spec": {
            "model": "smollm2-135m-instruct",
            "adapters": {a: f"adapters/{a}" for a in adapters},
            "baseline_formats": list(baseline_formats),
            "reference_rows": list(reference_rows),
            "data": {"source": "medquad.csv.gz", "qtype": "symptoms,treatment", "split": "test"},
            "decoding": {"max_new_tokens": max_new_tokens, "do_sample": False},
            "metrics": list(chosen),
            "analysis": {"similarity_metric": similarity_metric, "thresholds": spec_thresholds or {}, "seed": 0},
        },
        "environment": {
            "python": "3.11.2",
            "platform": "Linux-x86_64",
            "git_commit": "abc1234",
            "versions": {"torch": "2.5.1", "transformers": "4.57.0", "peft": "0.17.1"},
            "hardware": {"device": "cpu", "cpu_count": 2},
        },
        "model": {
            "reference": "smollm2-135m-instruct",
            "kind": "alias",
            "fingerprint": "sha256:" + "a" * 64,
            "quantization": "none",
            "dtype": "float32",
            "device": "cpu",
        },
        "systems": systems,
        "budget": given_budget(max_new_tokens, generated_refs),
        "loss_definition": {
            "form": "corpus",
            "formula": "sum of NLL over the reference tokens / number of reference tokens (natural log)",
            "eos": False,
            "truncation": "none: answers longer than the context are scored with a strided sliding window",
            "max_length": 8192,
            "quantization": "none",
            "compute_dtype": "float32",
            "split": "test",
        },
        "data": {"fingerprint": "sha256:" + "c" * 64, "split": "test", "n_items": n + nll_only, "limit": None,
                 "sample_seed": 0, **({"n_generated": n} if nll_only else {})},
        "metrics": {m: {"name": m, **info, **({"items": "all" if info["kind"] == "nll" else "generated"}
                                              if nll_only else {})} for m, info in chosen.items()},
        "results": results,
        "timings": {"load": 3.2, "generate": 41.0, "nll": 6.5, "score": 4.1},
    }
    if primary is not None:
        results_file["validity"] = _validity(chosen, primary)
    if analysed:
        from medqa_bench.analysis import analyze
        from medqa_bench.analysis.verdict import build_verdict

        results_file["analysis"] = analyze(results_file, samples, n_bootstrap=n_bootstrap)
        results_file["verdict"] = build_verdict(results_file)
    return results_file, samples


def _keep_metrics(samples: list[dict], chosen: dict) -> None:
    """Every per-item score of the metrics not chosen dropped (a run that scored fewer metrics)."""
    for s in samples:
        s["null_scores"] = {m: v for m, v in s["null_scores"].items() if m in chosen}
        for rec in s["systems"].values():
            for key in ("scores", "best_reference", "distractor_scores", "nearest_qtype"):
                rec[key] = {m: v for m, v in (rec.get(key) or {}).items() if m in chosen}
            if "perplexity" not in chosen:
                for key in ("nll_sum", "nll_tokens", "perplexity"):
                    rec.pop(key, None)


def _nll_only_items(k: int, n: int, formats: dict, id_prefix: str, rng: random.Random) -> list[dict]:
    """``k`` items after the generated ``n`` that the language-model rows' loss scores alone (generated false)."""
    out = []
    for i in range(n, n + k):
        tokens = 20 + i
        systems = {}
        for name in formats:
            nll_sum = tokens * (2.0 + rng.gauss(0, 0.2))
            systems[name] = {"nll_sum": nll_sum, "nll_tokens": tokens, "perplexity": math.exp(nll_sum / tokens),
                             "scores": {"perplexity": math.exp(nll_sum / tokens)}}
        out.append({"id": f"{id_prefix}{i:03d}", "generated": False, "qtype": _QTYPES[i % 2], "focus": _FOCI[i % 10],
                    "question": f"What is {_FOCI[i % 10]} ?", "prompts": {}, "reference": "An answer.",
                    "references": ["An answer."], "reference_tokens": tokens, "systems": systems})
    return out


def _validity(metrics: dict, primary: str) -> dict:
    """A validity block as ``run_validity`` records it, naming ``primary`` the primary metric (no figures: a
    hand-made run's signatures were never measured)."""
    return {
        "source": "bundled", "fingerprint": "sha256:" + "d" * 64, "created": "2025-01-01", "judged_set": {},
        "settings": {}, "floor": {"figure": "within_question_spearman", "value": 0.2, "rule": "hand-made"},
        "primary": {"metric": primary, "rule": "hand-made run", "reason": "named by the test"},
        "metrics": {m: {"measured": False, "signature": info["signature"], "reason": "a hand-made run's metric"}
                    for m, info in metrics.items()},
    }


def make_run(folder: Path, **kwargs) -> Path:
    """Write a run folder; keyword arguments go to :func:`make_records`."""
    results, samples = make_records(**kwargs)
    folder = Path(folder)
    atomic.write_json(folder / "results.json", results)
    atomic.write_jsonl(folder / "samples.jsonl", samples)
    return folder


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())
