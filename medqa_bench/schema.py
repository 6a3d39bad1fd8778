"""The run folder's contract: ``results.json`` (frozen records, read by :func:`read_results`) and ``samples.jsonl``
(typed dictionaries).

A run folder holds::

    results.json     Results: spec, provenance, aggregates with CIs, analysis (written by medqa_bench.results_record)
    samples.jsonl    one SampleRecord per item
    report.html      rendered from the two files above alone
    cache.sqlite     (optional) generations and NLLs, content-addressed

``SCHEMA_VERSION`` is ``MAJOR.MINOR``: the major number changes with any incompatible change of these shapes, the
minor one when fields are only added. Readers (``medqa-bench score``, ``report``) accept files of their own major
version and refuse others.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from types import UnionType
from typing import Any, Optional, TypedDict, Union, get_args, get_origin, get_type_hints, is_typeddict

from .errors import RunError

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
#: as the backend declares them (medqa_bench.inference.backends.options), instead of those five keys at the top of ``spec``;
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


class TrainingData(TypedDict):
    """``results["data"]["training"]`` (2.3): the corpus reference rows, the leakage audit and retrieval drew from
    (medqa_bench.data.training_corpus)."""

    source: str  # "given" (--train-data), "adapters" (the adapters' recorded training data), "evaluated" (its train split)
    path: str  # where it was read
    qtype: str  # its qtype filter
    fingerprint: str  # of the data file
    manifest_fingerprint: str  # of its split
    split: str  # the split that is the corpus: "train", or "all" (every item of a --train-data file)
    n_items: int
    adapters: list[str]  # source "adapters": the adapters that record it
    note: Optional[str]  # the line the run said when the adapters' record could not be used (not found, changed)



# ------------------------------------------------------------------------------------------------ results.json
# The records below are results.json as its readers (analysis, verdict, report) see it: frozen, every declared field
# present (a field an older 2.x minor version did not write holds its default), read once by read_results(), which
# names the dotted key of a value of the wrong type. ``raw`` is the object as the file holds it (its key order and
# any field a later minor version adds), for the report's provenance tables and for writing a run folder back.


@dataclass(frozen=True)
class MetricValue:
    """``results[system][metric]``: the aggregate with its 95% bootstrap CI."""

    value: Optional[float] = None
    ci_low: Optional[float] = None
    ci_high: Optional[float] = None
    n: Optional[int] = None  # items scored
    n_missing: Optional[int] = None  # items a metric that allows missing scores (the LLM judge) could not score
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class MetricInfo:
    """``metrics[name]``: what a metric is (medqa_bench.metrics.Metric.info())."""

    name: Optional[str] = None
    higher_is_better: Optional[bool] = None
    signature: Optional[str] = None  # everything that changes its value, e.g. "rougeL|stemmer=on|rouge-score=0.1.2"
    source: Optional[str] = None  # "builtin", "entry-point:pkg", "plugin:path.py", "evaluate:path"
    kind: Optional[str] = None  # "reference" | "nll" | "prediction" | "context" (systems with retrieval only)
    bounds: Optional[list[float]] = None  # [0, 1] for similarity metrics usable by the confusion analysis
    allows_missing: bool = False  # True for a metric whose per-item score may be None (not scored)
    judge: Optional[dict[str, Any]] = None  # an LLM judge's identity, rubric version and counts (metrics.judge)
    # 2.3: the items it scored: "all" (every item of samples.jsonl: the NLL metrics) or "generated"; before 2.3 the
    # NLL metrics scored every item and the others the generated ones, which is the default read
    items: Optional[str] = None
    plugin: Optional[PluginRecord] = None  # 2.4: a metric of a --plugin: where its code came from
    plugin_check: Optional[PluginCheck] = None  # 2.4: written by `score` when it computed a plugin metric again
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        if self.items is None:
            object.__setattr__(self, "items", "all" if self.kind == "nll" else "generated")

    @property
    def reference_like(self) -> bool:
        """Scored against references (a metric without a declared kind is taken for one)."""
        return (self.kind or "reference") == "reference"


@dataclass(frozen=True)
class TrainingEvalLoss:
    """``systems[name].training_eval_loss``: the adapter's training eval loss from its metadata, and how it was
    defined (medqa_bench.inference.loss.definition_from_metadata: form, formula, split, eos, truncation, ...)."""

    value: Optional[float] = None
    definition: dict[str, Any] = field(default_factory=dict)
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class SystemInfo:
    """``systems[name]``: a row of the run, how it was prompted and on which base."""

    kind: Optional[str] = None  # "baseline" | "adapter" | "reference"
    prompt_format: Optional[str] = None  # "chat" | "reference"; None for reference rows
    format_source: Optional[str] = None  # why this format: "the model's chat template", "training metadata", ...
    stop_sequences: Optional[list[str]] = None  # the stop sequences of its prompt format
    quantization: Optional[str] = None  # language-model rows: "none" | "4bit", the base it ran on
    quantization_source: Optional[str] = None  # why: "default: the unquantized base", "training metadata", ...
    adapter: Optional[dict[str, Any]] = None  # models.AdapterInfo.to_dict()
    training_log: Optional[dict[str, Any]] = None  # analysis.training.read_training_log() of the adapter folder
    training_eval_loss: Optional[TrainingEvalLoss] = None
    method: Optional[str] = None  # reference rows: "retrieval" | "boilerplate" | "question"
    description: Optional[str] = None  # reference rows: what the row is and why it is there
    settings: Optional[dict[str, Any]] = None  # reference rows: library, version and parameters
    variant_of: Optional[str] = None  # 2.1, a +rag row: the plain row it adds retrieval to
    retrieval: Optional[dict[str, Any]] = None  # 2.1, a +rag row: rag.run_passages(): method, k, words, label, ...
    # a combined report's rows (medqa_bench.report.runs): the run a row comes from, the runs sharing it, and (older
    # combined reports) an adapter's one baseline
    run: Optional[str] = None
    shared_by: Optional[list[str]] = None
    compared_with: Optional[str] = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class DataRecord:
    """``data``: what was evaluated (the runner's record of the data, the split and the items)."""

    source: Optional[str] = None  # where the data was found
    fingerprint: Optional[str] = None
    manifest_fingerprint: Optional[str] = None
    split: Optional[str] = None
    split_size: Optional[int] = None
    train_size: Optional[int] = None
    training: Optional[TrainingData] = None  # 2.3: the training corpus
    n_items: Optional[int] = None  # every item of samples.jsonl (2.3: the NLL metrics' items)
    n_generated: Optional[int] = None  # 2.3: the items every system answered
    limit: Optional[int] = None
    nll_limit: Optional[int] = None  # 2.3: as resolved
    sample_seed: Optional[int] = None
    item_ids_fingerprint: Optional[str] = None
    dropped_empty_rows: Optional[int] = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class Budget:
    """``budget``: the generation budget and how it was set (medqa_bench.planning.budget)."""

    max_new_tokens: Optional[int] = None
    source: Optional[str] = None  # "auto" | "given"
    rule: Optional[str] = None
    percentile: Optional[float] = None  # auto: the percentile of the reference lengths it takes
    percentile_tokens: Optional[int] = None  # auto: that percentile, in tokens
    capped: Optional[bool] = None  # auto: the percentile was above the cap
    n_references: Optional[int] = None
    references_longer: Optional[int] = None  # references at least as long as the budget
    auto_would_be: Optional[int] = None  # given: what the automatic budget would have been
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class RunFacts:
    """``runs[label]`` of a combined report's results (medqa_bench.report.runs.join_runs): what the page says about
    each run."""

    label: Optional[str] = None
    folder: Optional[str] = None
    run_name: Optional[str] = None
    budget: Optional[Budget] = None
    loss_definition: Optional[dict[str, Any]] = None
    model: dict[str, Any] = field(default_factory=dict)
    decoding: Optional[dict[str, Any]] = None
    n_items: Optional[int] = None  # generated items
    n_nll_items: Optional[int] = None  # every item (the NLL metrics')
    metrics: list[str] = field(default_factory=list)
    primary: Optional[str] = None  # its primary metric


@dataclass(frozen=True)
class ValidityFloor:
    figure: Optional[str] = None  # "within_question_spearman"
    value: Optional[float] = None  # 0.3 (medqa_bench.validity.measured.WITHIN_QUESTION_FLOOR)
    rule: Optional[str] = None


@dataclass(frozen=True)
class PrimaryMetric:
    metric: Optional[str] = None  # None: no measured metric of the run passes the robustness suite
    rule: Optional[str] = None  # medqa_bench.validity.schema.PRIMARY_RULE
    reason: Optional[str] = None


@dataclass(frozen=True)
class MetricValidity:
    """``validity.metrics[name]``: a metric's figures against expert grades (:class:`MeasuredFigures`) or why it has
    none (:class:`NotMeasured`), as one record."""

    measured: bool = False
    signature: Optional[str] = None
    figures: dict[str, dict[str, Any]] = field(default_factory=dict)  # FIGURES -> {"value", "ci_low", "ci_high"}
    robustness: dict[str, dict[str, Any]] = field(default_factory=dict)  # perturbation -> win rate with CI and n
    passes_robustness: bool = False
    n_scored: Optional[int] = None
    n_unscored: Optional[int] = None
    below_floor: Optional[bool] = None  # None where the within-question Spearman is undefined
    reason: Optional[str] = None  # not measured: why
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class RunValidity:
    """``validity`` (2.2; medqa_bench.validity.measured.run_validity), recomputed by ``score``."""

    source: Optional[str] = None  # "bundled" (the package's measured.json) or the --validity file's path
    fingerprint: Optional[str] = None  # sha256 of that file's bytes
    created: Optional[str] = None  # when the file's measurement was made
    medqa_bench_version: Optional[str] = None  # of the measurement
    judged_set: dict[str, Any] = field(default_factory=dict)  # {"name", "fingerprint", "counts"}
    settings: dict[str, Any] = field(default_factory=dict)  # good_threshold, related_grade, n_bootstrap, seed, ...
    floor: ValidityFloor = field(default_factory=ValidityFloor)
    primary: PrimaryMetric = field(default_factory=PrimaryMetric)
    metrics: dict[str, MetricValidity] = field(default_factory=dict)
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class Degeneration:
    """``analysis.degeneration`` (medqa_bench.analysis.degeneration)."""

    stats: dict[str, dict[str, Any]] = field(default_factory=dict)  # system -> stop, truncation, empty, repetition...
    warnings: list[dict[str, Any]] = field(default_factory=list)  # {"code", "system", "value", "threshold", "message"}


@dataclass(frozen=True)
class Judged:
    """One row against another (``analysis.comparisons[a][b]``), or a judged row against its strongest baseline per
    metric (``analysis.paired[a]``, ``analysis.leakage.clean.judged[a]``): the paired statistics by metric
    (medqa_bench.analysis.compare.compare: ``mean_diff``, ``ci_low``, ``ci_high``, ``p_permutation``, ``p_holm``,
    ``better``, ``n``, ``against``, ...)."""

    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    baseline: Optional[str] = None  # paired: the one baseline the adapter's views use
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class CleanSubset:
    """``analysis.leakage.clean``: the items without near-duplicates of training items."""

    n_items: Optional[int] = None
    results: Optional[dict[str, dict[str, Any]]] = None  # system -> metric -> corpus value; None: nothing flagged
    judged: dict[str, Judged] = field(default_factory=dict)  # judged row -> its rows on these items
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class Leakage:
    """``analysis.leakage`` (medqa_bench.analysis.leakage; medqa_bench.data.audit.summarize_audit): the near-duplicates
    of training items and the headline on the items without them."""

    threshold: Optional[float] = None
    definition: Optional[str] = None
    ran: bool = True  # False: there was no training split to compare with
    n_items: Optional[int] = None
    n_near_duplicates: Optional[int] = None
    by: dict[str, int] = field(default_factory=dict)  # "reference" | "question" | "both" -> items flagged
    histogram: dict[str, Any] = field(default_factory=dict)  # {"edges", "reference", "question"}
    note: Optional[str] = None
    items: list[dict[str, Any]] = field(default_factory=list)  # the flagged items, most similar first
    clean: CleanSubset = field(default_factory=CleanSubset)
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class Graded:
    """``analysis.confusion.graded``: each row's items by grade (wrong, partial, correct) and the judged rows' moves."""

    labels: list[str] = field(default_factory=list)  # medqa_bench.analysis.confusion.GRADES
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # system -> grade -> items
    transitions: dict[str, Any] = field(default_factory=dict)  # judged row -> {"baseline", "matrix", ...} or None


@dataclass(frozen=True)
class Confusion:
    """``analysis.confusion`` (medqa_bench.analysis.confusion, on the similarity metric); None without one."""

    metric: Optional[str] = None
    own_vs_other: dict[str, Any] = field(default_factory=dict)  # system -> {"t", "matrix", "f1", "roc", "sweep", ...}
    graded: Graded = field(default_factory=Graded)
    qtype: Optional[dict[str, Any]] = None  # system -> {"matrix", "rows", "columns", "accuracy", "n"}; None: one qtype
    # combined report whose runs calibrated different thresholds: row -> {"run", "t", "t_low", "t_high", "differs"}
    row_thresholds: Optional[dict[str, dict[str, Any]]] = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class LanguageModeling:
    """``analysis.language_modeling``: corpus loss and perplexity of the references per row; None: no NLL scored."""

    systems: dict[str, dict[str, Any]] = field(default_factory=dict)  # row -> {"loss", "perplexity", "n_items", ...}
    changes: dict[str, dict[str, Any]] = field(default_factory=dict)  # judged row -> {"baseline", "loss", "perplexity"}
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class SystemLengths:
    """``analysis.lengths.systems[name]`` (medqa_bench.analysis.lengths): a row's histograms of generated tokens
    (``{"counts", "n", "median", "mean"}``), by grade where the run has a similarity metric."""

    all: Optional[dict[str, Any]] = None
    wrong: Optional[dict[str, Any]] = None
    partial: Optional[dict[str, Any]] = None
    correct: Optional[dict[str, Any]] = None
    reference_of_wrong: Optional[dict[str, Any]] = None
    diff: Optional[dict[str, Any]] = None  # generated − reference tokens
    truncated: dict[str, Any] = field(default_factory=dict)  # {"n", "share", "n_wrong", "share_of_wrong"}
    edges: Optional[list[float]] = None  # combined: its run's bin edges
    diff_edges: Optional[list[float]] = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def histogram(self, grade: str) -> Optional[dict[str, Any]]:
        """The histogram of ``grade``: "all", "wrong", "partial" or "correct"."""
        return {"all": self.all, "wrong": self.wrong, "partial": self.partial, "correct": self.correct}[grade]


@dataclass(frozen=True)
class LengthsRun:
    """``analysis.lengths.runs[label]`` of a combined report: the length facts of each run's own tokenizer."""

    edges: Optional[list[float]] = None
    reference: Optional[dict[str, Any]] = None  # the references' histogram
    max_new_tokens: Optional[int] = None


@dataclass(frozen=True)
class Lengths:
    """``analysis.lengths`` (medqa_bench.analysis.lengths.length_histograms)."""

    edges: Optional[list[float]] = None
    diff_edges: Optional[list[float]] = None
    reference: Optional[dict[str, Any]] = None  # the references' histogram
    systems: dict[str, SystemLengths] = field(default_factory=dict)
    max_new_tokens: Optional[int] = None  # the run's budget (spec.decoding)
    runs: dict[str, LengthsRun] = field(default_factory=dict)  # combined: each run's
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class Analysis:
    """``analysis`` (medqa_bench.analysis.analyze; a combined report's: medqa_bench.analysis.runs.combine_analyses,
    with ``combined`` and each run's own under ``runs``). The blocks of statistics stay objects (``raw`` is the whole
    object as written)."""

    version: Optional[int] = None  # medqa_bench.analysis.ANALYSIS_VERSION
    combined: bool = False
    similarity_metric: Optional[str] = None  # the bounded metric of the confusion and length views; None: none
    bounded_metrics: list[str] = field(default_factory=list)
    thresholds: Optional[dict[str, Any]] = None  # the similarity metric's {"t", "t_low", "t_high", "source", ...}
    match_thresholds: dict[str, dict[str, Any]] = field(default_factory=dict)  # every bounded metric's
    systems: list[str] = field(default_factory=list)  # in run order
    kinds: dict[str, str] = field(default_factory=dict)  # system -> "baseline" | "adapter" | "reference"
    baselines: dict[str, str] = field(default_factory=dict)  # judged row -> the one baseline its views use
    baseline_rows: dict[str, list[str]] = field(default_factory=dict)  # judged row -> the baseline rows of its run
    reference_rows: list[str] = field(default_factory=list)
    seed: Optional[int] = None
    n_bootstrap: Optional[int] = None
    n_items: Optional[int] = None  # the generated items
    n_nll_items: Optional[int] = None  # every item (the NLL metrics'); absent before 2.3
    comparisons: dict[str, dict[str, Judged]] = field(default_factory=dict)  # a -> b -> its statistics
    strongest_baseline: dict[str, dict[str, str]] = field(default_factory=dict)  # judged row -> metric -> baseline
    paired: dict[str, Judged] = field(default_factory=dict)  # judged row -> against its strongest baselines
    confusion: Optional[Confusion] = None  # None: no similarity metric
    language_modeling: Optional[LanguageModeling] = None
    lengths: Lengths = field(default_factory=Lengths)
    degeneration: Degeneration = field(default_factory=Degeneration)
    leakage: Optional[Leakage] = None  # None: no audit
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)  # combined: each run's own analysis (an object)
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class VerdictRow:
    """A judged metric of an adapter's verdict (``improves``, ``regresses``, ``no_difference``; the clean subset's):
    the paired comparison with its strongest baseline on that metric, and what its test can reach
    (medqa_bench.analysis.reach)."""

    metric: Optional[str] = None
    against: Optional[str] = None  # the baseline row
    diff: Optional[float] = None  # mean paired difference
    ci: list[Optional[float]] = field(default_factory=lambda: [None, None])  # its 95% bootstrap CI
    p_holm: Optional[float] = None
    n: Optional[int] = None  # items compared
    reachable: Optional[bool] = None  # False: no Holm p the test can give is below alpha
    p_floor: Optional[float] = None  # the smallest Holm p it can give
    n_differ: Optional[int] = None  # items on which the two rows differ
    why_unreachable: Optional[str] = None
    ci_note: Optional[str] = None  # why a CI excluding 0 and a test that is not significant part
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class PrimaryResult(VerdictRow):
    """``verdict.adapters[name].primary`` (2.2): the adapter's result on the run's primary metric."""

    outcome: Optional[str] = None  # "improves" | "regresses" | "no_difference" | "not_compared"


@dataclass(frozen=True)
class CleanVerdict:
    """``verdict.adapters[name].clean_subset``: the verdict again on the items without near-duplicates."""

    n_items: Optional[int] = None
    improves: list[VerdictRow] = field(default_factory=list)
    regresses: list[VerdictRow] = field(default_factory=list)
    no_difference: list[VerdictRow] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)  # metrics whose outcome differs from the full verdict's
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class AdapterVerdict:
    """``verdict.adapters[name]``: one judged row (an adapter, a ``+rag`` row) against its strongest baselines."""

    strongest_baseline: dict[str, str] = field(default_factory=dict)  # metric -> baseline row
    improves: list[VerdictRow] = field(default_factory=list)
    regresses: list[VerdictRow] = field(default_factory=list)
    no_difference: list[VerdictRow] = field(default_factory=list)
    references: dict[str, dict[str, Any]] = field(default_factory=dict)  # ref row -> {"beats", "worse_than", ...}
    warnings: list[dict[str, Any]] = field(default_factory=list)  # {"code", "message", ...}
    conditions: list[dict[str, Any]] = field(default_factory=list)  # {"code", "message"}
    clean_subset: Optional[CleanVerdict] = None  # None: no near-duplicates, or no audit
    primary: Optional[PrimaryResult] = None  # 2.2: None without a primary metric
    lines: list[str] = field(default_factory=list)
    run: Optional[str] = None  # combined: the run it comes from
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def outcome_rows(self, outcome: str) -> list[VerdictRow]:
        """The rows of ``outcome`` ("improves", "regresses" or "no_difference")."""
        return {"improves": self.improves, "regresses": self.regresses, "no_difference": self.no_difference}[outcome]


@dataclass(frozen=True)
class RunVerdict:
    """``verdict.runs[label]`` of a combined report: what each run's own verdict said of the run as a whole."""

    primary: Optional[PrimaryMetric] = None  # None: no validity recorded


@dataclass(frozen=True)
class Verdict:
    """``verdict`` (medqa_bench.analysis.verdict.build_verdict; a combined report's: analysis.runs.combine_verdicts)."""

    version: Optional[int] = None
    alpha: Optional[float] = None
    correction: Optional[str] = None  # "holm"
    adapters: dict[str, AdapterVerdict] = field(default_factory=dict)
    warnings: list[dict[str, Any]] = field(default_factory=list)  # run-level {"code", "message", ...}
    primary: Optional[dict[str, Any]] = None  # 2.2: validity.primary as the file holds it
    lines: list[str] = field(default_factory=list)  # the sentences the CLI prints and the report opens with
    runs: dict[str, RunVerdict] = field(default_factory=dict)  # combined: each run's
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)


def read_analysis(d: Mapping[str, Any] | Analysis) -> Analysis:
    """The typed record of an ``analysis`` object (as analyze() returns it or results.json holds it)."""
    return read_record(Analysis, d, "analysis")


def read_verdict(d: Mapping[str, Any] | Verdict) -> Verdict:
    """The typed record of a ``verdict`` object (as build_verdict() returns it or results.json holds it)."""
    return read_record(Verdict, d, "verdict")


@dataclass(frozen=True)
class SpecAnalysis:
    """``spec.analysis`` as a run recorded it (medqa_bench.spec.AnalysisSpec): what its analysis was asked for."""

    similarity_metric: Optional[str] = None  # None: the analysis chooses
    thresholds: dict[str, Any] = field(default_factory=dict)  # {"t", "t_low", "t_high"}, flat or under a metric's name
    seed: Optional[int] = None
    n_bootstrap: Optional[int] = None  # not a RunSpec field; read where a hand-written spec sets it
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class SpecDecoding:
    """``spec.decoding`` as a run recorded it (medqa_bench.inference.decoding.DecodingParams), the fields the analysis
    and the verdict read."""

    max_new_tokens: Optional[int] = None
    repetition_penalty: Optional[float] = None  # 1.0: off
    no_repeat_ngram_size: Optional[int] = None  # 0: off
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)


def spec_analysis(spec: Mapping[str, Any]) -> SpecAnalysis:
    """The recorded spec's ``analysis`` as its record (absent or null: the defaults); a wrong type names its key."""
    return read_record(SpecAnalysis, spec.get("analysis") or {}, "spec.analysis")


def spec_decoding(spec: Mapping[str, Any]) -> SpecDecoding:
    """The recorded spec's ``decoding`` as its record (absent or null: the defaults); a wrong type names its key."""
    return read_record(SpecDecoding, spec.get("decoding") or {}, "spec.decoding")


@dataclass(frozen=True)
class Results:
    """``results.json`` (:func:`read_results`). A combined report's results (medqa_bench.report.runs.join_runs) also
    hold ``runs``, ``references_differ``, ``signature_conflicts`` and ``validity_differs``."""

    schema_version: Optional[str] = None
    medqa_bench_version: Optional[str] = None
    created: Optional[str] = None  # ISO 8601, UTC
    run_name: Optional[str] = None
    spec: dict[str, Any] = field(default_factory=dict)  # spec.RunSpec.to_dict()
    environment: dict[str, Any] = field(default_factory=dict)  # versions, python, platform, git_commit, hardware
    model: dict[str, Any] = field(default_factory=dict)  # the first entry of models
    models: dict[str, dict[str, Any]] = field(default_factory=dict)  # 2.1: the backend's describe()
    systems: dict[str, SystemInfo] = field(default_factory=dict)
    budget: Optional[Budget] = None  # budget.auto_max_new_tokens() or given_budget()
    loss_definition: dict[str, Any] = field(default_factory=dict)  # this run's loss (form, EOS, truncation, ...)
    data: DataRecord = field(default_factory=DataRecord)
    cache: dict[str, Any] = field(default_factory=dict)  # {"hits", "misses", "path"}
    metrics: dict[str, MetricInfo] = field(default_factory=dict)
    results: dict[str, dict[str, MetricValue]] = field(default_factory=dict)  # system -> metric -> value with CI
    validity: Optional[RunValidity] = None  # 2.2: None for a run folder written before validity was recorded
    analysis: Optional[Analysis] = None  # analysis.analyze(); None: not analysed
    verdict: Optional[Verdict] = None  # analysis.verdict.build_verdict(); None: not judged
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    runs: dict[str, RunFacts] = field(default_factory=dict)  # combined: each run's facts
    references_differ: dict[str, int] = field(default_factory=dict)  # combined: runs whose references differ
    signature_conflicts: list[str] = field(default_factory=list)  # combined: metrics of several signatures
    validity_differs: bool = False  # combined: the runs record different validity figures
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def primary_metric(self) -> Optional[str]:
        """The run's primary metric (``validity.primary.metric``); None without one or without validity."""
        return self.validity.primary.metric if self.validity else None

    def value(self, system: str, metric: str) -> Optional[float]:
        """``results[system][metric].value``; None where the row or the metric has none."""
        v = self.results.get(system, {}).get(metric)
        return v.value if v else None

    def system(self, name: str) -> SystemInfo:
        """``systems[name]``, or an empty record for a name the run does not declare."""
        return self.systems.get(name) or SystemInfo()


def read_results(d: Mapping[str, Any] | Results) -> Results:
    """The typed record of a results.json object (any 2.x minor version; fields it lacks hold their defaults).

    A value of the wrong type raises :class:`medqa_bench.errors.RunError` naming its dotted key; keys this package
    does not declare are kept in ``raw``. A :class:`Results` is returned as it is.

    >>> read_results({"schema_version": "2.0", "metrics": {"loss": {"kind": "nll"}}}).metrics["loss"].items
    'all'
    >>> read_results({"systems": {"b": {"kind": 3}}})
    Traceback (most recent call last):
    ...
    medqa_bench.errors.RunError: results.json: 'systems.b.kind' is int 3, not str; the run folder is damaged: re-run the evaluation or restore it
    """
    if isinstance(d, Results):
        return d
    return _read_record(Results, d, "")


def read_record(cls: type, d: Mapping[str, Any], where: str) -> Any:
    """One record of results.json (``cls``, e.g. :class:`MetricInfo`) read from its object at the dotted key
    ``where``, as :func:`read_results` reads it; a record of ``cls`` is returned as it is."""
    return d if isinstance(d, cls) else _read_record(cls, d, where)


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _wrong(where: str, value: Any, expected: str) -> RunError:
    shown = repr(value) if isinstance(value, (int, float, str, bool)) and len(repr(value)) <= 40 else "…"
    return RunError(f"results.json: '{where}' is {_kind(value)} {shown}, not {expected}; the run folder is damaged: "
                    "re-run the evaluation or restore it")


_SCALARS = {str: (str,), bool: (bool,), int: (int,), float: (int, float)}


def _read_value(value: Any, hint: Any, where: str) -> Any:
    """``value`` checked against the type ``hint`` of its declaration (records read as records)."""
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:
        return value
    if origin is Union or origin is UnionType:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _read_value(value, inner[0], where)  # declared unions are Optional[X]
    if is_dataclass(hint):  # a null record in a mapping (a row's info) reads as an empty one
        return _read_record(hint, {} if value is None else value, where)
    if is_typeddict(hint) or hint is dict or origin in (dict, Mapping):
        if value is None:  # a null object in a mapping (a row's results) reads as an empty one
            return {}
        if not isinstance(value, dict):
            raise _wrong(where, value, "an object")
        if len(args) == 2 and args[1] is not Any:
            return {k: _read_value(v, args[1], f"{where}.{k}") for k, v in value.items()}
        return value
    if hint is list or origin is list:
        if not isinstance(value, list):
            raise _wrong(where, value, "a list")
        if args and args[0] is not Any:
            read = [_read_value(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
            if is_dataclass(args[0]):  # a list of records (a verdict's judged rows) reads as records
                return read
        return value
    accepted = _SCALARS.get(hint)
    if accepted is not None:
        if isinstance(value, bool) and hint is not bool or not isinstance(value, accepted):
            raise _wrong(where, value, hint.__name__)
        return value
    raise TypeError(f"schema: no reader for {hint!r} ({where})")


def _read_record(cls: type, d: Any, where: str):
    if not isinstance(d, dict):
        raise _wrong(where or "results", d, "an object")
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        if f.name == "raw":
            continue
        value = d.get(f.name)
        if value is None:  # absent, or null: the default (a null where a record is declared reads as absent)
            continue
        kwargs[f.name] = _read_value(value, hints[f.name], f"{where}.{f.name}" if where else f.name)
    if "raw" in hints:
        kwargs["raw"] = d
    return cls(**kwargs)


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = get_type_hints(cls)
    return _HINTS[cls]
