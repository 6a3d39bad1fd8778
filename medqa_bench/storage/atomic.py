"""Atomic writes: a reader sees the old file or folder or the new one, never half of either.

New files and folders get the mode the user's umask gives (``tempfile`` makes them 0600 and 0700, which would leave
a report meant to be shared unreadable by others). That holds for what a library writes into a folder written with
:func:`directory` too: ``safetensors`` writes its files through a private temporary file of its own, so an adapter's
``adapter_model.safetensors`` came out 0600; every file and folder made in the temporary folder gets the umask's mode
before the folder is renamed into place.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import sys
import tempfile
from pathlib import Path
from typing import Any, Collection, Iterator


def umask() -> int:
    """The process's umask. On Linux it is read from ``/proc/self/status`` (``Umask:``, kernel 4.7 and later): Python
    has no getter, and setting it and setting it back, the fallback elsewhere, changes it for an instant for every
    thread of the process (a file a library writes meanwhile, e.g. a TensorBoard event file, gets umask 022's mode)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and an ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def write_jsonl(path: str | os.PathLike, rows) -> None:
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


@contextlib.contextmanager
def directory(path: str | os.PathLike, *, overwrite: bool = False,
              carry_except: Collection[str] | None = None) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``path`` in one rename.

    If ``path`` exists and ``overwrite`` is false, :class:`FileExistsError` is raised before any work.
    On failure the temporary folder is removed and ``path`` is untouched. With ``carry_except``, the entries of the
    old folder that the new one lacks and that are not named there are carried over (hard links where possible), so
    a folder that also holds other files (a cache, a combined report) keeps them.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        os.chmod(tmp, 0o777 & ~umask())
        yield tmp
        _follow_umask(tmp)  # before the old folder's files are carried over: those keep their own modes
        if carry_except is not None and path.is_dir():
            _carry(path, tmp, set(carry_except))
        if path.exists() and _exchange(tmp, path):
            _remove(tmp)  # now the old folder
        elif path.exists():  # no atomic exchange here: two renames, the old folder gone for an instant
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / "x")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def _follow_umask(folder: Path) -> None:
    """Give every file and folder under ``folder`` the mode the umask gives a new one (0666 or, for an executable
    file or a folder, 0777, less the umask), whatever mode the writer chose. Symbolic links, and files linked from
    elsewhere (more than one hard link: their mode is shared with a file outside), are left alone."""
    mask = umask()
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            entry = os.path.join(root, name)
            st = os.lstat(entry)
            if stat.S_ISLNK(st.st_mode) or (stat.S_ISREG(st.st_mode) and st.st_nlink > 1):
                continue
            full = 0o777 if stat.S_ISDIR(st.st_mode) or st.st_mode & 0o111 else 0o666
            os.chmod(entry, full & ~mask)


def _carry(old: Path, new: Path, skip: set[str]) -> None:
    for entry in old.iterdir():
        target = new / entry.name
        if entry.name in skip or os.path.lexists(target):
            continue
        if entry.is_symlink():
            os.symlink(os.readlink(entry), target)
        elif entry.is_dir():
            shutil.copytree(entry, target, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(entry, target)


def _link_or_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(src, dst)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # a C library without renameat2 (glibc < 2.28, some others)
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):  # a kernel or file system without it
        return False
    raise OSError(err, os.strerror(err), str(b))
