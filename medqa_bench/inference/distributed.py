"""Several processes, one run: ``medqa-bench run`` and ``train`` under ``accelerate launch`` (or ``torchrun``).

Nothing here imports accelerate or torch until a launcher has set ``WORLD_SIZE`` above 1: a plain run never
pays for it. :func:`launched` returns ``None`` in a single process, so callers keep their single-process code.

**Evaluation.** Each process loads the base (and adapters) on its own device. Cache look-ups and the batch plan
are made once, by rank 0, and sent to every rank, so all ranks agree on what is left to compute. The plan is the
one a single process would follow (``inference.token_batches`` over the same items, the same budget), cut into
*whole* batches dealt round-robin to the ranks: every item is computed in the very batch it would have had in a
single process, so its padding and batch-mates are the same and its NLL and generation are the same (bit for bit
on the same device and thread count; CPU thread counts and GPU kernels may move NLLs in the last digits).
Results are gathered to every rank in the original order; rank 0 alone scores and writes the run folder while
the others wait for it and return the same folder.

**Training.** Trainer/TRL run DDP by themselves when launched; each process puts its base on its own device
(``cuda:<local rank>``; CPU stays CPU) and only the main process writes the log, metadata and adapter folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Sequence, TypeVar

from ..errors import RunError, SpecError

T = TypeVar("T")

#: Collectives wait this long: non-main ranks wait for rank 0 to score, analyse and render the report, which can
#: take much longer than NCCL's 10-minute default. A crashed rank is still noticed at once by the launcher.
DEFAULT_TIMEOUT_S = 6 * 3600


def world_size() -> int:
    """Processes in the launch (``WORLD_SIZE``, set by accelerate launch and torchrun); 1 when not launched."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


@dataclass(frozen=True)
class ProcessGroup:
    """This process's place in a multi-process launch, and the few collectives a run needs."""

    rank: int
    world_size: int
    local_rank: int
    device: str  # "cuda:<local rank>" or "cpu"
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> dict[str, Any]:
        return {"world_size": self.world_size, "backend": self.backend, "device_type": self.device.split(":")[0]}

    # ------------------------------------------------------------------------------------------ collectives

    def barrier(self) -> None:
        from accelerate import PartialState

        PartialState().wait_for_everyone()

    def from_main(self, fn: Callable[[], T]) -> T:
        """``fn()`` evaluated on rank 0 only, its value sent to every rank (look-ups, plans: one truth)."""
        from accelerate.utils import broadcast_object_list

        box = [fn() if self.is_main else None]
        return broadcast_object_list(box, from_process=0)[0]

    def main_first(self, fn: Callable[[], T]) -> T:
        """``fn()`` on rank 0, then on the others: one process converts a GGUF file or creates a cache file."""
        if not self.is_main:
            self.barrier()
            return fn()
        try:
            return fn()
        finally:  # on failure too: the others then meet the same error themselves instead of hanging
            self.barrier()

    def main_only(self, fn: Callable[[], T]) -> T:
        """``fn()`` on rank 0 (writing the outputs) while the others wait; every rank returns its value.

        A failure on rank 0 is sent to the others, which raise RunError instead of waiting for the timeout.
        """
        if not self.is_main:
            return self.wait_for_main()
        try:
            value = fn()
        except BaseException as exc:
            self.release(error=f"{type(exc).__name__}: {exc}")
            raise
        self.release(value)
        return value

    def release(self, value: Any = None, *, error: str | None = None) -> None:
        """Rank 0: let the ranks blocked in :meth:`wait_for_main` go, with ``value`` or an error."""
        from accelerate.utils import broadcast_object_list

        broadcast_object_list([(error, value)], from_process=0)

    def wait_for_main(self) -> Any:
        """Non-main ranks: block until rank 0 calls :meth:`release`; return its value or raise its error."""
        from accelerate.utils import broadcast_object_list

        error, value = broadcast_object_list([None], from_process=0)[0]
        if error is not None:
            raise RunError(f"rank {self.rank}: stopped because rank 0 failed ({error.splitlines()[0][:300]})")
        return value

    def compute_sharded(self, n: int, batches: Sequence[Sequence[int]], compute: Callable[[list[int]], list[T]]) -> list[T]:
        """Values for positions ``0..n-1``: this rank computes its whole batches with ``compute(positions)``
        (positions ascending, so ``token_batches`` rebuilds the same batches), then all ranks gather all values."""
        from accelerate.utils import gather_object

        mine = shard(batches, self.rank, self.world_size)
        values = compute(mine) if mine else []
        if len(values) != len(mine):
            raise RunError(f"rank {self.rank}: {len(values)} results for {len(mine)} items")
        out: list[Any] = [None] * n
        for position, value in gather_object(list(zip(mine, values))):
            out[position] = value
        missing = [i for i, v in enumerate(out) if v is None]
        if missing:
            raise RunError(f"items {missing[:5]} were computed by no rank (the ranks' batch plans differ)")
        return out


def launched(device: str = "auto") -> ProcessGroup | None:
    """The process group of a multi-process launch, or ``None`` when running alone (nothing is imported then).

    ``device``: ``auto``/``cuda`` give each process ``cuda:<local rank>`` (or CPU under ``accelerate launch --cpu``
    or without CUDA); ``cpu`` keeps every process on the CPU (gloo). A single ``cuda:N`` is refused: each process
    picks its own GPU.
    """
    if world_size() <= 1:
        return None
    import torch
    from accelerate import PartialState

    if device.startswith("cuda:"):
        raise SpecError(f"device '{device}' names one GPU, but under a multi-process launch each process takes its "
                        "own (cuda:<local rank>); use --device auto or cuda")
    cpu = device == "cpu" or _env_flag("ACCELERATE_USE_CPU") or not torch.cuda.is_available()
    if device == "cuda" and cpu:
        raise SpecError("device 'cuda' requested but this launch runs on CPU (accelerate launch --cpu, or no CUDA)")
    # PartialState also reads the launcher's variables; it is the one Trainer uses, so both agree on the group.
    state = PartialState(cpu=cpu, timeout=timedelta(seconds=int(os.environ.get("MEDQA_BENCH_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))))
    dev = "cpu" if cpu else f"cuda:{state.local_process_index}"
    return ProcessGroup(state.process_index, state.num_processes, state.local_process_index, dev, str(state.backend))


def shard(batches: Sequence[Sequence[int]], rank: int, world: int) -> list[int]:
    """Positions of the whole batches ``rank, rank + world, ...`` of a plan (longest batches first), ascending.

    Round-robin keeps the ranks' token loads close; whole batches keep each item's batch-mates.

    >>> shard([[0, 3], [1, 4], [2], [5]], 0, 2)
    [0, 2, 3]
    """
    return sorted(p for b in batches[rank::world] for p in b)


# --------------------------------------------------------------------------------------------- batch plans
# These repeat how inference.completion_nll and generation.generate group their items (same lengths, same
# token_batches, same budget), so that a rank given whole batches of the plan rebuilds exactly those batches.


def nll_batches(model: Any, tokenizer: Any, prompts: Sequence[str], completions: Sequence[str], *,
                batch_size: int | str, max_length: int) -> list[list[int]]:
    """``completion_nll``'s batches over these items; a sequence longer than ``max_length`` is a batch alone
    (it is scored by the sliding window, item by item)."""
    from .nll import default_token_budget, encode_pairs, nll_padding_limit, token_batches

    lengths = [sum(map(len, pair)) for pair in encode_pairs(tokenizer, prompts, completions)]
    short = [i for i, n in enumerate(lengths) if n <= max_length]
    long = [[i] for i, n in enumerate(lengths) if n > max_length]
    plan = [[short[j] for j in b] for b in token_batches([lengths[i] for i in short], batch_size,
                                                          default_token_budget(model), nll_padding_limit(model))]
    return plan + long


def generation_batches(model: Any, tokenizer: Any, prompts: Sequence[str], *, batch_size: int | str,
                       max_new_tokens: int) -> list[list[int]]:
    """``generate``'s batches over these prompts (prompt tokens plus the generation budget)."""
    from .nll import default_token_budget, token_batches

    lengths = [len(tokenizer(p, add_special_tokens=True)["input_ids"]) + max_new_tokens for p in prompts]
    return token_batches(lengths, batch_size, default_token_budget(model, for_generation=True))
