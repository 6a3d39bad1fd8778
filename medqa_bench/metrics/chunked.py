"""Embedding similarity over chunks: the whole answer read by all-MiniLM-L6-v2, not its first 256 word pieces.

``embedding_similarity`` truncates every text to the model's ``max_seq_length`` (256 word pieces for MiniLM), so
the rest of a long answer never counts; half of MedQuAD's longer answers run past it. These metrics cut each text
into chunks the model reads whole and combine the chunks:

- **chunks**: the text's word pieces (the model folder's tokenizer, no special tokens), cut into consecutive windows
  of ``chunk_length - 2`` pieces (each window then gets the tokenizer's ``[CLS]``/``[SEP]``, so a chunk is
  ``chunk_length`` pieces, default the folder's ``max_seq_length``: 256); with ``overlap`` > 0 each window starts
  ``overlap`` pieces before the previous one ended. The first chunk is exactly what ``embedding_similarity`` reads.
  Each chunk is encoded as the direct encoder of :mod:`medqa_bench.metrics.embedding` encodes a text (the
  model's last hidden states, masked mean); ``n_c`` is its number of pieces, special ones included.
- ``embedding_chunked_mean``: one vector per text, the mean of the hidden states of all its chunks' pieces
  (each chunk weighted by ``n_c``), L2-normalised; the score is the cosine of the two vectors, clipped to [0, 1].
  A text of one chunk gets exactly ``embedding_similarity``'s vector, so for two texts within 256 pieces the two
  metrics are equal.
- ``embedding_chunked_maxsim``: BERTScore's greedy matching with chunks for tokens. With ``u_c`` the unit vector
  of chunk ``c`` and ``w_c = n_c / sum n``::

      recall    = sum_{c in reference} w_c * max_{d in answer}    cos(u_c, u_d)
      precision = sum_{d in answer}    w_d * max_{c in reference} cos(u_c, u_d)
      embedding_chunked_maxsim = clip(2 * precision * recall / (precision + recall), 0, 1)

  (0 when precision + recall <= 0). Two one-chunk texts score their plain cosine, as with the mean.

Each distinct text is encoded once per process and chunking (the two metrics share the chunks). Only folders the direct encoder takes (Transformer → mean
Pooling → Normalize, see :func:`medqa_bench.metrics.embedding.meanpool_pipeline`) can be chunked; the default is one.
"""

from __future__ import annotations

import functools
import inspect
import os
from importlib.metadata import version
from pathlib import Path
from typing import Any, Sequence

from ..errors import MetricError
from .base import Metric
from .embedding import (CITATION as SBERT_CITATION, _load_meanpool, default_model_path, folder_max_seq_length,
    meanpool_pipeline, model_fingerprint)

#: (folder, chunk_length, overlap, device) -> text -> (chunk hidden-state sums, chunk piece counts)
_CHUNKS: dict[tuple[str, int, int, str], dict[str, tuple[Any, Any]]] = {}
BERTSCORE_CITATION = "Zhang et al., BERTScore: Evaluating Text Generation with BERT, ICLR 2020."
POOLINGS = ("mean", "maxsim")


@functools.lru_cache(maxsize=2)
def _load_on(path: str, device: str):
    """The folder's tokenizer and model on ``device`` (the CPU's copy is embedding_similarity's own)."""
    tokenizer, model = _load_meanpool(path)
    if device == "cpu":
        return tokenizer, model
    from transformers import AutoModel

    return tokenizer, AutoModel.from_pretrained(path, local_files_only=True).eval().to(device)


def chunk_windows(ids: Sequence[int], length: int, overlap: int) -> list[list[int]]:
    """Consecutive windows of ``length`` ids, each starting ``overlap`` ids before the previous one ended; one
    (maybe empty) window for a short text.

    >>> chunk_windows(list(range(7)), 3, 1)
    [[0, 1, 2], [2, 3, 4], [4, 5, 6]]
    """
    windows, start = [list(ids[:length])], 0
    while start + length < len(ids):
        start += length - overlap
        windows.append(list(ids[start : start + length]))
    return windows


class ChunkedEmbedding:
    """The chunks' hidden-state sums and piece counts per text, cached; the score functions of both poolings."""

    def __init__(self, path: Path, *, chunk_length: int, overlap: int, batch_size: int, device: str, pooling: str):
        self.path, self.chunk_length, self.overlap = path, chunk_length, overlap
        self.batch_size, self.device, self.pooling = batch_size, device, pooling
        # Shared by every metric object of the same folder, chunking and device: the mean and maxsim metrics of
        # one run encode each text once between them.
        self._chunks = _CHUNKS.setdefault((str(path), chunk_length, overlap, device), {})
        self.encoded_chunks = 0  # chunks this object sent to the model

    def _special(self, tokenizer) -> tuple[list[int], list[int]]:
        """The ids the tokenizer puts before and after a text's own ([CLS] and [SEP] for BERT)."""
        inner = tokenizer("x", add_special_tokens=False)["input_ids"]
        outer = tokenizer("x")["input_ids"]
        for i in range(len(outer) - len(inner) + 1):
            if outer[i : i + len(inner)] == inner:
                return outer[:i], outer[i + len(inner) :]
        raise MetricError(f"chunked embedding: cannot find where {self.path}'s tokenizer adds its special tokens")

    def _encode(self, texts: list[str]) -> None:
        import numpy as np
        import torch

        tokenizer, model = _load_on(str(self.path), self.device)
        positions = getattr(model.config, "max_position_embeddings", None)
        if isinstance(positions, int) and self.chunk_length > positions:
            raise MetricError(f"chunked embedding: chunk_length {self.chunk_length} exceeds the model's {positions} positions")
        head, tail = self._special(tokenizer)
        body = self.chunk_length - len(head) - len(tail)
        if body <= self.overlap:
            raise MetricError(
                f"chunked embedding: chunk_length {self.chunk_length} leaves {body} word pieces after the special "
                f"tokens, not more than overlap {self.overlap}"
            )
        chunks: list[tuple[int, list[int]]] = []  # (text index, ids with special tokens)
        for k, text in enumerate(texts):
            ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
            chunks.extend((k, head + w + tail) for w in chunk_windows(ids, body, self.overlap))
        dim = model.config.hidden_size
        sums = np.zeros((len(chunks), dim), dtype=np.float64)
        counts = np.array([len(ids) for _, ids in chunks], dtype=np.float64)
        order = np.argsort(-counts, kind="stable")  # longest first, so batches pad little
        accepted = set(inspect.signature(model.forward).parameters)
        pad = tokenizer.pad_token_id or 0
        with torch.inference_mode():
            for start in range(0, len(chunks), self.batch_size):
                index = order[start : start + self.batch_size]
                width = int(counts[index[0]])
                input_ids = torch.full((len(index), width), pad, dtype=torch.long)
                mask = torch.zeros((len(index), width), dtype=torch.long)
                for row, i in enumerate(index):
                    ids = chunks[i][1]
                    input_ids[row, : len(ids)] = torch.tensor(ids)
                    mask[row, : len(ids)] = 1
                features = {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(mask)}
                features = {k: v.to(model.device) for k, v in features.items() if k in accepted}
                hidden = model(**features).last_hidden_state.float()
                summed = (hidden * features["attention_mask"].unsqueeze(-1).to(hidden.dtype)).sum(dim=1)
                sums[index] = summed.cpu().numpy()
        self.encoded_chunks += len(chunks)
        owner = np.array([k for k, _ in chunks])
        for k, text in enumerate(texts):
            rows = owner == k
            self._chunks[text] = (sums[rows], counts[rows])

    def chunks(self, texts: Sequence[str]) -> list[tuple[Any, Any]]:
        """Per text: its chunks' hidden-state sums (n_chunks × hidden) and piece counts (n_chunks,)."""
        new = [t for t in dict.fromkeys(texts) if t not in self._chunks]
        if new:
            self._encode(new)
        return [self._chunks[t] for t in texts]

    def mean_vectors(self, texts: Sequence[str]):
        import numpy as np

        vecs = np.stack([s.sum(axis=0) for s, _ in self.chunks(texts)]) if texts else np.zeros((0, 1))
        return vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)

    def __call__(self, predictions, references, items):
        import numpy as np

        if self.pooling == "mean":
            p, r = self.mean_vectors(list(predictions)), self.mean_vectors(list(references))
            return np.clip(np.einsum("ij,ij->i", p, r), 0.0, 1.0)
        out = np.zeros(len(predictions))
        for k, ((ps, pn), (rs, rn)) in enumerate(zip(self.chunks(list(predictions)), self.chunks(list(references)))):
            out[k] = maxsim(ps / pn[:, None], pn, rs / rn[:, None], rn)
        return out

    def pairwise(self, predictions, references):
        import numpy as np

        return np.clip(self.mean_vectors(list(predictions)) @ self.mean_vectors(list(references)).T, 0.0, 1.0)


def maxsim(answer_means, answer_counts, reference_means, reference_counts) -> float:
    """BERTScore-style F1 over chunks from their mean hidden states and piece counts (see the module docstring)."""
    import numpy as np

    def unit(x):
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    sim = unit(answer_means) @ unit(reference_means).T
    precision = float(sim.max(axis=1) @ (answer_counts / answer_counts.sum()))
    recall = float(sim.max(axis=0) @ (reference_counts / reference_counts.sum()))
    if precision + recall <= 0:
        return 0.0
    return min(max(2.0 * precision * recall / (precision + recall), 0.0), 1.0)


def _chunked_metric(pooling: str, model, chunk_length, overlap, batch_size, device) -> Metric:
    name = f"embedding_chunked_{pooling}"
    path = Path(model).expanduser().resolve() if model else default_model_path()
    if not meanpool_pipeline(path):
        raise MetricError(
            f"{name}: {path} is not a Transformer → mean Pooling → Normalize sentence-transformers folder, the only "
            "kind that can be chunked; use embedding_similarity for it"
        )
    for key, value in (("chunk_length", chunk_length), ("overlap", overlap), ("batch_size", batch_size)):
        if value is not None and (isinstance(value, bool) or not str(value).strip().isdigit()):
            raise MetricError(f"{name}: {key} must be a whole number, not {value!r}")
    chunk_length = int(chunk_length) if chunk_length is not None else folder_max_seq_length(path)
    if not chunk_length:
        raise MetricError(f"{name}: {path} declares no max_seq_length; give chunk_length=N word pieces")
    overlap = int(overlap)
    label = "all-MiniLM-L6-v2" if path == default_model_path() else path.name
    fn = ChunkedEmbedding(path, chunk_length=chunk_length, overlap=overlap, batch_size=int(batch_size),
                          device=str(device), pooling=pooling)
    how = "token-mean,cosine" if pooling == "mean" else "greedy-max-cosine-f1,weights=pieces"
    return Metric(
        name=name,
        higher_is_better=True,
        score=fn,
        signature=(
            f"{name}|model={label}@{model_fingerprint(path)[:12]}|chunk_length={chunk_length},overlap={overlap}"
            f"|{how},clip=[0,1]|transformers={version('transformers')}"
        ),
        bounds=(0.0, 1.0),
        citation=SBERT_CITATION if pooling == "mean" else f"{SBERT_CITATION} {BERTSCORE_CITATION}",
        pairwise=fn.pairwise if pooling == "mean" else None,
    )


def embedding_chunked_mean(model: str | os.PathLike | None = None, chunk_length: int | None = None,
                           overlap: int = 0, batch_size: int = 32, device: str = "cpu") -> Metric:
    """Cosine of whole-text vectors, each the mean over all of the text's chunks (see the module docstring)."""
    return _chunked_metric("mean", model, chunk_length, overlap, batch_size, device)


def embedding_chunked_maxsim(model: str | os.PathLike | None = None, chunk_length: int | None = None,
                             overlap: int = 0, batch_size: int = 32, device: str = "cpu") -> Metric:
    """BERTScore-style greedy F1 between the two texts' chunk vectors (see the module docstring)."""
    return _chunked_metric("maxsim", model, chunk_length, overlap, batch_size, device)
