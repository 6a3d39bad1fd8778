"""The loss's LM head alone on the GPU: ``trainers.lm_head`` (projected twice a step) against TRL's (three times).

Llama-3.2-1B's head (vocabulary 128,256, hidden 2,048, bf16) on the completion tokens of one batch (``--tokens``,
about 6,600 at batch 22): the log-probabilities and the hidden states' gradient compared, the forward + backward
time (CUDA events, median of ``--repeat``) and the peak memory above the inputs, with the ratio to TRL's::

    python benchmarks/gpu/probe_lm_head.py [--tokens 6600] [--repeat 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from trainers.lm_head import linear_log_prob  # noqa: E402


def trls(hidden, weight, targets):
    from trl.kernels import ChunkedLogProbFunction
    from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE

    return ChunkedLogProbFunction.apply(hidden, weight, None, targets, 1.0, _CHUNKED_LOGPROB_CHUNK_SIZE, None, 1.0,
                                        ("log_probs",))[0]


def step(fn, hidden, weight, targets):
    hidden.grad = None
    log_probs = fn(hidden, weight, targets)
    (-log_probs.sum() / log_probs.numel()).backward()
    return log_probs.detach(), hidden.grad


def measure(fn, hidden, weight, targets, repeat):
    for _ in range(3):
        step(fn, hidden, weight, targets)
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step(fn, hidden, weight, targets)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step(fn, hidden, weight, targets)
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    return statistics.median(times), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=6600)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    torch.manual_seed(0)
    n, h, v = args.tokens, 2048, 128256
    hidden = torch.randn(n, h, device="cuda", dtype=torch.bfloat16).requires_grad_()
    weight = torch.randn(v, h, device="cuda", dtype=torch.bfloat16) * 0.02
    targets = torch.randint(0, v, (n,), device="cuda")
    (ours_lp, ours_g), (trl_lp, trl_g) = (step(f, hidden, weight, targets) for f in (linear_log_prob, trls))
    ours_g, trl_g = ours_g.float(), trl_g.float()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; {n} tokens x {v} x {h}, bf16")
    print(f"log-probabilities: max |ours - TRL| = {(ours_lp - trl_lp).abs().max().item():.3g}")
    print(f"gradient: max |ours - TRL| = {(ours_g - trl_g).abs().max().item():.3g} "
          f"(max |TRL| = {trl_g.abs().max().item():.3g}, relative Frobenius {((ours_g - trl_g).norm() / trl_g.norm()).item():.3g})")
    rows = {"TRL (3 projections)": measure(trls, hidden, weight, targets, args.repeat),
            "ours (2 projections)": measure(linear_log_prob, hidden, weight, targets, args.repeat)}
    ref = rows["TRL (3 projections)"][0]
    print("| head | fwd+bwd ms | speed-up | peak MiB above inputs |\n|---|---|---|---|")
    for name, (ms, peak) in rows.items():
        print(f"| {name} | {ms:.2f} | {ref / ms:.2f} | {peak:.0f} |")


if __name__ == "__main__":
    main()
