"""Trainer callbacks of a QLoRA run: the ``training_log.jsonl`` writer, the step clock behind tokens/s, and the
trackers ``training.report_to`` sends the same logged metrics to (Trainer's own integrations).

Imported by :mod:`trainers.qlora` inside ``train()``: this module imports transformers at its top.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from medqa_bench.storage import atomic


class TrainingLog(TrainerCallback):
    """Append ``step`` and ``epoch`` records to ``training_log.jsonl`` as training goes.

    ``epoch.train_loss`` is the mean of the logged step losses of that epoch (each is Trainer's mean over its
    logging window); ``tokens`` is the running count of real (non-padding) input tokens.
    """

    def __init__(self, path: Path, resume_step: int):
        self.path = path
        rows = []
        if resume_step and path.exists():
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            rows = [r for r in rows if r.get("step", 0) <= resume_step]  # the steps after it are re-run
        self.rows = rows
        atomic.write_jsonl(path, rows)

    def _write(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" in logs and not any(k.startswith("eval_") for k in logs):
            self._write(
                {
                    "type": "step",
                    "step": state.global_step,
                    "epoch": round(float(state.epoch or 0), 6),
                    "loss": float(logs["loss"]),
                    "learning_rate": float(logs.get("learning_rate", 0.0)),
                    "tokens": int(state.num_input_tokens_seen),
                }
            )

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        epoch = epoch_index(state.epoch)
        losses = [r["loss"] for r in self.rows if r["type"] == "step" and epoch_index(r["epoch"]) == epoch]
        self._write(
            {
                "type": "epoch",
                "epoch": epoch,
                "step": state.global_step,
                "train_loss": sum(losses) / len(losses) if losses else None,
                "eval_loss": (metrics or {}).get("eval_loss"),
            }
        )


class StepClock(TrainerCallback):
    """Time spent in optimizer steps (evaluation and checkpointing excluded) and real tokens seen.

    The device is synchronised only where a timed interval opens or closes (the first step, after an evaluation or
    a save, the end of an epoch and of training), never every step: a per-step wait would keep the host from
    queueing the next step's kernels while the GPU still works on this one.
    """

    def __init__(self, cuda: bool):
        self.cuda, self.seconds, self.tokens_start, self.tokens_end, self._t = cuda, 0.0, 0, 0, None

    def _now(self):
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        return time.perf_counter()

    def _close(self):
        if self._t is not None:
            self.seconds += self._now() - self._t
        self._t = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.tokens_start = self.tokens_end = state.num_input_tokens_seen

    def on_step_begin(self, args, state, control, **kwargs):
        if self._t is None:
            self._t = self._now()

    def on_step_end(self, args, state, control, **kwargs):
        self.tokens_end = state.num_input_tokens_seen
        # DefaultFlowCallback, which runs first, has just said whether an evaluation or a save follows this step
        if control.should_evaluate or control.should_save or control.should_training_stop:
            self._close()

    def on_epoch_end(self, args, state, control, **kwargs):
        self._close()  # an epoch-end evaluation or save may follow

    def on_train_end(self, args, state, control, **kwargs):
        self._close()
        self.tokens_end = state.num_input_tokens_seen


def epoch_index(epoch: float | None) -> int:
    """Epoch 1 holds the steps with Trainer epoch in (0, 1], epoch 2 those in (1, 2], and so on."""
    return max(1, math.ceil(float(epoch or 0) - 1e-6))


#: ``training.report_to`` values: Trainer's integration, how to tell it is installed, what to install, where it writes.
TRACKERS = {
    "tensorboard": ("is_tensorboard_available", "pip install tensorboardX (or tensorboard)",
                    "event files in <adapter>/runs/ (tensorboard --logdir <adapter>/runs)"),
    "wandb": ("is_wandb_available", "pip install wandb",
              "an offline run in ./wandb/ unless WANDB_MODE says otherwise (wandb sync uploads it)"),
    "mlflow": ("is_mlflow_available", "pip install mlflow", "./mlruns/ unless MLFLOW_TRACKING_URI says otherwise"),
}


def report_to(names: tuple[str, ...] | list[str]) -> list[str] | str:
    """Trainer's ``report_to`` for the recipe's ``training.report_to``, checked before any weight loads: each name a
    tracker of :data:`TRACKERS` whose package is installed (else a one-line SpecError saying what to install).
    Weights & Biases runs offline unless ``WANDB_MODE`` is set: runs here are offline and reproducible."""
    from transformers import integrations

    from medqa_bench.errors import SpecError

    names = list(dict.fromkeys(names))
    for name in names:
        if name not in TRACKERS:
            raise SpecError(f"recipe key 'training.report_to': unknown tracker '{name}'; choose from "
                            f"{', '.join(TRACKERS)} (or leave it empty)")
        check, install, _ = TRACKERS[name]
        if not getattr(integrations, check)():
            raise SpecError(f"recipe key 'training.report_to' names {name}, which is not installed: {install}")
    if "wandb" in names:
        os.environ.setdefault("WANDB_MODE", "offline")
    return names or "none"
