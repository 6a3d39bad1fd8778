"""One validation loss: the trainer's ``final_eval_loss`` is the harness's corpus loss, reproduced from the adapter.

    harness options   completion_nll's defaults are unchanged; keep_start scores exactly the tokens inside
                      max_length; append_eos scores one token more per item; boundary="common_prefix" is TRL's split
    trainer batches   sequence_nll scores padded and padding-free batches (with or without logits_once) as the
                      harness scores the items, and Trainer.evaluate() reports their corpus loss
    a real run        2 QLoRA steps on CPU (4-bit NF4, fp32 compute): the recorded final_eval_loss, recomputed by
                      medqa_bench.inference.loss.training_eval_loss from the saved adapter on the same validation items
    two processes     DDP on the CPU (gloo): in tests/test_distributed.py, on its two-process training
"""

from __future__ import annotations

import json
import math

import pytest

from medqa_bench.inference.nll import CompletionNLL, completion_nll, encode_pair, encode_pairs
from medqa_bench.inference.loss import batch_mean_loss, corpus_loss, definition_from_metadata, training_eval_loss

pytestmark = pytest.mark.slow

PROMPTS = [
    "### Question Type:\nsymptoms\n\n### Question:\nWhat are the symptoms of Gout ?\n\n### Answer:",
    "### Question Type:\nsymptoms\n\n### Question:\nWhat are the symptoms of Measles ?\n\n### Answer:",
    "### Question Type:\nsymptoms\n\n### Question:\nWhat are the symptoms of Anemia ?\n\n### Answer:",
]
COMPLETIONS = [
    " Sudden, severe pain, swelling and redness in a joint, often the big toe.",
    " High fever, cough, runny nose, red eyes and a red rash that spreads from the face to the rest of the body, "
    "often with small white spots inside the mouth a few days before the rash appears.",
    " Tiredness, weakness, pale skin, a fast heartbeat and shortness of breath.",
]


def _token_nlls(model, tokenizer, prompt, completion_ids):
    """-log p of each completion token after the prompt, from the model's full logits (the reference)."""
    import torch

    ctx = tokenizer(prompt)["input_ids"]
    ids = torch.tensor([ctx + completion_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(ctx) - 1: -1].double()
    return (torch.logsumexp(logits, -1) - logits.gather(-1, ids[0, len(ctx):, None]).squeeze(-1)).tolist()


# --------------------------------------------------------------------------------------------- harness options


def test_defaults_are_the_harness_definition(default_model):
    model, tok = default_model.model, default_model.tokenizer
    plain = completion_nll(model, tok, PROMPTS, COMPLETIONS, progress=False)
    explicit = completion_nll(model, tok, PROMPTS, COMPLETIONS, progress=False, append_eos=False, truncation="window",
                              boundary="prompt")
    assert plain == explicit
    for prompt, completion, value in zip(PROMPTS, COMPLETIONS, plain):
        ids = tok(prompt + completion)["input_ids"][len(tok(prompt)["input_ids"]):]
        assert value.nll_tokens == len(ids)
        assert value.nll_sum == pytest.approx(sum(_token_nlls(model, tok, prompt, ids)), rel=1e-5)
    # a window shorter than the long item: every completion token still scored once, with the sliding window
    windowed = completion_nll(model, tok, PROMPTS, COMPLETIONS, progress=False, max_length=40, stride=20)
    assert [v.nll_tokens for v in windowed] == [v.nll_tokens for v in plain]


def test_keep_start_scores_exactly_the_tokens_inside_max_length(default_model):
    model, tok = default_model.model, default_model.tokenizer
    max_length = 40
    values = completion_nll(model, tok, PROMPTS, COMPLETIONS, progress=False, max_length=max_length,
                            truncation="keep_start")
    for prompt, completion, value in zip(PROMPTS, COMPLETIONS, values):
        ctx, ids = encode_pair(tok, prompt, completion)
        kept = ids[: max_length - len(ctx)]
        assert value.nll_tokens == len(kept) and (len(kept) < len(ids)) == (len(ctx) + len(ids) > max_length)
        assert value.nll_sum == pytest.approx(sum(_token_nlls(model, tok, prompt, kept)), rel=1e-5)
    assert any(v.nll_tokens < w.nll_tokens for v, w in zip(values, completion_nll(model, tok, PROMPTS, COMPLETIONS,
                                                                                 progress=False)))
    # a prompt that fills max_length leaves nothing to score (TRL drops such items)
    short = completion_nll(model, tok, PROMPTS[:1], COMPLETIONS[:1], progress=False, max_length=10,
                           truncation="keep_start")
    assert short == [CompletionNLL(0.0, 0)]
    with pytest.raises(ValueError, match="truncation must be one of window, keep_start"):
        completion_nll(model, tok, PROMPTS, COMPLETIONS, progress=False, truncation="keep_end")


def test_append_eos_scores_one_token_more_per_item(default_model):
    model, tok = default_model.model, default_model.tokenizer
    plain = completion_nll(model, tok, PROMPTS, COMPLETIONS, progress=False)
    with_eos = completion_nll(model, tok, PROMPTS, COMPLETIONS, progress=False, append_eos=True)
    assert [v.nll_tokens for v in with_eos] == [v.nll_tokens + 1 for v in plain]
    for prompt, completion, a, b in zip(PROMPTS, COMPLETIONS, plain, with_eos):
        ids = encode_pair(tok, prompt, completion)[1]
        eos = _token_nlls(model, tok, prompt, ids + [tok.eos_token_id])[-1]
        assert b.nll_sum - a.nll_sum == pytest.approx(eos, rel=1e-4, abs=1e-4)
    # a completion that already ends with EOS gets no second one (TRL's rule)
    again = completion_nll(model, tok, PROMPTS, [c + tok.eos_token for c in COMPLETIONS], progress=False,
                           append_eos=True)
    assert [v.nll_tokens for v in again] == [v.nll_tokens for v in with_eos]


def test_common_prefix_boundary_is_trls_split(default_model):
    from trl.data_utils import common_prefix_length

    tok = default_model.tokenizer
    # "tired" + "ness": the joint tokenisation does not extend the prompt's, so the two rules part
    prompt, completion = "### Answer: tired", "ness and weakness."
    ctx, whole = tok(prompt)["input_ids"], tok(prompt + completion)["input_ids"]
    assert whole[: len(ctx)] != ctx
    n = common_prefix_length(ctx, whole)
    assert encode_pair(tok, prompt, completion, boundary="common_prefix") == (whole[:n], whole[n:])
    assert encode_pair(tok, prompt, completion) == (ctx, tok(completion, add_special_tokens=False)["input_ids"])
    # where the joint tokenisation extends the prompt's (the reference template), the rules agree
    assert encode_pairs(tok, PROMPTS, COMPLETIONS, boundary="common_prefix") == encode_pairs(tok, PROMPTS, COMPLETIONS)


def test_corpus_and_batch_mean_forms():
    values = [CompletionNLL(10.0, 10), CompletionNLL(0.0, 0), CompletionNLL(2.0, 1), CompletionNLL(9.0, 3)]
    assert corpus_loss(values) == (21.0 / 14, 3, 14)
    # Trainer's form: batches of 2 after dropping the unscored item, each batch's token mean weighted by its size
    assert batch_mean_loss(values, 2) == pytest.approx((2 * (12.0 / 11) + 1 * 3.0) / 3)
    assert math.isnan(corpus_loss([CompletionNLL(0.0, 0)])[0])


# --------------------------------------------------------------------------------------------- trainer batches


def _examples(n_short: int = 3, n_long: int = 2):
    """Training items whose prompt + answer + EOS fits 160 tokens (EOS scored) and longer ones (cut)."""
    from medqa_bench.data.dataset import load_dataset

    train = load_dataset().split("train")
    by_length = sorted(train, key=lambda e: (len(e.answer), e.id))
    middle = len(by_length) // 2
    return by_length[:n_short] + by_length[middle: middle + n_long]


@pytest.fixture(scope="module")
def free_trainer(tmp_path_factory):
    """The real trainer (4-bit base, fp32 on the CPU) with padding-free rows and logits_once, evaluating 5 items."""
    from medqa_bench.inference.models import load_tokenizer, resolve_model
    from trainers.qlora import _build_trainer, load_recipe, sft_records

    recipe = load_recipe("smollm2-135m-symptoms", [
        "data.max_length=160", "training.batch_size=2", "training.device=cpu", "lora.r=8", "lora.dropout=0.0",
        "training.gradient_checkpointing=false", "training.padding_free=true", "training.logits_once=true",
        "training.cache_dequantized=true"])  # the same values, without dequantising the base at every forward
    source = resolve_model(recipe.model.reference)
    tokenizer = load_tokenizer(source)
    examples = _examples()
    rows = sft_records(examples, "reference", tokenizer)
    trainer, _ = _build_trainer(recipe, source, "cpu", "fp32", tokenizer, rows, rows,
                                tmp_path_factory.mktemp("loss") / "ckpt", False, 0, ())
    import torch

    with torch.no_grad():  # a LoRA that changes the model, as after some training
        for name, p in trainer.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02, generator=torch.Generator().manual_seed(len(name)))
    return trainer, examples


def test_trainer_evaluation_is_the_harness_corpus_loss(free_trainer):
    """Trainer.evaluate() on padding-free rows, with and without logits_once: the harness's loss of the same items."""
    from trainers import packing

    trainer, examples = free_trainer
    tok = trainer.processing_class
    # batch_size=1: the model attends padding-free rows only, and one row at a time is such a row
    harness = training_eval_loss(trainer.model, tok, examples, prompt_format="reference", max_length=160,
                                 batch_size=1)
    values = completion_nll(trainer.model, tok, [e.prompt() for e in examples], [e.completion() for e in examples],
                            batch_size=1, progress=False, max_length=160, append_eos=True, truncation="keep_start",
                            boundary="common_prefix")
    lengths = [sum(map(len, encode_pair(tok, e.prompt(), e.completion() + tok.eos_token))) for e in examples]
    assert min(lengths) <= 160 < max(lengths)  # some items end inside max_length (EOS scored), some are cut
    assert harness["definition"]["quantization"] == "4bit" and harness["definition"]["compute_dtype"] == "float32"

    once, collate = trainer.evaluate(), trainer.data_collator
    trainer.data_collator = packing.padding_free_collator(tok.pad_token_id, 160)  # logits_once off
    try:
        free = trainer.evaluate()
    finally:
        trainer.data_collator = collate
    for metrics in (once, free):
        assert metrics["eval_loss"] == pytest.approx(harness["loss"], rel=1e-5)
        assert (metrics["eval_items"], metrics["eval_nll_tokens"]) == (harness["n_items"], harness["n_tokens"])
    assert harness["loss"] != pytest.approx(batch_mean_loss(values, 2), rel=1e-4)  # not Trainer's batch mean


def test_sequence_nll_is_per_item_completion_nll(free_trainer):
    import torch

    from medqa_bench.inference.loss import sequence_nll

    trainer, examples = free_trainer
    tok = trainer.processing_class
    batch = trainer.data_collator([trainer.eval_dataset[i] for i in range(len(examples))])
    with torch.no_grad():
        sums, counts = sequence_nll(trainer.model, batch)
    values = completion_nll(trainer.model, tok, [e.prompt() for e in examples], [e.completion() for e in examples],
                            batch_size=1, progress=False, max_length=160, append_eos=True, truncation="keep_start")
    assert counts.tolist() == [v.nll_tokens for v in values]
    assert sums.tolist() == pytest.approx([v.nll_sum for v in values], rel=1e-5)


# --------------------------------------------------------------------------------------------- a real run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from trainers.qlora import load_recipe, train

    recipe = load_recipe("smollm2-135m-symptoms", [
        "data.limit.train=16", "data.limit.validation=8", "data.max_length=128", "training.batch_size=4",
        "training.max_steps=2", "training.logging_steps=1", "training.learning_rate=3e-3", "training.device=cpu",
        "training.gradient_checkpointing=false", "lora.r=8", "lora.dropout=0.0"])
    return recipe, train(recipe, out=tmp_path_factory.mktemp("loss-run") / "adapter", progress=False)


def test_recorded_eval_loss_is_reproduced_by_the_harness(trained):
    from medqa_bench.data.dataset import load_dataset
    from medqa_bench.inference.models import attach_adapters, load_base
    from trainers.qlora import META_FILE, limit_examples

    recipe, out = trained
    meta = json.loads((out / META_FILE).read_text())
    definition = meta["training"]["eval_loss_definition"]
    assert meta["version"] == 2 and definition == definition_from_metadata(meta)
    assert definition == {"form": "corpus", "split": "validation", "eos": True, "boundary": "common_prefix",
                          "truncation": {"max_length": 128, "mode": "keep_start"}, "quantization": "4bit",
                          "compute_dtype": "float32", "prompt_format": "reference"}

    # the same validation items, base, quantization, dtype, prompts and truncation, from the saved folder alone
    items = limit_examples(load_dataset(recipe.data.spec()).split("validation"), recipe.data.limit.validation,
                           recipe.seed)
    loaded = attach_adapters(load_base(meta["base_model"]["reference"], quantization=definition["quantization"],
                                       device="cpu", dtype=definition["compute_dtype"]), {"ft": out})
    harness = training_eval_loss(loaded, None, items, system="ft", prompt_format=definition["prompt_format"],
                                 max_length=definition["truncation"]["max_length"], eval_batch_size=4)
    assert harness["definition"] == definition
    assert abs(harness["loss"] - meta["training"]["final_eval_loss"]) < 1e-3
    assert (harness["n_items"], harness["n_tokens"]) == (meta["training"]["final_eval_items"],
                                                         meta["training"]["final_eval_tokens"])


def test_old_adapters_recorded_trainers_batch_mean():
    from medqa_bench.storage.paths import shipped_adapters_dir

    meta = json.loads((shipped_adapters_dir() / "smollm2-135m-symptoms-qlora" / "medqa_bench.json").read_text())
    assert meta["version"] == 1
    assert definition_from_metadata(meta) == {
        "form": "batch_mean", "batch_size": 4, "split": "validation", "eos": True, "boundary": "common_prefix",
        "truncation": {"max_length": 512, "mode": "keep_start"}, "quantization": "4bit", "compute_dtype": "bfloat16",
        "prompt_format": "reference"}
