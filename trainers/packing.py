"""Padding-free QLoRA steps: a batch is one row of its sequences laid end to end, attended to sequence by sequence.

``training.padding_free: true`` in a recipe turns this on. A batch holds exactly the examples a padded batch would
hold (the same sampler, the same order, the same truncation), so the loss and its gradient are the padded batch's
up to rounding; what goes away is the work on padding (22% of a random batch of 16 symptoms examples at
``max_length`` 512) and the memory it takes:

    TRL's collator, ``padding_free=True``   input_ids (1, T), position_ids restarting at 0 per sequence, the labels,
                                            and ``cu_seq_lens_q/k`` / ``max_length_q/k`` computed on the host
    -> ``varlen_attention``                 registered with transformers as ``medqa_varlen``: FlashAttention-2's
                                            variable-length kernel on CUDA (PyTorch's own build), so no token attends
                                            across a sequence boundary and no masked block is computed
    -> ``LeanSFTTrainer.compute_loss``      TRL's fused, chunked LM head on the scored positions, without the per-step
                                            device-to-host reads of TRL's metrics
    -> ``LeanSFTTrainer.evaluation_loop``   the validation loss of padded and padding-free batches alike, as the
                                            harness defines it (``medqa_bench.inference.loss``: sum NLL / sum tokens)

>>> collate = padding_free_collator(pad_token_id=0)
>>> batch = collate([{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}, {"input_ids": [4, 5], "labels": [-100, 5]}])
>>> batch["input_ids"].tolist(), batch["position_ids"].tolist(), batch["cu_seq_lens_q"].tolist()
([[1, 2, 3, 4, 5]], [[0, 1, 2, 0, 1]], [0, 3, 5])

On a CPU the attention runs PyTorch's scaled-dot-product attention one sequence at a time: slow, but the same
function, which is what the tests compare against padded batches.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["ATTENTION_NAME", "varlen_attention", "use_varlen_attention", "padding_free_collator", "LeanSFTTrainer"]

ATTENTION_NAME = "medqa_varlen"


class _FlashVarlen(torch.autograd.Function):
    """Causal FlashAttention-2 over packed sequences (PyTorch's ``_flash_attention_forward/backward``).

    q: (T, Hq, D), k and v: (T, Hkv, D) with Hq a multiple of Hkv (grouped-query attention is native to the
    kernel); ``cu`` the int32 sequence starts plus the total, on the device.
    """

    @staticmethod
    def forward(ctx, q, k, v, cu, max_len: int, scale: float):
        out, lse, rng_state, unused, _ = torch.ops.aten._flash_attention_forward(
            q, k, v, cu, cu, max_len, max_len, 0.0, True, False, scale=scale
        )
        ctx.save_for_backward(q, k, v, out, lse, cu, rng_state, unused)
        ctx.max_len, ctx.scale = max_len, scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse, cu, rng_state, unused = ctx.saved_tensors
        dq, dk, dv = torch.ops.aten._flash_attention_backward(
            grad_out.contiguous(), q, k, v, out, lse, cu, cu, ctx.max_len, ctx.max_len, 0.0, True,
            rng_state, unused, scale=ctx.scale,
        )
        return dq, dk, dv, None, None, None


@torch.compiler.disable  # a loop over host-side bounds: compiled layers would recompile for each sequence count
def _sequence_by_sequence(q, k, v, cu, scale: float):
    """The same function with PyTorch's SDPA, one sequence at a time (CPU, or CUDA without flash attention)."""
    import torch.nn.functional as F

    bounds = cu.tolist()
    groups = q.shape[1] // k.shape[1]
    outs = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        qs, ks, vs = (t[start:end].transpose(0, 1) for t in (q, k, v))  # (heads, length, head_dim)
        if groups > 1:
            ks, vs = ks.repeat_interleave(groups, 0), vs.repeat_interleave(groups, 0)
        outs.append(F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scale).transpose(0, 1))
    return torch.cat(outs, 0)


def varlen_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """A transformers attention function for packed rows: (1, heads, T, head_dim) in, (1, T, heads, head_dim) out.

    The sequence boundaries come from ``cu_seq_lens_q`` and ``max_length_q``, which the padding-free collator
    computes on the host; without them there is nothing to tell one sequence from the next, so a single unpadded
    row is attended causally and anything else is refused rather than silently attended across padding.
    """
    if dropout:
        raise ValueError("padding-free attention has no attention dropout; the model's attention_dropout must be 0")
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None:
        if query.shape[0] != 1 or attention_mask is not None:
            raise ValueError(
                "padding-free attention needs packed rows (cu_seq_lens_q from the padding-free collator); "
                "it got a padded batch"
            )
        cu = torch.tensor([0, query.shape[2]], dtype=torch.int32, device=query.device)
        max_len = query.shape[2]
    else:
        max_len = int(kwargs["max_length_q"])
    if query.shape[0] != 1:
        raise ValueError(f"padding-free attention takes one packed row, not a batch of {query.shape[0]}")
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    q, k, v = (t[0].transpose(0, 1).contiguous() for t in (query, key, value))  # (T, heads, head_dim)
    cu = cu.to(device=q.device, dtype=torch.int32)
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        out = _FlashVarlen.apply(q, k, v, cu, max_len, scale)
    else:
        out = _sequence_by_sequence(q, k, v, cu, scale)
    return out.unsqueeze(0), None


def use_varlen_attention(model: Any) -> None:
    """Register :func:`varlen_attention` with transformers (once) and switch ``model`` to it.

    A name transformers has no mask function for makes it skip building a mask altogether (its rule for custom
    kernels), so no (T, T) mask is made and no packed-sequence detection reads the position ids back to the host.
    """
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, varlen_attention)
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(ATTENTION_NAME)
    else:  # transformers before set_attn_implementation
        model.config._attn_implementation = ATTENTION_NAME


def padding_free_collator(pad_token_id: int, max_length: int | None = None):
    """TRL's ``DataCollatorForLanguageModeling(padding_free=True)``, less ``seq_idx`` (for linear-attention layers).

    ``max_length``, the truncation length, replaces the longest sequence of each batch as ``max_length_q/k``: the
    kernel takes any bound, and one that never changes keeps a compiled layer from recompiling for each new value.
    """
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    trl_collate = DataCollatorForLanguageModeling(pad_token_id=pad_token_id, padding_free=True)

    def collate(examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = trl_collate(examples)
        batch.pop("seq_idx", None)
        if max_length is not None:
            batch["max_length_q"] = batch["max_length_k"] = max(max_length, batch["max_length_q"])
        return batch

    return collate


def _lean_trainer_class():
    from trl import SFTTrainer

    class LeanSFTTrainer(SFTTrainer):
        """``SFTTrainer`` whose training step does not wait for the device.

        TRL's ``compute_loss`` reads three numbers back to the host every step (its entropy, token-accuracy and
        token-count metrics), and Trainer's token count a fourth; each read waits for the queued GPU work, so the
        host cannot run ahead and launch the next kernels. The loss here is TRL's own, from the same fused LM head:
        the sum of the completion tokens' negative log-likelihoods over ``num_items_in_batch``, scaled by the number
        of processes as TRL and Trainer do. Anything beyond the plain completion-only NLL (a custom loss function,
        label smoothing, DFT, MoE auxiliary losses, returned outputs) is left to TRL's method. Trainer's own waits
        (its NaN check of each loss, its blocking batch copies) are turned off in ``trainers.qlora._overlap_options``.

        Its evaluation reports the harness's corpus loss (:meth:`evaluation_loop`, :mod:`medqa_bench.inference.loss`), so the
        recorded validation loss is the number the harness recomputes from the saved adapter.
        """

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            # From trainers.lm_head.with_scored_positions (training.logits_once): never passed on to TRL's method.
            scored = {key: inputs.pop(key) for key in ("scored_positions", "scored_targets") if key in inputs}
            if (return_outputs or self.compute_loss_func is not None or self.label_smoother is not None
                    or self.args.loss_type != "nll" or self.aux_loss_enabled):
                return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                            num_items_in_batch=num_items_in_batch)
            inputs["use_cache"] = False
            if scored:  # the positions and their number are known on the host: no device read
                outputs = model(**inputs, **scored)
                count = scored["scored_positions"].numel() if num_items_in_batch is None else num_items_in_batch
            else:
                outputs = model(**inputs, fused_lm_head=True)
                count = outputs.label_mask.sum() if num_items_in_batch is None else num_items_in_batch
            loss = -outputs.log_probs.sum() / torch.as_tensor(count).clamp(min=1)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * (self.accelerator.num_processes // self.get_tp_size())
            return loss

        def floating_point_ops(self, inputs):
            # Trainer counts the model's parameters again at every step (a walk over all of them, ~2 ms of host
            # time a step on a 1B model); the count does not change while training, so it is taken once.
            if not hasattr(self, "_non_embedding_parameters"):
                self._non_embedding_parameters = (self.model.num_parameters(exclude_embeddings=True)
                                                  if hasattr(self.model, "num_parameters") else 0)
            main_input = getattr(self.model, "main_input_name", "input_ids")
            return 6 * inputs[main_input].numel() * self._non_embedding_parameters if main_input in inputs else 0

        def _track_num_input_tokens(self, inputs):
            # A packed row has no padding, so its real tokens are its length, known on the host: no device read.
            # Padded batches, and several processes (whose counts must be summed), keep Trainer's way.
            if ("attention_mask" in inputs or self.args.world_size > 1
                    or self.args.include_num_input_tokens_seen == "no"):
                return super()._track_num_input_tokens(inputs)
            self.state.num_input_tokens_seen += inputs["input_ids"].numel()

        def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                            metric_key_prefix="eval"):
            """The validation loss as the harness defines it (:mod:`medqa_bench.inference.loss`): sum NLL / sum scored tokens over
            the whole split, not Trainer's mean of each batch's token mean.

            Each batch (padded, padding-free, with or without ``scored_positions``) is scored by
            :func:`medqa_bench.inference.loss.sequence_nll`, the harness's own LM-head gather and float32 log-softmax, per
            sequence; the per-sequence sums and counts are gathered over the processes as Trainer gathers its losses
            (``gather_for_metrics``, which drops the samples repeated to even out the last batches) and added in
            float64. Metrics: ``<prefix>_loss``, ``<prefix>_nll_tokens`` (scored tokens) and ``<prefix>_items``.
            Predictions, custom losses and DeepSpeed/FSDP keep Trainer's loop.
            """
            args = self.args
            loss_only = prediction_loss_only if prediction_loss_only is not None else args.prediction_loss_only
            if (not loss_only or description != "Evaluation" or self.compute_loss_func is not None
                    or self.label_smoother is not None or args.loss_type != "nll" or self.aux_loss_enabled
                    or self.is_deepspeed_enabled or self.is_fsdp_enabled):
                return super().evaluation_loop(dataloader, description, prediction_loss_only=prediction_loss_only,
                                               ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
            from transformers.trainer_utils import EvalLoopOutput

            from medqa_bench.inference.loss import sequence_nll

            model = self._wrap_model(self.model, training=False)
            if len(self.accelerator._models) == 0 and model is self.model:
                # evaluated before any training step: prepared as Trainer prepares it (mixed-precision autocast)
                model = self.accelerator.prepare_model(model, evaluation_mode=True)
            model.eval()
            self.callback_handler.eval_dataloader = dataloader
            nll, tokens, items = 0, 0, 0  # the sums stay on the device until the end
            with torch.no_grad():
                for inputs in dataloader:
                    inputs = self._prepare_inputs(inputs)
                    with self.compute_loss_context_manager():
                        sums, counts = sequence_nll(model, inputs)
                    sums, counts = self.accelerator.gather_for_metrics((sums, counts))
                    nll, tokens, items = nll + sums.sum(), tokens + counts.sum(), items + counts.numel()
                    self.control = self.callback_handler.on_prediction_step(args, self.state, self.control)
            tokens = int(tokens)
            metrics = {
                f"{metric_key_prefix}_loss": float(nll) / tokens if tokens else float("nan"),
                f"{metric_key_prefix}_nll_tokens": tokens,
                f"{metric_key_prefix}_items": items,
            }
            return EvalLoopOutput(predictions=None, label_ids=None, metrics=metrics, num_samples=items)

    return LeanSFTTrainer


def __getattr__(name: str):  # LeanSFTTrainer is built on first use, so importing this module does not import TRL
    if name == "LeanSFTTrainer":
        cls = _lean_trainer_class()
        globals()[name] = cls
        return cls
    raise AttributeError(name)
