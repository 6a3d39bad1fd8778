"""QLoRA fine-tuning with TRL's ``SFTTrainer`` on the evaluation's own prompt/completion records.

The pipeline, in order::

    load_recipe(name or path, overrides)      a frozen Recipe (trainers.recipe)
    -> check the output folder                 refuse to overwrite, find the checkpoint to resume
    -> resolve the base, check target modules  on an empty (meta-device) copy: no weights loaded yet
    -> load_dataset(recipe.data.spec())        the harness's template and split manifest, never a copy
    -> load_base(..., quantization="4bit")     NF4 + double quantization, compute dtype = the precision
    -> SFTTrainer(peft_config=LoraConfig)      completion-only loss, EOS appended, eval every epoch
                                               (trainers.packing: padding-free rows; no per-step device reads;
                                               the validation loss is the harness's, medqa_bench.inference.loss)
    -> atomic.directory(out)                   adapter + training_log.jsonl + medqa_bench.json, in one rename

>>> from trainers.qlora import load_recipe, train                                          # doctest: +SKIP
>>> adapter = train(load_recipe("smollm2-135m-symptoms", ["training.max_steps=20"]))      # doctest: +SKIP
>>> adapter                                                                                # doctest: +SKIP
PosixPath('adapters/smollm2-135m-symptoms')

Training runs in ``<out>.checkpoints/`` beside the output folder (a Trainer checkpoint each epoch, or every
``training.save_steps``); ``resume=True`` continues from the last one. On success the adapter is moved into
``<out>`` and the checkpoints are removed.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

from medqa_bench.storage import atomic
from medqa_bench.data.adapter_meta import (META_FILE, VERSION, AdapterMeta, BaseModel, Distributed, LossDefinition,
    Resolved, TrainingData, TrainingRun, write_adapter_meta)
from medqa_bench.errors import DataError, RunError, SpecError
# the evaluation's seeded draw: a limit names the same items in training and evaluation
from medqa_bench.data.items import select_items as limit_examples

from .recipe import Recipe, load_recipe  # noqa: F401  (re-exported: the CLI imports both from here)

log = logging.getLogger(__name__)

__all__ = ["Recipe", "load_recipe", "train", "checkpoint_dir", "last_checkpoint", "sft_records", "adapter_record",
           "META_FILE", "LOG_FILE"]

LOG_FILE = "training_log.jsonl"
RECIPE_FILE = "recipe.json"  # in the checkpoint folder: what --resume must match
_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


# --------------------------------------------------------------------------------------------- small pieces


def checkpoint_dir(out: str | os.PathLike) -> Path:
    """Where an unfinished run keeps its Trainer checkpoints: ``<out>.checkpoints`` beside the adapter folder."""
    out = Path(out)
    return out.parent / f"{out.name}.checkpoints"


def last_checkpoint(folder: Path) -> Path | None:
    """The ``checkpoint-N`` sub-folder with the highest N that holds a complete trainer state."""
    found = []
    for p in folder.glob("checkpoint-*") if folder.is_dir() else ():
        step = p.name.rpartition("-")[2]
        if step.isdigit() and (p / "trainer_state.json").exists():
            found.append((int(step), p))
    return max(found)[1] if found else None


def pick_precision(precision: str, device: str) -> str:
    """``auto``: bf16 on GPUs that support it, fp16 on older GPUs, fp32 on CPU."""
    import torch

    if precision == "auto":
        if device.startswith("cuda"):
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if precision == "fp16" and not device.startswith("cuda"):
        raise SpecError("training.precision=fp16 needs a CUDA device (loss scaling); on CPU use fp32 or bf16")
    if precision == "bf16" and device.startswith("cuda") and not torch.cuda.is_bf16_supported():
        raise SpecError("this GPU has no bf16; use training.precision=fp16 (or auto)")
    return precision


def check_target_modules(source: Any, targets: Sequence[str]) -> list[str]:
    """Check that every LoRA target names a module of the model, on an empty copy (no weights read).

    Returns the module names LoRA can attach to. Matching is PEFT's: a target matches a module whose dotted name
    is the target or ends with ``.target``; ``all-linear`` is passed through.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if list(targets) == ["all-linear"]:
        return ["all-linear"]
    config = AutoConfig.from_pretrained(source.location, revision=source.revision)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    kinds = (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d)
    names = [n for n, m in skeleton.named_modules() if n and (isinstance(m, kinds) or type(m).__name__ == "Conv1D")]
    leaves = sorted(set(n.rpartition(".")[2] for n in names))
    for target in targets:
        if not any(n == target or n.endswith("." + target) for n in names):
            raise SpecError(
                f"lora.target_modules: '{target}' is not a module of {source.reference}; "
                f"modules LoRA can attach to: {', '.join(leaves)} (or all-linear)"
            )
        if target == "lm_head" or target.endswith(".lm_head"):
            raise SpecError("lora.target_modules: lm_head cannot take a LoRA under SFTTrainer (its loss reads lm_head.weight directly)")
    return leaves


def sft_records(examples: Sequence[Any], fmt: str, tokenizer: Any) -> list[dict[str, str]]:
    """``{"prompt", "completion"}`` rows from :func:`medqa_bench.data.prompt_completion_records` (ids dropped).

    TRL appends the EOS token to each completion and masks the prompt out of the loss. The prompt text is the
    harness's, unchanged, and TRL tokenises it as the harness does (``tokenizer(text)``, special tokens added).
    """
    from medqa_bench.data.dataset import prompt_completion_records

    rows = prompt_completion_records(examples, fmt, tokenizer)
    return [{"prompt": r["prompt"], "completion": r["completion"]} for r in rows]


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("medqa-bench", "torch", "transformers", "peft", "trl", "bitsandbytes", "accelerate", "datasets"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _hardware(device: str) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"device": device, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if device.startswith("cuda"):
        info["device_name"] = torch.cuda.get_device_name(torch.device(device))
        info["cuda"] = torch.version.cuda
    else:
        name = platform.processor() or platform.machine()
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        info["device_name"] = name
    return info


def peak_memory(device: str) -> tuple[int, str]:
    """(bytes, what was measured): CUDA ``max_memory_allocated`` since the run began, else the process's max RSS."""
    import torch

    if device.startswith("cuda"):
        return int(torch.cuda.max_memory_allocated(torch.device(device))), "cuda_max_memory_allocated"
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss * (1 if platform.system() == "Darwin" else 1024)), "process_max_rss"


def _training_run(recipe: Recipe, trainer: Any, result: Any, clock: Any, log_file: Path, started: float,
                  resume_step: int, device: str, precision: str, validated: bool) -> TrainingRun:
    """What a finished run did and measured: from the Trainer's state, the step clock and the training log."""
    from medqa_bench.inference.loss import eval_loss_definition

    memory, memory_source = peak_memory(device)
    rows = [json.loads(line) for line in log_file.read_text().splitlines() if line.strip()]
    epochs = [r for r in rows if r["type"] == "epoch"]
    tokens = clock.tokens_end - clock.tokens_start
    evaluated = [h for h in trainer.state.log_history if "eval_loss" in h]
    # what final_eval_loss is (medqa_bench.inference.loss.training_eval_loss recomputes it from the adapter folder)
    definition = eval_loss_definition(
        max_length=recipe.data.max_length, quantization=recipe.model.quantization,
        compute_dtype=_DTYPES[precision], prompt_format=recipe.data.prompt_format,
    ) if validated else None
    return TrainingRun(
        global_step=trainer.state.global_step,
        epochs=float(trainer.state.epoch or 0),
        resumed_from_step=resume_step or None,
        wall_time_s=round(time.perf_counter() - started, 3),
        train_time_s=round(clock.seconds, 3),
        tokens=tokens,
        tokens_per_s=round(tokens / clock.seconds, 2) if clock.seconds else None,
        peak_memory_bytes=memory,
        peak_memory_source=memory_source,
        final_train_loss=epochs[-1]["train_loss"] if epochs else result.training_loss,
        final_eval_loss=epochs[-1]["eval_loss"] if epochs else None,
        eval_loss_definition=None if definition is None else LossDefinition.from_dict(
            definition, doc=META_FILE, where="training.eval_loss_definition."),
        final_eval_items=evaluated[-1].get("eval_items") if evaluated else None,
        final_eval_tokens=evaluated[-1].get("eval_nll_tokens") if evaluated else None,
    )


def adapter_record(recipe: Recipe, source: Any, dataset: Any, counts: tuple[int, int], device: str, precision: str,
                   training: TrainingRun, ranks: Any = None, *, versions: dict[str, str | None] | None = None,
                   hardware: dict[str, Any] | None = None, created: str | None = None) -> AdapterMeta:
    """The ``medqa_bench.json`` of an adapter trained by ``recipe`` on the base ``source`` (a ModelSource) and the
    ``dataset`` (the loaded Dataset; ``counts``: its training and validation items as capped), on ``device`` in
    ``precision``. ``ranks``: the processes of a multi-process run. ``versions``, ``hardware`` and ``created`` are
    this process's and now, unless given (a test rebuilds a shipped adapter's record)."""
    t = recipe.training
    return AdapterMeta(
        version=VERSION,  # medqa_bench.data.adapter_meta declares the file and its version history
        kind="qlora" if recipe.model.quantization == "4bit" else "lora",
        base_model=BaseModel(reference=source.reference, fingerprint=source.fingerprint),
        recipe=recipe.to_dict(),
        recipe_source=recipe.source,
        resolved=Resolved(device=device, precision=precision, compute_dtype=_DTYPES[precision],
                          quantization=recipe.model.quantization, prompt_format=recipe.data.prompt_format),
        data=TrainingData(fingerprint=dataset.manifest.data_fingerprint,
                          manifest_fingerprint=dataset.manifest.fingerprint, n_train=counts[0], n_validation=counts[1],
                          spec=recipe.data.spec().to_dict()),
        seed=recipe.seed,
        versions=_versions() if versions is None else versions,
        hardware=_hardware(device) if hardware is None else hardware,
        training=training,
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z") if created is None else created,
        # Trainer gathers losses and token counts over the processes; the global batch is per device x processes.
        distributed=None if ranks is None else Distributed(
            **ranks.describe(), global_batch_size=t.batch_size * t.gradient_accumulation_steps * ranks.world_size),
    )


# --------------------------------------------------------------------------------------------- train


def _prepare_output(recipe: Recipe, out: Path, resume: bool, overwrite: bool) -> tuple[Path, Path | None]:
    """Check the output and checkpoint folders before any work. Returns (checkpoint folder, checkpoint to resume)."""
    ckpt_root = checkpoint_dir(out)
    if out.exists() and not overwrite:
        raise RunError(f"adapter folder {out} already exists; pass --overwrite to replace it, or choose another --out")
    if resume:
        ckpt = last_checkpoint(ckpt_root)
        if ckpt is None:
            raise RunError(f"nothing to resume: no Trainer checkpoint in {ckpt_root}; run again without --resume")
        saved = json.loads((ckpt_root / RECIPE_FILE).read_text()) if (ckpt_root / RECIPE_FILE).exists() else None
        if saved is not None and saved != recipe.to_dict():
            diff = sorted(_diff_keys(saved, recipe.to_dict()))
            raise RunError(
                f"cannot resume {ckpt_root}: the recipe differs from the interrupted run's in {', '.join(diff)}; "
                "resume with the same recipe and overrides, or start over with --overwrite"
            )
        return ckpt_root, ckpt
    if last_checkpoint(ckpt_root) is not None and not overwrite:
        raise RunError(
            f"an interrupted run left checkpoints in {ckpt_root}; pass --resume to continue it, "
            "or --overwrite to start over"
        )
    return ckpt_root, None  # the caller clears ckpt_root (once, on the main process)


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [k for key in sorted(set(a) | set(b)) for k in _diff_keys(a.get(key), b.get(key), f"{prefix}{key}.")]
    return [] if a == b else [prefix.rstrip(".")]


def _speed_options(recipe: Recipe, device: str) -> dict[str, Any]:
    """SFTConfig arguments of the recipe's speed switches (none by default: the reference recipe is unchanged)."""
    import dataclasses

    from trl import SFTConfig

    t, options = recipe.training, {}
    if t.group_by_length:
        # transformers >= 5.2x names the sampler; earlier versions have the boolean
        if "train_sampling_strategy" in {f.name for f in dataclasses.fields(SFTConfig)}:
            options["train_sampling_strategy"] = "group_by_length"
        else:
            options["group_by_length"] = True
    if t.pad_to_multiple_of:
        options["pad_to_multiple_of"] = t.pad_to_multiple_of
    if t.kernels == "liger":
        if not device.startswith("cuda"):
            raise SpecError("training.kernels=liger needs a CUDA GPU (Triton kernels); use training.kernels=none on CPU")
        try:
            import liger_kernel  # noqa: F401
        except ImportError:
            raise SpecError("training.kernels=liger needs the liger-kernel package: pip install liger-kernel") from None
        # TRL computes the loss with its own fused, chunked LM head; Liger's cross-entropy kernels stay off.
        options["use_liger_kernel"] = True
        options["liger_kernel_config"] = {"rope": True, "rms_norm": True, "swiglu": True, "cross_entropy": False,
                                          "fused_linear_cross_entropy": False}
    return options


def _overlap_options(device: str) -> dict[str, Any]:
    """SFTConfig arguments that let the host queue the next step while the GPU still runs this one.

    Trainer waits for the device twice a step by default: its check of each step's loss for NaN/inf (a Python
    ``if`` on a device tensor, after the backward pass) and its blocking copy of each batch to the GPU (before the
    forward pass). Neither changes what is computed: without the check a non-finite loss shows as ``nan`` in the
    logged window instead of being replaced by the window's running mean (the optimizer step is the same either
    way), and the batches are copied from pinned memory without waiting.
    """
    options: dict[str, Any] = {"logging_nan_inf_filter": False}
    if device.startswith("cuda"):
        options.update(dataloader_pin_memory=True, accelerator_config={"non_blocking": True})
    return options


def _sft_config(recipe: Recipe, ckpt_root: Path, precision: str, device: str, has_eval: bool, progress: bool,
                report_to: list[str] | str = "none"):
    from trl import SFTConfig

    t = recipe.training
    return SFTConfig(
        **_speed_options(recipe, device),
        output_dir=str(ckpt_root),
        seed=recipe.seed,
        data_seed=recipe.seed,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps if t.max_steps is not None else -1,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.eval_batch_size or t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,  # a float below 1 is a fraction of the steps
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        optim=t.optimizer,
        gradient_checkpointing=t.gradient_checkpointing,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=device == "cpu",
        logging_strategy="steps",
        logging_steps=t.logging_steps,
        eval_strategy="epoch" if has_eval else "no",
        save_strategy="steps" if t.save_steps else "epoch",
        save_steps=t.save_steps or 500,
        save_total_limit=t.save_total_limit,
        # Completion-only loss on prompt/completion rows; TRL appends EOS to each completion and builds the labels
        # from the completion mask, so the final EOS is learnt although pad == EOS for SmolLM2 and Llama.
        completion_only_loss=True,
        max_length=recipe.data.max_length,
        packing=False,
        # A padding-free row has no padding: all its tokens are real ones, countable from its shape.
        include_num_input_tokens_seen="all" if t.padding_free else "non_padding",
        report_to=report_to,  # training.report_to, checked (trainers.callbacks.report_to)
        run_name=recipe.output_name,
        disable_tqdm=not progress,
        dataloader_num_workers=0,
        **_overlap_options(device),
        # Multi-process: every LoRA weight takes part in every forward pass, so DDP need not search the graph for
        # unused parameters each step (transformers' default for a PEFT model, which warns that it found none).
        ddp_find_unused_parameters=False,
    )


def train(
    recipe: Recipe,
    *,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    callbacks: Sequence[Any] = (),
) -> Path:
    """Fine-tune ``recipe``'s base with QLoRA; return the adapter folder (``adapters/<name>`` by default).

    ``resume`` continues from the last checkpoint of an interrupted run of the same recipe; ``overwrite`` replaces
    an existing adapter folder (and discards an interrupted run's checkpoints). ``callbacks`` are extra
    ``transformers.TrainerCallback`` objects. Raises SpecError, DataError, ModelError or RunError; never prints.
    """
    from medqa_bench.inference import distributed

    from .callbacks import report_to

    started = time.perf_counter()
    trackers = report_to(recipe.training.report_to)  # an unknown or missing tracker fails before anything runs
    out = Path(out) if out is not None else recipe.default_output()
    # DDP under `accelerate launch`: None in a single process. Every process checks the folders; only the main
    # one clears, logs and writes, the others wait for it (below).
    ranks = distributed.launched(recipe.training.device)
    main = ranks is None or ranks.is_main
    ckpt_root, resume_from = _prepare_output(recipe, out, resume, overwrite)
    if ranks is not None:
        ranks.barrier()  # every process has looked at ckpt_root before the main one clears it
    if resume_from is None and main:
        shutil.rmtree(ckpt_root, ignore_errors=True)

    import torch
    from transformers import PrinterCallback

    from medqa_bench.data.dataset import load_dataset
    from medqa_bench.inference.models import load_tokenizer, pick_device, resolve_model

    # DDP: each process trains on its own device, cuda:<local rank> (CPU stays CPU).
    device = pick_device(recipe.training.device) if ranks is None else ranks.device
    precision = pick_precision(recipe.training.precision, device)
    if ranks is not None:  # one process converts the GGUF file / downloads; the others find it done
        ranks.main_first(lambda: resolve_model(recipe.model.reference))
    source = resolve_model(recipe.model.reference)
    check_target_modules(source, recipe.lora.target_modules)

    # Data: the harness's own split, then the seeded caps.
    tokenizer = load_tokenizer(source)
    dataset = load_dataset(recipe.data.spec())
    train_ex = limit_examples(dataset.split("train"), recipe.data.limit.train, recipe.seed)
    val_ex = limit_examples(dataset.split("validation"), recipe.data.limit.validation, recipe.seed)
    if not train_ex:
        raise DataError(f"the training split is empty ({len(dataset.examples)} items in all); use more data or other split ratios")
    if not val_ex:
        ratios = ", ".join(f"{r:g}" for r in recipe.data.split.ratios)
        log.warning(
            "the validation split is empty (split ratios [%s] of %d items give %s): training runs without "
            "evaluation and the adapter records no validation loss; give validation a share, e.g. --set "
            "data.split.ratios=[0.8,0.1,0.1]", ratios, len(dataset.examples),
            " / ".join(f"{len(dataset.split(s))} {s}" for s in ("train", "validation", "test")))
    train_rows = sft_records(train_ex, recipe.data.prompt_format, tokenizer)
    val_rows = sft_records(val_ex, recipe.data.prompt_format, tokenizer)

    log.info(
        "training %s: %s (%s) on %s, %s, %d train / %d validation items%s",
        recipe.name, source.reference, recipe.model.quantization, device, precision, len(train_rows), len(val_rows),
        f", resuming from {resume_from.name}" if resume_from else "",
    )
    if main:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        atomic.write_json(ckpt_root / RECIPE_FILE, recipe.to_dict())
    resume_step = json.loads((resume_from / "trainer_state.json").read_text())["global_step"] if resume_from else 0

    with _quiet(not progress):
        trainer, clock = _build_trainer(recipe, source, device, precision, tokenizer, train_rows, val_rows, ckpt_root, progress, resume_step, callbacks, main, trackers)
        if not progress:
            trainer.remove_callback(PrinterCallback)  # it prints every log line to stdout
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(torch.device(device))
        try:
            result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        except torch.OutOfMemoryError as exc:
            raise RunError(
                f"out of memory while training {recipe.name} on {device}: lower training.batch_size or "
                "data.max_length, or set training.gradient_checkpointing=true; "
                f"checkpoints so far are in {ckpt_root} (--resume)"
            ) from exc

    if not main:
        return ranks.wait_for_main()  # the main process writes the adapter folder; return its path
    run = _training_run(recipe, trainer, result, clock, ckpt_root / LOG_FILE, started, resume_step, device, precision,
                        bool(val_rows))
    meta = adapter_record(recipe, source, dataset, (len(train_ex), len(val_ex)), device, precision, run, ranks)

    def write() -> Path:
        try:
            with atomic.directory(out, overwrite=overwrite) as tmp:
                trainer.model.save_pretrained(tmp)
                shutil.copyfile(ckpt_root / LOG_FILE, tmp / LOG_FILE)
                if (ckpt_root / "runs").is_dir():  # TensorBoard's event files (report_to), kept with the adapter
                    shutil.copytree(ckpt_root / "runs", tmp / "runs")
                write_adapter_meta(tmp, meta)
        except FileExistsError:
            raise RunError(f"adapter folder {out} appeared while training; the run is kept in {ckpt_root} (--resume --overwrite)") from None
        shutil.rmtree(ckpt_root, ignore_errors=True)
        return out

    return write() if ranks is None else ranks.main_only(write)  # the others wait in wait_for_main() above


def _build_trainer(recipe, source, device, precision, tokenizer, train_rows, val_rows, ckpt_root, progress, resume_step, callbacks, main=True, trackers="none"):
    import datasets
    import torch
    from peft import LoraConfig
    from transformers import set_seed

    from medqa_bench.inference.models import load_base

    from . import lm_head, packing, speedups

    # Seeded before the base is loaded and again (by SFTTrainer) before PEFT draws the LoRA weights: same recipe
    # and seed, same adapter.
    set_seed(recipe.seed)
    loaded = load_base(
        recipe.model.reference, quantization=recipe.model.quantization, device=device, dtype=_DTYPES[precision]
    )
    if recipe.training.padding_free:
        packing.use_varlen_attention(loaded.model)
    lora = recipe.lora
    peft_config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules="all-linear" if list(lora.target_modules) == ["all-linear"] else list(lora.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    from .callbacks import StepClock, TrainingLog

    clock = StepClock(device.startswith("cuda"))
    trainer = packing.LeanSFTTrainer(
        model=loaded.model,
        args=_sft_config(recipe, ckpt_root, precision, device, bool(val_rows), progress, trackers),
        train_dataset=datasets.Dataset.from_list(train_rows),
        eval_dataset=datasets.Dataset.from_list(val_rows) if val_rows else None,
        processing_class=loaded.tokenizer,
        peft_config=peft_config,
        # DDP: one writer of training_log.jsonl (Trainer logs the losses gathered over the processes on each).
        callbacks=[*([TrainingLog(ckpt_root / LOG_FILE, resume_step)] if main else []), clock, *callbacks],
    )
    if recipe.training.padding_free:
        # Built by TRL with the tokenizer's pad token (which the packed rows never use): same examples, one row.
        trainer.data_collator = packing.padding_free_collator(trainer.data_collator.pad_token_id, recipe.data.max_length)
    if recipe.training.logits_once:
        try:
            lm_head.install_logits_once(trainer.model)
        except ValueError as err:
            raise SpecError(f"training.logits_once cannot run on {recipe.model.reference}: {err}; "
                            "set training.logits_once=false") from None
        trainer.data_collator = lm_head.with_scored_positions(trainer.data_collator)
    if recipe.training.cache_dequantized:
        added = speedups.cache_dequantized_weights(trainer.model)
        log.info("cached the dequantised base weights: %.2f GiB", added / 2**30)
    if precision != "bf16":
        # TRL keeps a quantized model's LoRA weights in bf16 (the QLoRA paper's choice); with fp16 loss scaling or
        # fp32 (CPU) they train in fp32 instead, as PEFT creates them.
        for param in trainer.model.parameters():
            if param.requires_grad:
                param.data = param.data.to(torch.float32)
    if recipe.training.compile:  # last: the layers are compiled as they will train (compilation runs at first use)
        speedups.compile_decoder_layers(trainer.model)
    return trainer, clock


class _quiet:
    """Silence the progress bars of `datasets` and `transformers` (model loading, dataset maps) for a block."""

    def __init__(self, on: bool):
        self.on = on

    def __enter__(self):
        if self.on:
            import datasets
            import transformers

            self._ds = datasets.is_progress_bar_enabled()
            self._tf = transformers.utils.logging.is_progress_bar_enabled()
            datasets.disable_progress_bars()
            transformers.utils.logging.disable_progress_bar()
        return self

    def __exit__(self, *exc):
        if self.on:
            import datasets
            import transformers

            if self._ds:
                datasets.enable_progress_bars()
            if self._tf:
                transformers.utils.logging.enable_progress_bar()
        return False
