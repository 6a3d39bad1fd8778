"""Clinical-term recall and precision: does an answer name the symptoms and findings the reference names?

ROUGE and embeddings reward an answer that *sounds* like the reference; a clinician asks whether it lists
the same symptoms. These metrics extract clinical terms from both texts and compare the sets:

    medical_term_recall     |terms(reference) ∩ terms(prediction)| / |terms(reference)|
    medical_term_precision  |terms(reference) ∩ terms(prediction)| / |terms(prediction)|

A clinical term is a phrase of the bundled lexicon (symptoms, signs, body systems: "shortness of breath",
"night sweats", "rash") or a word built with a medical affix ("arthritis", "anemia", "hepatomegaly",
"neuropathy"). Words are lower-cased and reduced to a crude singular, so "rashes" matches "rash".
A reference without any term scores recall 1.0 (nothing was missed); a prediction without any term scores
precision 0.0, or 1.0 if the reference has none either.

>>> sorted(clinical_terms("Fever, night sweats and an enlarged spleen (splenomegaly)."))
['enlarged spleen', 'fever', 'night sweat', 'splenomegaly']
"""

from __future__ import annotations

import re
from typing import Iterable, Sequence

from medqa_bench.metrics import Metric

__version__ = "0.1.0"
LEXICON_VERSION = "1"

# Common symptoms, signs and findings in patient-facing answers (MedQuAD-style); phrases are matched on words.
LEXICON = """
abdominal pain, ache, anxiety, appetite loss, back pain, bleeding, blindness, bloating, blood in the urine,
blood in the stool, blurred vision, bruising, bruise, chest pain, chills, confusion, constipation, cough,
cramp, cyst, deafness, dehydration, delay, delirium, dementia, depression, diarrhea, difficulty breathing,
difficulty swallowing, discharge, dizziness, drowsiness, dry mouth, dry skin, dysfunction, enlarged liver,
enlarged spleen, fainting, fatigue, fever, flushing, fracture, headache, hearing loss, heartburn, hives,
hoarseness, indigestion, infection, infertility, inflammation, insomnia, irritability, itching, jaundice,
joint pain, lesion, lethargy, lump, malaise, memory loss, mood change, muscle pain, muscle weakness, nausea,
night sweat, nosebleed, numbness, pain, palpitation, paralysis, pneumonia, rash, redness, seizure,
shortness of breath, sore, sore throat, stiffness, stroke, sweating, swelling, swollen lymph node, thirst,
tingling, tiredness, tremor, ulcer, vision loss, vomiting, weakness, weight gain, weight loss, wheezing,
yellowing, short stature, intellectual disability, developmental delay, hair loss, frequent urination,
high blood pressure, low blood pressure, irregular heartbeat, kidney failure, liver failure, heart failure,
skin, eye, heart, lung, liver, kidney, brain, nerve, muscle, bone, joint, blood, spleen, bowel, bladder
"""

# Word-forming elements of clinical vocabulary; a word ending (or starting) with one is a term.
SUFFIXES = (
    "itis", "osis", "emia", "aemia", "algia", "pathy", "oma", "ectomy", "plasia", "trophy", "rrhea", "rrhoea",
    "uria", "penia", "cytosis", "megaly", "sclerosis", "spasm", "edema", "oedema", "plegia", "paresis",
    "phobia", "lepsy", "emesis", "ptysis", "pnea", "pnoea", "cardia", "tension", "thermia", "glycemia",
)  # fmt: skip
PREFIXES = ("hyper", "hypo", "dys", "neuro", "cardio", "hepato", "nephro", "gastro", "derma")
_STOP = {"hypothesis", "dyson", "neurons", "cardiologist", "prognosis", "diagnosis", "some", "come", "home"}

_WORD = re.compile(r"[a-z0-9]+")


def _singular(word: str) -> str:
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith(("ches", "shes", "sses", "xes")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is", "sis")):
        return word[:-1]
    return word


def _words(text: str) -> list[str]:
    return [_singular(w) for w in _WORD.findall(text.lower())]


def _phrases(extra: Iterable[str] = ()) -> dict[int, set[tuple[str, ...]]]:
    by_len: dict[int, set[tuple[str, ...]]] = {}
    for raw in [p for p in LEXICON.replace("\n", " ").split(",")] + list(extra):
        words = tuple(_words(raw))
        if words:
            by_len.setdefault(len(words), set()).add(words)
    return by_len


_DEFAULT_PHRASES = _phrases()


def _is_affixed(word: str) -> bool:
    if len(word) < 6 or word in _STOP:
        return False
    return word.endswith(SUFFIXES) or word.startswith(PREFIXES)


def clinical_terms(text: str, phrases: dict[int, set[tuple[str, ...]]] | None = None) -> set[str]:
    """The set of clinical terms in ``text``: lexicon phrases (longest first) and affixed words."""
    phrases = _DEFAULT_PHRASES if phrases is None else phrases
    words = _words(text)
    terms: set[str] = set()
    covered = [False] * len(words)
    for n in sorted(phrases, reverse=True):
        for i in range(len(words) - n + 1):
            if not any(covered[i : i + n]) and tuple(words[i : i + n]) in phrases[n]:
                terms.add(" ".join(words[i : i + n]))
                covered[i : i + n] = [True] * n
    terms.update(w for w, c in zip(words, covered) if not c and _is_affixed(w))
    return terms


def _overlap_scores(predictions: Sequence[str], references: Sequence[str], phrases, *, recall: bool) -> list[float]:
    cache: dict[str, set[str]] = {}

    def terms(text: str) -> set[str]:
        if text not in cache:
            cache[text] = clinical_terms(text, phrases)
        return cache[text]

    out = []
    for p, r in zip(predictions, references):
        tp, tr = terms(p), terms(r)
        if recall:
            out.append(len(tp & tr) / len(tr) if tr else 1.0)
        else:
            out.append(len(tp & tr) / len(tp) if tp else float(not tr))
    return out


def medical_term_recall(extra_terms: Sequence[str] = ()) -> Metric:
    """Share of the reference's clinical terms the prediction names. ``extra_terms`` extends the lexicon."""
    phrases = _phrases(extra_terms) if extra_terms else _DEFAULT_PHRASES
    extra = f"|extra_terms={','.join(sorted(extra_terms))}" if extra_terms else ""
    return Metric(
        name="medical_term_recall",
        higher_is_better=True,
        score=lambda predictions, references, items: _overlap_scores(predictions, references, phrases, recall=True),
        signature=f"medical_term_recall|lexicon=v{LEXICON_VERSION}{extra}|medqa-bench-clinical-terms={__version__}",
        bounds=(0.0, 1.0),
    )


MEDICAL_TERM_PRECISION = Metric(
    name="medical_term_precision",
    higher_is_better=True,
    score=lambda predictions, references, items: _overlap_scores(
        predictions, references, _DEFAULT_PHRASES, recall=False
    ),
    signature=f"medical_term_precision|lexicon=v{LEXICON_VERSION}|medqa-bench-clinical-terms={__version__}",
    bounds=(0.0, 1.0),
)
