"""``medqa-bench data fetch NAME``: put a data set taken from a public repository into the user data folder.

Nothing fetched is part of the package or the repository. Each data set is pinned to upstream's commit
(:data:`~medqa_bench.data.medquad.MEDQUAD_COMMIT`) and checked by sha256 before it is written; a file that does not match
is refused and nothing is left behind.

- ``medquad``: the upstream repository's tarball at that commit, converted by :mod:`medqa_bench.data.medquad` into
  ``medquad.csv.gz`` (sha256 :data:`~medqa_bench.data.medquad.MEDQUAD_SHA256`, the data fingerprint the shipped
  adapters record).
- ``medquad-judged``: upstream's ``QA-TestSet-LiveQA-Med-Qrels-2479-Answers.zip`` (2,479 answers judged by experts),
  from which ``qrels.txt`` (byte for byte) and ``answers.csv.gz`` (the answers CSV, gzip'd) are written.

``source`` installs from a local copy instead of downloading: the converted file or the judged folder as published
(``../shared/data``), the upstream tarball or an extracted checkout, or the zip. ``url`` (or
``$MEDQA_BENCH_MEDQUAD_URL``, ``$MEDQA_BENCH_MEDQUAD_JUDGED_URL``) points the download at a mirror.

>>> fetch("medquad", source="../shared/data/medquad.csv.gz").describe()  # doctest: +SKIP
'medquad: wrote ~/.local/share/medqa-bench/medquad.csv.gz (from ../shared/data/medquad.csv.gz, sha256 304a6cf94ada…)'
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..storage import atomic
from ..errors import DataError, SpecError
from ..storage.fingerprint import sha256_file
from .medquad import MEDQUAD_COMMIT, MEDQUAD_CSV_SHA256, MEDQUAD_SHA256, convert_medquad
from ..storage.paths import JUDGED_FOLDER, MEDQUAD_FILE, data_dir

DATASETS = ("medquad", "medquad-judged")

MEDQUAD_URL = f"https://codeload.github.com/abachaa/MedQuAD/tar.gz/{MEDQUAD_COMMIT}"
JUDGED_ZIP = "QA-TestSet-LiveQA-Med-Qrels-2479-Answers.zip"
JUDGED_URL = f"https://raw.githubusercontent.com/abachaa/MedQuAD/{MEDQUAD_COMMIT}/{JUDGED_ZIP}"
URL_ENV = {"medquad": "MEDQA_BENCH_MEDQUAD_URL", "medquad-judged": "MEDQA_BENCH_MEDQUAD_JUDGED_URL"}

JUDGED_ZIP_SHA256 = "23d339357e5a10066542cc1e12f458f7002a8a86731369c8f4a8c4e337bf9ba1"
QRELS = "qrels.txt"
ANSWERS = "answers.csv.gz"
#: the zip's two files (inside a folder of the zip's name; the zip also holds macOS resource forks, ignored)
_QRELS_MEMBER = "All-qrels_LiveQAMed2017-TestQuestions_2479_Judged-Answers.txt"
_ANSWERS_MEMBER = "All-2479-Answers-retrieved-from-MedQuAD.csv"
QRELS_SHA256 = "565fcbca824f25497d0951417e3e8f8fa6d2c37acae02cd2422e1d7f7981bf9d"
ANSWERS_CSV_SHA256 = "0dad0f96fba17eea7592d5f592aa31f2f809bb96eae45a2663422958060a0929"  # uncompressed


@dataclass(frozen=True)
class Fetched:
    """What ``fetch`` did: the data set's place in the user data folder and where its content came from."""

    name: str
    path: Path
    origin: str  # a URL, a local path, or "already there"
    written: bool  # False: a good copy was already in place

    def describe(self) -> str:
        if not self.written:
            return f"{self.name}: already at {self.path} (sha256 checked; --force fetches it again)"
        return f"{self.name}: wrote {self.path} (from {self.origin})"


def fetch(name: str, *, source: str | os.PathLike | None = None, url: str | None = None, force: bool = False,
          progress: bool = True) -> Fetched:
    """Download (or, with ``source``, copy) the data set ``name`` into :func:`~medqa_bench.storage.paths.data_dir`.

    A good copy already there is kept unless ``force``; one that fails its check is replaced only with ``force``.
    """
    if name not in DATASETS:
        raise SpecError(f"unknown data set '{name}'; choose one of: {', '.join(DATASETS)}, all")
    if source is not None and url is not None:
        raise SpecError("give --from PATH or --url URL, not both")
    return (_fetch_medquad if name == "medquad" else _fetch_judged)(source, url, force, progress)


def default_url(name: str) -> str:
    return os.environ.get(URL_ENV[name]) or (MEDQUAD_URL if name == "medquad" else JUDGED_URL)


# ------------------------------------------------------------------------------------------------ medquad


def _fetch_medquad(source, url, force: bool, progress: bool) -> Fetched:
    dest = data_dir() / MEDQUAD_FILE
    if not force and dest.is_file():
        found = sha256_file(dest)
        if found == MEDQUAD_SHA256:
            return Fetched("medquad", dest, "already there", written=False)
        raise DataError(f"{dest} is not the pinned MedQuAD file (sha256 {found[:12]}…, expected "
                        f"{MEDQUAD_SHA256[:12]}…): pass --force to replace it")
    with _obtained("medquad", source, url, progress) as (path, origin):
        data = _medquad_bytes(path, origin)
    atomic.write_bytes(dest, data)
    return Fetched("medquad", dest, f"{origin}, sha256 {MEDQUAD_SHA256[:12]}…", written=True)


def _medquad_bytes(path: Path, origin: str) -> bytes:
    """The checked ``medquad.csv.gz`` bytes from a ready file, an upstream tarball, or a folder holding either."""
    if path.is_dir() and (path / MEDQUAD_FILE).is_file():
        path = path / MEDQUAD_FILE
    if path.is_file() and not tarfile.is_tarfile(path):
        if not _is_gzip(path):
            raise DataError(f"{origin} is neither medquad.csv.gz nor a tarball of the MedQuAD repository")
        data = path.read_bytes()
        _check(data, MEDQUAD_SHA256, f"{origin} is not the pinned MedQuAD file")
        return data
    data = convert_medquad(path)
    found = hashlib.sha256(data).hexdigest()
    if found != MEDQUAD_SHA256:
        if hashlib.sha256(gzip.decompress(data)).hexdigest() == MEDQUAD_CSV_SHA256:
            import zlib

            raise DataError(f"{origin} converts to the right rows, but this Python's zlib "
                            f"({zlib.ZLIB_RUNTIME_VERSION}) compresses them differently from the published file; "
                            "install a copy of medquad.csv.gz with --from PATH")
        raise DataError(f"converting {origin} gave sha256 {found[:12]}…, not the pinned file's "
                        f"{MEDQUAD_SHA256[:12]}…: is it MedQuAD at commit {MEDQUAD_COMMIT[:7]}? Nothing was written")
    return data


# ------------------------------------------------------------------------------------------------ medquad-judged


def _fetch_judged(source, url, force: bool, progress: bool) -> Fetched:
    dest = data_dir() / JUDGED_FOLDER
    if not force and ((dest / QRELS).exists() or (dest / ANSWERS).exists()):
        try:
            _judged_files(dest, str(dest))
        except DataError as exc:
            raise DataError(f"{exc}; pass --force to replace it") from None
        return Fetched("medquad-judged", dest, "already there", written=False)
    with _obtained("medquad-judged", source, url, progress) as (path, origin):
        qrels, answers = _judged_files(path, origin)
    with atomic.directory(dest, overwrite=True, carry_except=(QRELS, ANSWERS)) as tmp:
        (tmp / QRELS).write_bytes(qrels)
        (tmp / ANSWERS).write_bytes(gzip_answers(answers))
    return Fetched("medquad-judged", dest, f"{origin}, qrels and answers sha256-checked", written=True)


def gzip_answers(data: bytes) -> bytes:
    """Level 9, mtime 0, no file name: the same bytes on every run (not the published copy's, which GNU gzip made;
    its content is what is checked)."""
    return gzip.compress(data, compresslevel=9, mtime=0)


def _judged_files(path: Path, origin: str) -> tuple[bytes, bytes]:
    """Checked ``(qrels.txt, answers CSV)`` bytes from the published folder, upstream's zip, or a tarball or checkout of
    the upstream repository holding that zip."""
    if path.is_dir():
        for folder in (path, path / JUDGED_FOLDER):
            if (folder / QRELS).is_file() or (folder / ANSWERS).is_file():
                return _judged_folder(folder)
        zips = [p for p in (path / JUDGED_ZIP, *path.glob(f"*/{JUDGED_ZIP}")) if p.is_file()]
        if not zips:
            raise DataError(f"{origin} holds neither {QRELS} and {ANSWERS} nor {JUDGED_ZIP}")
        blob = zips[0].read_bytes()
    elif zipfile.is_zipfile(path):
        blob = path.read_bytes()
    elif tarfile.is_tarfile(path):
        blob = _zip_in_tarball(path, origin)
    else:
        raise DataError(f"{origin} is neither {JUDGED_ZIP} nor a tarball of the MedQuAD repository")
    _check(blob, JUDGED_ZIP_SHA256, f"{origin}: {JUDGED_ZIP} is not upstream's")
    with zipfile.ZipFile(io.BytesIO(blob)) as zf:
        members = {Path(n).name: n for n in zf.namelist() if not n.startswith("__MACOSX/")}
        qrels, answers = zf.read(members[_QRELS_MEMBER]), zf.read(members[_ANSWERS_MEMBER])
    return _checked_judged(qrels, answers, origin)


def _judged_folder(folder: Path) -> tuple[bytes, bytes]:
    for f in (QRELS, ANSWERS):
        if not (folder / f).is_file():
            raise DataError(f"{folder} lacks {f}")
    try:
        answers = gzip.decompress((folder / ANSWERS).read_bytes())
    except (OSError, EOFError) as exc:
        raise DataError(f"{folder / ANSWERS} is not gzip'd ({exc})") from None
    return _checked_judged((folder / QRELS).read_bytes(), answers, str(folder))


def _checked_judged(qrels: bytes, answers: bytes, origin: str) -> tuple[bytes, bytes]:
    _check(qrels, QRELS_SHA256, f"{origin}: {QRELS} is not upstream's")
    _check(answers, ANSWERS_CSV_SHA256, f"{origin}: the judged answers are not upstream's")
    return qrels, answers


def _zip_in_tarball(path: Path, origin: str) -> bytes:
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                if member.isfile() and member.name.split("/")[-1] == JUDGED_ZIP:
                    return tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"{origin}: not a readable tarball ({exc})") from None
    raise DataError(f"{origin} holds no {JUDGED_ZIP}: is it the MedQuAD repository?")


# ------------------------------------------------------------------------------------------------ shared steps


@contextlib.contextmanager
def _obtained(name: str, source, url: str | None, progress: bool) -> Iterator[tuple[Path, str]]:
    """``(local path, where it came from)``: ``source`` itself, or a download into a temporary folder removed after."""
    if source is not None:
        path = Path(source).expanduser()
        if not path.exists():
            raise DataError(f"--from {source}: no such file or folder")
        yield path, str(source)
        return
    url = url or default_url(name)
    with tempfile.TemporaryDirectory(prefix="medqa-bench-fetch-") as tmp:
        path = Path(tmp) / "download"
        download(url, path, desc=name, progress=progress)
        yield path, url


def download(url: str, dest: Path, *, desc: str = "download", progress: bool = True) -> None:
    """Stream ``url`` into ``dest`` with a progress bar; any failure is one :class:`DataError` line."""
    import http.client
    import urllib.error
    import urllib.request

    from tqdm.auto import tqdm

    from .. import __version__

    request = urllib.request.Request(url, headers={"User-Agent": f"medqa-bench/{__version__}"})
    hint = "check the network, or download it elsewhere and pass --from PATH"
    try:
        with urllib.request.urlopen(request, timeout=60) as response, open(dest, "wb") as fh:
            size = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=size, desc=desc, unit="B", unit_scale=True, disable=not progress, leave=False) as bar:
                while chunk := response.read(1 << 16):
                    fh.write(chunk)
                    bar.update(len(chunk))
            if size is not None and fh.tell() != size:
                raise DataError(f"could not download {url}: the connection closed after {fh.tell()} of {size} "
                                f"bytes; {hint}")
    except urllib.error.HTTPError as exc:
        raise DataError(f"could not download {url}: HTTP {exc.code} {exc.reason}; check the URL, or pass --from PATH"
                        ) from None
    except urllib.error.URLError as exc:
        raise DataError(f"could not download {url}: {_one_line(exc.reason)}; {hint}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise DataError(f"could not download {url}: {_one_line(exc)}; {hint}") from None
    except ValueError as exc:  # not a URL urllib knows
        raise DataError(f"could not download {url}: {_one_line(exc)}") from None


def _check(data: bytes, expected: str, what: str) -> None:
    found = hashlib.sha256(data).hexdigest()
    if found != expected:
        raise DataError(f"{what} (sha256 {found[:12]}…, expected {expected[:12]}…); nothing was written")


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def _one_line(reason: object) -> str:
    return " ".join(str(reason).split()) or type(reason).__name__
