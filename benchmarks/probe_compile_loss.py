"""Does ``training.compile`` change the loss itself, before any training? One batch, four forwards, no update.

Compiled with Inductor's defaults, the layers' loss curve on SmolLM2 sat systematically ~0.1% below plain TRL's at
every logged window and seed (``benchmarks/RESULTS.md``, session 13; ``training.compile`` now keeps eager's
roundings). If that comes from the forward's rounding (Inductor keeps a fused kernel's intermediates in fp32 where
eager bf16 rounds after every op) rather than from a different training, the compiled bf16 loss of the untrained
model already differs from the eager bf16 loss. This prints the losses of the same padding-free batch (the symptoms
training examples, LoRA initialised: the base's output, dropout off), eager and compiled, with and without
Inductor's ``emulate_precision_casts`` (eager's roundings kept), and in fp32::

    python benchmarks/probe_compile_loss.py [--device cuda] [--batch 16]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def batch_loss(precision: str, device: str, n: int, compiled: bool, emulate_casts: bool = False) -> float:
    import torch

    from medqa_bench.data.dataset import load_dataset
    from medqa_bench.inference.models import load_tokenizer, resolve_model
    from trainers import speedups
    from trainers.qlora import _build_trainer, limit_examples, load_recipe, sft_records

    recipe = load_recipe("smollm2-135m-symptoms", ["training.padding_free=true", "training.cache_dequantized=true",
                                                  "training.gradient_checkpointing=false", f"training.device={device}"])
    source = resolve_model(recipe.model.reference)
    tokenizer = load_tokenizer(source)
    rows = sft_records(limit_examples(load_dataset(recipe.data.spec()).split("train"), n, recipe.seed), "reference",
                       tokenizer)
    with tempfile.TemporaryDirectory() as tmp:
        trainer, _ = _build_trainer(recipe, source, device, precision, tokenizer, rows, [], Path(tmp), False, 0, ())
    if compiled:
        # Inductor skips the bf16 roundings of a fused kernel's intermediates unless told to emulate them
        speedups.COMPILE_OPTIONS = {"emulate_precision_casts": emulate_casts}
        torch._dynamo.reset()  # compile afresh, not reuse the previous model's compiled layer
        speedups.compile_decoder_layers(trainer.model)
    trainer.model.eval()
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(n)])
    batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
    count = (batch["labels"][:, 1:] != -100).sum()
    autocast = torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=precision == "bf16")
    with torch.no_grad(), autocast:
        return float(trainer.compute_loss(trainer.model, batch, num_items_in_batch=count))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=16)
    args = p.parse_args(argv)
    eager = batch_loss("bf16", args.device, args.batch, compiled=False)
    compiled = batch_loss("bf16", args.device, args.batch, compiled=True)
    emulated = batch_loss("bf16", args.device, args.batch, compiled=True, emulate_casts=True)
    exact = batch_loss("fp32", args.device, args.batch, compiled=False)
    print(f"| forward | loss | minus fp32 |\n|---|---|---|")
    for name, value in (("eager bf16", eager), ("compiled bf16", compiled),
                        ("compiled bf16, emulate_precision_casts", emulated), ("eager fp32", exact)):
        print(f"| {name} | {value:.5f} | {value - exact:+.5f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
