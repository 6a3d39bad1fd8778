"""Two run folders of one evaluation, made by two generation engines, compared item by item (issue 34, item 3).

    .venv/bin/python benchmarks/engine_identity.py OLD_RUN NEW_RUN [--json FILE]

OLD_RUN and NEW_RUN are folders of the same ``medqa-bench run`` (same spec, items and rows) made with two engines,
e.g. today's ``generate`` and the slot engine (``MEDQA_BENCH_ENGINE=slots``), and scored with the same metrics
(``medqa-bench score DIR --metrics default`` for GPU runs made with ``--metrics loss,perplexity``). Prints two tables:

1. **Identity**, per language-model row: the share of generated items whose answer text is identical, whose token
   count, truncation and stop reason are identical, and whose completion NLL (``nll_sum``, ``nll_tokens``) is
   identical; the first differing item ids.
2. **Metrics**, per metric both runs scored and per language-model row: the old and the new corpus value with the
   95% CIs the runs recorded, the paired per-item difference (new - old) with its 95% bootstrap CI over items
   (:func:`medqa_bench.analysis.stats.paired_bootstrap`, items resampled), its permutation p, Holm-adjusted over
   every (metric, row) pair, and whether the value moved by less than the old value's CI half-width. Where every
   item is identical the difference is exactly 0 and no test is needed; where few items differ, the table says that
   a difference this small cannot be told from zero with these items.

Exit status: 0 after printing; 2 when the folders are not runs of the same items and rows.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medqa_bench.analysis.compare import per_item  # noqa: E402
from medqa_bench.analysis.stats import holm, paired_bootstrap  # noqa: E402
from medqa_bench.errors import RunError  # noqa: E402
from medqa_bench.report.runs import load_run  # noqa: E402
from medqa_bench.schema import read_results  # noqa: E402

GENERATION_KEYS = ("generated_tokens", "truncated", "stop_reason")
NLL_KEYS = ("nll_sum", "nll_tokens")


def lm_rows(results) -> list[str]:
    """The language-model rows (baselines and adapters) of a run, in its order."""
    return [name for name, info in results.systems.items() if info.kind in ("baseline", "adapter")]


def identity(old: list[dict], new: list[dict], row: str) -> dict:
    """How many of ``row``'s generated items are identical in text, in generation facts and in NLL."""
    by_id = {s["id"]: s for s in new}
    out = {"row": row, "generated": 0, "text": 0, "generation": 0, "nll_items": 0, "nll": 0, "differ": []}
    for s in old:
        a, b = s["systems"].get(row, {}), by_id[s["id"]]["systems"].get(row, {})
        if a.get("nll_tokens") is not None:
            out["nll_items"] += 1
            out["nll"] += all(a.get(k) == b.get(k) for k in NLL_KEYS)
        if "prediction" not in a:
            continue
        out["generated"] += 1
        same_text = a["prediction"] == b.get("prediction")
        out["text"] += same_text
        out["generation"] += all(a.get(k) == b.get(k) for k in GENERATION_KEYS)
        if not same_text:
            out["differ"].append(s["id"])
    return out


def metric_moves(old_results, new_results, old: list[dict], new: list[dict], rows: list[str], seed: int) -> list[dict]:
    """Per (metric, row) scored in both runs: old and new values with CIs and the paired difference over items."""
    out = []
    for metric, info in old_results.metrics.items():
        if metric not in new_results.metrics:
            continue
        for row in rows:
            a, b = per_item(old, row, metric, info), per_item(new, row, metric, info)
            ids = [i for i in a if i in b]
            if not ids:
                continue
            o, n = old_results.results.get(row, {}).get(metric), new_results.results.get(row, {}).get(metric)
            if o is None or n is None:
                continue
            diff = paired_bootstrap([b[i] for i in ids], [a[i] for i in ids], seed=seed)
            half = (o.ci_high - o.ci_low) / 2 if o.ci_high is not None and o.ci_low is not None else None
            out.append({
                "metric": metric, "row": row, "items": len(ids), "items_differing": sum(a[i] != b[i] for i in ids),
                "old": [o.value, o.ci_low, o.ci_high], "new": [n.value, n.ci_low, n.ci_high],
                "diff": [diff["mean_diff"], diff["ci_low"], diff["ci_high"]], "p": diff["p_permutation"],
                "old_ci_half_width": half,
                "moves_less_than_ci": None if half is None or o.value is None or n.value is None
                else n.value == o.value or abs(n.value - o.value) < half,
            })
    for m, p in zip(out, holm([m["p"] if m["items_differing"] else None for m in out])):
        m["p_holm"] = p
    return out


def _f(x) -> str:
    return "-" if x is None else f"{x:.4g}"


def _ci(v: list) -> str:
    return f"{_f(v[0])} [{_f(v[1])}, {_f(v[2])}]"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("old", type=Path, help="the run folder made by today's engine")
    ap.add_argument("new", type=Path, help="the run folder made by the new engine")
    ap.add_argument("--json", type=Path, help="also write both tables as JSON here")
    ap.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    args = ap.parse_args(argv)
    try:
        old_raw, old = load_run(args.old)
        new_raw, new = load_run(args.new)
    except RunError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    old_results, new_results = read_results(old_raw), read_results(new_raw)
    if sorted(s["id"] for s in old) != sorted(s["id"] for s in new):
        print(f"error: {args.old} and {args.new} hold different items; compare runs of the same items", file=sys.stderr)
        return 2
    rows = lm_rows(old_results)
    if rows != lm_rows(new_results):
        print(f"error: the runs have different language-model rows ({', '.join(rows)} against "
              f"{', '.join(lm_rows(new_results))})", file=sys.stderr)
        return 2

    ids = [identity(old, new, row) for row in rows]
    print(f"# {args.old} (old) against {args.new} (new)\n")
    print("| row | generated items | identical text | identical tokens, truncation, stop reason | identical NLL | first differing items |")
    print("|---|---|---|---|---|---|")
    for r in ids:
        g = r["generated"] or 1
        print(f"| {r['row']} | {r['generated']} | {r['text']} ({r['text'] / g:.1%}) | {r['generation']} "
              f"({r['generation'] / g:.1%}) | {r['nll']} of {r['nll_items']} | {', '.join(r['differ'][:3]) or '-'} |")

    moves = metric_moves(old_results, new_results, old, new, rows, args.seed)
    print("\n| metric | row | old [95% CI] | new [95% CI] | new - old, paired over items [95% CI] | items differing "
          "| Holm p | moved less than the old CI half-width |")
    print("|---|---|---|---|---|---|---|---|")
    for m in moves:
        p = "identical" if not m["items_differing"] else _f(m["p_holm"])
        less = {True: "yes", False: "**no**", None: "-"}[m["moves_less_than_ci"]]
        print(f"| {m['metric']} | {m['row']} | {_ci(m['old'])} | {_ci(m['new'])} | {_ci(m['diff'])} | "
              f"{m['items_differing']} of {m['items']} | {p} | {less} |")
    differing = [m for m in moves if m["items_differing"]]
    if differing and all(m["p_holm"] is None or m["p_holm"] >= 0.05 for m in differing):
        smallest = min(m["items_differing"] for m in differing)
        print(f"\nNo (metric, row) difference is significant after Holm's correction. With as few as {smallest} "
              "differing items a test has little power: a small real difference cannot be told from zero here.")
    if args.json:
        args.json.write_text(json.dumps({"identity": ids, "metrics": moves}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
