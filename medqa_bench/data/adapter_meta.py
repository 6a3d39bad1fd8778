"""An adapter's ``medqa_bench.json``: what the trainer records beside the adapter, declared once.

One writer (:func:`write_adapter_meta`, called by ``trainers.qlora``) and one reader (:func:`read_adapter_meta`,
called by the model loader, the planner and the training-corpus lookup). The file is a JSON object whose sections
are the frozen records below, in the order written::

    version         2 (below)
    kind            "qlora" (a 4-bit base) or "lora"
    base_model      BaseModel: the reference trained on and its weights' fingerprint
    recipe          the trainer's Recipe.to_dict() (trainers.recipe declares it; kept as written)
    recipe_source   the recipe file it was read from
    resolved        Resolved: device, precision, compute dtype, quantization and prompt format as the run used them
    data            TrainingData: the data's options (DataSpec.to_dict()), fingerprints and split sizes
    seed            the recipe's seed
    versions        package versions (medqa-bench, torch, transformers, peft, trl, bitsandbytes, accelerate,
                    datasets; null when not installed)
    hardware        the machine: device, cpu_count, torch_threads, device_name and, on CUDA, cuda
    training        TrainingRun: steps, times, throughput, memory, the final losses
    created         when the folder was written (%Y-%m-%dT%H:%M:%S%z)
    distributed     Distributed: only when the run had several processes

Versions of the file (each older one still reads, as written):

- 1 (the first trainer): ``training.final_eval_loss`` is Trainer's evaluation loss, the mean of batch token means
  (:func:`medqa_bench.inference.loss.definition_from_metadata` derives its definition from the recipe);
- 2: ``training.final_eval_loss`` is the harness's corpus loss (:mod:`medqa_bench.inference.loss`), described by the new
  ``training.eval_loss_definition``, over ``training.final_eval_items`` items and ``training.final_eval_tokens``
  tokens.

A record read from a file keeps which keys the file had and their order, so :meth:`AdapterMeta.to_dict` gives back
the object that was read (``results.json`` records it as ``systems[..].adapter.training``). Hand-made files with
some sections only read too. A value of the wrong type, or a key this version does not know, is refused with its
dotted key::

    >>> AdapterMeta.from_dict({"training": {"final_eval_loss": "abc"}}, doc="medqa_bench.json")
    Traceback (most recent call last):
    medqa_bench.errors.AdapterError: medqa_bench.json key 'training.final_eval_loss' must be a number or null, not 'abc'
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from ..storage import atomic
from .. import typed
from .dataset import DataSpec
from ..errors import AdapterError, SpecError
from ..storage.jsonl import read_json_object

__all__ = ["META_FILE", "VERSION", "AdapterMeta", "BaseModel", "Resolved", "TrainingData", "TrainingRun",
           "LossDefinition", "Truncation", "Distributed", "read_adapter_meta", "write_adapter_meta", "as_adapter_meta"]

META_FILE = "medqa_bench.json"
#: The version the trainer writes; the reader takes this one and every older one.
VERSION = 2


@dataclasses.dataclass(frozen=True)
class _Record:
    """A section of the file. ``present``: the keys a file had, in its order (None: a record made in code, which
    writes every field, less those in ``_OMIT_NONE`` that are None)."""

    present: tuple[str, ...] | None = dataclasses.field(default=None, kw_only=True, repr=False, compare=False)
    _OMIT_NONE: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of this record, keys in the order written."""
        keys = self.present if self.present is not None else [
            k for k in _json_fields(type(self)) if not (k in self._OMIT_NONE and getattr(self, k) is None)]
        return {k: _plain(getattr(self, k)) for k in keys}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], *, doc: str, where: str = ""):
        """The record of the mapping ``raw``, every key and type checked (``doc`` and ``where`` name it in errors);
        values are kept as read."""
        fields = _json_fields(cls)
        for key in raw:
            if key not in fields:
                close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.6)
                hint = f" (did you mean '{where}{close[0]}'?)" if close else ""
                raise AdapterError(f"{doc} has an unknown key '{where}{key}'{hint}; keys here are: {', '.join(fields)}")
        values = {k: _check(fields[k], v, f"{where}{k}", doc) for k, v in raw.items()}
        return cls(**values, present=tuple(raw))


@functools.lru_cache(maxsize=None)
def _json_fields(cls: type) -> dict[str, Any]:
    """The file's keys of a record class and their annotations, in the order written."""
    return {k: tp for k, tp in typed.field_types(cls).items() if k not in ("present", "where")}


def _plain(value: Any) -> Any:
    if isinstance(value, _Record):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _check(tp: Any, value: Any, key: str, doc: str) -> Any:
    """``value`` checked against the annotation ``tp`` and returned as read (a section becomes its record).

    Unlike :func:`medqa_bench.typed.coerce` nothing is converted: an integer stays an integer where a number is
    declared, so a record writes back the bytes it was read from.
    """
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _check(option, value, key, doc)
            except AdapterError:
                container = Mapping if dataclasses.is_dataclass(option) or typing.get_origin(option) is dict else (
                    list if typing.get_origin(option) is list else None)
                if container is not None and isinstance(value, container):
                    raise  # a bad value inside a section or list: its own key's message, not "must be a mapping"
        raise _wrong(doc, key, typed.describe(tp), value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise _wrong(doc, key, "a section (a mapping)", value)
        return tp.from_dict(value, doc=doc, where=key + ".")
    if origin is dict:
        if not isinstance(value, Mapping):
            raise _wrong(doc, key, "a mapping", value)
        return {k: _check(args[1], v, f"{key}.{k}", doc) for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise _wrong(doc, key, "a list", value)
        return [_check(args[0], v, f"{key}[{i}]", doc) for i, v in enumerate(value)]
    ok = {bool: isinstance(value, bool),
          int: isinstance(value, int) and not isinstance(value, bool),
          float: isinstance(value, (int, float)) and not isinstance(value, bool),
          str: isinstance(value, str)}[tp]
    if not ok:
        raise _wrong(doc, key, typed.describe(tp), value)
    return value


def _wrong(doc: str, key: str, expected: str, value: Any) -> AdapterError:
    return AdapterError(str(typed.wrong_type(doc, key, expected, value)))


# --------------------------------------------------------------------------------------------- the sections


@dataclasses.dataclass(frozen=True)
class BaseModel(_Record):
    """The base the adapter was trained on."""

    reference: str | None = None  # as the recipe named it: an alias, a folder, a .gguf file or a Hub id
    # medqa_bench.inference.models.ModelSource.fingerprint of its weights: attach_adapters refuses a base with another one
    fingerprint: str | None = None


@dataclasses.dataclass(frozen=True)
class Resolved(_Record):
    """The recipe's "auto" choices as the run made them."""

    device: str | None = None  # "cpu", "cuda", "cuda:N"
    precision: str | None = None  # "bf16", "fp16" or "fp32"
    compute_dtype: str | None = None  # the torch dtype of that precision: "bfloat16", "float16", "float32"
    quantization: str | None = None  # of the base as trained: "4bit" (NF4, QLoRA) or "none"
    prompt_format: str | None = None  # the template the adapter learnt: "reference" or "chat"


@dataclasses.dataclass(frozen=True)
class TrainingData(_Record):
    """The training data, as the harness can find and check it again."""

    fingerprint: str | None = None  # of the data file (medqa_bench.data.readers.Table.fingerprint)
    manifest_fingerprint: str | None = None  # of the split (medqa_bench.data.SplitManifest.fingerprint)
    n_train: int | None = None  # training items (after data.limit.train)
    n_validation: int | None = None  # validation items (after data.limit.validation)
    spec: dict[str, Any] | None = None  # the data options, medqa_bench.data.DataSpec.to_dict() (AdapterMeta.data_spec)


@dataclasses.dataclass(frozen=True)
class Truncation(_Record):
    max_length: int | None = None  # tokens of prompt + completion
    mode: str | None = None  # "keep_start": the end is cut


@dataclasses.dataclass(frozen=True)
class LossDefinition(_Record):
    """What ``training.final_eval_loss`` is (version 2; :func:`medqa_bench.inference.loss.eval_loss_definition` makes it)."""

    form: str | None = None  # "corpus" (sum NLL / sum tokens) or "batch_mean" (Trainer's, version 1)
    split: str | None = None  # "validation"
    eos: bool | None = None  # the EOS token after each completion is scored
    boundary: str | None = None  # where the completion starts: "common_prefix" of the two tokenisations
    truncation: Truncation | None = None
    quantization: str | None = None  # of the base scored
    compute_dtype: str | None = None
    prompt_format: str | None = None
    batch_size: int | None = None  # the batch_mean form only
    _OMIT_NONE: ClassVar[tuple[str, ...]] = ("batch_size",)


@dataclasses.dataclass(frozen=True)
class TrainingRun(_Record):
    """What the run did and measured."""

    global_step: int | None = None  # optimizer steps taken
    epochs: float | None = None  # epochs done (fractional when training.max_steps stopped the run)
    resumed_from_step: int | None = None  # the checkpoint's step when --resume continued a run, else null
    wall_time_s: float | None = None  # from the call to the end, loading included
    train_time_s: float | None = None  # the training steps alone (trainers.callbacks.StepClock)
    tokens: int | None = None  # tokens trained on (padding excluded)
    tokens_per_s: float | None = None  # tokens / train_time_s
    peak_memory_bytes: int | None = None
    peak_memory_source: str | None = None  # "cuda_max_memory_allocated" or "process_max_rss"
    final_train_loss: float | None = None  # the last epoch's mean training loss
    final_eval_loss: float | None = None  # the last evaluation's validation loss; null without a validation split
    # version 2: what final_eval_loss is (null without a validation split), over how many items and scored tokens
    eval_loss_definition: LossDefinition | None = None
    final_eval_items: int | None = None
    final_eval_tokens: int | None = None


@dataclasses.dataclass(frozen=True)
class Distributed(_Record):
    """A multi-process (DDP) run: medqa_bench.inference.distributed.Ranks.describe() and the global batch."""

    world_size: int | None = None
    backend: str | None = None  # "nccl", "gloo"
    device_type: str | None = None  # "cuda" or "cpu"
    global_batch_size: int | None = None  # batch_size x gradient_accumulation_steps x world_size


# The recipe keys the harness reads (as fallbacks for old or hand-made files, and for version 1's loss definition);
# the rest of the recipe is the trainer's business and kept as written.
_RECIPE_READS = {"model.quantization": str | None, "data.prompt_format": str | None, "data.max_length": int | None,
                 "training.batch_size": int | None, "training.eval_batch_size": int | None}


@dataclasses.dataclass(frozen=True)
class AdapterMeta(_Record):
    """The whole file. Every section is optional on reading (hand-made files record some only); the trainer writes
    them all. The accessors answer what the harness asks of an adapter."""

    version: int | None = None
    kind: str | None = None  # "qlora" (a 4-bit base) or "lora"
    base_model: BaseModel | None = None
    recipe: dict[str, Any] | None = None  # trainers.recipe.Recipe.to_dict()
    recipe_source: str | None = None
    resolved: Resolved | None = None
    data: TrainingData | None = None
    seed: int | None = None
    versions: dict[str, str | None] | None = None
    hardware: dict[str, Any] | None = None
    training: TrainingRun | None = None
    created: str | None = None
    distributed: Distributed | None = None
    # who the record is, in messages ("adapter 'ft': medqa_bench.json"); not in the file
    where: str = dataclasses.field(default=META_FILE, kw_only=True, repr=False, compare=False)
    _OMIT_NONE: ClassVar[tuple[str, ...]] = ("distributed",)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], *, doc: str = META_FILE, where: str = "") -> "AdapterMeta":
        version = raw.get("version")
        if isinstance(version, int) and not isinstance(version, bool) and version > VERSION:
            raise AdapterError(f"{doc} is version {version}, newer than this medqa-bench reads (up to {VERSION}); "
                               "upgrade medqa-bench")
        meta = super().from_dict(raw, doc=doc, where=where)
        for path, tp in _RECIPE_READS.items():
            _check(tp, meta.recipe_value(path), f"recipe.{path}", doc)
        return dataclasses.replace(meta, where=doc)

    def recipe_value(self, path: str) -> Any:
        """The recipe's value at the dotted ``path`` (None when absent)."""
        node: Any = self.recipe
        for part in path.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        return node

    @property
    def prompt_format(self) -> str | None:
        """The template the adapter was trained in, as recorded (resolved, else the recipe's); None when not."""
        return (self.resolved and self.resolved.prompt_format) or self.recipe_value("data.prompt_format")

    @property
    def quantization(self) -> str | None:
        """The quantization of the base it was trained on, as recorded (resolved, else the recipe's)."""
        return (self.resolved and self.resolved.quantization) or self.recipe_value("model.quantization")

    @property
    def final_eval_loss(self) -> float | None:
        return self.training.final_eval_loss if self.training else None

    @property
    def eval_loss_definition(self) -> LossDefinition | None:
        """The recorded definition of ``final_eval_loss`` (version 2; None before)."""
        return self.training.eval_loss_definition if self.training else None

    def data_spec(self) -> DataSpec | None:
        """The training data's options, with the fingerprints to check them by (``data.fingerprint``,
        ``data.manifest_fingerprint``, required beside them); None when the file records none."""
        if self.data is None or self.data.spec is None:
            return None
        for key in ("fingerprint", "manifest_fingerprint"):
            if getattr(self.data, key) is None:
                raise _wrong(self.where, f"data.{key}", "a string", None)
        try:
            return typed.build(DataSpec, self.data.spec, doc=self.where, where="data.spec.")
        except SpecError as exc:
            raise AdapterError(str(exc)) from None


# --------------------------------------------------------------------------------------------- read and write


def _file(path: str | os.PathLike) -> Path:
    path = Path(path).expanduser()
    return path if path.name == META_FILE and not path.is_dir() else path / META_FILE


def read_adapter_meta(path: str | os.PathLike, name: str | None = None) -> AdapterMeta | None:
    """The record of the adapter folder ``path`` (or of its ``medqa_bench.json``); None when there is no file.

    ``name`` (the adapter's name in the run; the folder's name unless given) names it in errors. A file that is not
    a JSON object, holds a value of the wrong type or a key this version does not know, or was written by a newer
    medqa-bench raises :class:`AdapterError`.

    >>> from medqa_bench.storage.paths import shipped_adapters_dir
    >>> meta = read_adapter_meta(shipped_adapters_dir() / "smollm2-135m-symptoms-qlora", "ft")
    >>> meta.version, meta.prompt_format, meta.quantization, meta.final_eval_loss
    (1, 'reference', '4bit', 1.0196757316589355)
    """
    file = _file(path)
    if not file.is_file():
        return None
    name = name if name is not None else file.parent.name
    raw = read_json_object(file, AdapterError, f"adapter '{name}': {file}", "; the folder is damaged")
    return AdapterMeta.from_dict(raw, doc=f"adapter '{name}': {META_FILE}")


def write_adapter_meta(folder: str | os.PathLike, meta: AdapterMeta) -> Path:
    """Write ``meta`` as ``folder/medqa_bench.json`` (two-space indent, keys in the declared order, a final newline),
    atomically; the trainer's one writer. The record is read back first, so the file always reads."""
    obj = meta.to_dict()
    AdapterMeta.from_dict(obj, doc=f"{META_FILE} being written")
    path = Path(folder) / META_FILE
    atomic.write_json(path, obj)
    return path


def as_adapter_meta(value: "AdapterMeta | Mapping[str, Any] | None", doc: str = "adapter metadata"
                    ) -> AdapterMeta | None:
    """``value`` as a record: a record as it is, a mapping (a file's object, e.g. ``AdapterInfo.training_meta``)
    read, None as None."""
    if value is None or isinstance(value, AdapterMeta):
        return value
    return AdapterMeta.from_dict(value, doc=doc)
