"""The slot engine (medqa_bench.inference.decoder, issue 34) against today's generate, on the real default model (CPU,
float32): exact mode and slot refill give the same texts, token counts, truncation and stop reasons; the step and
padding accounting adds up. The old path's outputs are computed once per module (few prompts, few tokens)."""

from __future__ import annotations

import pytest

from medqa_bench.inference.decoder import WINDOW, _PackedAttention, _RowStopper, batch_padding, generate_slots, packed_gqa_sdpa
from medqa_bench.inference.generation import DecodingParams, generate, resolve_engine

N = 16
REF_STOPS = ("### Question", "### Answer")


@pytest.fixture(scope="module")
def case(default_model, symptoms):
    model, tok = default_model.model, default_model.tokenizer
    items = symptoms.examples[:3]
    prompts = [items[0].prompt("chat", tok), items[1].prompt("chat", tok), items[2].prompt("reference", tok)]
    stops = [(), (), REF_STOPS]
    decoding = DecodingParams(max_new_tokens=N)
    old_stats: dict = {}
    old = generate(model, tok, prompts, decoding, batch_size=3, progress=False, stop_sequences=stops, stats=old_stats)
    cut = [("type",), ("type",)]  # both chat answers say "... is a type of ..." within the budget
    old_cut = generate(model, tok, prompts[:2], decoding, batch_size=2, progress=False, stop_sequences=cut)
    return {"model": model, "tok": tok, "prompts": prompts, "stops": stops, "decoding": decoding, "old": old,
            "old_stats": old_stats, "cut": cut, "old_cut": old_cut}


def test_exact_mode_equals_generate(case):
    stats: dict = {}
    new = generate(case["model"], case["tok"], case["prompts"], case["decoding"], batch_size=3, progress=False,
                   stop_sequences=case["stops"], engine="slots", stats=stats)
    assert new == case["old"]  # text, generated_tokens, truncated, stop_reason
    assert [g.stop_reason for g in new] == ["length", "length", "eos"]  # a chat row runs out, the reference row ends
    assert stats["mode"] == "exact" and stats["prefills"] == 1 and stats["graphs"] == 0


def test_refill_with_fewer_slots_equals_generate(case):
    new, stats = generate_slots(case["model"], case["tok"], case["prompts"], case["decoding"], batch_size=3,
                                stop_sequences=case["stops"], refill=True, slots=2)
    assert new == case["old"]
    assert stats.mode == "refill" and stats.prefills >= 2  # a slot was taken by a second prompt


def test_stop_sequence_cut_as_generate(case):
    new, _ = generate_slots(case["model"], case["tok"], case["prompts"][:2], case["decoding"], batch_size=2,
                            stop_sequences=case["cut"], refill=True, slots=1)  # a stopped row's slot takes the next
    assert new == case["old_cut"]
    assert all(g.stop_reason == "stop" and "type" not in g.text and g.generated_tokens < N for g in case["old_cut"])


def test_step_and_padding_accounting(case):
    prompts, old = case["prompts"][::2], case["old"][::2]  # a chat row of N tokens, a reference row of one
    new, stats = generate_slots(case["model"], case["tok"], prompts, case["decoding"], batch_size=2,
                                stop_sequences=[(), REF_STOPS])
    assert new == old
    steps = -(-(N - 1) // WINDOW) * WINDOW  # the first token comes from the prefill; whole windows after it
    assert (stats.steps, stats.row_steps, stats.useful_row_steps) == (steps, 2 * steps, N - 1)
    assert stats.idle_row_steps == 2 * steps - (N - 1)
    before = batch_padding([[0, 1]], old)
    assert before == {"steps": N - 1, "row_steps": 2 * (N - 1), "useful_row_steps": N - 1,
                      "idle_row_steps": N - 1, "padding_share": 0.5}
    # today's engine reports the same figures of its own batches: one batch of three, two rows run to the budget
    useful = sum(g.generated_tokens - 1 for g in case["old"])
    assert case["old_stats"] == {"mode": "generate", "batches": 1, "steps": N - 1, "row_steps": 3 * (N - 1),
                                 "useful_row_steps": useful, "idle_row_steps": 3 * (N - 1) - useful,
                                 "padding_share": round((3 * (N - 1) - useful) / (3 * (N - 1)), 4)}
    _, refill = generate_slots(case["model"], case["tok"], prompts, case["decoding"], batch_size=2,
                               stop_sequences=[(), REF_STOPS], refill=True, slots=1)
    assert refill.row_steps == steps and refill.idle_row_steps == steps - (N - 1)  # one slot: only window overrun


def test_first_character_filter_never_skips_a_stop(case):
    tok = case["tok"]
    stopper = _RowStopper(tok, [], N, [REF_STOPS])
    ids = tok(case["prompts"][2], add_special_tokens=False)["input_ids"]  # the template's own "### ..." markers
    hits = 0
    for n in range(1, len(ids) + 1):
        tail = ids[max(0, n - stopper.window):n]
        if any(s in tok.decode(tail, skip_special_tokens=True) for s in REF_STOPS):
            hits += 1
            assert any(stopper.flags[t] for t in tail)
    assert hits > 0


def test_engine_resolution():
    greedy = DecodingParams(max_new_tokens=4)
    assert resolve_engine("auto", "cpu", greedy) == "generate"
    assert resolve_engine("auto", "cuda:0", greedy) == "slots"
    assert resolve_engine("auto", "cuda", DecodingParams(max_new_tokens=4, repetition_penalty=1.2)) == "generate"
    assert resolve_engine("auto", "cuda", greedy, adapter_names=["a"]) == "generate"
    assert resolve_engine("refill", "cpu", greedy) == "refill"
    with pytest.raises(ValueError, match="adapter_names"):
        resolve_engine("slots", "cuda", greedy, adapter_names=["a", "b"])
    with pytest.raises(ValueError, match="engine must be one of"):
        resolve_engine("graphs", "cuda", greedy)


def test_packed_attention_equals_repeated_kv_heads():
    """One query token against grouped KV heads, packed (no copy of the cache), gives what transformers 5.17's
    ``repeat_kv`` path gives; more than one query token goes to transformers' own function; the interface is put
    back after the slot engine's loop."""
    import torch
    import torch.nn.functional as F
    from types import SimpleNamespace
    from transformers.integrations.sdpa_attention import repeat_kv
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    torch.manual_seed(0)
    module = SimpleNamespace(num_key_value_groups=3, is_causal=True)
    q, k, v = torch.randn(4, 9, 1, 64), torch.randn(4, 3, 40, 64), torch.randn(4, 3, 40, 64)
    mask = torch.rand(4, 1, 1, 40) > 0.3
    mask[..., 0] = True
    calls = []
    packed = packed_gqa_sdpa(lambda *a, **kw: calls.append(a) or ("original", None))
    out, _ = packed(module, q, k, v, mask, scaling=0.125)
    expected = F.scaled_dot_product_attention(q, repeat_kv(k, 3), repeat_kv(v, 3), attn_mask=mask, scale=0.125)
    assert out.shape == (4, 1, 9, 64) and not calls
    torch.testing.assert_close(out, expected.transpose(1, 2), rtol=0, atol=1e-6)
    assert packed(module, torch.randn(4, 9, 2, 64), k, v, None)[0] == "original" and len(calls) == 1
    before = ALL_ATTENTION_FUNCTIONS["sdpa"]
    with _PackedAttention():
        assert ALL_ATTENTION_FUNCTIONS["sdpa"] is not before
    assert ALL_ATTENTION_FUNCTIONS["sdpa"] is before and "sdpa" not in ALL_ATTENTION_FUNCTIONS._local_mapping


def test_an_unknown_engine_is_refused_before_the_model_loads(tmp_path):
    from cli_runner import medqa

    proc = medqa("run", "--out", str(tmp_path / "run"), "--limit", "1", env={"MEDQA_BENCH_ENGINE": "fast"})
    assert proc.returncode == 2, proc.stderr
    assert "MEDQA_BENCH_ENGINE='fast' is no generation engine" in proc.stderr and "Loading" not in proc.stderr
    assert not (tmp_path / "run").exists()
