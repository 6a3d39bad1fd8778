"""How much greedy text depends on rounding: the slot engine against today's generate, and today's generate against
itself at another batch size, in one dtype (issue 34, item 3).

    .venv/bin/python benchmarks/probe_engine_rounding.py [--dtype bfloat16] [--n 6] [--max-new-tokens 96] [--device cpu]

The default model answers the first ``--n`` chat prompts of the symptoms test split greedily with today's engine in
one batch, with the slot engine (exact mode and refill) in the same batch, and with today's engine one prompt at a
time. Prints each engine's seconds and, per pair, how many answers are identical (text, token count, truncation and
stop reason) and where the first differing texts part. In float32 the slot engine is meant to be identical; in
bfloat16 a different batch shape alone changes rounding, and this probe says by how much for today's path too, so an
identical share below 100% can be read against it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def first_difference(a: str, b: str) -> int:
    return next((i for i in range(min(len(a), len(b))) if a[i] != b[i]), min(len(a), len(b)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16", "float16"))
    ap.add_argument("--n", type=int, default=6, help="symptoms test items (chat prompts)")
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    from medqa_bench.data.dataset import load_dataset
    from medqa_bench.inference.generation import DecodingParams, generate
    from medqa_bench.inference.models import load_base

    lm = load_base("smollm2-135m-instruct", device=args.device, dtype=args.dtype)
    model, tok = lm.model, lm.tokenizer
    prompts = [e.prompt("chat", tok) for e in load_dataset().split("test")[:args.n]]
    dec = DecodingParams(max_new_tokens=args.max_new_tokens)
    stops = [dec.stop_sequences("chat")] * len(prompts)
    runs = {}
    print(f"default model, {args.dtype} on {args.device}, {len(prompts)} chat prompts, {args.max_new_tokens} new tokens")
    print("| engine | batch | seconds |\n|---|---|---|")
    for name, engine, batch in (("generate", "generate", len(prompts)), ("slots", "slots", len(prompts)),
                                ("refill", "refill", len(prompts)), ("generate, one at a time", "generate", 1)):
        t = time.perf_counter()
        runs[name] = generate(model, tok, prompts, dec, batch_size=batch, progress=False, stop_sequences=stops,
                              engine=engine)
        print(f"| {engine} | {batch} | {time.perf_counter() - t:.1f} |")
    print("\n| pair | identical answers | where the first differing answer parts (character, of) |\n|---|---|---|")
    for a, b in (("generate", "slots"), ("generate", "refill"), ("generate", "generate, one at a time"),
                 ("slots", "generate, one at a time")):
        same = [x == y for x, y in zip(runs[a], runs[b])]
        where = next((f"{first_difference(x.text, y.text)} of {len(x.text)}"
                      for x, y, s in zip(runs[a], runs[b], same) if not s), "-")
        print(f"| {a} / {b} | {sum(same)} of {len(same)} | {where} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
