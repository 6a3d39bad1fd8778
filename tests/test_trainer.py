"""QLoRA training on CPU with the real default model (SmolLM2-135M-Instruct, 4-bit NF4) and real TRL/PEFT.

CPU training is slow here (~30 GFLOP/s), so the training tests share three short runs on a small CSV of short
answers (so that every sequence ends inside max_length and its EOS can be checked):

    trained      4 steps (2 epochs of 2 items, batch 1); snapshots the LoRA weights at step 2
    interrupted  the same recipe, stopped by an exception before step 3 (checkpoint-2 is left behind)
    resumed      resume=True from checkpoint-2 to step 4
"""

from __future__ import annotations

import csv
import itertools
import json
import math

import pytest

from medqa_bench.data.dataset import resolve_qtype
from medqa_bench.errors import RunError, SpecError
from trainers.qlora import LOG_FILE, META_FILE, checkpoint_dir, last_checkpoint, load_recipe, train

pytestmark = pytest.mark.slow

QA = [
    ("Asthma", "Wheezing, shortness of breath, chest tightness and coughing, often worse at night."),
    ("Anemia", "Tiredness, weakness, pale skin, a fast heartbeat and shortness of breath."),
    ("Migraine", "A throbbing headache on one side, nausea, and sensitivity to light and sound."),
    ("Influenza", "Sudden fever, muscle aches, chills, a dry cough and a sore throat."),
    ("Diabetes", "Thirst, frequent urination, hunger, tiredness and blurred vision."),
    ("Gout", "Sudden, severe pain, swelling and redness in a joint, often the big toe."),
    ("Measles", "High fever, cough, runny nose, red eyes and a red rash that spreads."),
    ("Shingles", "Pain, burning or tingling, then a band of blisters on one side of the body."),
    ("Hypothyroidism", "Tiredness, weight gain, feeling cold, dry skin and constipation."),
    ("Appendicitis", "Pain that starts near the navel and moves to the lower right abdomen, with fever."),
    ("Psoriasis", "Red, scaly patches of skin, often itchy, on elbows, knees and scalp."),
    ("Glaucoma", "Often none at first; later, loss of side vision and, in acute cases, eye pain."),
    ("Tetanus", "Jaw cramping, painful muscle stiffness, trouble swallowing and seizures."),
    ("Rickets", "Bone pain, delayed growth, bowed legs and muscle weakness in children."),
    ("Scurvy", "Tiredness, swollen bleeding gums, bruising and slow wound healing."),
    ("Mumps", "Swollen, painful salivary glands on one or both sides of the face, with fever."),
    ("Lupus", "Joint pain, tiredness, fever and a butterfly-shaped rash on the face."),
    ("Sciatica", "Pain from the lower back down the back of one leg, with numbness or tingling."),
    ("Vertigo", "A spinning feeling, loss of balance, nausea and sometimes vomiting."),
    ("Pneumonia", "Cough with phlegm, fever, chills and difficulty breathing."),
]

OVERRIDES = [
    "data.limit.train=2",
    "data.limit.validation=1",
    "data.max_length=96",
    "training.batch_size=1",
    "training.max_steps=4",
    "training.logging_steps=1",
    "training.learning_rate=3e-3",
    "training.gradient_checkpointing=false",  # halves the backward time; checkpointing is tested on GPU
    "training.device=cpu",
    "lora.r=8",
    "lora.dropout=0.0",
]


class _Stop(Exception):
    """Raised by a callback to simulate an interruption."""


def _callbacks_module():
    from transformers import TrainerCallback

    class CaptureBatch(TrainerCallback):
        """Collate the whole (prepared) training set once, without touching the data order or the RNG."""

        batch = None

        def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
            dl = train_dataloader
            items = [dl.dataset[i] for i in range(len(dl.dataset))]
            CaptureBatch.batch = dl.collate_fn(items)

    class SnapshotLora(TrainerCallback):
        snapshot = None

        def __init__(self, step):
            self.step = step

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step == self.step:
                SnapshotLora.snapshot = {
                    n: p.detach().float().clone() for n, p in model.named_parameters() if "lora_" in n
                }

    class StopAt(TrainerCallback):
        def __init__(self, step):
            self.step = step

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == self.step:
                raise _Stop(f"interrupted before step {self.step + 1}")

    return CaptureBatch, SnapshotLora, StopAt


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    data = root / "short_symptoms.csv"
    with open(data, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["qid", "Question", "Answer", "qtype", "focus"])
        for i, (focus, answer) in enumerate(QA):
            w.writerow([f"q{i}", f"What are the symptoms of {focus} ?", answer, "symptoms", focus])
    return root, data


@pytest.fixture(scope="module")
def recipe(workdir):
    _, data = workdir
    return load_recipe("smollm2-135m-symptoms", [f"data.path={data}", *OVERRIDES])


@pytest.fixture(scope="module")
def trained(workdir, recipe):
    root, _ = workdir
    CaptureBatch, SnapshotLora, _ = _callbacks_module()
    out = train(recipe, out=root / "adapters" / "main", progress=False, callbacks=[CaptureBatch(), SnapshotLora(2)])
    return out, CaptureBatch.batch, SnapshotLora.snapshot


@pytest.fixture(scope="module")
def interrupted(workdir, recipe, trained):
    root, _ = workdir
    _, _, StopAt = _callbacks_module()
    out = root / "adapters" / "resumable"
    with pytest.raises(_Stop):
        train(recipe, out=out, progress=False, callbacks=[StopAt(2)])
    ckpt = last_checkpoint(checkpoint_dir(out))
    assert ckpt is not None and ckpt.name == "checkpoint-2"
    return out, ckpt


@pytest.fixture(scope="module")
def resumed(recipe, interrupted):
    out, _ = interrupted
    return train(recipe, out=out, resume=True, progress=False)


def _log(folder):
    return [json.loads(line) for line in (folder / LOG_FILE).read_text().splitlines()]


def _tensors(path):
    from safetensors.torch import load_file

    return load_file(str(path))


# --------------------------------------------------------------------------------------------- recipes


def test_bundled_recipes_load_with_the_reference_values():
    llama = load_recipe("llama-3.2-1b-symptoms")
    small = load_recipe("smollm2-135m-symptoms")
    for r in (llama, small):
        assert (r.lora.r, r.lora.target_modules, r.training.learning_rate) == (16, ("q_proj", "v_proj"), 1e-4)
        assert (r.training.batch_size, r.training.epochs, r.data.max_length) == (4, 5, 512)
        assert r.model.quantization == "4bit" and r.data.qtype == "symptoms"
        # the evaluation's default split; its qtype is left to the file (symptoms where the file has the column)
        recipe_spec, default = r.data.spec().to_dict(), type(r.data.spec())().to_dict()
        assert recipe_spec.pop("qtype") == resolve_qtype(default.pop("qtype"), ["qtype"]) and recipe_spec == default
    assert llama.model.reference == "meta-llama/Llama-3.2-1B-Instruct"
    assert small.model.reference == "smollm2-135m-instruct"
    assert llama.to_dict() | {"name": None, "model": None} == small.to_dict() | {"name": None, "model": None}


def test_fast_recipes_are_the_reference_plus_speed_switches():
    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
        return out

    for model in ("llama-3.2-1b", "smollm2-135m"):
        ref, fast = flat(load_recipe(f"{model}-symptoms").to_dict()), flat(load_recipe(f"{model}-symptoms-fast").to_dict())
        changed = {k: fast[k] for k in ref if ref[k] != fast[k]}
        assert changed == {"name": f"{model}-symptoms-fast", "training.padding_free": True,
                           "training.cache_dequantized": True, "training.optimizer": "adamw_torch_fused",
                           "training.gradient_checkpointing": False, "training.compile": True,
                           "training.logits_once": True}


def test_default_adapter_is_the_sweeps_validation_choice_with_its_recipe_committed():
    """The shipped default adapter is the configuration the sweep chose on the validation split, its weights are the
    ones that were validated, and its committed recipe resolves to the recipe its metadata recorded."""
    import hashlib
    from pathlib import Path

    from medqa_bench.planning.plan import DEFAULT_ADAPTER, run_adapters, shipped_adapter
    from medqa_bench.spec import RunSpec

    root = Path(__file__).resolve().parents[1]
    sweep = root / "benchmarks" / "results" / "sweep"
    selection = json.loads((sweep / "selection.json").read_text())
    assert selection["split"] == "validation" and selection["chosen"] == "s07-ref-all"
    assert selection["rows"][0]["name"] == selection["chosen"]  # first by the rule
    folder = shipped_adapter()
    assert folder is not None and folder.name == DEFAULT_ADAPTER == "smollm2-135m-symptoms-all-linear-qlora"
    assert run_adapters(RunSpec()) == {DEFAULT_ADAPTER: str(folder)}
    validated = dict(line.split()[::-1] for line in (sweep / "weights.sha256").read_text().splitlines())
    weights = hashlib.sha256((folder / "adapter_model.safetensors").read_bytes()).hexdigest()
    assert weights == validated[f"adapters/{selection['chosen']}/adapter_model.safetensors"]
    meta = json.loads((folder / "medqa_bench.json").read_text())
    recipe = load_recipe("smollm2-135m-symptoms-all-linear").to_dict()
    assert {**recipe, "name": None} == {**meta["recipe"], "name": None}
    # the sweep's own record of the configuration: its overrides on the fast recipe
    assert meta["recipe"] == json.loads((sweep / "adapters" / "s07-ref-all" / "medqa_bench.json").read_text())["recipe"]
    assert recipe["lora"]["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                "down_proj"]


def test_overrides_are_dotted_and_yaml_parsed():
    r = load_recipe("smollm2-135m-symptoms", ["lora.r=32", "lora.target_modules=[q_proj, k_proj]", "training.learning_rate=2e-4"])
    assert r.lora.r == 32 and r.lora.target_modules == ("q_proj", "k_proj") and r.training.learning_rate == 2e-4


def test_unknown_recipe_key_says_did_you_mean():
    with pytest.raises(SpecError, match=r"unknown recipe key 'training.lerning_rate'; did you mean 'training.learning_rate'"):
        load_recipe("smollm2-135m-symptoms", ["training.lerning_rate=1e-4"])
    with pytest.raises(SpecError, match="did you mean 'smollm2-135m-symptoms'"):
        load_recipe("smollm2-135m-symtoms")


def test_bad_values_name_the_key():
    with pytest.raises(SpecError, match="training.precision.*auto, bf16, fp16, fp32"):
        load_recipe("smollm2-135m-symptoms", ["training.precision=fp8"])
    with pytest.raises(SpecError, match="'lora.r' must be an integer"):
        load_recipe("smollm2-135m-symptoms", ["lora.r=many"])
    with pytest.raises(SpecError, match="'training.batch_size' must be greater than 0"):
        load_recipe("smollm2-135m-symptoms", ["training.batch_size=0"])


def test_unknown_target_module_lists_the_models_modules(tmp_path):
    r = load_recipe("smollm2-135m-symptoms", ["lora.target_modules=[q_proj, query_key_value]"])
    with pytest.raises(SpecError, match=r"'query_key_value' is not a module.*q_proj.*v_proj"):
        train(r, out=tmp_path / "never", progress=False)
    assert not (tmp_path / "never").exists()


# --------------------------------------------------------------------------------------------- training


def test_eos_ends_every_completion_and_is_not_masked(trained):
    from medqa_bench.inference.models import load_tokenizer, resolve_model

    _, batch, _ = trained
    tok = load_tokenizer(resolve_model("smollm2-135m-instruct"))
    assert tok.pad_token_id == tok.eos_token_id  # the case where padding could swallow the EOS label
    labels, mask, ids = batch["labels"], batch["attention_mask"], batch["input_ids"]
    for row in range(labels.shape[0]):
        n = int(mask[row].sum())
        assert n < 96, "the test data must fit max_length"
        assert int(ids[row, n - 1]) == tok.eos_token_id
        assert int(labels[row, n - 1]) == tok.eos_token_id  # the final EOS is learnt
        assert (labels[row, n:] == -100).all()  # padding (also EOS) is not
        trained_tokens = (labels[row, :n] != -100).nonzero().flatten()
        prompt_len = int(trained_tokens[0])
        assert prompt_len > 5 and (labels[row, :prompt_len] == -100).all()  # the prompt is not learnt
        assert tok.decode(ids[row, :prompt_len]).endswith("### Answer:")


def test_loss_goes_down_and_log_has_steps_and_epochs(trained):
    out, _, _ = trained
    rows = _log(out)
    steps = [r for r in rows if r["type"] == "step"]
    epochs = [r for r in rows if r["type"] == "epoch"]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert set(steps[0]) == {"type", "step", "epoch", "loss", "learning_rate", "tokens"}
    assert all(b["tokens"] > a["tokens"] > 0 for a, b in zip(steps, steps[1:]))
    assert [e["epoch"] for e in epochs] == [1, 2]
    for e in epochs:
        assert {"train_loss", "eval_loss"} <= set(e) and math.isfinite(e["eval_loss"])
        mine = [r["loss"] for r in steps if math.ceil(r["epoch"] - 1e-6) == e["epoch"]]
        assert e["train_loss"] == pytest.approx(sum(mine) / len(mine))
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"] * 0.9
    assert epochs[-1]["eval_loss"] < epochs[0]["eval_loss"]


def test_adapter_is_a_peft_folder_with_trained_lora_b(trained):
    from peft import PeftConfig

    out, _, _ = trained
    assert {"adapter_config.json", "adapter_model.safetensors", LOG_FILE, META_FILE} <= {p.name for p in out.iterdir()}
    cfg = PeftConfig.from_pretrained(str(out))
    assert cfg.r == 8 and set(cfg.target_modules) == {"q_proj", "v_proj"}
    tensors = _tensors(out / "adapter_model.safetensors")
    b = [t for n, t in tensors.items() if "lora_B" in n]
    assert len(b) == 2 * 30  # q_proj and v_proj in each of SmolLM2-135M's 30 layers
    assert all(t.abs().sum() > 0 for t in b)
    assert not checkpoint_dir(out).exists()  # a finished run leaves no checkpoints


def test_metadata_is_complete(trained):
    from medqa_bench.data.dataset import load_dataset
    from medqa_bench.inference.models import resolve_model

    out, _, _ = trained
    meta = json.loads((out / META_FILE).read_text())
    base = resolve_model("smollm2-135m-instruct")
    assert meta["base_model"] == {"reference": "smollm2-135m-instruct", "fingerprint": base.fingerprint}
    recipe = load_recipe(meta["recipe_source"], [f"data.path={meta['recipe']['data']['path']}", *OVERRIDES])
    assert meta["recipe"] == recipe.to_dict()
    ds = load_dataset(recipe.data.spec())
    assert meta["data"]["fingerprint"] == ds.manifest.data_fingerprint
    assert meta["data"]["manifest_fingerprint"] == ds.manifest.fingerprint
    assert (meta["data"]["n_train"], meta["data"]["n_validation"]) == (2, 1)
    assert meta["seed"] == 42
    assert all(meta["versions"][k] for k in ("torch", "transformers", "peft", "trl", "bitsandbytes"))
    assert meta["hardware"]["device"] == "cpu" and meta["hardware"]["cpu_count"] >= 1 and meta["hardware"]["device_name"]
    assert meta["resolved"] == {
        "device": "cpu", "precision": "fp32", "compute_dtype": "float32", "quantization": "4bit", "prompt_format": "reference"
    }
    t = meta["training"]
    assert t["global_step"] == 4 and t["wall_time_s"] > t["train_time_s"] > 0
    assert t["tokens"] == _log(out)[-2]["tokens"]  # last step record: real tokens, padding excluded
    assert t["tokens_per_s"] > 0 and t["peak_memory_bytes"] > 100e6 and t["peak_memory_source"] == "process_max_rss"
    assert t["final_train_loss"] == _log(out)[-1]["train_loss"] and t["final_eval_loss"] == _log(out)[-1]["eval_loss"]


def test_adapter_changes_the_base_outputs(trained):
    import torch

    from medqa_bench.inference.models import attach_adapters, load_base, system_active

    out, _, _ = trained
    loaded = attach_adapters(load_base("smollm2-135m-instruct", device="cpu"), {"ft": out})
    x = loaded.tokenizer(["### Question Type:\nsymptoms\n\n### Question:\nWhat are the symptoms of Gout ?\n\n### Answer:"], return_tensors="pt")
    with torch.no_grad():
        with system_active(loaded, "baseline") as m:
            base = m(**x).logits
        with system_active(loaded, "ft") as m:
            ft = m(**x).logits
    assert (ft - base).abs().max() > 1e-2


def test_refuses_to_overwrite(trained, recipe):
    out, _, _ = trained
    before = (out / "adapter_model.safetensors").read_bytes()
    with pytest.raises(RunError, match="already exists.*--overwrite"):
        train(recipe, out=out, progress=False)
    assert (out / "adapter_model.safetensors").read_bytes() == before


def test_resume_without_checkpoint_is_an_error(tmp_path, recipe):
    with pytest.raises(RunError, match="nothing to resume"):
        train(recipe, out=tmp_path / "fresh", resume=True, progress=False)


def test_same_seed_gives_the_same_adapter(trained, interrupted):
    # The interrupted run is the same recipe; its checkpoint-2 must hold exactly the weights the first run had at
    # step 2 (the LoRA init, the data order and every update follow the seed).
    _, _, snapshot = trained
    _, ckpt = interrupted
    saved = _tensors(ckpt / "adapter_model.safetensors")
    assert len(saved) == len(snapshot) > 0
    for name, tensor in saved.items():
        live = next(v for k, v in snapshot.items() if k.replace(".default", "") == name)
        assert torch_equal(live, tensor.float()), name


def torch_equal(a, b):
    import torch

    return torch.equal(a, b)


def test_interrupted_run_refuses_a_fresh_start(recipe, interrupted):
    out, _ = interrupted
    with pytest.raises(RunError, match="interrupted run left checkpoints.*--resume"):
        train(recipe, out=out, progress=False)


def test_resume_continues_from_the_checkpoint(trained, resumed):
    rows = _log(resumed)
    assert [r["step"] for r in rows if r["type"] == "step"] == [1, 2, 3, 4]
    assert [r["epoch"] for r in rows if r["type"] == "epoch"] == [1, 2]
    meta = json.loads((resumed / META_FILE).read_text())
    assert meta["training"]["resumed_from_step"] == 2 and meta["training"]["global_step"] == 4
    assert not checkpoint_dir(resumed).exists()
    # Resuming restores the optimizer, scheduler, RNG and data position: the result is the uninterrupted run's.
    main, _, _ = trained
    a, b = _tensors(main / "adapter_model.safetensors"), _tensors(resumed / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch_equal(a[name], b[name]), name


# --------------------------------------------------------------------------------------------- speed switches


def test_speed_switches_reach_the_trainer_config():
    from trl import SFTConfig

    from trainers.qlora import _speed_options

    plain = load_recipe("smollm2-135m-symptoms")
    assert _speed_options(plain, "cpu") == {}  # the reference recipe is unchanged
    fast = load_recipe("smollm2-135m-symptoms", ["training.group_by_length=true", "training.pad_to_multiple_of=64"])
    options = _speed_options(fast, "cpu")
    assert options["pad_to_multiple_of"] == 64
    config = SFTConfig(output_dir="unused", use_cpu=True, bf16=False, **options)
    sampler = getattr(config, "train_sampling_strategy", None)
    assert sampler == "group_by_length" or getattr(config, "group_by_length", False)


def test_liger_kernels_need_cuda():
    from trainers.qlora import _speed_options

    recipe = load_recipe("smollm2-135m-symptoms", ["training.kernels=liger"])
    with pytest.raises(SpecError, match="needs a CUDA GPU"):
        _speed_options(recipe, "cpu")
    with pytest.raises(SpecError, match="choose one of: none, liger"):
        load_recipe("smollm2-135m-symptoms", ["training.kernels=fast"])
    with pytest.raises(SpecError, match="'training.compile' and 'training.kernels=liger' exclude each other"):
        load_recipe("smollm2-135m-symptoms", ["training.kernels=liger", "training.compile=true"])


def test_length_grouped_padded_batches_train(workdir, tmp_path):
    """A real 4-bit run with the speed switches on: every batch padded to a multiple of 8, the loss logged."""
    from transformers import TrainerCallback

    _, data = workdir
    widths = []

    class Watch(TrainerCallback):
        def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
            for batch in train_dataloader:
                widths.append(batch["input_ids"].shape[1])

    overrides = [o for o in OVERRIDES if not o.startswith(("data.limit.train", "training.batch_size", "training.max_steps"))]
    recipe = load_recipe("smollm2-135m-symptoms", [f"data.path={data}", *overrides, "data.limit.train=2",
                                                   "training.batch_size=2", "training.max_steps=1",
                                                   "training.group_by_length=true", "training.pad_to_multiple_of=8"])
    out = train(recipe, out=tmp_path / "fast", progress=False, callbacks=[Watch()])
    assert widths and all(w % 8 == 0 for w in widths)
    steps = [r for r in _log(out) if r["type"] == "step"]
    assert steps and all(math.isfinite(r["loss"]) for r in steps)


# --------------------------------------------------------------------------------------------- padding-free, cache


@pytest.fixture(scope="module")
def switch_runs(workdir):
    """One step of batch 4 four ways: padded (the reference), padding-free, and padding-free with cached weights or
    with the LM head projected once."""
    from transformers import TrainerCallback

    root, data = workdir
    overrides = [o for o in OVERRIDES if not o.startswith(("data.limit.train", "training.batch_size", "training.max_steps"))]
    overrides += [f"data.path={data}", "data.limit.train=4", "training.batch_size=4", "training.max_steps=1"]
    runs = {}
    for name, extra in (("padded", []), ("free", ["training.padding_free=true"]),
                        ("free+cache", ["training.padding_free=true", "training.cache_dequantized=true"]),
                        ("free+once", ["training.padding_free=true", "training.logits_once=true"])):
        seen = []

        class Capture(TrainerCallback):
            def on_train_begin(self, args, state, control, train_dataloader=None, model=None, **kwargs):
                cached = sum(1 for m in model.modules() if hasattr(m, "dequantized_weight"))
                seen.append((next(iter(train_dataloader)), cached))

        out = train(load_recipe("smollm2-135m-symptoms", [*overrides, *extra]), out=root / "adapters" / name,
                    progress=False, callbacks=[Capture()])
        runs[name] = out, *seen[0]
    return runs


def _step_and_eval(out):
    rows = _log(out)
    return [r["loss"] for r in rows if r["type"] == "step"], [r["eval_loss"] for r in rows if r["type"] == "epoch"]


def test_padding_free_rows_hold_the_padded_batch_without_padding(switch_runs):
    _, padded, _ = switch_runs["padded"]
    _, free, _ = switch_runs["free"]
    assert free["input_ids"].shape[0] == 1 and "attention_mask" not in free
    real = [row[: int(n)] for row, n in zip(padded["input_ids"], padded["attention_mask"].sum(1))]
    assert free["input_ids"][0].tolist() == [t for row in real for t in row.tolist()]  # the same examples, in order
    assert free["cu_seq_lens_q"].tolist() == [0, *itertools.accumulate(len(r) for r in real)]
    # each position learns what it learns in the padded batch
    assert free["labels"][0].tolist() == [t for row, n in zip(padded["labels"], [len(r) for r in real]) for t in row[:n].tolist()]


def test_padding_free_training_matches_padded_training(switch_runs):
    padded, _, _ = switch_runs["padded"]
    free, _, _ = switch_runs["free"]
    (loss_a, eval_a), (loss_b, eval_b) = _step_and_eval(padded), _step_and_eval(free)
    assert loss_b == pytest.approx(loss_a, rel=1e-5)  # the step's loss
    assert eval_b == pytest.approx(eval_a, rel=1e-5)  # after the update: the same gradient was applied
    meta_a, meta_b = (json.loads((o / META_FILE).read_text())["training"] for o in (padded, free))
    assert meta_b["tokens"] == meta_a["tokens"] > 0  # real tokens counted alike, padding or none


def test_cached_dequantized_weights_change_no_number(switch_runs):
    free, _, none = switch_runs["free"]
    cached, _, layers = switch_runs["free+cache"]
    assert none == 0 and layers == 30 * 7  # every 4-bit linear of SmolLM2 (30 layers) runs on its cached weight
    (loss_a, eval_a), (loss_b, eval_b) = _step_and_eval(free), _step_and_eval(cached)
    assert loss_b == pytest.approx(loss_a, rel=1e-6) and eval_b == pytest.approx(eval_a, rel=1e-6)
    a, b = _tensors(free / "adapter_model.safetensors"), _tensors(cached / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch_equal(a[k], b[k]) for k in a)  # the cache is never saved
    meta = json.loads((cached / META_FILE).read_text())
    assert meta["recipe"]["training"]["cache_dequantized"] and meta["recipe"]["training"]["padding_free"]


def test_logits_once_trains_as_trls_head_does(switch_runs):
    free, _, _ = switch_runs["free"]
    once, batch, _ = switch_runs["free+once"]
    # the collator lists the scored positions on the host: each is a position whose next label is learnt
    labels = batch["labels"].reshape(-1)
    assert batch["scored_positions"].tolist() == [i for i in range(len(labels) - 1) if labels[i + 1] != -100]
    assert batch["scored_targets"].tolist() == [t for t in labels[1:].tolist() if t != -100]
    (loss_a, eval_a), (loss_b, eval_b) = _step_and_eval(free), _step_and_eval(once)
    assert loss_b == pytest.approx(loss_a, rel=1e-5)  # the step's loss
    assert eval_b == pytest.approx(eval_a, rel=1e-5)  # after the update: the same gradient was applied
    assert json.loads((once / META_FILE).read_text())["recipe"]["training"]["logits_once"]


def _trainer_and_batch(workdir, tmp_path, extra=()):
    """The real trainer on the CPU in fp32, built from the test recipe plus ``extra``, and its batch of 3 examples."""
    from medqa_bench.data.dataset import load_dataset
    from medqa_bench.inference.models import load_tokenizer, resolve_model
    from trainers.qlora import _build_trainer, limit_examples, sft_records

    _, data = workdir
    recipe = load_recipe("smollm2-135m-symptoms", [f"data.path={data}", *OVERRIDES, *extra])
    source = resolve_model(recipe.model.reference)
    tokenizer = load_tokenizer(source)
    rows = sft_records(limit_examples(load_dataset(recipe.data.spec()).split("train"), 3, 0), "reference", tokenizer)
    trainer, _ = _build_trainer(recipe, source, "cpu", "fp32", tokenizer, rows, [], tmp_path / "ckpt", False, 0, ())
    return trainer, trainer.data_collator([trainer.train_dataset[i] for i in range(3)])


@pytest.mark.parametrize("padding_free", [True, False])
def test_logits_once_loss_and_gradient_are_trls(workdir, tmp_path, padding_free):
    import torch
    from trl import SFTTrainer

    trainer, batch = _trainer_and_batch(workdir, tmp_path, [f"training.padding_free={padding_free}",
                                                            "training.logits_once=true"])
    assert "scored_positions" in batch
    lora = [p for p in trainer.model.parameters() if p.requires_grad]

    def loss_and_grads(compute, inputs):
        trainer.model.zero_grad()
        loss = compute(trainer.model, inputs, num_items_in_batch=batch["scored_positions"].numel())
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in lora]

    ours, ours_grads = loss_and_grads(trainer.compute_loss, dict(batch))
    plain = {k: v for k, v in batch.items() if not k.startswith("scored_")}  # TRL's head, through the same model
    trls, trls_grads = loss_and_grads(lambda *a, **kw: SFTTrainer.compute_loss(trainer, *a, **kw), plain)
    assert torch.allclose(ours, trls, rtol=1e-6, atol=0)
    # Equal up to float32 summation order, which differs between the two heads and between CPUs: on an AMD EPYC a few
    # entries of ~100k differed by 3e-7 where the tensor's largest was 0.14 (norm of the difference 1.9e-6 of the
    # gradient's). An error of the head (a position scored twice or not at all, another normalisation) moves gradients
    # by a share of their size, 1e-3 and more.
    assert all(torch.allclose(a, b, rtol=1e-4, atol=3e-5 * float(b.abs().max())) for a, b in zip(ours_grads, trls_grads))
    assert all(float((a - b).norm() / b.norm()) < 3e-5 for a, b in zip(ours_grads, trls_grads) if b.norm() > 0)
    assert any(g.abs().sum() > 0 for g in ours_grads)


def test_lean_loss_is_trls_loss(workdir, tmp_path):
    import torch
    from trl import SFTTrainer

    trainer, batch = _trainer_and_batch(workdir, tmp_path)
    count = (batch["labels"][:, 1:] != -100).sum()
    with torch.no_grad():
        ours = trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=count)
        trls = SFTTrainer.compute_loss(trainer, trainer.model, dict(batch), num_items_in_batch=count)
    assert torch.equal(ours, trls)
    # Trainer's FLOP count, with the parameter count taken once instead of at every step
    from transformers import Trainer

    walks = []
    counted = trainer.model.num_parameters
    trainer.model.num_parameters = lambda **kw: walks.append(kw) or counted(**kw)
    assert trainer.floating_point_ops(batch) == Trainer.floating_point_ops(trainer, batch) > 0
    assert trainer.floating_point_ops(batch) == Trainer.floating_point_ops(trainer, batch)
    assert len(walks) == 3  # Trainer's walks twice, ours once
    assert trainer.args.logging_nan_inf_filter is False  # no per-step wait for the device (below)


def test_trainer_steps_do_not_wait_for_the_device():
    from trl import SFTConfig

    from trainers.qlora import _overlap_options

    # Trainer's per-step NaN check of the loss reads it back to the host; the batches are copied without waiting
    assert _overlap_options("cpu") == {"logging_nan_inf_filter": False}
    cuda = _overlap_options("cuda")
    assert cuda["dataloader_pin_memory"] and cuda["accelerator_config"] == {"non_blocking": True}
    config = SFTConfig(output_dir="unused", use_cpu=True, bf16=False, **cuda)
    assert config.accelerator_config.non_blocking and not config.logging_nan_inf_filter


def test_switch_recipe_errors():
    with pytest.raises(SpecError, match="padding_free.*pad_to_multiple_of.*exclude each other"):
        load_recipe("smollm2-135m-symptoms", ["training.padding_free=true", "training.pad_to_multiple_of=64"])
    with pytest.raises(SpecError, match="cache_dequantized' needs model.quantization=4bit"):
        load_recipe("smollm2-135m-symptoms", ["training.cache_dequantized=true", "model.quantization=none"])


def test_step_clock_times_steps_without_waiting_each_step():
    from types import SimpleNamespace

    from trainers.callbacks import StepClock

    clock = StepClock(cuda=False)
    waits = []
    clock._now = lambda: waits.append(len(waits)) or float(len(waits))  # counts the synchronisations
    state = SimpleNamespace(num_input_tokens_seen=0)
    quiet = SimpleNamespace(should_evaluate=False, should_save=False, should_training_stop=False)
    clock.on_train_begin(None, state, quiet)
    for _ in range(5):
        clock.on_step_begin(None, state, quiet)
        state.num_input_tokens_seen += 10
        clock.on_step_end(None, state, quiet)
    assert len(waits) == 1  # opened once, not closed by plain steps
    clock.on_epoch_end(None, state, quiet)  # an evaluation may follow: the interval closes
    assert len(waits) == 2 and clock.seconds == 1.0 and clock.tokens_end == 50
    clock.on_step_begin(None, state, quiet)
    clock.on_step_end(None, state, SimpleNamespace(should_evaluate=True, should_save=False, should_training_stop=False))
    assert len(waits) == 4 and clock.seconds == 2.0
