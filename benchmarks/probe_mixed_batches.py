"""Milliseconds a decoding step with PEFT's mixed-adapter batches against one adapter set active.

A run of several LoRA adapters on one base generates them in mixed batches (``adapter_names``, see
medqa_bench/inference/backends/transformers.py): one decoding step serves every system. PEFT then selects each adapter's rows
in every LoRA layer at every step, host work that a step with one adapter active does not do. This probe times a
greedy step (48 new tokens, every row forced to generate all of them) of the default model, float32, with three
adapters loaded, four ways: the base alone, one adapter active, mixed batches naming one adapter, and mixed batches
naming three.

    python benchmarks/probe_mixed_batches.py ADAPTER_DIR ADAPTER_DIR ADAPTER_DIR [--batch 8] [--device cpu]

On a CPU the step is bound by arithmetic as much as by the host; on a GPU a 135M model's step is bound by the host,
so the host work measured here is what a GPU step pays too (not measured there yet).
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("adapters", nargs=3, help="three LoRA adapter folders of the default model")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from medqa_bench.inference.models import resolve_model

    torch.manual_seed(0)
    path = resolve_model().location
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(args.device)
    names = [f"a{i}" for i in range(3)]
    model = PeftModel.from_pretrained(base, args.adapters[0], adapter_name=names[0])
    for name, folder in zip(names[1:], args.adapters[1:]):
        model.load_adapter(folder, adapter_name=name)
    model.eval()
    prompts = [tok.apply_chat_template([{"role": "user", "content": f"What are the symptoms of condition {i}?"}],
                                       tokenize=False, add_generation_prompt=True) for i in range(args.batch)]
    enc = tok(prompts, return_tensors="pt", padding=True).to(args.device)
    n = args.new_tokens
    common = dict(do_sample=False, pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else 0)

    def step_ms(**extra) -> float:
        with torch.inference_mode():
            model.generate(**enc, max_new_tokens=4, min_new_tokens=4, **common, **extra)  # warm-up
            if args.device != "cpu":
                torch.cuda.synchronize()
            start = time.perf_counter()
            model.generate(**enc, max_new_tokens=n, min_new_tokens=n, **common, **extra)
            if args.device != "cpu":
                torch.cuda.synchronize()
            return (time.perf_counter() - start) / n * 1000

    print(f"batch {args.batch}, {n} new tokens, device {args.device}; ms a decoding step")
    print("| repeat | base alone | one adapter active | mixed, one adapter named | mixed, three adapters named |")
    print("|---|---|---|---|---|")
    for r in range(1, args.repeats + 1):
        with model.disable_adapter():
            alone = step_ms()
        model.set_adapter(names[0])
        one = step_ms()
        mixed1 = step_ms(adapter_names=[names[0]] * args.batch)
        mixed3 = step_ms(adapter_names=[names[i % 3] for i in range(args.batch)])
        print(f"| {r} | {alone:.1f} | {one:.1f} | {mixed1:.1f} | {mixed3:.1f} |", flush=True)


if __name__ == "__main__":
    main()
