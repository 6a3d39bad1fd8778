"""Data and items: the evaluated data and its training corpus, the items a run draws, and what is drawn from them
without a model (reference rows, the leakage audit, retrieval passages).

- :mod:`~medqa_bench.data.dataset`: load, validate, filter by qtype, split, format prompts -> :class:`Example`;
- :mod:`~medqa_bench.data.readers`, :mod:`~medqa_bench.data.medquad`, :mod:`~medqa_bench.data.fetch`: files in,
  MedQuAD fetched and converted;
- :mod:`~medqa_bench.data.items`: the seeded item draw (runner and trainer);
- :mod:`~medqa_bench.data.training_corpus`, :mod:`~medqa_bench.data.adapter_meta`: the training corpus, and what an
  adapter's ``medqa_bench.json`` records of it;
- :mod:`~medqa_bench.data.reference_rows`, :mod:`~medqa_bench.data.audit`: rows and audits from the training corpus;
- :mod:`~medqa_bench.data.rag`, :mod:`~medqa_bench.data.retrieval`, :mod:`~medqa_bench.data.encoders`: passages.

``medqa_bench.data.load_dataset`` and the other names of :mod:`~medqa_bench.data.dataset` are importable from here.
"""

from .dataset import (  # noqa: F401
    PROMPT_FORMATS, SPLITS, DataSpec, Dataset, Example, chat_messages, format_prompt, load_dataset)


def __getattr__(name: str):
    """Every other name of :mod:`medqa_bench.data.dataset` (the module this package was before it was a package)."""
    from . import dataset

    try:
        return getattr(dataset, name)
    except AttributeError:
        raise AttributeError(f"module 'medqa_bench.data' has no attribute '{name}'") from None
