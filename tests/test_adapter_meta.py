"""An adapter's medqa_bench.json as one typed record (medqa_bench.data.adapter_meta): the trainer's one writer and the one
reader, on the shipped adapters' files (versions 1 and 2), hand-made and damaged files; no model is loaded."""

from __future__ import annotations

import doctest
import json
import shutil

import pytest

from cli_runner import medqa
from medqa_bench.data.adapter_meta import (META_FILE, AdapterMeta, TrainingRun, as_adapter_meta, read_adapter_meta,
    write_adapter_meta)
from medqa_bench.errors import AdapterError
from medqa_bench.storage.paths import shipped_adapters_dir

V1, V2 = "smollm2-135m-symptoms-qlora", "smollm2-135m-symptoms-all-linear-qlora"


def _shipped(name: str):
    return shipped_adapters_dir() / name


def test_shipped_files_read_and_write_back_byte_for_byte(tmp_path):
    from medqa_bench.inference.models import read_adapter

    for name, version in ((V1, 1), (V2, 2)):
        written = (_shipped(name) / META_FILE).read_bytes()
        meta = read_adapter_meta(_shipped(name), "ft")
        assert meta.version == version and meta.prompt_format == "reference" and meta.quantization == "4bit"
        out = tmp_path / name
        out.mkdir()
        assert write_adapter_meta(out, meta).read_bytes() == written
        # results.json's systems[..].adapter.training: the object as the file holds it, key order included
        info = read_adapter("ft", _shipped(name))
        assert info.meta == meta
        assert json.dumps(info.to_dict()["training"]) == json.dumps(json.loads(written))


def test_trainer_record_of_the_shipped_inputs_is_the_shipped_file(tmp_path):
    """trainers.qlora.adapter_record, given the recipe, base and data the shipped version-2 adapter was trained with
    (and what that run measured), writes the shipped file's bytes; a multi-process run adds `distributed` last."""
    from medqa_bench.data.dataset import load_dataset
    from medqa_bench.inference.distributed import ProcessGroup
    from medqa_bench.inference.models import resolve_model
    from trainers.qlora import adapter_record, load_recipe

    shipped = _shipped(V2) / META_FILE
    old = json.loads(shipped.read_text())
    # the sweep's settings as the fast recipe had them then (the recipe file has changed since)
    recipe = load_recipe("smollm2-135m-symptoms-fast", [
        "lora.target_modules=[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]", "data.max_length=1024",
        "training.epochs=3", "training.batch_size=8", "training.learning_rate=2e-4", "training.compile=false"])
    run = TrainingRun.from_dict(old["training"], doc=META_FILE, where="training.")
    base, dataset = resolve_model("smollm2-135m-instruct"), load_dataset(recipe.data.spec())
    record = adapter_record(recipe, base, dataset, (2136, 267), "cuda", "bf16", run, versions=old["versions"],
                            hardware=old["hardware"], created=old["created"])
    expected = shipped.read_text().replace(json.dumps(old["recipe_source"]), json.dumps(recipe.source))
    assert write_adapter_meta(tmp_path, record).read_text() == expected

    ranks = ProcessGroup(rank=0, world_size=2, local_rank=0, device="cuda:0", backend="nccl")
    several = adapter_record(recipe, base, dataset, (2136, 267), "cuda:0", "bf16", run, ranks, versions={},
                             hardware={}, created="now")
    written = several.to_dict()
    assert list(written)[-2:] == ["created", "distributed"]
    assert written["distributed"] == {"world_size": 2, "backend": "nccl", "device_type": "cuda",
                                      "global_batch_size": 16}
    assert read_adapter_meta(write_adapter_meta(tmp_path, several)).distributed == several.distributed


def test_version_1_and_hand_made_files_read_as_written(tmp_path):
    from medqa_bench.inference.loss import definition_from_metadata, training_eval_loss_info
    from medqa_bench.inference.systems import recorded_prompt_format, recorded_quantization

    old = read_adapter_meta(_shipped(V1))
    assert old.eval_loss_definition is None and old.training.final_eval_items is None
    assert "eval_loss_definition" not in old.to_dict()["training"]
    # version 1's loss is Trainer's batch mean, defined from its recipe; the record and its file's object agree
    derived = definition_from_metadata(old)
    assert derived["form"] == "batch_mean" and derived["batch_size"] == 4
    assert derived == definition_from_metadata(old.to_dict())
    assert training_eval_loss_info(old)["value"] == old.final_eval_loss == 1.0196757316589355
    new = read_adapter_meta(_shipped(V2))
    assert definition_from_metadata(new) == new.to_dict()["training"]["eval_loss_definition"]

    # a hand-made file with one section, keys in its own order, and one with the recipe's settings only
    folder = tmp_path / "hand"
    folder.mkdir()
    (folder / META_FILE).write_text('{"resolved": {"quantization": "none", "prompt_format": "chat"}}')
    meta = read_adapter_meta(folder)
    assert (meta.prompt_format, meta.quantization, meta.version, meta.base_model) == ("chat", "none", None, None)
    assert json.dumps(meta.to_dict()) == '{"resolved": {"quantization": "none", "prompt_format": "chat"}}'
    assert recorded_prompt_format(meta) == "chat" and recorded_quantization(meta.to_dict()) == "none"
    assert recorded_prompt_format({"recipe": {"data": {"prompt_format": "reference"}}}) == "reference"
    assert recorded_quantization({"resolved": {"quantization": "8bit"}}) is None  # not one this harness loads
    assert read_adapter_meta(tmp_path / "no-such-folder") is None and as_adapter_meta(None) is None
    assert training_eval_loss_info(meta) is None and meta.data_spec() is None


@pytest.mark.parametrize("content, message", [
    ({"training": {"final_eval_loss": "abc"}},
     "adapter 'x': medqa_bench.json key 'training.final_eval_loss' must be a number or null, not 'abc'"),
    ({"training": {"eval_loss_definition": {"truncation": {"max_length": "long"}}}},
     "key 'training.eval_loss_definition.truncation.max_length' must be an integer or null, not 'long'"),
    ({"base_model": "smollm2"}, "key 'base_model' must be a section (a mapping) or null, not 'smollm2'"),
    ({"recipe": {"data": {"max_length": 1.5}}}, "key 'recipe.data.max_length' must be an integer or null, not 1.5"),
    ({"versions": {"torch": 2}}, "key 'versions.torch' must be a string or null, not 2"),
    ({"training": {"final_eval_los": 1.0}},
     "medqa_bench.json has an unknown key 'training.final_eval_los' (did you mean 'training.final_eval_loss'?)"),
    ({"version": 3}, "medqa_bench.json is version 3, newer than this medqa-bench reads (up to 2); upgrade medqa-bench"),
    ({"data": {"spec": {"qtype": 5}}}, "key 'data.fingerprint' must be a string, not None"),
    ({"data": {"fingerprint": "a", "manifest_fingerprint": "b", "spec": {"split": {"seed": "x"}}}},
     "key 'data.spec.split.seed' must be an integer, not 'x'"),
])
def test_a_bad_field_is_refused_with_its_dotted_key(tmp_path, content, message):
    from medqa_bench.inference.models import read_adapter

    folder = tmp_path / "x"
    folder.mkdir()
    (folder / META_FILE).write_text(json.dumps(content))
    with pytest.raises(AdapterError) as err:
        meta = read_adapter_meta(folder)
        meta.data_spec()
    assert message in str(err.value) and str(err.value).startswith("adapter 'x': ")
    if "data" not in content:  # the model loader reads through the same reader
        shutil.copy(_shipped(V1) / "adapter_config.json", folder)
        shutil.copy(_shipped(V1) / "adapter_model.safetensors", folder)
        with pytest.raises(AdapterError, match="^adapter 'ft': "):
            read_adapter("ft", folder)


def test_the_module_examples_run():
    from medqa_bench.data import adapter_meta

    assert doctest.testmod(adapter_meta).failed == 0


def test_the_writer_refuses_a_record_that_would_not_read(tmp_path):
    with pytest.raises(AdapterError, match="key 'training.final_eval_loss' must be a number or null, not 'abc'"):
        write_adapter_meta(tmp_path, AdapterMeta(training=TrainingRun(final_eval_loss="abc")))
    assert not (tmp_path / META_FILE).exists()


def test_run_refuses_a_damaged_adapter_record_in_one_line(tmp_path):
    adapter = tmp_path / "ft"
    shutil.copytree(_shipped(V1), adapter)
    meta = json.loads((adapter / META_FILE).read_text())
    meta["data"]["n_train"] = "many"
    (adapter / META_FILE).write_text(json.dumps(meta))
    proc = medqa("run", "--adapter", f"ft={adapter}", "--limit", "1", "--out", str(tmp_path / "run"), "--no-report")
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "adapter 'ft': medqa_bench.json key 'data.n_train' must be an integer or null, not 'many'" in lines[0]
    assert not (tmp_path / "run").exists()
