"""An LLM judge that always grades: the expected grade over the grade tokens' probabilities, as G-Eval does.

The judge model is given the versioned rubric :data:`RUBRIC` (:data:`RUBRIC_VERSION`): the question, an expert
reference answer, the answer to grade, and one scale, the one the bundled expert-judged set uses (LiveQA's; see
``medqa-bench metrics validate``), so the judge can be validated against experts on the same scale:

    1 Incorrect · 2 Related (on topic, not an answer) · 3 Incomplete · 4 Excellent

**The grade is read from probabilities, not parsed from text** (Liu et al., G-Eval, 2023). The prompt ends where
the grade's digit comes: the judge's chat template with its generation prompt, then :data:`PREFIX` (``"Grade: "``)
in the assistant's turn. One forward pass gives the next token's log-softmax over the whole vocabulary; at the digits
``1``-``4`` (each checked to be one token there) it gives p(g), and the judge's grade is

    grade = Σ_g g·p(g) / Σ_g p(g)

a number in [1, 4] for every answer, even when the model would not have written a digit: nothing is unparseable.
:class:`Judgment` records per answer the distribution p(g)/Σp renormalised over the grades, the **mass** Σ_g p(g) (how
much of the model's next token was a grade at all: a low mass says the judge hardly meant any grade) and the
**method** that gave it.

**Backends.** A backend with the "next_token" capability (:meth:`medqa_bench.inference.backends.Backend.next_token_logprobs`)
gives the probabilities: the transformers backend in process (one forward pass a prompt, batched, the LM head on the
last position only) and the openai backend against a server whose ``/v1/completions`` returns log-probabilities of a
generated token (vLLM asked for the digits by token id, so each comes back whatever its rank; another server gives
its top 20, and a digit outside them counts as p = 0). **Fallback: parsed text.** A backend without the capability
(an API with chat completions only), or an answer for which no grade token's probability came back (all outside a
server's top 20), is judged by generating at most :data:`MAX_NEW_TOKENS` tokens greedily after the generation prompt
and parsing them (:func:`parse_judgment`: ``Grade: 3``, or a lone digit 1-4). Only there can an answer go unscored: its
score is NaN, recorded as ``None``, left out of the corpus value and the paired tests, counted in ``n_missing`` and in
``judge.unscored``; it is never read as 0.

**The metric.** ``judge_grade`` (1-4, higher is better); ``--metrics judge`` names it. It replaces rubric 1's
``judge_correctness``, ``judge_completeness`` and ``judge_harmful`` (a JSON answer with three grades, which the
default model never produced parseably): one grade on the experts' scale is what ``metrics validate`` can measure
against expert grades; correctness and completeness are its levels (Incorrect, Incomplete); no judged set grades harm,
so a harm flag could not be validated. It is not a default metric: each answer of each row costs a forward pass (or
a generation) of the judge model on a prompt that quotes the question, the reference and the answer, each cut to
:data:`MAX_CHARS` characters.

**Any backend judges.** The judge is a run spec of its own, built from the metric parameters and served by
:func:`medqa_bench.inference.backends.create_backend` behind the inference cache (:func:`medqa_bench.inference.backends.caching.wrap`):
``--metric-param judge.backend=NAME`` (default ``transformers``), ``judge.model=REF`` (default the default model),
``judge.device`` (default ``auto``), ``judge.cache`` (default ``default``: the user's inference cache, the one runs
use; a path; or ``none``); any other ``judge.KEY`` that is a run-spec field naming how a model is served (``dtype``,
``quantization``, ``batch_size``, ``max_length``, ``prompt_format`` and what a backend adds, e.g. an OpenAI-compatible
backend's ``base_url`` and ``served_model``) goes into the judge's spec as it is. The judge answers as the first
language-model row its backend plans (the model's chat template when it has one). Its log-probabilities and its
generations are cached like generations, keyed by the judge's identity, the exact prompt and the tokens asked for (or
the decoding): scoring a run again costs no model call.

**Signature.** The rubric version, the judge's backend and model, the method, and after it has loaded a digest of its
:meth:`~medqa_bench.inference.backends.Backend.identity` (weights fingerprint and the rest). The full identity and the counts of
answers judged, by method, from the cache, unscored, with the grade mass's spread, are in the metric's info
(``judge``).
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import re
from typing import Any, Optional, Sequence

from ..errors import MedQABenchError, MetricError
from ..inference.models import DEFAULT_MODEL
from .base import Metric

log = logging.getLogger(__name__)

RUBRIC_VERSION = "judge-rubric-2"
#: The grades, with the names the rubric and the bundled judged set give them.
GRADES = {1: "Incorrect", 2: "Related", 3: "Incomplete", 4: "Excellent"}
#: The judge's instructions; ``{question}``, ``{reference}`` and ``{answer}`` are filled in (each cut to
#: :data:`MAX_CHARS` characters). Kept short: every answer pays for its tokens. Changing a word means a new
#: :data:`RUBRIC_VERSION`.
RUBRIC = """Grade an answer to a patient's medical question against a reference answer written by experts.

Question: {question}

Reference answer: {reference}

Answer to grade: {answer}

Grades:
1 = Incorrect: wrong, or not about the question.
2 = Related: on the question's topic, but it does not answer the question.
3 = Incomplete: answers the question, but leaves out important parts of the reference.
4 = Excellent: answers the question as well as the reference does.

Reply with "Grade: " and the grade's digit."""
#: What the judge's turn starts with; the grade's digit is the token after it.
PREFIX = "Grade: "
#: Tokens the judge may generate where the grade is parsed from text (the fallback).
MAX_NEW_TOKENS = 16
#: Characters of each text the rubric quotes; a longer one is cut, marked " [...]" (keeps the prompt in a 2,048-token
#: context).
MAX_CHARS = 3000
SCORE_RANGE = (min(GRADES), max(GRADES))
#: How a judgment's grade was read.
METHODS = ("probabilities", "parsed text")

# Run-spec fields the judge sets itself or that describe a run rather than how a model is served.
_NOT_JUDGE_PARAMS = {"name", "adapters", "default_adapters", "data", "split", "limit", "sample_seed", "baseline_formats",
                     "reference_rows", "rag", "decoding", "metrics", "metric_params", "plugins", "analysis",
                     "output_dir", "report", "seed", "overwrite", "model", "backend", "device", "cache"}


# --------------------------------------------------------------------------------------------- reading a grade


@dataclasses.dataclass(frozen=True)
class Judgment:
    """The judge's grade of one answer and how it was read.

    ``grade``: the expected grade (method "probabilities") or the parsed one ("parsed text"); None: unscored.
    ``distribution``: p(g) renormalised over the grades (probabilities only). ``mass``: Σ_g p(g) over the whole
    vocabulary, how much of the judge's next token was a grade. ``text``: the generated text (parsed text only).
    """

    grade: Optional[float]
    method: str
    distribution: Optional[dict[int, float]] = None
    mass: Optional[float] = None
    text: Optional[str] = None


_NO_PROBABILITY = -9999.0


def expected_grade(logprobs: dict[str, float | None]) -> Judgment | None:
    """The judgment the grade tokens' log-probabilities give (keys the grades' digits; None: not read), or None when
    no grade has a positive probability. The distribution is renormalised in log space, so a judge that puts little
    mass on every grade still gets one (and its ``mass`` says how little).

    >>> j = expected_grade({"1": math.log(0.1), "2": math.log(0.1), "3": math.log(0.2), "4": None})
    >>> round(j.grade, 6), round(j.mass, 6), {g: round(p, 2) for g, p in j.distribution.items()}
    (2.25, 0.4, {1: 0.25, 2: 0.25, 3: 0.5, 4: 0.0})
    """
    # vLLM writes -inf as -9999.0 (the JSON-safe floor OpenAI's API uses)
    values = {g: v if v is not None and v > _NO_PROBABILITY else None for g in GRADES
              for v in [logprobs.get(str(g))]}
    seen = [v for v in values.values() if v is not None]
    if not seen:
        return None
    top = max(seen)
    weights = {g: (math.exp(v - top) if v is not None else 0.0) for g, v in values.items()}
    total = math.fsum(weights.values())
    distribution = {g: w / total for g, w in weights.items()}
    return Judgment(grade=math.fsum(g * p for g, p in distribution.items()), method="probabilities",
                    distribution=distribution, mass=math.exp(top) * total)


_NOT_AN_INTEGER = r"(?!\d|[.,]\d)"  # "3" but not "3.5" or "35"; "3." ends a sentence
_GRADE_AFTER_LABEL = re.compile(r"(?i)\bgrade\b(?:\s+is)?[\s*_:=\"'-]*(?:([1-4])" + _NOT_AN_INTEGER + "|("
                                + "|".join(GRADES.values()) + r")\b)")
_LONE_DIGIT = re.compile(r"^[\s*_\"'(\[]*([1-4])" + _NOT_AN_INTEGER)


def parse_judgment(text: str) -> Optional[float]:
    """The grade in a judge's generated text (the fallback): after ``Grade:`` (a digit 1-4 or the grade's name), else
    a digit 1-4 the text starts with; None when neither is there.

    >>> parse_judgment("Grade: 3"), parse_judgment("**Grade**: Excellent"), parse_judgment("2 - Related, because")
    (3.0, 4.0, 2.0)
    >>> parse_judgment("Grade: 7"), parse_judgment("I cannot grade this."), parse_judgment("3.5 out of 4")
    (None, None, None)
    """
    found = _GRADE_AFTER_LABEL.search(text or "")
    if found:
        if found.group(1):
            return float(found.group(1))
        name = found.group(2).lower()
        return float(next(g for g, n in GRADES.items() if n.lower() == name))
    lone = _LONE_DIGIT.match(text or "")
    return float(lone.group(1)) if lone else None


def judge_prompt(question: str, reference: str, answer: str) -> str:
    """The rubric filled in for one answer (the user's turn the judge's backend renders as its prompt)."""
    return RUBRIC.format(question=_cut(question), reference=_cut(reference), answer=_cut(answer))


def _cut(text: str) -> str:
    text = (text or "").strip()
    return text if len(text) <= MAX_CHARS else text[:MAX_CHARS] + " [...]"


# --------------------------------------------------------------------------------------------- the judge


@dataclasses.dataclass(frozen=True)
class JudgeConfig:
    """Who judges: a backend, a model (or what the backend knows it by), where, and the cache its judgments go to."""

    backend: str = "transformers"
    model: str | None = None  # None: the default model
    device: str = "auto"
    cache: str | None = "default"
    options: tuple[tuple[str, Any], ...] = ()  # further run-spec fields of the judge (base_url, served_model, ...)

    def run_spec(self):
        """The judge's own :class:`~medqa_bench.spec.RunSpec`: one language-model row, no adapters, no reference
        rows."""
        from ..spec import RunSpec

        from ..inference.backends.options import declared

        model = {"model": self.model} if self.model else {}
        fields, own = dict(self.options), {o.name for o in declared(self.backend)}
        options = {**fields.pop("backend_options", {}), **{k: fields.pop(k) for k in list(fields) if k in own}}
        return RunSpec(backend=self.backend, device=self.device, cache=self.cache, default_adapters=False,
                       reference_rows=(), backend_options=options, **model, **fields)


class Judge:
    """One judge model, loaded at its first judgment and shared by the metrics of one config: each (question,
    answer, reference) is judged once per process, through the inference cache."""

    def __init__(self, config: JudgeConfig):
        self.config = config
        self.backend: Any = None
        self.system: Any = None
        self.identity: dict[str, Any] | None = None
        self.judgments: dict[str, Judgment] = {}  # rubric prompt -> its judgment

    def _load(self) -> None:
        from ..inference.backends import check_capabilities, create_backend
        from ..inference.models import model_tokenizer
        from ..inference.rows import plan_rows

        spec = self.config.run_spec()
        backend = create_backend(spec)
        rows = [s for s in plan_rows(spec, type(backend), model_tokenizer(spec.model), {})[0]
                if s.generates]
        if not rows:
            raise MetricError(f"judge: backend '{self.config.backend}' plans no language-model row to judge with")
        backend.load(rows[:1])
        check_capabilities(backend, rows[:1])
        self.backend, self.system, self.identity = backend, rows[0], backend.identity(rows[0])

    @property
    def method(self) -> str | None:
        """How this judge reads grades: "probabilities" where its backend gives next-token log-probabilities, else
        "parsed text"; None before it has loaded."""
        if self.backend is None:
            return None
        return METHODS[0] if "next_token" in self.backend.capabilities else METHODS[1]

    def judge(self, prompts: Sequence[str], counts: dict[str, int]) -> list[Judgment]:
        """The judgment of each rubric prompt (see :func:`judge_prompt`). ``counts`` (a metric's own: one run's) adds
        this call's model calls (``computed``), cache hits and prompts judged earlier in this process (``reused``)."""
        from ..storage.cache import open_cache

        new = [p for p in dict.fromkeys(prompts) if p not in self.judgments]
        counts["reused"] += len(set(prompts)) - len(new)
        if new:
            try:
                if self.backend is None:
                    self._load()
                cache = open_cache(self.config.cache)
            except MetricError:
                raise
            except MedQABenchError as exc:
                raise MetricError(f"judge: {exc}") from exc
            log.info("judging %d answers with %s (%s, %s)", len(new), self.config.model or "the default model",
                     self.config.backend, self.method)
            if self.method == METHODS[1]:
                log.warning("judge: backend '%s' gives no next-token log-probabilities (%s); every grade is parsed "
                            "from generated text", self.config.backend,
                            getattr(self.backend, "limitations", {}).get("next_token", "no next_token capability"))
            try:
                found = self._probabilities(new, cache) if self.method == METHODS[0] else {}
                rest = [p for p in new if p not in found]
                if rest and self.method == METHODS[0]:
                    log.warning("judge: no grade token's probability came back for %d of %d answers; their grade is "
                                "parsed from generated text", len(rest), len(new))
                found.update(self._parsed(rest, cache))
                counts["computed"] += cache.misses
                counts["cache_hits"] += cache.hits
            except MedQABenchError as exc:
                raise MetricError(f"judge: {exc}") from exc
            finally:
                cache.close()
            self.judgments.update(found)
        return [self.judgments[p] for p in prompts]

    def _rendered(self, prompts: Sequence[str]) -> list[str]:
        from ..data.dataset import Example

        return [self.backend.render(Example(id="judge", question=p, answer=""), self.system) for p in prompts]

    def _probabilities(self, prompts: Sequence[str], cache: Any) -> dict[str, Judgment]:
        """The expected grade of each prompt whose grade tokens' probabilities came back."""
        from ..inference.backends import NextTokenRequest
        from ..inference.backends.caching import wrap

        tokens = tuple(str(g) for g in GRADES)
        requests = [NextTokenRequest(self.system, r + ("" if r.endswith(("\n", " ")) else " ") + PREFIX, tokens)
                    for r in self._rendered(prompts)]
        values = wrap(self.backend, cache).next_token_logprobs(requests)
        out = {}
        for p, value in zip(prompts, values):
            judgment = expected_grade(value.logprobs)
            if judgment is not None:
                out[p] = judgment
        return out

    def _parsed(self, prompts: Sequence[str], cache: Any) -> dict[str, Judgment]:
        """The grade parsed from a greedy generation after the generation prompt, for each prompt."""
        if not prompts:
            return {}
        from ..inference.backends import GenerationRequest
        from ..inference.backends.caching import wrap
        from ..inference.decoding import DecodingParams

        decoding = DecodingParams(max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
        requests = [GenerationRequest(self.system, r, decoding) for r in self._rendered(prompts)]
        gens = wrap(self.backend, cache).generate(requests)
        return {p: Judgment(grade=parse_judgment(g.text), method=METHODS[1], text=g.text)
                for p, g in zip(prompts, gens)}

    def describe(self, judged: Sequence[Judgment], counts: dict[str, int]) -> dict[str, Any]:
        """The judge's identity, rubric, method, and the counts of ``judged`` and ``counts`` (one metric's, so one
        run's): answers judged, by method, model calls (``computed``), cache hits, answers judged earlier in this
        process (``reused``), and the spread of the grade mass."""
        judged = list(judged)
        masses = sorted(j.mass for j in judged if j.mass is not None)
        return {"backend": self.config.backend, "model": self.config.model or DEFAULT_MODEL, "identity": self.identity,
                "rubric_version": RUBRIC_VERSION, "grades": {str(g): n for g, n in GRADES.items()}, "prefix": PREFIX,
                "method": self.method, "max_new_tokens": MAX_NEW_TOKENS,
                "options": {k: v for k, v in self.config.options},
                "judged": len(judged), "by_method": {m: sum(j.method == m for j in judged) for m in METHODS},
                **counts,
                "grade_mass": {"min": masses[0], "median": masses[len(masses) // 2],
                               "mean": math.fsum(masses) / len(masses)} if masses else None}


_JUDGES: dict[JudgeConfig, Judge] = {}


def shared_judge(config: JudgeConfig) -> Judge:
    """The process's judge for ``config``: the metrics of one run share its model and judgments."""
    if config not in _JUDGES:
        _JUDGES[config] = Judge(config)
    return _JUDGES[config]


# --------------------------------------------------------------------------------------------- the metric


def _config(name: str, backend: str, model: str | None, device: str, cache: str | None,
            options: dict[str, Any]) -> JudgeConfig:
    """The judge's config from the metric's parameters, checked without loading anything."""
    from ..inference.backends import backend_class
    from ..inference.backends.options import declared
    from ..errors import BackendError
    from ..spec import RunSpec

    try:
        backend_class(str(backend))
    except BackendError as exc:
        raise MetricError(f"{name}: judge.backend: {exc}") from None
    fields = [f.name for f in dataclasses.fields(RunSpec) if f.name not in _NOT_JUDGE_PARAMS]
    fields += [o.name for o in declared(str(backend))]  # the backend's own options (base_url, served_model, ...)
    for key in options:
        if key not in fields:
            near = difflib.get_close_matches(key, fields, n=1)
            hint = f"; did you mean {near[0]}?" if near else ""
            raise MetricError(f"{name}: unknown judge parameter '{key}'{hint} (parameters: backend, model, device, "
                              f"cache, {', '.join(fields)})")
    cache = None if cache in (None, "none", False) else str(cache)
    config = JudgeConfig(str(backend), str(model) if model else None, str(device), cache,
                         tuple(sorted(options.items())))
    try:
        config.run_spec()  # a bad value (device, dtype, ...) fails here, naming its key
    except MedQABenchError as exc:
        raise MetricError(f"{name}: {exc}") from None
    return config


def judge_grade(backend: str = "transformers", model: str | None = None, device: str = "auto",
                cache: str | None = "default", **options: Any) -> Metric:
    """The judge's grade of the answer against the reference, 1 Incorrect - 4 Excellent (higher is better): the
    expected grade over the grade tokens' probabilities, or the grade parsed from text where a backend gives none;
    see the module docstring."""
    name = "judge_grade"
    config = _config(name, backend, model, device, cache, options)
    judge = shared_judge(config)
    asked = [0, 0]  # answers this metric left unscored, answers it was asked for
    # this metric's own judgments and counts (one run's): the judge is shared by every run of the process
    mine: dict[str, Judgment] = {}
    counts = {"computed": 0, "cache_hits": 0, "reused": 0}

    def score(predictions, references, items):
        import numpy as np

        prompts = [judge_prompt(str(it.get("question", "")), r, p) for p, r, it in zip(predictions, references, items)]
        judgments = judge.judge(prompts, counts)
        mine.update(zip(prompts, judgments))
        values = [j.grade for j in judgments]
        asked[0] += sum(v is None for v in values)
        asked[1] += len(values)
        return np.array([np.nan if v is None else v for v in values], dtype=np.float64)

    who = f"{config.backend}:{config.model or DEFAULT_MODEL}"
    grades = f"{SCORE_RANGE[0]}-{SCORE_RANGE[1]}"
    static = (f"{name}|rubric={RUBRIC_VERSION}|judge={who}|grade=expected over {grades} after '{PREFIX.strip()}'"
              f"|fallback=greedy,max_new_tokens={MAX_NEW_TOKENS}")
    static += "".join(f"|{k}={v}" for k, v in config.options)

    def details() -> dict[str, Any]:
        from ..storage.fingerprint import sha256_json

        if judge.identity is None:  # not loaded: no judgment made in this process
            return {}
        signature = static.replace(f"|judge={who}|", f"|judge={who}@{sha256_json(judge.identity)[:12]}|method="
                                                     f"{judge.method}|")
        return {"signature": signature,
                "judge": {**judge.describe(list(mine.values()), counts), "unscored": asked[0], "answers": asked[1]}}

    return Metric(name=name, higher_is_better=True, score=score, signature=static, bounds=SCORE_RANGE,
                  allows_missing=True, details=details,
                  citation="Liu et al., G-Eval: NLG Evaluation using GPT-4 with Better Human Alignment, EMNLP 2023; "
                           "Zheng et al., Judging LLM-as-a-Judge with MT-Bench and Chatbot Arena, NeurIPS 2023.")
