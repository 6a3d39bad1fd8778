"""Content-addressed store of generations and completion NLLs, written as they are produced.

The key is a digest of everything that can change the value: the model's weight fingerprint, the adapter's
fingerprint (or none for the baseline), quantization, dtype, device type, the system's prompt format, the exact
prompt (and completion) text, the decoding parameters with the format's stop sequences or the scoring context
length, and ``medqa_bench.CODE_VERSION``. Changing any part gives a new key, so a
stale entry is never returned. Entries are committed one batch at a time (SQLite in WAL mode), so a run killed
at any moment keeps everything it finished, and several processes can write at once.
"""

from __future__ import annotations

import json
import random
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from ..errors import RunError
from .fingerprint import sha256_json

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    value TEXT NOT NULL,
    created REAL NOT NULL DEFAULT (julianday('now'))
);
"""


_SQLITE_HEADER = b"SQLite format 3\x00"


def cache_key(kind: str, identity: dict[str, Any], payload: dict[str, Any]) -> str:
    """Digest of (kind, model/adapter identity, the item's exact text and parameters, code version)."""
    from .. import CODE_VERSION

    return sha256_json({"kind": kind, "identity": identity, "payload": payload, "code": CODE_VERSION})


class InferenceCache:
    """A small SQLite key-value store. ``InferenceCache(None)`` is a no-op cache (``--no-cache``)."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        if self.path is not None:
            _check_place(self.path)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = self._open(self.path)

    @staticmethod
    def _open(path: Path, wait_s: float = 60.0) -> sqlite3.Connection:
        # Switching a new file to WAL takes an exclusive lock, and SQLite answers "database is locked" at once,
        # without its busy timeout, when another process is doing the same (several ranks opening one cache): retry.
        deadline = time.monotonic() + wait_s
        while True:
            conn = None
            try:
                conn = sqlite3.connect(str(path), timeout=wait_s, isolation_level=None, check_same_thread=False)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.executescript(_SCHEMA)
                return conn
            except sqlite3.DatabaseError as exc:
                if conn is not None:
                    conn.close()
                locked = isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)
                if not locked or time.monotonic() > deadline:
                    raise _unusable(path, exc) from exc
                time.sleep(0.02 + 0.08 * random.random())

    def get_many(self, keys: list[str]) -> dict[str, Any]:
        if self._conn is None or not keys:
            self.misses += len(keys)
            return {}
        found: dict[str, Any] = {}
        with self._lock:
            for start in range(0, len(keys), 500):
                chunk = keys[start: start + 500]
                rows = self._conn.execute(
                    f"SELECT key, value FROM entries WHERE key IN ({','.join('?' * len(chunk))})", chunk
                ).fetchall()
                found.update((k, json.loads(v)) for k, v in rows)
        self.hits += len(found)
        self.misses += len(keys) - len(found)
        return found

    def put_many(self, items: list[tuple[str, str, Any]]) -> None:
        """Store (key, kind, value) rows in one transaction."""
        if self._conn is None or not items:
            return
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany(
                    "INSERT OR REPLACE INTO entries (key, kind, value) VALUES (?, ?, ?)",
                    [(k, kind, json.dumps(v)) for k, kind, v in items],
                )
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def count(self, kind: str | None = None) -> int:
        if self._conn is None:
            return 0
        q = "SELECT COUNT(*) FROM entries" + (" WHERE kind = ?" if kind else "")
        return int(self._conn.execute(q, (kind,) if kind else ()).fetchone()[0])

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _check_place(path: Path) -> None:
    """A :class:`RunError` unless ``path`` can be the cache file: not a folder, and no file where a folder above it
    would have to be made."""
    if path.is_dir():
        raise RunError(f"cache {path} is a folder; --cache names the SQLite file the cache is kept in "
                       f"(e.g. --cache {path / 'inference.sqlite'}), or pass --no-cache")
    above = path.parent
    while not above.exists() and above != above.parent:
        above = above.parent
    if not above.is_dir():
        raise RunError(f"cannot create the cache {path}: {above} is a file; name another file with --cache, or pass "
                       "--no-cache")


def check_cache(setting: str | Path | None) -> None:
    """A :class:`RunError` unless the cache a spec's ``cache`` names can be opened (:func:`open_cache`): checked while
    a run is planned, before the model loads, creating and writing nothing. An existing file must be a SQLite
    database (an empty file becomes one)."""
    path = cache_path(setting)
    if path is None:
        return
    _check_place(path)
    if not path.is_file():
        return  # created when the cache is opened
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(_SQLITE_HEADER))
    except OSError as exc:
        raise RunError(f"cache {path} cannot be read ({exc.strerror}); name another file with --cache, or pass "
                       "--no-cache") from None
    if not head:
        return
    if head != _SQLITE_HEADER:
        raise _unusable(path, ValueError("it does not start with the SQLite header"))
    conn = sqlite3.connect(str(path), timeout=1.0, isolation_level=None)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # reads the schema: a damaged file says so
    except sqlite3.DatabaseError as exc:
        if not (isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)):  # busy: another run writing
            raise _unusable(path, exc) from exc
    finally:
        conn.close()


def _unusable(path: Path, exc: Exception) -> RunError:
    """The error for a cache that cannot be opened. Deleting it is proposed only for a damaged SQLite file (a cache
    this tool made); a file of something else is the user's, and the hint is another path."""
    try:
        with open(path, "rb") as fh:
            ours = fh.read(len(_SQLITE_HEADER)) == _SQLITE_HEADER
    except OSError:
        ours = False
    if ours:
        return RunError(f"cache {path} is not a usable SQLite database ({exc}); delete it or pass --no-cache")
    return RunError(f"cache {path} is not a SQLite database ({exc}): it may be a file of yours, so it is left as it is; "
                    "name a new file with --cache, or pass --no-cache")


def cache_path(setting: str | Path | None) -> Path | None:
    """The file a spec's ``cache`` names: ``"default"`` the user's (``<cache dir>/inference.sqlite``), None none,
    else the path given."""
    if setting is None:
        return None
    if setting == "default":
        from .paths import cache_dir

        return cache_dir() / "inference.sqlite"
    return Path(setting)


def open_cache(setting: str | Path | None) -> InferenceCache:
    """The cache a spec's ``cache`` names (:func:`cache_path`); None gives a no-op cache."""
    return InferenceCache(cache_path(setting))
