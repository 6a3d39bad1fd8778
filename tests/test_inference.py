"""Completion NLL (one definition, batch- and padding-invariant), generation, adapters on one base."""

from __future__ import annotations

import json
import math

import pytest
import torch

from medqa_bench.errors import AdapterError
from medqa_bench.inference.generation import DecodingParams, generate
from medqa_bench.inference.nll import completion_nll, encode_pair
from medqa_bench.inference.models import attach_adapters, load_base, read_adapter, system_active


@pytest.fixture(scope="module")
def items(symptoms):
    ex = symptoms.split("test")[:8]
    return [e.prompt() for e in ex], [e.completion() for e in ex]


def test_nll_equals_the_models_own_loss(default_model, items):
    model, tok = default_model.model, default_model.tokenizer
    prompts, completions = items
    ours = completion_nll(model, tok, prompts[:3], completions[:3], batch_size=3, progress=False)
    for p, c, value in zip(prompts, completions, ours):
        ctx, cont = encode_pair(tok, p, c)
        ids = torch.tensor([ctx + cont])
        labels = ids.clone()
        labels[0, : len(ctx)] = -100
        with torch.no_grad():
            loss = model(input_ids=ids, labels=labels).loss.item()  # mean over the completion tokens
        assert value.nll_tokens == len(cont)
        assert value.nll_sum == pytest.approx(loss * len(cont), rel=1e-5)
        assert value.perplexity == pytest.approx(math.exp(loss), rel=1e-5)


def test_batch_size_and_padding_side_invariance(default_model, items):
    model, tok = default_model.model, default_model.tokenizer
    prompts, completions = items
    one = completion_nll(model, tok, prompts, completions, batch_size=1, progress=False)
    for kwargs in ({"batch_size": 8}, {"batch_size": 8, "padding_side": "left"}, {"batch_size": "auto"}):
        other = completion_nll(model, tok, prompts, completions, progress=False, **kwargs)
        for a, b in zip(one, other):
            assert a.nll_tokens == b.nll_tokens
            assert b.nll_sum == pytest.approx(a.nll_sum, rel=1e-4)


def test_sliding_window_scores_every_token_once(default_model, items):
    model, tok = default_model.model, default_model.tokenizer
    prompts, completions = items
    full = completion_nll(model, tok, prompts[:2], completions[:2], progress=False)
    windowed = completion_nll(model, tok, prompts[:2], completions[:2], max_length=64, stride=32, progress=False)
    for f, w in zip(full, windowed):
        assert w.nll_tokens == f.nll_tokens  # nothing truncated
        assert math.isfinite(w.nll_sum)
        # less context can only make the answer harder to predict, never wildly different
        assert 0.8 * f.nll_sum < w.nll_sum < 1.5 * f.nll_sum
    # a window as long as the sequence gives the unwindowed value exactly
    long_enough = completion_nll(model, tok, prompts[:1], completions[:1], max_length=4096, progress=False)
    assert long_enough[0].nll_sum == pytest.approx(full[0].nll_sum, rel=1e-6)


def test_generation_flags_truncation_and_counts_tokens(default_model, items):
    model, tok = default_model.model, default_model.tokenizer
    prompts, _ = items
    chat = [tok.apply_chat_template([{"role": "user", "content": "Say hello."}], tokenize=False, add_generation_prompt=True)]
    out = generate(model, tok, prompts[:3] + chat, DecodingParams(max_new_tokens=6), batch_size=2, progress=False)
    for g in out:
        assert 0 < g.generated_tokens <= 6
        assert g.truncated == (g.generated_tokens == 6 and not g.text.endswith("<|im_end|>"))
        assert "<|im_end|>" not in g.text
    # greedy decoding does not depend on the batch
    alone = generate(model, tok, chat, DecodingParams(max_new_tokens=6), batch_size=1, progress=False)
    assert alone[0] == out[-1]


def test_adapter_hot_swap_on_one_base(lora_adapter, items):
    loaded = load_base("smollm2-135m-instruct", device="cpu", dtype="float32")
    base_model = loaded.model
    attach_adapters(loaded, {"ft": lora_adapter, "ft2": lora_adapter})
    assert loaded.model.base_model.model is base_model  # attached, not reloaded
    prompts, completions = items
    values = {}
    for s in ("baseline", "ft", "baseline", "ft2"):
        with system_active(loaded, s) as model:
            values.setdefault(s, []).append(completion_nll(model, loaded.tokenizer, prompts[:2], completions[:2], progress=False))
    assert values["baseline"][0] == values["baseline"][1]  # disabling adapters restores the base exactly
    assert values["ft"][0][0].nll_sum != pytest.approx(values["baseline"][0][0].nll_sum, rel=1e-6)
    assert values["ft2"][0] == values["ft"][0]  # the same weights under another name


def test_adapter_errors(tmp_path, default_model, lora_adapter):
    with pytest.raises(AdapterError, match="does not exist"):
        read_adapter("x", tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdapterError, match="no adapter_config.json"):
        read_adapter("x", tmp_path / "empty")


def test_adapter_of_another_base_is_refused(tmp_path, lora_adapter):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    tiny = LlamaForCausalLM(LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=30,
                                        num_attention_heads=4, num_key_value_heads=2))
    other = get_peft_model(tiny, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    other.save_pretrained(tmp_path / "other")
    loaded = load_base("smollm2-135m-instruct", device="cpu", dtype="float32")
    with pytest.raises(AdapterError, match="does not fit base"):
        attach_adapters(loaded, {"other": tmp_path / "other"})
    # recorded base fingerprint of the trainer's metadata
    import shutil

    shutil.copytree(lora_adapter, tmp_path / "labelled")
    (tmp_path / "labelled" / "medqa_bench.json").write_text(json.dumps({"base_model": {"reference": "meta-llama/Llama-3.2-1B-Instruct", "fingerprint": "hub:meta-llama/Llama-3.2-1B-Instruct@abc"}}))
    loaded = load_base("smollm2-135m-instruct", device="cpu", dtype="float32")
    with pytest.raises(AdapterError, match="was trained on base meta-llama"):
        attach_adapters(loaded, {"labelled": tmp_path / "labelled"})


# --------------------------------------------------------------------------------------------- scored-positions LM head


def _pairs(tok, prompts, completions):
    from medqa_bench.inference.nll import encode_pair

    pairs = [encode_pair(tok, p, c) for p, c in zip(prompts, completions)]
    return [a + b for a, b in pairs], [len(a) for a, _ in pairs]


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_lm_head_on_scored_positions_equals_full_logits(default_model, items, padding_side):
    from medqa_bench.inference.nll import _score_sequences

    model, tok = default_model.model, default_model.tokenizer
    seqs, starts = _pairs(tok, *items)
    with torch.inference_mode():
        fast = _score_sequences(model, seqs, starts, tok.pad_token_id, padding_side, "cpu")
        full = _score_sequences(model, seqs, starts, tok.pad_token_id, padding_side, "cpu", full_logits=True)
    assert fast[1] == full[1] == [len(s) - st for s, st in zip(seqs, starts)]
    for a, b in zip(fast[0], full[0]):
        assert a == pytest.approx(b, rel=1e-5)


def test_lm_head_on_scored_positions_runs_only_those_rows(default_model, items):
    from medqa_bench.inference.nll import _score_sequences

    model, tok = default_model.model, default_model.tokenizer
    seqs, starts = _pairs(tok, *items)
    shapes = []
    handle = model.get_output_embeddings().register_forward_hook(lambda m, args, out: shapes.append(tuple(out.shape)))
    try:
        with torch.inference_mode():
            _score_sequences(model, seqs[:3], starts[:3], tok.pad_token_id, "right", "cpu")
    finally:
        handle.remove()
    assert shapes == [(1, sum(len(s) - st for s, st in zip(seqs[:3], starts[:3])), model.config.vocab_size)]


def test_lm_head_on_scored_positions_with_peft_adapters(lora_adapter, items):
    """With a real LoRA adapter (non-zero B) attached by PEFT, also on the LM head, and with the adapter disabled
    (the baseline): the scored-positions path equals the full-logits path and the model's own loss."""
    from peft import LoraConfig, get_peft_model

    from medqa_bench.inference.nll import _score_sequences, encode_pair

    loaded = load_base("smollm2-135m-instruct", device="cpu", dtype="float32")
    attach_adapters(loaded, {"ft": lora_adapter})
    tok = loaded.tokenizer
    prompts, completions = items
    seqs, starts = _pairs(tok, prompts[:4], completions[:4])
    values = {}
    for system in ("ft", "baseline"):
        with system_active(loaded, system) as model, torch.inference_mode():
            fast = _score_sequences(model, seqs, starts, tok.pad_token_id, "left", "cpu")
            full = _score_sequences(model, seqs, starts, tok.pad_token_id, "left", "cpu", full_logits=True)
            values[system] = fast[0]
            for a, b in zip(fast[0], full[0]):
                assert a == pytest.approx(b, rel=1e-5)
            ctx, cont = encode_pair(tok, prompts[0], completions[0])
            ids = torch.tensor([ctx + cont])
            labels = ids.clone()
            labels[0, : len(ctx)] = -100
            loss = model(input_ids=ids, labels=labels).loss.item()
            assert fast[0][0] == pytest.approx(loss * len(cont), rel=1e-5)
    assert values["ft"][0] != pytest.approx(values["baseline"][0], rel=1e-6)  # the adapter was active

    # An adapter on the LM head itself: PEFT wraps it, the hook sits on the wrapper, the LoRA term is kept.
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(loaded.source.location, dtype=torch.float32)
    torch.manual_seed(1)
    head_model = get_peft_model(base, LoraConfig(r=4, target_modules=["lm_head", "q_proj"], task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in head_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    head_model.eval()
    with torch.inference_mode():
        fast = _score_sequences(head_model, seqs, starts, tok.pad_token_id, "right", "cpu")
        full = _score_sequences(head_model, seqs, starts, tok.pad_token_id, "right", "cpu", full_logits=True)
        with head_model.disable_adapter():
            off = _score_sequences(head_model, seqs, starts, tok.pad_token_id, "right", "cpu")
    for a, b, c in zip(fast[0], full[0], off[0]):
        assert a == pytest.approx(b, rel=1e-5)
        assert a != pytest.approx(c, rel=1e-6)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_fused_nll_rows_equal_cross_entropy(dtype):
    """The function the GPU path compiles (logsumexp - label logit, in float32) is cross-entropy of the float32
    logits: the same numbers, without a float32 copy or a log-softmax of the rows."""
    import torch
    import torch.nn.functional as F

    from medqa_bench.inference.nll import _nll_rows, _token_nll

    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(300, 5000, generator=g) * 4).to(getattr(torch, dtype))
    labels = torch.randint(0, 5000, (300,), generator=g)
    expected = F.cross_entropy(logits.float(), labels, reduction="none")
    assert torch.allclose(_nll_rows(logits, labels), expected, rtol=1e-5, atol=1e-5)
    assert torch.allclose(_token_nll(logits, labels, chunk=64), expected, rtol=1e-6, atol=1e-6)  # CPU: eager chunks


def test_cpu_nll_batches_keep_padding_small():
    from medqa_bench.inference.nll import token_batches

    lengths = [1000, 980, 700, 690, 120, 118, 117, 30, 29, 28, 27]
    batches = token_batches(lengths, "auto", 512, max_padding=0.1)
    for b in batches:
        width = max(lengths[i] for i in b)
        assert all(width - lengths[i] <= 0.1 * width for i in b)
        assert len(b) == 1 or width * len(b) <= 512
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert [4, 5, 6] in batches and [7, 8, 9, 10] in batches
    # without the padding limit, the plan is the token budget's alone (as on GPU, and as before)
    assert token_batches(lengths, "auto", 512) == token_batches(lengths, "auto", 512, max_padding=None)


def test_encode_pairs_equals_encode_pair(default_model, symptoms):
    from medqa_bench.inference.nll import encode_pairs

    tok = default_model.tokenizer
    ex = symptoms.split("test")[:40]
    for fmt in ("reference", "chat"):
        prompts, completions = [e.prompt(fmt, tok) for e in ex], [e.completion(fmt) for e in ex]
        assert encode_pairs(tok, prompts, completions) == [encode_pair(tok, p, c) for p, c in zip(prompts, completions)]


def test_mixed_adapter_batches_generate_what_each_system_generates(lora_adapter, symptoms):
    """Baseline and adapter rows in one batch (PEFT's adapter_names) give the texts each system gives alone."""
    loaded = load_base("smollm2-135m-instruct", device="cpu", dtype="float32")
    attach_adapters(loaded, {"ft": lora_adapter})
    tok = loaded.tokenizer
    prompts = [e.prompt("chat", tok) for e in symptoms.split("test")[:4]]
    dec = DecodingParams(max_new_tokens=12)
    alone = {}
    for s in ("baseline", "ft"):
        with system_active(loaded, s) as model:
            alone[s] = generate(model, tok, prompts, dec, progress=False)
    mixed = generate(loaded.model, tok, prompts * 2, dec, progress=False, adapter_names=["__base__"] * 4 + ["ft"] * 4)
    assert mixed[:4] == alone["baseline"] and mixed[4:] == alone["ft"]
    assert alone["baseline"] != alone["ft"]


def test_static_cache_generates_the_same_text(default_model, symptoms):
    """The static cache pads prompts to a multiple of 64 and fills the last batch; the texts do not change."""
    model, tok = default_model.model, default_model.tokenizer
    prompts = [e.prompt("chat", tok) for e in symptoms.split("test")[:3]]
    dec = DecodingParams(max_new_tokens=6)
    dynamic = generate(model, tok, prompts, dec, batch_size=2, progress=False)
    static = generate(model, tok, prompts, dec, batch_size=2, progress=False, cache_implementation="static")
    assert static == dynamic
