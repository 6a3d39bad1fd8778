"""The verdict of a run on two halves of its items: those whose reference is GARD's "Human Phenotype Ontology"
symptom table (a fixed template with a disease's list of features in it) and the rest.

Most MedQuAD symptoms answers (220 of the 266 grouped test items) are that template: a model that learned the
template scores high on every overlap metric whatever features it lists, and the boilerplate reference row (one
typical training answer for every item) scores higher still. This script asks whether a run's verdict holds on the
items where the template cannot help, and counts the answers that are the template. It re-runs the run's own
analysis and verdict (``medqa_bench.analysis.analyze`` and ``build_verdict``: the same paired bootstrap,
permutation test, Holm correction, strongest baseline per metric and seed, the run's soft-match thresholds) on each
subset; nothing is generated or scored again.

    python benchmarks/template_split.py reports/sweep-validation/s07-ref-all reports/sweep-validation/decoding \
        reports/headline reports/headline-decoding reports/headline-no-repeat-ngram reports/headline-rag \
        reports/headline-other-types > benchmarks/results/template_split.md

A run folder's ``samples.jsonl`` may be stored as ``samples.jsonl.xz``.
"""

from __future__ import annotations

import argparse
import json
import lzma
from pathlib import Path

#: the words that open GARD's symptom table in MedQuAD's references, and the table the adapters learned to write
#: (which they also turn into "... the following list of treatments for" on other question types)
TEMPLATE = "The Human Phenotype Ontology provides the following list of"
METRICS = ("embedding_similarity", "rougeL", "token_f1")


def _samples(folder: Path) -> list[dict]:
    plain, packed = folder / "samples.jsonl", folder / "samples.jsonl.xz"
    text = plain.read_text() if plain.exists() else lzma.open(packed, "rt").read()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _subset(results: dict, samples: list[dict]) -> dict:
    """The run's analysis and verdict on ``samples`` (a subset of its items)."""
    from medqa_bench.analysis import analyze
    from medqa_bench.analysis.compare import corpus_value
    from medqa_bench.analysis.verdict import build_verdict

    old = results["analysis"]
    sub = dict(results)
    sub["results"] = {s: {m: {"value": corpus_value(samples, s, m, info), "n": len(samples)}
                          for m, info in results["metrics"].items()} for s in results["results"]}
    thresholds = {m: {k: v for k, v in th.items() if k in ("t", "t_low", "t_high")}
                  for m, th in (old.get("match_thresholds") or {}).items()}
    sub["analysis"] = analyze(sub, samples, similarity_metric=old.get("similarity_metric"), thresholds=thresholds,
                              seed=old.get("seed", 0), n_bootstrap=old.get("n_bootstrap", 2000))
    sub["verdict"] = build_verdict(sub)
    return sub


def _cell(sub: dict, adapter: str, metric: str) -> str:
    v = sub["verdict"]["adapters"][adapter]
    for key, word in (("improves", "better"), ("regresses", "worse"), ("no_difference", "no difference")):
        for row in v[key]:
            if row["metric"] == metric:
                return f"{row['diff']:+.3f} ({word}, p {row['p_holm']:.3g})"
    return "–"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="scored run folders (results.json, samples.jsonl[.xz])")
    args = ap.parse_args()
    print(f"Items split by whether the first reference contains “{TEMPLATE}”. Means, then each adapter minus the "
          "strongest baseline row of each metric on that subset (paired, Holm-corrected as in the run's verdict).\n")
    for folder in args.runs:
        results = json.loads((folder / "results.json").read_text())
        samples = _samples(folder)
        halves = {"template": [s for s in samples if TEMPLATE in s["reference"]],
                  "other": [s for s in samples if TEMPLATE not in s["reference"]]}
        dec = results["spec"].get("decoding") or {}
        print(f"### {folder} (repetition_penalty {dec.get('repetition_penalty', 1.0)}, "
              f"no_repeat_ngram_size {dec.get('no_repeat_ngram_size', 0)}, "
              f"{len(halves['template'])} template items, {len(halves['other'])} others)\n")
        kinds = results["analysis"]["kinds"]
        writers = [f"{system} {sum(TEMPLATE in ((s['systems'].get(system) or {}).get('prediction') or '') for s in samples)}"
                   for system, kind in kinds.items() if kind != "reference"]
        print(f"Answers that contain the template sentence, of {len(samples)}: {', '.join(writers)}.\n")
        if not halves["template"]:  # nothing to split: the overall verdict is the run's own
            continue
        subs = {name: _subset(results, part) for name, part in halves.items() if part}
        print("| items | system | " + " | ".join(METRICS) + " |")
        print("|---|---|" + "---|" * len(METRICS))
        for name, sub in subs.items():
            for system, values in sub["results"].items():
                cells = [f"{values[m]['value']:.3f}" if values.get(m, {}).get("value") is not None else "–"
                         for m in METRICS]
                print(f"| {name} ({len(halves[name])}) | {system} | " + " | ".join(cells) + " |")
            for adapter in sub["verdict"]["adapters"]:
                print(f"| {name} ({len(halves[name])}) | **{adapter} − strongest baseline** | "
                      + " | ".join(_cell(sub, adapter, m) for m in METRICS) + " |")
        print()


if __name__ == "__main__":
    main()
