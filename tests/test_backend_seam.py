"""A new backend is one file plus its registration: its options (``backend_options``) are declared in it, checked
against its declaration when a spec is made, given as flags made from the declaration, and recorded in results.json.
Older specs and run folders, which held the openai backend's options at the top level, still read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_runner import medqa
from test_backends import EchoBackend

from medqa_bench.inference import backends
from medqa_bench.inference.backends.options import BackendOption, comparable
from medqa_bench.errors import SpecError
from medqa_bench.inference.generation import Generation
from medqa_bench.spec import RunSpec

ROOT = Path(__file__).resolve().parents[1]


class TinyBackend(EchoBackend):
    """Answers every prompt with its one option's text; no NLL."""

    name = "tiny"
    capabilities = frozenset({"generate"})
    options = (BackendOption("echo_text", str, "ok", "the text every answer is", "TEXT",
                             check=lambda t: None if t.strip() else "echo_text must not be empty: give --echo-text TEXT"),)

    def identity(self, system):
        return {**super().identity(system), "echo_text": self.spec.backend_options["echo_text"]}

    def generate(self, requests, *, progress=False, on_result=None):
        out = [Generation(self.spec.backend_options["echo_text"], 1, False, "eos") for _ in requests]
        for i, value in enumerate(out):
            if on_result:
                on_result(i, value)
        return out


@pytest.fixture
def tiny(monkeypatch):
    """TinyBackend registered as "tiny" in a fresh registry (the original is put back afterwards)."""
    monkeypatch.setattr(backends, "_REGISTRY", None)
    backends.register_backend("tiny", TinyBackend, source="tests/test_backend_seam.py")
    return TinyBackend


def _run(tmp_path: Path, *args: str):
    return medqa("-q", "run", "--limit", "2", "--no-default-adapter", "--metrics", "exact_match,token_f1",
                 "--max-new-tokens", "8", "--no-cache", "--no-report", "--baseline-formats", "reference",
                 "--reference-rows", "question", "--out", str(tmp_path / "run"), *args)


def test_a_registered_backend_runs_through_the_cli_with_its_own_flag(tiny, tmp_path):
    proc = _run(tmp_path, "--backend", "tiny", "--echo-text", "hi")
    assert proc.returncode == 0, proc.stderr
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["spec"]["backend"] == "tiny" and results["spec"]["backend_options"] == {"echo_text": "hi"}
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 and {s["systems"]["baseline"]["prediction"] for s in samples} == {"hi"}
    assert "--echo-text TEXT" in medqa("run", "--help").stdout.replace("\n", " ")

    # the option at its default is recorded too: results.json says what ran
    assert RunSpec(backend="tiny").backend_options == {"echo_text": "ok"}


def test_a_backends_option_is_checked_before_anything_loads(tiny, tmp_path):
    for args, expected in [
        (("--echo-text", "hi"), "error: --echo-text is an option of backend 'tiny', but backend 'transformers' takes "
                                "no such option (its options: none); add --backend tiny, or drop it"),
        (("--backend", "tiny", "--echo-text", " "), "error: echo_text must not be empty: give --echo-text TEXT"),
        (("--backend", "tiny", "--base-url", "http://127.0.0.1:1/v1"), "error: --base-url names a server, but backend "
                                                                        "'tiny' takes no such option (its options: "
                                                                        "echo_text); add --backend openai"),
    ]:
        proc = _run(tmp_path, *args)
        assert proc.returncode == 2 and expected in proc.stderr.strip().splitlines()[-1], proc.stderr
        assert not (tmp_path / "run").exists()
    with pytest.raises(SpecError, match=r"backend 'tiny' has no option 'echo_txt'; did you mean 'echo_text'\? "
                                        r"\(its options: echo_text\)"):
        RunSpec.from_dict({"backend": "tiny", "backend_options": {"echo_txt": "hi"}})
    with pytest.raises(SpecError, match="backend_options.echo_text' must be a string"):
        RunSpec.from_dict({"backend": "tiny", "backend_options": {"echo_text": ["a"]}})


def test_older_specs_move_the_server_options_into_backend_options(tmp_path):
    old = {"backend": "openai", "base_url": "http://127.0.0.1:8000/v1", "served_model": "m", "concurrency": 2,
           "request_timeout": 300.0, "retries": 4}
    assert RunSpec.from_dict(old).backend_options == {"base_url": "http://127.0.0.1:8000/v1", "served_model": "m",
                                                      "concurrency": 2, "request_timeout": 300.0, "retries": 4}
    (tmp_path / "old.yaml").write_text("backend: transformers\nbase_url: null\nconcurrency: 8\nlimit: 3\n")
    spec = RunSpec.from_file(tmp_path / "old.yaml")
    assert spec.backend_options == {} and spec.limit == 3 and "concurrency" not in spec.to_dict()
    with pytest.raises(SpecError, match="--served-model names a model on a server, but backend 'transformers'"):
        RunSpec.from_dict({"served_model": "m"})
    # every committed run folder's spec (written before backend_options) reads
    recorded = {path: json.loads(path.read_text())["spec"] for path in sorted(ROOT.glob("reports/**/results.json"))}
    assert len(recorded) >= 10 and sum("concurrency" in spec for spec in recorded.values()) >= 10
    for path, spec in recorded.items():
        assert RunSpec.from_dict(spec).backend_options == {}, path


def test_a_run_folder_written_before_backend_options_holds_the_same_run(tmp_path):
    from medqa_bench.storage import run_folder
    from medqa_bench.errors import RunError

    folder = tmp_path / "run"
    folder.mkdir()
    spec = RunSpec(limit=3, default_adapters=False)
    # results.json's spec as the code before backend_options wrote it: every field, the five at the top level
    recorded = {k: v for k, v in spec.to_dict().items() if k != "backend_options"}
    recorded.update(base_url=None, served_model=None, concurrency=8, request_timeout=300.0, retries=4)
    (folder / "results.json").write_text(json.dumps({"spec": recorded}))
    # the same run: replaced without asking
    run_folder.check_replaceable(folder, spec.to_dict(), overwrite=False, comparable=comparable)
    with pytest.raises(RunError, match=r"differs in: seed\)"):
        run_folder.check_replaceable(folder, spec.replace(seed=spec.seed + 1).to_dict(), overwrite=False,
                                     comparable=comparable)

    # how hard a server is asked is not what a run evaluates; which server is
    served = RunSpec(backend="openai", backend_options={"base_url": "http://127.0.0.1:8000/v1", "served_model": "m"})
    (folder / "results.json").write_text(json.dumps({"spec": served.to_dict()}))
    options = served.backend_options
    run_folder.check_replaceable(folder, served.replace(backend_options={**options, "concurrency": 1, "retries": 0})
                                 .to_dict(), overwrite=False, comparable=comparable)
    with pytest.raises(RunError, match=r"differs in: backend_options\)"):
        run_folder.check_replaceable(folder, served.replace(backend_options={**options, "served_model": "n"})
                                     .to_dict(), overwrite=False, comparable=comparable)


def test_an_installed_package_registers_a_backend_through_the_entry_point_group(tmp_path, monkeypatch):
    """The group keeps its name (``medqa_bench.backends``) after the package was laid out by stage: a distribution
    that declared a backend before still registers it."""
    import importlib

    site = tmp_path / "site"
    (site / "tiny_backend").mkdir(parents=True)
    (site / "tiny_backend" / "__init__.py").write_text(
        "from test_backend_seam import TinyBackend\n\nclass Installed(TinyBackend):\n    name = 'installed'\n")
    info = site / "tiny_backend-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tiny-backend\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[medqa_bench.backends]\ninstalled = tiny_backend:Installed\n")
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    monkeypatch.setattr(backends, "_REGISTRY", None)
    assert backends.ENTRY_POINT_GROUP == "medqa_bench.backends"
    assert backends.backend_class("installed").__name__ == "Installed"
    assert backends.backend_registry().source("installed") == "entry-point:tiny-backend"
