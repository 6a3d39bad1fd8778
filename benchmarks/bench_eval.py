"""Throughput of completion-NLL scoring and generation, beside a plain hand-written batched PyTorch loop.

Both sides do the same work in the same process on the same items (the default model, the symptoms test split):
the reference loop takes items in file order, a fixed batch, right padding for NLL (labels masked) and left
padding for generation; medqa-bench sorts by length and packs batches by a token budget (on CPU: about 512
tokens of items within 10% of each other's length) and, for NLL, runs the LM head on the scored positions only. The
table prints each side's real tokens/s and the ratio (target: >= 1.0). The per-item NLLs of the two sides are
compared (the loop computes full logits and a cross-entropy over every position: the plain definition).

    python benchmarks/bench_eval.py                 # CPU defaults: 64 items for NLL, 16 for generation
    python benchmarks/bench_eval.py --device cuda --items 266 --gen-items 128 --batch-size 64
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def reference_nll(model, tok, prompts, completions, batch_size, device):
    """The plain loop: fixed batches in file order, right padding, labels = -100 on prompt and padding."""
    import torch
    import torch.nn.functional as F

    from medqa_bench.inference.nll import encode_pair

    out = []
    with torch.inference_mode():
        for s in range(0, len(prompts), batch_size):
            pairs = [encode_pair(tok, p, c) for p, c in zip(prompts[s:s + batch_size], completions[s:s + batch_size])]
            width = max(len(a) + len(b) for a, b in pairs)
            ids = torch.full((len(pairs), width), tok.pad_token_id)
            mask = torch.zeros_like(ids)
            labels = torch.full_like(ids, -100)
            for r, (a, b) in enumerate(pairs):
                ids[r, : len(a) + len(b)] = torch.tensor(a + b)
                mask[r, : len(a) + len(b)] = 1
                labels[r, len(a): len(a) + len(b)] = torch.tensor(b)
            ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            loss = F.cross_entropy(logits.transpose(1, 2), labels[:, 1:], reduction="none", ignore_index=-100)
            out.extend(float(x) for x in loss.sum(-1).cpu())
    return out


def reference_generate(model, tok, prompts, batch_size, max_new_tokens, device):
    import torch

    tok.padding_side = "left"
    new_tokens = 0
    with torch.inference_mode():
        for s in range(0, len(prompts), batch_size):
            enc = tok(prompts[s:s + batch_size], return_tensors="pt", padding=True).to(device)
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id,
                                 eos_token_id=tok.eos_token_id)
            gen = out[:, enc["input_ids"].shape[1]:]
            for row in gen.tolist():
                n = next((k + 1 for k, t in enumerate(row) if t == tok.eos_token_id), len(row))
                new_tokens += n
    return new_tokens


def peak(device):
    from medqa_bench.storage.provenance import peak_memory_bytes

    return peak_memory_bytes(device) / 2**30


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--items", type=int, default=64, help="items for NLL scoring")
    ap.add_argument("--gen-items", type=int, default=16, help="items for generation")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8, help="the reference loop's batch size")
    ap.add_argument("--prompt-format", default="chat", help="chat: the baseline answers (the reference template makes it stop at once)")
    args = ap.parse_args()

    import torch

    from medqa_bench.data.dataset import load_dataset
    from medqa_bench.inference.generation import DecodingParams, generate
    from medqa_bench.inference.nll import completion_nll, encode_pair
    from medqa_bench.inference.models import load_base

    lm = load_base(args.model, device=args.device, dtype=args.dtype)
    model, tok, device = lm.model, lm.tokenizer, lm.device
    items = load_dataset().split("test")
    prompts = [e.prompt(args.prompt_format, tok) for e in items]
    completions = [e.completion(args.prompt_format) for e in items]
    n = min(args.items, len(items))
    ntok = sum(len(encode_pair(tok, p, c)[1]) for p, c in zip(prompts[:n], completions[:n]))

    def timed(fn):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        value = fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return value, time.perf_counter() - t, peak(device)

    # warm-up, so neither side pays one-time costs
    completion_nll(model, tok, prompts[:2], completions[:2], progress=False)
    ref_vals, ref_t, ref_mem = timed(lambda: reference_nll(model, tok, prompts[:n], completions[:n], args.batch_size, device))
    ours, our_t, our_mem = timed(lambda: completion_nll(model, tok, prompts[:n], completions[:n], progress=False))
    worst = max(abs(a - b.nll_sum) / a for a, b in zip(ref_vals, ours))

    g = min(args.gen_items, len(items))
    dec = DecodingParams(max_new_tokens=args.max_new_tokens)
    ref_new, ref_gt, ref_gmem = timed(lambda: reference_generate(model, tok, prompts[:g], args.batch_size, args.max_new_tokens, device))
    gens, our_gt, our_gmem = timed(lambda: generate(model, tok, prompts[:g], dec, progress=False))
    our_new = sum(x.generated_tokens for x in gens)

    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    print(f"model {args.model}  device {name}  dtype {lm.dtype}  torch {torch.__version__}")
    print(f"NLL: {n} items, {ntok} completion tokens; generation: {g} items, max_new_tokens {args.max_new_tokens}")
    print(f"per-item NLL agreement with the reference loop: max relative difference {worst:.2e}\n")
    print(f"| work | side | batch | seconds | tokens/s | peak GiB | ratio |")
    print(f"|---|---|---|---|---|---|---|")
    print(f"| NLL scoring | reference loop | {args.batch_size} | {ref_t:.2f} | {ntok / ref_t:,.0f} | {ref_mem:.2f} | 1.00 |")
    print(f"| NLL scoring | medqa-bench | auto | {our_t:.2f} | {ntok / our_t:,.0f} | {our_mem:.2f} | {ref_t / our_t:.2f} |")
    print(f"| generation | reference loop | {args.batch_size} | {ref_gt:.2f} | {ref_new / ref_gt:,.0f} | {ref_gmem:.2f} | 1.00 |")
    print(f"| generation | medqa-bench | auto | {our_gt:.2f} | {our_new / our_gt:,.0f} | {our_gmem:.2f} | {(our_new / our_gt) / (ref_new / ref_gt):.2f} |")
    print("\nratio: medqa-bench throughput / reference loop throughput (>= 1.0 is the target)")
    print("(on CPU the peak column is the process's peak RSS so far, not per stage)")


if __name__ == "__main__":
    main()
