"""The run is data: a frozen, serialisable :class:`RunSpec` drives everything and is written into results.json.

A spec comes from a YAML or TOML file and/or keyword overrides (the CLI's flags), flags winning::

    spec = RunSpec.from_file("run.yaml", limit=50)
    spec = RunSpec(adapters=(("ft", "adapters/smollm2"),), limit=20)

Example file (YAML)::

    name: smollm2-symptoms
    model: smollm2-135m-instruct
    backend: transformers
    adapters: {ft: adapters/smollm2-135m-symptoms}
    data: {qtype: symptoms, split: {seed: 42, strategy: grouped}}
    split: test
    limit: 100
    decoding: {max_new_tokens: 256}
    metrics: [perplexity, rougeL, embedding_similarity]
    metric_params: {embedding_similarity: {model: /models/all-MiniLM-L6-v2}}
    validity: reports/validity/mine/validity.json   # default: the bundled measurement

Every value is checked by type when the spec is made (from a file, a dict or keyword arguments: one coercion,
:mod:`medqa_bench.typed`, shared with the training recipes), and the checks that need no model (ranges, choices, the
run name) run then too, so a bad value fails in a second with its dotted key::

    >>> RunSpec.from_dict({"decoding": {"max_new_tokens": "lots"}})
    Traceback (most recent call last):
    medqa_bench.errors.SpecError: run spec key 'decoding.max_new_tokens' must be an integer, not 'lots'
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import typed
from .data.dataset import PROMPT_FORMATS, SPLITS, DataSpec
from .errors import SpecError
from .inference.decoding import DecodingParams
from .inference.models import DEFAULT_MODEL

#: Items evaluated by default on a CPU, so a first run ends in minutes; ``limit: 0`` evaluates the full split. A CPU
#: evaluates fewer items rather than cutting answers short: the budget is the same as on a GPU.
CPU_DEFAULT_LIMIT = 5
#: Items the NLL metrics (loss, perplexity) score by default on a CPU: the 5 generated items and 15 more of the split.
#: One forward pass an item, where an answer takes up to 907 decoding steps: the default run on 2 shared CPU cores
#: (load 2-3) spent 105 s on the NLL of 20 items for the baseline and the shipped adapter, about 80 s more than for 5,
#: beside 271 s generating the 5 answers. No paired test on 5 items can reach p < 0.05 (its smallest p is 2/2^5 =
#: 0.0625); on 20 it can (2/2^20), and there the adapter's loss and perplexity gains reach Holm p = 0.001.
CPU_DEFAULT_NLL_LIMIT = 20
#: How spec errors name the document: "run spec key 'decoding.max_new_tokens' must be an integer, not 'lots'".
DOC = "run spec"
#: Devices a run can be given; ``cuda:N`` names one GPU.
DEVICE_PATTERN = r"auto|cpu|mps|cuda(:\d+)?"
DTYPES = ("auto", "float32", "bfloat16", "float16")
THRESHOLD_KEYS = ("t", "t_low", "t_high")
# Keys a file may give as one comma-separated string, as on the command line ("chat,reference"); "none" is dropped.
_COMMA_LISTS = ("metrics", "plugins", "baseline_formats", "reference_rows")


@dataclass(frozen=True)
class AnalysisSpec:
    similarity_metric: str | None = None  # None: embedding_similarity when scored, else the first bounded metric
    thresholds: dict[str, Any] = field(default_factory=dict)  # {"t": .., "t_low": .., "t_high": ..} per metric or flat
    seed: int = 0


@dataclass(frozen=True)
class RunSpec:
    """Everything a run depends on. ``limit=None`` means "auto": the full split on GPU, a sample on CPU."""

    name: str | None = None
    model: str = DEFAULT_MODEL
    backend: str = "transformers"  # what answers: a name of medqa_bench.inference.backends (checked when a run starts)
    # the backend's own options, as it declares them (medqa_bench.inference.backends.options), defaults filled in: for openai
    # base_url, served_model, concurrency, request_timeout, retries; older specs held those at the top level
    backend_options: dict[str, Any] = field(default_factory=dict)
    adapters: tuple[tuple[str, str], ...] = ()
    default_adapters: bool = True  # with no adapters given, compare the default model with its shipped adapter
    data: DataSpec = DataSpec()
    # None: "test", or "all" (the evaluated file used whole) when the run has a training corpus of its own
    split: str | None = None
    # The training corpus that reference rows, the leakage audit and +rag passages draw from (--train-data); None: the
    # adapters' recorded training data when the evaluated data is another file, else the evaluated data's train
    # split (medqa_bench.data.training_corpus)
    train_data: DataSpec | None = None
    train_split: str = "all"  # which split of train_data is the corpus: all (every item of it), train, ...
    limit: int | None = None
    # items the NLL metrics score: a seeded sample holding the `limit` items (0: the full split); None: the `limit`
    # items, or on a CPU with no limit given CPU_DEFAULT_NLL_LIMIT (generation then on CPU_DEFAULT_LIMIT of them)
    nll_limit: int | None = None
    sample_seed: int = 0
    prompt_format: str | None = None  # None: every system in its own format; else this format for every LM system
    baseline_formats: tuple[str, ...] | None = None  # None: the chat template when the model has one, else reference
    reference_rows: tuple[str, ...] | None = None  # None: retrieval, boilerplate, question; (): none
    rag: str | None = None  # "bm25:k=3" or "dense:k=3": a +rag row of every LM row (medqa_bench.data.rag); None: none
    decoding: DecodingParams | None = None  # None: defaults with the automatic budget (see medqa_bench.planning.budget)
    batch_size: int | str = "auto"
    device: str = "auto"
    dtype: str = "auto"
    quantization: str | None = None  # None: baseline rows unquantized, each adapter on the base it was trained on
    max_length: int | None = None  # context for NLL scoring (sliding window beyond it); None: the model's
    metrics: tuple[str, ...] | None = None  # None: medqa_bench.metrics.DEFAULT_METRICS
    metric_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    plugins: tuple[str, ...] = ()
    analysis: AnalysisSpec = AnalysisSpec()
    # a validity.json (`metrics validate`) whose figures results.json records beside each metric and the verdict
    # reads; None (or "bundled"): the bundled measurement (medqa_bench.validity.measured)
    validity: str | None = None
    output_dir: str | None = None  # default reports/<name>
    cache: str | None = "default"  # "default": the user cache; None: no cache; else a path
    report: bool = True
    seed: int = 0
    overwrite: bool = False  # replace a run folder that holds a different run (see medqa_bench.storage.run_folder)

    def __post_init__(self):
        # One coercion for a file, a dict and keyword arguments, so the Python API takes what a spec file takes: a
        # mapping for data, decoding or analysis, a mapping of adapters, a list or "a,b" for a list of names.
        for key, tp in typed.field_types(RunSpec).items():
            given = getattr(self, key)
            value = typed.coerce(tp, _plain_value(key, given), key, doc=DOC)
            if value is not given:
                object.__setattr__(self, key, value)
        self._check_values()

    def _check_values(self) -> None:
        """Ranges and choices: everything about a spec that can be wrong without data or a model."""
        if self.name is not None and (not self.name or self.name in (".", "..") or self.name.startswith(".")
                                      or any(c in self.name for c in "/\\\0")):
            raise SpecError(f"run name {self.name!r} must be a plain folder name (no '/' or '\\', not starting with "
                            "'.'): the run folder is reports/<name>; use --out DIR to write elsewhere")
        if not self.backend.strip():
            raise SpecError("backend must name an inference backend, e.g. transformers (the default)")
        _check_backend(self)
        if self.split is not None and self.split not in (*SPLITS, "all"):
            raise SpecError(f"split must be one of {', '.join(SPLITS)}, all; not '{self.split}'")
        if self.train_split not in (*SPLITS, "all"):
            raise SpecError(f"train_split must be one of {', '.join(SPLITS)}, all; not '{self.train_split}'")
        if not re.fullmatch(DEVICE_PATTERN, self.device):
            raise SpecError(f"device must be auto, cpu, cuda, cuda:N or mps, not '{self.device}'")
        if self.dtype not in DTYPES:
            raise SpecError(f"dtype must be one of {', '.join(DTYPES)}, not '{self.dtype}'")
        if self.max_length is not None and self.max_length < 1:
            raise SpecError(f"max_length must be a positive number of tokens, not {self.max_length}")
        if self.max_length == 1:  # inference.MIN_WINDOW, checked again where the window is cut
            raise SpecError("max_length (--max-length) is 1 token: a token is scored from the tokens before it in its "
                            "window, so a window of 1 scores nothing; give at least 2, or leave it unset for the "
                            "model's context length")
        if self.decoding is not None:
            d = self.decoding
            if d.repetition_penalty <= 0:
                raise SpecError(f"decoding.repetition_penalty must be greater than 0 (1.0 = off), not {d.repetition_penalty}")
            if d.no_repeat_ngram_size < 0:
                raise SpecError(f"decoding.no_repeat_ngram_size must be >= 0 (0 = off), not {d.no_repeat_ngram_size}")
        _check_thresholds(self.analysis.thresholds)
        if self.validity is not None and not self.validity.strip():
            raise SpecError("validity must name a validity.json (from `medqa-bench metrics validate`) or 'bundled', "
                            "not an empty string")
        if self.prompt_format is not None and self.prompt_format not in PROMPT_FORMATS:
            raise SpecError(f"prompt_format must be one of {', '.join(PROMPT_FORMATS)}, not '{self.prompt_format}'")
        for fmt in self.baseline_formats or ():
            if fmt not in PROMPT_FORMATS:
                raise SpecError(f"baseline_formats: '{fmt}' is not a prompt format; choose from {', '.join(PROMPT_FORMATS)}")
        if self.reference_rows:
            from .data.reference_rows import REFERENCE_ROWS

            for row in self.reference_rows:
                if row not in REFERENCE_ROWS:
                    near = difflib.get_close_matches(row, REFERENCE_ROWS, n=1)
                    raise SpecError(f"reference_rows: unknown row '{row}'" + (f"; did you mean '{near[0]}'?" if near else "")
                                    + f"; rows are: {', '.join(REFERENCE_ROWS)} (or none)")
        if self.decoding is not None and self.decoding.max_new_tokens is not None and self.decoding.max_new_tokens < 1:
            raise SpecError(f"max_new_tokens must be a positive number of tokens, not {self.decoding.max_new_tokens}")
        if self.rag is not None:
            from .data.rag import RagSpec

            RagSpec.parse(self.rag)  # raises SpecError naming what is wrong
        if self.quantization is not None and self.quantization not in ("none", "4bit"):
            raise SpecError(f"quantization must be '4bit' or 'none', not '{self.quantization}'")
        if not (self.batch_size == "auto" or (isinstance(self.batch_size, int) and self.batch_size > 0)):
            raise SpecError(f"batch_size must be 'auto' or a positive integer, not {self.batch_size!r}")
        if self.limit is not None and self.limit < 0:
            raise SpecError(f"limit must be >= 0 (0 = the full split), not {self.limit}")
        if self.nll_limit is not None and self.nll_limit < 0:
            raise SpecError(f"nll_limit must be >= 0 (0 = the full split), not {self.nll_limit}")
        if (self.nll_limit and self.limit is not None
                and (self.limit == 0 or self.nll_limit < self.limit)):
            raise SpecError(f"nll_limit ({self.nll_limit}) must not be below limit ({self.limit or 'the full split'}): "
                            "the NLL metrics score every generated item and possibly more")
        names = [n for n, _ in self.adapters]
        if len(set(names)) != len(names):
            raise SpecError(f"adapter names must be unique: {names}")
        for n in names:
            if n == "baseline" or not re.fullmatch(r"[A-Za-z0-9][\w.\-]*", n):
                raise SpecError(f"adapter name '{n}' is invalid: use letters, digits, '.', '_', '-' and not 'baseline'")

    # ------------------------------------------------------------------ serialisation

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["adapters"] = {n: p for n, p in self.adapters}
        d["data"] = self.data.to_dict()
        d["train_data"] = self.train_data.to_dict() if self.train_data is not None else None
        d["decoding"] = self.decoding.to_dict() if self.decoding else None
        d["metrics"] = list(self.metrics) if self.metrics is not None else None
        for key in ("baseline_formats", "reference_rows"):
            d[key] = list(d[key]) if d[key] is not None else None
        d["plugins"] = list(self.plugins)
        d["analysis"] = dataclasses.asdict(self.analysis)
        d["backend_options"] = dict(self.backend_options)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunSpec":
        """A spec from plain data (a parsed file, results.json's ``spec``): unknown keys answer "did you mean …",
        values are coerced and checked by :meth:`__post_init__`."""
        if not isinstance(d, dict):
            raise SpecError(f"a {DOC} is a mapping of keys to values, not {typed.show(d)}")
        from .inference.backends.options import from_legacy

        d = from_legacy(d)  # base_url, served_model, ... at the top level: a spec from before backend_options
        typed.check_keys(d, typed.field_types(cls), doc=DOC)
        for key in ("data", "backend_options"):
            if d.get(key) is None:  # `data:` left empty in a file: the defaults
                d.pop(key, None)
        return cls(**d)

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> "RunSpec":
        """Read a YAML (``.yaml``/``.yml``) or TOML (``.toml``) spec; keyword overrides win over the file."""
        path = Path(path)
        if not path.is_file():
            raise SpecError(f"run spec file {path} does not exist")
        text = path.read_text(encoding="utf-8")
        try:
            if path.suffix == ".toml":
                import tomllib

                d = tomllib.loads(text)
            elif path.suffix in (".yaml", ".yml", ".json"):
                import yaml

                d = yaml.safe_load(text) or {}
            else:
                raise SpecError(f"{path}: a run spec is .yaml, .yml or .toml")
        except SpecError:
            raise
        except Exception as exc:  # noqa: BLE001 - yaml/toml parser errors
            raise SpecError(f"{path}: cannot parse: {str(exc).splitlines()[0]}") from None
        if not isinstance(d, dict):
            raise SpecError(f"{path}: a run spec is a mapping of keys to values")
        try:
            base = cls.from_dict(d)
        except SpecError as exc:
            raise SpecError(f"{path}: {exc}") from None
        return base.replace(**overrides) if overrides else base

    def replace(self, **changes: Any) -> "RunSpec":
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ derived

    @property
    def run_name(self) -> str:
        if self.name:
            return self.name
        model = Path(self.model).name if "/" in self.model or "\\" in self.model else self.model
        return f"{model}-{(self.data.qtype or 'all').replace(',', '+')}-{self.evaluated_split}".replace(" ", "_")

    @property
    def evaluated_split(self) -> str:
        """The split evaluated: ``split``, or by default the whole file when a training corpus is named, else test
        (a run names the adapters' training data in ``train_data`` before it starts, so the name says it too)."""
        if self.split is not None:
            return self.split
        return "all" if self.train_data is not None else "test"

    @property
    def output_path(self) -> Path:
        return Path(self.output_dir) if self.output_dir else Path("reports") / self.run_name

    def resolved_for(self, device: str) -> "RunSpec":
        """Fill the "auto" fields that depend on the device, so results.json records what really ran."""
        changes: dict[str, Any] = {}
        cpu = not device.startswith("cuda")
        if self.limit is None:
            changes["limit"] = CPU_DEFAULT_LIMIT if cpu else 0
            if self.nll_limit is None:
                changes["nll_limit"] = CPU_DEFAULT_NLL_LIMIT if cpu else 0
        elif self.nll_limit is None:
            changes["nll_limit"] = self.limit
        if self.decoding is None:
            changes["decoding"] = DecodingParams()  # max_new_tokens None: the runner sets the automatic budget
        return self.replace(**changes) if changes else self

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)


def _plain_value(key: str, value: Any) -> Any:
    """The shapes a file may use for a field before type coercion: a mapping of adapters, "a,b" for a list."""
    if key == "adapters":
        if isinstance(value, dict):
            return tuple(value.items())
        if isinstance(value, (list, tuple)) and not all(isinstance(x, (list, tuple)) and len(x) == 2 for x in value):
            raise SpecError(f"{DOC} key 'adapters' maps names to adapter folders, e.g. {{ft: adapters/my-adapter}}; "
                            f"not {typed.show(value)}")
    if key in _COMMA_LISTS and isinstance(value, str):
        return tuple(x.strip() for x in value.split(",") if x.strip() and x.strip() != "none")
    return value


def _check_backend(spec: "RunSpec") -> None:
    """``backend_options`` checked against the backend's declaration and completed with its defaults, then what else
    the backend refuses of the spec (its ``check_spec``). A backend no one registered is refused when a run starts
    ("did you mean …"), unless options are given for it: they cannot be checked."""
    from .inference.backends import backend_class, backend_registry
    from .inference.backends.options import resolve_options

    if spec.backend not in backend_registry() and not spec.backend_options:
        return
    object.__setattr__(spec, "backend_options", resolve_options(spec.backend, spec.backend_options))
    check = getattr(backend_class(spec.backend), "check_spec", None)
    if check is not None:
        check(spec)


def _check_thresholds(thresholds: dict[str, Any]) -> None:
    """``analysis.thresholds``: ``t``, ``t_low``, ``t_high`` in [0, 1] with ``t_low <= t_high``, flat or under a
    metric's name (the analysis checks them again against the calibrated values)."""
    groups = {"": {k: v for k, v in thresholds.items() if not isinstance(v, dict)}}
    groups.update({f"{m}.": v for m, v in thresholds.items() if isinstance(v, dict)})
    for prefix, group in groups.items():
        for k, v in group.items():
            key = f"analysis.thresholds.{prefix}{k}"
            if k not in THRESHOLD_KEYS:
                raise SpecError(f"{key}: not a threshold; thresholds are {', '.join(THRESHOLD_KEYS)} (flat, or under "
                                "a metric's name)")
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
                raise SpecError(f"{key} must be a number in [0, 1], not {typed.show(v)}")
        if group.get("t_low", 0) > group.get("t_high", 1):
            raise SpecError(f"analysis.thresholds.{prefix}t_low ({group['t_low']}) must not exceed t_high ({group['t_high']})")
