"""Systems as data, the automatic budget and stop sequences (the real tokenizer and model where it matters)."""

from __future__ import annotations

import pytest

from medqa_bench.planning.budget import AUTO_CAP, AUTO_FLOOR, auto_max_new_tokens, given_budget, nearest_rank
from medqa_bench.errors import SpecError
from medqa_bench.inference.generation import (DEFAULT_STOP_SEQUENCES, DecodingParams, StopSequences, finish_generation,
    generate)
from medqa_bench.spec import RunSpec
from medqa_bench.inference.systems import plan_systems, recorded_prompt_format


def _plan(**kw):
    args = dict(baseline_formats=None, prompt_format=None, adapters={}, adapter_formats={},
                reference_rows=("retrieval", "boilerplate", "question"), has_chat_template=True)
    args.update(kw)
    return plan_systems(**args)


def test_baseline_in_its_chat_template_adapter_in_its_recorded_format():
    systems = _plan(adapters={"ft": "/a"}, adapter_formats={"ft": "reference"})
    assert [(s.name, s.kind, s.prompt_format) for s in systems] == [
        ("baseline", "baseline", "chat"), ("ft", "adapter", "reference"), ("retrieval", "reference", None),
        ("boilerplate", "reference", None), ("question", "reference", None)]
    assert systems[0].format_source == "the model's chat template"
    assert systems[1].format_source == "training metadata" and systems[1].peft_name == "ft"
    assert systems[0].peft_name == "__base__" and not systems[2].generates


def test_several_baseline_formats_and_overrides():
    systems = _plan(baseline_formats=("chat", "reference"), adapters={"ft": "/a"}, adapter_formats={"ft": None},
                    reference_rows=())
    assert [(s.name, s.prompt_format) for s in systems] == [("baseline-chat", "chat"),
                                                           ("baseline-reference", "reference"), ("ft", "chat")]
    assert systems[2].format_source.startswith("no training metadata")
    forced = _plan(prompt_format="reference", adapters={"ft": "/a"}, adapter_formats={"ft": "chat"}, reference_rows=())
    assert [(s.name, s.prompt_format) for s in forced] == [("baseline", "reference"), ("ft", "reference")]
    assert "overrides the training metadata" in forced[1].format_source
    plain = _plan(has_chat_template=False, reference_rows=())
    assert plain[0].prompt_format == "reference" and "no chat template" in plain[0].format_source


def test_planning_errors():
    with pytest.raises(SpecError, match="needs a model with a chat template"):
        _plan(baseline_formats=("chat",), has_chat_template=False)
    with pytest.raises(SpecError, match="used twice"):
        _plan(adapters={"question": "/a"}, adapter_formats={})
    with pytest.raises(SpecError, match="did you mean 'retrieval'"):
        RunSpec(reference_rows=("retreival",))
    with pytest.raises(SpecError, match="not a prompt format"):
        RunSpec(baseline_formats=("chat", "markdown"))
    spec = RunSpec.from_dict({"baseline_formats": "chat,reference", "reference_rows": "none"})
    assert spec.baseline_formats == ("chat", "reference") and spec.reference_rows == ()
    assert RunSpec.from_dict(spec.to_dict()) == spec


def test_recorded_prompt_format():
    assert recorded_prompt_format({"resolved": {"prompt_format": "chat"}}) == "chat"
    assert recorded_prompt_format({"recipe": {"data": {"prompt_format": "reference"}}}) == "reference"
    assert recorded_prompt_format(None) is None and recorded_prompt_format({"resolved": {"prompt_format": "x"}}) is None


def test_automatic_budget_rule():
    assert nearest_rank([5, 1, 4, 2, 3], 95) == 5 and nearest_rank(list(range(1, 101)), 95) == 95
    lengths = list(range(1, 101))
    info = auto_max_new_tokens(lengths)
    assert info["max_new_tokens"] == 95 and info["references_longer"] == 6 and not info["capped"]  # 95..100: no room for EOS
    assert auto_max_new_tokens([3] * 10)["max_new_tokens"] == AUTO_FLOOR
    big = auto_max_new_tokens([5000] * 10)
    assert big["max_new_tokens"] == AUTO_CAP and big["capped"] and big["references_longer"] == 10
    assert given_budget(50, lengths) == {**given_budget(50, lengths), "references_longer": 51, "auto_would_be": 95}


def test_decoding_stop_sequences_per_format():
    d = DecodingParams()
    assert d.stop_sequences("reference") == DEFAULT_STOP_SEQUENCES["reference"] and d.stop_sequences("chat") == ()
    custom = DecodingParams(stop={"chat": ["</answer>"], "reference": []})
    assert custom.stop_sequences("chat") == ("</answer>",) and custom.stop_sequences("reference") == ()
    assert custom.for_format("chat")["stop"] == ["</answer>"]
    assert DecodingParams(**custom.to_dict()) == custom
    with pytest.raises(SpecError, match="decoding"):
        RunSpec.from_dict({"decoding": {"stop": "###"}})


@pytest.fixture(scope="module")
def tok(default_model):
    return default_model.tokenizer


def test_finish_generation_cuts_at_the_stop_sequence(tok):
    eos = [tok.eos_token_id]
    text = " Fever and cough.\n\n### Question:\nWhat else?"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    g = finish_generation(tok, ids, eos, ("### Question", "### Answer"))
    assert (g.text, g.stop_reason, g.truncated) == ("Fever and cough.", "stop", False)
    # the tokens up to the one that completed "### Question" are counted, no more
    assert "### Question" in tok.decode(ids[: g.generated_tokens]) and "### Question" not in tok.decode(
        ids[: g.generated_tokens - 1])
    assert finish_generation(tok, ids + eos, eos).stop_reason == "eos"
    plain = finish_generation(tok, ids, eos)
    assert plain.stop_reason == "length" and plain.truncated and plain.generated_tokens == len(ids)
    # a stop sequence after EOS does not count: the model had ended its turn
    early = tok(" Fever.", add_special_tokens=False)["input_ids"] + eos + ids
    assert finish_generation(tok, early, eos, ("### Question",)).text == "Fever."


def test_stop_criterion_looks_only_at_new_tokens_of_its_own_row(tok):
    import torch

    prompt = tok("### Question:\nWhy?\n\n### Answer:", add_special_tokens=False)["input_ids"]
    new = tok(" Because.\n\n### Question", add_special_tokens=False)["input_ids"]
    rows = torch.tensor([prompt + new, prompt + new])
    crit = StopSequences(tok, [("### Question",), ()], len(prompt))
    assert crit(rows, None).tolist() == [True, False]
    # the prompt's own markers never stop a row
    assert crit(torch.tensor([prompt + new[:2], prompt + new[:2]]), None).tolist() == [False, False]


def test_generate_stops_each_row_on_its_own_sequences(default_model):
    model, tok = default_model.model, default_model.tokenizer
    prompts = ["### Question Type:\nsymptoms\n\n### Question:\nWhat are the symptoms of flu?\n\n### Answer:"] * 2
    free = generate(model, tok, prompts[:1], DecodingParams(max_new_tokens=24), progress=False)[0]
    words = free.text.split()
    assert len(words) > 4, free.text
    stop = " " + words[3]  # a sequence the greedy answer is known to reach
    out = generate(model, tok, prompts, DecodingParams(max_new_tokens=24), batch_size=2, progress=False,
                   stop_sequences=[(stop,), ()])
    assert out[0].stop_reason == "stop" and out[0].text == free.text[: free.text.index(stop)].strip()
    assert out[0].generated_tokens < free.generated_tokens
    assert (out[1].text, out[1].stop_reason) == (free.text, free.stop_reason)  # its batch-mate is unaffected


def test_each_adapter_runs_on_the_base_it_was_trained_on():
    systems = _plan(adapters={"q": "/a", "l": "/b", "u": "/c"}, adapter_formats={},
                    adapter_quantizations={"q": "4bit", "l": "none"}, reference_rows=())
    assert [(s.name, s.quantization, s.quantization_source) for s in systems] == [
        ("baseline", "none", "default: the unquantized base"), ("q", "4bit", "training metadata"),
        ("l", "none", "training metadata"), ("u", "none", "no training metadata: the unquantized base")]
    forced = _plan(adapters={"q": "/a"}, adapter_formats={}, adapter_quantizations={"q": "none"}, quantization="4bit",
                   reference_rows=())
    assert [(s.quantization, s.quantization_source) for s in forced] == [
        ("4bit", "quantization"), ("4bit", "quantization (overrides the training metadata)")]
