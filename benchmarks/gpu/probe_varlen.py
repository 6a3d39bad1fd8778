"""Check and time the padding-free attention of ``trainers.packing`` on a GPU (one call, about 20 s).

Correctness: FlashAttention-2's variable-length kernel (``_FlashVarlen``) against PyTorch's SDPA run sequence by
sequence in float32, on random bf16 inputs with Llama-3.2-1B's heads (32 query, 8 key/value, head_dim 64): the output
and the three input gradients, as relative errors ||x - ref|| / ||ref||. Time: forward + backward of 16 packed
MedQuAD-like lengths against SDPA on the same sequences padded to 512 (a padded batch of 16), median of 20 runs.

    python benchmarks/gpu/probe_varlen.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from trainers.packing import _FlashVarlen, _sequence_by_sequence  # noqa: E402


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def main() -> None:
    torch.manual_seed(0)
    dev, hq, hkv, d = "cuda", 32, 8, 64
    lengths = [300, 512, 77, 401, 1, 230]
    total = sum(lengths)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=dev)
    q, k, v = (torch.randn(total, h, d, device=dev, dtype=torch.bfloat16, requires_grad=True) for h in (hq, hkv, hkv))
    grad = torch.randn(total, hq, d, device=dev, dtype=torch.bfloat16)
    out = _FlashVarlen.apply(q, k, v, cu, max(lengths), d**-0.5)
    out.backward(grad)
    fast = [out.detach(), q.grad, k.grad, v.grad]
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    ref = _sequence_by_sequence(q32, k32, v32, cu, d**-0.5)
    ref.backward(grad.float())
    for name, a, b in zip(("out", "dq", "dk", "dv"), fast, [ref.detach(), q32.grad, k32.grad, v32.grad]):
        print(f"{name}: rel err {rel(a, b):.2e}")

    gen = torch.Generator().manual_seed(1)
    lens = torch.randint(80, 513, (16,), generator=gen).tolist()
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32, device=dev)
    t = sum(lens)
    qp, kp, vp = (torch.randn(t, h, d, device=dev, dtype=torch.bfloat16, requires_grad=True) for h in (hq, hkv, hkv))
    qd, kd, vd = (torch.randn(16, h, 512, d, device=dev, dtype=torch.bfloat16, requires_grad=True) for h in (hq, hkv, hkv))

    def packed():
        _FlashVarlen.apply(qp, kp, vp, cu, max(lens), d**-0.5).sum().backward()

    def padded():
        torch.nn.functional.scaled_dot_product_attention(qd, kd, vd, is_causal=True, enable_gqa=True).sum().backward()

    from triton.testing import do_bench

    for name, fn in (("packed varlen", packed), ("padded SDPA (16 x 512)", padded)):
        ms = do_bench(fn, warmup=50, rep=200, return_mode="median")
        print(f"{name}: {ms:.3f} ms fwd+bwd per layer ({t} real tokens)")


if __name__ == "__main__":
    main()
