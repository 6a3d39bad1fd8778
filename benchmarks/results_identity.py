"""The committed headline's results.json, written by two versions of the code on the same inputs, compared.

Issue 33 (the runner's refactoring) is done only when ``results.json`` for the committed headline is byte-identical to
what the old code writes, apart from the fields it adds. Generating the headline (266 test items, six rows, a 907-token
budget) takes hours on a CPU, so this check runs the headline evaluation with every generation and every completion NLL
*replayed* from ``reports/headline/samples.jsonl.xz`` instead of computed. Everything else is the code under test: the
spec, the data and split, the plan of the rows and their prompts (each replayed request is matched by its row's name
and its exact prompt, an NLL request also by its completion; an unmatched one stops the run), the real default model and
the shipped adapter loaded (their fingerprints, the loss definition), the cache, the reference rows, the leakage audit,
every default metric (embedding similarity included), the analysis and the verdict.

It runs the headline as ``benchmarks/gpu/headline.sh`` and the README's Results section do: ``run --name headline
--limit 0 --baseline-formats chat,reference --dtype float32 --metrics loss,perplexity --no-report``, then
``score DIR --metrics default`` (``--no-report``, as the committed spec records). The committed adapter row,
``s07-ref-all``, is the shipped default adapter's folder under that name (the committed run used the sweep's copy of
it), so row names match the committed samples; its fingerprint and path differ from the committed file's, which does
not matter: the comparison is old code against new code.

    .venv/bin/python benchmarks/results_identity.py --out DIR        # the replayed headline run folder into DIR
    .venv/bin/python benchmarks/results_identity.py --compare 9409b90 # that commit's code against the working tree's

``--compare`` checks ``OLD`` out as a git worktree in a temporary folder, runs ``--out`` once with ``PYTHONPATH`` set
to it and once to this working tree (the same interpreter; both runs write to the same run folder and cache path, so
the spec records the same paths), and compares the two results.json files after dropping only :data:`VOLATILE`. It
prints the differing dotted keys as JSON and exits 0 when the files are identical, 1 when they are not.

The replay relies only on the backend seam: ``TransformersBackend`` keeps ``generate`` and ``completion_nll``
(``requests, *, progress, on_result``), requests carry ``.system`` (``name``, ``prompt_format``, ``kind``),
``.prompt`` and ``.completion``, and answers are ``Generation`` and ``CompletionNLL`` records. Their modules are looked
up in :data:`WHERE` (the old layout first), so a moved class needs one more line there.
"""

from __future__ import annotations

import argparse
import importlib
import json
import lzma
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

REPO = Path(__file__).resolve().parents[1]
HEADLINE = REPO / "reports" / "headline"
#: The committed headline's adapter row; the shipped default adapter is evaluated under its name.
ADAPTER_ROW = "s07-ref-all"

#: Where each class the replay needs may live: the layout before issue 33 first, then the places it may move to.
WHERE: dict[str, tuple[str, ...]] = {
    "TransformersBackend": ("medqa_bench.backends.transformers", "medqa_bench.inference.backends.transformers"),
    "register_backend": ("medqa_bench.backends", "medqa_bench.inference.backends"),
    "Generation": ("medqa_bench.generation", "medqa_bench.inference.decoding", "medqa_bench.inference.generation"),
    "CompletionNLL": ("medqa_bench.inference", "medqa_bench.inference.nll"),
    "DEFAULT_ADAPTER": ("medqa_bench.runner", "medqa_bench.planning"),
}

#: The fields of results.json that differ between two runs of the same code on the same inputs, and why; the
#: comparison drops these and nothing else (dotted keys).
VOLATILE: dict[str, str] = {
    "created": "the wall-clock time the run was written",
    "timings": "seconds each stage took",
    "environment": "the git commit of the code (the very thing compared), package versions and hardware",
}


class ReplayError(RuntimeError):
    """A request the committed headline's samples do not hold (another row, prompt or completion)."""


def lookup(name: str) -> Any:
    """The attribute ``name`` from the first module of :data:`WHERE` that has it; a loud error naming every place
    tried when none does."""
    tried = []
    for module in WHERE[name]:
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            tried.append(f"{module} ({type(exc).__name__})")
    raise ImportError(f"{name} is in none of {', '.join(tried)}: add its module to WHERE in {Path(__file__).name}")


# ------------------------------------------------------------------------------------------------- the replay


class Replay:
    """The committed headline's generations and completion NLLs, by (row, prompt)."""

    def __init__(self, folder: Path = HEADLINE):
        systems = json.loads((folder / "results.json").read_text())["systems"]
        self.formats = {name: info["prompt_format"] for name, info in systems.items() if info["kind"] != "reference"}
        #: the baseline row of each prompt format: the adapter check's base-alone probe (a row of its own, named
        #: "baseline", on the adapter's quantization) is answered with it; only its inequality to the adapter matters.
        self.baselines = {info["prompt_format"]: name for name, info in systems.items() if info["kind"] == "baseline"}
        self.records: dict[tuple[str, str], dict[str, Any]] = {}
        with lzma.open(folder / "samples.jsonl.xz", "rt", encoding="utf-8") as f:
            for line in f:
                item = json.loads(line)
                for row, fmt in self.formats.items():
                    key = (row, item["prompts"][fmt])
                    if key in self.records:
                        raise ReplayError(f"two committed items have row {row}'s prompt {key[1][:60]!r}: ambiguous")
                    self.records[key] = {**item["systems"][row], "completion": _completion(fmt, item["reference"])}
        self.asked = {"generate": 0, "nll": 0}

    def record(self, system: Any, prompt: str) -> dict[str, Any]:
        row = system.name
        if row not in self.formats and system.kind == "baseline":
            row = self.baselines.get(system.prompt_format, row)
        if row not in self.formats:
            raise ReplayError(f"row {system.name!r} ({system.kind}, {system.prompt_format}) is not in the committed "
                              f"headline (its rows: {', '.join(self.formats)})")
        if self.formats[row] != system.prompt_format:
            raise ReplayError(f"row {system.name!r} is prompted in {system.prompt_format}; the committed headline's "
                              f"{row} in {self.formats[row]}")
        try:
            return self.records[(row, prompt)]
        except KeyError:
            raise ReplayError(f"row {system.name!r}: no committed item has the prompt {prompt[:120]!r}") from None

    def generation(self, request: Any) -> Any:
        r = self.record(request.system, request.prompt)
        self.asked["generate"] += 1
        return lookup("Generation")(text=r["prediction"], generated_tokens=r["generated_tokens"],
                                    truncated=r["truncated"], stop_reason=r["stop_reason"])

    def nll(self, request: Any) -> Any:
        r = self.record(request.system, request.prompt)
        if request.completion != r["completion"]:
            raise ReplayError(f"row {request.system.name!r}: the completion asked for, {request.completion[:60]!r}, is "
                              f"not the committed item's, {r['completion'][:60]!r}")
        self.asked["nll"] += 1
        return lookup("CompletionNLL")(nll_sum=r["nll_sum"], nll_tokens=r["nll_tokens"])


def _completion(fmt: str, answer: str) -> str:
    """The completion scored after a prompt of ``fmt`` (medqa_bench.data.Example.completion, as the committed run had
    it): the reference template's ends with "### Answer:", so its completion starts with a space."""
    return (" " if fmt == "reference" else "") + answer


def replay_backend(replay: Replay) -> type:
    """The transformers backend (the real model loaded: identities, tokenizer, loss settings) whose generations and
    completion NLLs are ``replay``'s."""
    base = lookup("TransformersBackend")

    def answer(requests: Any, on_result: Any, one: Any) -> list:
        out = []
        for i, request in enumerate(requests):
            out.append(one(request))
            if on_result is not None:
                on_result(i, out[-1])
        return out

    class ReplayBackend(base):  # type: ignore[misc, valid-type]
        name = "replay"

        def generate(self, requests, *, progress=False, on_result=None):  # noqa: ARG002 - the seam's signature
            return answer(requests, on_result, replay.generation)

        def completion_nll(self, requests, *, progress=False, on_result=None):  # noqa: ARG002
            return answer(requests, on_result, replay.nll)

    return ReplayBackend


# ------------------------------------------------------------------------------------------------- one run


def cache_files(cache: Path) -> list[Path]:
    """The SQLite cache and the files SQLite keeps beside it."""
    return [cache, *(cache.with_name(cache.name + s) for s in ("-wal", "-shm", "-journal"))]


def run_headline(out: Path, package_root: Path | None = None) -> int:
    """The replayed headline into ``out`` (run, then score), with a fresh cache beside it; the CLI's exit status."""
    import medqa_bench

    where = Path(medqa_bench.__file__).resolve().parent
    print(f"medqa_bench from {where}", flush=True)
    if package_root is not None and where != (package_root / "medqa_bench").resolve():
        raise SystemExit(f"medqa_bench was imported from {where}, not from {package_root}: check PYTHONPATH")
    replay = Replay()
    lookup("register_backend")("replay", replay_backend(replay))
    from medqa_bench.cli import main

    cache = out.with_name(out.name + ".cache.sqlite")  # fresh: another run's outputs must not answer for the replay
    for f in cache_files(cache):
        f.unlink(missing_ok=True)
    adapter = REPO / "data" / "adapters" / lookup("DEFAULT_ADAPTER")
    t0 = time.perf_counter()
    try:
        rc = main(["-q", "run", "--name", "headline", "--backend", "replay", "--adapter", f"{ADAPTER_ROW}={adapter}",
                   "--limit", "0", "--baseline-formats", "chat,reference", "--dtype", "float32",
                   "--metrics", "loss,perplexity", "--no-report", "--out", str(out), "--cache", str(cache)])
        t1 = time.perf_counter()
        print(f"RUN_SECONDS {t1 - t0:.1f} (replayed: {replay.asked['generate']} generations, "
              f"{replay.asked['nll']} NLLs)", flush=True)
        if rc == 0:
            rc = main(["-q", "score", str(out), "--metrics", "default", "--no-report"])
            print(f"SCORE_SECONDS {time.perf_counter() - t1:.1f}", flush=True)
    finally:
        for f in cache_files(cache):
            f.unlink(missing_ok=True)
    return rc


# ------------------------------------------------------------------------------------------------- the comparison


def leaves(value: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    """(dotted key, the leaf as JSON text) of every leaf in document order; an empty object or list is a leaf."""
    if isinstance(value, dict) and value:
        for k, v in value.items():
            yield from leaves(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(value, list) and value:
        for i, v in enumerate(value):
            yield from leaves(v, f"{prefix}.{i}" if prefix else str(i))
    else:
        yield prefix, json.dumps(value, ensure_ascii=False)


def normalise(results: dict[str, Any], volatile: dict[str, str] = VOLATILE) -> dict[str, Any]:
    """``results`` without the dotted keys of ``volatile`` (a copy; key order kept)."""
    out = json.loads(json.dumps(results))
    for dotted in volatile:
        *path, last = dotted.split(".")
        node = out
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return out


def differences(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The dotted keys whose values differ, with both values ("<absent>" where a side lacks the key); when every value
    agrees but the order of keys does not, the first key out of place (byte identity includes order)."""
    a, b = dict(leaves(old)), dict(leaves(new))
    out: dict[str, Any] = {}
    for key in dict.fromkeys([*a, *b]):
        if a.get(key) != b.get(key):
            out[key] = {side: _shown(text) for side, text in (("old", a.get(key)), ("new", b.get(key)))}
    if not out and list(a) != list(b):
        at = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
        out["<key order>"] = {"old": list(a)[at], "new": list(b)[at]}
    return out


def _shown(text: str | None, limit: int = 300) -> Any:
    if text is None:
        return "<absent>"
    return json.loads(text) if len(text) <= limit else text[:limit] + "..."


def file_style(raw: str) -> str | None:
    """The json.dumps settings that wrote ``raw`` exactly (None when none of the usual ones does): the comparison of
    the normalised documents stands for the bytes only when both files are written alike."""
    doc = json.loads(raw)
    for indent in (2, 1, 4, None):
        for ascii_only in (False, True):
            for end in ("\n", ""):
                if json.dumps(doc, indent=indent, ensure_ascii=ascii_only) + end == raw:
                    return f"indent={indent} ensure_ascii={ascii_only} newline={end == chr(10)}"
    return None


def compare_files(old_path: Path, new_path: Path) -> dict[str, Any]:
    """:func:`differences` of two results.json files after :func:`normalise`, with ``<file format>`` when they are
    not written with the same json.dumps settings."""
    old_raw, new_raw = old_path.read_text(encoding="utf-8"), new_path.read_text(encoding="utf-8")
    diff = differences(normalise(json.loads(old_raw)), normalise(json.loads(new_raw)))
    styles = file_style(old_raw), file_style(new_raw)
    if styles[0] != styles[1] or styles[0] is None:
        diff["<file format>"] = {"old": styles[0] or "unrecognised", "new": styles[1] or "unrecognised"}
    return diff


def compare(old_commit: str, work: Path | None) -> int:
    """``old_commit``'s results.json against the working tree's; prints the differences; 0 when identical."""
    keep = work is not None
    work = Path(tempfile.mkdtemp(prefix="results-identity-")) if work is None else work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    tree = work / "old-tree"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "--quiet", str(tree), old_commit], check=True)
    seconds: dict[str, float] = {}
    new = "working tree"
    try:
        for label, root in (("old", tree), ("new", REPO)):
            if label == "new":
                new = f"working tree at {_head()}"
            run_dir = work / "run"  # one path for both: the spec records it
            shutil.rmtree(run_dir, ignore_errors=True)
            t = time.perf_counter()
            subprocess.run([sys.executable, str(Path(__file__).resolve()), "--out", str(run_dir),
                            "--package-root", str(root)],
                           env={**os.environ, "PYTHONPATH": str(root)}, cwd=str(root), check=True)
            seconds[label] = round(time.perf_counter() - t, 1)
            shutil.copyfile(run_dir / "results.json", work / f"{label}.json")
        shutil.rmtree(work / "run", ignore_errors=True)
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False)
    diff = compare_files(work / "old.json", work / "new.json")
    sections: dict[str, int] = {}
    for key in diff:
        sections[key.split(".")[0]] = sections.get(key.split(".")[0], 0) + 1
    print(json.dumps({"old": old_commit, "new": new, "seconds": seconds, "dropped": VOLATILE,
                      "identical": not diff, "differing_keys_by_section": sections, "differences": diff},
                     indent=2, ensure_ascii=False))
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"results kept in {work}/old.json and {work}/new.json", file=sys.stderr)
    return 0 if not diff else 1


def _head() -> str:
    """The working tree's commit, "-dirty" when tracked files differ from it (others may edit while the check runs)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True).stdout.strip()

    return git("rev-parse", "--short", "HEAD") + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--out", type=Path, help="write the replayed headline run folder here (DIR/results.json)")
    what.add_argument("--compare", metavar="OLD_COMMIT", help="compare that commit's results.json to the working tree's")
    parser.add_argument("--work", type=Path, help="with --compare: keep old.json and new.json in this folder")
    parser.add_argument("--package-root", type=Path, help=argparse.SUPPRESS)  # --compare's check of PYTHONPATH
    args = parser.parse_args(argv)
    if args.compare:
        return compare(args.compare, args.work)
    return run_headline(args.out.resolve(), args.package_root)


if __name__ == "__main__":
    sys.exit(main())
