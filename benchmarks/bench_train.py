"""Training throughput and memory of ``trainers.qlora.train``: a few dozen QLoRA steps per row, one table.

    python benchmarks/bench_train.py                                  # SmolLM2-135M, gradient checkpointing on/off
    python benchmarks/bench_train.py --steps 6 --batch 2 --max-length 128     # a short CPU run
    python benchmarks/bench_train.py --random-llama-1b               # Llama-3.2-1B's shapes, random weights

Each row runs in its own process, so "peak memory" is that run's alone: CUDA ``max_memory_allocated``, or the
process's max RSS on CPU. "real tok/s" counts non-padding input tokens over the time spent in optimizer steps
(evaluation, checkpointing and model loading excluded). On CUDA each row also trains a plain TRL ``SFTTrainer``
(its defaults, the same base, LoRA, 4-bit config, data, batch and checkpointing) in the same process, and prints
the ratio ours / plain: the cost of the harness around TRL, which should be ~1.0.

The data are the bundled MedQuAD symptoms training items, cut at --max-length (most fill it at 256).
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


def build_random_llama_1b(folder: Path) -> Path:
    """Llama-3.2-1B's architecture with random weights (bf16) and the SmolLM2 tokenizer, saved once to ``folder``."""
    if (folder / "config.json").exists():
        return folder
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from medqa_bench.models import load_tokenizer, resolve_model

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
    from medqa_bench import atomic

    with atomic.directory(folder, overwrite=True) as tmp:  # a half-written folder never looks complete
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return folder


def _overrides(args: argparse.Namespace, model: str, gc: bool) -> list[str]:
    return [
        f"model.reference={model}",
        f"training.max_steps={args.steps}",
        f"training.batch_size={args.batch}",
        f"training.gradient_checkpointing={str(gc).lower()}",
        f"training.device={args.device}",
        f"training.logging_steps={args.steps}",
        f"data.max_length={args.max_length}",
        f"data.limit.train={args.steps * args.batch}",  # one epoch: one evaluation, at the end
        "data.limit.validation=1",
    ]


def run_one(spec: dict) -> dict:
    """One row, in this process: our train(), then (CUDA only) plain SFTTrainer on the same inputs."""
    import torch

    from trainers.qlora import load_recipe, train

    args = argparse.Namespace(**spec["args"])
    recipe = load_recipe("smollm2-135m-symptoms", _overrides(args, spec["model"], spec["gc"]))
    with tempfile.TemporaryDirectory() as tmp:
        out = train(recipe, out=Path(tmp) / "adapter", progress=False)
        meta = json.loads((out / "medqa_bench.json").read_text())
    t = meta["training"]
    row = {
        "model": spec["label"],
        "device": meta["hardware"]["device_name"] if meta["resolved"]["device"] != "cpu" else f"cpu x{os.cpu_count()}",
        "dtype": f"nf4/{meta['resolved']['precision']}" if meta["resolved"]["quantization"] == "4bit" else meta["resolved"]["precision"],
        "batch": args.batch,
        "grad_ckpt": spec["gc"],
        "tok_s": t["tokens_per_s"],
        "peak_mem_gb": t["peak_memory_bytes"] / 2**30,
        "steps": t["global_step"],
    }
    if meta["resolved"]["device"].startswith("cuda") and not args.no_reference:
        torch.cuda.empty_cache()
        row["plain_tok_s"], row["plain_mem_gb"] = plain_trl(recipe, meta["resolved"]["precision"])
        row["ratio"] = row["tok_s"] / row["plain_tok_s"]
    return row


def plain_trl(recipe, precision: str) -> tuple[float, float]:
    """TRL's SFTTrainer as its documentation shows it: same base, 4-bit config, LoRA, data, batch and checkpointing."""
    import datasets
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from medqa_bench.data import load_dataset
    from medqa_bench.models import load_tokenizer, nf4_config, resolve_model
    from trainers.callbacks import StepClock
    from trainers.qlora import limit_examples, sft_records

    source = resolve_model(recipe.model.reference)
    tokenizer = load_tokenizer(source)
    ds = load_dataset(recipe.data.spec())
    rows = sft_records(limit_examples(ds.split("train"), recipe.data.limit.train, recipe.seed), "reference", tokenizer)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    model = AutoModelForCausalLM.from_pretrained(
        source.location, quantization_config=nf4_config(str(dtype).split(".")[1]), dtype=dtype, device_map={"": 0}
    )
    clock = StepClock(True)
    torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = SFTTrainer(
            model=model,
            args=SFTConfig(
                output_dir=tmp,
                max_steps=recipe.training.max_steps,
                per_device_train_batch_size=recipe.training.batch_size,
                learning_rate=recipe.training.learning_rate,
                gradient_checkpointing=recipe.training.gradient_checkpointing,
                max_length=recipe.data.max_length,
                bf16=precision == "bf16",
                fp16=precision == "fp16",
                include_num_input_tokens_seen="non_padding",
                save_strategy="no",
                report_to="none",
                disable_tqdm=True,
                logging_steps=recipe.training.max_steps,
            ),
            train_dataset=datasets.Dataset.from_list(rows),
            processing_class=tokenizer,
            peft_config=LoraConfig(r=recipe.lora.r, lora_alpha=recipe.lora.alpha, lora_dropout=recipe.lora.dropout,
                                   target_modules=list(recipe.lora.target_modules), task_type="CAUSAL_LM"),
            callbacks=[clock],
        )
        trainer.train()
    return (clock.tokens_end - clock.tokens_start) / clock.seconds, torch.cuda.max_memory_allocated() / 2**30


def _table(rows: list[dict]) -> str:
    cols = [("model", "model"), ("device", "device"), ("dtype", "dtype"), ("batch", "batch"),
            ("grad_ckpt", "grad ckpt"), ("tok_s", "real tok/s"), ("peak_mem_gb", "peak mem GiB")]
    if any("plain_tok_s" in r for r in rows):
        cols += [("plain_tok_s", "TRL plain tok/s"), ("plain_mem_gb", "TRL plain GiB"), ("ratio", "ours/plain")]

    def fmt(v):
        return f"{v:.2f}" if isinstance(v, float) else "-" if v is None else str(v)

    cells = [[h for _, h in cols]] + [[fmt(r.get(k)) for k, _ in cols] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="model reference (alias, folder, .gguf, Hub id)")
    p.add_argument("--random-llama-1b", action="store_true", help="Llama-3.2-1B's shapes with random weights instead")
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "medqa-bench-bench"), help="where the random model is saved")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--gc", choices=["both", "on", "off"], default="both", help="gradient checkpointing rows")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--no-reference", action="store_true", help="skip the plain-TRL row on CUDA")
    p.add_argument("--json", help="also write the rows to this file")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one row, print its JSON
    args = p.parse_args(argv)

    if args.one:
        print("ROW " + json.dumps(run_one(json.loads(args.one))), flush=True)
        return 0

    model, label = args.model, args.model
    if args.random_llama_1b:
        model, label = str(build_random_llama_1b(Path(args.workdir) / "random-llama-3.2-1b-arch")), "llama-3.2-1b-arch (random)"
    spec_args = {k: getattr(args, k) for k in ("steps", "batch", "max_length", "device", "no_reference")}
    rows = []
    for gc in {"both": (True, False), "on": (True,), "off": (False,)}[args.gc]:
        spec = {"model": model, "label": label, "gc": gc, "args": spec_args}
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, "--one", json.dumps(spec)], capture_output=True, text=True)
        found = [line[4:] for line in proc.stdout.splitlines() if line.startswith("ROW ")]
        if proc.returncode or not found:
            sys.stderr.write(proc.stderr[-4000:])
            print(f"row failed: model={label} grad_ckpt={gc}", file=sys.stderr)
            return 1
        rows.append(json.loads(found[0]))
        print(f"  row done in {time.perf_counter() - t0:.0f} s: grad_ckpt={gc}", file=sys.stderr, flush=True)
    print(f"{args.steps} steps, max_length {args.max_length}, MedQuAD symptoms (train split)")
    print(_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
