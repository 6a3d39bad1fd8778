"""Read run folders, and combine several runs over the same items into one comparison."""

from __future__ import annotations

from pathlib import Path

from ..errors import RunError
from ..jsonl import parse_jsonl
from ..run_folder import read_results_file
from ..schema import SCHEMA_VERSION

SEPARATOR = "/"  # combined system names are "<run>/<system>"


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


def run_names(folders: list[Path], results: list[dict]) -> list[str]:
    """Each run's ``run_name`` (else its folder name), made unique with a ``-2``, ``-3`` suffix."""
    names, seen = [], {}
    for folder, r in zip(folders, results):
        base = str(r.get("run_name") or Path(folder).name)
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
    return names


def combine_runs(names: list[str], runs: list[tuple[dict, list[dict]]]) -> tuple[dict, list[dict]]:
    """One results dict and one sample list whose systems are ``<run>/<system>``.

    Runs must cover the same item ids. Every system records its run (``info["run"]``), so the analysis compares
    each adapter with the baseline rows and reference rows of its own run (:func:`medqa_bench.analysis.run_roles`);
    an adapter's own ``compared_with`` is kept, prefixed. Prompts are keyed ``<run>/<format>`` (each run's model
    renders its own). The generation budget is the run's that cuts the largest share of references, the loss
    definition, the model's quantization and the validity figures are carried when the runs agree; each run's own
    stay in ``runs``.
    """
    first_ids = {s["id"] for s in runs[0][1]}
    for name, (_, samples) in zip(names[1:], runs[1:]):
        ids = {s["id"] for s in samples}
        if ids != first_ids:
            only_first, only_this = len(first_ids - ids), len(ids - first_ids)
            raise RunError(
                f"runs '{names[0]}' ({len(first_ids)} items) and '{name}' ({len(ids)} items) cover different items: "
                f"{only_first} only in '{names[0]}', {only_this} only in '{name}'; combine runs made on the same "
                "data, split and limit"
            )

    def prefixed(run: str, system: str) -> str:
        return f"{run}{SEPARATOR}{system}"

    combined: dict = {
        "schema_version": SCHEMA_VERSION,
        "run_name": " + ".join(names),
        "spec": runs[0][0].get("spec") or {},
        "systems": {},
        "metrics": {},
        "results": {},
        "data": runs[0][0].get("data") or {},
        "runs": {
            run: {k: r.get(k) for k in ("budget", "loss_definition", "model")} for run, (r, _) in zip(names, runs)
        },
    }
    budgets = [r.get("budget") for r, _ in runs if r.get("budget")]
    if budgets:
        combined["budget"] = max(
            budgets, key=lambda b: (b.get("references_longer") or 0) / (b.get("n_references") or 1)
        )
    definitions = [r.get("loss_definition") for r, _ in runs]
    if definitions[0] and all(d == definitions[0] for d in definitions):
        combined["loss_definition"] = definitions[0]
    quantization = {(r.get("model") or {}).get("quantization") for r, _ in runs}
    combined["model"] = {
        "reference": ", ".join(dict.fromkeys(str((r.get("model") or {}).get("reference")) for r, _ in runs)),
        "quantization": quantization.pop() if len(quantization) == 1 else None,
    }
    signatures: dict[str, set] = {}
    for run, (results, _) in zip(names, runs):
        for system, info in (results.get("systems") or {}).items():
            info = dict(info or {})
            for key in ("compared_with", "variant_of"):  # names of other rows of the same run
                if info.get(key):
                    info[key] = prefixed(run, info[key])
            info["run"] = run
            combined["systems"][prefixed(run, system)] = info
        for metric, info in (results.get("metrics") or {}).items():
            combined["metrics"].setdefault(metric, info)
            signatures.setdefault(metric, set()).add(info.get("signature"))
        for system, values in (results.get("results") or {}).items():
            combined["results"][prefixed(run, system)] = values
    combined["signature_conflicts"] = sorted(m for m, s in signatures.items() if len(s) > 1)
    validity = [r.get("validity") for r, _ in runs]
    if validity[0] and all(v == validity[0] for v in validity):  # else each run's own report shows its own
        combined["validity"] = validity[0]
    elif any(validity):
        combined["validity_differs"] = True

    by_id: dict[str, dict] = {}
    for run, (_, samples) in zip(names, runs):
        for s in samples:
            shared = {k: v for k, v in s.items() if k not in ("systems", "prompts")}
            row = by_id.setdefault(s["id"], shared | {"systems": {}, "prompts": {}})
            for fmt, text in (s.get("prompts") or {}).items():
                row["prompts"][prefixed(run, fmt)] = text
            for system, out in (s.get("systems") or {}).items():
                row["systems"][prefixed(run, system)] = out
    order = [s["id"] for s in runs[0][1]]
    return combined, [by_id[i] for i in order]
