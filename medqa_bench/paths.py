"""Where things live: the user cache, the bundled data and the shipped adapters."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$MEDQA_BENCH_CACHE`` if set, else the platform's user cache folder (``~/.cache/medqa-bench`` on Linux)."""
    env = os.environ.get("MEDQA_BENCH_CACHE")
    if env:
        path = Path(env).expanduser()
    else:
        import platformdirs

        path = Path(platformdirs.user_cache_dir("medqa-bench", appauthor=False))
    path.mkdir(parents=True, exist_ok=True)
    return path


def bundled_dir() -> Path:
    """The bundled data folder: ``data/`` in a checkout, ``medqa_bench/bundled`` once installed."""
    import importlib.util

    spec = importlib.util.find_spec("medqa_bench.bundled")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            if (Path(loc) / "medquad.csv.gz").exists():
                return Path(loc)
    # A checkout used without installing (PYTHONPATH=.): data/ beside the package.
    return Path(__file__).resolve().parent.parent / "data"


def default_dataset() -> Path:
    return bundled_dir() / "medquad.csv.gz"


def shipped_adapters_dir() -> Path:
    return bundled_dir() / "adapters"
