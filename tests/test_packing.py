"""Padding-free rows and the host-side speed switches of the trainer (trainers.packing, trainers.speedups).

The attention is compared with PyTorch's SDPA on the same sequences padded and masked, forward and backward; the
collator's rows with the examples they come from. Training with the switches on is compared with padded training
of the real default model in tests/test_trainer.py.
"""

from __future__ import annotations

import pytest
import torch

from trainers.packing import padding_free_collator, varlen_attention


class _Attention(torch.nn.Module):  # what a transformers attention function receives as `module`
    is_causal = True


def _packed_and_padded(lengths, heads=4, kv_heads=2, dim=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    total, width = sum(lengths), max(lengths)
    q, k, v = (torch.randn(1, h, total, dim, generator=gen, dtype=torch.float64) for h in (heads, kv_heads, kv_heads))
    padded = [torch.zeros(len(lengths), t.shape[1], width, dim, dtype=torch.float64) for t in (q, k, v)]
    start = 0
    for row, n in enumerate(lengths):
        for src, dst in zip((q, k, v), padded):
            dst[row, :, :n] = src[0, :, start:start + n]
        start += n
    return (q, k, v), padded


def _reference(padded, lengths):
    """SDPA on the padded batch: causal within each row, padding keys masked out, GQA heads repeated."""
    q, k, v = padded
    width = q.shape[2]
    keep = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]  # (batch, key)
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    mask = causal[None, None] & keep[:, None, None, :]
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (batch, heads, width, dim)


def test_varlen_attention_equals_masked_sdpa_on_the_padded_batch():
    lengths = [5, 1, 9, 3]
    (q, k, v), padded = _packed_and_padded(lengths)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    for t in (q, k, v, *padded):
        t.requires_grad_()
    out, weights = varlen_attention(_Attention(), q, k, v, None, scaling=8 ** -0.5, cu_seq_lens_q=cu,
                                    cu_seq_lens_k=cu, max_length_q=512, max_length_k=512)
    assert weights is None and out.shape == (1, sum(lengths), 4, 8)  # (1, tokens, heads, head_dim)
    ref = _reference(padded, lengths)
    rows = torch.cat([ref[i, :, :n].transpose(0, 1) for i, n in enumerate(lengths)])  # real positions only
    torch.testing.assert_close(out[0], rows, rtol=1e-10, atol=1e-10)

    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out.backward(grad)
    padded_grad = torch.zeros_like(ref)
    start = 0
    for i, n in enumerate(lengths):
        padded_grad[i, :, :n] = grad[0, start:start + n].transpose(0, 1)
        start += n
    ref.backward(padded_grad)
    start = 0
    for i, n in enumerate(lengths):  # every packed token's gradient is its padded twin's
        for packed_t, padded_t in zip((q, k, v), padded):
            torch.testing.assert_close(packed_t.grad[0, :, start:start + n], padded_t.grad[i, :, :n], rtol=1e-10, atol=1e-10)
        start += n


def test_varlen_attention_without_boundaries_takes_one_unpadded_row_only():
    (q, k, v), padded = _packed_and_padded([6])
    out, _ = varlen_attention(_Attention(), q, k, v, None, scaling=None)
    torch.testing.assert_close(out[0], _reference(padded, [6])[0].transpose(0, 1))
    (q2, k2, v2), _ = _packed_and_padded([3, 3])
    batch = [torch.cat([t, t]) for t in (q2, k2, v2)]  # two rows, no boundaries: could be padded
    with pytest.raises(ValueError, match="needs packed rows"):
        varlen_attention(_Attention(), *batch, None)
    with pytest.raises(ValueError, match="attention dropout"):
        varlen_attention(_Attention(), q, k, v, None, dropout=0.1)


def test_collator_lays_the_examples_end_to_end_with_a_constant_bound():
    collate = padding_free_collator(pad_token_id=0, max_length=512)
    examples = [{"input_ids": [5, 6, 7, 8], "labels": [-100, -100, 7, 8]}, {"input_ids": [9, 10], "labels": [-100, 10]}]
    batch = collate(examples)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9, 10]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1]]
    assert batch["labels"].tolist() == [[-100, -100, 7, 8, -100, 10]]  # no token predicts across a boundary
    assert batch["cu_seq_lens_q"].tolist() == batch["cu_seq_lens_k"].tolist() == [0, 4, 6]
    assert batch["max_length_q"] == batch["max_length_k"] == 512  # the same for every batch: no recompiles
    assert "attention_mask" not in batch and "seq_idx" not in batch
    assert padding_free_collator(pad_token_id=0)(examples)["max_length_q"] == 4  # TRL's own value without a bound


def test_compile_decoder_layers_compiles_each_layer_in_place_with_eagers_roundings():
    from transformers import LlamaConfig, LlamaForCausalLM

    from trainers.speedups import compile_decoder_layers, decoder_layers

    def tiny():
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                             num_attention_heads=2, num_key_value_heads=1)
        return LlamaForCausalLM(config).to(torch.bfloat16).eval()

    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        eager = tiny()(ids).logits
    model = tiny()
    torch._dynamo.reset()
    assert compile_decoder_layers(model) == 3
    layers = decoder_layers(model)
    assert len(layers) == 3 and all(layer._compiled_call_impl is not None for layer in layers)
    assert model.model.norm._compiled_call_impl is None  # only the repeated blocks
    with torch.no_grad():
        compiled = model(ids).logits
    # Inductor's fused kernels keep eager's bf16 rounding after each op (by default they keep fp32 intermediates,
    # and these logits differ by up to 4e-3): the compiled layers compute exactly eager's values
    assert torch.equal(compiled, eager)


def test_compiled_padding_free_layers_compile_once_for_any_number_of_sequences():
    """Off CUDA the packed row is attended sequence by sequence, a loop over host-side bounds; the compiled layers
    leave that loop to eager so that a batch with another number of sequences does not recompile them."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from trainers.packing import use_varlen_attention
    from trainers.speedups import compile_decoder_layers

    def tiny():
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=2, num_key_value_heads=1)
        model = LlamaForCausalLM(config)
        use_varlen_attention(model)
        return model

    collate = padding_free_collator(pad_token_id=0, max_length=64)
    g = torch.Generator().manual_seed(1)
    batches = []
    for n in (2, 3, 4, 2):
        lengths = torch.randint(5, 30, (n,), generator=g).tolist()
        batches.append(collate([{"input_ids": (ids := torch.randint(1, 64, (n_,), generator=g).tolist()),
                                 "labels": ids} for n_ in lengths]))

    def losses(model, check_recompiles=False):
        out = []
        for i, batch in enumerate(batches):
            with torch._dynamo.config.patch(error_on_recompile=check_recompiles and i > 0):
                loss = model(**batch).loss
                loss.backward()
            out.append(loss.item())
        return out

    eager = losses(tiny())
    compiled = tiny()
    torch._dynamo.reset()
    compile_decoder_layers(compiled)
    assert losses(compiled, check_recompiles=True) == pytest.approx(eager, rel=1e-5)
