"""Probe (GPU, issue 34): the slot engine (medqa_bench.inference.decoder) against today's generate.

    MEDQA_BENCH_MODEL_DIR=/tmp/stage MEDQA_BENCH_CACHE=/tmp/stage/cache HF_HUB_OFFLINE=1 \\
        python3 benchmarks/gpu/probe_decoder.py --out $OUT

Four parts, each on its own (an error is printed and the next part runs):

1. **env**: torch, transformers, the card and its memory bandwidth (H100 3.35 TB/s, H200 4.8 TB/s).
2. **smollm2** (``--model``, default the default model, float32): ``--n`` chat prompts of the symptoms test split with
   the headline's budget (``--max-new-tokens``, 907), then the same items in the reference template. Today's
   ``generate(batch_size="auto")`` beside the slot engine in exact mode and with slot refill (``--slots``) (chat:
   each run twice, the first captures the CUDA graphs). Per engine: seconds,
   new tokens/s, the share of items whose text, token count and stop reason are identical to today's, and the
   padding share of the decoding work (today's from :func:`~medqa_bench.inference.decoder.batch_padding`).
3. **llama1b** (random weights, Llama-3.2-1B's shapes, bf16, batch 64, ``--llama-new-tokens``): new tokens/s of
   today's generate with the dynamic and the static (compiled) cache and of the slot engine (exact, refill), and
   the fraction of the memory-bandwidth bound: ``B / ((weight bytes + B x mean context x KV bytes a token) / BW)``.

4. **steps** (not in the default ``--parts``): where a decoding step's time goes, kernels against launches against
   the host. The default model in float32 (the headline's) and, with ``--steps-llama``, the random Llama-3.2-1B in
   bf16 decode ``--steps-new-tokens`` tokens for ``--steps-batch`` prompts under ``torch.profiler``, after a warm-up
   run (compilation and CUDA graph capture are not profiled): today's generate, the slot engine run eagerly, the
   slot engine replaying CUDA graphs. Per decoding step: wall time, time the GPU spent in kernels, kernel launches
   and graph launches from the host, and the share of the step the GPU sat idle (the host's and the launches' part).

Writes ``probe_decoder.json`` and ``probe_decoder.log`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LOG: list[str] = []


def say(*parts) -> None:
    line = " ".join(str(p) for p in parts)
    print(line, flush=True)
    LOG.append(line)


def timed(fn):
    import torch

    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    t = time.perf_counter()
    value = fn()
    sync()
    return value, time.perf_counter() - t


def bandwidth(card: str) -> float:
    """Peak HBM bandwidth in bytes/s by card name (H200 4.8 TB/s; H100 SXM 3.35 TB/s, the default)."""
    return 4.8e12 if "H200" in card else 3.35e12


def part_env(out: dict) -> None:
    import torch
    import transformers

    card = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA"
    out["env"] = {"torch": torch.__version__, "transformers": transformers.__version__, "card": card,
                  "bandwidth_Bps": bandwidth(card), "tf32_matmul": torch.backends.cuda.matmul.allow_tf32}
    say("env", json.dumps(out["env"]))


def compare(old, new) -> dict:
    same = sum(a == b for a, b in zip(old, new))
    text = sum(a.text == b.text for a, b in zip(old, new))
    return {"identical": same, "same_text": text, "items": len(old), "identical_share": round(same / max(1, len(old)), 4)}


def engine_runs(model, tok, prompts, dec, stops, batch, slots, out_key, out, reps=2):
    """Today's generate and the slot engine (exact, refill) on the same prompts; timings, equality, padding."""
    from medqa_bench.inference.decoder import batch_padding, generate_slots
    from medqa_bench.inference.generation import generate
    from medqa_bench.inference.nll import default_token_budget, token_batches

    res = out.setdefault(out_key, {})
    old, s = timed(lambda: generate(model, tok, prompts, dec, batch_size=batch, progress=False, stop_sequences=stops))
    new_tokens = sum(g.generated_tokens for g in old)
    lengths = [len(e) + dec.max_new_tokens for e in tok(list(prompts), add_special_tokens=True)["input_ids"]]
    batches = token_batches(lengths, batch, default_token_budget(model, for_generation=True))
    res["generate"] = {"seconds": round(s, 3), "new_tokens": new_tokens, "tok_per_s": round(new_tokens / s),
                       "batches": [len(b) for b in batches], "padding": batch_padding(batches, old)}
    say(out_key, "generate", json.dumps(res["generate"]))
    for name, kw in (("slots exact", {}), ("slots refill", {"refill": True, "slots": slots})):
        for rep in range(reps):
            try:
                (new, stats), s = timed(lambda: generate_slots(model, tok, prompts, dec, batch_size=batch,
                                                               stop_sequences=stops, **kw))
                n = sum(g.generated_tokens for g in new)
                row = {"rep": rep, "seconds": round(s, 3), "new_tokens": n, "tok_per_s": round(n / s),
                       "speedup": round(res["generate"]["seconds"] / s, 2), **compare(old, new), "stats": stats.to_dict()}
                res.setdefault(name, []).append(row)
                say(out_key, name, json.dumps(row))
                if rep == 0:
                    diff = [i for i, (a, b) in enumerate(zip(old, new)) if a != b][:3]
                    for i in diff:
                        say("  differs", i, repr(old[i])[:300], "|", repr(new[i])[:300])
            except Exception:
                say(out_key, name, "FAILED", traceback.format_exc()[-1500:])
                break
    return old


def part_smollm2(args, out: dict) -> None:
    from medqa_bench.data.dataset import load_dataset
    from medqa_bench.inference.generation import DecodingParams
    from medqa_bench.inference.models import load_base

    lm = load_base(args.model, device=args.device, dtype="float32")
    model, tok = lm.model, lm.tokenizer
    items = load_dataset().split("test")[:args.n]
    prompts = [e.prompt("chat", tok) for e in items]
    dec = DecodingParams(max_new_tokens=args.max_new_tokens)
    stops = [dec.stop_sequences("chat")] * len(prompts)
    say(f"smollm2: {args.model}, float32, {len(prompts)} chat prompts, max_new_tokens {args.max_new_tokens}")
    engine_runs(model, tok, prompts, dec, stops, "auto", args.slots, "smollm2_chat", out)
    refs = [e.prompt("reference", tok) for e in items]
    ref_stops = [dec.stop_sequences("reference")] * len(refs)
    engine_runs(model, tok, refs, dec, ref_stops, "auto", args.slots, "smollm2_reference", out, reps=1)
    del model, lm


def part_llama(args, out: dict) -> None:
    import torch

    from bench_train import build_random_llama_1b
    from medqa_bench.data.dataset import load_dataset
    from medqa_bench.inference.generation import DecodingParams, generate
    from medqa_bench.inference.models import load_base

    folder = build_random_llama_1b(Path(args.workdir) / "random-llama-3.2-1b-arch", args.tokenizer)
    lm = load_base(str(folder), device=args.device, dtype="bfloat16")
    model, tok = lm.model, lm.tokenizer
    cfg = model.config
    B, N = 64, args.llama_new_tokens
    prompts = [e.prompt("reference", tok) for e in load_dataset().examples[:args.llama_items]]
    dec = DecodingParams(max_new_tokens=N)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    kv_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * (cfg.head_dim or 64) * 2
    mean_prompt = sum(len(x) for x in tok(prompts)["input_ids"]) / len(prompts)
    ctx = mean_prompt + N / 2
    bw = bandwidth(out.get("env", {}).get("card", ""))
    bound = B / ((weight_bytes + B * ctx * kv_token) / bw)
    res = out.setdefault("llama1b", {"batch": B, "new_tokens_per_item": N, "items": len(prompts),
                                     "weight_GB": round(weight_bytes / 1e9, 3), "mean_context": round(ctx, 1),
                                     "bound_tok_per_s": round(bound)})
    say("llama1b", json.dumps(res))

    def row(name, fn):
        try:
            fn(prompts[:B])  # warm-up: compiles, captures
            gens, s = timed(lambda: fn(prompts))
            n = sum(g.generated_tokens for g in gens)
            res[name] = {"seconds": round(s, 3), "tok_per_s": round(n / s), "of_bound": round(n / s / bound, 3)}
            say("llama1b", name, json.dumps(res[name]))
            return gens
        except Exception:
            say("llama1b", name, "FAILED", traceback.format_exc()[-1500:])
            return None

    from medqa_bench.inference.decoder import generate_slots

    base = row("generate dynamic", lambda p: generate(model, tok, p, dec, batch_size=B, progress=False))
    row("generate static", lambda p: generate(model, tok, p, dec, batch_size=B, progress=False,
                                              cache_implementation="static"))
    exact = row("slots exact", lambda p: generate_slots(model, tok, p, dec, batch_size=B)[0])
    row("slots refill", lambda p: generate_slots(model, tok, p, dec, batch_size=B, refill=True, slots=B)[0])
    if base and exact:
        res["exact_vs_dynamic"] = compare(base, exact)
        say("llama1b exact vs dynamic", json.dumps(res["exact_vs_dynamic"]))


LAUNCHES = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx")


def step_profile(fn, steps: int) -> dict:
    """``fn`` run once to warm up, then once under torch.profiler: per decoding step, wall and kernel milliseconds,
    kernel and graph launches, and the share of the step the GPU was idle."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.cuda.is_available()
    fn()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        _, wall = timed(fn)
    from torch.autograd import DeviceType

    events = prof.key_averages()
    # the kernels' own time (events on the device; an operator's row on the host would count its kernels again)
    kernels = sum(e.self_device_time_total for e in events if e.device_type == DeviceType.CUDA) / 1e6
    launches = sum(e.count for e in events if e.key in LAUNCHES)
    graphs = sum(e.count for e in events if e.key == "cudaGraphLaunch")
    per = max(1, steps)
    return {"steps": steps, "wall_ms_per_step": round(1e3 * wall / per, 3),
            "kernel_ms_per_step": round(1e3 * kernels / per, 3), "launches_per_step": round(launches / per, 1),
            "graph_launches_per_step": round(graphs / per, 3),
            "gpu_idle_share": round(1 - kernels / wall, 3) if cuda and wall else None}


def profile_engines(model, tok, prompts, n_new: int, label: str, out: dict) -> None:
    """:func:`step_profile` of today's generate and of the slot engine, eager and with CUDA graphs."""
    from medqa_bench.inference.decoder import generate_slots
    from medqa_bench.inference.generation import DecodingParams, generate

    dec = DecodingParams(max_new_tokens=n_new)
    batch = len(prompts)
    res = out.setdefault("steps", {}).setdefault(label, {"batch": batch, "new_tokens": n_new})
    runs = (("generate", lambda: generate(model, tok, prompts, dec, batch_size=batch, progress=False)),
            ("slots eager", lambda: generate_slots(model, tok, prompts, dec, batch_size=batch, graphs=False)),
            ("slots graphs", lambda: generate_slots(model, tok, prompts, dec, batch_size=batch)))
    for name, fn in runs:
        try:
            res[name] = step_profile(fn, n_new - 1)  # the first token comes from the prefill
            say("steps", label, name, json.dumps(res[name]))
        except Exception:
            say("steps", label, name, "FAILED", traceback.format_exc()[-1500:])


def part_steps(args, out: dict) -> None:
    from medqa_bench.data.dataset import load_dataset
    from medqa_bench.inference.models import load_base

    items = load_dataset().examples[:args.steps_batch]
    lm = load_base(args.model, device=args.device, dtype="float32")
    prompts = [e.prompt("reference", lm.tokenizer) for e in items]
    profile_engines(lm.model, lm.tokenizer, prompts, args.steps_new_tokens, "smollm2 float32", out)
    del lm
    if args.steps_llama:
        from bench_train import build_random_llama_1b

        folder = build_random_llama_1b(Path(args.workdir) / "random-llama-3.2-1b-arch", args.tokenizer)
        lm = load_base(str(folder), device=args.device, dtype="bfloat16")
        prompts = [e.prompt("reference", lm.tokenizer) for e in items]
        profile_engines(lm.model, lm.tokenizer, prompts, args.steps_new_tokens, "llama1b bf16", out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for probe_decoder.json and probe_decoder.log")
    ap.add_argument("--model", default="smollm2-135m-instruct", help="model name or folder (float32 part)")
    ap.add_argument("--n", type=int, default=128, help="symptoms test items (chat and reference prompts; 266 in all)")
    ap.add_argument("--slots", type=int, default=64, help="slots of the refill runs (SmolLM2 part)")
    ap.add_argument("--device", default="cuda", help="cpu only for a smoke test of the script")
    ap.add_argument("--max-new-tokens", type=int, default=907, help="the headline's budget")
    ap.add_argument("--llama-items", type=int, default=256)
    ap.add_argument("--llama-new-tokens", type=int, default=128)
    ap.add_argument("--workdir", default="/tmp/medqa-bench-bench")
    ap.add_argument("--tokenizer", help="SmolLM2 tokenizer folder for the random Llama (default: the default model's)")
    ap.add_argument("--parts", default="env,smollm2,llama1b", help="any of env, smollm2, llama1b, steps")
    ap.add_argument("--steps-batch", type=int, default=64, help="prompts of the steps part")
    ap.add_argument("--steps-new-tokens", type=int, default=64, help="tokens each prompt decodes in the steps part")
    ap.add_argument("--steps-llama", action="store_true", help="the steps part also profiles the random Llama-3.2-1B")
    args = ap.parse_args()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    out: dict = {"args": vars(args)}
    parts = {"env": lambda: part_env(out), "smollm2": lambda: part_smollm2(args, out),
             "llama1b": lambda: part_llama(args, out), "steps": lambda: part_steps(args, out)}
    for name in args.parts.split(","):
        t = time.perf_counter()
        try:
            parts[name]()
        except Exception:
            say(name, "FAILED", traceback.format_exc()[-2000:])
        say(f"part {name}: {time.perf_counter() - t:.1f} s")
        (out_dir / "probe_decoder.json").write_text(json.dumps(out, indent=1))
        (out_dir / "probe_decoder.log").write_text("\n".join(LOG) + "\n")
        try:
            import torch

            torch.cuda.empty_cache()
        except Exception:
            pass


if __name__ == "__main__":
    main()
