"""Issue 31, item 5: choose the new metrics' settings on half of the judged questions, report them on the other half.

    .venv/bin/python benchmarks/metric_selection.py [--phase tune|report|all|timing] [--out DIR] [--n-bootstrap 2000]

The bundled judged set's questions (:func:`medqa_bench.validity.bundled_judged_set`) are shuffled with a fixed
seed (:data:`SPLIT_SEED`) and cut in two: the **tuning half** and the **held-out half**.

- ``tune``: every variant of :data:`VARIANTS` (and ``embedding_similarity``) is validated on the tuning half; per
  family, the variant with the highest within-question Spearman there is chosen (:func:`choose`). The choice is
  written to ``DIR/choice.json``.
- ``report``: the chosen variants, ``embedding_similarity`` and the lexical metrics are validated on the held-out
  half and on the whole set (``DIR/validity-heldout.json``, ``DIR/validity-all.json``). The whole-set figures include
  the tuning questions, so only the held-out half's are free of the choice. With them:
- the **blend**: ``w · embedding_similarity + (1 − w) · L``, L the lexical variant chosen on the tuning half, w on
  a grid of 0.05 maximising the within-question Spearman of the questions it is fitted on. It is reported only where
  its weight was fitted on other questions: fitted on the tuning half and scored on the held-out half; and on all
  questions by cross-fitting, each question scored with the weight fitted without it (the two halves; and 5 folds
  of questions, seeded), written to ``DIR/blend.json``. (On all questions the tuning-half weight is in-sample for
  half of them; that row is shown for completeness.)
- ``timing``: seconds to score the first 1,000 (candidate, reference) pairs with each metric (``DIR/timing.md``).

The tables' ``seconds`` column is the validation's own: a metric object is reused across validations (its encoded
texts too), so only its first validation pays for encoding; ``timing`` measures each metric on its own. The committed
output (``benchmarks/results/metric-selection/``) holds the tables and the choices; the ``validity-*.json`` files
(per-candidate scores, ~1.7 MB) are left out and are rewritten by running the script (about 25 minutes on 2 cores).

Every figure, CI, robustness win rate and comparison comes from :func:`medqa_bench.validity.validate` (bootstrap over
questions, Holm over the metric pairs of each figure); this script only picks subsets and variants and prints.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from medqa_bench.metrics import resolve_metrics  # noqa: E402
from medqa_bench.validity import bundled_judged_set, validate, write_validity  # noqa: E402

SPLIT_SEED = 31  # the number; fixed before any figure was seen
BASELINE = "embedding_similarity"
#: family -> {variant label: (registered metric, parameters)}
VARIANTS: dict[str, dict[str, tuple[str, dict]]] = {
    "idf_token_f1": {"idf_token_f1": ("idf_token_f1", {})},
    "bm25_similarity": {
        f"bm25_similarity[form={form},k1={k1:g},b={b:g}]": ("bm25_similarity", {"form": form, "k1": k1, "b": b})
        for form in ("f1", "recall") for k1 in (0.9, 1.5) for b in (0.4, 0.75)
    },
    "embedding_chunked": {
        f"embedding_chunked_{pooling}[chunk_length={length},overlap={overlap}]":
            (f"embedding_chunked_{pooling}", {"chunk_length": length, "overlap": overlap})
        for pooling in ("mean", "maxsim") for length in (128, 256) for overlap in (0, 32)
    },
}
LEXICAL = ["token_f1", "rouge2", "rougeL"]
#: A diagnostic, not a new metric: the existing metric reading only the first 128 word pieces (MiniLM's training
#: length). If chunking the rest of a long answer does not help, does reading less hurt?
VARIANTS["embedding_first_128"] = {
    "embedding_similarity[max_seq_length=128]": ("embedding_similarity", {"max_seq_length": 128}),
}
#: The learned combination: weight * embedding_similarity + (1 - weight) * the lexical metric chosen on the tuning
#: half; the weight is fitted (by within-question Spearman, on a grid) on training questions only.
BLEND_GRID = [round(0.05 * k, 2) for k in range(21)]
N_FOLDS = 5


def halves(judged):
    """(tuning half, held-out half) of the judged set, by question, seeded."""
    groups = sorted({c.group for c in judged.candidates}, key=lambda g: (len(g), g))
    random.Random(SPLIT_SEED).shuffle(groups)
    tune = set(groups[: len(groups) // 2])

    def part(keep, label):
        cands = tuple(c for c in judged.candidates if (c.group in tune) == keep)
        counts = {"questions": len({c.group for c in cands}), "candidates": len(cands),
                  "of": dict(judged.counts), "split": f"questions shuffled with seed {SPLIT_SEED}, {label}"}
        return dataclasses.replace(judged, candidates=cands, name=f"{judged.name}:{label}", counts=counts)

    return part(True, "tuning-half"), part(False, "held-out-half")


_BUILT: dict = {}  # label -> metric: one object per label, so its encoded texts are reused across validations


def build(label: str, name: str, params: dict):
    if label not in _BUILT:
        [metric] = resolve_metrics([name], params={name: params} if params else None)
        _BUILT[label] = dataclasses.replace(metric, name=label) if label != name else metric
    return _BUILT[label]


def figure(row, key):
    f = row["figures"][key]
    return f["value"], f["ci_low"], f["ci_high"]


def choose(validity, family: str) -> str:
    """The family's variant with the highest within-question Spearman."""
    rows = [validity["metrics"][label] for label in VARIANTS[family]]
    return max(rows, key=lambda r: r["figures"]["within_question_spearman"]["value"])["name"]


def fit_weight(e, x, grades, groups) -> float:
    """The grid weight w maximising the within-question Spearman of w·e + (1 − w)·x on these candidates."""
    from medqa_bench.validity import stats

    values = [stats.within_question_spearman(w * e + (1 - w) * x, grades, groups) for w in BLEND_GRID]
    return BLEND_GRID[int(np.argmax(values))]


def blend(label: str, a, b, weight_of_group: dict[str, float], note: str):
    """A metric scoring weight·a + (1 − weight)·b, the weight looked up by the pair's question (the item id's group).

    Measurement only: a question's weight was fitted on other questions (see ``report``)."""
    from medqa_bench.metrics import Metric

    def score(predictions, references, items):
        sa = a.compute(predictions=predictions, references=references, items=items)
        sb = b.compute(predictions=predictions, references=references, items=items)
        w = np.array([weight_of_group[item["id"].split(":", 1)[0]] for item in items])
        return w * sa + (1 - w) * sb

    return Metric(name=label, higher_is_better=True, score=score, bounds=(0.0, 1.0),
                  signature=f"{label}|{note}|a={a.signature}|b={b.signature}")


def table(validity) -> str:
    keys = ("within_question_spearman", "auc_on_topic", "spearman", "pairwise_accuracy", "auc_good")
    lines = ["| metric | " + " | ".join(keys) + " | robustness wins (question, boilerplate, other_reference, "
             "truncated, loop) | passes | seconds |", "|---" * (len(keys) + 4) + "|"]
    for name, row in validity["metrics"].items():
        cells = []
        for k in keys:
            v, lo, hi = figure(row, k)
            cells.append("–" if v is None else f"{v:.3f} [{lo:.3f}, {hi:.3f}]")
        wins = ", ".join("–" if r["value"] is None else f"{r['value']:.2f}" for r in row["robustness"].values())
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {wins} | {row['passes_robustness']} | {row['seconds']:.0f} |")
    return "\n".join(lines)


def against_baseline(validity) -> str:
    lines = ["| metric − embedding_similarity | figure | difference [95% CI] | p | Holm p |", "|---|---|---|---|---|"]
    for c in validity["comparisons"]:
        if BASELINE not in (c["a"], c["b"]) or c["figure"] not in ("within_question_spearman", "auc_on_topic"):
            continue
        other, sign = (c["b"], -1) if c["a"] == BASELINE else (c["a"], 1)
        if c["difference"] is None:
            continue
        d, lo, hi = sign * c["difference"], sign * c["ci_low"], sign * c["ci_high"]
        lo, hi = min(lo, hi), max(lo, hi)
        lines.append(f"| {other} | {c['figure']} | {d:+.3f} [{lo:+.3f}, {hi:+.3f}] | {c['p']:.4f} | {c['p_holm']:.4f} |")
    return "\n".join(lines)


def run(judged, labelled, out: Path, stem: str, n_bootstrap: int):
    metrics = [build(label, name, params) for label, (name, params) in labelled.items()]
    return run_metrics(judged, metrics, out, stem, n_bootstrap)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--phase", choices=("tune", "report", "all", "timing"), default="all")
    parser.add_argument("--n-pairs", type=int, default=1000, help="pairs the timing phase scores")
    parser.add_argument("--out", default="benchmarks/results/metric-selection")
    parser.add_argument("--n-bootstrap", type=int, default=2000)
    parser.add_argument("--families", default=",".join(VARIANTS), help="families to tune (comma-separated)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    judged = bundled_judged_set()
    tune, held_out = halves(judged)
    choice_path = out / "choice.json"
    if args.phase in ("tune", "all"):
        chosen = json.loads(choice_path.read_text()) if choice_path.exists() else {}
        for family in args.families.split(","):
            labelled = {BASELINE: (BASELINE, {}), **VARIANTS[family]}
            validity = run(tune, labelled, out, f"tune-{family}", args.n_bootstrap)
            chosen[family] = choose(validity, family)
            choice_path.write_text(json.dumps(chosen, indent=1) + "\n", encoding="utf-8")
        print("chosen on the tuning half:", chosen)
    if args.phase == "timing":
        timing(judged, args.n_pairs, out)
        return 0
    if args.phase in ("report", "all"):
        report(judged, tune, held_out, json.loads(choice_path.read_text()), out, args.n_bootstrap)
    return 0


def report(judged, tune, held_out, chosen, out: Path, n_bootstrap: int):
    """The chosen variants on the held-out half and on all; the blend fitted on training questions only."""
    every = {label: spec for variants in VARIANTS.values() for label, spec in variants.items()}
    labelled = {BASELINE: (BASELINE, {}), **{label: every[label] for label in chosen.values()},
                **{n: (n, {}) for n in LEXICAL}}
    metrics = [build(label, name, params) for label, (name, params) in labelled.items()]
    tune_wq = {}  # the blend's lexical half: the chosen lexical variant with the higher tuning-half figure
    for family in ("idf_token_f1", "bm25_similarity"):
        rows = json.loads((out / f"validity-tune-{family}.json").read_text())["metrics"]
        tune_wq[chosen[family]] = rows[chosen[family]]["figures"]["within_question_spearman"]["value"]
    lexical = max(tune_wq, key=tune_wq.get)
    emb, lex = _BUILT[BASELINE], _BUILT[lexical]

    # Candidate scores of the components on every question (no figure is computed here: only the fits use them).
    cands = judged.candidates
    pairs = [(c.candidate, r, k) for k, c in enumerate(cands) for r in c.references]
    owner = np.array([k for _, _, k in pairs])
    comp = {}
    for m in (emb, lex):
        s = m.compute(predictions=[p for p, _, _ in pairs], references=[r for _, r, _ in pairs])
        comp[m.name] = np.bincount(owner, weights=s, minlength=len(cands)) / np.bincount(owner, minlength=len(cands))
    grades = np.array([c.grade for c in cands])
    groups = np.array([c.group for c in cands])
    in_tune = np.isin(groups, [c.group for c in tune.candidates])

    def fit(mask):
        return fit_weight(comp[emb.name][mask], comp[lex.name][mask], grades[mask], groups[mask])

    w_tune = fit(in_tune)
    w_held = fit(~in_tune)
    w_all = fit(np.ones(len(cands), dtype=bool))
    folds: dict[str, float] = {}
    ordered = sorted(set(groups), key=lambda g: (len(g), g))
    random.Random(SPLIT_SEED).shuffle(ordered)
    fold_of = {g: k % N_FOLDS for k, g in enumerate(ordered)}
    fold_weights = []
    for k in range(N_FOLDS):
        w = fit(np.array([fold_of[g] != k for g in groups]))
        fold_weights.append(w)
        folds.update({g: w for g in ordered if fold_of[g] == k})
    fits = {"lexical": lexical, "grid": BLEND_GRID, "w_tuning_half": w_tune, "w_heldout_half": w_held,
            "w_all_questions": w_all, f"w_{N_FOLDS}_folds": fold_weights,
            "folds": {g: fold_of[g] for g in ordered}}
    (out / "blend.json").write_text(json.dumps(fits, indent=1) + "\n", encoding="utf-8")
    print("blend weights:", {k: v for k, v in fits.items() if k != "folds"}, flush=True)

    tune_groups = {c.group for c in tune.candidates}
    fixed = blend(f"blend[w={w_tune:g},fit=tuning-half]", emb, lex, {g: w_tune for g in set(groups)},
                  f"w={w_tune:g} fitted on the tuning half")
    two_fold = blend("blend[2-fold]", emb, lex, {g: (w_held if g in tune_groups else w_tune) for g in set(groups)},
                     "each half's weight fitted on the other half")
    k_fold = blend(f"blend[{N_FOLDS}-fold]", emb, lex, folds, f"each fold's weight fitted on the other {N_FOLDS - 1}")
    run_metrics(held_out, metrics + [fixed], out, "heldout", n_bootstrap)
    run_metrics(judged, metrics + [fixed, two_fold, k_fold], out, "all", n_bootstrap)


def timing(judged, n_pairs: int, out: Path):
    """Seconds to score the first ``n_pairs`` (candidate, reference) pairs of the judged set, each metric a fresh
    object in this process (its model or corpus loaded inside the time; the chunked metrics' shared chunk cache
    emptied before each)."""
    import platform

    from medqa_bench.metrics import chunked

    pairs = [(c.candidate, r) for c in judged.candidates for r in c.references][:n_pairs]
    preds, refs = [p for p, _ in pairs], [r for _, r in pairs]
    lines = [f"{len(pairs)} pairs, {len(set(preds))} distinct candidates, {len(set(refs))} distinct references; "
             f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs", "", "| metric | seconds |",
             "|---|---|"]
    print(lines[0], flush=True)
    for name in ["token_f1", "rouge2", "idf_token_f1", "bm25_similarity", "embedding_similarity",
                 "embedding_chunked_mean", "embedding_chunked_maxsim"]:
        chunked._CHUNKS.clear()
        start = time.perf_counter()
        [metric] = resolve_metrics([name])
        metric.compute(predictions=preds, references=refs)
        lines.append(f"| {name} | {time.perf_counter() - start:.1f} |")
        print(lines[-1], flush=True)
    (out / "timing.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def run_metrics(judged, metrics, out: Path, stem: str, n_bootstrap: int):
    start = time.perf_counter()
    validity = validate(judged, metrics, n_bootstrap=n_bootstrap, progress=False)
    write_validity(out / f"validity-{stem}.json", validity)
    text = (f"## {stem}: {judged.name}, {judged.counts['questions']} questions, {len(judged.candidates)} candidates "
            f"({time.perf_counter() - start:.0f} s)\n\n{table(validity)}\n\n{against_baseline(validity)}\n")
    (out / f"table-{stem}.md").write_text(text, encoding="utf-8")
    print(text, flush=True)
    return validity


if __name__ == "__main__":
    sys.exit(main())
