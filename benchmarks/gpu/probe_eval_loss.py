"""Reproduce the shipped adapter's recorded training eval loss with the harness, as the trainer ran it: the NF4 base
in bf16 on the GPU, the reference template, EOS appended, prompt + completion cut to 512 tokens, the validation
split, Trainer's batch mean at eval batch size 4 (the number the adapter's metadata holds) and the corpus form.
Then step by step toward the harness's default definition, to show where the difference between 1.02 and 1.52 comes
from. Prints one JSON line per step.

    python3 benchmarks/gpu/probe_eval_loss.py [ADAPTER]
"""

from __future__ import annotations

import json
import sys
import time

from medqa_bench.data.dataset import load_dataset
from medqa_bench.inference.nll import completion_nll
from medqa_bench.inference.loss import batch_mean_loss, corpus_loss, training_eval_loss
from medqa_bench.inference.models import attach_adapters, load_base, system_active

ADAPTER = sys.argv[1] if len(sys.argv) > 1 else "data/adapters/smollm2-135m-symptoms-qlora"
meta = json.load(open(f"{ADAPTER}/medqa_bench.json"))
val = load_dataset().split("validation")
print(json.dumps({"recorded_final_eval_loss": meta["training"]["final_eval_loss"], "n_validation": len(val)}))
for quant, dtype in (("4bit", "bfloat16"), ("none", "bfloat16"), ("none", "float32")):
    t = time.perf_counter()
    loaded = attach_adapters(load_base(quantization=quant, device="cuda", dtype=dtype), {"ft": ADAPTER})
    out = training_eval_loss(loaded, None, val, system="ft", prompt_format="reference", max_length=512,
                             eval_batch_size=4)
    row = {"quantization": quant, "dtype": dtype, "trainer_definition": {k: out.get(k) for k in
           ("loss", "batch_mean_loss", "n_items", "n_tokens")}}
    with system_active(loaded, "ft") as model:
        prompts = [e.prompt("reference") for e in val]
        steps = {
            "eos+keep_start512": dict(append_eos=True, truncation="keep_start", max_length=512),
            "keep_start512": dict(truncation="keep_start", max_length=512),
            "harness_default": dict(),
        }
        for name, kw in steps.items():
            values = completion_nll(model, loaded.tokenizer, prompts, [e.completion("reference") for e in val],
                                    progress=False, **kw)
            row[name] = {"corpus": corpus_loss(values)[0], "batch_mean4": batch_mean_loss(values, 4)}
    row["seconds"] = round(time.perf_counter() - t, 1)
    print(json.dumps(row), flush=True)
    del loaded
