"""Reading JSON objects from files: JSON Lines (one object per non-blank line; a bad line is named by its file and
number) and a file that holds one object (results.json, adapter metadata), each refused with the caller's error."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def parse_jsonl(text: str, source: str, error: type[Exception], hint: str = "") -> list[dict[str, Any]]:
    """The objects of ``text`` (the contents of ``source``), in order; blank lines are skipped.

    A line that is not JSON, or not a JSON object, raises ``error`` with ``"<source>: line N ..."`` and ``hint``
    appended (e.g. ``"; the run folder is damaged"``).
    """
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise error(f"{source}: line {lineno} is not valid JSON ({exc.msg}){hint}") from None
        if not isinstance(row, dict):
            raise error(f"{source}: line {lineno} is not a JSON object{hint}")
        rows.append(row)
    return rows


def read_json_object(path: str | os.PathLike, error: type[Exception], source: str | None = None,
                     hint: str = "") -> dict[str, Any]:
    """The JSON object the UTF-8 file ``path`` holds.

    A file that is not UTF-8 JSON, or holds another JSON value (a list, a number), raises ``error`` with
    ``"<source>: ..."`` (``source``: the path unless given) and ``hint`` appended (e.g. ``"; the folder is damaged"``).
    """
    source = str(path) if source is None else source
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{source}: not valid JSON ({exc}){hint}") from None
    if not isinstance(value, dict):
        raise error(f"{source}: holds a JSON {type(value).__name__}, not an object{hint}")
    return value
