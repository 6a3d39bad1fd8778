"""Where things live: the user cache, the user data folder (fetched data sets) and the shipped adapters.

Data fetched from public repositories (MedQuAD, its expert-judged answers) is never part of the package: ``medqa-bench
data fetch NAME`` downloads it from upstream into :func:`data_dir`, and the Makefile copies it there from a local
snapshot when one exists.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import DataError

#: file names inside :func:`data_dir`
MEDQUAD_FILE = "medquad.csv.gz"
JUDGED_FOLDER = "medquad-judged"


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


def data_dir() -> Path:
    """``$MEDQA_BENCH_DATA`` if set, else the platform's user data folder (``~/.local/share/medqa-bench`` on Linux).

    Not created here: a lookup must not leave folders behind; ``data fetch`` creates it."""
    env = os.environ.get("MEDQA_BENCH_DATA")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("medqa-bench", appauthor=False))


def default_dataset() -> Path:
    """The fetched MedQuAD CSV; a :class:`DataError` saying how to get it when it is missing."""
    path = data_dir() / MEDQUAD_FILE
    if not path.is_file():
        raise DataError(f"MedQuAD is not at {path}: run `medqa-bench data fetch medquad` (or pass --data PATH)")
    return path


def judged_dir() -> Path:
    """The fetched expert-judged answers (``qrels.txt``, ``answers.csv.gz``); a :class:`DataError` when missing."""
    path = data_dir() / JUDGED_FOLDER
    if not (path / "qrels.txt").is_file() or not (path / "answers.csv.gz").is_file():
        raise DataError(f"the judged answers are not at {path}: run `medqa-bench data fetch medquad-judged`")
    return path


def bundled_dir() -> Path:
    """The package's own files: ``data/`` in a checkout, ``medqa_bench/bundled`` once installed (adapters only)."""
    import importlib.util

    spec = importlib.util.find_spec("medqa_bench.bundled")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            if (Path(loc) / "adapters").is_dir():
                return Path(loc)
    # A checkout used without installing (PYTHONPATH=.): data/ beside the package.
    return Path(__file__).resolve().parents[2] / "data"


def shipped_adapters_dir() -> Path:
    return bundled_dir() / "adapters"
