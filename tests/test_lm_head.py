"""The loss's LM head projected once a step (trainers.lm_head, ``training.logits_once``).

The head is compared with TRL's fused head, which projects three times a step, on the same hidden states: the same
log-probabilities, the same gradient, two thirds of the matmul work. A training step of the real default model with
the switch is compared with one without it in tests/test_trainer.py.
"""

from __future__ import annotations

import doctest

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from trainers import lm_head
from trainers.lm_head import check_supported, linear_log_prob, with_scored_positions
from trainers.packing import padding_free_collator


def _trls(hidden, weight, targets):
    from trl.kernels import ChunkedLogProbFunction

    return ChunkedLogProbFunction.apply(hidden, weight, None, targets, 1.0, 1024, None, 1.0, ("log_probs",))[0]


def _case(dtype, n=300, h=64, v=5000, seed=0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=gen).to(dtype).requires_grad_()
    weight = (torch.randn(v, h, generator=gen) * 0.3).to(dtype)
    targets = torch.randint(0, v, (n,), generator=gen)
    upstream = torch.randn(n, generator=gen)  # any incoming gradient, not only a mean's
    return hidden, weight, targets, upstream


def _value_and_grad(fn, hidden, weight, targets, upstream):
    hidden.grad = None
    out = fn(hidden, weight, targets)
    (out * upstream).sum().backward()
    return out.detach(), hidden.grad.clone()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_log_probs_and_gradient_are_trls(dtype, monkeypatch):
    monkeypatch.setattr(lm_head, "TILE_BYTES", 64 * 5000 * 4)  # 64 tokens a block: several blocks, a partial last
    case = _case(dtype)
    ours, ours_grad = _value_and_grad(linear_log_prob, *case)
    trls, trls_grad = _value_and_grad(_trls, *case)
    assert ours.dtype == torch.float32 and ours.shape == (300,)
    assert torch.allclose(ours, trls, atol=1e-5, rtol=0)  # the same log-sum-exp; orders of summation differ
    exact = torch.log_softmax(case[0].float() @ case[1].float().t(), -1).gather(1, case[2][:, None]).squeeze(1)
    assert torch.allclose(ours, exact, atol=1e-4 if dtype == torch.float32 else 3e-2, rtol=0)
    assert ours_grad.dtype == dtype
    # fp32: the same gradient to rounding; bf16: within one bf16 step of TRL's (both accumulate in fp32)
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 8e-3}
    assert torch.allclose(ours_grad.float(), trls_grad.float(), **tol)


class _MatmulFlops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in ("mm", "addmm", "addmm_"):
            a, b = (args[0], args[1]) if name == "mm" else (args[1], args[2])
            self.flops += 2 * a.shape[0] * a.shape[1] * b.shape[1]
        return func(*args, **(kwargs or {}))


def test_the_head_is_projected_twice_a_step_where_trls_is_projected_three_times():
    case = _case(torch.float32)
    with _MatmulFlops() as ours:
        _value_and_grad(linear_log_prob, *case)
    with _MatmulFlops() as trls:
        _value_and_grad(_trls, *case)
    n, h, v = 300, 64, 5000
    assert ours.flops == 2 * (2 * n * h * v) and trls.flops == 3 * (2 * n * h * v)


def test_no_gradient_asked_no_gradient_computed():
    hidden, weight, targets, _ = _case(torch.float32)
    with _MatmulFlops() as flops, torch.no_grad():
        out = linear_log_prob(hidden, weight, targets)
    assert flops.flops == 2 * 300 * 64 * 5000 and not out.requires_grad
    with pytest.raises(ValueError, match="frozen LM head"):
        linear_log_prob(hidden, weight.clone().requires_grad_(), targets)


def test_scored_positions_are_the_shifted_labels_of_padded_and_packed_batches():
    assert doctest.testmod(lm_head).failed == 0
    examples = [{"input_ids": [1, 2, 3, 4], "labels": [-100, -100, 3, 4]}, {"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}]
    packed = with_scored_positions(padding_free_collator(pad_token_id=0))(examples)
    # position i of the row predicts label i + 1; a sequence's first token is a prompt token, so none crosses over
    assert packed["scored_positions"].tolist() == [1, 2, 4, 5]
    assert packed["scored_targets"].tolist() == [3, 4, 6, 7]
    assert packed["scored_positions"].dtype == torch.int64 and packed["scored_positions"].device.type == "cpu"


def test_a_head_that_is_not_a_plain_projection_is_refused():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, vocab_size=64)
    model = LlamaForCausalLM(config)
    with pytest.raises(ValueError, match="the head is trained"):
        check_supported(model)
    model.requires_grad_(False)  # as under PEFT: the base frozen
    check_supported(model)
    config.final_logit_softcapping = 30.0
    with pytest.raises(ValueError, match="not a plain projection.*final_logit_softcapping"):
        check_supported(LlamaForCausalLM(config).requires_grad_(False))
