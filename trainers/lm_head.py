"""The loss's LM head projected once a step: its gradient is taken in the forward pass, not recomputed.

``training.logits_once: true`` in a recipe turns this on. TRL's fused head (``trl.trainer.utils.add_fused_lm_head``)
projects the scored hidden states through the vocabulary three times a step: once in the forward pass for the
log-probabilities, and twice in the backward pass (the logits again, then the gradient of the hidden states). Each
token's log-probability depends on its own hidden state only, so the gradient of that log-probability with respect
to the hidden state can be computed while the token's full row of logits is at hand, in the forward pass; the
backward pass then scales it by the incoming gradient. Two vocabulary-sized products a step instead of three, with
TRL's own Triton kernels folding the logits (the same online log-sum-exp in the same order, so the same
log-probabilities) and the gradient accumulated in fp32 as TRL does.

The scored positions also come from the host: the collator lists them (``with_scored_positions``), so the forward
pass selects them with an index whose length the host knows. TRL selects them with a boolean mask
(``hidden_states[mask]``), which reads the mask's count back from the device each step, so the host cannot queue the
LM head and the backward pass before the forward pass has run.

>>> collate = with_scored_positions(lambda rows: {"labels": torch.tensor(rows)})
>>> batch = collate([[-100, -100, 7, 8], [-100, 5, 6, -100]])
>>> batch["scored_positions"].tolist(), batch["scored_targets"].tolist()
([1, 2, 4, 5], [7, 8, 5, 6])

Positions index the batch's hidden states flattened to (batch x length, hidden); position ``i`` predicts the label
at ``i + 1`` of the same row, as in every causal LM loss.
"""

from __future__ import annotations

import types
from typing import Any, Callable

import torch

__all__ = ["LinearLogProb", "linear_log_prob", "with_scored_positions", "install_logits_once", "check_supported", "TILE_BYTES"]

# The logits of one block of tokens over the whole vocabulary are kept at once (the gradient needs their log-sum-exp
# before it can be taken); 256 MiB is the size of one of TRL's tiles (4,096 tokens x 32,768 columns in bf16).
TILE_BYTES = 256 * 2**20


def _trl_kernels():
    """TRL's tile folds: Triton kernels on CUDA, the same maths in torch elsewhere (TRL 1.16's ``trl.kernels``)."""
    from trl.kernels import chunked_logprob as k

    return k


class LinearLogProb(torch.autograd.Function):
    """log p(target | hidden) under ``softmax(hidden @ weight.T)``, per token, without keeping any logits.

    hidden: (N, H); weight: (V, H), frozen; targets: (N,) int64. Returns (N,) fp32 log-probabilities. The forward
    pass also computes d log p / d hidden for each token (fp32, N x H) and keeps it; the backward pass multiplies it
    by the incoming gradient (``with_grad=False``: no gradient, one product). Compute dtype: autocast's when it is
    on, else the hidden states' (as in TRL's head).
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, with_grad: bool = True):
        if weight.requires_grad:
            raise ValueError("LinearLogProb takes a frozen LM head; a trained one needs its gradient (TRL's head)")
        k = _trl_kernels()
        device, (n_tokens, _), vocab = hidden.device, hidden.shape, weight.shape[0]
        dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else hidden.dtype
        weight = weight.to(dtype)
        block = max(1, min(n_tokens, TILE_BYTES // (vocab * weight.element_size())))
        triton = k._use_triton(device)
        plain = {"logit_scale": 1.0, "softcap": 1.0, "inv_t": 1.0, "HAS_SOFTCAP": False}
        no_extras = {f"HAS_{name.upper()}": False for name in k.OPTIONAL_OUTPUTS}

        log_probs = torch.empty(n_tokens, device=device, dtype=torch.float32)
        grad_hidden = torch.zeros(hidden.shape, device=device, dtype=torch.float32) if with_grad else None
        ones = torch.ones(min(block, n_tokens), device=device, dtype=torch.float32)
        unused = torch.zeros(min(block, n_tokens), device=device, dtype=torch.float32)  # TRL's extra outputs' sums
        tiles = torch.empty((min(block, n_tokens), vocab), device=device, dtype=dtype)
        for start in range(0, n_tokens, block):
            end = min(start + block, n_tokens)
            n = end - start
            tile, rows = tiles[:n], hidden[start:end].to(dtype)
            torch.mm(rows, weight.t(), out=tile)
            running_max = torch.full((n,), float("-inf"), device=device, dtype=torch.float32)
            sum_exp = torch.zeros(n, device=device, dtype=torch.float32)
            target_logit = torch.zeros(n, device=device, dtype=torch.float32)
            fold = k._forward_kernel[(n,)] if triton else k._forward_tile
            fold(tile, tile.stride(0), targets[start:end], running_max, sum_exp, *[unused[:n]] * 4,
                 target_logit, 0, vocab, BLOCK_SIZE=k._BLOCK_SIZE, **no_extras, **plain)
            log_z = running_max + torch.log(sum_exp)
            log_probs[start:end] = target_logit - log_z
            if grad_hidden is None:
                continue
            # The tile becomes d log p_target / d logits (1[j = target] - p_j), then its product with the head.
            unfold = k._backward_kernel[(n, (vocab + k._BLOCK_SIZE - 1) // k._BLOCK_SIZE)] if triton else k._backward_tile
            unfold(tile, tile.stride(0), targets[start:end], log_z, log_z, ones[:n], ones[:n], 0, vocab,
                   HAS_LOGPROB_GRAD=True, HAS_ENTROPY_GRAD=False, BLOCK_SIZE=k._BLOCK_SIZE, **plain)
            k._addmm_fp32(grad_hidden[start:end], tile, weight)
        ctx.save_for_backward(grad_hidden)
        ctx.hidden_dtype = hidden.dtype
        return log_probs

    @staticmethod
    def backward(ctx, grad_log_probs: torch.Tensor):  # type: ignore[override]
        (grad_hidden,) = ctx.saved_tensors
        if grad_hidden is None:
            return None, None, None, None
        return (grad_log_probs.float().unsqueeze(-1) * grad_hidden).to(ctx.hidden_dtype), None, None, None


def linear_log_prob(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """:class:`LinearLogProb`, with the hidden states' gradient computed only where autograd will ask for it."""
    return LinearLogProb.apply(hidden, weight, targets, torch.is_grad_enabled() and hidden.requires_grad)


def with_scored_positions(collate: Callable[[list], dict[str, Any]]) -> Callable[[list], dict[str, Any]]:
    """Wrap a collator so each batch also lists, on the host, the positions its loss scores and their targets.

    ``scored_positions``: int64 indices into the batch's hidden states flattened to (batch x length); position
    ``i`` of a row is scored when that row's label at ``i + 1`` is not -100. ``scored_targets``: those labels.
    """

    def collate_scored(examples: list) -> dict[str, Any]:
        batch = collate(examples)
        labels = batch["labels"]
        shifted = torch.full_like(labels, -100)
        shifted[:, :-1] = labels[:, 1:]  # the last position of a row predicts nothing
        flat = shifted.reshape(-1)
        positions = torch.nonzero(flat != -100).squeeze(-1)
        batch["scored_positions"] = positions
        batch["scored_targets"] = flat[positions]
        return batch

    return collate_scored


def check_supported(model: Any) -> None:
    """Raise ValueError unless ``model``'s LM head is a frozen plain projection: no bias, soft-capping, logit scaling."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    head = model.get_output_embeddings()
    odd = [name for name in ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
                             "logits_scaling") if getattr(config, name, None) not in (None, 1, 1.0)]
    if head is None or getattr(head, "bias", None) is not None:
        odd.append("lm_head bias")
    elif head.weight.requires_grad:
        odd.append("the head is trained")
    if odd:
        raise ValueError(f"its LM head is not a plain projection ({', '.join(odd)})")


def install_logits_once(model: Any) -> None:
    """Let ``model`` (a PEFT or plain causal LM) score ``scored_positions`` with :class:`LinearLogProb`.

    ``model(..., scored_positions=P, scored_targets=T)`` then returns TRL's ``FusedCausalLMOutput`` with
    ``log_probs`` of shape (len(P),); any other call runs the forward it had (TRL's fused head, or the model's own).
    The call goes through the outer model, so DDP's and PEFT's wrappers see it as any forward pass.
    """
    try:
        from trl.trainer.utils import FusedCausalLMOutput

        _trl_kernels()
    except ImportError:
        raise ValueError("it needs TRL's fused LM head kernels (trl.kernels.chunked_logprob, TRL 1.16 or later)") from None
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    check_supported(base)
    previous = base.forward

    def forward(self, *args, scored_positions=None, scored_targets=None, **kwargs):
        if scored_positions is None:
            return previous(*args, **kwargs)
        kwargs.pop("labels", None)
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state
        head = self.get_output_embeddings()
        hidden = hidden.reshape(-1, hidden.shape[-1]).to(head.weight.device)
        scored = hidden.index_select(0, scored_positions.to(hidden.device))
        log_probs = linear_log_prob(scored, head.weight, scored_targets.to(hidden.device))
        return FusedCausalLMOutput(log_probs=log_probs)

    base.forward = types.MethodType(forward, base)
