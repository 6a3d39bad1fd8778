"""Throughput of the built-in reference metrics through the scoring stage, on real MedQuAD answers.

    .venv/bin/python benchmarks/bench_metrics.py [--n 1000] [--qtype symptoms|all] [--systems 1] [--reference]

Items are the first N items of the bundled MedQuAD (all their references); each system's predictions are the
answers of N *other* items, so nothing is trivially equal and the embedding cache cannot share predictions
with references. Each metric goes through :func:`score_samples` as in a run (every reference, the distractor,
``nearest_qtype`` when the items span several qtypes, a 1000-resample bootstrap), with a fresh metric object,
so the embedding row includes importing the encoder's libraries (``transformers`` for the default model, which
is encoded without sentence-transformers; see ``medqa_bench/metrics/embedding.py``) and loading the model.
The target is 60 s for all of them together.

``--reference`` adds one row outside the total: ``embedding_similarity`` with ``max_seq_length=128`` (the length
all-MiniLM-L6-v2 was trained at; the default is the model folder's own 256) on the same items, its time relative
to the default's, and how far its per-item scores and corpus mean are from the default's.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from medqa_bench.data.dataset import DataSpec, load_dataset  # noqa: E402
from medqa_bench.metrics import BUILTINS, resolve_metrics  # noqa: E402
from medqa_bench.metrics.scoring import score_samples  # noqa: E402

TARGET_S = 60.0


def build_samples(n: int, qtype: str, n_systems: int) -> list[dict]:
    examples = load_dataset(DataSpec(qtype=qtype)).examples
    if len(examples) < n * (1 + n_systems):
        raise SystemExit(f"need {n * (1 + n_systems)} items for --n {n} and {n_systems} systems, have {len(examples)}")
    items = examples[:n]
    samples = []
    for i, ex in enumerate(items):
        systems = {f"system{k}": {"prediction": examples[n * (k + 1) + i].answer} for k in range(n_systems)}
        samples.append({"id": ex.id, "qtype": ex.qtype, "focus": ex.focus, "question": ex.question,
                        "reference": ex.answer, "references": list(ex.references), "systems": systems})
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--qtype", default="symptoms", help="'all' adds nearest_qtype (N×N) to the cost")
    parser.add_argument("--systems", type=int, default=1)
    parser.add_argument("--metrics", default=",".join(n for n in BUILTINS if n not in ("loss", "perplexity")))
    parser.add_argument("--reference", action="store_true",
                        help="also time embedding_similarity at max_seq_length=128 and compare its values with the default's")
    args = parser.parse_args()
    systems = [f"system{k}" for k in range(args.systems)]

    t0 = time.perf_counter()
    samples = build_samples(args.n, args.qtype, args.systems)
    n_refs = sum(len(s["references"]) for s in samples)
    print(f"{args.n} items ({n_refs} references, qtypes: {len({s['qtype'] for s in samples})}), "
          f"{args.systems} system(s); data loaded in {time.perf_counter() - t0:.1f} s")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, {platform.machine()}, load average {load}\n")

    rows, total = [], 0.0
    for name in args.metrics.split(","):
        [metric] = resolve_metrics([name])  # fresh object: no cache carried over from a previous metric
        start = time.perf_counter()
        score_samples(samples, [metric], systems, progress=False)
        seconds = time.perf_counter() - start
        total += seconds
        rows.append((name, args.n * args.systems / seconds, seconds))

    print(f"{'metric':<22}{'items/s':>10}{'seconds':>10}")
    for name, rate, seconds in rows:
        print(f"{name:<22}{rate:>10.1f}{seconds:>10.2f}")
    print(f"{'all':<22}{args.n * args.systems * len(rows) / total:>10.1f}{total:>10.2f}")
    if args.reference:
        reference_row(samples, systems, dict((name, seconds) for name, _, seconds in rows))
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\nload average now {load}; total {total:.1f} s = {total / TARGET_S:.2f} × the {TARGET_S:.0f} s target")


def reference_row(samples: list[dict], systems: list[str], seconds_by_metric: dict[str, float]) -> None:
    """embedding_similarity at max_seq_length=128 on the same items, against the default (the folder's 256)."""
    import numpy as np

    name = "embedding_similarity"
    [metric] = resolve_metrics([name], params={name: {"max_seq_length": 128}})
    ref_samples = copy.deepcopy(samples)
    for s in ref_samples:
        for sys_name in systems:
            s["systems"][sys_name].pop("scores", None)
    start = time.perf_counter()
    score_samples(ref_samples, [metric], systems, progress=False)
    seconds = time.perf_counter() - start
    n_scored = len(samples) * len(systems)
    label = f"embedding_sim@{metric.signature.split('max_seq_length=')[1].split('|')[0]}"
    print(f"\nreference, not in the total ({metric.signature.split('|')[2]}):")
    print(f"{label:<22}{n_scored / seconds:>10.1f}{seconds:>10.2f}", end="")
    if name in seconds_by_metric:
        print(f"   {seconds / seconds_by_metric[name]:.2f} × the default's time")
        new = np.array([s["systems"][k]["scores"][name] for s in samples for k in systems])
        old = np.array([s["systems"][k]["scores"][name] for s in ref_samples for k in systems])
        d = np.abs(new - old)
        print(f"per-item |default - reference|: mean {d.mean():.4f}, median {np.median(d):.4f}, "
              f"95th pct {np.percentile(d, 95):.4f}, max {d.max():.4f}; Pearson r {np.corrcoef(new, old)[0, 1]:.4f}")
        print(f"corpus mean: default {new.mean():.4f}, reference {old.mean():.4f}")
    else:
        print()


if __name__ == "__main__":
    main()
