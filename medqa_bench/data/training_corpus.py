"""A run's items and its training corpus: what is evaluated, and what reference rows, the leakage audit and ``+rag``
passages draw from. Data only: no model is loaded.

The training corpus comes from one of three places, in this order:

- ``given``: ``RunSpec.train_data`` (``--train-data PATH``, with ``--train-qtype`` and ``--train-*-column``), the items
  of its ``train_split`` (``all`` by default: every item of the file);
- ``adapters``: the evaluated data is another file than the one the run's adapters were trained on, and every adapter
  records the same training data in its ``medqa_bench.json`` (``data.spec``, ``data.fingerprint``,
  ``data.manifest_fingerprint``, as the trainer writes them). That data is loaded with the recorded options, its
  fingerprints are checked, and its train split is the corpus. The run logs one line saying so and records it;
- ``evaluated``: otherwise (no adapter, adapters without the record, training data not found or changed, the
  evaluated data being the adapters' own), the train split of the evaluated data, as before. When the adapters'
  record could not be used, one line says why.

With a corpus of its own (``given`` or ``adapters``) the evaluated file is used whole (``split`` "all", unless the spec
names a split), and item ids are not compared with training ids: they come from two files, so an evaluated item
that shares an id with a training item is not that item. Drawn from the evaluated data, a training item with an
evaluated item's id is that item, and is never a candidate for it.

``results["data"]["training"]`` (:class:`medqa_bench.schema.TrainingData`) records the source, where the data was
found, its fingerprints, the split, the number of items, the adapters that recorded it and the line the run said.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .adapter_meta import AdapterMeta, read_adapter_meta
from .dataset import DataSpec, Dataset, Example, load_dataset
from ..errors import DataError

log = logging.getLogger(__name__)

SOURCES = ("given", "adapters", "evaluated")


@dataclass(frozen=True)
class RecordedTrainingData:
    """An adapter's training data as its ``medqa_bench.json`` records it."""

    spec: DataSpec
    fingerprint: str  # of the data file (medqa_bench.data.readers.Table.fingerprint)
    manifest_fingerprint: str  # of the split (SplitManifest.fingerprint)

    @classmethod
    def read(cls, name: str, folder: Path) -> "RecordedTrainingData | None":
        """The record of the adapter folder ``folder``; None when it has no ``medqa_bench.json`` or the file records
        no training data (an adapter trained elsewhere). A damaged file raises :class:`AdapterError`
        (:func:`medqa_bench.data.adapter_meta.read_adapter_meta`)."""
        return cls.of(read_adapter_meta(folder, name))

    @classmethod
    def of(cls, meta: AdapterMeta | None) -> "RecordedTrainingData | None":
        """The training data an adapter's metadata records; None without metadata or without the record."""
        spec = meta.data_spec() if meta is not None else None
        if spec is None:
            return None
        return cls(spec, meta.data.fingerprint, meta.data.manifest_fingerprint)


@dataclass(frozen=True)
class TrainingCorpus:
    """The items reference rows, the leakage audit and retrieval draw from, and where they came from."""

    items: list[Example]
    source: str  # one of SOURCES
    data: DataSpec  # the data it was read from (the evaluated data's spec for "evaluated")
    record: dict[str, Any] = field(default_factory=dict)  # results["data"]["training"], filled when it is made

    @property
    def own_split(self) -> bool:
        """Drawn from the evaluated data: a training item with an evaluated item's id is that item."""
        return self.source == "evaluated"


@dataclass(frozen=True)
class RunData:
    """The evaluated data, its evaluated split (``pool``, before ``--limit``) and the training corpus; ``spec`` is
    the run's spec with ``split`` (and, from the adapters, ``train_data`` and ``train_split``) filled in."""

    spec: Any  # RunSpec
    dataset: Dataset
    pool: list[Example]
    corpus: TrainingCorpus


def adapter_folder(value: str) -> Path | None:
    """The local folder of a run's adapter: a path, or a served adapter's ``served:LORA@FOLDER`` (None without one)."""
    if value.startswith("served:"):
        _, at, folder = value.partition("@")
        return Path(folder).expanduser() if at and folder.strip() else None
    return Path(value).expanduser()


def plan_data(spec, adapters: dict[str, str], metas: Mapping[str, AdapterMeta | None] | None = None) -> RunData:
    """Load the evaluated data and the training corpus of a run of ``spec`` whose adapters are ``adapters`` (name ->
    folder or served name); see the module docstring. ``metas``: the adapters' metadata as the caller has read it
    already (name -> record, None for a folder without one; the planner reads each adapter folder once), else each
    local folder's ``medqa_bench.json`` is read here. Raises :class:`DataError` for data that cannot be read, and
    for an evaluated split left empty (a small file: the message proposes ``--split all``). The returned spec holds
    the data options as loaded (the question-type filter resolved, :func:`medqa_bench.data.resolve_qtype`)."""
    dataset = load_dataset(spec.data)
    spec = spec.replace(data=dataset.spec)
    records = _records(adapters, metas)
    note = None
    if spec.train_data is not None:
        corpus = _given(spec)
        spec = spec.replace(train_data=corpus.data)
    else:
        corpus, note = _from_adapters(dataset, records)
        if corpus is not None:
            spec = spec.replace(train_data=corpus.data, train_split="train")
    spec = spec.replace(split=spec.evaluated_split)
    if corpus is None:
        corpus = TrainingCorpus(dataset.split("train"), "evaluated", spec.data)
        corpus.record.update(_record(corpus, dataset, "train", []))
    corpus.record["note"] = note
    pool = dataset.split(spec.split)
    if not pool:
        trained_here = [n for n, r in records.items() if r and r.fingerprint == dataset.manifest.data_fingerprint]
        raise DataError(_empty_split(dataset, spec.split, trained_here))
    return RunData(spec, dataset, pool, corpus)


def _empty_split(dataset: Dataset, split: str, trained_here: list[str]) -> str:
    """One line for an evaluated split left empty: what the qtype filter kept, the split's sizes, and the way out
    (``--split all``, unless the run's adapters were trained on this file's train split)."""
    report, qtype = dataset.report, dataset.spec.qtype
    sizes = ", ".join(f"{name} {len(dataset.split(name))}" for name in ("train", "validation", "test"))
    if trained_here:
        way = (f"--split all would evaluate {', '.join(trained_here)} on {'their' if len(trained_here) > 1 else 'its'} "
               "training items; use more data")
    else:
        way = "evaluate every item with --split all" + (", widen --qtype" if qtype != "all" else "") + " or use more data"
    return (f"the {split} split is empty: the qtype filter '{qtype}' kept {report.kept} of {report.rows} rows "
            f"({len(dataset.examples)} item{'s' if len(dataset.examples) != 1 else ''}: {sizes}); {way}")


def _where(data: DataSpec) -> str:
    """Where the data is read from: its path, or the fetched MedQuAD's place in the user data folder."""
    if data.path:
        return str(data.path)
    from ..storage.paths import MEDQUAD_FILE, data_dir

    return str(data_dir() / MEDQUAD_FILE)


def _record(corpus: "TrainingCorpus", ds: Dataset, split: str, adapters: list[str]) -> dict[str, Any]:
    return {"source": corpus.source, "path": _where(corpus.data), "qtype": corpus.data.qtype,
            "fingerprint": ds.manifest.data_fingerprint, "manifest_fingerprint": ds.manifest.fingerprint,
            "split": split, "n_items": len(corpus.items), "adapters": adapters}


def _given(spec) -> TrainingCorpus:
    try:
        ds = load_dataset(spec.train_data, flag_prefix="train-")
    except DataError as exc:
        raise DataError(f"training data (--train-data): {exc}") from None
    corpus = TrainingCorpus(ds.split(spec.train_split), "given", ds.spec)
    if not corpus.items:
        raise DataError(f"training data (--train-data {_where(spec.train_data)}): its {spec.train_split} split is "
                        "empty; pass --train-split all")
    corpus.record.update(_record(corpus, ds, spec.train_split, []))
    log.info("training corpus: %d items of %s (%s; --train-data): reference rows, the leakage audit and retrieval "
             "draw from it", len(corpus.items), _where(spec.train_data),
             "every item" if spec.train_split == "all" else f"its {spec.train_split} split")
    return corpus


def _records(adapters: dict[str, str], metas: Mapping[str, AdapterMeta | None] | None
             ) -> dict[str, RecordedTrainingData | None]:
    """Each adapter's recorded training data (None: no record, or a served adapter without a local folder), from
    ``metas`` where it holds the adapter, else from its folder."""
    records = {}
    for name, value in adapters.items():
        if metas is not None and name in metas:
            records[name] = RecordedTrainingData.of(metas[name])
            continue
        folder = adapter_folder(value)
        records[name] = RecordedTrainingData.read(name, folder) if folder is not None else None
    return records


def _from_adapters(dataset: Dataset, records: dict[str, RecordedTrainingData | None]
                   ) -> tuple[TrainingCorpus | None, str | None]:
    """The adapters' training split when the evaluated data is another file and every adapter records the same
    training data, found with its fingerprints; else None, and the one line that says why (None when nothing was
    recorded, or the evaluated data is the adapters' own)."""
    known = {n: r for n, r in records.items() if r is not None}
    if not known or all(r.fingerprint == dataset.manifest.data_fingerprint for r in known.values()):
        return None, None
    fallback = ("reference rows and the leakage audit draw from the evaluated file's own train split; name the "
                "training corpus with --train-data")
    missing = [n for n, r in records.items() if r is None]
    recorded = next(iter(known.values()))
    where = _where(recorded.spec)
    if missing:
        return _say(f"adapter{'s' if len(missing) > 1 else ''} {', '.join(missing)} record{'' if len(missing) > 1 else 's'}"
                    f" no training data in medqa_bench.json: {fallback}")
    if len({(r.fingerprint, r.manifest_fingerprint) for r in known.values()}) > 1:
        return _say(f"the adapters were trained on different data ({', '.join(known)}): {fallback}")
    try:
        ds = load_dataset(recorded.spec)
    except DataError as exc:
        return _say(f"the adapters' training data is not found ({exc}): {fallback}")
    if ds.manifest.data_fingerprint != recorded.fingerprint:
        return _say(f"the adapters' training data at {where} is not the file they were trained on (fingerprint "
                    f"{ds.manifest.data_fingerprint[:19]}…, recorded {recorded.fingerprint[:19]}…): {fallback}")
    if ds.manifest.fingerprint != recorded.manifest_fingerprint:
        return _say(f"the adapters' training split of {where} does not rebuild from the recorded options (manifest "
                    f"{ds.manifest.fingerprint[:19]}…, recorded {recorded.manifest_fingerprint[:19]}…): {fallback}")
    corpus = TrainingCorpus(ds.split("train"), "adapters", ds.spec)
    corpus.record.update(_record(corpus, ds, "train", list(known)))
    log.info("training corpus: the train split the adapters were trained on (%d items of %s, qtype %s, %s split "
             "seed %d; fingerprints match): reference rows, the leakage audit and retrieval draw from it, and the "
             "evaluated file is used whole (--train-data names another corpus)", len(corpus.items), where,
             recorded.spec.qtype, recorded.spec.split.strategy, recorded.spec.split.seed)
    return corpus, None


def _say(line: str) -> tuple[None, str]:
    log.warning("%s", line)
    return None, line
