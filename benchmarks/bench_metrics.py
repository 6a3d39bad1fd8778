"""Throughput of the built-in reference metrics through the scoring stage, on real MedQuAD answers.

    .venv/bin/python benchmarks/bench_metrics.py [--n 1000] [--qtype symptoms|all] [--systems 1]

Items are the first N items of the bundled MedQuAD (all their references); each system's predictions are the
answers of N *other* items, so nothing is trivially equal and the embedding cache cannot share predictions
with references. Each metric goes through :func:`score_samples` as in a run (every reference, the distractor,
``nearest_qtype`` when the items span several qtypes, a 1000-resample bootstrap), with a fresh metric object,
so the embedding row includes importing sentence-transformers and loading the model. The target is 60 s for
all of them together.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from medqa_bench.data import DataSpec, load_dataset  # noqa: E402
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
    args = parser.parse_args()

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
        score_samples(samples, [metric], [f"system{k}" for k in range(args.systems)], progress=False)
        seconds = time.perf_counter() - start
        total += seconds
        rows.append((name, args.n * args.systems / seconds, seconds))

    print(f"{'metric':<22}{'items/s':>10}{'seconds':>10}")
    for name, rate, seconds in rows:
        print(f"{name:<22}{rate:>10.1f}{seconds:>10.2f}")
    print(f"{'all':<22}{args.n * args.systems * len(rows) / total:>10.1f}{total:>10.2f}")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\nload average now {load}; total {total:.1f} s = {total / TARGET_S:.2f} × the {TARGET_S:.0f} s target")


if __name__ == "__main__":
    main()
