"""A fine-tuning run's validation loss, as the harness computes it: one definition for the trainer and the harness.

The trainer scores what it trains on. TRL's ``SFTTrainer`` appends the EOS token to each completion, cuts
prompt+completion to ``max_length`` tokens keeping the start, and finds the completion by the common prefix of the
two tokenisations (:func:`medqa_bench.inference.completion_nll` with ``append_eos=True, truncation="keep_start",
boundary="common_prefix"`` scores exactly these tokens). Over the validation split, on the model as it trains (the
4-bit base in the run's compute dtype, the adapter attached), the trainer reports::

    loss = sum_items sum_{t scored} -log p(t | context) / sum_items |scored tokens|        (form "corpus")

the harness's corpus loss (token-weighted; float32 log-softmax, float64 sums), not Trainer's default evaluation
loss, the mean over evaluation batches of each batch's token mean weighted by the batch's size (form
"batch_mean", :func:`batch_mean_loss`), which depends on the batch size and the order of the items. Adapters
written before ``medqa_bench.json`` version 2 recorded the batch mean; :func:`definition_from_metadata` says which
an adapter's ``training.final_eval_loss`` is.

The quantization is part of the definition: a QLoRA adapter learns against the NF4-rounded base. The shipped
SmolLM2 adapter scores 0.99 (this definition, fp32 on a CPU) on its NF4 base and 1.54 on the unquantized one, whose
plain harness loss (no EOS, no truncation) is the 1.52 an evaluation with ``--quantization none`` reports.

Both sides share the arithmetic: :func:`sequence_nll` scores the trainer's collated batches (padded rows or one
padding-free row) with the harness's own LM-head gather and log-softmax, and :func:`training_eval_loss` scores a
saved adapter's validation items through :func:`~medqa_bench.inference.completion_nll`.

>>> from medqa_bench.data import load_dataset                                                    # doctest: +SKIP
>>> from medqa_bench.inference.models import attach_adapters, load_base                                    # doctest: +SKIP
>>> loaded = attach_adapters(load_base("smollm2-135m-instruct", quantization="4bit", device="cpu", dtype="float32"),
...                          {"ft": "data/adapters/smollm2-135m-symptoms-qlora"})                # doctest: +SKIP
>>> out = training_eval_loss(loaded, None, load_dataset().split("validation"), system="ft",
...                          prompt_format="reference", max_length=512, eval_batch_size=4)      # doctest: +SKIP
>>> sorted(out)                                                                                  # doctest: +SKIP
['batch_mean_loss', 'definition', 'loss', 'n_items', 'n_tokens']
"""

from __future__ import annotations

from typing import Any, Sequence

from ..data.adapter_meta import AdapterMeta, Resolved, as_adapter_meta
from .nll import CompletionNLL

__all__ = [
    "FORMS",
    "eval_loss_definition",
    "definition_from_metadata",
    "corpus_loss",
    "batch_mean_loss",
    "sequence_nll",
    "training_eval_loss",
    "training_eval_loss_info",
    "run_loss_definition",
    "FORMULAS",
]

#: "corpus": sum NLL / sum tokens over the split; "batch_mean": Trainer's mean of batch token means (adapters < v2).
FORMS = ("corpus", "batch_mean")


#: What each form computes, in words, for reports.
FORMULAS = {
    "corpus": "sum of NLL over the scored tokens / number of scored tokens (natural log), over the whole split",
    "batch_mean": "Trainer's evaluation loop: the mean over evaluation batches of each batch's mean token loss, "
                  "weighted by batch size, not by tokens",
}


def run_loss_definition(*, split: str, max_length: int, quantization: str, compute_dtype: str) -> dict[str, Any]:
    """What an evaluation run's loss and perplexity are (:mod:`medqa_bench.inference`'s definition), in the keys of
    :func:`eval_loss_definition`, for the report to set beside an adapter's training eval loss."""
    return {
        "form": "corpus",
        "formula": FORMULAS["corpus"],
        "split": split,
        "eos": False,
        "boundary": "prompt",
        "truncation": {"max_length": max_length,
                       "mode": "window: answers longer than the context are scored with a strided sliding window"},
        "quantization": quantization,
        "compute_dtype": compute_dtype,
        "prompt_format": "each system's own",
    }


def training_eval_loss_info(meta: AdapterMeta | dict[str, Any] | None) -> dict[str, Any] | None:
    """An adapter's recorded eval loss with its definition (:func:`definition_from_metadata`), or None when its
    metadata (the record, or its file's object) records none."""
    record = as_adapter_meta(meta)
    value = record.final_eval_loss if record is not None else None
    if value is None:
        return None
    definition = definition_from_metadata(record)
    return {"value": value, "definition": {**definition, "formula": FORMULAS.get(definition.get("form"), "")}}


def eval_loss_definition(
    *,
    max_length: int,
    quantization: str,
    compute_dtype: str,
    prompt_format: str,
    split: str = "validation",
    form: str = "corpus",
    batch_size: int | None = None,
) -> dict[str, Any]:
    """What a recorded validation loss is: the record the trainer writes to ``medqa_bench.json`` and
    :func:`training_eval_loss` returns. ``batch_size`` matters to the ``batch_mean`` form only."""
    if form not in FORMS:
        raise ValueError(f"form must be one of {', '.join(FORMS)}, not {form!r}")
    definition = {
        "form": form,
        "split": split,
        "eos": True,
        "boundary": "common_prefix",
        "truncation": {"max_length": max_length, "mode": "keep_start"},
        "quantization": quantization,
        "compute_dtype": compute_dtype,
        "prompt_format": prompt_format,
    }
    if form == "batch_mean":
        definition["batch_size"] = batch_size
    return definition


def definition_from_metadata(meta: AdapterMeta | dict[str, Any]) -> dict[str, Any]:
    """The definition of an adapter's ``training.final_eval_loss``, from its ``medqa_bench.json`` (the record, or the
    file's object).

    Version 2 records it; version 1 adapters recorded Trainer's batch mean (batch size: the recipe's
    ``eval_batch_size``, else its ``batch_size``), over the same tokens.
    """
    record = as_adapter_meta(meta) or AdapterMeta()
    recorded = record.eval_loss_definition.to_dict() if record.eval_loss_definition is not None else None
    if recorded:
        return recorded
    resolved = record.resolved or Resolved()
    return eval_loss_definition(
        max_length=record.recipe_value("data.max_length"),
        quantization=resolved.quantization,
        compute_dtype=resolved.compute_dtype,
        prompt_format=resolved.prompt_format,
        form="batch_mean",
        batch_size=record.recipe_value("training.eval_batch_size") or record.recipe_value("training.batch_size"),
    )


def corpus_loss(values: Sequence[CompletionNLL]) -> tuple[float, int, int]:
    """(sum NLL / sum tokens, items with a scored token, scored tokens)."""
    scored = [v for v in values if v.nll_tokens]
    tokens = sum(v.nll_tokens for v in scored)
    return (sum(v.nll_sum for v in scored) / tokens if tokens else float("nan")), len(scored), tokens


def batch_mean_loss(values: Sequence[CompletionNLL], batch_size: int) -> float:
    """Trainer's evaluation loss: consecutive batches of ``batch_size`` items (in the order given, items without a
    scored token dropped first, as TRL drops them), each batch's token mean weighted by its number of items."""
    scored = [v for v in values if v.nll_tokens]
    if not scored:
        return float("nan")
    batches = [scored[i: i + batch_size] for i in range(0, len(scored), batch_size)]
    means = [(sum(v.nll_sum for v in b) / sum(v.nll_tokens for v in b), len(b)) for b in batches]
    return sum(m * n for m, n in means) / sum(n for _, n in means)


def sequence_nll(model: Any, batch: dict[str, Any]):
    """Per-sequence NLL sums (float64) and scored-token counts of a labelled causal-LM batch, on its device.

    ``batch`` is a collator's output: ``input_ids`` and ``labels`` (-100 where a token is not scored; the logits at
    position t score the label at t + 1), with ``attention_mask`` for padded rows, or one padding-free row with
    ``position_ids`` and ``cu_seq_lens_q`` (sequence starts and the total; derived from the positions when absent).
    Sequences are rows, or the packed row's segments, in order. Other keys the model does not take
    (``scored_positions``, ``scored_targets``) are dropped. The model runs as the harness runs it: the hidden states of
    the scored positions only go through the LM head, their log-softmax in float32.
    """
    import torch

    from .nll import _scored_logits, _token_nll

    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "scored_positions", "scored_targets", "use_cache")}
    shifted = labels[:, 1:]
    rows, cols = torch.nonzero(shifted != -100, as_tuple=True)
    targets = shifted[rows, cols]
    if labels.shape[0] == 1 and "attention_mask" not in batch and "position_ids" in batch:
        cu = batch.get("cu_seq_lens_q")
        if cu is None:
            starts = torch.nonzero(batch["position_ids"][0] == 0).flatten()
            cu = torch.cat([starts, starts.new_tensor([labels.shape[1]])])
        cu = cu.to(device=cols.device, dtype=torch.long)
        sequence = torch.searchsorted(cu, cols + 1, right=True) - 1  # the sequence of the scored label
        n = cu.numel() - 1
    else:
        sequence, n = rows, labels.shape[0]
    nll = _token_nll(_scored_logits(model, inputs, rows, cols), targets)
    sums = torch.zeros(n, dtype=torch.float64, device=nll.device).index_add_(0, sequence.to(nll.device), nll.double())
    counts = torch.bincount(sequence.to(nll.device), minlength=n)
    return sums, counts


def _describe(model: Any) -> tuple[str, str]:
    """(quantization, compute dtype) of a bare model: its bitsandbytes 4-bit config, else its parameters' dtype."""
    config = getattr(getattr(model, "config", None), "quantization_config", None)
    if isinstance(config, dict):
        four_bit, dtype = config.get("load_in_4bit"), config.get("bnb_4bit_compute_dtype")
    else:
        four_bit, dtype = getattr(config, "load_in_4bit", False), getattr(config, "bnb_4bit_compute_dtype", None)
    if four_bit:
        return "4bit", str(dtype).replace("torch.", "")
    return "none", str(next(model.parameters()).dtype).replace("torch.", "")


def training_eval_loss(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Any],
    *,
    prompt_format: str = "reference",
    max_length: int = 512,
    system: str | None = None,
    eval_batch_size: int | None = None,
    batch_size: int | str = "auto",
    split: str = "validation",
    progress: bool = False,
) -> dict[str, Any]:
    """The trainer's validation loss of ``examples`` (:class:`~medqa_bench.data.Example`), recomputed by the harness.

    ``model`` is a :class:`~medqa_bench.inference.models.LoadedModel` (``tokenizer`` None: its own; ``system``: "baseline" or
    an attached adapter, made active for the call) or a bare model, loaded as the trainer ran it: the recipe's
    quantization and compute dtype. Prompts are the harness's (``prompt_format``), completions get the EOS token,
    sequences are cut to ``max_length`` keeping the start. Returns ``{"loss", "n_items", "n_tokens", "definition"}``
    (the definition as the trainer records it, with this model's quantization and dtype) and, given the trainer's
    ``eval_batch_size``, ``"batch_mean_loss"``: Trainer's batch mean over the same tokens in the split's order, the
    number adapters before ``medqa_bench.json`` version 2 recorded.
    """
    import contextlib

    from ..data.dataset import prompt_completion_records
    from .nll import completion_nll

    if hasattr(model, "source") and hasattr(model, "model"):  # a LoadedModel
        from .models import system_active

        loaded = model
        tokenizer = tokenizer or loaded.tokenizer
        quantization, dtype = loaded.quantization, loaded.dtype
        active = system_active(loaded, system) if system else contextlib.nullcontext(loaded.model)
    else:
        quantization, dtype = _describe(model)
        active = contextlib.nullcontext(model)
    records = prompt_completion_records(examples, prompt_format, tokenizer)
    with active as m:
        values = completion_nll(
            m, tokenizer, [r["prompt"] for r in records], [r["completion"] for r in records],
            batch_size=batch_size, max_length=max_length, append_eos=True, truncation="keep_start",
            boundary="common_prefix", progress=progress, desc="training eval loss",
        )
    loss, n_items, n_tokens = corpus_loss(values)
    out: dict[str, Any] = {
        "loss": loss,
        "n_items": n_items,
        "n_tokens": n_tokens,
        "definition": eval_loss_definition(max_length=max_length, quantization=quantization, compute_dtype=dtype,
                                           prompt_format=prompt_format, split=split),
    }
    if eval_batch_size:
        out["batch_mean_loss"] = batch_mean_loss(values, eval_batch_size)
    return out
