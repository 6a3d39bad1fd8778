"""``metrics validate``: the statistics against scipy/sklearn, the question bootstrap, the bundled leave-one-out set,
the perturbations, the ``validity.json`` record and the command on good and bad input.

Cheap metrics (token_f1, rougeL, fuzzy) throughout; the embedding metric once, on two questions.
"""

from __future__ import annotations

import collections
import gzip
import json
import typing
from pathlib import Path

import numpy as np
import pytest

from medqa_bench.errors import DataError, SpecError
from medqa_bench.metrics import Metric, resolve_metrics
from medqa_bench.validity import (JudgedCandidate, JudgedSet, bundled_judged_set, load_validity, read_judged_file,
    validate, write_validity)
from medqa_bench.validity import robustness as rb
from medqa_bench.validity import schema
from medqa_bench.validity import stats as S

JUDGED = Path(__file__).resolve().parents[2] / "shared" / "data" / "medquad-judged"
needs_judged = pytest.mark.skipif(not (JUDGED / "qrels.txt").is_file(), reason="../shared/data/medquad-judged missing")


def _fixed(n=120, n_groups=12, seed=3):
    rng = np.random.default_rng(seed)
    groups = [f"q{k}" for k in rng.integers(0, n_groups, n)]
    grades = rng.choice([1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0], n)
    scores = np.round(0.3 * grades + rng.normal(size=n), 1)  # rounded: ties in the scores too
    return scores, grades, groups


# --------------------------------------------------------------------------------------------- statistics


def test_figures_equal_scipy_and_sklearn():
    from scipy.stats import kendalltau, spearmanr
    from sklearn.metrics import roc_auc_score

    x, y, g = _fixed()
    assert S.spearman(x, y, g) == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
    assert S.kendall_tau_b(x, y, g) == pytest.approx(kendalltau(x, y).statistic, abs=1e-12)
    assert S.auc_good(x, y, g) == pytest.approx(roc_auc_score(y >= 3, x), abs=1e-12)
    assert S.auc_good(x, y, g, good_threshold=4) == pytest.approx(roc_auc_score(y >= 4, x), abs=1e-12)
    related = y >= 2
    assert S.auc_on_topic(x, y, g) == pytest.approx(roc_auc_score(y[related] >= 3, x[related]), abs=1e-12)


def test_within_question_figures_by_hand():
    from scipy.stats import spearmanr

    x, y, g = _fixed()
    x[np.array(g) == "q0"] = 0.5  # one question the metric scores constant: counts 0
    g_arr = np.array(g)
    rhos, agree, pairs = [], 0.0, 0
    for q in sorted(set(g)):
        xs, ys = x[g_arr == q], y[g_arr == q]
        if len(set(ys)) >= 2:
            rhos.append(0.0 if len(set(xs)) == 1 else spearmanr(xs, ys).statistic)
        for i in range(len(xs)):
            for j in range(i + 1, len(xs)):
                if ys[i] != ys[j]:
                    pairs += 1
                    agree += 0.5 if xs[i] == xs[j] else float((xs[i] - xs[j]) * (ys[i] - ys[j]) > 0)
    assert S.within_question_spearman(x, y, g) == pytest.approx(np.mean(rhos), abs=1e-12)
    assert S.pairwise_accuracy(x, y, g) == pytest.approx(agree / pairs, abs=1e-12)


def test_a_resample_is_the_data_with_each_question_repeated():
    """The vectorised figures under counts c equal scipy/sklearn on the data with question g's rows repeated c_g
    times: the bootstrap resamples questions, whole."""
    from scipy.stats import kendalltau, spearmanr
    from sklearn.metrics import roc_auc_score

    x, y, g = _fixed()
    boot = S.QuestionBootstrap.draw(g, n_bootstrap=3, seed=5)
    reps = S.figure_replicates(x, y, boot)
    for b in range(3):
        rows = np.repeat(np.arange(x.size), boot.counts[b][boot.codes].astype(int))
        assert reps["spearman"][b] == pytest.approx(spearmanr(x[rows], y[rows]).statistic, abs=1e-10)
        assert reps["kendall_tau_b"][b] == pytest.approx(kendalltau(x[rows], y[rows]).statistic, abs=1e-10)
        assert reps["auc_good"][b] == pytest.approx(roc_auc_score(y[rows] >= 3, x[rows]), abs=1e-10)
    assert (boot.counts.sum(axis=1) == len(set(g))).all()  # each resample draws as many questions as there are


def test_duplicating_answers_inside_a_question_does_not_shrink_the_ci():
    """A candidate bootstrap takes four copies of each answer for four times the evidence and narrows its CI by
    about half; the question bootstrap gives the same interval, since the questions are still the same."""
    x, y, g = _fixed(n=100, n_groups=10)
    x4, y4, g4 = np.repeat(x, 4), np.repeat(y, 4), list(np.repeat(g, 4))

    def width(scores, grades, groups):
        ci, _ = S.summarize(scores, grades, S.QuestionBootstrap.draw(groups, n_bootstrap=400, seed=0))
        return ci["spearman"]["ci_high"] - ci["spearman"]["ci_low"], ci["spearman"]["value"]

    by_question, by_question_4 = width(x, y, g), width(x4, y4, g4)
    assert by_question_4[1] == pytest.approx(by_question[1])
    assert by_question_4[0] == pytest.approx(by_question[0], rel=1e-9)
    by_answer = width(x, y, [str(k) for k in range(x.size)])[0]  # each answer its own "question"
    by_answer_4 = width(x4, y4, [str(k) for k in range(x4.size)])[0]
    assert by_answer_4 < 0.65 * by_answer


def test_comparison_p_and_holm():
    from medqa_bench.analysis.stats import holm

    x, y, g = _fixed()
    boot = S.QuestionBootstrap.draw(g, n_bootstrap=300, seed=1)
    reps = {name: S.summarize(s, y, boot)[1] for name, s in
            (("good", x), ("noise", np.random.default_rng(9).normal(size=x.size)), ("same", x + 1e-9))}
    rows = S.compare(["good", "noise", "same"], reps, figures=["spearman"])
    assert [(r["a"], r["b"]) for r in rows] == [("good", "noise"), ("good", "same"), ("noise", "same")]
    assert rows[0]["difference"] > 0 and rows[0]["ci_low"] > 0 and rows[0]["p"] < 0.05
    assert rows[1]["difference"] == pytest.approx(0.0, abs=1e-9)
    assert [r["p_holm"] for r in rows] == holm([r["p"] for r in rows])


def test_pooled_share_resamples_questions():
    boot = S.QuestionBootstrap.draw(["a", "a", "b", "b"], n_bootstrap=200, seed=0)
    out = S.pooled_share([1.0, 1.0, 0.0, 0.5], boot)
    assert out["value"] == pytest.approx(0.625) and out["n"] == 4
    assert 0.25 <= out["ci_low"] <= out["ci_high"] <= 1.0


# --------------------------------------------------------------------------------------------- the bundled set


@needs_judged
def test_bundled_leave_one_out_counts_and_construction():
    """SOURCE.md's "50 questions ... 1,160 judged answers" counts qrels lines of questions with any 4-Excellent
    judgment. 168 (question, answer) pairs were judged twice with different grades; an answer's grade is the mean
    and a reference needs a mean >= 3.5, which leaves out 4 questions whose only Excellent answer was also judged
    Related or Incorrect: 46 questions, 1,052 judgment lines, 961 distinct non-empty answers (none is empty), of
    which 22 are their question's only reference and have nothing left to be scored against: 939 candidates."""
    lines = [line.split() for line in (JUDGED / "qrels.txt").read_text().splitlines() if line.strip()]
    by_q = collections.defaultdict(list)
    for q, grade, a in lines:
        by_q[q].append((grade, a))
    source_questions = [q for q, v in by_q.items() if any(g.startswith("4") for g, _ in v) and len(v) >= 2]
    assert (len(source_questions), sum(len(by_q[q]) for q in source_questions)) == (50, 1160)

    judged = bundled_judged_set(JUDGED)
    c = judged.counts
    assert (c["judgments"], c["questions_judged"], c["pairs_judged_twice"], c["empty_answers"]) == (2479, 103, 168, 0)
    assert (c["questions"], c["judgments_in_questions"], c["answers_in_questions"]) == (46, 1052, 961)
    assert (c["no_reference_left"], c["candidates"], c["reference_pairs"]) == (22, 939, 2376)
    assert c["candidates_by_grade"] == {"1": 456, "1.5": 18, "2": 248, "2.5": 28, "3": 87, "3.5": 31, "4": 71}
    assert judged.fingerprint.startswith("sha256:") and len(judged.candidates) == 939

    grades = {(q, a): [] for q, _, a in lines}
    for q, grade, a in lines:
        grades[(q, a)].append(int(grade[0]))
    texts = {}
    for cand in judged.candidates:
        texts[(cand.group, cand.candidate_id)] = cand.candidate
        assert cand.grade == np.mean(grades[(cand.group, cand.candidate_id)])
        assert cand.candidate and not cand.candidate.startswith(("Question:", "URL:", "Answer:"))
        assert cand.candidate not in cand.references  # leave one out
    for cand in judged.candidates:  # every reference is an answer of the same question with grade >= 3.5
        same_q = {t: np.mean(grades[(cand.group, a)]) for (q, a), t in texts.items() if q == cand.group}
        assert all(same_q.get(ref, 0) >= 3.5 for ref in cand.references if ref in same_q)
    assert judged.candidates[0].question.startswith("How to diagnose Syphilis")  # the first reference's header


def test_bundled_set_reads_a_folder_and_says_what_is_missing(tmp_path):
    folder = tmp_path / "judged"
    folder.mkdir()
    (folder / "qrels.txt").write_text("1 4-Excellent A\n1 1-Incorrect B\n1 4-Excellent C\n2 4-Excellent A\n")
    answers = ("AnswerID,Answer\nA,\"Question: What is gout?\nURL: u\nAnswer: Gout is arthritis.\"\n"
               "B,\"Question: What is X?\nURL: u\nAnswer: Something else.\"\n"
               "C,\"Question: What causes gout?\nURL: u\nAnswer: Uric acid crystals.\"\n")
    (folder / "answers.csv.gz").write_bytes(gzip.compress(answers.encode()))
    judged = bundled_judged_set(folder)
    assert [(c.candidate_id, c.references, c.grade) for c in judged.candidates] == [
        ("A", ("Uric acid crystals.",), 4.0), ("B", ("Gout is arthritis.", "Uric acid crystals."), 1.0),
        ("C", ("Gout is arthritis.",), 4.0)]
    assert judged.candidates[0].question == "What is gout?" and judged.counts["questions"] == 1
    (folder / "qrels.txt").unlink()
    with pytest.raises(DataError, match="data fetch medquad-judged"):
        bundled_judged_set(folder)


# --------------------------------------------------------------------------------------------- perturbations


def test_each_perturbation():
    answer = "Gout is a form of arthritis. It causes pain.\nSee a doctor."
    assert rb.echo_question("What is gout?") == "What is gout?"
    assert rb.truncate_words(answer) == "Gout is a form"  # 12 words: ceil(3.6) = 4, spacing kept
    assert rb.truncate_words("one two three four five six seven eight nine ten") == "one two three"
    assert rb.truncate_words("  one\n\ntwo three") == "  one"
    assert rb.first_sentence(answer) == "Gout is a form of arthritis."
    assert rb.first_sentence("A list:\n- item one. More") == "A list:"
    loop = rb.loop_first_sentence(answer)
    assert len(loop.split()) == len(answer.split()) == 12
    assert loop == "Gout is a form of arthritis. Gout is a form of arthritis."
    assert rb.loop_first_sentence("Fever is common. It passes in days.") == "Fever is common. Fever is common. Fever"
    assert rb.loop_first_sentence("") == ""


def _cand(group, cid, grade, text, refs, question="Q?"):
    return JudgedCandidate(group, cid, question + group, tuple(refs), text, grade)


def test_suite_boilerplate_other_reference_and_skips():
    cands = [
        _cand("a", "1", 4, "Asthma narrows the airways. Wheezing and cough follow.", ["Asthma causes wheezing."]),
        _cand("a", "2", 1, "Unrelated text about knees.", ["Asthma causes wheezing."]),
        _cand("b", "3", 4, "Gout hurts.", ["Gout is arthritis of the big toe."]),  # one sentence: its loop is itself
        _cand("b", "4", 2, "Gout and diet and gout and diet.", ["Gout is arthritis of the big toe."]),
        _cand("c", "5", 3, "Fever is a raised temperature. Rest helps.", ["Fever means a high temperature."]),
        _cand("c", "6", 1, "Fever fever fever.", ["Fever means a high temperature."]),
    ]
    suite = rb.build_suite(cands, good_threshold=3, seed=0)
    assert suite.good_candidates == 3 and suite.skipped["loop"] == 1
    made = {(cands[p.candidate].candidate_id, p.perturbation): p.text for p in suite.perturbed}
    assert ("3", "loop") not in made and made[("1", "question")] == "Q?a"
    own = {g: {t for c in cands if c.group == g for t in (c.candidate, *c.references)} for g in "abc"}
    for cid, group in (("1", "a"), ("3", "b"), ("5", "c")):
        assert made[(cid, "boilerplate")] not in own[group]
        assert made[(cid, "other_reference")] not in own[group]
        assert made[(cid, "other_reference")] in {c.references[0] for c in cands}
    assert suite.boilerplate["text"] in {t for texts in own.values() for t in texts}
    assert rb.build_suite(cands, seed=0) == suite  # seeded: the same draw again


def test_wins_respect_direction_and_ties():
    assert rb.wins([0.9, 0.5, 0.1], [0.1, 0.5, 0.9], higher_is_better=True).tolist() == [1.0, 0.5, 0.0]
    assert rb.wins([0.9, 0.5, 0.1], [0.1, 0.5, 0.9], higher_is_better=False).tolist() == [0.0, 0.5, 1.0]


# --------------------------------------------------------------------------------------------- validate


def _small_set(n_groups=8, seed=0) -> JudgedSet:
    """Questions whose good answers share words with the reference and whose bad ones do not."""
    rng = np.random.default_rng(seed)
    topics = ["asthma wheezing airways inhaler", "gout uric acid toe joint", "fever temperature infection rest",
              "diabetes insulin glucose blood", "migraine headache light nausea", "anemia iron blood fatigue",
              "eczema skin itch rash", "angina chest pain heart"]
    cands = []
    for k in range(n_groups):
        words = topics[k % len(topics)].split()
        ref = f"{' '.join(words)} is treated by a doctor with care."
        for j, grade in enumerate([4, 3, 2, 1, 1]):
            keep = words[: max(0, grade)] if grade > 1 else ["knee", "elbow"]
            filler = list(rng.choice(["the", "and", "often", "may", "people", "years"], 4))
            cands.append(JudgedCandidate(f"q{k}", f"c{j}", f"What about {words[0]}?", (ref,),
                                         " ".join(keep + filler) + ".", float(grade)))
    return JudgedSet(tuple(cands), "small", "synthetic", {"questions": n_groups, "candidates": len(cands)},
                     "sha256:none")


def _keys(typed_dict) -> set[str]:
    return set(typing.get_type_hints(typed_dict))


def test_validity_record_schema_and_primary(tmp_path):
    data = validate(_small_set(), resolve_metrics(["token_f1", "fuzzy", "loss"]), n_bootstrap=200, progress=False)
    assert data["version"] == schema.VALIDITY_VERSION == "1"
    assert set(data) == _keys(schema.Validity)
    assert list(data["metrics"]) == ["token_f1", "fuzzy", "answer_length"]
    assert data["skipped_metrics"][0]["name"] == "loss" and "nll" in data["skipped_metrics"][0]["reason"]
    for row in data["metrics"].values():
        assert set(row) == _keys(schema.MetricValidity)
        assert set(row["figures"]) == set(S.FIGURES) and set(row["robustness"]) == set(rb.PERTURBATIONS)
        assert len(row["scores"]) == len(data["candidates"]) == 40
    assert data["metrics"]["token_f1"]["figures"]["spearman"]["value"] > 0.5
    assert {(c["a"], c["b"]) for c in data["comparisons"]} == {("token_f1", "fuzzy"), ("token_f1", "answer_length"),
                                                              ("fuzzy", "answer_length")}
    assert set(data["comparisons"][0]) == _keys(schema.Comparison)
    passing = [r["name"] for r in data["metrics"].values() if r["passes_robustness"] and r["kind"] == "metric"]
    if passing:
        best = max(passing, key=lambda n: data["metrics"][n]["figures"]["within_question_spearman"]["value"])
        assert data["primary"] == best
    else:
        assert data["primary"] is None and "no metric passes" in data["primary_reason"]
    path = write_validity(tmp_path / "validity.json", data)
    json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in validity.json"))
    assert load_validity(path)["metrics"].keys() == data["metrics"].keys()
    path.write_text(json.dumps({**data, "version": "0"}))
    with pytest.raises(DataError, match="version '0'"):
        load_validity(path)


def test_primary_rule():
    from medqa_bench.validity import choose_primary

    def row(name, wq, passes, kind="metric"):
        return {"name": name, "kind": kind, "passes_robustness": passes,
                "figures": {"within_question_spearman": {"value": wq}},
                "robustness": {"question": {"value": 0.4, "ci_low": 0.3, "ci_high": 0.5}}}

    rows = {"a": row("a", 0.6, False), "b": row("b", 0.4, True), "c": row("c", 0.3, True),
            "answer_length": row("answer_length", 0.9, True, kind="baseline")}
    primary, reason = choose_primary(rows)
    assert primary == "b" and "a fails the robustness suite" in reason
    assert choose_primary({"a": row("a", 0.6, False)})[0] is None


def test_a_metric_that_leaves_answers_unscored():
    def score(predictions, references, items):
        return [float("nan") if it["id"].endswith("c1") else float(len(p) % 7) for p, it in zip(predictions, items)]

    judge = Metric(name="sometimes", higher_is_better=True, score=score, allows_missing=True)
    data = validate(_small_set(), [judge, *resolve_metrics(["token_f1"])], n_bootstrap=100, progress=False)
    row = data["metrics"]["sometimes"]
    assert (row["n_unscored"], row["n_scored"]) == (8, 32) and row["scores"][1] is None
    pair = [c for c in data["comparisons"] if {c["a"], c["b"]} == {"sometimes", "token_f1"}]
    assert len(pair) == len(S.FIGURES) and all(c["n"] == 32 for c in pair)
    assert all(c["n"] == 40 for c in data["comparisons"] if "sometimes" not in (c["a"], c["b"]))


@needs_judged
def test_embedding_similarity_on_two_bundled_questions():
    judged = bundled_judged_set(JUDGED)
    sizes = collections.Counter(c.group for c in judged.candidates)
    good = {c.group for c in judged.candidates if c.grade >= 3}
    mixed = [g for g in good if any(c.group == g and c.grade < 3 for c in judged.candidates)]
    keep = sorted(mixed, key=lambda g: (sizes[g], g))[:2]  # the two smallest with good and other answers
    subset = JudgedSet(tuple(c for c in judged.candidates if c.group in keep), "subset", "", {}, "")
    data = validate(subset, resolve_metrics(["embedding_similarity", "rougeL"]), n_bootstrap=100, progress=False)
    row = data["metrics"]["embedding_similarity"]
    assert row["n_scored"] == len(subset.candidates) and "all-MiniLM-L6-v2" in row["signature"]
    assert -1 <= row["figures"]["within_question_spearman"]["value"] <= 1


# --------------------------------------------------------------------------------------------- a user's file


def _write_csv(path: Path, rows: list[dict]) -> Path:
    import csv

    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _user_rows():
    return [{"qid": c.group, "question": c.question, "ref": c.references[0], "answer": c.candidate,
             "grade": f"{c.grade:g}"} for c in _small_set(4).candidates]


COLUMNS = ["--group-column", "qid", "--reference-column", "ref", "--candidate-column", "answer"]


@pytest.mark.parametrize("change, message", [
    (lambda rows: rows[2].update(grade="good"), "line 4: grade 'good' in column 'grade' is not a number"),
    (lambda rows: rows[0].update(qid="alone"), "question 'alone' (line 2) has one candidate"),
    (lambda rows: [r.update(grade="2") for r in rows], "no candidate has a grade >= 3"),
    (lambda rows: [r.pop("ref") for r in rows], "column 'ref' not found; columns are: qid, question, answer, grade"),
])
def test_cli_refuses_bad_files_in_one_line(tmp_path, capsys, change, message):
    from medqa_bench.cli import main

    rows = _user_rows()
    change(rows)
    path = _write_csv(tmp_path / "judged.csv", rows)
    out = tmp_path / "out"
    assert main(["-q", "metrics", "validate", str(path), *COLUMNS, "--metrics", "token_f1", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not out.exists()


def test_cli_refuses_column_flags_without_a_file(tmp_path, capsys):
    from medqa_bench.cli import main

    assert main(["-q", "metrics", "validate", "--grade-column", "g", "--out", str(tmp_path / "o")]) == 2
    assert "--grade-column map the columns of a judged FILE" in capsys.readouterr().err
    with pytest.raises(SpecError):
        from medqa_bench.validity.command import ValidateOptions, run_validate

        run_validate(ValidateOptions(n_bootstrap=0))


def test_read_judged_jsonl_with_reference_lists(tmp_path):
    rows = [{"question_id": "1", "question": "q", "reference": ["r one", "r two"], "candidate": "r one", "grade": 4},
            {"question_id": "1", "question": "q", "reference": ["r one", "r two"], "candidate": "x", "grade": 1}]
    path = tmp_path / "j.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    judged = read_judged_file(path)
    assert judged.candidates[0].references == ("r one", "r two") and judged.candidates[1].grade == 1.0
    assert judged.candidates[0].candidate_id == "line 1"
    two = _write_csv(tmp_path / "two.csv", [{"question_id": r["question_id"], "question": "q", "a": "r one", "b": "",
                                             "candidate": r["candidate"], "grade": r["grade"]} for r in rows])
    assert read_judged_file(two, reference_column="a,b").candidates[0].references == ("r one",)  # empty cell: none
    assert read_judged_file(two, reference_column=["b", "a"]).candidates[1].references == ("r one",)
    with pytest.raises(DataError, match="line 2: no reference answer in 'b'"):
        read_judged_file(two, reference_column="b")


def test_cli_end_to_end_on_a_user_file(tmp_path, capsys):
    from medqa_bench.cli import main

    xss = "<script>window.__xss = 1</script>"
    rows = _user_rows()
    rows[0]["answer"] += " " + xss
    path = _write_csv(tmp_path / "my<b>judged.csv", rows)
    out = tmp_path / "out"
    argv = ["-q", "metrics", "validate", str(path), *COLUMNS, "--metrics", "token_f1,rougeL", "--bootstrap", "200",
            "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "primary metric:" in printed and "token_f1" in printed and "answer_length (baseline)" in printed
    data = load_validity(out / "validity.json")
    assert data["judged_set"]["counts"] == {"questions": 4, "candidates": 20, "reference_pairs": 20,
                                            "candidates_by_grade": {"1": 8, "2": 4, "3": 4, "4": 4}}
    assert data["settings"]["n_bootstrap"] == 200
    page = (out / "validity.html").read_text()
    assert "my&lt;b&gt;judged.csv" in page and "my<b>judged" not in page and xss not in page
    assert page.count('class="plotly-figure"') == 3
    assert main(argv) == 2  # no clobbering
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert main(argv + ["--overwrite"]) == 0


def test_default_metrics_need_no_language_model():
    from medqa_bench.validity.command import default_metrics

    names = default_metrics()
    assert {"token_f1", "rougeL", "fuzzy", "embedding_similarity", "exact_match"} <= set(names)
    assert not {"loss", "perplexity", "context_recall", "answer_grounding"} & set(names)
    assert not [n for n in names if n.startswith("judge")]


@needs_judged
def test_cli_on_the_bundled_set_from_the_user_data_folder(tmp_path, monkeypatch, capsys):
    from medqa_bench.cli import main

    monkeypatch.setenv("MEDQA_BENCH_DATA", str(tmp_path / "data"))
    out = tmp_path / "out"
    argv = ["-q", "metrics", "validate", "--metrics", "token_f1", "--bootstrap", "50", "--out", str(out)]
    assert main(argv) == 2 and not out.exists()
    assert "run `medqa-bench data fetch medquad-judged`" in capsys.readouterr().err
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "medquad-judged").symlink_to(JUDGED)
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "medquad-judged: 939 candidates of 46 questions" in printed and "primary metric: token_f1" in printed
    assert load_validity(out / "validity.json")["judged_set"]["counts"]["questions"] == 46
