"""Probe (GPU): bf16 matmul rate, plain forward MFU and plain HF generate throughput on Llama-3.2-1B's shapes.

    python benchmarks/gpu/probe_eval.py /tmp/medqa-bench-bench/random-llama-3.2-1b-arch

Exploratory: tells how far plain transformers is from the performance issue's targets before our code is timed.
"""

import sys
import time

import torch
from transformers import AutoModelForCausalLM


def timed(fn, reps=3):
    fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / reps


def main(path):
    print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    s = timed(lambda: a @ b, reps=20)
    rate = 2 * 8192**3 / s
    print(f"bf16 matmul 8192^3: {rate / 1e12:.0f} TFLOP/s", flush=True)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, device_map={"": 0}, attn_implementation="sdpa")
    model.eval()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"params {n_params / 1e9:.3f} B", flush=True)
    for batch, seq in ((32, 512), (64, 256), (16, 1024)):
        ids = torch.randint(0, 49000, (batch, seq), device="cuda")
        with torch.inference_mode():
            s_full = timed(lambda: model(input_ids=ids).logits)
            s_hidden = timed(lambda: model.model(input_ids=ids).last_hidden_state)
        tok = batch * seq
        print(f"forward {batch}x{seq}: full logits {tok / s_full:,.0f} tok/s MFU {2 * n_params * tok / s_full / rate:.2%}; "
              f"hidden only {tok / s_hidden:,.0f} tok/s MFU {2 * n_params * tok / s_hidden / rate:.2%}", flush=True)
    for batch in (64, 128, 256):
        ids = torch.randint(0, 49000, (batch, 64), device="cuda")
        with torch.inference_mode():
            kw = dict(max_new_tokens=128, min_new_tokens=128, do_sample=False, pad_token_id=0)
            s = timed(lambda: model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kw), reps=1)
        print(f"generate dynamic cache batch {batch}: {batch * 128 / s:,.0f} new tok/s", flush=True)
    for batch in (64, 128):
        ids = torch.randint(0, 49000, (batch, 64), device="cuda")
        kw = dict(max_new_tokens=128, min_new_tokens=128, do_sample=False, pad_token_id=0, cache_implementation="static")
        with torch.inference_mode():
            t0 = time.perf_counter()
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kw)
            torch.cuda.synchronize()
            first = time.perf_counter() - t0
            s = timed(lambda: model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kw), reps=1)
        print(f"generate static cache batch {batch}: first call {first:.1f} s, then {batch * 128 / s:,.0f} new tok/s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
