"""The package is laid out by stage, and a stage imports only the stages below it.

Every import of a ``medqa_bench`` module by another (at the top of a file, inside a function, or for type checking
only) is read from the source with :mod:`ast`, and its stage (the first part of the module path below
``medqa_bench``: ``data``, ``inference``, ``runner``, ...) must come before the importing module's own in
:data:`LAYERS`. So there is no import circle between stages and no import that runs back up the flow; a change that
adds one fails here, naming the file and the import. Module paths from before the layout still import, as the same
module objects.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "medqa_bench"

#: The stages from the bottom up: each may import the ones before it, never one after it.
LAYERS = ("errors", "typed", "registry", "schema", "__init__", "results_record", "storage", "data", "inference",
          "spec", "metrics", "analysis", "report", "validity", "planning", "runner", "chat", "api", "cli")


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every medqa_bench import in ``path``."""
    module, is_package = _module(path), path.name == "__init__.py"
    here = module if is_package else module.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [f"{target}.{a.name}" for a in node.names]
            out += [(node.lineno, n if (PACKAGE.parent / (n.replace(".", "/") + ".py")).exists()
                     or (PACKAGE.parent / n.replace(".", "/")).is_dir() else target) for n in names]
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
    return [(line, m) for line, m in out if m == "medqa_bench" or m.startswith("medqa_bench.")]


def test_every_stage_imports_only_the_stages_below_it():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 80
    stages = {_stage(_module(f)) for f in files}
    assert stages <= set(LAYERS), f"a stage not placed in LAYERS: {sorted(stages - set(LAYERS))}"
    wrong = []
    for path in files:
        own = _stage(_module(path))
        for line, target in _imports(path):
            other = _stage(target)
            if other != own and LAYERS.index(other) > LAYERS.index(own):
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {target} ({other} is above {own})")
    assert not wrong, "imports that run back up the flow:\n" + "\n".join(wrong)


def test_no_two_modules_import_each_other_in_a_circle():
    """Within a stage too: a circle of modules (lazy imports count) is one idea split across files, or a seam in
    the wrong place."""
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module(path)
        graph[module] = {t for _, t in _imports(path) if t != module}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                circles.append(sorted(group))

    for v in list(graph):
        if v not in index:
            visit(v)
    # a package and its own modules (the package's __init__ hands on a module's names, and the module uses what the
    # package defines, e.g. the backend registry) are one place, not a circle between places
    circles = [c for c in circles if not any(all(m == p or m.startswith(p + ".") for m in c) for p in c)]
    assert not circles, f"modules that import each other in a circle: {circles}"


def test_the_top_level_holds_only_the_run_and_its_records():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert top == ["__init__.py", "api.py", "cli.py", "errors.py", "registry.py", "results_record.py", "runner.py",
                   "schema.py", "spec.py", "typed.py"]
    for stage in ("data", "planning", "inference", "storage", "metrics", "analysis", "report", "validity"):
        assert (PACKAGE / stage / "__init__.py").is_file(), stage


@pytest.mark.parametrize("old", ["medqa_bench.models", "medqa_bench.generation", "medqa_bench.paths",
                                 "medqa_bench.backends", "medqa_bench.backends.openai", "medqa_bench.systems",
                                 "medqa_bench.loss", "medqa_bench.rag", "medqa_bench.budget"])
def test_module_paths_from_before_the_layout_import_the_same_modules(old):
    import medqa_bench

    target = next(new + old[len(prefix):] for prefix, new in medqa_bench.MOVED.items()
                  if old == prefix or old.startswith(prefix + "."))
    assert importlib.import_module(old) is importlib.import_module(target)


def test_the_readme_names_of_the_stages_import():
    from medqa_bench.data import load_dataset
    from medqa_bench.inference import completion_nll
    from medqa_bench.inference.generation import generate
    from medqa_bench.inference.models import attach_adapters, load_base
    from medqa_bench.planning import plan_run

    assert all(callable(f) for f in (load_dataset, completion_nll, generate, attach_adapters, load_base, plan_run))
    from medqa_bench.models import load_base as old  # the path the README named before the layout

    assert old is load_base
