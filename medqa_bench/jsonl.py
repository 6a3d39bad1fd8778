"""Reading JSON Lines: one JSON object per non-blank line; a bad line is named by its file and number."""

from __future__ import annotations

import json
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
