"""Two processes (gloo, CPU) through ``accelerate launch`` against one process: the same run folder, the same adapter.

``accelerate launch --cpu --num_processes 2`` starts a single process unless MPI is set up (accelerate's simple
launcher); ``--multi_gpu --num_processes 2`` starts two through torchrun, and on a machine without CUDA (or with
``--device cpu`` / ``training.device=cpu``) medqa-bench puts both on the CPU with gloo. That is what runs here.

    run    4 items, baseline + the shipped adapter, --batch-size 1, 8 new tokens: samples and aggregates equal;
           the two writers' cache holds the single process's keys and values (a later run is all hits)
    train  2 processes x batch 2 vs 1 process x batch 4, 2 steps, LoRA on the fp32 base (4-bit NF4 on a CPU
           costs ~40 s a step here; the DDP path is the same): per-step losses and LoRA weights close; the recorded
           validation loss is the harness's corpus loss of the whole split (3 items: accelerate repeats one to even
           out the last batch, and it is not counted twice)
    cache  two processes opening one fresh SQLite cache at once and committing item by item
"""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from cli_runner import medqa as medqa_here

from medqa_bench.inference.distributed import nll_batches, shard
from medqa_bench.inference.nll import token_batches

pytestmark = pytest.mark.slow

LAUNCH = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
          "--mixed_precision", "no", "--dynamo_backend", "no"]
RUN = ["-q", "run", "--limit", "4", "--max-new-tokens", "8", "--batch-size", "1", "--metrics", "loss,perplexity,rougeL",
       "--no-report", "--device", "cpu"]
TRAIN = ["-q", "train", "smollm2-135m-symptoms", *[a for kv in (
    "model.quantization=none", "data.limit.train=4", "data.limit.validation=3", "data.max_length=64",
    "training.max_steps=2", "training.logging_steps=1", "training.learning_rate=3e-3", "training.device=cpu",
    "training.gradient_checkpointing=false", "lora.dropout=0.0", "lora.r=8") for a in ("--set", kv)]]


def medqa(*args: str, processes: int = 1) -> subprocess.CompletedProcess:
    """Through accelerate's launcher with ``processes`` > 1; the single process in this one (cli_runner)."""
    if processes == 1:
        proc = medqa_here(*args, env={"TOKENIZERS_PARALLELISM": "false"}, drop_env=("WORLD_SIZE",))
    else:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
        env.pop("WORLD_SIZE", None)
        launcher = [sys.executable, *LAUNCH, "--main_process_port", str(_free_port())]
        proc = subprocess.run([*launcher, "-m", "medqa_bench.cli", *args], capture_output=True, text=True, env=env,
                              timeout=600)
    if proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}")
    return proc


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _read(run: Path):
    results = json.loads((run / "results.json").read_text())
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    return results, samples


def _close(a: float, b: float, rel: float = 1e-5) -> bool:
    return abs(a - b) <= rel * max(1.0, abs(a), abs(b))


# --------------------------------------------------------------------------------------------- batch plans


@pytest.mark.parametrize("batch_size", [1, 3, "auto"])
def test_a_ranks_whole_batches_rebuild_the_same_batches(batch_size):
    # What makes sharded results identical: token_batches over one rank's items gives back exactly the global
    # batches that rank was dealt (same batch-mates, same padding), for fixed and token-budget batch sizes.
    import random

    lengths = [random.Random(7).choice([5, 9, 9, 17, 30, 31, 64]) + i % 3 for i in range(41)]
    plan = token_batches(lengths, batch_size, 120)
    for world in (2, 3):
        dealt = []
        for rank in range(world):
            mine = shard(plan, rank, world)
            rebuilt = [[mine[j] for j in b] for b in token_batches([lengths[i] for i in mine], batch_size, 120)]
            assert rebuilt == plan[rank::world]
            dealt += mine
        assert sorted(dealt) == list(range(len(lengths)))


def test_nll_plan_keeps_long_sequences_alone(default_model):
    tok = default_model.tokenizer
    prompts, completions = ["Q: a?\nA:", "Q: b?\nA:", "Q: c?\nA:"], [" yes", " no " * 40, " maybe"]
    plan = nll_batches(default_model.model, tok, prompts, completions, batch_size=2, max_length=32)
    assert plan[-1] == [1] and sorted(i for b in plan for i in b) == [0, 1, 2]


def test_nll_plan_is_completion_nlls_own_batches(default_model, monkeypatch):
    """Under batch_size="auto" on CPU the plan dealt to the ranks is the batches completion_nll itself forms
    (token budget and padding limit), so a rank rebuilds exactly the single-process batches."""
    import medqa_bench.inference.nll as inference
    from medqa_bench.data.dataset import load_dataset

    model, tok = default_model.model, default_model.tokenizer
    items = load_dataset().split("test")[:12]
    prompts = [e.prompt("reference", tok) for e in items]
    completions = [e.completion("reference")[: 40 + 60 * (i % 4)] for i, e in enumerate(items)]  # varied lengths
    seen = []
    real = inference._launch_scores

    def watch(model, seqs, *args, **kwargs):
        seen.append(sorted(len(s) for s in seqs))
        return real(model, seqs, *args, **kwargs)

    monkeypatch.setattr(inference, "_launch_scores", watch)
    inference.completion_nll(model, tok, prompts, completions, batch_size="auto", progress=False)
    pairs = inference.encode_pairs(tok, prompts, completions)
    plan = nll_batches(model, tok, prompts, completions, batch_size="auto",
                       max_length=inference.model_context_length(model, tok))
    assert len(plan) > 1
    assert [sorted(len(pairs[i][0]) + len(pairs[i][1]) for i in b) for b in plan] == seen


# --------------------------------------------------------------------------------------------- run


@pytest.fixture(scope="module")
def runs(tmp_path_factory, short_symptoms):
    root = tmp_path_factory.mktemp("distributed-run")
    data = ["--data", str(short_symptoms)]
    medqa(*RUN, *data, "--out", str(root / "two"), "--cache", str(root / "two.sqlite"), processes=2)
    medqa(*RUN, *data, "--out", str(root / "one"), "--cache", str(root / "one.sqlite"))
    return root


def test_two_processes_write_the_single_process_results(runs):
    r1, s1 = _read(runs / "one")
    r2, s2 = _read(runs / "two")
    assert r2["environment"]["distributed"] == {"world_size": 2, "backend": "gloo", "device_type": "cpu"}
    assert "distributed" not in r1["environment"]
    assert [s["id"] for s in s2] == [s["id"] for s in s1] and len(s1) == 4
    for a, b in zip(s1, s2):
        # baseline (chat template) + the shipped adapter (reference template) + three reference rows
        assert a["systems"].keys() == b["systems"].keys() and len(a["systems"]) == 5
        for name, x in a["systems"].items():
            y = b["systems"][name]
            assert (y["prediction"], y["generated_tokens"], y["truncated"]) == (x["prediction"], x["generated_tokens"], x["truncated"])
            assert y.get("nll_tokens") == x.get("nll_tokens"), (a["id"], name)
            if "nll_sum" in x:
                assert _close(x["nll_sum"], y["nll_sum"]), (a["id"], name)
            for metric, v in x["scores"].items():
                assert _close(v, y["scores"][metric]), (a["id"], name, metric)
    for system, per in r1["results"].items():
        for metric, v in per.items():
            w = r2["results"][system][metric]
            assert w["n"] == v["n"] and all(_close(v[k], w[k]) for k in ("value", "ci_low", "ci_high")), (system, metric)
    # NLL and generation of 2 systems on 4 items, and the adapter check's NLL of the base in the adapter's format
    assert r2["cache"]["misses"] == r1["cache"]["misses"] == 2 * 2 * 4 + 4 and r2["cache"]["hits"] == 0
    assert r2["data"]["item_ids_fingerprint"] == r1["data"]["item_ids_fingerprint"]


def test_the_two_writers_cache_is_the_single_process_cache(runs):
    """What a later run looks up is what the single process looked up (its cache began empty and took every miss):
    the two writers stored the same keys with the same values, so a later run is served entirely (all hits, the same
    samples: the cache is what produced them in the test above)."""
    import sqlite3

    def entries(path):
        with sqlite3.connect(str(path)) as conn:
            return {k: (kind, json.loads(v)) for k, kind, v in conn.execute("SELECT key, kind, value FROM entries")}

    one, two = entries(runs / "one.sqlite"), entries(runs / "two.sqlite")
    assert len(one) == 2 * 2 * 4 + 4 and one.keys() == two.keys()
    for key, (kind, value) in one.items():
        other_kind, other = two[key]
        assert other_kind == kind and other.keys() == value.keys(), key
        for field, x in value.items():
            y = other[field]
            assert (_close(x, y) if isinstance(x, float) else x == y), (key, field, x, y)


# --------------------------------------------------------------------------------------------- cache


def _writer(path: str, tag: str, n: int, start) -> None:
    from medqa_bench.storage.cache import InferenceCache

    start.wait()
    cache = InferenceCache(path)  # both open (and set WAL on) a file that did not exist
    for i in range(n):
        cache.put_many([(f"{tag}-{i}", "nll", {"nll_sum": float(i), "nll_tokens": i})])
        cache.get_many([f"{tag}-{i}"])
    cache.close()


def test_two_writers_share_one_cache(tmp_path):
    from medqa_bench.storage.cache import InferenceCache

    path = str(tmp_path / "cache.sqlite")
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(2)
    procs = [ctx.Process(target=_writer, args=(path, tag, 300, start)) for tag in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    cache = InferenceCache(path)
    assert cache.count("nll") == 600
    assert cache.get_many(["a-299", "b-7"]) == {"a-299": {"nll_sum": 299.0, "nll_tokens": 299}, "b-7": {"nll_sum": 7.0, "nll_tokens": 7}}
    cache.close()


def _opener(path: str, start) -> None:
    from medqa_bench.storage.cache import InferenceCache

    start.wait()
    cache = InferenceCache(path)
    cache.put_many([(str(os.getpid()), "nll", {"nll_sum": 1.0, "nll_tokens": 1})])
    cache.close()


def test_processes_opening_a_new_cache_at_once_all_succeed(tmp_path):
    """Switching a new file to WAL races between processes; SQLite says "locked" at once: the cache retries."""
    ctx = multiprocessing.get_context("fork")
    for trial in range(25):  # without the retry, about 4% of the processes failed
        path = str(tmp_path / f"cache-{trial}.sqlite")
        start = ctx.Barrier(4)
        procs = [ctx.Process(target=_opener, args=(path, start)) for _ in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert [p.exitcode for p in procs] == [0] * 4, f"trial {trial}"


# --------------------------------------------------------------------------------------------- train


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed-train")
    two = medqa(*TRAIN, "--set", "training.batch_size=2", "--out", str(root / "two"), processes=2)
    (root / "two-stderr.txt").write_text(two.stderr)
    medqa(*TRAIN, "--set", "training.batch_size=4", "--out", str(root / "one"))
    return root


def _steps(folder: Path) -> list[dict]:
    rows = [json.loads(line) for line in (folder / "training_log.jsonl").read_text().splitlines()]
    return [r for r in rows if r["type"] == "step"]


def test_ddp_trains_the_single_process_adapter(adapters):
    from safetensors.torch import load_file

    one, two = adapters / "one", adapters / "two"
    s1, s2 = _steps(one), _steps(two)
    assert [r["step"] for r in s2] == [r["step"] for r in s1] == [1, 2]  # one writer: no duplicated lines
    for a, b in zip(s1, s2):
        assert abs(a["loss"] - b["loss"]) <= 1e-4 * max(1.0, abs(a["loss"])), (a, b)
        assert a["tokens"] == b["tokens"]  # tokens are counted over both processes
    w1, w2 = load_file(str(one / "adapter_model.safetensors")), load_file(str(two / "adapter_model.safetensors"))
    assert w1.keys() == w2.keys() and w1
    for name in w1:  # element-wise, Adam magnifies the last digits of near-zero gradients; the tensors agree
        assert (w1[name] - w2[name]).norm() <= 1e-3 * w1[name].norm(), name
    meta = json.loads((two / "medqa_bench.json").read_text())
    assert meta["distributed"] == {"world_size": 2, "backend": "gloo", "device_type": "cpu", "global_batch_size": 4}
    assert "distributed" not in json.loads((one / "medqa_bench.json").read_text())
    assert not (adapters / "two.checkpoints").exists()
    assert "find_unused_parameters" not in (adapters / "two-stderr.txt").read_text()  # no per-step graph search
    assert not [p.name for p in adapters.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_two_processes_record_the_harness_loss_of_the_whole_split(adapters):
    """DDP (2 processes, gloo, CPU): each process scores its shard, the sums and counts are gathered, and the item
    accelerate repeats to even out the last batch (3 items, 2 processes x batch 2) is not counted twice."""
    from medqa_bench.data.dataset import load_dataset
    from medqa_bench.inference.loss import training_eval_loss
    from medqa_bench.inference.models import attach_adapters, load_base
    from trainers.qlora import limit_examples, load_recipe

    two = adapters / "two"
    meta = json.loads((two / "medqa_bench.json").read_text())
    overrides = TRAIN[4::2]  # the recipe overrides both trainings share
    recipe = load_recipe("smollm2-135m-symptoms", overrides)
    items = limit_examples(load_dataset(recipe.data.spec()).split("validation"), 3, recipe.seed)
    loaded = attach_adapters(load_base("smollm2-135m-instruct", device="cpu", dtype="float32"), {"ft": two})
    harness = training_eval_loss(loaded, None, items, system="ft", max_length=64)
    t = meta["training"]
    assert (t["final_eval_items"], t["final_eval_tokens"]) == (3, harness["n_tokens"])
    assert t["final_eval_loss"] == pytest.approx(harness["loss"], rel=1e-5)
