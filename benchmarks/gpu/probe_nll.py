"""Probe (GPU): where the time of ``completion_nll`` goes on Llama-3.2-1B's shapes, against the MFU target.

    python benchmarks/gpu/probe_nll.py --tokenizer DIR [--items 2000] [--budgets 16384,32768,65536]

Exploratory, for the performance issue's 40% NLL MFU target. Prints, on the same items and in one process:
the tokenisation time; ``completion_nll`` at the automatic token budget and at fixed ones; the decoder alone
(``model.model``, no LM head, no loss) on exactly the batches ``completion_nll`` forms; and a torch.profiler
table of the CUDA kernels of one ``completion_nll`` pass with the share of the wall time the GPU was busy.
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_gpu_eval import matmul_rate, timed  # noqa: E402
from bench_train import build_random_llama_1b  # noqa: E402

from medqa_bench.inference import nll as inference  # noqa: E402
from medqa_bench.data.dataset import DataSpec, load_dataset  # noqa: E402
from medqa_bench.inference.models import load_base  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer")
    ap.add_argument("--workdir", default="/tmp/medqa-bench-bench")
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--budgets", default="16384,32768,65536")
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()

    folder = build_random_llama_1b(Path(args.workdir) / "random-llama-3.2-1b-arch", args.tokenizer)
    lm = load_base(str(folder), device="cuda", dtype="bfloat16")
    model, tok = lm.model, lm.tokenizer
    n_params = sum(p.numel() for p in model.parameters())
    rate = matmul_rate()
    print(torch.cuda.get_device_name(), torch.__version__, f"bf16 matmul {rate / 1e12:.0f} TFLOP/s", flush=True)
    items = load_dataset(DataSpec(qtype="symptoms")).examples[: args.items]
    prompts = [e.prompt("reference", tok) for e in items]
    completions = [e.completion("reference") for e in items]
    t = time.perf_counter()
    pairs = inference.encode_pairs(tok, prompts, completions)
    print(f"encode_pairs: {time.perf_counter() - t:.2f} s for {len(pairs)} items", flush=True)
    lengths = [len(a) + len(b) for a, b in pairs]
    n_tok = sum(lengths)
    print(f"tokens {n_tok:,}, longest {max(lengths)}, mean {n_tok / len(lengths):.0f}", flush=True)
    auto = inference.default_token_budget(model)
    print(f"automatic budget now: {auto:,} tokens (free {torch.cuda.mem_get_info()[0] / 2**30:.1f} GiB)", flush=True)

    def mfu(s):
        return 2 * n_params * n_tok / s / rate

    inference.completion_nll(model, tok, prompts[:64], completions[:64], progress=False)  # warm-up
    original = inference.default_token_budget
    budgets = [None] + [int(b) for b in args.budgets.split(",") if b]
    for budget in budgets:
        if budget is not None:
            inference.default_token_budget = lambda m, for_generation=False, b=budget: b
        used = inference.default_token_budget(model)
        n_batches = len(inference.token_batches(lengths, "auto", used, inference.nll_padding_limit(model)))
        _, s, mem = timed(lambda: inference.completion_nll(model, tok, prompts, completions, progress=False))
        print(f"completion_nll budget {used:>7,} ({n_batches} batches): {s:6.2f} s {n_tok / s:>9,.0f} tok/s "
              f"MFU {mfu(s):.1%} peak {mem:.1f} GiB", flush=True)
        # the decoder alone on the same batches: the ceiling for these shapes
        plan = inference.token_batches(lengths, "auto", used, inference.nll_padding_limit(model))
        batches = []
        for b in plan:
            width = max(lengths[i] for i in b)
            ids = torch.zeros((len(b), width), dtype=torch.long)
            for r, i in enumerate(b):
                seq = pairs[i][0] + pairs[i][1]
                ids[r, : len(seq)] = torch.tensor(seq)
            batches.append(ids.cuda())
        with torch.inference_mode(), inference.attention_kernels(torch.device("cuda")):
            _, s2, _ = timed(lambda: [model.model(input_ids=ids, use_cache=False).last_hidden_state for ids in batches])
            padded = sum(x.numel() for x in batches)
        print(f"    decoder only, same batches: {s2:6.2f} s MFU {mfu(s2):.1%} (padding {1 - n_tok / padded:.1%})", flush=True)
    inference.default_token_budget = original

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            t = time.perf_counter()
            inference.completion_nll(model, tok, prompts[:500], completions[:500], progress=False)
            torch.cuda.synchronize()
            wall = time.perf_counter() - t
        events = prof.key_averages()
        busy = sum(e.self_device_time_total for e in events) / 1e6
        print(f"\nprofile of 500 items: wall {wall:.2f} s, CUDA kernels {busy:.2f} s ({busy / wall:.0%} busy)")
        print(events.table(sort_by="self_cuda_time_total", row_limit=25, max_name_column_width=60))


if __name__ == "__main__":
    main()
