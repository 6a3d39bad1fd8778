"""The verdict: what a run shows about each adapter, and what in it to distrust, as data and as plain sentences.

Per adapter, against the **strongest baseline** of each metric (:mod:`medqa_bench.analysis.compare`):

- ``improves`` / ``regresses``: metrics where the paired difference is significant by the paired permutation
  (sign-flip) test after Holm's correction over the adapter's metrics (p < :data:`ALPHA`), better or worse given
  the metric's direction; a handful of items can never reach significance (3 items: p >= 0.25);
  ``no_difference``: the rest;
- ``references``: per reference row of its run (retrieval, boilerplate, question echo), the metrics on which the
  adapter beats it, those on which it is significantly worse, and all on which it does **not** beat it
  significantly (Holm over that comparison's metrics). A model that does not beat copying the
  nearest training answer, or repeating the question, has not shown it answers better than lookup;
- ``warnings``: degeneration (empty, truncated, repetitive or badly sized answers) of the adapter and of the
  baselines it is judged against, near-duplicates of training items and whether the verdict holds without them,
  a budget that cuts references, metrics on which echoing the question scores as high as a model, a small sample,
  soft-match thresholds that fell back to defaults;
- ``conditions``: every way the adapter and its strongest baselines were not evaluated alike (prompt format, stop
  sequences, retrieved passages in the prompt, the base's quantization at training and at evaluation, the definition
  of the training eval loss);
- ``primary``: its result on the run's **primary metric** (``results["validity"]``,
  :mod:`medqa_bench.validity.measured`: of the run's metrics measured against expert grades and passing the
  robustness suite, the one with the highest within-question Spearman), and a ``weak_metrics`` warning when every
  metric on which it differs significantly from its strongest baseline agrees weakly with expert grades (within-question
  Spearman below the recorded floor) or was not measured against them (loss and perplexity never are: they are not
  answer-quality metrics).

A row with retrieval (``baseline+rag``, ``<adapter>+rag``; :mod:`medqa_bench.data.rag`) gets a verdict of its own, judged
against the plain baseline rows as an adapter is.

The same holds as run-level ``notes`` for a run without adapters. ``lines`` are the sentences the CLI prints and the
report opens with (:mod:`medqa_bench.analysis.verdict_lines`); several runs' verdicts are put together by
:func:`medqa_bench.analysis.runs.combine_verdicts`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..schema import Analysis, Budget, Judged, Results, SpecDecoding, read_analysis, read_results, spec_decoding
from .instruments import primary_result, weak_metrics_warning
from .reach import ci_note, reach, reach_text
from .verdict_lines import SMALL_SAMPLE, adapter_lines, number, run_lines

ALPHA = 0.05
OUTCOMES = ("improves", "regresses", "no_difference")
BUDGET_CUT_SHARE = 0.05  # more references than this longer than the budget: a warning


_BASES = {"none": "unquantized", "4bit": "4-bit", "8bit": "8-bit"}


def base_words(quantization: str, article: str = "the") -> str:
    """A base model's quantization as a sentence says it: ``base_words("none") == "the unquantized base"``,
    ``base_words("4bit", "a") == "a 4-bit base"`` (results.json records "none" for the unquantized base)."""
    words = _BASES.get(str(quantization), str(quantization))
    if article == "a" and words == "unquantized":
        article = "the"  # there is one unquantized base
    return f"{article} {words} base"


def _significant(row: dict) -> bool:
    return row.get("p_holm") is not None and row["p_holm"] < ALPHA


def _row(metric: str, row: dict, r: dict | None) -> dict[str, Any]:
    """A judged row as the verdict keeps it; with what its test can reach (:mod:`.reach`): ``reachable`` (False: the
    smallest Holm p it could give, ``p_floor``, is not below alpha; ``why_unreachable`` says why) and ``ci_note`` where
    its CI excludes 0 while its test is not significant."""
    out = {"metric": metric, "against": row.get("against"), "diff": row.get("mean_diff"),
           "ci": [row.get("ci_low"), row.get("ci_high")], "p_holm": row.get("p_holm"), "n": row.get("n")}
    if r is not None:
        out.update(reachable=r["reachable"], p_floor=r["p_floor"], n_differ=r["n_differ"])
        if r["reachable"] is False:
            out["why_unreachable"] = reach_text(r)
    note = ci_note(row, r, alpha=ALPHA)
    if note:
        out["ci_note"] = note
    return out


def _against_strongest(judged: Judged) -> dict[str, list[dict]]:
    rows = judged.metrics
    reaches = reach(rows, alpha=ALPHA)
    out: dict[str, list[dict]] = {o: [] for o in OUTCOMES}
    for m, row in rows.items():
        if _significant(row) and row.get("better") is True:
            out["improves"].append(_row(m, row, reaches.get(m)))
        elif _significant(row) and row.get("better") is False:
            out["regresses"].append(_row(m, row, reaches.get(m)))
        else:
            out["no_difference"].append(_row(m, row, reaches.get(m)))
    return out


def _against_references(comparisons: dict[str, dict[str, Judged]], adapter: str,
                         kinds: dict[str, str]) -> dict[str, dict]:
    """Per reference row the adapter was compared with (those of its own run)."""
    out = {}
    for ref, block in comparisons.get(adapter, {}).items():
        if kinds.get(ref) != "reference":
            continue
        rows = block.metrics
        beats = [m for m, r in rows.items() if _significant(r) and r.get("better") is True]
        worse = [m for m, r in rows.items() if _significant(r) and r.get("better") is False]
        out[ref] = {"beats": beats, "worse_than": worse, "does_not_beat": [m for m in rows if m not in beats]}
    return out


def metric_notes(results: Results | Mapping[str, Any], analysis: Analysis | Mapping[str, Any]) -> list[dict]:
    """Metrics on which a reference row scores at least as high as a language-model row: echoing the question
    means the metric measures topic, one fixed answer means it measures genre (register, boilerplate)."""
    results, analysis = read_results(results), read_analysis(analysis)
    kinds = analysis.kinds
    # The rows a verdict rests on: the adapters and, per metric, the baseline each is judged against (a broken row,
    # e.g. a baseline that leaves half its answers empty, says nothing about the metric). Without adapters: every
    # baseline row.
    strongest = analysis.strongest_baseline
    adapters = [s for s in analysis.systems if kinds.get(s) == "adapter"]

    def judged_rows(metric: str) -> list[str]:
        if not adapters:
            return [s for s in analysis.systems if kinds.get(s) == "baseline"]
        return list(dict.fromkeys(adapters + [strongest[a][metric] for a in adapters if metric in strongest.get(a, {})]))

    what = {"question": "topic, not content", "boilerplate": "register and boilerplate, not content",
            "retrieval": "closeness to a look-alike training answer"}
    notes = []
    for ref in analysis.reference_rows:
        method = results.system(ref).method or ref
        for m, info in results.metrics.items():
            if info.kind == "nll":
                continue
            rv = results.value(ref, m)
            if rv is None or rv <= 0:  # nothing given for free (exact match: everyone scores 0)
                continue
            hib = info.higher_is_better is not False
            compared = [s for s in judged_rows(m) if ref in analysis.comparisons.get(s, {})]
            below = [s for s in compared if results.value(s, m) is not None
                     and ((results.value(s, m) <= rv) if hib else (results.value(s, m) >= rv))]
            if below and method in ("question", "boilerplate"):
                notes.append({
                    "code": f"{method}_row", "metric": m, "reference": ref, "value": rv, "systems": below,
                    "message": f"on {m}, the {ref} row ({'echoing the question' if method == 'question' else 'one fixed answer for every item'}, "
                               f"{number(rv)}) scores as high as {', '.join(below)}: {m} measures {what[method]} here",
                })
    return notes


def _grouped_notes(notes: list[dict]) -> list[dict]:
    """One warning per reference row, naming every metric it scores as high as a model on (the per-metric notes
    stay in :func:`metric_notes` for the report's table)."""
    out = []
    for ref in dict.fromkeys(n["reference"] for n in notes):
        mine = [n for n in notes if n["reference"] == ref]
        what = "echoing the question" if mine[0]["code"] == "question_row" else "one fixed answer for every item"
        measures = "topic, not content" if mine[0]["code"] == "question_row" else "register and boilerplate, not content"
        listing = "; ".join(f"{n['metric']} {number(n['value'])} (≥ {', '.join(n['systems'])})" for n in mine)
        out.append({"code": mine[0]["code"], "reference": ref, "metrics": [n["metric"] for n in mine], "message":
                    f"the {ref} row ({what}) scores as high as language-model rows on {len(mine)} metric(s): "
                    f"{listing}; there these metrics measure {measures}"})
    return out


def _conditions(results: Results, adapter: str, bases: list[str]) -> list[dict]:
    a = results.system(adapter)
    out = []
    for b in bases:
        info = results.system(b)
        if a.prompt_format != info.prompt_format:
            out.append({"code": "prompt_format", "message":
                        f"prompt format: {adapter} in '{a.prompt_format}' ({a.format_source}), "
                        f"{b} in '{info.prompt_format}' ({info.format_source}): each in its own format"})
        if (a.stop_sequences or []) != (info.stop_sequences or []):
            out.append({"code": "stop_sequences", "message":
                        f"stop sequences: {adapter} {a.stop_sequences or 'none'}, "
                        f"{b} {info.stop_sequences or 'none'} (each its format's)"})
    rag = a.retrieval or {}
    plain = [b for b in bases if not results.system(b).retrieval]
    if rag and plain:
        out.append({"code": "retrieval", "message":
                    f"retrieval: {adapter} is given {rag.get('k')} training passages ({rag.get('label')}) in its prompt, "
                    f"{', '.join(plain)} none"})
    # the adapter's training metadata (models.AdapterInfo) as the run recorded it
    trained = (((a.adapter or {}).get("training") or {}).get("resolved") or {}).get("quantization")
    evaluated = a.quantization or results.model.get("quantization")
    if trained and evaluated and trained != evaluated:
        out.append({"code": "quantization", "message":
                    f"quantization: {adapter} was trained on {base_words(trained, 'a')} and is evaluated on "
                    f"{base_words(evaluated, 'a')} (a QLoRA adapter learns against its quantized base's weights)"})
    for b in bases:
        bq = results.system(b).quantization
        if bq and evaluated and bq != evaluated:
            out.append({"code": "base_quantization", "message":
                        f"base weights: {adapter} runs on {base_words(evaluated)} it was trained on, {b} on "
                        f"{base_words(bq)} (each at its best)"})
    tel = a.training_eval_loss
    harness = results.loss_definition
    # a run folder written before the definition was recorded has none
    if tel is not None and tel.raw and harness.get("form"):
        d = tel.definition
        differ = [k for k in ("form", "split", "eos", "quantization", "compute_dtype")
                  if str(d.get(k)) != str(a.quantization if k == "quantization" else harness.get(k))]
        trunc = d.get("truncation")
        trunc = trunc.get("max_length") if isinstance(trunc, dict) else trunc
        if differ or trunc:
            out.append({"code": "loss_definition", "message":
                        f"loss: {adapter}'s training eval loss {number(tel.value)} is the {d.get('form')} form over "
                        f"the {d.get('split')} split with EOS scored, cut to {trunc} tokens, on "
                        f"{base_words(d.get('quantization'), 'a')} in {d.get('compute_dtype')}; this run's loss is the "
                        f"{harness.get('form')} form over the {harness.get('split')} split without EOS or truncation: "
                        # the path results.json has always named (it still imports; medqa_bench.MOVED)
                        "not comparable number for number (medqa_bench.loss.training_eval_loss recomputes the training "
                        "number)"})
    return out


def _clean_subset(analysis: Analysis, adapter: str, full: dict[str, list[dict]]) -> dict | None:
    if analysis.leakage is None:
        return None
    clean = analysis.leakage.clean
    judged = clean.judged.get(adapter)
    if not analysis.leakage.n_near_duplicates or judged is None:
        return None
    now = _against_strongest(judged)
    before = {k: {r["metric"] for r in v} for k, v in full.items()}
    after = {k: {r["metric"] for r in v} for k, v in now.items()}
    changed = sorted(m for k in ("improves", "regresses") for m in before[k] ^ after[k])
    return {"n_items": clean.n_items, **now, "changed": changed}


def _decoding_warning(decoding: SpecDecoding) -> dict | None:
    """A run decoded against repetition (every system alike) hides loops from the repetition and low-diversity
    warnings: they then measure the decoding as much as the models, and their silence is not a finding."""
    ngram = int(decoding.no_repeat_ngram_size or 0)
    penalty = float(decoding.repetition_penalty or 1.0)
    applied = ([f"no_repeat_ngram_size {ngram}"] if ngram else []) + (
        [f"repetition_penalty {penalty:g}"] if penalty != 1.0 else [])
    if not applied:
        return None
    return {"code": "decoding", "message":
            f"every system decoded with {' and '.join(applied)}, which keeps an answer from repeating itself: the "
            "repetition and low-diversity warnings say little in this run (a loop it blocks is hidden, not "
            "unlearned); a run without it shows what the models do"}


def build_verdict(results: Results | Mapping[str, Any]) -> dict[str, Any]:
    """The verdict of a scored and analysed run (``results`` with ``analysis``: the typed record or its dict),
    JSON-ready."""
    results = read_results(results)
    analysis = results.analysis or Analysis()
    kinds = analysis.kinds
    degeneration = analysis.degeneration.warnings
    notes = metric_notes(results, analysis)
    run_warnings: list[dict] = _grouped_notes(notes)
    budget = results.budget or Budget()
    longer, n_refs = budget.references_longer or 0, budget.n_references or 0
    if n_refs and longer / n_refs > BUDGET_CUT_SHARE:
        run_warnings.append({"code": "budget", "message":
                             f"{longer} of the evaluated split's {n_refs} references are longer than the "
                             f"{budget.max_new_tokens}-token budget: even a perfect answer would be cut"})
    decoding = _decoding_warning(spec_decoding(results.spec))
    if decoding:
        run_warnings.append(decoding)
    small = _small_sample_warning(results, analysis)
    if small:
        run_warnings.append(small)
    fallback = _thresholds_warning(analysis.match_thresholds)
    if fallback:
        run_warnings.append(fallback)
    leak = analysis.leakage
    if leak is not None and leak.n_near_duplicates:
        run_warnings.append({"code": "leakage", "message":
                             f"{leak.n_near_duplicates} of {leak.n_items} items nearly repeat a training item "
                             f"(reference or question similarity ≥ {leak.threshold}); the verdict is also given "
                             f"on the {leak.clean.n_items} items without them"})
    for w in degeneration:  # a judged row (an adapter, a +rag row) has its own in its verdict
        if kinds.get(w["system"]) == "baseline" and w["system"] not in analysis.paired:
            run_warnings.append({"code": w["code"], "system": w["system"], "message": w["message"]})

    validity = results.validity  # None: a run folder written before validity was recorded
    primary_metric = results.primary_metric
    adapters: dict[str, Any] = {}
    for adapter, judged in analysis.paired.items():
        strongest = analysis.strongest_baseline.get(adapter) or {}
        bases = list(dict.fromkeys(strongest.values()))
        versus = _against_strongest(judged)
        refs = _against_references(analysis.comparisons, adapter, kinds)
        warnings = [{k: w[k] for k in ("code", "system", "value", "threshold", "message") if k in w}
                    for w in degeneration if w["system"] == adapter]
        clean = _clean_subset(analysis, adapter, versus)
        if clean and clean["changed"]:
            warnings.append({"code": "leakage", "message":
                             f"without the near-duplicate items ({clean['n_items']} items left) the verdict changes on "
                             f"{', '.join(clean['changed'])}"})
        primary = primary_result(primary_metric, versus)
        if primary and primary["outcome"] != "not_compared":  # what its test can reach, and a CI that seems to disagree
            row = next(r for o in OUTCOMES for r in versus[o] if r["metric"] == primary_metric)
            primary.update({k: row[k] for k in ("n", "n_differ", "reachable", "p_floor", "why_unreachable", "ci_note")
                            if k in row})
        weak = weak_metrics_warning(adapter, versus, validity, primary) if validity else None
        if weak:
            warnings.insert(0, weak)
        adapters[adapter] = {
            "strongest_baseline": strongest,
            **versus,
            "references": refs,
            "warnings": warnings,
            "conditions": _conditions(results, adapter, bases),
            "clean_subset": clean,
            "primary": primary,
        }
        adapters[adapter]["lines"] = adapter_lines(adapter, adapters[adapter], results)
    verdict = {"version": 1, "alpha": ALPHA, "correction": "holm", "adapters": adapters, "warnings": run_warnings,
               "primary": validity.raw.get("primary") if validity else None}  # as the file holds it
    verdict["lines"] = run_lines(validity, adapters) + [line for a in adapters.values() for line in a["lines"]] + [
        f"warning: {w['message']}" for w in run_warnings]
    return verdict


def _thresholds_warning(match: dict) -> dict | None:
    """One warning for every metric whose soft-match thresholds fell back to defaults, grouped by the reason: too few
    null pairs (each metric's count), or another reason calibration gave (stated once for the metrics it holds for)."""
    from .thresholds import MIN_NULL_PAIRS

    fallback = {m: th for m, th in match.items() if th.get("source") == "default" and th.get("reason")}
    if not fallback:
        return None
    few = {m: th.get("n_pairs") or 0 for m, th in fallback.items() if (th.get("n_pairs") or 0) < MIN_NULL_PAIRS}
    parts = []
    if few:
        parts.append(f"too few null pairs for {', '.join(f'{m} ({n})' for m, n in few.items())}: calibration needs "
                     f"at least {MIN_NULL_PAIRS}")
    by_reason: dict[str, list[str]] = {}
    for m, th in fallback.items():
        if m not in few:
            by_reason.setdefault(th["reason"], []).append(m)
    parts += [f"{', '.join(ms)}: {reason}" for reason, ms in by_reason.items()]
    metrics = list(fallback)
    return {"code": "thresholds", "metric": ", ".join(metrics), "metrics": metrics, "message":
            f"the soft-match thresholds of {len(metrics)} metric(s) are fallback defaults ({'; '.join(parts)})"}


def metric_items(results: Results, analysis: Analysis) -> dict[str, int]:
    """The items each metric was scored on: loss and perplexity (``items: "all"``, or an NLL metric of an older run:
    :class:`medqa_bench.schema.MetricInfo`) on every item, the other metrics on the generated ones
    (``analysis.n_nll_items`` and ``n_items``)."""
    generated = analysis.n_items or 0
    every = analysis.n_nll_items or generated
    return {m: every if info.items == "all" else generated for m, info in results.metrics.items()}


def _and(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _lowest_floor(paired: dict[str, Judged], metrics: list[str]) -> float | None:
    """The smallest Holm p any judged test of ``metrics`` could give, when none of them can reach significance."""
    floors = [r for judged in paired.values() for m, r in reach(judged.metrics, alpha=ALPHA).items()
              if m in metrics]
    if floors and all(r["reachable"] is False for r in floors):
        return min(r["p_floor"] for r in floors)
    return None


def _small_sample_warning(results: Results, analysis: Analysis) -> dict | None:
    """Few items, each metric judged on the items it was scored on: the generation metrics on the generated items,
    loss and perplexity on every item (``--nll-limit``). Where no judged test of a set of metrics can reach
    significance at all, that is what the warning says of them."""
    n_items, paired = analysis.n_items or 0, analysis.paired
    items = metric_items(results, analysis)
    by_n: dict[int, list[str]] = {}
    for m, n in items.items():
        by_n.setdefault(n, []).append(m)
    if not by_n:  # a hand-made run without metric declarations: its generated items
        by_n = {n_items: []}
    if min(by_n) >= SMALL_SAMPLE:
        return None
    groups = sorted(by_n.items())  # with several, the generation metrics (on the fewest items) first
    floors = [_lowest_floor(paired, ms) for _, ms in groups]
    several = len(groups) > 1
    head, which = (f"only {groups[0][0]} generated items", "the generation metrics") if several else (
        f"only {groups[0][0]} items", "this run")
    parts = [f"{head}: no paired test of {which} can reach significance (the smallest p any of them can give, after "
             f"Holm's correction, is {floors[0]:.4g}, not below {ALPHA}); every difference "
             f"{'on them' if several else 'in it'} is descriptive" if floors[0] is not None else
             f"{head}: {'on the generation metrics ' if several else ''}the intervals are wide and 'no significant "
             "difference' says little"]
    for (n, ms), lowest in zip(groups[1:], floors[1:]):
        one = len(ms) == 1
        scored = f"{_and(ms)} {'was' if one else 'were'} scored on {n} items"
        parts.append(scored if n >= SMALL_SAMPLE else f"{scored}, also few: " + (
            f"no paired test of {'it' if one else 'them'} can reach significance either" if lowest is not None
            else f"{'its' if one else 'their'} intervals are wide"))
    return {"code": "small_sample", "unreachable": floors[0] is not None,
            "n": {m: n for n, ms in groups for m in ms},
            "message": "; ".join(parts) + " (--limit 0 evaluates the whole split)"}
