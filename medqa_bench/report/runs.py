"""Read run folders, and join several runs over the same items into one comparison.

A combined report keeps each run apart where it matters: every run is renamed (``<label>/<system>``) and analysed
on its own (:func:`medqa_bench.analysis.runs.analyze_runs`), so each statement takes its budget, thresholds, null
pairs and items from its own run. A baseline or reference row that several runs share (the same identity and the
same outputs on the same items, scored against the same references) gets one name and is shown once; each run's
adapters are still compared with it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..analysis.runs import agreed
from ..errors import RunError, SpecError
from ..storage.jsonl import parse_jsonl
from ..data.rag import prompt_key
from ..storage.run_folder import read_results_file
from ..schema import SCHEMA_VERSION, Results, SystemInfo, read_results

SEPARATOR = "/"  # combined system names are "<run>/<system>"
JOINER = "+"  # a row several runs share, not all: "<run>+<run>/<system>"
_SHAREABLE = ("baseline", "reference")
# What makes two rows the same row, besides their outputs: the system's own description and, for a language-model
# row, the model and the decoding it answered with.
_ROW_KEYS = ("kind", "method", "prompt_format", "stop_sequences", "quantization", "retrieval", "adapter")
_MODEL_KEYS = ("reference", "fingerprint", "quantization", "dtype")
_OUTPUT_KEYS = ("prediction", "generated_tokens", "truncated", "stop_reason", "nll_sum", "nll_tokens", "source")


def load_run(folder: str | Path) -> tuple[dict, list[dict]]:
    """``(results, samples)`` of a run folder, checked against the schema version this package reads."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RunError(f"run folder {folder} does not exist")
    results_path, samples_path = folder / "results.json", folder / "samples.jsonl"
    for p in (results_path, samples_path):
        if not p.is_file():
            raise RunError(f"{folder} is not a complete run folder: {p.name} is missing (run `medqa-bench run` first)")
    results = read_results_file(results_path)
    try:
        text = samples_path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise RunError(f"{samples_path}: not UTF-8 text ({exc.reason}); the run folder is damaged") from None
    samples = parse_jsonl(text, str(samples_path), RunError, "; the run folder is damaged")
    for lineno, row in enumerate(samples, 1):
        if "id" not in row:
            raise RunError(f"{samples_path}: sample record {lineno} has no 'id'")
    if not samples:
        raise RunError(f"{samples_path} holds no items; nothing to report")
    ids = [s["id"] for s in samples]
    if len(set(ids)) != len(ids):
        raise RunError(
            f"{samples_path}: item ids repeat ({len(ids) - len(set(ids))} duplicates); the run folder is damaged"
        )
    return results, samples


def run_labels(folders: list[Path], labels: list[str] | None = None) -> list[str]:
    """Each run's label: the one given (``--label``; one per folder, unique, without ``/`` or ``+``, which name the
    rows of a combined report: ``<label>/<row>``, ``<label>+<label>/<row>``), else its folder's name with ``/`` and
    ``+`` made ``-``, unique with a ``-2``, ``-3`` suffix (two folders named alike in different places).

    A generated ``run_name`` is no label: ``…-symptoms-test`` and ``…-symptoms-test-2`` cannot be told apart.

    >>> run_labels([Path("a/r16"), Path("b/r16"), Path("lora+rag")])
    ['r16', 'r16-2', 'lora-rag']
    """
    if labels is not None:
        labels = [str(x) for x in labels]
        if len(labels) != len(folders):
            raise SpecError(f"{len(labels)} label(s) for {len(folders)} run folder(s): give one --label per run "
                            "folder, in the same order, or none")
        for x in labels:
            if not x.strip() or SEPARATOR in x or JOINER in x:
                raise SpecError(f"label {x!r} is not usable: a label is a non-empty name without '{SEPARATOR}' or "
                                f"'{JOINER}' (they name the rows of a combined report)")
        repeated = sorted({x for x in labels if labels.count(x) > 1})
        if repeated:
            raise SpecError(f"label '{repeated[0]}' is given {labels.count(repeated[0])} times: each run needs a "
                            "label of its own")
        return labels
    out: list[str] = []
    for folder in folders:
        base = Path(folder).resolve().name or str(folder)
        base = base.replace(SEPARATOR, "-").replace(JOINER, "-").strip() or "run"
        name, k = base, 1
        while name in out:
            k += 1
            name = f"{base}-{k}"
        out.append(name)
    return out


@dataclass(frozen=True)
class JoinedRuns:
    """Several runs over the same items: ``results`` and ``samples`` hold every row once under its combined name;
    ``parts[label]`` is that run alone, renamed alike (what its own analysis and verdict are computed from);
    ``shared[name]`` lists the runs that share a row shown once."""

    labels: list[str]
    results: dict
    samples: list[dict]
    parts: dict[str, tuple[dict, list[dict]]]
    shared: dict[str, list[str]]


def _generated_ids(samples: list[dict]) -> list[str]:
    return [s["id"] for s in samples if s.get("generated", True)]


def _check_items(labels: list[str], runs: list[tuple[dict, list[dict]]]) -> None:
    """The runs must answer the same items; the items scored by loss and perplexity alone may differ."""
    first = set(_generated_ids(runs[0][1]))
    for name, (_, samples) in zip(labels[1:], runs[1:]):
        ids = set(_generated_ids(samples))
        if ids != first:
            raise RunError(
                f"runs '{labels[0]}' ({len(first)} items) and '{name}' ({len(ids)} items) cover different items: "
                f"{len(first - ids)} only in '{labels[0]}', {len(ids - first)} only in '{name}'; combine runs made "
                "on the same data, split and limit (the items scored by loss and perplexity alone may differ)"
            )


def row_prompt_key(info: SystemInfo) -> str | None:
    """The key of a row's prompts in ``samples.jsonl`` (:func:`medqa_bench.data.rag.prompt_key`: its format,
    ``<format>+rag`` with retrieval); None for a row without a prompt (a reference row)."""
    fmt = info.prompt_format
    return prompt_key(fmt, info.retrieval or None) if fmt else None


def _references(sample: dict) -> list:
    return sample.get("references") or [sample.get("reference")]


def _row_key(results: Results, samples: list[dict], system: str) -> str | None:
    """What a baseline or reference row is and what it gave, item by item, against which references: equal keys,
    the same row."""
    info = results.system(system)
    if info.kind not in _SHAREABLE:
        return None
    identity = {k: getattr(info, k) for k in _ROW_KEYS}
    if info.kind != "reference":  # a reference row has no model: its outputs say what it is
        identity["model"] = {k: results.model.get(k) for k in _MODEL_KEYS}
        identity["decoding"] = results.spec.get("decoding")
    key = row_prompt_key(info)
    outputs = [
        [s["id"], _references(s), (s.get("prompts") or {}).get(key) if key else None,
         {k: rec.get(k) for k in _OUTPUT_KEYS if k in rec}]
        for s in samples if (rec := (s.get("systems") or {}).get(system)) is not None
    ]
    return json.dumps([identity, outputs], sort_keys=True, default=str)


def _same_values(a: dict, b: dict) -> bool:
    """Two rows' results (``{metric: MetricValue}``) agree on every metric both scored, field for field as the files
    hold them (a metric of another definition does not)."""
    return all(a[m].raw == b[m].raw for m in set(a) & set(b))


def _differing_references(labels: list[str], runs: list[tuple[dict, list[dict]]]) -> dict[str, int]:
    """``{label: k}``: the runs whose references differ from the first run's on ``k`` of the items both answered
    (another answer column, another version of the file); no row of theirs is shared with it."""
    first = {s["id"]: _references(s) for s in runs[0][1]}
    out = {}
    for label, (_, samples) in zip(labels[1:], runs[1:]):
        k = sum(1 for s in samples if s["id"] in first and _references(s) != first[s["id"]])
        if k:
            out[label] = k
    return out


def _row_names(labels: list[str], runs: list[tuple[dict, list[dict]]]) -> tuple[dict[str, dict[str, str]], dict]:
    """``names[label][system]``: each row's combined name; rows shared by several runs get one name, the system's own
    when every run shares it, else ``<label>+<label>/<system>``."""
    groups: list[dict] = []  # {"key", "members": [(label, system)], "results"}
    for label, (raw, samples) in zip(labels, runs):
        results = read_results(raw)
        for system in results.systems:
            key = _row_key(results, samples, system)
            values = results.results.get(system, {})
            group = next((g for g in groups if key is not None and g["key"] == key and label not in g["labels"]
                          and _same_values(g["values"], values)), None)
            if group is None:
                groups.append({"key": key, "members": [(label, system)], "labels": [label], "values": dict(values)})
            else:
                group["members"].append((label, system))
                group["labels"].append(label)
                group["values"] = {**values, **group["values"]}
    names: dict[str, dict[str, str]] = {label: {} for label in labels}
    shared: dict[str, list[str]] = {}
    taken: set[str] = set()
    for g in groups:
        first_system = g["members"][0][1]
        if len(g["members"]) == 1:
            name = f"{g['labels'][0]}{SEPARATOR}{first_system}"
        elif len(g["members"]) == len(labels) and first_system not in taken:
            name = first_system
        else:
            name = f"{JOINER.join(g['labels'])}{SEPARATOR}{first_system}"
        if name in taken:  # labels hold neither separator, so a name is never taken twice; never merge two rows
            raise RunError(f"two rows of the combined report would both be named '{name}'; give the runs other "
                           "labels with --label")
        taken.add(name)
        for label, system in g["members"]:
            names[label][system] = name
        if len(g["members"]) > 1:
            shared[name] = list(g["labels"])
    return names, shared


def _renamed(label: str, results: dict, samples: list[dict], names: dict[str, str]) -> tuple[dict, list[dict]]:
    """One run with its rows under their combined names and its prompts keyed ``<label>/<format>``."""
    typed = read_results(results)
    systems = {}
    for system, row in typed.systems.items():
        info = dict(row.raw)
        for key in ("compared_with", "variant_of"):  # names of other rows of the same run
            if getattr(row, key):
                info[key] = names.get(getattr(row, key), f"{label}{SEPARATOR}{getattr(row, key)}")
        info["run"] = label
        systems[names[system]] = info
    out = {**results, "systems": systems,
           "results": {names.get(s, s): {m: v.raw for m, v in per_metric.items()}
                       for s, per_metric in typed.results.items()}}
    out.pop("analysis", None)
    out.pop("verdict", None)
    renamed = []
    for s in samples:
        renamed.append({**s,
                        "prompts": {f"{label}{SEPARATOR}{fmt}": text for fmt, text in (s.get("prompts") or {}).items()},
                        "systems": {names.get(n, n): rec for n, rec in (s.get("systems") or {}).items()}})
    return out, renamed


def _run_facts(label: str, folder: str | None, raw: dict, samples: list[dict]) -> dict:
    """What the page says about each run of a combined report."""
    results = read_results(raw)
    return {
        "label": label,
        "folder": folder,
        "run_name": results.run_name,
        "budget": results.budget.raw if results.budget else None,
        "loss_definition": raw.get("loss_definition"),  # as the file holds them (None when it has none)
        "model": raw.get("model"),
        "decoding": results.spec.get("decoding"),
        "n_items": len(_generated_ids(samples)),
        "n_nll_items": len(samples),
        "metrics": list(results.metrics),
        "primary": results.primary_metric,
    }


def join_runs(labels: list[str], runs: list[tuple[dict, list[dict]]],
              folders: list[str | Path] | None = None) -> JoinedRuns:
    """Join runs that answered the same items (:class:`JoinedRuns`); raises :class:`RunError` when they did not.

    The combined ``results`` lists rows shared by every run first, then each run's own; an adapter's
    ``compared_with`` is kept, renamed. The generation budget, the loss definition, the model's quantization and the
    validity figures are carried when the runs agree; each run's own stay in ``runs[label]`` and in ``parts``.
    """
    _check_items(labels, runs)
    names, shared = _row_names(labels, runs)
    parts = {label: _renamed(label, r, s, names[label]) for label, (r, s) in zip(labels, runs)}
    typed = [read_results(r) for r, _ in runs]
    combined: dict = {
        "schema_version": SCHEMA_VERSION,
        "run_name": " + ".join(labels),
        "spec": typed[0].spec,
        "systems": {},
        "metrics": {},
        "results": {},
        "data": typed[0].data.raw,
        "runs": {label: _run_facts(label, str(folder) if folder else None, r, s)
                 for label, folder, (r, s) in zip(labels, folders or [None] * len(labels), runs)},
    }
    budget = agreed([t.budget.raw if t.budget else None for t in typed])
    if budget:
        combined["budget"] = budget
    loss_definition = agreed([t.loss_definition for t in typed])
    if loss_definition:
        combined["loss_definition"] = loss_definition
    combined["model"] = {
        "reference": ", ".join(dict.fromkeys(str(t.model.get("reference")) for t in typed)),
        "quantization": agreed([t.model.get("quantization") for t in typed]),
    }
    differ = _differing_references(labels, runs)
    if differ:
        combined["references_differ"] = differ
    everywhere = [n for n, runs_of in shared.items() if len(runs_of) == len(labels)]
    order = everywhere + [n for label in labels for n in parts[label][0]["systems"] if n not in everywhere]
    signatures: dict[str, set] = {}
    for label in labels:
        results = parts[label][0]
        part = read_results(results)
        for system, info in results["systems"].items():
            if system in shared:
                info = {**info, "run": shared[system][0], "shared_by": shared[system]}
            combined["systems"].setdefault(system, info)
            combined["results"][system] = {**{m: v.raw for m, v in part.results.get(system, {}).items()},
                                           **combined["results"].get(system, {})}
        for metric, info in part.metrics.items():
            combined["metrics"].setdefault(metric, info.raw)
            signatures.setdefault(metric, set()).add(info.signature)
    combined["systems"] = {n: combined["systems"][n] for n in dict.fromkeys(order)}
    combined["signature_conflicts"] = sorted(m for m, s in signatures.items() if len(s) > 1)
    validity = [t.validity.raw if t.validity else None for t in typed]
    if agreed(validity):  # else each run's own report shows its own
        combined["validity"] = validity[0]
    elif any(validity):
        combined["validity_differs"] = True

    by_id: dict[str, dict] = {}
    for label in labels:
        for s in parts[label][1]:
            row = by_id.setdefault(s["id"], {**s, "systems": {}, "prompts": {}})
            row["prompts"].update(s.get("prompts") or {})
            for system, out in (s.get("systems") or {}).items():
                row["systems"].setdefault(system, out)
    return JoinedRuns(labels, combined, list(by_id.values()), parts, shared)


def combine_runs(names: list[str], runs: list[tuple[dict, list[dict]]]) -> tuple[dict, list[dict]]:
    """One results dict and one sample list whose rows are ``<run>/<system>`` (a row several runs share: once);
    see :func:`join_runs`."""
    joined = join_runs(names, runs)
    return joined.results, joined.samples
