"""QLoRA training throughput and memory of ``trainers.qlora.train`` beside plain TRL, and the loss curves.

Speed table (one GPU; each row in its own process, the same data, base, 4-bit config and LoRA)::

    python benchmarks/bench_train.py --random-llama-1b \\
        --rows trl:batch=4,gc=on trl:batch=16,gc=off ours:batch=16,gc=off,group=on,kernels=liger

A row is ``SIDE:key=value,...``. SIDE ``trl`` is TRL's ``SFTTrainer`` as its documentation shows it (prompt/completion
rows, completion-only loss, bf16, its defaults otherwise); ``ours`` is ``trainers.qlora.train`` with the recipe
``smollm2-135m-symptoms`` (the reference recipe's settings) and overrides. Keys: ``batch``, ``gc`` (gradient
checkpointing on/off), ``cudnn=off`` (the row's process runs scaled-dot-product attention without its cuDNN
backend), and for ``ours`` also ``blocking=on`` (Trainer's default waits for the device each step: its NaN check of
the loss and blocking batch copies, which ``trainers.qlora`` turns off), ``emulate=off`` (compiled layers without
Inductor's ``emulate_precision_casts``, which ``trainers.speedups`` sets so that fused kernels round to bf16 where
eager does; session 13's compiled rows ran so, session 14's with ``emulate=on``, now the default), ``group``
(training.group_by_length), ``kernels`` (training.kernels), ``free`` (training.padding_free), ``cache``
(training.cache_dequantized), ``compile`` (training.compile), ``pad`` (training.pad_to_multiple_of), ``optim``
(training.optimizer), ``once`` (training.logits_once) or any dotted recipe key.

"real tok/s" counts non-padding input tokens (prompt, answer and EOS) over the optimizer steps after ``--warmup``
steps (CUDA-synchronised at both ends only, unless ``--step-times``), so start-up, compilation, evaluation and saving
are excluded. "peak GiB" is
CUDA ``max_memory_allocated`` from the start of training (the 4-bit weights included). The ratio column divides by
the fastest ``trl`` row of the same run.

Loss curves (``--curve``): SmolLM2-135M-Instruct, one epoch of the symptoms training split at ``--curve-batch``,
plain TRL with two seeds (the noise band) and ``ours`` with the fast switches, each logging the mean training loss
every 10 steps and the validation loss at the end.

The data are the bundled MedQuAD symptoms training items with the reference template, cut at --max-length.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SHORT_KEYS = {"batch": "training.batch_size", "gc": "training.gradient_checkpointing",
              "group": "training.group_by_length", "kernels": "training.kernels",
              "compile": "training.compile", "pad": "training.pad_to_multiple_of",
              "free": "training.padding_free", "optim": "training.optimizer",
              "cache": "training.cache_dequantized", "once": "training.logits_once"}


def build_random_llama_1b(folder: Path, tokenizer_dir: str | None = None) -> Path:
    """Llama-3.2-1B's architecture with random weights (bf16) and the SmolLM2 tokenizer, saved once to ``folder``.

    ``tokenizer_dir``: a folder holding that tokenizer (``save_pretrained``), so the default model's GGUF file need
    not be on the machine; by default the tokenizer comes from the default model.
    """
    if (folder / "config.json").exists():
        return folder
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from medqa_bench.inference.models import load_tokenizer, resolve_model

    if tokenizer_dir:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    else:
        tokenizer = load_tokenizer(resolve_model("smollm2-135m-instruct"))
    config = LlamaConfig(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        vocab_size=128256,
        tie_word_embeddings=True,
        rope_theta=500000.0,
        max_position_embeddings=131072,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    from medqa_bench.storage import atomic

    with atomic.directory(folder, overwrite=True) as tmp:  # a half-written folder never looks complete
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return folder


def parse_row(text: str) -> tuple[str, dict[str, str]]:
    side, _, rest = text.partition(":")
    if side not in ("trl", "ours"):
        raise SystemExit(f"row '{text}': the side must be 'trl' or 'ours'")
    options = dict(kv.split("=", 1) for kv in rest.split(",") if kv)
    for key in options:
        if side == "trl" and key not in ("batch", "gc", "seed", "cudnn"):
            raise SystemExit(f"row '{text}': a trl row takes batch, gc, seed and cudnn only")
    return side, options


def _bool(value: str) -> str:
    return {"on": "true", "off": "false"}.get(value, value)


def recipe_overrides(options: dict[str, str], model: str, steps: int | None, max_length: int, device: str,
                     log_steps: int = 10) -> list[str]:
    out = [f"model.reference={model}", f"training.device={device}", f"data.max_length={max_length}",
           f"training.logging_steps={log_steps}", "data.limit.validation=1"]
    if steps is not None:
        batch = int(options.get("batch", 4))
        out += [f"training.max_steps={steps}", f"data.limit.train={steps * batch}"]  # one epoch, one evaluation
    for key, value in options.items():
        if key in ("cudnn", "blocking", "emulate"):
            continue  # not recipe keys: the row's process itself sets them (cuDNN attention, waits, Inductor casts)
        if key == "seed":
            out.append(f"seed={value}")
        else:
            out.append(f"{SHORT_KEYS.get(key, key)}={_bool(value)}")
    return out


def window_clock(warmup: int, step_times: bool = False):
    """A TrainerCallback timing the optimizer steps after ``warmup`` and logging (step, loss) pairs.

    The device is synchronised at the two ends of the window only, so the host queues work ahead as it would in a
    real run; ``step_times`` also synchronises after every step to record each step's time (which costs the
    overlap of one step's host work with the previous step's device work).
    """
    import torch
    from transformers import TrainerCallback

    class WindowClock(TrainerCallback):
        def __init__(self):
            self.t0 = self.t1 = self._last = None
            self.step_ms: list[float] = []
            self.profile = None
            self._prof = None
            self.tok0 = self.tok1 = 0
            self.losses: list[tuple[int, float]] = []
            self.eval_loss = None

        def on_train_begin(self, args, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()

        def _now(self):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            return time.perf_counter()

        def on_step_begin(self, args, state, control, **kwargs):
            # BENCH_PROFILE=1: a torch.profiler table of three warm-up steps, before the timed window
            if os.environ.get("BENCH_PROFILE") and warmup >= 6 and state.global_step == warmup - 5:
                self._prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                                torch.profiler.ProfilerActivity.CUDA])
                self._prof.__enter__()

        def on_step_end(self, args, state, control, **kwargs):
            if step_times:
                now = self._now()
                if self._last is not None:
                    self.step_ms.append(round((now - self._last) * 1000, 1))
                self._last = now
            if self._prof is not None and state.global_step == warmup - 2:
                self._prof.__exit__(None, None, None)
                self.profile = self._prof.key_averages().table(sort_by="cuda_time_total", row_limit=25)
                self._prof = None
            if state.global_step == warmup:
                self.t0, self.tok0 = self._now(), state.num_input_tokens_seen
            if state.global_step == state.max_steps:
                self.t1, self.tok1 = self._now(), state.num_input_tokens_seen

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            if "loss" in logs and not any(k.startswith("eval_") for k in logs):
                self.losses.append((state.global_step, float(logs["loss"])))
            if "eval_loss" in logs:
                self.eval_loss = float(logs["eval_loss"])

    return WindowClock()


def run_ours(spec: dict) -> dict:
    from trainers.qlora import load_recipe, train

    if spec["options"].get("blocking") == "on":  # Trainer's own per-step waits for the device, for comparison
        import trainers.qlora

        trainers.qlora._overlap_options = lambda device: {}
    if spec["options"].get("emulate") == "off":  # Inductor's default: fused kernels keep fp32 intermediates
        import trainers.speedups

        trainers.speedups.COMPILE_OPTIONS = {}
    clock = window_clock(spec["warmup"], spec.get("step_times", False))
    overrides = recipe_overrides(spec["options"], spec["model"], spec["steps"], spec["max_length"], spec["device"],
                                 spec.get("log_steps", 10))
    if spec.get("curve"):
        overrides = [o for o in overrides if not o.startswith("data.limit.validation")] + ["training.epochs=1"]
    recipe = load_recipe("smollm2-135m-symptoms", overrides)
    with tempfile.TemporaryDirectory() as tmp:
        out = train(recipe, out=Path(tmp) / "adapter", progress=False, callbacks=[clock])
        meta = json.loads((out / "medqa_bench.json").read_text())
    if spec.get("curve"):
        clock.eval_loss = meta["training"]["final_eval_loss"]
    return _row(spec, clock, meta["hardware"].get("device_name"))


def run_trl(spec: dict) -> dict:
    """TRL's SFTTrainer as its documentation shows it: same base, 4-bit config, LoRA, data, batch and checkpointing."""
    import datasets
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from medqa_bench.data.dataset import load_dataset
    from medqa_bench.inference.models import load_tokenizer, nf4_config, resolve_model
    from trainers.qlora import limit_examples, load_recipe, sft_records

    options = spec["options"]
    recipe = load_recipe("smollm2-135m-symptoms", recipe_overrides(options, spec["model"], spec["steps"], spec["max_length"], spec["device"],
                                                                 spec.get("log_steps", 10)))
    source = resolve_model(recipe.model.reference)
    tokenizer = load_tokenizer(source)
    ds = load_dataset(recipe.data.spec())
    rows = sft_records(limit_examples(ds.split("train"), recipe.data.limit.train, recipe.seed), "reference", tokenizer)
    val = sft_records(ds.split("validation"), "reference", tokenizer) if spec.get("curve") else None
    model = AutoModelForCausalLM.from_pretrained(
        source.location, quantization_config=nf4_config("bfloat16"), dtype=torch.bfloat16, device_map={"": 0}
    )
    clock = window_clock(spec["warmup"], spec.get("step_times", False))
    with tempfile.TemporaryDirectory() as tmp:
        trainer = SFTTrainer(
            model=model,
            args=SFTConfig(
                output_dir=tmp,
                seed=recipe.seed,
                num_train_epochs=1,
                max_steps=recipe.training.max_steps or -1,
                per_device_train_batch_size=recipe.training.batch_size,
                per_device_eval_batch_size=recipe.training.batch_size,
                learning_rate=recipe.training.learning_rate,
                gradient_checkpointing=recipe.training.gradient_checkpointing,
                max_length=recipe.data.max_length,
                bf16=True,
                include_num_input_tokens_seen="non_padding",
                save_strategy="no",
                report_to="none",
                disable_tqdm=True,
                logging_steps=spec.get("log_steps", 10),
            ),
            train_dataset=datasets.Dataset.from_list(rows),
            eval_dataset=datasets.Dataset.from_list(val) if val else None,
            processing_class=tokenizer,
            peft_config=LoraConfig(r=recipe.lora.r, lora_alpha=recipe.lora.alpha, lora_dropout=recipe.lora.dropout,
                                   target_modules=list(recipe.lora.target_modules), task_type="CAUSAL_LM"),
            callbacks=[clock],
        )
        trainer.train()
        if val:
            clock.eval_loss = trainer.evaluate()["eval_loss"]
    row = _row(spec, clock, torch.cuda.get_device_name())
    row["optim"] = str(trainer.args.optim)  # TRL's default optimizer, which the recipe's may differ from
    return row


def _row(spec: dict, clock, device_name: str | None) -> dict:
    import torch

    seconds = (clock.t1 - clock.t0) if clock.t0 is not None and clock.t1 is not None else None
    tokens = clock.tok1 - clock.tok0
    return {
        "row": spec["row"],
        "device": device_name,
        "tok_s": tokens / seconds if seconds else None,
        "tokens": tokens,
        "seconds": seconds,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
        "losses": clock.losses,
        "eval_loss": clock.eval_loss,
        "step_ms": clock.step_ms,
        "profile": clock.profile,
    }


def run_rows(rows: list[str], model: str, args: argparse.Namespace, curve: bool = False) -> list[dict]:
    results = []
    for text in rows:
        side, options = parse_row(text)
        spec = {"row": text, "side": side, "options": options, "model": model, "warmup": args.warmup,
                "steps": None if curve else args.warmup + args.steps, "max_length": args.max_length,
                "device": args.device, "curve": curve, "log_steps": args.log_steps, "step_times": args.step_times}
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, "--one", json.dumps(spec)], capture_output=True, text=True)
        found = [line[4:] for line in proc.stdout.splitlines() if line.startswith("ROW ")]
        if proc.returncode or not found:
            sys.stderr.write(proc.stderr[-6000:])
            print(f"row failed: {text}", file=sys.stderr, flush=True)
            results.append({"row": text, "failed": True})
            continue
        results.append(json.loads(found[0]))
        print(f"  {text}: done in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        if args.json:  # after every row, so a run stopped at its time limit keeps what it measured
            Path(args.json).write_text(json.dumps(results, indent=2))
    return results


def speed_table(rows: list[dict]) -> str:
    ok = [r for r in rows if not r.get("failed") and r.get("tok_s")]
    best = max((r["tok_s"] for r in ok if r["row"].startswith("trl:")), default=None)
    lines = ["| row | real tok/s | peak GiB | ratio to best TRL |", "|---|---|---|---|"]
    for r in rows:
        if r.get("failed"):
            lines.append(f"| `{r['row']}` | failed | | |")
            continue
        ratio = f"{r['tok_s'] / best:.2f}" if best and r.get("tok_s") else "-"
        peak = f"{r['peak_gib']:.2f}" if r.get("peak_gib") is not None else "-"  # CPU: not measured
        lines.append(f"| `{r['row']}` | {r['tok_s']:,.0f} | {peak} | {ratio} |")
    return "\n".join(lines)


def curve_table(rows: list[dict]) -> str:
    ok = [r for r in rows if not r.get("failed")]
    steps = sorted({s for r in ok for s, _ in r["losses"]})
    head = "| step | " + " | ".join(f"`{r['row']}`" for r in ok) + " |"
    lines = [head, "|---" * (len(ok) + 1) + "|"]
    for s in steps:
        cells = [next((f"{v:.4f}" for t, v in r["losses"] if t == s), "") for r in ok]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    lines.append("| mean | " + " | ".join(f"{sum(v for _, v in r['losses']) / max(len(r['losses']), 1):.4f}" for r in ok) + " |")
    lines.append("| validation loss | " + " | ".join(f"{r['eval_loss']:.4f}" if r.get("eval_loss") else "-" for r in ok) + " |")
    return "\n".join(lines)


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for name in ("torch", "transformers", "trl", "peft", "bitsandbytes", "liger-kernel"):
        try:
            out.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            pass
    return ", ".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="model reference (alias, folder, .gguf, Hub id)")
    p.add_argument("--random-llama-1b", action="store_true", help="Llama-3.2-1B's shapes with random weights instead")
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "medqa-bench-bench"), help="where the random model is saved")
    p.add_argument("--tokenizer", help="folder of the SmolLM2 tokenizer for the random model (default: the default model's)")
    p.add_argument("--rows", nargs="+", default=["trl:batch=4,gc=on", "trl:batch=16,gc=off",
                                                 "ours:batch=16,gc=off,group=on,kernels=liger"])
    p.add_argument("--steps", type=int, default=40, help="timed optimizer steps per row")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cuda")
    p.add_argument("--curve", nargs="*", metavar="ROW", help="loss-curve rows on SmolLM2 (one epoch each) instead")
    p.add_argument("--json", help="also write the rows to this file")
    p.add_argument("--log-steps", type=int, default=10, help="optimizer steps per logged training-loss window")
    p.add_argument("--step-times", action="store_true", help="synchronise after every step to record step times")
    p.add_argument("--table", metavar="JSON", help="print the speed table (with --curve: the curve table) of a saved --json file, e.g. of a run cut by its time limit")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one row, print its JSON
    args = p.parse_args(argv)

    if args.table:
        rows = json.loads(Path(args.table).read_text())
        print(curve_table(rows) if args.curve is not None else speed_table(rows))  # --curve: the curve table
        return 0

    if args.one:
        spec = json.loads(args.one)
        if spec["options"].get("cudnn") == "off":  # process-wide: scaled-dot-product attention without cuDNN
            import torch

            torch.backends.cuda.enable_cudnn_sdp(False)
        row = run_trl(spec) if spec["side"] == "trl" else run_ours(spec)
        print("ROW " + json.dumps(row), flush=True)
        return 0

    model = args.model
    if args.random_llama_1b:
        model = str(build_random_llama_1b(Path(args.workdir) / "random-llama-3.2-1b-arch", args.tokenizer))
    if args.curve is not None:
        rows = run_rows(args.curve or ["trl:batch=16,gc=off,seed=42", "trl:batch=16,gc=off,seed=43",
                                       "ours:batch=16,gc=off,group=on,kernels=liger"], model, args, curve=True)
        print(f"\nloss curves: {model}, one epoch, max_length {args.max_length}; {_versions()}")
        print(curve_table(rows))
    else:
        rows = run_rows(args.rows, model, args)
        device = next((r["device"] for r in rows if r.get("device")), "?")
        print(f"\n{'llama-3.2-1b-arch (random)' if args.random_llama_1b else model} on {device}; "
              f"{args.steps} timed steps after {args.warmup}, max_length {args.max_length}; {_versions()}")
        print(speed_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
