"""Third-party metrics: an installed entry-point package, --plugin files and modules, local evaluate modules."""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from medqa_bench.errors import MetricError
from medqa_bench.metrics import list_metrics, resolve_metrics
from medqa_bench.metrics.scoring import score_samples

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "metric-plugin"


def samples(n=4):
    refs = ["Fever, night sweats and weight loss.", "A rash and joint pain.", "Headache.", "Nausea and vomiting."]
    return [
        {"id": f"q{i}", "qtype": "symptoms", "focus": f"f{i}", "references": [refs[i % 4]],
         "systems": {"base": {"prediction": refs[(i + 1) % 4] if i % 2 else refs[i % 4]}}}
        for i in range(n)
    ]


# --------------------------------------------------------------------------------------------- entry points


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory):
    """pip-install examples/metric-plugin for real (built from a copy, so the checkout stays clean) into a
    target folder, and put that folder on sys.path: importlib.metadata then sees its entry points."""
    work = tmp_path_factory.mktemp("plugin")
    src, target = work / "src", work / "site"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(target), str(src)],
        check=True, capture_output=True, text=True,
    )
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    try:
        yield target
    finally:
        sys.path.remove(str(target))
        sys.modules.pop("medqa_clinical_terms", None)
        importlib.invalidate_caches()


def test_entry_point_package_is_discovered(installed_example):
    eps = importlib.metadata.entry_points(group="medqa_bench.metrics")
    assert {"medical_term_recall", "medical_term_precision"} <= {ep.name for ep in eps}
    rows = {r["name"]: r for r in list_metrics()}
    for name in ("medical_term_recall", "medical_term_precision"):
        assert rows[name]["source"] == "entry-point:medqa-bench-clinical-terms"
        assert rows[name]["kind"] == "reference" and rows[name]["bounds"] == [0.0, 1.0]
        assert rows[name]["signature"].startswith(f"{name}|lexicon=v1")
        assert rows[name]["default"] is False


def test_entry_point_metric_scores_and_takes_parameters(installed_example):
    # installed metrics are not scored unless named
    assert "medical_term_recall" not in [m.name for m in resolve_metrics(None)]
    recall, precision = resolve_metrics(
        ["medical_term_recall", "medical_term_precision"],
        params={"medical_term_recall": {"extra_terms": ["sweats"]}},
    )
    assert "extra_terms=sweats" in recall.signature
    rows = samples()
    results, info = score_samples(rows, [recall, precision], ["base"], progress=False)
    # q1 predicts "Headache." for "A rash and joint pain.": no term recalled
    assert rows[1]["systems"]["base"]["scores"]["medical_term_recall"] == 0.0
    assert rows[0]["systems"]["base"]["scores"]["medical_term_recall"] == 1.0
    assert "medical_term_recall" in rows[0]["systems"]["base"]["distractor_scores"]
    assert info["medical_term_recall"]["source"] == "entry-point:medqa-bench-clinical-terms"
    assert results["base"]["medical_term_precision"]["value"] == pytest.approx(0.5)


# --------------------------------------------------------------------------------------------- --plugin


PLUGIN_FILE = '''
from medqa_bench.metrics import Metric

def _mentions_doctor(predictions, references, items):
    return [float("doctor" in p.lower()) for p in predictions]

ADVISES_DOCTOR = Metric("advises_doctor", True, _mentions_doctor, kind="prediction", bounds=(0, 1),
                        signature="advises_doctor|v1")
'''


def test_plugin_file(tmp_path):
    path = tmp_path / "my_metrics.py"
    path.write_text(PLUGIN_FILE)
    metrics = resolve_metrics(None, plugins=[str(path)])  # naming a plugin asks for its metrics
    assert metrics[-1].name == "advises_doctor" and metrics[-1].source == f"plugin:{path}"
    rows = samples(2)
    rows[0]["systems"]["base"]["prediction"] = "See your doctor."
    results, info = score_samples(rows, [metrics[-1]], ["base"], progress=False)
    assert [r["systems"]["base"]["scores"]["advises_doctor"] for r in rows] == [1.0, 0.0]
    assert "best_reference" not in rows[0]["systems"]["base"]  # a prediction metric has no reference choice
    assert info["advises_doctor"]["kind"] == "prediction"
    assert any(r["name"] == "advises_doctor" for r in list_metrics(plugins=[str(path)]))


# An audit hook stands in for a writer that changes the plugin file after medqa-bench has read it (an editor saving, a
# checkout): the second time the file is opened, it first gets other content.
_CHANGED_ON_SECOND_OPEN = '''
import json, os, sys
path, changed = sys.argv[1], sys.argv[2]
opened = []

def hook(event, args):
    if event == "open" and args and isinstance(args[0], (str, os.PathLike)) and os.path.realpath(args[0]) == path:
        opened.append(1)
        if len(opened) == 2:
            with open(path, "w") as fh:  # a third open, left alone
                fh.write(changed)

sys.addaudithook(hook)
from medqa_bench.metrics import resolve_metrics
from medqa_bench.metrics.provenance import plugin_source_of

[m] = resolve_metrics(["advises_doctor"], plugins=[path])
src = plugin_source_of(m)
print(json.dumps({"score": m.compute(predictions=["See your doctor."], references=["x"]).tolist(),
                  "sha256": src.sha256, "text": src.text.decode()}))
'''


def test_a_plugin_file_runs_as_the_bytes_that_were_hashed_and_copied(tmp_path):
    path = tmp_path / "my_metrics.py"
    path.write_text(PLUGIN_FILE)
    changed = PLUGIN_FILE.replace('"doctor" in', '"nurse" in')
    proc = subprocess.run([sys.executable, "-c", _CHANGED_ON_SECOND_OPEN, str(path.resolve()), changed],
                          capture_output=True, text=True, check=True)
    got = json.loads(proc.stdout)
    assert got["sha256"] == hashlib.sha256(PLUGIN_FILE.encode()).hexdigest() and got["text"] == PLUGIN_FILE
    assert got["score"] == [1.0]  # the code that ran is the code recorded: it reads "doctor", not "nurse"


def test_plugin_file_with_metrics_list_and_factory(tmp_path):
    path = tmp_path / "listed.py"
    path.write_text(textwrap.dedent('''
        from medqa_bench.metrics import Metric

        def length_ratio(cap=2.0):
            def score(p, r, items):
                return [min(len(a) / max(len(b), 1), cap) for a, b in zip(p, r)]
            return Metric("length_ratio", False, score)

        NOT_LISTED = Metric("not_listed", True, lambda p, r, i: [0.0] * len(p), signature="x")
        METRICS = [length_ratio]
    '''))
    [m] = resolve_metrics(["length_ratio"], plugins=[str(path)], params={"length_ratio": {"cap": 3}})
    # no signature declared: name, the file's name (not its path) and its digest stand in; plugin parameters are
    # appended
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    assert m.signature == f"length_ratio|plugin:listed.py|sha256={digest}|cap=3"
    with pytest.raises(MetricError, match="unknown metric 'not_listed'"):
        resolve_metrics(["not_listed"], plugins=[str(path)])


def test_plugin_module_attr(tmp_path, monkeypatch):
    pkg = tmp_path / "acme_metrics"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "lexical.py").write_text(PLUGIN_FILE + "\nOTHER = Metric('other', True, lambda p, r, i: [1.0] * len(p))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    [m] = resolve_metrics(["advises_doctor"], plugins=["acme_metrics.lexical:ADVISES_DOCTOR"])
    assert m.source == "plugin:acme_metrics.lexical:ADVISES_DOCTOR"
    assert [x.name for x in resolve_metrics(["advises_doctor", "other"], plugins=["acme_metrics.lexical"])] == [
        "advises_doctor", "other"]
    with pytest.raises(MetricError, match="has no attribute 'NOPE'"):
        resolve_metrics(["exact_match"], plugins=["acme_metrics.lexical:NOPE"])
    with pytest.raises(MetricError, match="cannot import module 'acme_nothing'"):
        resolve_metrics(["exact_match"], plugins=["acme_nothing:X"])


def test_plugin_problems_are_named(tmp_path):
    clash = tmp_path / "clash.py"
    clash.write_text("from medqa_bench.metrics import Metric\nM = Metric('rougeL', True, lambda p, r, i: p)\n")
    with pytest.raises(MetricError, match=r"'rougeL' from plugin:.*clash.py is already registered by builtin"):
        resolve_metrics(None, plugins=[str(clash)])
    empty = tmp_path / "empty.py"
    empty.write_text("X = 1\n")
    with pytest.raises(MetricError, match="defines no metrics"):
        resolve_metrics(None, plugins=[str(empty)])
    broken = tmp_path / "broken.py"
    broken.write_text("import not_a_module_anywhere\n")
    with pytest.raises(MetricError, match=r"broken.py failed to import: ModuleNotFoundError"):
        resolve_metrics(None, plugins=[str(broken)])
    with pytest.raises(MetricError, match="does not exist"):
        resolve_metrics(None, plugins=[str(tmp_path / "missing.py")])


BAD_PLUGIN = '''
import math
from medqa_bench.metrics import Metric

def _raises(p, r, items):
    return [1.0 if it["id"] != "q2" else {}["missing"] for it in items]

METRICS = [
    Metric("raises", True, _raises),
    Metric("short", True, lambda p, r, items: [0.5] * (len(p) - 1)),
    Metric("nan", True, lambda p, r, items: [math.nan if it["id"] == "q3" else 0.0 for it in items]),
]
'''


@pytest.mark.parametrize("name, message", [
    ("raises", r"'raises' \(plugin:.*bad.py\) raised KeyError on item 'q2', system 'base'"),
    ("short", r"'short' \(plugin:.*bad.py\) returned 3 scores for 4 pairs \(first item 'q0'"),
    ("nan", r"'nan' \(plugin:.*bad.py\) returned NaN for item 'q3', system 'base'"),
])
def test_bad_plugin_metrics(tmp_path, name, message):
    path = tmp_path / "bad.py"
    path.write_text(BAD_PLUGIN)
    metrics = resolve_metrics([name], plugins=[str(path)])
    with pytest.raises(MetricError, match=message):
        score_samples(samples(4), metrics, ["base"], progress=False)


# --------------------------------------------------------------------------------------------- evaluate


EVALUATE_SCRIPT = '''
import datasets
import evaluate


class WordOverlap(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="share of reference words in the prediction",
            citation="none",
            inputs_description="predictions, references: strings",
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references, lowercase=True):
        out = []
        for p, r in zip(predictions, references):
            if lowercase:
                p, r = p.lower(), r.lower()
            ref = set(r.split())
            out.append(len(ref & set(p.split())) / len(ref))
        return {"per_item": out, "mean": sum(out) / len(out)}
'''


@pytest.fixture(scope="module")
def evaluate_module(tmp_path_factory):
    folder = tmp_path_factory.mktemp("evaluate") / "word_overlap"
    folder.mkdir()
    (folder / "word_overlap.py").write_text(EVALUATE_SCRIPT)
    return folder


def test_local_evaluate_module(evaluate_module):
    spec = f"evaluate:{evaluate_module}#per_item"
    [m] = resolve_metrics(None, plugins=[spec])[-1:]
    assert m.name == "word_overlap_per_item" and m.source == f"evaluate:{evaluate_module}"
    assert "evaluate=" in m.signature and "sha256=" in m.signature
    assert m.signature.startswith("word_overlap_per_item|evaluate:word_overlap#per_item|sha256=")  # no path: the
    assert str(evaluate_module.parent) not in m.signature  # sha256 identifies the code, wherever it lies
    got = m.compute(predictions=["Fever and chills", "rash"], references=["fever", "joint pain"])
    assert got.tolist() == [1.0, 0.0]
    # a corpus-level key is computed pair by pair; compute() parameters pass through and enter the signature
    [mean] = resolve_metrics(
        ["word_overlap_mean"], plugins=[f"evaluate:{evaluate_module / 'word_overlap.py'}#mean"],
        params={"word_overlap_mean": {"lowercase": False, "bounds": [0, 1]}},
    )
    assert mean.compute(predictions=["Fever and chills", "fever"], references=["fever", "fever"]).tolist() == [0.0, 1.0]
    assert mean.bounds == (0.0, 1.0) and "lowercase=False" in mean.signature


def test_evaluate_module_key_must_be_chosen(evaluate_module):
    [m] = resolve_metrics(["word_overlap"], plugins=[f"evaluate:{evaluate_module}"])
    with pytest.raises(MetricError, match=r"keys \['mean', 'per_item'\]; pick one with --plugin evaluate:"):
        m.compute(predictions=["a"], references=["a"])
    with pytest.raises(MetricError, match="not a local evaluate module"):
        resolve_metrics(None, plugins=["evaluate:rouge"])
