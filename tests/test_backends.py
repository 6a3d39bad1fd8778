"""The inference-backend seam: the registry, a second backend through the real runner and cache, and the transformers
backend keeping the cache keys it always had."""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from medqa_bench.inference import backends
from medqa_bench.inference.backends import GenerationRequest, NLLRequest
from medqa_bench.errors import BackendError
from medqa_bench.inference.generation import DecodingParams, Generation
from medqa_bench.inference.nll import CompletionNLL
from medqa_bench.data.rag import RagSpec
from medqa_bench.inference.systems import System


class EchoBackend:
    """A backend with no model: it answers each question with the question and gives every completion an NLL of one
    nat per character. It exists to show that the runner, the cache and the results take any backend."""

    name = "echo"
    capabilities = frozenset({"generate", "nll"})
    calls: list[tuple[str, int]] = []  # (kind, number of requests) of every generate / completion_nll call

    def __init__(self, spec, *, ranks=None):
        self.spec, self.device, self.loaded = spec, "cpu", False

    def load(self, systems):
        self.loaded = True

    def identity(self, system):
        return {"backend": "echo", "version": 1, "prompt_format": system.prompt_format}

    max_length = 64

    def describe(self):
        return {"echo": {"reference": "echo", "fingerprint": "echo-v1"}}

    compute_dtype = "none"

    def render(self, example, system, passages=None):
        return example.prompt(system.prompt_format)

    def count_tokens(self, texts):
        return [len(t.split()) for t in texts]

    def generate(self, requests, *, progress=False, on_result=None):
        assert self.loaded
        EchoBackend.calls.append(("generate", len(requests)))
        out = []
        for i, r in enumerate(requests):
            question = r.prompt.split("### Question:\n", 1)[1].split("\n\n### Answer:", 1)[0]
            out.append(Generation(question, len(question.split()), False, "eos"))
            if on_result:
                on_result(i, out[-1])
        return out

    def completion_nll(self, requests, *, progress=False, on_result=None):
        EchoBackend.calls.append(("nll", len(requests)))
        out = [CompletionNLL(float(len(r.completion)), len(r.completion)) for r in requests]
        for i, value in enumerate(out):
            if on_result:
                on_result(i, value)
        return out

    def batches(self, kind, requests):
        return [[i] for i in range(len(requests))]

    def close(self):
        self.loaded = False


@pytest.fixture
def echo_backend(monkeypatch):
    """EchoBackend registered as "echo" in a fresh registry (the original is put back afterwards); loading the
    transformers model fails the test (the planner reads the model's tokenizer only)."""
    from medqa_bench.inference import models

    def no_model(*a, **k):
        raise AssertionError("the echo backend must not load a transformers model")

    monkeypatch.setattr(backends, "_REGISTRY", None)
    monkeypatch.setattr(models, "load_base", no_model)
    backends.register_backend("echo", EchoBackend, source="tests/test_backends.py")
    EchoBackend.calls = []
    return EchoBackend


def test_registry_finds_builtins_and_answers_did_you_mean(echo_backend):
    from medqa_bench.inference.backends.transformers import TransformersBackend

    assert backends.backend_class("transformers") is TransformersBackend
    assert backends.backend_class("echo") is EchoBackend
    with pytest.raises(BackendError, match=r"unknown backend 'transformer'; did you mean transformers\?"):
        backends.backend_class("transformer")
    with pytest.raises(BackendError, match="already registered"):
        backends.register_backend("echo", EchoBackend)
    with pytest.raises(BackendError, match="not a backend class"):
        backends.register_backend("broken", object)


def test_unknown_backend_fails_before_any_model_loads(tmp_path, echo_backend):
    from medqa_bench import api
    from medqa_bench.spec import RunSpec

    with pytest.raises(BackendError, match="unknown backend 'nope'"):
        api.run(RunSpec(backend="nope", output_dir=str(tmp_path / "run"), limit=1), progress=False)
    assert not (tmp_path / "run" / "results.json").exists()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "medqa_bench.cli", "run", "--backend", "nope", "--limit", "1",
                           "--out", str(tmp_path / "cli")], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("medqa-bench: error: unknown backend 'nope'") and "transformers" in last
    assert "Traceback" not in proc.stderr and not (tmp_path / "cli" / "results.json").exists()


def test_a_backend_without_adapters_refuses_adapter_rows():
    backend = SimpleNamespace(name="echo", capabilities=frozenset({"generate", "nll"}))
    rows = [System("baseline", "baseline", "reference"), System("ft", "adapter", "reference", adapter="/a")]
    backends.check_capabilities(backend, rows[:1])
    with pytest.raises(BackendError, match="backend 'echo' cannot do what this run needs: no adapters"):
        backends.check_capabilities(backend, rows)


def test_any_backend_runs_through_the_runner_and_the_cache(tmp_path, echo_backend):
    from medqa_bench import api
    from medqa_bench.spec import RunSpec

    spec = RunSpec(backend="echo", limit=3, metrics=("loss", "perplexity", "exact_match", "rougeL"), report=False,
                   cache=str(tmp_path / "cache.sqlite"), output_dir=str(tmp_path / "one"), default_adapters=False,
                   baseline_formats=("reference",), reference_rows=("question",))
    first = api.run(spec, progress=False)
    results, samples = first.results, first.samples
    assert results["spec"]["backend"] == "echo" and results["model"] == {"reference": "echo", "fingerprint": "echo-v1"}
    assert list(results["systems"]) == ["baseline", "question"]
    assert results["loss_definition"]["truncation"]["max_length"] == 64
    assert results["cache"]["misses"] == 2 * 3 and results["cache"]["hits"] == 0  # NLL + generation, 3 items
    assert sorted(EchoBackend.calls) == [("generate", 3), ("nll", 3)]
    for record in samples:
        row = record["systems"]["baseline"]
        assert row["prediction"] == record["question"] and row["stop_reason"] == "eos"
        completion = " " + record["reference"]  # the reference template's completion
        assert (row["nll_sum"], row["nll_tokens"]) == (float(len(completion)), len(completion))
        assert record["prompts"]["reference"].startswith("### Question Type:")
    # the echo answers the question, so it scores what the question row scores
    assert results["results"]["baseline"]["rougeL"]["value"] == results["results"]["question"]["rougeL"]["value"]
    assert results["results"]["baseline"]["loss"]["value"] == pytest.approx(1.0)

    EchoBackend.calls = []
    second = api.run(spec.replace(output_dir=str(tmp_path / "two")), progress=False)
    assert second.results["cache"]["hits"] == 2 * 3 and second.results["cache"]["misses"] == 0
    assert EchoBackend.calls == []  # nothing computed: every output came from the cache
    assert second.results["results"] == results["results"]
    assert [r["systems"] for r in second.samples] == [r["systems"] for r in samples]


# --------------------------------------------------------------------------------------------- transformers


def _loaded():
    return SimpleNamespace(adapters={"ft": SimpleNamespace(fingerprint="sha256:f")}, quantization="4bit",
                           source=SimpleNamespace(fingerprint="gguf-sha256:m"), dtype="float32", device="cuda:1")


#: The rows and, for a fixed prompt and completion, the cache keys the harness wrote before the seam existed
#: (medqa_bench/cached_inference.py at b13094d, CODE_VERSION "inference-4"): existing caches keep serving.
ROWS = {
    "ft": (System("ft", "adapter", "reference", "training metadata", "4bit", adapter="/a"),
           "4ac3bdffcfc174a8b1dc8e60722ffad1cc5e5385442489cf483655664ff6a02b"),
    "ft+rag": (System("ft+rag", "adapter", "reference", "training metadata", "4bit", adapter="/a",
                      retrieval=RagSpec("bm25", 3), variant_of="ft"),
               "340446bfe20cbc08dab81c78a25161fbd7f64a1ef2e18dc1c13ccf181bb64213"),
    "baseline": (System("baseline", "baseline", "chat", "x", "4bit"),
                 "d870103c26667a90f7fcc04734a353ed11828bc17364d29e1989ea532a8c7d7c"),
}
GENERATE_KEY = "89142105be1c587c1b181f3c3164068b9ce17caaef4e0501d80ecaa98286a6ba"  # ft, prompt "P", 16 tokens


class _RecordingCache:
    """A cache that holds every key asked for and remembers the keys."""

    def __init__(self, value):
        self.value, self.keys = value, []

    def get_many(self, keys):
        self.keys += keys
        return {k: self.value for k in keys}

    def put_many(self, items):
        raise AssertionError("everything was cached")


def test_transformers_backend_keeps_the_identity_and_cache_keys(monkeypatch):
    import medqa_bench
    from medqa_bench.inference.backends.caching import CachingBackend
    from medqa_bench.inference.backends.transformers import TransformersBackend
    from medqa_bench.spec import RunSpec

    monkeypatch.setattr(medqa_bench, "CODE_VERSION", "inference-4")
    backend = TransformersBackend(RunSpec(device="cpu", max_length=8192))
    backend.bases = {"4bit": _loaded()}
    assert backend.identity(ROWS["ft"][0]) == {"model": "gguf-sha256:m", "adapter": "sha256:f", "quantization": "4bit",
                                               "dtype": "float32", "device": "cuda", "prompt_format": "reference"}
    assert backend.identity(ROWS["baseline"][0])["adapter"] is None
    assert backend.identity(ROWS["ft+rag"][0])["retrieval"] == {"method": "bm25", "k": 3, "words": 200,
                                                               "template_version": 1}
    cache = _RecordingCache({"nll_sum": 2.0, "nll_tokens": 1})
    values = CachingBackend(backend, cache).completion_nll([NLLRequest(s, "P", " C") for s, _ in ROWS.values()])
    assert values == [CompletionNLL(2.0, 1)] * 3
    assert cache.keys == [key for _, key in ROWS.values()]
    cache = _RecordingCache({"text": "t", "generated_tokens": 1, "truncated": False, "stop_reason": "eos"})
    CachingBackend(backend, cache).generate([GenerationRequest(ROWS["ft"][0], "P", DecodingParams(max_new_tokens=16))])
    assert cache.keys == [GENERATE_KEY]


def test_transformers_backend_identity_of_the_loaded_model(default_model):
    from medqa_bench.inference.backends.transformers import TransformersBackend
    from medqa_bench.spec import RunSpec

    backend = TransformersBackend(RunSpec(device="cpu"))
    backend.bases = {"none": default_model}
    row = System("baseline", "baseline", "chat", "x", "none")
    assert backend.identity(row) == {"model": default_model.source.fingerprint, "adapter": None, "quantization": "none",
                                     "dtype": "float32", "device": "cpu", "prompt_format": "chat"}
    assert backend.describe() == {"none": default_model.describe()}
    assert backend.max_length == default_model.model.config.max_position_embeddings
    example = SimpleNamespace(prompt=lambda fmt, tok: f"{fmt}:{tok is backend.tokenizer}")
    assert backend.render(example, row) == "chat:True"
    assert backend.compute_dtype == "float32"


def test_a_backend_without_nll_runs_unless_an_nll_metric_is_asked():
    """A server without prompt log-probabilities: generation-only runs go ahead; loss/perplexity are refused, saying
    why (the backend's ``limitations``) and how to leave them out."""
    backend = SimpleNamespace(name="served", capabilities=frozenset({"generate", "adapters"}),
                              limitations={"nll": "the server gives no prompt log-probabilities"})
    rows = [System("baseline", "baseline", "chat"), System("ft", "adapter", "chat", adapter="served:x")]
    backends.check_capabilities(backend, rows)
    with pytest.raises(BackendError, match=r"no nll .*: the server gives no prompt log-probabilities; the metrics "
                                           r"loss, perplexity need completion NLL: leave them out with --metrics"):
        backends.check_capabilities(backend, rows, nll_metrics=["loss", "perplexity"])


def test_the_openai_backend_is_registered_lazily():
    assert "openai" in backends.backend_registry().names()
    cls = backends.backend_class("openai")
    assert cls.name == "openai" and cls.capabilities == frozenset({"generate", "nll", "adapters", "next_token"})
    assert cls.loads_adapter_folders is False  # no shipped adapter folder is added to a served run
