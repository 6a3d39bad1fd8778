"""``medqa-bench``: the command line, a thin layer over :mod:`medqa_bench.api`.

This is the one place that turns errors into messages and exit codes: a :class:`MedQABenchError` becomes one
line on stderr and exit status 2 (a traceback only with ``--debug``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

from . import __version__
from .errors import MedQABenchError, SpecError

log = logging.getLogger("medqa_bench")


def _add_data_options(p: argparse.ArgumentParser, *, with_split: bool = True) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", metavar="PATH", help="CSV/JSONL file (optionally .gz) or saved `datasets` folder (default: MedQuAD, from `data fetch medquad`)")
    g.add_argument("--qtype", help="question type(s): symptoms (default; all in a file without a qtype column), a "
                   "comma-separated list, or all")
    g.add_argument("--question-column", metavar="NAME", help="column holding the question (default Question)")
    g.add_argument("--answer-column", metavar="NAME", help="column holding the answer (default Answer)")
    g.add_argument("--qtype-column", metavar="NAME", help="column holding the question type (default qtype)")
    g.add_argument("--focus-column", metavar="NAME", help="column holding the topic, used to keep splits apart (default focus)")
    g.add_argument("--id-column", metavar="NAME", help="column holding the item id (default qid)")
    if with_split:
        g.add_argument("--split-seed", type=int, metavar="N", help="seed of the train/validation/test split (default 42)")
        g.add_argument("--split-strategy", choices=["grouped", "random", "grouped-by-qtype"],
                       help="grouped (default): no question text or focus in two splits; random: the reference's naive split")
        g.add_argument("--manifest", metavar="PATH", help="reuse a split manifest written by `data prepare`")


def _add_train_data_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training corpus (reference rows, leakage audit, --rag passages)")
    g.add_argument("--train-data", metavar="PATH", help="the training corpus, another file than --data; the evaluated "
                   "file is then used whole (default: the adapters' recorded training split when --data is another "
                   "file, else the train split of --data)")
    g.add_argument("--train-split", choices=["all", "train", "validation", "test"],
                   help="which split of --train-data is the corpus (default all: every item)")
    g.add_argument("--train-qtype", metavar="Q", help="question type(s) of --train-data (default symptoms; all in a file "
                   "without a qtype column)")
    for role, default in (("question", "Question"), ("answer", "Answer"), ("qtype", "qtype"), ("focus", "focus"),
                          ("id", "qid")):
        g.add_argument(f"--train-{role}-column", metavar="NAME", help=f"--train-data's {role} column (default {default})")


def _train_data_spec(args: argparse.Namespace, spec) -> dict[str, Any]:
    """The run spec's ``train_data``/``train_split`` from the --train-* flags (over the spec file's)."""
    from dataclasses import replace

    from .data.dataset import ColumnMap, DataSpec

    flags = {role: getattr(args, f"train_{role}_column") for role in ("question", "answer", "qtype", "focus", "id")}
    flags = {k: v for k, v in flags.items() if v}
    if not (args.train_data or args.train_qtype or flags or args.train_split):
        return {}
    if args.train_data is None and spec.train_data is None:
        raise SpecError("--train-split, --train-qtype and --train-*-column describe --train-data: give it too")
    data = spec.train_data or DataSpec()
    data = replace(data, **{k: v for k, v in (("path", args.train_data), ("qtype", args.train_qtype)) if v},
                   columns=replace(data.columns or ColumnMap(), **flags))
    return {"train_data": data, **({"train_split": args.train_split} if args.train_split else {})}


def _data_spec(args: argparse.Namespace, base=None):
    from dataclasses import replace

    from .data.dataset import ColumnMap, DataSpec, SplitOptions

    spec = base or DataSpec()
    cols = {k: getattr(args, f"{k}_column") for k in ("question", "answer", "qtype", "focus", "id") if getattr(args, f"{k}_column", None)}
    split = {k: v for k, v in (("seed", getattr(args, "split_seed", None)), ("strategy", getattr(args, "split_strategy", None))) if v is not None}
    changes: dict[str, Any] = {}
    if args.data:
        changes["path"] = args.data
    if args.qtype:
        changes["qtype"] = args.qtype
    if cols:
        changes["columns"] = replace(spec.columns, **cols) if spec.columns else ColumnMap(**cols)
    if split:
        changes["split"] = replace(spec.split, **split) if spec.split else SplitOptions(**split)
    if getattr(args, "manifest", None):
        changes["manifest"] = args.manifest
    return replace(spec, **changes) if changes else spec


def _parse_assignments(values: Sequence[str] | None, what: str) -> list[tuple[str, str]]:
    out = []
    for v in values or []:
        if "=" not in v:
            raise SpecError(f"{what} '{v}' must look like NAME=VALUE")
        k, _, val = v.partition("=")
        out.append((k.strip(), val.strip()))
    return out


#: Where a backend option's flag keeps its value in the parsed arguments: ``backend_option.<name>``.
_OPTION_DEST = "backend_option."


def _add_backend_options(p: argparse.ArgumentParser) -> None:
    """A flag for every option a registered backend declares (medqa_bench.inference.backends.options): ``--base-url`` for
    ``base_url``, one group per backend. An option two backends declare has one flag; a flag the parser already has
    is left out (the option can still be given in a spec file's ``backend_options``)."""
    import yaml

    from .inference.backends.options import all_declared

    groups: dict[str, Any] = {}
    for name, owners in all_declared().items():
        backend, opt = owners[0]
        if backend not in groups:
            groups[backend] = p.add_argument_group(f"options of --backend {backend}")
        default = f" (default {opt.default:g})" if isinstance(opt.default, float) else (
            f" (default {opt.default})" if opt.default is not None else "")
        also = f"; also --backend {', '.join(b for b, _ in owners[1:])}" if len(owners) > 1 else ""
        try:
            groups[backend].add_argument(opt.flag, dest=_OPTION_DEST + name, metavar=opt.metavar or name.upper(),
                                         type=opt.type if opt.type in (str, int, float) else yaml.safe_load,
                                         help=opt.help + default + also)
        except argparse.ArgumentError:
            log.debug("backend %s's option %s is not a flag: %s is taken", backend, name, opt.flag)


def _given_options(args: argparse.Namespace) -> dict[str, Any]:
    """The backend options given as flags."""
    return {k[len(_OPTION_DEST):]: v for k, v in vars(args).items() if k.startswith(_OPTION_DEST) and v is not None}


def _backend_options(args: argparse.Namespace, spec) -> dict[str, Any]:
    """The run spec's ``backend_options`` from the flags, over the spec file's. When ``--backend`` picks another
    backend than the file's, the file's options left at their defaults go (they were filled in, not given)."""
    given = _given_options(args)
    base = dict(spec.backend_options)
    if args.backend is not None and args.backend != spec.backend and base:
        from .inference.backends.options import declared

        defaults = {o.name: o.default for o in declared(spec.backend)}
        base = {k: v for k, v in base.items() if k not in defaults or v != defaults[k]}
    return {"backend_options": {**base, **given}} if given or base != spec.backend_options else {}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="medqa-bench",
        description="Evaluate a baseline LLM against fine-tuned LoRA adapters on medical QA; train QLoRA adapters.",
    )
    p.add_argument("--version", action="version", version=f"medqa-bench {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings only")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    r = sub.add_parser("run", help="evaluate the baseline and adapters; write results, samples and report.html",
                       description="Evaluate the baseline (the base model alone) and every adapter on the same items.")
    r.add_argument("spec", nargs="?", metavar="SPEC", help="YAML or TOML run spec; flags override it")
    r.add_argument("--name", help="run name (default: <model>-<qtype>-<split>)")
    r.add_argument("--model", help="alias, checkpoint folder, .gguf file or Hub id (default smollm2-135m-instruct)")
    r.add_argument("--backend", metavar="NAME", help="the inference backend that answers (default transformers: the "
                   "model loaded in this process)")
    r.add_argument("--adapter", action="append", metavar="NAME=PATH", help="a PEFT LoRA adapter folder; repeatable. With "
                   "--backend openai: NAME=served:LORA or NAME=served:LORA@FOLDER (the server's LoRA module LORA; "
                   "FOLDER, its local copy, gives the recorded prompt format and fingerprint)")
    r.add_argument("--no-default-adapter", action="store_true", help="do not add the shipped adapter when none is given")
    _add_data_options(r)
    _add_train_data_options(r)
    r.add_argument("--split", choices=["train", "validation", "test", "all"], help="which split to evaluate (default "
                   "test; all, the whole file, with a training corpus of its own: --train-data or the adapters'); a "
                   "small file of your own, whose test split is empty: all")
    r.add_argument("--limit", type=int, metavar="N", help="evaluate a seeded sample of N items; 0 = the full split "
                   "(default: full split on GPU, 5 items on CPU)")
    r.add_argument("--nll-limit", type=int, metavar="N", help="score loss and perplexity on a seeded sample of N items "
                   "holding the --limit ones; 0 = the full split (default: the --limit items; on CPU without --limit, "
                   "20, generation on 5 of them)")
    r.add_argument("--sample-seed", type=int, metavar="N", help="seed of the --limit sample (default 0)")
    r.add_argument("--prompt-format", choices=["reference", "chat"],
                   help="ask every language-model system in this format (default: each in its own: the baseline in "
                        "the model's chat template, an adapter in the format of its training metadata)")
    r.add_argument("--baseline-formats", metavar="F,G", help="baseline rows, one per prompt format, e.g. chat,reference "
                   "(default: chat when the model has a chat template, else reference)")
    r.add_argument("--reference-rows", metavar="A,B|none", help="rows that need no model: retrieval, boilerplate, "
                   "question (default: all three), or none")
    r.add_argument("--rag", metavar="METHOD:k=N|none", help="add a +rag row of every language-model row, its prompt "
                   "holding the N nearest training passages: bm25:k=3 or dense:k=3 (default: none)")
    r.add_argument("--max-new-tokens", type=int, metavar="N", help="generation budget (default: the 95th percentile "
                   "of the evaluated split's reference lengths, at most 1024)")
    r.add_argument("--stop", action="append", metavar="FORMAT=SEQ", help="a stop sequence for one prompt format, "
                   "repeatable; FORMAT= (empty) for none (default: '### Question' and '### Answer' for reference)")
    r.add_argument("--repetition-penalty", type=float, metavar="F", help="transformers' repetition_penalty for every "
                   "system (default 1.0: off)")
    r.add_argument("--no-repeat-ngram-size", type=int, metavar="N", help="forbid repeating word n-grams of this size "
                   "for every system (default 0: off)")
    r.add_argument("--batch-size", metavar="N|auto", help="items per batch, or auto (token budget; default)")
    r.add_argument("--device", help="auto (default: CUDA when present), cpu, cuda, cuda:1")
    r.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], help="compute dtype (auto: bf16 on GPU, fp32 on CPU)")
    r.add_argument("--quantization", choices=["none", "4bit"], help="put every system on this base (4bit: NF4 as in "
                   "QLoRA); default: baseline rows unquantized, each adapter on the base it was trained on")
    r.add_argument("--max-length", type=int, metavar="N", help="context for NLL scoring; longer answers use a sliding window")
    r.add_argument("--metrics", metavar="A,B,...", help="metrics to compute (default: all built-ins; see `metrics list`)")
    r.add_argument("--metric-param", action="append", metavar="METRIC.KEY=VALUE", help="e.g. embedding_similarity.model=/path")
    r.add_argument("--plugin", action="append", metavar="FILE.py|MODULE:NAME|EVALUATE_DIR", help="load metric plugins; repeatable")
    r.add_argument("--similarity-metric", metavar="NAME", help="metric for the soft confusion analysis (default embedding_similarity)")
    r.add_argument("--threshold", action="append", metavar="KEY=VALUE", help="analysis thresholds: t, t_low, t_high")
    r.add_argument("--validity", metavar="FILE|bundled", help="each metric's validity figures from this validity.json "
                   "(`metrics validate`), matched by signature (default: the bundled measurement)")
    r.add_argument("--out", metavar="DIR", help="run folder (default reports/<name>)")
    r.add_argument("--cache", metavar="PATH", help="SQLite cache of generations and NLLs (default: the user cache)")
    r.add_argument("--no-cache", action="store_true", help="compute everything afresh and store nothing")
    r.add_argument("--no-report", action="store_true", help="skip report.html")
    r.add_argument("--full-verdict", action="store_true", help="print every line of the verdict (default: at most five "
                   "findings and the warnings by kind; results.json and the report keep every line)")
    r.add_argument("--overwrite", action="store_true", help="replace a run folder that holds a different run (another "
                   "spec); re-running the same spec replaces its folder without it")
    r.add_argument("--seed", type=int, help="seed of bootstrap CIs and distractor choice (default 0)")
    _add_backend_options(r)  # last: a backend's option never takes a flag of the command's own

    s = sub.add_parser("score", help="re-score a run folder's saved generations (no language model is loaded)")
    s.add_argument("run_dir", metavar="RUN_DIR")
    s.add_argument("--metrics", metavar="A,B,...")
    s.add_argument("--metric-param", action="append", metavar="METRIC.KEY=VALUE")
    s.add_argument("--plugin", action="append", metavar="FILE.py|MODULE:NAME|EVALUATE_DIR",
                   help="load metric plugins; their metrics are computed too, and replace the run's recorded plugin "
                   "for the metrics they bring (the run's own plugin is otherwise reloaded from the absolute path it "
                   "recorded, and its fingerprint checked; code inside the run folder only when passed here)")
    s.add_argument("--similarity-metric", metavar="NAME", help="metric for the soft confusion analysis (default: the "
                   "one the run used)")
    s.add_argument("--threshold", action="append", metavar="KEY=VALUE", help="analysis thresholds: t, t_low, t_high")
    s.add_argument("--validity", metavar="FILE|bundled", help="validity figures from this validity.json instead of "
                   "the run's (recomputed either way for the run's metrics)")
    s.add_argument("--out", metavar="DIR", help="write the re-scored run here and leave RUN_DIR as it is")
    s.add_argument("--overwrite", action="store_true", help="replace an --out folder that holds a different run")
    s.add_argument("--no-report", action="store_true")
    s.add_argument("--full-verdict", action="store_true", help="print every line of the verdict")

    k = sub.add_parser("check", help="a CI gate: exit 1 when an adapter fails a condition of its run's verdict",
                       description="Read RUN_DIR/results.json (no model, nothing recomputed) and check every adapter: "
                                   "exit 0 when all pass, 1 with one line per failed condition, 2 on bad input.")
    k.add_argument("run_dir", metavar="RUN_DIR")
    k.add_argument("--conditions", metavar="A,B", help="what fails the gate: primary (does not significantly beat its "
                   "strongest baseline on the primary metric), regression (significantly worse on any metric), "
                   "degeneration (a degeneration warning on its answers), leakage, weak_metrics, or all "
                   "(default primary,regression,degeneration)")
    k.add_argument("--adapter", action="append", metavar="NAME", help="check this adapter only; repeatable "
                   "(default: every adapter of the run)")

    rp = sub.add_parser("report", help="render report.html from run folders (several: one combined comparison)")
    rp.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    rp.add_argument("--out", metavar="FILE", help="where to write the HTML (default: RUN_DIR/report.html)")
    rp.add_argument("--plotly", choices=["inline", "cdn"], default="inline", help="inline plotly.js (offline, default) or link it")
    rp.add_argument("--label", action="append", metavar="NAME", dest="labels", help="a name for each RUN_DIR, in "
                    "order, repeatable (default: each folder's name); one per folder, each unique, without '/' or '+'")

    t = sub.add_parser("train", help="QLoRA fine-tuning from a recipe; writes a PEFT adapter folder")
    t.add_argument("recipe", metavar="RECIPE", help="a recipe YAML file or a bundled recipe name (e.g. smollm2-135m-symptoms)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", dest="overrides", help="override a recipe key, e.g. lora.r=32")
    t.add_argument("--out", metavar="DIR", help="adapter folder to write")
    t.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    t.add_argument("--overwrite", action="store_true", help="replace an existing adapter folder")

    d = sub.add_parser("data", help="prepare and inspect datasets")
    dsub = d.add_subparsers(dest="data_command", metavar="ACTION")
    dp = dsub.add_parser("prepare", help="write symptom_qa.jsonl (prompt, completion), the split files and manifest.json")
    _add_data_options(dp)
    dp.add_argument("--out", metavar="DIR", default="data/prepared", help="output folder (default data/prepared)")
    dp.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    ds = dsub.add_parser("stats", help="rows per qtype and split, answer-length percentiles")
    _add_data_options(ds)
    df = dsub.add_parser("fetch", help="download a data set (pinned upstream commit, sha256-checked) into the user data folder")
    df.add_argument("dataset", choices=("medquad", "medquad-judged", "all"), help="what to fetch")
    df.add_argument("--from", dest="source", metavar="PATH",
                    help="install from a local copy: medquad.csv.gz, the judged folder, upstream's tarball, checkout or zip")
    df.add_argument("--url", metavar="URL", help="download from this URL instead of upstream (one data set)")
    df.add_argument("--force", action="store_true", help="fetch again even if a good copy is there")

    m = sub.add_parser("metrics", help="list available metrics; validate them against expert grades")
    msub = m.add_subparsers(dest="metrics_command", metavar="ACTION")
    ml = msub.add_parser("list", help="every metric with where it comes from")
    ml.add_argument("--plugin", action="append", metavar="FILE.py|MODULE:NAME|EVALUATE_DIR")
    mv = msub.add_parser("validate", help="measure each metric's agreement with expert grades and its robustness",
                         description="Score a judged set (default: the bundled MedQuAD judged answers) with metrics; "
                                     "write validity.json, validity.html and print a table.")
    mv.add_argument("file", nargs="?", metavar="FILE", help="CSV/JSONL of graded candidate answers, one a row "
                    "(default: the bundled judged set, from `data fetch medquad-judged`)")
    mv.add_argument("--group-column", metavar="NAME", help="the question id: candidates of one question are resampled "
                    "together (default question_id)")
    mv.add_argument("--question-column", metavar="NAME", help="the question (default question)")
    mv.add_argument("--reference-column", action="append", metavar="NAME[,NAME]", help="reference answer column(s); "
                    "a JSONL cell may hold a list; scores are averaged over references (default reference)")
    mv.add_argument("--candidate-column", metavar="NAME", help="the graded answer (default candidate)")
    mv.add_argument("--grade-column", metavar="NAME", help="the expert grade, a number (default grade)")
    mv.add_argument("--metrics", metavar="A,B,...", help="metrics to validate (default: every built-in reference "
                    "metric without a language model; name the judge to include it)")
    mv.add_argument("--metric-param", action="append", metavar="METRIC.KEY=VALUE")
    mv.add_argument("--plugin", action="append", metavar="FILE.py|MODULE:NAME|EVALUATE_DIR",
                    help="load metric plugins; their metrics are validated too")
    mv.add_argument("--good-threshold", type=float, default=3.0, metavar="G", help="a grade >= G is a good answer "
                    "(default 3)")
    mv.add_argument("--related-grade", type=float, default=2.0, metavar="G", help="grades from G up to the good "
                    "threshold are 'related, not an answer' for the on-topic AUC (default 2)")
    mv.add_argument("--bootstrap", type=int, default=2000, metavar="N", help="resamples of questions for the CIs "
                    "(default 2000)")
    mv.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and the other-question draw (default 0)")
    mv.add_argument("--out", metavar="DIR", help="where validity.json and validity.html go (default "
                    "reports/validity/<set>)")
    mv.add_argument("--overwrite", action="store_true", help="replace validity.json/validity.html already in DIR")

    c = sub.add_parser("chat", help="a local web page: every system answers a typed question side by side",
                       description="Ask the baseline, the adapters and their +rag rows the same question, each in its "
                                   "own prompt format; mark answers and export them as evaluation data.")
    c.add_argument("--model", help="as for run (default smollm2-135m-instruct)")
    c.add_argument("--backend", metavar="NAME", help="as for run: what answers (default transformers: the model "
                   "loaded here; openai: a server, with --base-url and --served-model)")
    c.add_argument("--adapter", action="append", metavar="NAME=PATH", help="a PEFT LoRA adapter folder; repeatable")
    c.add_argument("--no-default-adapter", action="store_true", help="do not add the shipped adapter when none is given")
    c.add_argument("--prompt-format", choices=["reference", "chat"], help="ask every system in this format")
    c.add_argument("--baseline-formats", metavar="F,G", help="baseline rows, one per prompt format")
    c.add_argument("--quantization", choices=["none", "4bit"], help="put every system on this base")
    c.add_argument("--rag", metavar="METHOD:k=N|none", default="bm25:k=3",
                   help="passages from the training split for the +rag rows (default bm25:k=3; none: no +rag rows)")
    _add_data_options(c)
    c.add_argument("--device", help="auto (default), cpu, cuda, cuda:1")
    c.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], help="compute dtype")
    c.add_argument("--max-new-tokens", type=int, metavar="N", help="longest answer in tokens (default 256)")
    c.add_argument("--cache", metavar="PATH", help="as for run: the passage index is kept beside it")
    c.add_argument("--export-dir", metavar="DIR", help="where exports are written (default chat-exports)")
    c.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    c.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    _add_backend_options(c)
    return p


# ------------------------------------------------------------------------------------------------ commands


def _metric_params(values) -> dict[str, dict[str, Any]]:
    import yaml

    out: dict[str, dict[str, Any]] = {}
    for key, value in _parse_assignments(values, "--metric-param"):
        metric, _, param = key.partition(".")
        if not param:
            raise SpecError(f"--metric-param '{key}={value}' must look like METRIC.KEY=VALUE")
        out.setdefault(metric, {})[param] = yaml.safe_load(value)
    return out


def cmd_run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .api import run
    from .inference.decoding import DecodingParams
    from .spec import AnalysisSpec, RunSpec

    spec = RunSpec.from_file(args.spec) if args.spec else RunSpec()
    ch: dict[str, Any] = {}
    for flag, key in (("name", "name"), ("model", "model"), ("backend", "backend"), ("split", "split"),
                      ("limit", "limit"), ("nll_limit", "nll_limit"), ("sample_seed", "sample_seed"), ("prompt_format", "prompt_format"),
                      ("device", "device"), ("dtype", "dtype"), ("quantization", "quantization"), ("max_length", "max_length"),
                      ("out", "output_dir"), ("seed", "seed")):
        if getattr(args, flag) is not None:
            ch[key] = getattr(args, flag)
    if args.adapter:
        ch["adapters"] = tuple(_parse_assignments(args.adapter, "--adapter"))
    if args.no_default_adapter:
        ch["default_adapters"] = False
    if args.batch_size is not None:
        try:
            ch["batch_size"] = "auto" if args.batch_size == "auto" else int(args.batch_size)
        except ValueError:
            raise SpecError(f"--batch-size must be 'auto' or an integer, not '{args.batch_size}'") from None
    decoding: dict[str, Any] = {}
    if args.max_new_tokens is not None:
        decoding["max_new_tokens"] = args.max_new_tokens
    if args.repetition_penalty is not None:
        decoding["repetition_penalty"] = args.repetition_penalty
    if args.no_repeat_ngram_size is not None:
        decoding["no_repeat_ngram_size"] = args.no_repeat_ngram_size
    if args.stop:
        stops: dict[str, list[str]] = {}
        for value in args.stop:  # the sequence is kept as typed (a stop sequence may begin or end with spaces)
            fmt, sep, seq = value.partition("=")
            if not sep:
                raise SpecError(f"--stop '{value}' must look like FORMAT=SEQUENCE")
            fmt = fmt.strip()
            stops.setdefault(fmt, [])
            if seq:
                stops[fmt].append(seq)
        decoding["stop"] = {**((spec.decoding.stop if spec.decoding else None) or {}), **stops}
    if decoding:
        ch["decoding"] = replace(spec.decoding or DecodingParams(), **decoding)
    for flag, key in (("baseline_formats", "baseline_formats"), ("reference_rows", "reference_rows")):
        value = getattr(args, flag)
        if value is not None:
            ch[key] = tuple(x.strip() for x in value.split(",") if x.strip() and x.strip() != "none")
    if args.rag is not None:
        ch["rag"] = None if args.rag.strip() in ("", "none") else args.rag.strip()
    if args.metrics:
        ch["metrics"] = tuple(m.strip() for m in args.metrics.split(",") if m.strip())
    if args.metric_param:
        ch["metric_params"] = {**spec.metric_params, **_metric_params(args.metric_param)}
    if args.plugin:
        ch["plugins"] = tuple(spec.plugins) + tuple(args.plugin)
    if args.similarity_metric or args.threshold:
        thresholds = dict(spec.analysis.thresholds)
        for k, v in _parse_assignments(args.threshold, "--threshold"):
            try:
                thresholds[k] = float(v)
            except ValueError:
                raise SpecError(f"--threshold {k}={v}: the value must be a number") from None
        ch["analysis"] = AnalysisSpec(args.similarity_metric or spec.analysis.similarity_metric, thresholds, spec.analysis.seed)
    if args.validity is not None:
        ch["validity"] = None if args.validity.strip() == "bundled" else args.validity
    if args.no_cache:
        ch["cache"] = None
    elif args.cache:
        ch["cache"] = args.cache
    if args.no_report:
        ch["report"] = False
    if args.overwrite:
        ch["overwrite"] = True
    ch["data"] = _data_spec(args, spec.data)
    ch.update(_train_data_spec(args, spec))
    ch.update(_backend_options(args, spec))
    spec = spec.replace(**ch)
    result = run(spec, progress=not args.quiet)
    if not _is_main_process():
        return 0  # under accelerate/torchrun, process 0 speaks for the run
    print(result.summary(full_verdict=args.full_verdict))
    data = result.results["data"]
    n_generated = data.get("n_generated", data["n_items"])
    if spec.limit is None and n_generated < data["split_size"]:
        nll = f"; loss and perplexity on {data['n_items']}" if data["n_items"] > n_generated else ""
        print(f"(a seeded sample of {n_generated} of {data['split_size']} items{nll}; "
              "`medqa-bench run --limit 0` evaluates the full split)")
    return 0


def _is_main_process() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


def cmd_score(args: argparse.Namespace) -> int:
    from .api import score

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    thresholds: dict[str, float] = {}
    for k, v in _parse_assignments(args.threshold, "--threshold"):
        try:
            thresholds[k] = float(v)
        except ValueError:
            raise SpecError(f"--threshold {k}={v}: the value must be a number") from None
    result = score(args.run_dir, metrics=metrics, plugins=tuple(args.plugin or ()),
                   metric_params=_metric_params(args.metric_param) or None, similarity_metric=args.similarity_metric,
                   thresholds=thresholds or None, out=args.out, overwrite=args.overwrite, report=not args.no_report,
                   progress=not args.quiet, validity=args.validity)
    print(result.summary(full_verdict=args.full_verdict))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from .analysis.gate import check_run, parse_conditions

    result = check_run(args.run_dir, parse_conditions(args.conditions), tuple(args.adapter) if args.adapter else None)
    print("\n".join(result.lines()))
    return result.exit_status


def cmd_report(args: argparse.Namespace) -> int:
    import contextlib

    from .report import render_report
    from .storage.run_folder import lock

    dirs = [Path(d) for d in args.run_dirs]
    # writing into a run folder: not while a run is replacing it
    with lock(dirs[0], check=False) if args.out is None and dirs[0].is_dir() else contextlib.nullcontext():
        path = render_report(dirs, Path(args.out) if args.out else None, plotly=args.plotly, labels=args.labels)
    print(path)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from trainers.qlora import load_recipe, train

    recipe = load_recipe(args.recipe, args.overrides or ())
    folder = train(recipe, out=args.out, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet)
    if _is_main_process():
        print(folder)
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from .api import data_stats, prepare_data

    if args.data_command == "prepare":
        out = prepare_data(_data_spec(args), args.out, overwrite=args.overwrite)
        print(out)
    elif args.data_command == "stats":
        print(data_stats(_data_spec(args)))
    elif args.data_command == "fetch":
        from .data.fetch import DATASETS, fetch

        if args.url and args.dataset == "all":
            raise SpecError("--url names one download: give it with `data fetch medquad` or `data fetch medquad-judged`")
        for name in DATASETS if args.dataset == "all" else (args.dataset,):
            print(fetch(name, source=args.source, url=args.url, force=args.force, progress=not args.quiet).describe())
    else:
        raise SpecError("give an action: `medqa-bench data prepare`, `data stats` or `data fetch`")
    return 0


def cmd_metrics_validate(args: argparse.Namespace) -> int:
    from .validity.command import ValidateOptions, format_table, run_validate

    columns = {f"{k}_column": getattr(args, f"{k}_column") for k in ("group", "question", "candidate", "grade")
               if getattr(args, f"{k}_column")}
    if args.reference_column:
        columns["reference_column"] = args.reference_column
    options = ValidateOptions(
        file=args.file, columns=columns,
        metrics=tuple(m.strip() for m in args.metrics.split(",") if m.strip()) if args.metrics else None,
        metric_params=_metric_params(args.metric_param), plugins=tuple(args.plugin or ()),
        good_threshold=args.good_threshold, related_grade=args.related_grade, n_bootstrap=args.bootstrap,
        seed=args.seed, out=args.out, overwrite=args.overwrite,
    )
    data, out = run_validate(options, progress=not args.quiet)
    print(format_table(data))
    print(out / "validity.json")
    print(out / "validity.html")
    return 0


def cmd_metrics(args: argparse.Namespace) -> int:
    from .metrics import list_metrics

    if args.metrics_command == "validate":
        return cmd_metrics_validate(args)
    if args.metrics_command != "list":
        raise SpecError("give an action: `medqa-bench metrics list` or `medqa-bench metrics validate`")
    rows = list_metrics(plugins=tuple(args.plugin or ()))
    width = max(len(r["name"]) for r in rows)
    print(f"{'metric':<{width}}  better  kind       source")
    for r in rows:
        if r.get("error"):  # a metric or plugin that does not load is listed, not raised
            print(f"{r['name']:<{width}}  {'-':<6}  {'broken':<9}  {r.get('source', '')}: {r['error']}")
            continue
        print(f"{r['name']:<{width}}  {'higher' if r['higher_is_better'] else 'lower ':<6}  {r.get('kind', ''):<9}  {r.get('source', '')}")
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from .chat import launch

    launch(chat_options(args), host=args.host, port=args.port, progress=not args.quiet)
    return 0


def chat_options(args: argparse.Namespace):
    """The chat's :class:`~medqa_bench.chat.ChatOptions` from its flags."""
    from .chat import ChatOptions

    ch: dict[str, Any] = {"data": _data_spec(args)}
    for flag in ("model", "backend", "prompt_format", "quantization", "device", "dtype", "max_new_tokens", "cache",
                 "export_dir"):
        if getattr(args, flag) is not None:
            ch[flag] = getattr(args, flag)
    ch["backend_options"] = _given_options(args)
    if args.adapter:
        ch["adapters"] = tuple(_parse_assignments(args.adapter, "--adapter"))
    if args.no_default_adapter:
        ch["default_adapters"] = False
    if args.baseline_formats:
        ch["baseline_formats"] = tuple(x.strip() for x in args.baseline_formats.split(",") if x.strip())
    ch["rag"] = None if args.rag.strip() in ("", "none") else args.rag.strip()
    return ChatOptions(**ch)


COMMANDS = {"run": cmd_run, "score": cmd_score, "check": cmd_check, "report": cmd_report, "train": cmd_train,
            "data": cmd_data, "metrics": cmd_metrics, "chat": cmd_chat}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    level = logging.DEBUG if args.debug else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s" if args.debug else "%(message)s")
    if not args.debug:
        # bitsandbytes warns at import on CPUs with AVX512-BF16 that an optional kernel package is missing; the
        # 4-bit layers keep their ordinary path here (models.keep_4bit_layout), so the line says nothing useful.
        for noisy in ("transformers", "sentence_transformers", "httpx", "httpx2", "openai", "urllib3", "datasets",
                      "huggingface_hub",
                      "bitsandbytes"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
        import os
        import warnings

        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        if args.quiet:
            os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
            os.environ["TQDM_DISABLE"] = "1"
        warnings.filterwarnings("ignore", module="(transformers|torch|peft|trl|bitsandbytes)")
    try:
        return COMMANDS[args.command](args)
    except MedQABenchError as exc:
        if args.debug:
            raise
        print(f"medqa-bench: error: {exc}", file=sys.stderr)
        return 2
    except FileExistsError as exc:
        if args.debug:
            raise
        print(f"medqa-bench: error: {exc.filename or exc} already exists; pass --overwrite to replace it", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("medqa-bench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
