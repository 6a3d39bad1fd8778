"""repetition_penalty and no_repeat_ngram_size: transformers' generation options reach every system's generation,
its cache key and results.json, apply to every system of a run alike, and are checked before the model loads."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from cli_runner import medqa

# Greedy SmolLM2 continues a counting pattern by repeating it: the case both options exist for.
LOOPING_PROMPT = "red, blue, red, blue, red, blue, red, blue, red, blue,"


def _ngrams(tokens: list[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def _new_tokens(default_model, text: str) -> list[int]:
    return default_model.tokenizer(text, add_special_tokens=False)["input_ids"]


def test_options_change_greedy_generation_of_the_default_model(default_model):
    from medqa_bench.inference.generation import DecodingParams, generate

    def answer(**options):
        d = DecodingParams(max_new_tokens=24, **options)
        return generate(default_model.model, default_model.tokenizer, [LOOPING_PROMPT], d, progress=False)[0]

    plain = answer()
    tokens = _new_tokens(default_model, plain.text)
    assert len(set(_ngrams(tokens, 3))) < len(_ngrams(tokens, 3)), f"the plain answer should loop: {plain.text!r}"

    no_repeat = answer(no_repeat_ngram_size=3)
    prompt_and_answer = _new_tokens(default_model, LOOPING_PROMPT + no_repeat.text)
    # transformers bans a 3-gram already seen in the prompt or the answer: none occurs twice in the answer's part
    answer_grams = _ngrams(prompt_and_answer, 3)[len(_ngrams(_new_tokens(default_model, LOOPING_PROMPT), 3)):]
    assert len(set(answer_grams)) == len(answer_grams), no_repeat.text
    assert no_repeat.text != plain.text

    penalised = answer(repetition_penalty=1.5)
    assert penalised.text != plain.text
    # 1.0 and 0 are "off": the same text as no option at all
    assert answer(repetition_penalty=1.0, no_repeat_ngram_size=0).text == plain.text


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return medqa(*args, cwd=cwd)


@pytest.mark.slow
def test_a_run_records_the_options_for_every_system_and_keys_its_cache_by_them(tmp_path, lora_adapter, short_symptoms):
    cache = tmp_path / "cache.sqlite"
    common = ["-q", "run", "--data", str(short_symptoms), "--adapter", f"ft={lora_adapter}", "--limit", "2", "--max-new-tokens", "12",
              "--batch-size", "1", "--device", "cpu", "--metrics", "loss,rougeL", "--reference-rows", "none",
              "--no-report", "--cache", str(cache)]
    plain = _cli(*common, "--out", str(tmp_path / "plain"), cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    opts = _cli(*common, "--repetition-penalty", "1.3", "--no-repeat-ngram-size", "3", "--out", str(tmp_path / "opts"),
                cwd=tmp_path)
    assert opts.returncode == 0, opts.stderr
    results = json.loads((tmp_path / "opts" / "results.json").read_text())
    assert results["spec"]["decoding"]["repetition_penalty"] == 1.3
    assert results["spec"]["decoding"]["no_repeat_ngram_size"] == 3
    # nothing generated without the options is reused: every generation is a miss, the NLLs (no decoding) are hits
    plain_results = json.loads((tmp_path / "plain" / "results.json").read_text())
    systems = [s for s in results["systems"] if results["systems"][s]["kind"] != "reference"]
    assert systems == ["baseline", "ft"]
    assert results["cache"]["misses"] == len(systems) * 2  # 2 items, one generation each
    assert results["cache"]["hits"] == plain_results["cache"]["misses"] - len(systems) * 2
    # the same run again is all hits
    again = _cli(*common, "--repetition-penalty", "1.3", "--no-repeat-ngram-size", "3", "--out", str(tmp_path / "again"),
                 cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert json.loads((tmp_path / "again" / "results.json").read_text())["cache"]["misses"] == 0


@pytest.mark.parametrize("flag, value, message", [
    ("--repetition-penalty", "0", "decoding.repetition_penalty must be greater than 0 (1.0 = off), not 0.0"),
    ("--no-repeat-ngram-size", "-2", "decoding.no_repeat_ngram_size must be >= 0 (0 = off), not -2"),
])
def test_bad_values_are_one_line_errors_before_the_model_loads(tmp_path, flag, value, message):
    proc = _cli("run", flag, value, "--device", "cpu", "--out", str(tmp_path / "x"), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].endswith(message), proc.stderr
    assert "Traceback" not in proc.stderr and "loading" not in proc.stderr.lower()
    assert not (tmp_path / "x").exists()
