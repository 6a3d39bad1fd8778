"""benchmarks/results_identity.py, the check that the old and the new code write the same results.json for the
committed headline: its comparison (what it drops, what it reports) on hand-made documents, and its replay of the
committed samples (what it answers, what it refuses). The replayed run itself (about two minutes a version) is run by
hand: ``python benchmarks/results_identity.py --compare OLD_COMMIT``."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from benchmark_scripts import benchmark_script



@pytest.fixture(scope="module")
def ri():
    with benchmark_script("results_identity") as module:
        yield module


def doc(**changes):
    base = {"schema_version": "2.5", "created": "2026-01-01T00:00:00+00:00", "spec": {"limit": 0, "seed": 0},
            "environment": {"git_commit": "abc"}, "results": {"a": {"rouge2": {"value": 0.25, "n": 266}}},
            "verdict": {"lines": ["one", "two"]}, "timings": {"score_s": 80.0}, "ratio": float("nan")}
    return {**base, **changes}


def test_only_the_volatile_fields_are_dropped(ri):
    a = doc()
    b = doc(created="2027-02-02T00:00:00+00:00", environment={"git_commit": "def"}, timings={"score_s": 95.9})
    assert set(ri.VOLATILE) == {"created", "timings", "environment"}
    assert ri.differences(ri.normalise(a), ri.normalise(b)) == {}
    assert list(ri.normalise(a)) == ["schema_version", "spec", "results", "verdict", "ratio"]
    assert a["created"] == "2026-01-01T00:00:00+00:00"  # the document itself is left as it was


def test_differences_name_dotted_keys_absent_sides_and_key_order(ri):
    a = doc()
    b = doc(results={"a": {"rouge2": {"value": 0.26, "n": 266}}}, verdict={"lines": ["one", "two", "three"]},
            added={"x": 1})
    assert ri.differences(ri.normalise(a), ri.normalise(b)) == {
        "results.a.rouge2.value": {"old": 0.25, "new": 0.26},
        "verdict.lines.2": {"old": "<absent>", "new": "three"},
        "added.x": {"old": "<absent>", "new": 1},
    }
    swapped = {"spec": {"seed": 0, "limit": 0}, **{k: v for k, v in a.items() if k != "spec"}}
    assert ri.differences(a, swapped) == {"<key order>": {"old": "schema_version", "new": "spec.seed"}}


def test_files_written_differently_differ(ri, tmp_path):
    old, new, other = tmp_path / "old.json", tmp_path / "new.json", tmp_path / "other.json"
    old.write_text(json.dumps(doc(), indent=2, ensure_ascii=False) + "\n")
    new.write_text(json.dumps(doc(created="later"), indent=2, ensure_ascii=False) + "\n")
    other.write_text(json.dumps(doc(), indent=None))
    assert ri.compare_files(old, new) == {}
    assert ri.compare_files(old, other) == {"<file format>": {"old": "indent=2 ensure_ascii=False newline=True",
                                                              "new": "indent=None ensure_ascii=False newline=False"}}


def request(ri, name, kind, fmt, prompt, completion=None):
    system = SimpleNamespace(name=name, kind=kind, prompt_format=fmt)
    return SimpleNamespace(system=system, prompt=prompt, completion=completion)


def test_the_replay_answers_from_the_committed_samples_and_refuses_the_rest(ri):
    import lzma

    replay = ri.Replay()
    with lzma.open(ri.HEADLINE / "samples.jsonl.xz", "rt", encoding="utf-8") as f:
        item = json.loads(f.readline())
    chat, ref = item["prompts"]["chat"], item["prompts"]["reference"]
    g = replay.generation(request(ri, "baseline-chat", "baseline", "chat", chat))
    committed = item["systems"]["baseline-chat"]
    assert (g.text, g.generated_tokens, g.truncated, g.stop_reason) == (
        committed["prediction"], committed["generated_tokens"], committed["truncated"], committed["stop_reason"])
    n = replay.nll(request(ri, "s07-ref-all", "adapter", "reference", ref, " " + item["reference"]))
    assert (n.nll_sum, n.nll_tokens) == (item["systems"]["s07-ref-all"]["nll_sum"], 111)
    # the adapter check's base-alone probe: the committed baseline row of its format
    probe = replay.nll(request(ri, "baseline", "baseline", "reference", ref, " " + item["reference"]))
    assert probe.nll_sum == item["systems"]["baseline-reference"]["nll_sum"]
    with pytest.raises(ri.ReplayError, match="no committed item has the prompt"):
        replay.generation(request(ri, "baseline-chat", "baseline", "chat", chat + " "))
    with pytest.raises(ri.ReplayError, match="is not the committed item's"):
        replay.nll(request(ri, "baseline-chat", "baseline", "chat", chat, " " + item["reference"]))
    with pytest.raises(ri.ReplayError, match="'my-adapter' .* is not in the committed headline"):
        replay.generation(request(ri, "my-adapter", "adapter", "reference", ref))
    with pytest.raises(ri.ReplayError, match="prompted in chat"):
        replay.generation(request(ri, "s07-ref-all", "adapter", "chat", chat))
