"""Read an adapter's training history: our trainer's ``training_log.jsonl`` or transformers' ``trainer_state.json``.

Both become one shape, stored by the runner as ``results["systems"][name]["training_log"]``::

    {"source": "training_log.jsonl",
     "steps":  [{"step": 10, "epoch": 0.5, "loss": 2.1, "learning_rate": 2e-4, "tokens": 5120}, ...],
     "epochs": [{"epoch": 1, "train_loss": 1.9, "eval_loss": 2.0}, ...]}
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

from ..errors import RunError
from ..storage.jsonl import parse_jsonl

_STEP_KEYS = ("step", "epoch", "loss", "learning_rate", "tokens")


def read_training_log(adapter_dir: str | os.PathLike) -> dict | None:
    """The training history of the adapter in ``adapter_dir``, or ``None`` when it has no log.

    ``training_log.jsonl`` wins over ``trainer_state.json``; the latter is looked for in the folder itself, then
    in its last ``checkpoint-N`` subfolder.
    """
    folder = Path(adapter_dir)
    jsonl = folder / "training_log.jsonl"
    if jsonl.is_file():
        return _from_jsonl(jsonl)
    state = folder / "trainer_state.json"
    if not state.is_file():
        checkpoints = sorted(
            (
                p
                for p in folder.glob("checkpoint-*/trainer_state.json")
                if re.fullmatch(r"checkpoint-\d+", p.parent.name)
            ),
            key=lambda p: int(p.parent.name.split("-")[1]),
        )
        if not checkpoints:
            return None
        state = checkpoints[-1]
    return _from_trainer_state(state)


def _from_jsonl(path: Path) -> dict:
    steps, epochs = [], []
    for row in parse_jsonl(path.read_text(encoding="utf-8"), str(path), RunError, "; the training log is damaged"):
        kind = row.get("type")
        if kind == "step":
            steps.append({k: row.get(k) for k in _STEP_KEYS})
        elif kind == "epoch":
            epochs.append(
                {"epoch": row.get("epoch"), "train_loss": row.get("train_loss"), "eval_loss": row.get("eval_loss")}
            )
    return {"source": path.name, "steps": steps, "epochs": epochs or _epochs_from_steps(steps, [])}


def _from_trainer_state(path: Path) -> dict:
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunError(f"{path}: not valid JSON ({exc}); the trainer state is damaged") from exc
    history = state.get("log_history") or []
    steps = [
        {
            "step": h.get("step"),
            "epoch": h.get("epoch"),
            "loss": h["loss"],
            "learning_rate": h.get("learning_rate"),
            "tokens": h.get("num_tokens"),
        }
        for h in history
        if "loss" in h
    ]
    evals = [h for h in history if "eval_loss" in h]
    return {"source": path.name, "steps": steps, "epochs": _epochs_from_steps(steps, evals)}


def _epoch_index(epoch: float | None) -> int | None:
    # transformers logs fractional epochs: step losses of epoch k have epoch in (k-1, k].
    if epoch is None:
        return None
    return max(1, math.ceil(round(float(epoch), 6)))


def _epochs_from_steps(steps: list[dict], evals: list[dict]) -> list[dict]:
    """Train loss per epoch as the mean of its logged step losses; eval loss as the last evaluation in the epoch."""
    train: dict[int, list[float]] = {}
    for s in steps:
        k = _epoch_index(s.get("epoch"))
        if k is not None and s.get("loss") is not None:
            train.setdefault(k, []).append(float(s["loss"]))
    evaluated = {_epoch_index(e.get("epoch")): float(e["eval_loss"]) for e in evals if e.get("epoch") is not None}
    return [
        {"epoch": k, "train_loss": sum(train[k]) / len(train[k]) if k in train else None, "eval_loss": evaluated.get(k)}
        for k in sorted(set(train) | set(evaluated))
    ]
