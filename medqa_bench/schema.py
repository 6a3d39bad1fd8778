"""The run folder's contract: ``results.json`` and ``samples.jsonl``, declared as typed dictionaries.

A run folder holds::

    results.json     ResultsFile: spec, provenance, aggregates with CIs, analysis
    samples.jsonl    one SampleRecord per item
    report.html      rendered from the two files above alone
    cache.sqlite     (optional) generations and NLLs, content-addressed

``SCHEMA_VERSION`` is ``MAJOR.MINOR``: the major number changes with any incompatible change of these shapes, the
minor one when fields are only added. Readers (``medqa-bench score``, ``report``) accept files of their own major
version and refuse others.
"""

from __future__ import annotations

from typing import Any, Optional, TypedDict

SCHEMA_VERSION = "1.0"


class SystemSample(TypedDict, total=False):
    prediction: str  # generated text, special tokens stripped
    generated_tokens: int  # new tokens generated (EOS included when it stopped there)
    truncated: bool  # stopped at max_new_tokens rather than at EOS
    nll_sum: float  # sum of -log p(reference token | prompt, previous reference tokens), natural log
    nll_tokens: int  # number of reference tokens scored
    perplexity: float  # exp(nll_sum / nll_tokens)
    scores: dict[str, float]  # metric name -> per-item score (best over references for reference metrics)
    best_reference: dict[str, int]  # metric name -> index into references of the best match
    distractor_scores: dict[str, float]  # similarity metrics in [0, 1]: sim(prediction, distractor's reference)
    nearest_qtype: dict[str, list]  # similarity metric -> [qtype of the most similar reference, its score]


class SampleRecord(TypedDict, total=False):
    id: str
    qtype: str
    focus: str
    question: str
    prompt: str
    reference: str  # the first reference (the training completion)
    references: list[str]
    reference_tokens: int  # model tokens of the first reference
    distractor_id: Optional[str]  # seeded item of another focus whose first reference is the distractor
    systems: dict[str, SystemSample]  # "baseline" and each adapter name


class MetricValue(TypedDict):
    value: float
    ci_low: float
    ci_high: float
    n: int


class MetricInfo(TypedDict, total=False):
    name: str
    higher_is_better: bool
    signature: str  # everything that changes its value, e.g. "rougeL|stemmer=on|rouge-score=0.1.2"
    source: str  # "builtin", "entry-point:pkg", "plugin:path.py", "evaluate:path"
    kind: str  # "reference" | "nll" | "prediction"
    bounds: Optional[list[float]]  # [0, 1] for similarity metrics usable by the confusion analysis


class SystemInfo(TypedDict, total=False):
    kind: str  # "baseline" | "adapter"
    adapter: Optional[dict[str, Any]]  # models.AdapterInfo.to_dict()
    training_log: Optional[dict[str, Any]]  # analysis.training.read_training_log() of the adapter folder


class ResultsFile(TypedDict, total=False):
    schema_version: str
    medqa_bench_version: str
    created: str  # ISO 8601, UTC
    run_name: str
    spec: dict[str, Any]  # spec.RunSpec.to_dict()
    environment: dict[str, Any]  # versions, python, platform, git_commit, hardware
    model: dict[str, Any]  # models.LoadedModel.describe(): reference, fingerprint, quantization, dtype, device
    systems: dict[str, SystemInfo]
    data: dict[str, Any]  # data fingerprint, manifest fingerprint, split, n_items, limit, sample seed, item ids digest
    metrics: dict[str, MetricInfo]
    results: dict[str, dict[str, MetricValue]]  # system -> metric -> value with 95% bootstrap CI
    timings: dict[str, float]  # seconds per stage
    analysis: dict[str, Any]  # analysis.analyze(): confusion matrices, paired statistics, length histograms
