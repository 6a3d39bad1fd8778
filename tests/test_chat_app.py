"""`medqa-bench chat` end to end: the app started on a local port, driven in headless Chromium (a question typed, every
system's answer shown, passages shown as text, an answer marked, a reference typed, the conversation exported), and
the export evaluated by `medqa-bench run --data`. Also the export format on hand-made turns.

Chromium is driven as tests/test_browser.py drives it (DevTools protocol over a pipe). The app runs the default model
with a small LoRA adapter on tiny data whose every answer carries a script payload, so the retrieved passages hold it.
"""

from __future__ import annotations

import base64
import csv
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from medqa_bench.chat.session import ChatTurn, export_records, write_export

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
PAYLOAD = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'
DISEASES = ["gout", "asthma", "measles", "anemia", "migraine", "psoriasis", "rickets", "scurvy", "shingles", "tetanus",
            "typhus", "mumps", "lupus", "rosacea", "sciatica", "bronchitis", "cholera", "dengue", "eczema", "goiter"]


# ------------------------------------------------------------------------------------------------ export format


def test_export_rows_are_run_data_items(tmp_path):
    from medqa_bench.data.dataset import DataSpec, load_dataset

    turns = [
        ChatTurn("chat-1", "What are the symptoms of gout?", "symptoms",
                 answers={"baseline": "Joint pain.", "ft": "Swollen joints.", "ft+rag": ""},
                 marks={"baseline": "wrong", "ft": "correct", "ft+rag": "correct"}, reference="Painful swollen joints."),
        ChatTurn("chat-2", "What causes asthma?", "causes", answers={"baseline": "Allergens."}),  # nothing marked
        ChatTurn("chat-3", "What are the symptoms of asthma?", "symptoms", answers={"ft": "Wheezing."},
                 marks={"ft": "correct"}, passages=[{"id": "t1", "score": 1.5, "text": "Asthma\nWheezing."}]),
    ]
    rows = export_records(turns)
    # the reviewer's answer first, then the answers marked correct; empty answers and turns without a reference drop
    assert [r["qid"] for r in rows] == ["chat-1", "chat-3"]
    assert rows[0]["Answer"] == ["Painful swollen joints.", "Swollen joints."]
    assert rows[1]["Answer"] == "Wheezing." and rows[1]["passages"][0]["id"] == "t1"
    assert rows[0]["answers"]["baseline"] == {"text": "Joint pain.", "mark": "wrong"}
    path, n = write_export(turns, tmp_path, "conversation")
    assert n == 2 and path == tmp_path / "conversation.jsonl"
    ds = load_dataset(DataSpec(path=str(path), qtype="all"))
    items = {e.id: e for e in ds.split("all")}
    assert items["chat-1"].references == ("Painful swollen joints.", "Swollen joints.")
    assert items["chat-3"].question == "What are the symptoms of asthma?" and items["chat-3"].qtype == "symptoms"


# ------------------------------------------------------------------------------------------------ the app


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tiny_data(path: Path) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["qid", "Question", "Answer", "qtype", "focus"])
        for i, d in enumerate(DISEASES):
            w.writerow([f"q{i:02d}", f"What are the symptoms of {d} ?",
                        f"Symptoms of {d} include fever and pain. {PAYLOAD} See a doctor about {d}.", "symptoms", d])
    return path


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"medqa-bench chat exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"medqa-bench chat did not answer on {url} in {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def chat_server(tmp_path_factory, lora_adapter):
    tmp = tmp_path_factory.mktemp("chat")
    port = _free_port()
    log = tmp / "chat.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "medqa_bench.cli", "chat", "--data", str(_tiny_data(tmp / "tiny.csv")),
             "--no-default-adapter", "--adapter", f"ft={lora_adapter}", "--rag", "bm25:k=2", "--device", "cpu",
             "--max-new-tokens", "8", "--cache", str(tmp / "cache.sqlite"), "--export-dir", str(tmp / "exports"),
             "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp)
    try:
        _wait_http(f"http://127.0.0.1:{port}/", proc, log)
        yield {"url": f"http://127.0.0.1:{port}/", "tmp": tmp, "log": log, "proc": proc}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def session_in_browser(chat_server):
    """Two questions asked in Chromium, the first answer of the first marked correct, a reference typed for the
    second, the conversation exported."""
    from test_browser import DevTools, chromium_binary, js_errors

    browser = DevTools(chromium_binary(), chat_server["tmp"] / "profile", chat_server["tmp"] / "chromium.log")

    def js(expr):
        return browser.evaluate(session, expr)

    def wait_for(expr, timeout=240):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = js(expr)
            if value:
                return value
            time.sleep(0.25)
        raise AssertionError(f"timed out waiting for {expr}; status: {js(STATUS)!r}")

    def type_into(elem_id, text):
        js(f"document.querySelector('#{elem_id} textarea').focus()")
        browser.send("Input.insertText", {"text": text}, session)

    def answers():
        return json.loads(js("JSON.stringify(Array.from(document.querySelectorAll('[id^=answer-] textarea'))"
                             ".map(function (t) { return t.value; }))"))

    def ask(question):
        js("(function () { var t = document.querySelector('#question textarea'); t.value = '';"
           " t.dispatchEvent(new Event('input', {bubbles: true})); })()")
        type_into("question", question)
        js(f"{STATUS.rsplit('.', 1)[0]}.value = ''")  # so the previous question's status does not count
        js("document.querySelector('#ask').click()")
        wait_for(f"{STATUS}.indexOf('answered by') === 0")

    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page"):
            browser.send(f"{domain}.enable", session=session)
        browser.send("Emulation.setDeviceMetricsOverride",
                     {"width": 1360, "height": 1100, "deviceScaleFactor": 1, "mobile": False}, session)
        browser.send("Page.navigate", {"url": chat_server["url"]}, session)
        browser.wait_event("Page.loadEventFired", timeout=90)
        wait_for("!!document.querySelector('#question textarea') && !!document.querySelector('#ask')")
        labels = json.loads(js("JSON.stringify(Array.from(document.querySelectorAll('[id^=answer-]'))"
                               ".map(function (b) { return b.innerText.split('\\n')[0]; }))"))
        ask("What are the symptoms of gout?")
        first = answers()
        passages = js("document.querySelector('#passages textarea').value")
        js("document.querySelector('#mark-1 input[value=correct]').click()")
        time.sleep(1)
        shot = browser.send("Page.captureScreenshot", {"format": "png"}, session, timeout=60)
        ask("What are the symptoms of asthma?")
        second = answers()
        type_into("reference", "Wheezing and shortness of breath.")
        time.sleep(1.5)  # the reference reaches the server on its change event
        js("document.querySelector('#export').click()")
        status = wait_for(f"{STATUS}.indexOf('wrote') === 0 ? {STATUS} : ''", 60)
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "chat.png").write_bytes(base64.b64decode(shot["data"]))
        yield {"labels": labels, "first": first, "second": second, "passages": passages, "status": status,
               "xss": js("typeof window.__xss"), "planted": js("document.querySelectorAll('img[src=x]').length + Array.from(document.scripts)"
                                           ".filter(function (e) { return e.textContent.indexOf('__xss') >= 0; }).length"),
               "errors": js_errors(browser.events)}
    finally:
        browser.close()


STATUS = "document.querySelector('#status textarea').value"


@pytest.mark.slow
@pytest.mark.browser
def test_binds_to_localhost(chat_server):
    assert f"Running on local URL:  {chat_server['url'].rstrip('/')}" in chat_server["log"].read_text()


@pytest.mark.slow
@pytest.mark.browser
def test_every_system_answers_side_by_side(session_in_browser):
    s = session_in_browser
    assert s["errors"] == []
    assert [label.split(" · ")[0] for label in s["labels"]] == ["baseline", "ft", "baseline+rag", "ft+rag"]
    assert "chat format" in s["labels"][0] and "RAG bm25:k=2" in s["labels"][3]
    for answers in (s["first"], s["second"]):
        assert len(answers) == 4 and all(a.strip() for a in answers), answers


@pytest.mark.slow
@pytest.mark.browser
def test_passages_are_shown_as_text(session_in_browser):
    s = session_in_browser
    assert s["passages"].startswith("[1] training item q") and "What are the symptoms of" in s["passages"]
    assert PAYLOAD in s["passages"]  # shown literally ...
    assert s["xss"] == "undefined" and s["planted"] == 0  # ... and never run or parsed as HTML


@pytest.mark.slow
@pytest.mark.browser
def test_export_is_accepted_by_run_data(session_in_browser, chat_server, tmp_path):
    s = session_in_browser
    assert s["status"].startswith("wrote 2 item(s) to ")
    path = Path(s["status"].removeprefix("wrote 2 item(s) to ").strip())
    if not path.is_absolute():
        path = chat_server["tmp"] / path
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [r["Question"] for r in rows] == ["What are the symptoms of gout?", "What are the symptoms of asthma?"]
    assert rows[0]["Answer"] == s["first"][1].strip() and rows[0]["answers"]["ft"]["mark"] == "correct"
    assert rows[1]["Answer"] == "Wheezing and shortness of breath."
    assert rows[1]["passages"] and rows[1]["answers"]["ft+rag"]["retrieval"] == "bm25:k=2"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "medqa_bench.cli", "-q", "run", "--data", str(path), "--split", "all", "--qtype", "all",
         "--reference-rows", "none", "--no-default-adapter", "--limit", "0", "--max-new-tokens", "4",
         "--metrics", "rougeL,token_f1", "--device", "cpu", "--out", str(tmp_path / "run"),
         "--cache", str(tmp_path / "cache.sqlite"), "--no-report"],
        capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    samples = [json.loads(x) for x in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert results["data"]["n_items"] == 2
    assert {r["id"]: r["references"] for r in samples} == {
        rows[0]["qid"]: [rows[0]["Answer"]], rows[1]["qid"]: [rows[1]["Answer"]]}
