"""Weight files checked before anything loads them: a corrupt file is a one-line error, not a library's traceback.

A safetensors file is an 8-byte little-endian header length, a JSON header naming each tensor's dtype, shape and byte
range, then the tensor bytes. Reading the header (a few kilobytes, no tensor) says whether the file is whole, so a
truncated or garbage adapter fails in milliseconds, before the base model loads, naming the file and what is wrong.

Pickled PyTorch files (``adapter_model.bin``) are refused: unpickling runs code from the file, and nothing medqa-bench
writes is pickled. :func:`pickle_conversion` says how to turn one into safetensors where the file is trusted.

>>> check_safetensors("data/adapters/smollm2-135m-symptoms-qlora/adapter_model.safetensors")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from pathlib import Path

#: The safetensors format's own limit on the header's size.
MAX_HEADER_BYTES = 100_000_000


class WeightFileError(ValueError):
    """What is wrong with a weight file, in words; the caller adds whose file it is (an adapter, a model)."""


def check_safetensors(path: str | os.PathLike) -> None:
    """Raise :class:`WeightFileError` unless ``path`` is a whole safetensors file (header and every tensor's bytes)."""
    path = Path(path)
    size = path.stat().st_size
    if size < 8:
        raise WeightFileError(f"{path.name} is {size} bytes: empty or cut short, not a safetensors file")
    with open(path, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        if n > MAX_HEADER_BYTES or 8 + n > size:
            raise WeightFileError(f"{path.name} is not a safetensors file, or is cut short: its first 8 bytes give a "
                                  f"{n}-byte header, the file has {size} bytes")
        raw = fh.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise WeightFileError(f"{path.name} is not a safetensors file: its header is not JSON (garbage, or a file of "
                              "another format under this name)") from None
    if not isinstance(header, dict):
        raise WeightFileError(f"{path.name} is not a safetensors file: its header is not a JSON object")
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
                and 0 <= offsets[0] <= offsets[1]):
            raise WeightFileError(f"{path.name}: the header's entry for tensor '{name}' has no valid byte range; "
                                  "the file is damaged")
        end = max(end, offsets[1])
    data = size - 8 - n
    if end != data:
        raise WeightFileError(
            f"{path.name} is cut short: its header describes {end} bytes of tensors, the file holds {data}"
            if end > data else f"{path.name} is damaged: {data - end} bytes follow its last tensor")
    _check_with_library(path)


def _check_with_library(path: Path) -> None:
    """The safetensors library's own header validation (overlapping ranges, dtypes against sizes), without torch."""
    try:
        from safetensors import safe_open
    except ImportError:  # pragma: no cover - transformers depends on safetensors
        return
    try:
        with safe_open(str(path), framework="numpy") as fh:
            fh.keys()
    except Exception as exc:  # noqa: BLE001 - the library raises its own SafetensorError
        raise WeightFileError(f"{path.name} is damaged: {str(exc).splitlines()[0]}") from None


def pickle_conversion(folder: str | os.PathLike, stem: str = "adapter_model") -> str:
    """A one-line command that converts ``<stem>.bin`` in ``folder`` to ``<stem>.safetensors`` (run it only on a file
    you trust: ``weights_only=True`` limits what unpickling may build, it does not make a hostile file safe)."""
    d = str(Path(folder))
    return (f"python -c \"import torch, safetensors.torch as st; d = {d!r}; "
            f"sd = torch.load(d + '/{stem}.bin', weights_only=True, map_location='cpu'); "
            f"st.save_file({{k: v.contiguous() for k, v in sd.items()}}, d + '/{stem}.safetensors')\"")
