"""Every built-in metric's validity on the bundled judged set, and its scoring time on the CPU, as Markdown.

    .venv/bin/python benchmarks/bench_validity.py [--metrics A,B] [--bootstrap 2000] [--seed 0]
                                                  [--against embedding_similarity] [--out DIR] [--judged FOLDER]
                                                  [--write-measured]

Runs :func:`medqa_bench.validity.validate` on the bundled MedQuAD judged set (``medqa-bench data fetch
medquad-judged``, or ``--judged`` a folder holding ``qrels.txt`` and ``answers.csv.gz``) with every default metric
of ``metrics validate`` (built-in, reference-based, no language model) unless ``--metrics`` names others, writes
``validity.json`` and ``validity.html`` to ``--out`` (default ``reports/validity/medquad-judged``, not committed) and
prints four tables: agreement with the grades (95% CIs from resampling questions), robustness win rates, each
metric against ``--against`` on within-question Spearman and on-topic AUC (difference, CI, Holm-corrected p), and
time.

``--write-measured`` also writes ``medqa_bench/validity/measured.json``, the figures every run records by default
(:mod:`medqa_bench.validity.measured`): the compact form of this validity.json, numbers and definitions only, no text
of the judged set. Run it after changing a metric's definition (tests/test_run_validity.py checks that the file's
signatures are today's).

Time: ``s / 1,000 pairs`` scores the set's first 1,000 (candidate, reference) pairs with a fresh metric object after
one warm-up pair (the warm-up loads any model, so this is the scoring alone); ``validate s`` is the metric's whole
scoring call inside ``validate`` (every candidate and perturbed answer against each of its references, model
loading included).
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

from medqa_bench.metrics import resolve_metrics  # noqa: E402
from medqa_bench.validity import bundled_judged_set, validate, write_validity  # noqa: E402
from medqa_bench.validity.command import default_metrics  # noqa: E402
from medqa_bench.validity.page import render_validity_html  # noqa: E402
from medqa_bench.validity.robustness import PERTURBATIONS  # noqa: E402
from medqa_bench.validity.stats import FIGURE_TITLES, FIGURES  # noqa: E402


def cell(interval: dict | None, digits: int = 2) -> str:
    if not interval or interval.get("value") is None:
        return "–"
    if interval.get("ci_low") is None:
        return f"{interval['value']:.{digits}f}"
    return f"{interval['value']:.{digits}f} [{interval['ci_low']:.{digits}f}, {interval['ci_high']:.{digits}f}]"


def seconds_per_1000(name: str, params: dict | None, candidates) -> float:
    pairs = [(c.candidate, ref) for c in candidates for ref in c.references][:1000]
    [metric] = resolve_metrics([name], params=params)
    metric.compute(predictions=["warm-up answer"], references=["warm-up reference"])
    start = time.perf_counter()
    metric.compute(predictions=[p for p, _ in pairs], references=[r for _, r in pairs])
    return (time.perf_counter() - start) * 1000 / len(pairs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--metrics", help="comma-separated (default: every default metric of `metrics validate`)")
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--against", default="embedding_similarity", help="the metric the others are compared with")
    ap.add_argument("--out", default="reports/validity/medquad-judged")
    ap.add_argument("--judged", help="the judged folder (default: the user data folder's medquad-judged)")
    ap.add_argument("--write-measured", action="store_true", help="also write medqa_bench/validity/measured.json, "
                    "the bundled figures runs record (numbers only)")
    args = ap.parse_args()

    names = [m.strip() for m in args.metrics.split(",")] if args.metrics else default_metrics()
    judged = bundled_judged_set(args.judged)
    start = time.perf_counter()
    data = validate(judged, resolve_metrics(names), n_bootstrap=args.bootstrap, seed=args.seed, progress=False)
    total = time.perf_counter() - start
    out = Path(args.out)
    write_validity(out / "validity.json", data)
    (out / "validity.html").write_text(render_validity_html(data), encoding="utf-8")
    if args.write_measured:
        from medqa_bench.validity.measured import bundled_path, write_measured

        write_measured(bundled_path(), data)
    timing = {n: seconds_per_1000(n, None, judged.candidates) for n in data["metrics"] if n != "answer_length"}

    import torch

    counts = data["judged_set"]["counts"]
    print(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads "
          f"{torch.get_num_threads()}; Python {platform.python_version()}.")
    print(f"Set: {counts['questions']} questions, {counts['candidates']} candidates "
          f"(by grade {counts['candidates_by_grade']}), {counts['reference_pairs']} candidate-reference pairs; "
          f"{data['robustness']['good_candidates']} good candidates; {args.bootstrap} resamples of questions, "
          f"seed {args.seed}; validate took {total:.0f} s.\n")
    rows = list(data["metrics"].values())
    print("| metric | " + " | ".join(FIGURE_TITLES[f] for f in FIGURES) + " |")
    print("|---" * (len(FIGURES) + 1) + "|")
    for r in rows:
        label = r["name"] + (" (no reference)" if r["kind"] == "baseline" else "")
        print(f"| {label} | " + " | ".join(cell(r["figures"][f]) for f in FIGURES) + " |")
    print("\nRobustness: win rate of the good answer over each perturbed answer [95% CI]; passes = every lower "
          "bound above 0.5.\n")
    print("| metric | " + " | ".join(PERTURBATIONS) + " | passes |")
    print("|---" * (len(PERTURBATIONS) + 2) + "|")
    for r in rows:
        print(f"| {r['name']} | " + " | ".join(cell(r["robustness"][p]) for p in PERTURBATIONS)
              + f" | {'yes' if r['passes_robustness'] else 'no'} |")
    if args.against in data["metrics"]:
        print(f"\nAgainst {args.against}: difference (metric − {args.against}) [95% CI], Holm-corrected p over "
              "every pair of metrics on the figure.\n")
        print("| metric | within-question Spearman | p (Holm) | on-topic AUC | p (Holm) |")
        print("|---|---|---|---|---|")
        for r in rows:
            if r["name"] == args.against:
                continue
            cells = []
            for figure in ("within_question_spearman", "auc_on_topic"):
                c = next(c for c in data["comparisons"] if c["figure"] == figure
                         and {c["a"], c["b"]} == {r["name"], args.against})
                sign = 1 if c["a"] == r["name"] else -1
                lo, hi = sorted((sign * c["ci_low"], sign * c["ci_high"])) if c["ci_low"] is not None else (None, None)
                diff = {"value": sign * c["difference"] if c["difference"] is not None else None, "ci_low": lo,
                        "ci_high": hi}
                cells += [cell(diff), f"{c['p_holm']:.3f}" if c["p_holm"] is not None else "–"]
            print(f"| {r['name']} | " + " | ".join(cells) + " |")
    print("\n| metric | s / 1,000 pairs (warm) | validate s (all pairs, load included) |")
    print("|---|---|---|")
    for name, seconds in timing.items():
        print(f"| {name} | {seconds:.2f} | {data['metrics'][name]['seconds']:.1f} |")
    for s in data["skipped_metrics"]:
        print(f"\nNot validated: {s['name']}: {s['reason']}.")
    print(f"\nPrimary metric: {data['primary'] or 'none'}: {data['primary_reason']}.")
    print(f"\n(validity.json and validity.html in {out})")
    if args.write_measured:
        print("(medqa_bench/validity/measured.json written from it)")


if __name__ == "__main__":
    main()
