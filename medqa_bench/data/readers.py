"""Read a table of rows as it is written, or refuse it: CSV/TSV and JSON Lines (plain or .gz), `datasets` datasets.

A reader that guesses gives wrong references without a word, so every ambiguity is a one-line
:class:`~medqa_bench.errors.DataError` naming the line:

- a column name given twice in the header (a dict reader keeps the last one, so ``Answer`` becomes another column);
- a row with more or fewer fields than the header (a dict reader drops the extra fields or pads with nothing);
- a quoted field that is not closed where CSV says it must be: a stray ``"`` at the start of a field makes the
  field run on into the next rows until some later quote (the question then holds its own answer and the rows it
  swallowed vanish); CSV is read in strict mode, and a quoted field that runs over several lines each of which
  reads as a whole row of its own is refused too;
- in JSON Lines, a key given twice in one object, and a list or object where text is required
  (:meth:`Table.require_text`).

>>> table = load_table("~/.local/share/medqa-bench/medquad.csv.gz")  # `data fetch medquad` put it there  # doctest: +SKIP
>>> table.columns[:3], table.where(0)                  # doctest: +SKIP
(['qtype', 'Question', 'Answer'], 'line 2')
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..errors import DataError
from ..storage.fingerprint import sha256_file, sha256_json

#: Bad rows named in one message; the rest are counted.
_SHOWN = 3
_STRAY_QUOTE_HINT = ("a stray '\"' at the start of a field makes it run on into the following rows: remove it, or "
                     "quote the whole field and double the quotes inside it (\"\")")


@dataclass(frozen=True)
class Table:
    """Rows as read, their column names, the source's fingerprint and where each row starts in the source."""

    rows: list[dict[str, Any]]
    columns: list[str]
    fingerprint: str
    source: str
    lines: list[int] | None = None  # the file line each row starts on; None: a dataset, rows are numbered from 1

    def where(self, i: int) -> str:
        return f"line {self.lines[i]}" if self.lines is not None else f"row {i + 1}"

    def require_text(self, text_columns: Sequence[str], list_columns: Sequence[str] = ()) -> None:
        """Refuse a cell that is not text (a string, or a number read as its digits) in ``text_columns``; cells of
        ``list_columns`` may also be a list of such values (several reference answers). Missing cells are allowed."""
        wanted = [(c, False) for c in dict.fromkeys(text_columns) if c in self.columns]
        wanted += [(c, True) for c in dict.fromkeys(list_columns) if c in self.columns]
        for i, row in enumerate(self.rows):
            for column, list_ok in wanted:
                value = row.get(column)
                values = value if list_ok and isinstance(value, list) else [value]
                bad = next((v for v in values if v is not None and not _is_text(v)), None)
                if bad is not None:
                    what = "a list holding " + _kind(bad) if values is value else _kind(bad)
                    raise DataError(
                        f"{self.source}: {self.where(i)}: column '{column}' holds {what} ({_show(value)}), not text; "
                        f"give it as a string" + ("" if not list_ok else " (or a list of strings for several answers)")
                    )


def _is_text(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _kind(value: Any) -> str:
    return {list: "a list", dict: "an object", bool: "a boolean"}.get(type(value), f"a {type(value).__name__}")


def _show(value: Any, width: int = 40) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= width else text[: width - 1] + "…"


# --------------------------------------------------------------------------------------------- files


def load_table(source: str | os.PathLike | Any) -> Table:
    """Read rows from a file or a `datasets` dataset (a saved folder or the object), refusing what is ambiguous."""
    if not isinstance(source, (str, os.PathLike)):
        return _from_hf(source)
    path = Path(source).expanduser()
    if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
        import datasets

        return _from_hf(datasets.load_from_disk(str(path)), str(path))
    fmt = _table_format(path)
    text = _read_text(path)
    if not text.strip():
        raise DataError(f"{path} is empty")
    if fmt == "jsonl":
        rows, columns, lines = _read_jsonl(text, str(path))
    else:
        rows, columns, lines = _read_delimited(text, str(path), "\t" if fmt == "tsv" else ",")
    if not rows:
        raise DataError(f"{path} has a header but no rows")
    return Table(rows, columns, "sha256:" + sha256_file(path), str(path), lines)


def _from_hf(ds: Any, source: str = "dataset") -> Table:
    if isinstance(getattr(ds, "column_names", None), dict):
        raise DataError("a DatasetDict was given; pick one split, e.g. dataset['train']")
    columns = list(ds.column_names)
    rows = [dict(r) for r in ds]
    if not rows:
        raise DataError("the dataset has no rows")
    fingerprint = f"datasets:{getattr(ds, '_fingerprint', None) or sha256_json(rows)}"
    return Table(rows, columns, fingerprint, source)


def _decode_utf8(raw: bytes, path: Path) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise DataError(
            f"{path}: bytes that are not UTF-8 at byte {exc.start} (line {line}): {raw[exc.start:exc.start + 4]!r}; "
            "re-encode the file as UTF-8"
        ) from None


def _read_text(path: Path) -> str:
    if not path.exists():
        raise DataError(f"data file {path} does not exist")
    if path.is_dir():
        raise DataError(f"{path} is a folder; give a .csv, .csv.gz, .jsonl or .jsonl.gz file, or a saved `datasets` folder")
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DataError(f"{path}: not a valid gzip file ({exc})") from None
    return _decode_utf8(raw, path)


def _table_format(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    ext = suffixes[-1] if suffixes else ""
    if ext in (".csv", ".tsv"):
        return ext[1:]
    if ext in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    raise DataError(f"{path}: unknown format '{ext or 'no extension'}'; medqa-bench reads .csv, .tsv, .jsonl (optionally .gz)")


# --------------------------------------------------------------------------------------------- CSV


def _read_delimited(text: str, source: str, delimiter: str) -> tuple[list[dict[str, Any]], list[str], list[int]]:
    """Rows of a CSV/TSV text with the line each starts on; strict, every row with the header's fields."""
    physical = io.StringIO(text, newline="").readlines()  # the csv module's own line split, so line_num indexes it
    reader = csv.reader(iter(physical), delimiter=delimiter, strict=True)
    header = _next_record(reader, source, 1)
    if header is None:
        raise DataError(f"{source} is empty")
    _check_header(header, source)
    rows: list[dict[str, Any]] = []
    lines: list[int] = []
    wrong: list[tuple[int, int]] = []
    joined: list[tuple[int, list[str]]] = []  # records over several lines: (first line, the lines after it)
    while True:
        start = reader.line_num + 1
        record = _next_record(reader, source, start)
        if record is None:
            break
        if not any(field.strip() for field in record):
            continue  # a blank line
        if len(record) != len(header):
            wrong.append((start, len(record)))
            continue
        if reader.line_num > start:
            joined.append((start, physical[start: reader.line_num]))
        rows.append(dict(zip(header, record)))
        lines.append(start)
    if wrong:
        shown = ", ".join(f"line {line} has {n}" for line, n in wrong[:_SHOWN])
        more = f" (and {len(wrong) - _SHOWN} more rows)" if len(wrong) > _SHOWN else ""
        sep = "a tab" if delimiter == "\t" else f"'{delimiter}'"
        raise DataError(
            f"{source}: {len(wrong)} {'row does' if len(wrong) == 1 else 'rows do'} not have the header's "
            f"{len(header)} fields: {shown}{more}; quote a field "
            f"that contains {sep} (\"a{delimiter}b\"), and look for a stray '\"'"
        )
    _check_not_joined(joined, rows, header, delimiter, source)
    return rows, header, lines


def _next_record(reader, source: str, start: int) -> list[str] | None:
    try:
        return next(reader)
    except StopIteration:
        return None
    except csv.Error as exc:
        reason = str(exc)
        if "expected after" in reason:
            what = f"a quoted field is closed on line {reader.line_num} with text right after its closing quote ({reason})"
        elif "unexpected end of data" in reason:
            what = "a quoted field opened here never closes (the file ends inside it)"
        elif "field limit" in reason:
            what = f"a field runs past {csv.field_size_limit()} characters (to line {reader.line_num})"
        else:
            raise DataError(f"{source}: line {start}: not valid CSV ({reason})") from None
        raise DataError(f"{source}: line {start}: {what}; {_STRAY_QUOTE_HINT}") from None


def _check_header(header: list[str], source: str) -> None:
    seen: dict[str, int] = {}
    for position, name in enumerate(header, 1):
        if name.strip() and name in seen:
            raise DataError(
                f"{source}: column '{name}' appears twice in the header (columns {seen[name]} and {position}); "
                "rename one, so that the column you map is the one read"
            )
        seen.setdefault(name, position)


def _check_not_joined(joined: list[tuple[int, list[str]]], rows: list[dict[str, Any]], header: list[str],
                      delimiter: str, source: str) -> None:
    """Refuse a quoted field whose later lines read as rows of their own: two stray quotes that pair up.

    A quoted field may hold line breaks (MedQuAD's answers do), and prose holds commas, so a line's field count alone
    says little. A line inside a field "looks like a row" when, quotes taken literally, it has the header's fields and
    agrees with the file's rows in every column of few values (``qtype``, ``source``: at most √rows distinct values
    among the rows read): prose lines of the bundled MedQuAD never do. (One stray quote is already an error of the
    strict reader: it runs into the next quote, which does not close a field.)
    """
    if not joined or not rows:
        return
    limit = max(1, int(len(rows) ** 0.5))
    values: dict[int, set[str]] = {}
    for k, name in enumerate(header):
        seen = {row[name] for row in rows if row[name].strip()}
        if 0 < len(seen) <= limit:
            values[k] = seen
    if not values:
        return  # nothing to recognise a row by
    for start, later in joined:
        for offset, line in enumerate(later, 1):
            fields = next(csv.reader([line.rstrip("\r\n")], delimiter=delimiter, quoting=csv.QUOTE_NONE), [])
            if len(fields) == len(header) and all(fields[k] in seen for k, seen in values.items()):
                raise DataError(
                    f"{source}: line {start}: a quoted field opened here runs on over line {start + offset}, which "
                    f"reads as a row of its own; {_STRAY_QUOTE_HINT}"
                )


# --------------------------------------------------------------------------------------------- JSON Lines


def _read_jsonl(text: str, source: str) -> tuple[list[dict[str, Any]], list[str], list[int]]:
    """One JSON object per non-blank line (split on "\\n" only: U+2028 may sit inside a JSON string)."""
    rows: list[dict[str, Any]] = []
    lines: list[int] = []
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line, object_pairs_hook=_unique_keys)
        except json.JSONDecodeError as exc:
            raise DataError(f"{source}: line {lineno} is not valid JSON ({exc.msg})") from None
        except _DuplicateKey as exc:
            raise DataError(f"{source}: line {lineno}: key '{exc.key}' appears twice in one object; keep one") from None
        if not isinstance(row, dict):
            raise DataError(f"{source}: line {lineno} is {_kind(row)}, not a JSON object")
        rows.append(row)
        lines.append(lineno)
    return rows, list(dict.fromkeys(k for r in rows for k in r)), lines


class _DuplicateKey(Exception):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out
