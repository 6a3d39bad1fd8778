"""Inference: what answers a run's language-model rows.

- :mod:`~medqa_bench.inference.systems`, :mod:`~medqa_bench.inference.rows`: a row (:class:`System`), and the rows a
  spec plans;
- :mod:`~medqa_bench.inference.backends`: the backend protocol, its registry, caching and sharding wrappers, the
  transformers and openai backends;
- :mod:`~medqa_bench.inference.models`, :mod:`~medqa_bench.inference.weight_files`: a model resolved, its base
  loaded once, adapters attached;
- :mod:`~medqa_bench.inference.generation`: greedy generation with stop sequences;
- :mod:`~medqa_bench.inference.nll`, :mod:`~medqa_bench.inference.loss`: completion NLL, and the one definition of
  the loss the trainer and the harness share;
- :mod:`~medqa_bench.inference.distributed`: the processes of a multi-GPU launch.

``medqa_bench.inference.completion_nll`` and the other names of :mod:`~medqa_bench.inference.nll` are importable from
here.
"""

from .nll import CompletionNLL, completion_nll  # noqa: F401


def __getattr__(name: str):
    """Every other name of :mod:`medqa_bench.inference.nll` (the module this package was before it was a package)."""
    from . import nll

    try:
        return getattr(nll, name)
    except AttributeError:
        raise AttributeError(f"module 'medqa_bench.inference' has no attribute '{name}'") from None
