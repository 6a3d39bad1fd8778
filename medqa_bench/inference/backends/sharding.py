"""Several processes, one backend: :class:`ShardedBackend` deals a backend's work across the ranks of an
``accelerate launch`` (or ``torchrun``) and gathers it back in order (see :mod:`medqa_bench.inference.distributed`).

The batch plan is the one a single process follows (:meth:`Backend.batches` over one system's requests), made once by
rank 0 and cut into *whole* batches dealt round-robin to the ranks: every item is computed in the very batch it would
have had in one process, so its padding and batch-mates, and so its NLL and generation, are the same. Requests are
sent to the backend one system at a time, so a backend never mixes systems in a batch here.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from . import Backend, OnResult, by_system


class ShardedBackend:
    """``backend`` with its :meth:`generate` and :meth:`completion_nll` shared by the ranks of ``ranks`` (a
    :class:`~medqa_bench.inference.distributed.ProcessGroup`); every rank returns every value. Other members are the backend's."""

    def __init__(self, backend: Backend, ranks: Any):
        self.backend, self.ranks = backend, ranks

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)

    def generate(self, requests: Sequence[Any], *, progress: bool = False, on_result: OnResult | None = None) -> list:
        return self._sharded("generate", requests, self.backend.generate, progress, on_result)

    def completion_nll(self, requests: Sequence[Any], *, progress: bool = False,
                       on_result: OnResult | None = None) -> list:
        return self._sharded("nll", requests, self.backend.completion_nll, progress, on_result)

    def _sharded(self, kind: str, requests: Sequence[Any], compute: Callable[..., list], progress: bool,
                 on_result: OnResult | None) -> list:
        out: list[Any] = [None] * len(requests)
        for _, positions in by_system(requests):
            group = [requests[i] for i in positions]
            plan = self.ranks.from_main(lambda: self.backend.batches(kind, group))

            def mine(part: list[int]) -> list:  # part: positions in group, whole batches of the plan
                report = None if on_result is None else (lambda j, v: on_result(positions[part[j]], v))
                return compute([group[p] for p in part], progress=progress, on_result=report)

            for i, value in zip(positions, self.ranks.compute_sharded(len(group), plan, mine)):
                out[i] = value
        return out
