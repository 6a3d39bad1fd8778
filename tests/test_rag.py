"""Retrieval-augmented systems: retrieval on hand-made data, the evaluated split never indexed, the index cache, the
prompt templates, +rag rows in planning and analysis, the grounding metrics on hand-made strings, and a RAG run of the
default model on the CPU."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from cli_runner import medqa

from medqa_bench.data import rag
from medqa_bench.data.dataset import DataSpec, Example, load_dataset
from medqa_bench.errors import MetricError, SpecError
from medqa_bench.data.rag import RagSpec, build_index, load_or_build_index, retrieve

TRAIN = [
    Example("t1", "What are the symptoms of gout?", "Painful, swollen and red joints, often the big toe."),
    Example("t2", "What are the symptoms of asthma?", "Wheezing, coughing and shortness of breath."),
    Example("t3", "What are the symptoms of migraine?", "A throbbing headache on one side, with nausea and sensitivity "
                                                      "to light."),
    Example("t4", "What are the symptoms of anemia?", "Tiredness, pale skin and cold hands."),
]


# ------------------------------------------------------------------------------------------------ retrieval


def test_bm25_finds_the_passage_that_shares_the_words():
    [hits] = retrieve(RagSpec("bm25", k=2), build_index("bm25", TRAIN), [Example("e1", "Which signs does asthma have?",
                                                                                 "x")])
    assert [p.id for p in hits] == ["t2", "t1"]  # t1: score 0, first by position
    assert hits[0].score > 0 == hits[1].score
    assert hits[0].text == "What are the symptoms of asthma?\nWheezing, coughing and shortness of breath."


def test_dense_finds_the_passage_that_means_the_same():
    index = build_index("dense", TRAIN)
    queries = [Example("e1", "I keep whistling when I breathe and run out of air", "x"),
               Example("e2", "my head pounds and bright lights hurt", "x"),
               Example("e3", "feeling exhausted with pale skin", "x")]
    assert [hits[0].id for hits in retrieve(RagSpec("dense", k=1), index, queries)] == ["t2", "t3", "t4"]


def test_an_item_never_retrieves_its_own_training_entry():
    [hits] = retrieve(RagSpec(k=4), build_index("bm25", TRAIN), [TRAIN[1]])
    assert "t2" not in [p.id for p in hits] and len(hits) == 3


def test_passages_are_cut_to_words_with_their_own_spacing():
    assert rag.cut_words("Fever,\n- cough and pain", 2) == "Fever,\n- …"
    assert rag.cut_words("Fever and cough.", 3) == "Fever and cough."
    [hits] = retrieve(RagSpec(k=1, words=2), build_index("bm25", TRAIN), [Example("e", "gout", "x")])
    assert hits[0].text == "What are the symptoms of gout?\nPainful, swollen …"


def _write_rows(path: Path, planted: dict[str, str] | None = None) -> Path:
    diseases = ["gout", "asthma", "measles", "anemia", "migraine", "psoriasis", "rickets", "scurvy", "shingles",
                "tetanus", "typhus", "mumps", "lupus", "rosacea", "sciatica", "bronchitis", "cholera", "dengue",
                "eczema", "goiter", "croup", "pellagra", "rubella", "tinnitus", "vertigo", "wilson", "hepatitis"]
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["qid", "Question", "Answer", "qtype", "focus"])
        for i, d in enumerate(diseases):
            qid = f"q{i:02d}"
            w.writerow([qid, f"What are the symptoms of {d} ?",
                        (planted or {}).get(qid, f"{d.title()} causes fever and pain."), "symptoms", d])
    return path


def test_a_planted_test_answer_is_never_retrieved(tmp_path):
    """The index holds the training split only: a word found only in a test answer retrieves nothing that has it,
    even with every training passage asked for."""
    test_item = load_dataset(DataSpec(path=str(_write_rows(tmp_path / "plain.csv")))).split("test")[0]
    secret = "quokkafever"
    data = DataSpec(path=str(_write_rows(tmp_path / "planted.csv", {test_item.id: f"{secret} {secret} and {secret}."})))
    ds = load_dataset(data)
    test, train = ds.split("test"), ds.split("train")
    assert [e.id for e in test if secret in e.answer] == [test_item.id]  # the split did not move the planted item
    spec = RagSpec("bm25", k=len(train))
    per_item, info = rag.run_passages(spec, [*test, Example("probe", secret, "x")], train, str(tmp_path / "c.sqlite"))
    train_ids = {e.id for e in train}
    assert info["index"]["n_passages"] == len(train)
    for passages in per_item:
        assert len(passages) == len(train) and {p.id for p in passages} <= train_ids
        assert not any(secret in p.text for p in passages)
    assert all(p.score == 0.0 for p in per_item[-1])  # the planted word is not in the index at all


# ------------------------------------------------------------------------------------------------ the index cache


def test_index_is_built_once_and_kept_as_json_and_numpy(tmp_path, monkeypatch):
    import numpy as np

    built = []
    real = rag.build_index
    monkeypatch.setattr(rag, "build_index", lambda m, t: built.append(m) or real(m, t))
    first = load_or_build_index("bm25", TRAIN, tmp_path)
    again = load_or_build_index("bm25", TRAIN, tmp_path)
    assert built == ["bm25"] and again.path == first.path and again.path.parent == tmp_path
    queries = [Example("e", q, "x") for q in ("asthma", "red toe joints", "headache")]
    assert [[(p.id, p.score) for p in h] for h in retrieve(RagSpec(k=3), again, queries)] == \
           [[(p.id, p.score) for p in h] for h in retrieve(RagSpec(k=3), first, queries)]
    files = sorted(p.relative_to(first.path).as_posix() for p in first.path.rglob("*") if p.is_file())
    assert files and all(f.endswith((".json", ".npy")) for f in files), files
    for f in first.path.rglob("*.npy"):
        np.load(f, allow_pickle=False)  # plain arrays: no pickle needed to read them
    assert json.loads((first.path / "passages.json").read_text())["ids"] == ["t1", "t2", "t3", "t4"]

    other = [*TRAIN[:3], Example("t4", TRAIN[3].question, "Tiredness only.")]  # another training split: another key
    assert load_or_build_index("bm25", other, tmp_path).path != first.path and built == ["bm25", "bm25"]
    (first.path / "passages.json").write_text("{not json")  # damaged: rebuilt in place
    assert load_or_build_index("bm25", TRAIN, tmp_path).path == first.path and len(built) == 3
    assert load_or_build_index("bm25", TRAIN, None).path is None  # no cache folder: in memory


def test_dense_index_is_kept_as_npz(tmp_path):
    import numpy as np

    first = load_or_build_index("dense", TRAIN, tmp_path)
    with np.load(first.path / "vectors.npz", allow_pickle=False) as data:
        assert data["vectors"].shape == (4, 384)
    again = load_or_build_index("dense", TRAIN, tmp_path)
    q = [Example("e", "whistling breath", "x")]
    assert [p.id for p in retrieve(RagSpec("dense", 2), again, q)[0]] == [p.id for p in retrieve(RagSpec("dense", 2),
                                                                                                 first, q)[0]]


def test_cache_folder_follows_the_run_cache(tmp_path):
    assert rag.cache_folder(None) is None
    assert rag.cache_folder(str(tmp_path / "x.sqlite")) == tmp_path / "rag"


# ------------------------------------------------------------------------------------------------ prompts and specs


def test_reference_prompt_puts_the_passages_before_the_question():
    item = Example("e1", "What are the signs of gout?", "x", qtype="symptoms")
    passages = [rag.Passage("t1", 2.0, "What are the symptoms of gout?\nPainful joints."),
                rag.Passage("t2", 1.0, "Q2\nA2")]
    assert rag.rag_prompt(item, "reference", None, passages) == (
        "### Question Type:\nsymptoms\n\n### Context:\n[1] What are the symptoms of gout?\nPainful joints.\n\n"
        "[2] Q2\nA2\n\n### Question:\nWhat are the signs of gout?\n\n### Answer:")


@pytest.mark.slow
def test_chat_prompt_puts_the_passages_in_the_user_turn(default_model):
    tok = default_model.tokenizer
    item = Example("e1", "What are the signs of gout?", "x", qtype="symptoms")
    prompt = rag.rag_prompt(item, "chat", tok, [rag.Passage("t1", 2.0, "What are the symptoms of gout?\nPainful.")])
    user = ("Question type: symptoms\n\nPassages from the training set (question and answer), which may help:\n"
            "[1] What are the symptoms of gout?\nPainful.\n\nQuestion: What are the signs of gout?")
    assert prompt == tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                             add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")


def test_rag_spec_parse_and_errors():
    assert RagSpec.parse("bm25:k=3") == RagSpec("bm25", 3) and RagSpec.parse("dense").label == "dense:k=3"
    assert RagSpec.parse("dense:k=5,words=100").label == "dense:k=5,words=100"
    assert RagSpec.parse({"method": "bm25", "k": 2}).to_dict() == {"method": "bm25", "k": 2, "words": 200,
                                                                 "template_version": rag.TEMPLATE_VERSION}
    for bad, says in (("bm2:k=3", "method must be one of"), ("bm25:k=0", "k must be an integer >= 1"),
                      ("bm25:k=three", "must be an integer"), ("bm25:n=3", "must be k=N or words=N"), ("", "give")):
        with pytest.raises(SpecError, match=says):
            RagSpec.parse(bad)
    from medqa_bench.spec import RunSpec

    with pytest.raises(SpecError, match="method must be one of"):
        RunSpec(rag="sparse:k=3")


def test_plan_adds_a_rag_row_of_every_language_model_row():
    from medqa_bench.inference.backends.transformers import identity
    from medqa_bench.inference.systems import plan_systems

    systems = plan_systems(baseline_formats=None, prompt_format=None, adapters={"ft": "/a"},
                           adapter_formats={"ft": "reference"}, reference_rows=("question",), has_chat_template=True,
                           rag=RagSpec("bm25", 3))
    assert [s.name for s in systems] == ["baseline", "ft", "baseline+rag", "ft+rag", "question"]
    plain, rag_row = systems[1], systems[3]
    assert (rag_row.kind, rag_row.prompt_format, rag_row.adapter, rag_row.variant_of) == ("adapter", "reference", "/a",
                                                                                         "ft")
    assert rag_row.adapter_name == plain.adapter_name == "ft" and rag_row.peft_name == "ft"
    assert (plain.prompt_key, rag_row.prompt_key, systems[2].prompt_key) == ("reference", "reference+rag", "chat+rag")
    assert systems[2].adapter_name is None and systems[2].peft_name == "__base__"
    loaded = SimpleNamespace(adapters={"ft": SimpleNamespace(fingerprint="sha256:f")}, quantization="none",
                             source=SimpleNamespace(fingerprint="m"), dtype="float32", device="cpu")
    # a plain row's cache identity has no retrieval key (its cached outputs stay valid); a +rag row's names the spec
    assert "retrieval" not in identity(loaded, plain)
    assert identity(loaded, rag_row)["retrieval"] == {"method": "bm25", "k": 3, "words": 200,
                                                      "template_version": rag.TEMPLATE_VERSION}
    assert identity(loaded, rag_row)["adapter"] == identity(loaded, plain)["adapter"] == "sha256:f"


def test_rag_rows_are_judged_against_the_plain_baselines():
    from medqa_bench.analysis import run_roles
    from medqa_bench.analysis.compare import comparison_pairs

    r = {"retrieval": {"method": "bm25", "k": 3, "label": "bm25:k=3"}}
    results = {"systems": {"baseline": {"kind": "baseline"}, "ft": {"kind": "adapter"},
                           "baseline+rag": {"kind": "baseline", "variant_of": "baseline", **r},
                           "ft+rag": {"kind": "adapter", "variant_of": "ft", **r}, "question": {"kind": "reference"}}}
    roles = run_roles(results, [])
    assert roles["baselines"] == {"ft": ["baseline"], "baseline+rag": ["baseline"], "ft+rag": ["baseline"]}
    assert roles["variants"] == {"baseline+rag": "baseline", "ft+rag": "ft"}
    pairs = comparison_pairs(roles)
    assert ("ft+rag", "ft") in pairs and ("baseline+rag", "baseline") in pairs and ("ft", "baseline+rag") not in pairs
    assert pairs.count(("baseline+rag", "baseline")) == 1


# ------------------------------------------------------------------------------------------------ grounding metrics


def _metric(name, **params):
    from medqa_bench.metrics import resolve_metrics

    return resolve_metrics([name], params={name: params} if params else None)[0]


def test_context_recall_on_hand_made_strings():
    m = _metric("context_recall")
    cases = [
        ("fever and cough", ["Fever is common.", "No cough."], 2 / 3),  # "and" is in no passage
        ("pain pain pain", ["pain"], 1 / 3),  # counts are clipped: one "pain" covers one
        ("pain pain pain", ["pain", "pain and pain"], 1.0),  # summed over the passages
        ("coughing", ["It coughs."], 1.0),  # Porter-stemmed, as rouge1
        ("...", ["anything"], 0.0),  # a reference without tokens
        ("fever", [], 0.0),
    ]
    got = m.compute(predictions=["ignored"] * len(cases), references=[c[0] for c in cases],
                    items=[{"passages": c[1]} for c in cases])
    assert got.tolist() == pytest.approx([c[2] for c in cases], abs=1e-12)
    assert m.kind == "context" and m.bounds is None and "rouge1-recall" in m.signature


def test_answer_grounding_on_hand_made_strings():
    m = _metric("answer_grounding")
    passage = "What are the symptoms of gout?\nGout causes painful swollen joints. Attacks often start at night."
    cases = [
        ("Gout causes painful swollen joints. The stock market fell sharply today.", 0.5),
        ("Attacks often start at night.", 1.0),
        ("- Gout causes painful swollen joints.\n- Attacks often start at night.\nThe stock market fell today.", 2 / 3),
        ("Quarterly earnings beat expectations!", 0.0),
        ("", 0.0),  # no sentence grounds nothing
    ]
    got = m.compute(predictions=[c[0] for c in cases], references=["x"] * len(cases),
                    items=[{"passages": ["Unrelated text about the weather.", passage]}] * len(cases))
    assert got.tolist() == pytest.approx([c[1] for c in cases], abs=1e-12)
    assert "cosine>=0.71" in m.signature and "all-MiniLM-L6-v2" in m.signature
    strict = _metric("answer_grounding", threshold=1.0)  # verbatim sentences still count at 1.0
    assert strict.compute(predictions=["Attacks often start at night."], references=["x"],
                          items=[{"passages": [passage]}]).tolist() == [1.0]
    assert "cosine>=1" in strict.signature
    with pytest.raises(MetricError, match="threshold must be a number in"):
        _metric("answer_grounding", threshold=1.5)
    from medqa_bench.metrics.grounding import sentences

    assert sentences("Fever. Cough!\n- Night sweats\n--\n• Chills? yes") == [
        "Fever.", "Cough!", "Night sweats", "Chills?", "yes"]


def test_context_metrics_score_only_systems_with_passages():
    from medqa_bench.metrics import resolve_metrics, score_samples

    metrics = resolve_metrics(["token_f1", "context_recall"])
    samples = [{"id": f"q{i}", "focus": f"f{i}", "references": ["fever and cough"], "systems": {
        "baseline": {"prediction": "fever"},
        "baseline+rag": {"prediction": "fever", "passages": [{"id": "t1", "score": 1.0, "text": "Fever, no cough."}]},
    }} for i in range(3)]
    results, info = score_samples(samples, metrics, ["baseline", "baseline+rag"], progress=False)
    assert "context_recall" not in results["baseline"] and "context_recall" not in samples[0]["systems"]["baseline"][
        "scores"]
    assert results["baseline+rag"]["context_recall"]["value"] == pytest.approx(2 / 3)
    assert info["context_recall"]["kind"] == "context"
    for s in samples:
        del s["systems"]["baseline+rag"]
        s["systems"]["baseline"].pop("scores")
    results, info = score_samples(samples, metrics, ["baseline"], progress=False)
    assert "context_recall" not in info and set(results["baseline"]) == {"token_f1"}  # a run without retrieval
    with pytest.raises(MetricError, match="applies to systems with retrieval"):
        metrics[1].compute(predictions=["x"], references=["y"], items=[{"id": "q1"}])


# ------------------------------------------------------------------------------------------------ a RAG run on CPU


def _run(*args, cwd=None):
    proc = medqa("-q", "run", *args, cwd=cwd)  # in this process: see cli_runner
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def rag_run(tmp_path_factory, lora_adapter, short_symptoms):
    tmp = tmp_path_factory.mktemp("rag-run")
    args = ["--data", str(short_symptoms), "--rag", "bm25:k=2", "--split", "test", "--limit", "2", "--max-new-tokens", "4", "--adapter",
            f"ft={lora_adapter}", "--reference-rows", "retrieval", "--metrics", "loss,rougeL,context_recall,"
            "answer_grounding", "--device", "cpu", "--cache", str(tmp / "cache.sqlite"), "--out", str(tmp / "run")]
    _run(*args)
    first = json.loads((tmp / "run" / "results.json").read_text())
    _run(*args[:-1], str(tmp / "again"))
    return tmp, first, json.loads((tmp / "again" / "results.json").read_text())


@pytest.mark.slow
def test_rag_run_adds_rag_rows(rag_run):
    tmp, results, _ = rag_run
    assert list(results["systems"]) == ["baseline", "ft", "baseline+rag", "ft+rag", "retrieval"]
    info = results["systems"]["ft+rag"]
    assert (info["kind"], info["variant_of"], info["prompt_format"]) == ("adapter", "ft", "chat")
    assert info["adapter"]["fingerprint"] == results["systems"]["ft"]["adapter"]["fingerprint"]
    r = info["retrieval"]
    assert (r["method"], r["k"], r["label"], r["template_version"]) == ("bm25", 2, "bm25:k=2", rag.TEMPLATE_VERSION)
    assert r["index"]["n_passages"] == results["data"]["train_size"] and Path(r["index"]["path"]).parent == tmp / "rag"
    assert "### Context:" in r["template"]["reference"]
    assert results["spec"]["rag"] == "bm25:k=2" and results["spec"]["adapters"] == {"ft": info["adapter"]["path"]}
    for s in ("baseline", "ft", "baseline+rag", "ft+rag"):
        assert "loss" in results["results"][s]
        assert ("context_recall" in results["results"][s]) == s.endswith("+rag")
        assert ("answer_grounding" in results["results"][s]) == s.endswith("+rag")
    # paired statistics against the baseline and against the plain row, and a verdict of their own
    comparisons = results["analysis"]["comparisons"]
    assert "baseline" in comparisons["baseline+rag"] and {"baseline", "ft"} <= set(comparisons["ft+rag"])
    verdict = results["verdict"]["adapters"]
    assert {"ft", "baseline+rag", "ft+rag"} <= set(verdict)
    assert any(c["code"] == "retrieval" for c in verdict["ft+rag"]["conditions"])


@pytest.mark.slow
def test_rag_run_records_passages_from_the_training_split(rag_run):
    tmp, results, _ = rag_run
    ds = load_dataset(DataSpec())
    train_ids, test_ids = {e.id for e in ds.split("train")}, {e.id for e in ds.split("test")}
    samples = [json.loads(x) for x in (tmp / "run" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2
    for rec in samples:
        assert set(rec["prompts"]) == {"chat", "chat+rag"}
        passages = rec["systems"]["ft+rag"]["passages"]
        assert passages == rec["systems"]["baseline+rag"]["passages"] and len(passages) == 2
        assert {p["id"] for p in passages} <= train_ids and not {p["id"] for p in passages} & test_ids
        for p in passages:
            assert p["text"] in rec["prompts"]["chat+rag"] and p["text"] not in rec["prompts"]["chat"]
        assert "passages" not in rec["systems"]["ft"] and "passages" not in rec["systems"]["retrieval"]
        assert set(rec["systems"]["ft+rag"]["scores"]) == {"loss", "rougeL", "context_recall", "answer_grounding"}
    html = (tmp / "run" / "report.html").read_text(encoding="utf-8")
    explorer = json.loads(html.split('id="explorer-data"', 1)[1].split(">", 1)[1].split("</script>", 1)[0])
    shown = explorer["items"][0]["systems"]["ft+rag"]["passages"]
    assert [p["id"] for p in shown] == [p["id"] for p in samples[0]["systems"]["ft+rag"]["passages"]]
    assert {s["name"]: s["retrieval"] for s in explorer["systems"]}["ft+rag"] == "bm25:k=2"


@pytest.mark.slow
def test_rag_run_again_is_all_cache_hits(rag_run):
    _, first, again = rag_run
    assert again["cache"]["misses"] == 0 and again["cache"]["hits"] > 0
    assert again["systems"]["ft+rag"]["retrieval"]["index"] == first["systems"]["ft+rag"]["retrieval"]["index"]
    assert again["results"]["ft+rag"] == first["results"]["ft+rag"]
