"""The run folder: written whole or not at all, by one run at a time, replacing only the same run unless asked.

    lock(folder)                  before any work: the folder can be written (not a file, not read-only); then
                                  ``<parent>/.<name>.lock`` is held until the run ends, so a second run into the
                                  same folder stops at once with a one-line error; the lock file is removed when
                                  the run ends, whether it succeeded or failed
    check_replaceable(...)        before the model loads: a folder holding a different run is replaced only with
                                  ``overwrite`` (``--overwrite``); a folder holding other files is never replaced
    staged(folder)                results.json, samples.jsonl and report.html written into a sibling folder and
                                  swapped in with one rename (medqa_bench.storage.atomic.directory); any other files of
                                  the old folder (a cache, a combined report) are carried over

"The same run" is the same spec as results.json records it, apart from where and how it is written (``name``,
``output_dir``, ``cache``, ``report``, ``overwrite``): re-running a command resumes from the cache and replaces its
folder without asking; a run with another model, adapter, data, split, limit, decoding or metric set does not.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from . import atomic
from ..errors import RunError
from .fingerprint import sha256_json
from .jsonl import read_json_object

log = logging.getLogger(__name__)

#: The files a run writes; the rest of a folder is the user's and is carried over when the folder is replaced.
RUN_FILES = ("results.json", "samples.jsonl", "report.html")
#: Spec keys that say where and how a run is written, not what it evaluates (a backend's options that say how hard it
#: is asked are declared ``placement`` and left out too: medqa_bench.inference.backends.options.comparable).
PLACEMENT_KEYS = ("name", "output_dir", "cache", "report", "overwrite")

_held: dict[Path, int] = {}  # lock files this process holds, with their nesting depth


def lock_path(folder: str | os.PathLike) -> Path:
    folder = Path(folder)
    return folder.parent / f".{folder.name}.lock"


def check_writable(folder: str | os.PathLike) -> None:
    """A :class:`RunError` unless ``folder`` can be created or replaced: not a file, its parent a writable folder."""
    folder = Path(folder)
    if folder.name in ("", ".", "..") or Path.cwd().resolve().is_relative_to(folder.resolve()):
        # replacing it would pull the working directory from under this process (and the shell that started it)
        raise RunError(f"the run folder {folder} is the current folder or holds it; run from elsewhere or choose "
                       "another --out")
    if folder.exists() and not folder.is_dir():
        raise RunError(f"the run folder {folder} is a file; choose another --out or --name")
    if folder.exists() and not os.access(folder, os.W_OK | os.X_OK):
        raise RunError(f"the run folder {folder} is read-only; make it writable (chmod u+w) or choose another --out")
    above = folder.parent
    while not above.exists() and above != above.parent:
        above = above.parent
    if not above.is_dir():
        raise RunError(f"cannot create the run folder {folder}: {above} is a file; choose another --out")
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        os.rmdir(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".probe", dir=folder.parent))
    except OSError as exc:
        where = Path(exc.filename) if exc.filename else folder.parent
        raise RunError(f"cannot write the run folder {folder}: {exc.strerror or exc} ({where}); choose another --out") from None


@contextlib.contextmanager
def lock(folder: str | os.PathLike, *, check: bool = True) -> Iterator[None]:
    """Check that ``folder`` can be written (:func:`check_writable`), then hold its lock file until the block ends
    (re-entrant). A second process asking for the same folder gets a :class:`RunError` at once, naming the holder.
    When the block ends, successfully or not, the lock file is removed (see :func:`_take` for why that is safe).

    ``check=False`` is for a writer that replaces one file of the folder, not the folder (``medqa-bench report``): no
    checks, and no lock where its file cannot be made.
    """
    folder = Path(folder)
    if check:
        check_writable(folder)
    path = lock_path(folder.resolve())  # one lock whichever way (symlink, relative path) the folder is named
    if path in _held:
        _held[path] += 1
        try:
            yield
        finally:
            _held[path] -= 1
        return
    taken = _take(path, folder, required=check)
    if taken is None:
        yield
        return
    fd, _ = taken
    _held[path] = 1
    try:
        yield
    finally:
        del _held[path]
        # Removed while still held: a run that opened this file meanwhile finds it unlinked once it gets the lock,
        # and takes a fresh file instead (_take), so two runs never hold "the" lock at once. Only our own file: one
        # removed by hand may have been replaced by another run's lock, which stays. Where the file system refuses
        # locks the file is removed too (it stopped nothing).
        if _same_file(fd, path):
            with contextlib.suppress(OSError):
                os.unlink(path)
        os.close(fd)  # releases the lock


def _take(path: Path, folder: Path, *, required: bool) -> tuple[int, bool] | None:
    """Open and lock ``path``: ``(fd, locked)``, or None without a lock (no ``fcntl``, or the file cannot be made
    and ``required`` is false). ``locked`` is false where the file system refuses locks (a warning says so).

    The holder removes the file when its run ends, so the lock taken must be on the file that is at ``path`` now: a
    process that opened the file just before the holder removed it would otherwise lock a file no one else can see,
    while a third process creates and locks a new one. After locking, the file at ``path`` is compared with the one
    locked (device and inode); if they differ the lock is dropped and taken again on the new file.
    """
    try:
        import fcntl
    except ImportError:  # no fcntl (Windows): no lock
        return None
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            if required:
                raise RunError(f"cannot create the lock file {path}: {exc.strerror}; choose another --out") from None
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                holder = os.read(fd, 32).decode("ascii", "replace").strip()
                os.close(fd)
                raise RunError(f"another medqa-bench run{f' (pid {holder})' if holder else ''} is writing {folder} "
                               f"(lock {path}); wait for it to finish or choose another --out or --name") from None
            log.warning("cannot lock %s (%s): a second run into %s would not be stopped", path, exc.strerror, folder)
            return _mark(fd), False
        if _same_file(fd, path):
            return _mark(fd), True
        os.close(fd)  # the holder removed it between our open and our lock: take the file there now


def _same_file(fd: int, path: Path) -> bool:
    try:
        at = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (at.st_dev, at.st_ino)


def _mark(fd: int) -> int:
    """Write this process's id into the lock file (the message of a run that finds it held names it)."""
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def identity(spec: Mapping[str, Any]) -> str:
    """What a run evaluates: the fingerprint of its spec (``RunSpec.to_dict()`` or results.json's ``spec``) without
    :data:`PLACEMENT_KEYS`."""
    return "sha256:" + sha256_json({k: v for k, v in _plain(spec).items() if k not in PLACEMENT_KEYS})


def check_replaceable(folder: str | os.PathLike, spec: Mapping[str, Any], *, overwrite: bool,
                      own_files: Iterable[str | os.PathLike] = (),
                      comparable: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
    """A :class:`RunError` unless a run of ``spec`` may replace ``folder``: it is absent or empty, holds the same run
    (or an unfinished one), or holds another run and ``overwrite`` is set. A folder holding files a run does not
    write (``own_files``: the run's cache when it lives there) and no results.json is never replaced. ``comparable``
    puts a recorded spec and ``spec`` in the form they are compared in (the runner's:
    :func:`medqa_bench.inference.backends.options.comparable`, which knows older specs and each backend's options)."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    names = {p.name for p in folder.iterdir()}
    results = folder / "results.json"
    if "results.json" not in names:
        own = set(RUN_FILES) | {Path(f).name + s for f in own_files if Path(f).parent.resolve() == folder.resolve()
                                for s in ("", "-wal", "-shm", "-journal")}
        foreign = sorted(names - own)
        if foreign:
            raise RunError(f"{folder} is not a run folder (it holds '{foreign[0]}' and no results.json); write the run "
                           "into a new or empty folder with --out DIR or --name NAME")
        return  # empty, or what an unfinished run left
    try:
        recorded = json.loads(results.read_text(encoding="utf-8"))["spec"]
        differs = _differing_keys(recorded, spec, comparable or (lambda d: d))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        differs = ["(its results.json cannot be read)"]
    if not differs or overwrite:
        return
    raise RunError(f"{folder} holds a different run (its spec differs in: {', '.join(differs)}); pass --overwrite to "
                   "replace it, or choose another --out or --name")


def _differing_keys(recorded: Mapping[str, Any], spec: Mapping[str, Any],
                    comparable: Callable[[dict[str, Any]], dict[str, Any]]) -> list[str]:
    old, new = comparable(_plain(recorded)), comparable(_plain(spec))
    if identity(old) == identity(new):
        return []
    return sorted(k for k in set(old) | set(new) if k not in PLACEMENT_KEYS and old.get(k) != new.get(k))


#: Spec keys added after run folders were first written, with the value a spec without them meant.
_LATER_KEYS = {"backend": "transformers", "validity": None}


def _plain(spec: Mapping[str, Any]) -> dict[str, Any]:
    """As results.json holds it: tuples as lists, paths as strings; a key added since (:data:`_LATER_KEYS`) with the
    value a spec without it meant, so a run folder written before is still the same run."""
    return {**_LATER_KEYS, **json.loads(json.dumps(dict(spec), default=str))}


@contextlib.contextmanager
def staged(folder: str | os.PathLike) -> Iterator[Path]:
    """A sibling folder to write the run into; on success it replaces ``folder`` in one rename, carrying over the
    old folder's other files. A failure (a full disk, a failing report) leaves ``folder`` as it was and becomes a
    one-line :class:`RunError`."""
    folder = Path(folder)
    with lock(folder):
        try:
            # resolved: a run folder reached through a symlink is replaced where it lives, the link kept
            with atomic.directory(folder.resolve(), overwrite=True, carry_except=RUN_FILES) as tmp:
                yield tmp
        except OSError as exc:
            raise RunError(f"cannot write the run folder {folder}: {exc.strerror or exc}; "
                           "the folder was left as it was") from None


def read_results_file(path: Path) -> dict[str, Any]:
    """A run folder's ``results.json`` as a dict: valid JSON, an object, and a schema of the major version this
    package reads (minor versions only add fields). Every reader of a run folder checks it this one way."""
    from ..schema import SCHEMA_VERSION

    results = read_json_object(path, RunError, hint="; re-run the evaluation to rewrite it")
    version = str(results.get("schema_version", ""))
    if version.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
        older = version.split(".")[0] == "1"
        raise RunError(
            f"{path}: schema_version {version or 'none'!r}, but this medqa-bench reads {SCHEMA_VERSION!r}; "
            + (
                "schema 1.x run folders have one baseline and no reference rows, stop reasons, leakage audit or "
                "verdict, so this report cannot be drawn from them; "
                if older
                else ""
            )
            + "re-run the evaluation with this version (`medqa-bench run`), or use the version that wrote it"
        )
    return results
