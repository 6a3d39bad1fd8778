"""``medqa-bench`` commands run inside the test process, for tests whose subject is the command, not a fresh process.

A fresh ``python -m medqa_bench.cli`` pays ~5 s of imports (torch, transformers, scikit-learn) before it does
anything; the suite runs dozens. :func:`medqa` calls :func:`medqa_bench.cli.main` in this process instead and gives
back what a subprocess would (exit status, stdout, stderr), with everything ``main`` changes for the process put back
afterwards: environment variables, the working directory, the root logger's handlers and level, warning filters.
Tests whose subject needs a process of its own (a kill, a umask, an import-time behaviour, a launcher) keep
``subprocess``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import subprocess
import warnings
from pathlib import Path


def medqa(*args: str, env: dict | None = None, drop_env: tuple[str, ...] = (),
          cwd: str | Path | None = None) -> subprocess.CompletedProcess:
    """``medqa-bench ARGS`` in this process: ``env`` is set and ``drop_env`` unset while it runs."""
    from medqa_bench.cli import main

    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    out, err = io.StringIO(), io.StringIO()
    try:
        os.environ.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(env or {})})
        for name in drop_env:
            os.environ.pop(name, None)
        if cwd is not None:
            os.chdir(cwd)
        root.handlers = []  # so main's logging.basicConfig writes to this command's stderr, as in its own process
        with warnings.catch_warnings(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exc:  # argparse's own errors and --help
                code = exc.code if isinstance(exc.code, int) else 2
    finally:
        for handler in root.handlers:
            if handler not in saved_handlers:
                handler.close()
        root.handlers, root.level = saved_handlers, saved_level
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    return subprocess.CompletedProcess(["medqa-bench", *args], code, out.getvalue(), err.getvalue())
