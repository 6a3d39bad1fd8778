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

SCHEMA_VERSION = "2.5"
#: 2.0: systems are rows of three kinds (baseline rows, one per prompt format; adapters, each in its own format;
#: reference rows that need no model), samples hold a prompt per format, stop reasons, null scores and the leakage
#: audit, and results hold the budget, the harness's loss definition and the verdict. 1.x run folders are refused.
#: 2.1 (fields added; 2.0 folders read as before): rows with retrieval (``+rag`` rows: ``variant_of``, ``retrieval``,
#: samples' ``passages`` and ``<format>+rag`` prompts, "context" metrics), unscored items (``allows_missing``,
#: ``n_missing``, per-item None from the LLM judge, its ``judge`` info), the backend (``spec.backend``, ``models``),
#: each language-model row's base (``quantization``, ``quantization_source``) and reference rows' ``settings``.
#: 2.2 (fields added; 2.0 and 2.1 folders read as before, their report says validity was not recorded): ``validity``
#: (:class:`RunValidity`: each metric's agreement with expert grades and robustness, the floor, the primary metric),
#: ``spec.validity`` and the verdict's ``primary`` and ``weak_metrics`` warnings.
#: 2.3 (fields added; earlier 2.x folders read as before): the training corpus (``data.training``,
#: :class:`TrainingData`; ``spec.train_data``, ``spec.train_split``) and the training texts a near-duplicate nearly
#: repeats (``train_overlap.nearest``); items scored by the NLL metrics alone (``generated``: false, their language-model
#: rows with NLL fields only, no reference rows; ``data.n_generated``, ``data.nll_limit``, ``spec.nll_limit``) and
#: each metric's item set (``metrics[name].items``: "all" or "generated").
#: 2.4 (fields added; earlier 2.x folders read as before, their plugins found by the path they recorded): plugins
#: recorded by content (``metrics[name].plugin``, :class:`PluginRecord`, with the source kept in the run folder's
#: ``plugins/``; ``spec.plugins`` holds files by absolute path) and how ``score`` found a plugin metric's code again
#: (``metrics[name].plugin_check``, :class:`PluginCheck`).
#: 2.5 (earlier 2.x folders read as before): a backend's options in ``spec.backend_options`` (``{}`` for transformers;
#: for openai ``base_url``, ``served_model``, ``concurrency``, ``request_timeout``, ``retries``, defaults filled in),
#: as the backend declares them (medqa_bench.backends.options), instead of those five keys at the top of ``spec``;
#: a spec or results.json with the top-level keys is read by moving them into ``backend_options``. ``judge`` info
#: gains ``reused`` (answers this process had judged already), and its counts are the run's own.


class SystemSample(TypedDict, total=False):
    prediction: str  # generated text (special tokens stripped, cut before a stop sequence); a reference row's answer; absent
    #                 (as are generated_tokens, truncated, stop_reason) on an item with generated false (2.3)
    generated_tokens: int  # new tokens generated (EOS included when it stopped there); a reference row's token count
    truncated: bool  # stopped at max_new_tokens rather than at EOS or a stop sequence
    stop_reason: Optional[str]  # "eos" | "stop" | "length"; None for reference rows (nothing was generated)
    source: Optional[dict[str, Any]]  # reference rows: the training item the answer came from ({"train_id", "score"})
    nll_sum: float  # sum of -log p(reference token | prompt, previous reference tokens), natural log
    nll_tokens: int  # number of reference tokens scored
    perplexity: float  # exp(nll_sum / nll_tokens)
    scores: dict[str, float]  # metric name -> per-item score (best over references for reference metrics)
    best_reference: dict[str, int]  # metric name -> index into references of the best match
    distractor_scores: dict[str, float]  # similarity metrics in [0, 1]: sim(prediction, distractor's reference)
    nearest_qtype: dict[str, list]  # similarity metric -> [qtype of the most similar reference, its score]
    passages: list[dict[str, Any]]  # rows with retrieval: [{"id" (training item), "score", "text" (as prompted)}]


class SampleRecord(TypedDict, total=False):
    id: str
    generated: bool  # 2.3: False for an item the NLL metrics score alone (no predictions; absent before: True)
    qtype: str
    focus: str
    question: str
    prompts: dict[str, str]  # prompt format (or "<format>+rag") -> the prompt text every system of it was given
    reference: str  # the first reference (the training completion)
    references: list[str]
    reference_tokens: int  # model tokens of the first reference
    distractor_id: Optional[str]  # seeded item of another focus whose first reference is the distractor
    null_scores: dict[str, float]  # similarity metric -> sim(first reference, distractor's first reference)
    train_overlap: dict[str, Any]  # audit.audit_items(): {"reference": {"score", "train_id"}, "question": {...},
    #                                 "near_duplicate": bool}; absent when there is no training split to compare with;
    #                                 2.3: a near-duplicate's "nearest": audit.nearest_training_texts() (per side the
    #                                 training item's id, question and first reference, cut)
    systems: dict[str, SystemSample]  # every system of the run, by name


class _MetricValue(TypedDict):
    value: float
    ci_low: float
    ci_high: float
    n: int  # items scored


class MetricValue(_MetricValue, total=False):  # typing.NotRequired needs Python 3.11; we support 3.10
    # items a metric that allows missing scores (the LLM judge) could not score: not in value, CI or paired tests
    n_missing: int


class MetricInfo(TypedDict, total=False):
    name: str
    higher_is_better: bool
    signature: str  # everything that changes its value, e.g. "rougeL|stemmer=on|rouge-score=0.1.2"
    source: str  # "builtin", "entry-point:pkg", "plugin:path.py", "evaluate:path"
    kind: str  # "reference" | "nll" | "prediction" | "context" (systems with retrieval only)
    bounds: Optional[list[float]]  # [0, 1] for similarity metrics usable by the confusion analysis
    allows_missing: bool  # present and True for a metric whose per-item score may be None (not scored)
    judge: dict[str, Any]  # an LLM judge's identity, rubric version and counts (medqa_bench.metrics.judge)
    items: str  # 2.3: the items it scored: "all" (every item of samples.jsonl: the NLL metrics) or "generated"
    plugin: PluginRecord  # 2.4: a metric of a --plugin: where its code came from
    plugin_check: PluginCheck  # 2.4: written by `score` when it computed a plugin metric again


class PluginRecord(TypedDict):
    """``metrics[name].plugin`` (2.4; medqa_bench.metrics.provenance.PluginSource.record): the code a plugin metric's
    scores came from. Nothing loads ``copy`` unless a user names it with ``--plugin``."""

    spec: str  # the --plugin value as spec.plugins holds it: a file's absolute path, evaluate:<abs path>[#KEY], or a
    #           module name
    kind: str  # "file" | "module" | "evaluate"
    path: Optional[str]  # the resolved absolute path of its source (a module: its file; None when it has none)
    sha256: Optional[str]  # of that source as it ran (an evaluate folder: of its .py files, fingerprint.sha256_files)
    copy: Optional[str]  # a file plugin: that source, kept in the run folder ("plugins/<stem>-<sha12>.py")


class PluginCheck(TypedDict):
    """``metrics[name].plugin_check`` (2.4; medqa_bench.metrics.registry.resolve_rescore_metrics): how ``score`` found a
    metric's code when it computed the metric again, against what the run had recorded."""

    status: str  # "same" | "changed" (the recorded file's fingerprint differs) | "unverified" (none was recorded) |
    #             "overridden" (a --plugin given to score) | "entry-point" (installed, with the recorded signature)
    recorded: dict[str, Any]  # {"source", "signature", "sha256"} as the run had recorded them
    sha256: Optional[str]  # of the source used now (None: an entry point)
    warning: bool  # the source or the signature differs from the recorded, or could not be checked
    note: str  # one sentence, as `score` prints it


class SystemInfo(TypedDict, total=False):
    kind: str  # "baseline" | "adapter" | "reference"
    prompt_format: Optional[str]  # "chat" | "reference"; None for reference rows
    format_source: str  # why this format: "the model's chat template", "training metadata", "prompt_format", ...
    stop_sequences: list[str]  # the stop sequences of its prompt format
    quantization: str  # language-model rows: "none" | "4bit", the base it ran on
    quantization_source: str  # why: "default: the unquantized base", "training metadata", "quantization", ...
    adapter: Optional[dict[str, Any]]  # models.AdapterInfo.to_dict()
    training_log: Optional[dict[str, Any]]  # analysis.training.read_training_log() of the adapter folder
    training_eval_loss: Optional[dict[str, Any]]  # {"value", "definition"} from the adapter's training metadata
    method: str  # reference rows: "retrieval" | "boilerplate" | "question"
    description: str  # reference rows: what the row is and why it is there
    settings: dict[str, Any]  # reference rows: library, version and parameters (reference_rows.method_settings)
    variant_of: str  # a +rag row: the plain row it adds retrieval to
    retrieval: dict[str, Any]  # a +rag row: rag.run_passages(): method, k, words, label, template, index


class MeasuredFigures(TypedDict):
    """A metric of the run whose signature was measured: its figures as the validity file holds them."""

    measured: bool  # True
    signature: str
    figures: dict[str, dict[str, Any]]  # medqa_bench.validity.stats.FIGURES -> {"value", "ci_low", "ci_high"}
    robustness: dict[str, dict[str, Any]]  # perturbation -> win rate {"value", "ci_low", "ci_high", "n"}
    passes_robustness: bool
    n_scored: Optional[int]
    n_unscored: Optional[int]
    below_floor: Optional[bool]  # within-question Spearman below the floor; None where it is undefined


class NotMeasured(TypedDict):
    measured: bool  # False
    signature: str  # the run's signature of the metric
    reason: str  # an nll or context metric, not in the file, or measured with another signature


class ValidityFloor(TypedDict):
    figure: str  # "within_question_spearman"
    value: float  # 0.3 (medqa_bench.validity.measured.WITHIN_QUESTION_FLOOR)
    rule: str


class PrimaryMetric(TypedDict):
    metric: Optional[str]  # None: no measured metric of the run passes the robustness suite
    rule: str  # medqa_bench.validity.schema.PRIMARY_RULE
    reason: str


class RunValidity(TypedDict):
    """``results["validity"]`` (medqa_bench.validity.measured.run_validity), recomputed by ``score``."""

    source: str  # "bundled" (the package's measured.json) or the validity.json path given with --validity
    fingerprint: str  # sha256 of that file's bytes
    created: str  # when the file's measurement was made
    medqa_bench_version: str  # of the measurement
    judged_set: dict[str, Any]  # {"name", "fingerprint", "counts"}
    settings: dict[str, Any]  # good_threshold, related_grade, n_bootstrap, seed, resampled, ci
    floor: ValidityFloor
    primary: PrimaryMetric
    metrics: dict[str, Any]  # metric name -> MeasuredFigures | NotMeasured, every metric of the run


class TrainingData(TypedDict):
    """``results["data"]["training"]`` (2.3): the corpus reference rows, the leakage audit and retrieval drew from
    (medqa_bench.training_corpus)."""

    source: str  # "given" (--train-data), "adapters" (the adapters' recorded training data), "evaluated" (its train split)
    path: str  # where it was read
    qtype: str  # its qtype filter
    fingerprint: str  # of the data file
    manifest_fingerprint: str  # of its split
    split: str  # the split that is the corpus: "train", or "all" (every item of a --train-data file)
    n_items: int
    adapters: list[str]  # source "adapters": the adapters that record it
    note: Optional[str]  # the line the run said when the adapters' record could not be used (not found, changed)


class ResultsFile(TypedDict, total=False):
    schema_version: str
    medqa_bench_version: str
    created: str  # ISO 8601, UTC
    run_name: str
    spec: dict[str, Any]  # spec.RunSpec.to_dict()
    environment: dict[str, Any]  # versions, python, platform, git_commit, hardware
    model: dict[str, Any]  # the first entry of models (transformers: the first base: reference, fingerprint, dtype, ...)
    models: dict[str, dict[str, Any]]  # the backend's describe(); transformers: quantization -> LoadedModel.describe()
    systems: dict[str, SystemInfo]
    data: dict[str, Any]  # data fingerprint, manifest fingerprint, split, n_items, limit, sample seed, item ids digest,
    #                        training (2.3: TrainingData); 2.3: n_items counts every item of samples.jsonl (the NLL
    #                        metrics'), n_generated those every system answered, nll_limit as resolved
    metrics: dict[str, MetricInfo]
    results: dict[str, dict[str, MetricValue]]  # system -> metric -> value with 95% bootstrap CI
    budget: dict[str, Any]  # budget.auto_max_new_tokens() or given_budget(): max_new_tokens and how it was set
    loss_definition: dict[str, Any]  # what this run's loss is (form, EOS, truncation, quantization, dtype, split)
    timings: dict[str, float]  # seconds per stage
    analysis: dict[str, Any]  # analysis.analyze(): comparisons, thresholds, degeneration, leakage, confusion, lengths
    verdict: dict[str, Any]  # analysis.verdict.build_verdict(): per adapter, improves/regresses/warnings/conditions
    validity: RunValidity  # 2.2: each metric's validity figures, the floor and the primary metric
