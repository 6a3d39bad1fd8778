"""MedQuAD's upstream XML turned into ``medquad.csv.gz``, by the rules of the project's ``MEDQUAD_SOURCE.md``.

The upstream repository (``abachaa/MedQuAD``) holds one XML document per topic in 12 collection folders
(``1_CancerGov_QA`` … ``12_MPlusHerbsSupplements_QA``). Every ``<QAPair>`` with a non-empty answer becomes one CSV row
``qtype, Question, Answer, source, focus, qid, url``, in the order collection number, file name, pair. The result is
byte-identical to the published file (sha256 :data:`MEDQUAD_SHA256`) on CPython's own zlib: the rules below were
checked against it, and :func:`gzip_csv` says which gzip settings reproduce its bytes.

>>> normalise_answer("Key Points\\n    - One.    - Two.   Next block")
'Key Points\\n\\n- One.\\n- Two.\\nNext block'

Only the standard library's XML parser is used, on bytes read from the tarball or folder (nothing is extracted to
disk, nothing in the data is executed).
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import re
import tarfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from ..errors import DataError

#: the upstream snapshot the published file was converted from (2023-10-17)
MEDQUAD_COMMIT = "577bd37b96c02d1833b2c9eed2de9f96964e96cb"
#: sha256 of the converted, gzip'd CSV (``../shared/data/medquad.csv.gz``); the data fingerprint adapters record
MEDQUAD_SHA256 = "304a6cf94adae0c8322e670bc1021e128569cd1f2d95d88eb20ef5f5d1c75ec3"
#: the CSV inside that gzip: tells wrong rows from right rows that another deflate compressed differently
MEDQUAD_CSV_SHA256 = "e79354752d35c654109711d9bd217623bf909aa906b6d9dc0f0564afd6a2bd38"
COLUMNS = ("qtype", "Question", "Answer", "source", "focus", "qid", "url")

_COLLECTION = re.compile(r"^(\d+)_[^/]+$")
# An inline list bullet left over from a flattened HTML list: a whole run of 2+ spaces (not its tail: "x   -  - y"
# keeps its second dash inline), then "- ".
_BULLET = re.compile(r"(?<! ) {2,}- ")
# A flattened block boundary: 3+ spaces after . ? ! or : with text right after them (spaces before a line break are
# only trailing blanks, and would otherwise turn one line break into a paragraph break).
_BLOCK_GAP = re.compile(r"([.?!:]) {3,}(?=\S)")
_BLANKS = re.compile(r"[ \t]{2,}|\t")  # a run of spaces and tabs; a lone space is left alone (faster, same result)


@dataclass(frozen=True)
class MedQuADRow:
    qtype: str
    question: str
    answer: str
    source: str  # the collection folder, e.g. 3_GHR_QA
    focus: str
    qid: str
    url: str

    def cells(self) -> tuple[str, ...]:
        return (self.qtype, self.question, self.answer, self.source, self.focus, self.qid, self.url)


def collapse_spaces(text: str) -> str:
    """Every run of whitespace as one space, trimmed (questions and focus)."""
    return " ".join(text.split())


def normalise_answer(text: str) -> str:
    """MEDQUAD_SOURCE.md's answer whitespace rules: bullets and block gaps start lines, blanks collapse within a line,
    consecutive lines join with ``\\n`` and any run of blank lines becomes one paragraph break ``\\n\\n``."""
    text = _BLANKS.sub(" ", _BLOCK_GAP.sub(r"\1\n", _BULLET.sub("\n- ", text)))
    paragraphs: list[list[str]] = [[]]
    for line in text.splitlines():
        line = line.strip()
        if line:
            paragraphs[-1].append(line)
        elif paragraphs[-1]:
            paragraphs.append([])
    return "\n\n".join("\n".join(p) for p in paragraphs if p)


def document_rows(xml: bytes, source: str, where: str = "") -> list[MedQuADRow]:
    """The rows of one MedQuAD XML document; pairs whose answer is empty after normalisation are dropped."""
    try:
        doc = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise DataError(f"{where or source}: not a MedQuAD XML document ({exc})") from None
    focus = collapse_spaces(doc.findtext("Focus") or "")
    url = doc.get("url") or ""
    rows = []
    for pair in doc.iter("QAPair"):
        question, answer = pair.find("Question"), pair.find("Answer")
        if question is None:
            raise DataError(f"{where or source}: a <QAPair> without a <Question>")
        text = normalise_answer("".join(answer.itertext()) if answer is not None else "")
        if text:
            rows.append(MedQuADRow((question.get("qtype") or "").lower(), collapse_spaces("".join(question.itertext())),
                                   text, source, focus, question.get("qid") or "", url))
    return rows


def upstream_documents(path: str | os.PathLike) -> Iterator[tuple[str, str, bytes]]:
    """``(collection, file name, XML bytes)`` of every collection document in an upstream tarball (``git archive`` or
    GitHub's, whose names carry a ``MedQuAD-<commit>/`` prefix) or an extracted folder, in the order they are stored."""
    path = Path(path)
    if path.is_dir():
        roots = [path] + sorted(p for p in path.iterdir() if p.is_dir() and not _COLLECTION.match(p.name))
        root = next((r for r in roots if any(_COLLECTION.match(c.name) for c in r.iterdir() if c.is_dir())), None)
        if root is None:
            raise DataError(f"{path} holds no MedQuAD collection folders (1_CancerGov_QA, …): "
                            "is it the upstream repository?")
        for folder in sorted(c for c in root.iterdir() if c.is_dir() and _COLLECTION.match(c.name)):
            for xml in sorted(folder.glob("*.xml")):
                yield folder.name, xml.name, xml.read_bytes()
        return
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                parts = member.name.split("/")
                if not member.isfile() or not parts[-1].endswith(".xml") or len(parts) < 2:
                    continue
                if _COLLECTION.match(parts[-2]) and len(parts) <= 3:  # folder/file.xml or prefix/folder/file.xml
                    yield parts[-2], parts[-1], tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"{path}: not a readable tarball of the MedQuAD repository ({exc})") from None


def medquad_rows(documents: Iterable[tuple[str, str, bytes]]) -> list[MedQuADRow]:
    """Rows in MEDQUAD_SOURCE.md's order: collection number, then XML file name, then pair order within the file."""
    by_document = {(int(_COLLECTION.match(c).group(1)), name, c): document_rows(xml, c, f"{c}/{name}")
                   for c, name, xml in documents}
    if not by_document:
        raise DataError("no MedQuAD XML documents found (expected <n>_<collection>/<id>.xml)")
    return [row for key in sorted(by_document) for row in by_document[key]]


def csv_bytes(rows: Iterable[MedQuADRow]) -> bytes:
    """UTF-8 CSV with a header row, RFC-4180 quoting and ``\\r\\n`` row ends (the csv module's defaults)."""
    out = io.StringIO(newline="")
    writer = csv.writer(out)
    writer.writerow(COLUMNS)
    writer.writerows(r.cells() for r in rows)
    return out.getvalue().encode("utf-8")


def gzip_csv(data: bytes) -> bytes:
    """Gzip as the published file was written: level 9, mtime 0, no file name, and one ``Z_SYNC_FLUSH`` before the
    end (it was written through a text wrapper, whose close flushes the gzip stream first: 6 bytes more than
    ``gzip.compress``). The deflate bytes are zlib's; a Python built on another deflate (zlib-ng) differs."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        gz.write(data)
        gz.flush()
    return buf.getvalue()


def convert_medquad(upstream: str | os.PathLike) -> bytes:
    """The gzip'd CSV from an upstream tarball or folder (checking its sha256 is the caller's business).

    >>> data = convert_medquad("../shared/data/medquad-upstream/MedQuAD-577bd37.tar.gz")  # doctest: +SKIP
    >>> hashlib.sha256(data).hexdigest() == MEDQUAD_SHA256                                  # doctest: +SKIP
    True
    """
    return gzip_csv(csv_bytes(medquad_rows(upstream_documents(upstream))))
