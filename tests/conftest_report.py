"""A hand-made run folder in the shape of :mod:`medqa_bench.schema`, for the analysis, report and browser tests.

``make_run(folder)`` writes ``results.json`` and ``samples.jsonl``: ~30 items over two qtypes, a baseline and one
adapter with a training log, four metrics (three similarities in [0, 1] and perplexity), seeded and realistic
enough to draw every chart. ``payload`` is planted in one prediction, question and reference.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

from medqa_bench import atomic
from medqa_bench.schema import SCHEMA_VERSION

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
_QTYPES = ("symptoms", "treatment")
_FOCI = ("Glaucoma", "Asthma", "Diabetes", "Anemia", "Psoriasis", "Gout", "Migraine", "Lupus", "Scoliosis", "Rickets")


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


def _aggregate(values: list[float], rng: random.Random) -> dict:
    n = len(values)
    means = sorted(sum(rng.choice(values) for _ in range(n)) / n for _ in range(200))
    return {"value": sum(values) / n, "ci_low": means[5], "ci_high": means[194], "n": n}


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
) -> tuple[dict, list[dict]]:
    """``(results, samples)`` as dicts; the adapter is better on average, with some regressions."""
    rng = random.Random(seed)
    systems = ("baseline", *adapters)
    samples = []
    for i in range(n):
        qtype = qtypes[i % len(qtypes)]
        focus = _FOCI[i % len(_FOCI)]
        reference = f"The {qtype} of {focus} include " + ", ".join(f"finding {k}" for k in range(rng.randint(3, 12)))
        ref_tokens = len(reference.split()) * 2
        rec = {
            "id": f"{id_prefix}{i:03d}",
            "qtype": qtype,
            "focus": focus,
            "question": f"What are the {qtype} of {focus} ?",
            "prompt": f"### Question Type:\n{qtype}\n\n### Question:\nWhat are the {qtype} of {focus} ?\n\n### Answer:",
            "reference": reference,
            "references": [reference],
            "reference_tokens": ref_tokens,
            "distractor_id": f"{id_prefix}{(i + 7) % n:03d}",
            "systems": {},
        }
        for k, name in enumerate(systems):
            quality = min(0.97, max(0.05, rng.gauss(baseline_quality + 0.15 * k, 0.15)))
            gen = max(3, int(rng.gauss(ref_tokens * (1.4 - 0.3 * k), 12)))
            truncated = gen >= 64
            gen = min(gen, 64)
            nll_tokens = ref_tokens
            nll_sum = nll_tokens * (2.3 - 0.35 * k + rng.gauss(0, 0.2))
            other_qtype = qtype if rng.random() < 0.75 + 0.1 * k else qtypes[(i + 1) % len(qtypes)]
            rec["systems"][name] = {
                "prediction": f"{focus} ({name}): " + " ".join(["symptom"] * (gen // 4)),
                "generated_tokens": gen,
                "truncated": truncated,
                "nll_sum": nll_sum,
                "nll_tokens": nll_tokens,
                "perplexity": math.exp(nll_sum / nll_tokens),
                "scores": {
                    "embedding_similarity": round(quality, 4),
                    "fuzzy": round(min(1.0, max(0.0, quality - 0.15 + rng.gauss(0, 0.05))), 4),
                    "rougeL": round(min(1.0, max(0.0, quality * 0.55 + rng.gauss(0, 0.04))), 4),
                    "perplexity": math.exp(nll_sum / nll_tokens),
                },
                "best_reference": {"embedding_similarity": 0, "fuzzy": 0, "rougeL": 0},
                "distractor_scores": {
                    "embedding_similarity": round(min(0.95, max(0.0, rng.gauss(0.45, 0.12))), 4),
                    "fuzzy": round(min(1.0, max(0.0, rng.gauss(0.3, 0.1))), 4),
                    "rougeL": round(min(1.0, max(0.0, rng.gauss(0.15, 0.05))), 4),
                },
                "nearest_qtype": {
                    m: [other_qtype, round(quality + 0.02, 4)] for m in ("embedding_similarity", "fuzzy", "rougeL")
                },
            }
        samples.append(rec)
    if payload is not None:
        samples[0]["question"] += " " + payload
        samples[0]["reference"] += " " + payload
        samples[0]["references"] = [samples[0]["reference"]]
        samples[0]["systems"][adapters[0] if adapters else "baseline"]["prediction"] = payload
        samples[1]["systems"]["baseline"]["prediction"] = payload
        samples[0]["focus"] = payload

    agg_rng = random.Random(seed + 1)
    results = {}
    for name in systems:
        results[name] = {}
        for m in _METRICS:
            vals = [s["systems"][name]["scores"][m] for s in samples]
            results[name][m] = _aggregate(vals, agg_rng)
        nll = sum(s["systems"][name]["nll_sum"] for s in samples)
        tok = sum(s["systems"][name]["nll_tokens"] for s in samples)
        results[name]["perplexity"]["value"] = math.exp(nll / tok)
    results_file = {
        "schema_version": SCHEMA_VERSION,
        "medqa_bench_version": "0.1.0",
        "created": "2025-01-01T00:00:00+00:00",
        "run_name": run_name,
        "spec": {
            "model": "smollm2-135m-instruct",
            "systems": list(adapters),
            "data": {"source": "medquad.csv.gz", "qtype": "symptoms,treatment", "split": "test"},
            "decoding": {"max_new_tokens": 64, "do_sample": False},
            "metrics": list(_METRICS),
            "analysis": {"similarity_metric": None, "thresholds": {}, "seed": 0},
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
            "quantization": None,
            "dtype": "float32",
            "device": "cpu",
        },
        "systems": {
            "baseline": {"kind": "baseline", "adapter": None, "training_log": None},
            **{
                a: {
                    "kind": "adapter",
                    "adapter": {
                        "name": a,
                        "path": f"adapters/{a}",
                        "fingerprint": "sha256:" + "b" * 64,
                        "base_model": "smollm2-135m-instruct",
                        "r": 16,
                        "lora_alpha": 32,
                    },
                    "training_log": _training_log(),
                }
                for a in adapters
            },
        },
        "data": {"fingerprint": "sha256:" + "c" * 64, "split": "test", "n_items": n, "limit": None, "sample_seed": 0},
        "metrics": {m: {"name": m, **info} for m, info in _METRICS.items()},
        "results": results,
        "timings": {"load": 3.2, "generate": 41.0, "nll": 6.5, "score": 4.1},
    }
    return results_file, samples


def make_run(folder: Path, **kwargs) -> Path:
    """Write a run folder; keyword arguments go to :func:`make_records`."""
    results, samples = make_records(**kwargs)
    folder = Path(folder)
    atomic.write_json(folder / "results.json", results)
    atomic.write_jsonl(folder / "samples.jsonl", samples)
    return folder


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())
