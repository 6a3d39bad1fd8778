"""`medqa-bench data fetch`: the MedQuAD converter byte for byte on the upstream snapshot and by its rules on small XML
files, the judged set from upstream's zip, downloads from a local HTTP server, --from, refusals that leave nothing
behind, and the one line a run without data prints. The snapshot is read from ../shared beside the checkout."""

from __future__ import annotations

import csv
import functools
import gzip
import hashlib
import http.server
import io
import json
import tarfile
import threading
from pathlib import Path

import pytest

from medqa_bench.cli import main
from medqa_bench.errors import DataError
from medqa_bench.data.fetch import JUDGED_ZIP, fetch
from medqa_bench.data.medquad import COLUMNS, MEDQUAD_SHA256, convert_medquad

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
TARBALL = SHARED / "medquad-upstream" / "MedQuAD-577bd37.tar.gz"
needs_shared = pytest.mark.skipif(not TARBALL.is_file(), reason=f"no upstream snapshot at {TARBALL}")


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    folder = tmp_path / "user-data"
    monkeypatch.setenv("MEDQA_BENCH_DATA", str(folder))
    for var in ("MEDQA_BENCH_MEDQUAD_URL", "MEDQA_BENCH_MEDQUAD_JUDGED_URL", "http_proxy", "HTTP_PROXY"):
        monkeypatch.delenv(var, raising=False)
    return folder


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _rows(gz: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(gzip.decompress(gz).decode("utf-8"), newline="")))


# ------------------------------------------------------------------------------------------- the converter


@needs_shared
def test_converter_gives_the_published_bytes():
    """The upstream tarball converts to exactly the published medquad.csv.gz (about 7 s on one core)."""
    data = convert_medquad(TARBALL)
    assert hashlib.sha256(data).hexdigest() == MEDQUAD_SHA256 == _sha(SHARED / "medquad.csv.gz")


DOC = """<?xml version="1.0" encoding="UTF-8"?>
<Document id="{id}" source="X" url="{url}">
<Focus>{focus}</Focus>
<QAPairs>{pairs}</QAPairs>
</Document>
"""
PAIR = '<QAPair pid="{n}"><Question qid="{qid}" qtype="{qtype}">{q}</Question><Answer>{a}</Answer></QAPair>'

RAW_ANSWER = ("Key Points\n" + " " * 20 + "- First point.    - Second point.   Next block starts here:   Then this."
              "  Keep  two   inner\tspaces collapse.\n\t\tLine two of the block." + " " * 9 + "\n" + " " * 20
              + "\t\t\tLine three.\n\n\n   \n  New paragraph with &apos;entity&apos; and a dash - inline.  x   -  - y   ")
ANSWER = ("Key Points\n\n- First point.\n- Second point.\nNext block starts here:\nThen this. Keep two inner spaces "
          "collapse.\nLine two of the block.\nLine three.\n\nNew paragraph with 'entity' and a dash - inline. x\n- - y")


def _doc(id_: str, pairs: list[tuple[str, str, str]], focus: str = "Thing", url: str = "https://x.example/") -> str:
    """One document; each pair is (qtype, question, answer)."""
    body = "".join(PAIR.format(n=i + 1, qid=f"{id_}-{i + 1}", qtype=t, q=q, a=a) for i, (t, q, a) in enumerate(pairs))
    return DOC.format(id=id_, url=url, focus=focus, pairs=body)


def _small_upstream(root: Path) -> None:
    """Four collections whose names sort differently as text and as numbers, files in reverse name order, empty
    answers, and every whitespace rule of MEDQUAD_SOURCE.md."""
    files = {
        "1_Alpha_QA/0000001_2.xml": _doc("0000001_2", [("Information", "What is (are) B ?", "B text.")],
                                         focus="  Second \n doc "),
        "1_Alpha_QA/0000001_1.xml": _doc("0000001_1", [
            ("Symptoms", "  What are\n the   symptoms of A ?\t", RAW_ANSWER),
            ("Causes", "What causes A ?", ""),  # empty: dropped
            ("Causes", "What causes A? ?", " \n\t  \n "),  # empty after normalisation: dropped
            ("Exams and Tests", "How to diagnose A ?", "Tests."),
        ], url="https://x.example/a"),
        "2_Beta_QA/0000009.xml": _doc("0000009", [("outlook", "Outlook of C ?", "Good.")]),
        "10_Gamma_QA/0000001.xml": _doc("0000001", [("dose", "How much D ?", ""), ("usage", "Use of D ?", "Daily.")]),
        "2_Beta_QA/notes.txt": "not a document",
        "readme.txt": "upstream's readme",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")


def test_converter_rules_on_small_xml(tmp_path):
    _small_upstream(tmp_path / "up")
    data = convert_medquad(tmp_path / "up")
    rows = _rows(data)
    assert list(rows[0]) == list(COLUMNS)
    assert [(r["source"], r["qid"]) for r in rows] == [  # collection number, then file name, then pair order
        ("1_Alpha_QA", "0000001_1-1"), ("1_Alpha_QA", "0000001_1-4"), ("1_Alpha_QA", "0000001_2-1"),
        ("2_Beta_QA", "0000009-1"), ("10_Gamma_QA", "0000001-2")]
    first = rows[0]
    assert first["Answer"] == ANSWER
    assert first["Question"] == "What are the symptoms of A ?"
    assert first["qtype"] == "symptoms" and rows[1]["qtype"] == "exams and tests"  # lowercased
    assert first["url"] == "https://x.example/a" and first["focus"] == "Thing"
    assert rows[2]["focus"] == "Second doc"
    # the published file's gzip: no file name in the header, mtime 0; CSV rows end in \r\n
    assert data[3] == 0 and data[4:8] == b"\0\0\0\0"
    assert gzip.decompress(data).startswith(b"qtype,Question,Answer,source,focus,qid,url\r\n")


def test_converter_reads_github_tarballs_and_checkouts_alike(tmp_path):
    """GitHub's archive puts every name under MedQuAD-<commit>/; a checkout may be that folder or the one above it."""
    _small_upstream(tmp_path / "MedQuAD-abc")
    tarball = tmp_path / "github.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(tmp_path / "MedQuAD-abc", arcname="MedQuAD-abc")
    expected = convert_medquad(tmp_path / "MedQuAD-abc")
    assert convert_medquad(tarball) == expected == convert_medquad(tmp_path)


def test_converter_refuses_what_is_not_medquad(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no MedQuAD collection folders"):
        convert_medquad(tmp_path / "empty")
    (tmp_path / "1_A_QA").mkdir()
    (tmp_path / "1_A_QA" / "0001.xml").write_text("<Document><QAPair>", encoding="utf-8")
    with pytest.raises(DataError, match=r"1_A_QA/0001.xml: not a MedQuAD XML document"):
        convert_medquad(tmp_path)


# ------------------------------------------------------------------------------------------- the judged set


@pytest.fixture(scope="module")
def upstream_zip() -> bytes:
    """Upstream's judged-answers zip, as stored in the snapshot."""
    with tarfile.open(TARBALL) as tar:
        return tar.extractfile(JUDGED_ZIP).read()


@needs_shared
def test_judged_set_from_the_zip_inside_the_tarball(data_dir, tmp_path, upstream_zip):
    shared_answers = gzip.decompress((SHARED / "medquad-judged" / "answers.csv.gz").read_bytes())
    done = fetch("medquad-judged", source=TARBALL, progress=False)
    assert done.written and done.path == data_dir / "medquad-judged"
    assert (done.path / "qrels.txt").read_bytes() == (SHARED / "medquad-judged" / "qrels.txt").read_bytes()
    assert gzip.decompress((done.path / "answers.csv.gz").read_bytes()) == shared_answers
    # the zip alone, and the published folder, give the same files
    (tmp_path / JUDGED_ZIP).write_bytes(upstream_zip)
    first = {f: (done.path / f).read_bytes() for f in ("qrels.txt", "answers.csv.gz")}
    for source in (tmp_path / JUDGED_ZIP, SHARED / "medquad-judged"):
        again = fetch("medquad-judged", source=source, force=True, progress=False)
        assert {f: (again.path / f).read_bytes() for f in first} == first


# ------------------------------------------------------------------------------------------- downloads


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """A real HTTP server on 127.0.0.1 serving a temporary folder; yields (folder, base URL)."""
    root = tmp_path / "www"
    root.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()
    httpd.server_close()


@needs_shared
def test_download_through_a_local_http_server(data_dir, server, upstream_zip, monkeypatch, capsys):
    root, base = server
    (root / "MedQuAD.tar.gz").write_bytes(TARBALL.read_bytes())
    (root / "medquad.csv.gz").write_bytes((SHARED / "medquad.csv.gz").read_bytes())
    (root / JUDGED_ZIP).write_bytes(upstream_zip)

    assert main(["-q", "data", "fetch", "medquad-judged", "--url", f"{base}/{JUDGED_ZIP}"]) == 0
    assert capsys.readouterr().out.startswith(f"medquad-judged: wrote {data_dir / 'medquad-judged'} (from {base}/")
    assert _sha(data_dir / "medquad-judged" / "qrels.txt") == _sha(SHARED / "medquad-judged" / "qrels.txt")
    # the environment variable points a download at a mirror, here of the converted file
    monkeypatch.setenv("MEDQA_BENCH_MEDQUAD_URL", f"{base}/medquad.csv.gz")
    assert main(["-q", "data", "fetch", "medquad"]) == 0
    assert _sha(data_dir / "medquad.csv.gz") == MEDQUAD_SHA256
    # the judged set from a download of the whole repository (its zip is inside)
    assert main(["-q", "data", "fetch", "medquad-judged", "--force", "--url", f"{base}/MedQuAD.tar.gz"]) == 0

    assert main(["-q", "data", "fetch", "medquad-judged", "--force", "--url", f"{base}/missing.zip"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"could not download {base}/missing.zip: HTTP 404" in err
    assert (data_dir / "medquad-judged" / "qrels.txt").is_file()  # the good copy is untouched


def test_a_network_failure_is_one_line_and_writes_nothing(data_dir, capsys):
    import socket

    with socket.socket() as s:  # a local port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["-q", "data", "fetch", "medquad", "--url", f"http://127.0.0.1:{port}/x.tar.gz"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "could not download" in err and "--from PATH" in err
    assert not data_dir.exists()


# ------------------------------------------------------------------------------------------- --from and refusals


@needs_shared
def test_from_a_local_copy_then_idempotent_then_force(data_dir, capsys):
    assert main(["data", "fetch", "all", "--from", str(SHARED)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"medquad: wrote {data_dir / 'medquad.csv.gz'} (from {SHARED}, sha256 {MEDQUAD_SHA256[:12]}…)"
    assert out[1].startswith(f"medquad-judged: wrote {data_dir / 'medquad-judged'}")
    assert (data_dir / "medquad.csv.gz").read_bytes() == (SHARED / "medquad.csv.gz").read_bytes()
    before = (data_dir / "medquad.csv.gz").stat().st_mtime_ns
    assert main(["data", "fetch", "all", "--from", str(SHARED)]) == 0
    assert capsys.readouterr().out.startswith(f"medquad: already at {data_dir / 'medquad.csv.gz'}")
    assert (data_dir / "medquad.csv.gz").stat().st_mtime_ns == before
    assert main(["data", "fetch", "medquad", "--force", "--from", str(SHARED / "medquad.csv.gz")]) == 0
    assert "wrote" in capsys.readouterr().out
    assert sorted(p.name for p in data_dir.iterdir()) == ["medquad-judged", "medquad.csv.gz"]  # no temporary files


@needs_shared
def test_a_checksum_mismatch_is_refused_and_leaves_nothing(data_dir, tmp_path, capsys):
    rows = gzip.decompress((SHARED / "medquad.csv.gz").read_bytes()).replace(b"symptoms", b"Symptoms", 1)
    bad = tmp_path / "medquad.csv.gz"
    bad.write_bytes(gzip.compress(rows, mtime=0))
    assert main(["data", "fetch", "medquad", "--from", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not the pinned MedQuAD file" in err and "nothing was written" in err
    assert not data_dir.exists()

    judged = tmp_path / "judged"
    judged.mkdir()
    (judged / "qrels.txt").write_bytes((SHARED / "medquad-judged" / "qrels.txt").read_bytes() + b"1 4-Excellent x\n")
    (judged / "answers.csv.gz").write_bytes((SHARED / "medquad-judged" / "answers.csv.gz").read_bytes())
    assert main(["data", "fetch", "medquad-judged", "--from", str(judged)]) == 2
    assert "qrels.txt is not upstream's" in capsys.readouterr().err
    assert not data_dir.exists()

    # a damaged copy already in place is named, and replaced only with --force
    data_dir.mkdir()
    (data_dir / "medquad.csv.gz").write_bytes(bad.read_bytes())
    assert main(["data", "fetch", "medquad", "--from", str(SHARED / "medquad.csv.gz")]) == 2
    assert "pass --force to replace it" in capsys.readouterr().err
    assert main(["data", "fetch", "medquad", "--force", "--from", str(SHARED / "medquad.csv.gz")]) == 0
    assert _sha(data_dir / "medquad.csv.gz") == MEDQUAD_SHA256


def test_from_what_is_neither_is_refused(data_dir, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello", encoding="utf-8")
    assert main(["data", "fetch", "medquad", "--from", str(tmp_path / "notes.txt")]) == 2
    assert "neither medquad.csv.gz nor a tarball" in capsys.readouterr().err
    assert main(["data", "fetch", "medquad", "--from", str(tmp_path / "absent")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert main(["data", "fetch", "all", "--url", "http://127.0.0.1:9/x"]) == 2
    assert "--url names one download" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- without the data


@pytest.mark.parametrize("argv", [["data", "stats"], ["run", "--limit", "1", "--no-report"]])
def test_without_data_one_line_says_how_to_fetch_it(data_dir, tmp_path, monkeypatch, capsys, argv):
    data_dir.mkdir()
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "run `medqa-bench data fetch medquad`" in err and str(data_dir) in err


# ------------------------------------------------------------------------------------------- shipped adapters


@needs_shared
def test_shipped_adapters_match_the_fetched_data(data_dir):
    """Each shipped adapter's recorded data fingerprint and split manifest are what the fetched file gives."""
    from medqa_bench.data.dataset import DataSpec, load_dataset

    fetch("medquad", source=SHARED / "medquad.csv.gz", progress=False)
    files = sorted((ROOT / "data" / "adapters").glob("*/medqa_bench.json"))
    metas = [json.loads(p.read_text(encoding="utf-8")) for p in files]
    assert len(metas) >= 2
    loaded: dict[str, object] = {}
    for meta in metas:
        spec = DataSpec.from_dict(meta["data"]["spec"])
        key = json.dumps(meta["data"]["spec"], sort_keys=True)
        ds = loaded.setdefault(key, load_dataset(spec))
        assert meta["data"]["fingerprint"] == ds.manifest.data_fingerprint == f"sha256:{MEDQUAD_SHA256}"
        assert meta["data"]["manifest_fingerprint"] == ds.manifest.fingerprint
        sizes = (len(ds.split("train")), len(ds.split("validation")))
        assert (meta["data"]["n_train"], meta["data"]["n_validation"]) == sizes
