"""A training recipe: one frozen, serialisable description of a QLoRA run, read from commented YAML.

A recipe is a bundled name (``smollm2-135m-symptoms``, a file in ``trainers/recipes/``) or a path to a YAML
file, plus ``key=value`` overrides with dotted keys whose values are parsed as YAML::

    >>> r = load_recipe("smollm2-135m-symptoms", ["lora.r=32", "training.max_steps=10"])  # doctest: +SKIP
    >>> r.lora.r, r.training.max_steps                                                    # doctest: +SKIP
    (32, 10)

Every key is checked against the dataclasses below (by :mod:`medqa_bench.typed`, the run spec's coercion too): an
unknown key answers "did you mean …", a value of the wrong type or out of range names the key, the value and what is
allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from medqa_bench import typed
from medqa_bench.data.dataset import PROMPT_FORMATS, ColumnMap, DataSpec, SplitOptions
from medqa_bench.errors import SpecError

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
DEVICES = ("auto", "cpu", "cuda")
QUANTIZATIONS = ("4bit", "none")
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial")
KERNELS = ("none", "liger")
OPTIMIZERS = ("adamw_torch", "adamw_torch_fused", "paged_adamw_8bit", "paged_adamw_32bit", "adamw_8bit", "sgd")


@dataclass(frozen=True)
class ModelSection:
    reference: str = "smollm2-135m-instruct"  # alias, checkpoint folder, .gguf file or Hub id
    quantization: str = "4bit"  # "4bit" (NF4, double quantization: QLoRA) or "none"


@dataclass(frozen=True)
class LoraSection:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")


@dataclass(frozen=True)
class SplitSection:
    seed: int = 42
    strategy: str = "grouped"
    ratios: tuple[float, ...] = (0.8, 0.1, 0.1)


# The recipe's `data.columns` section is the data module's own column mapping: one definition, two users.
ColumnsSection = ColumnMap


@dataclass(frozen=True)
class LimitSection:
    train: Optional[int] = None  # cap on training items, drawn with the recipe's seed; None: all
    validation: Optional[int] = None


@dataclass(frozen=True)
class DataSection:
    path: Optional[str] = None  # None: the bundled MedQuAD
    qtype: str = "symptoms"
    prompt_format: str = "reference"
    max_length: int = 512
    manifest: Optional[str] = None
    split: SplitSection = SplitSection()
    columns: ColumnsSection = ColumnsSection()
    limit: LimitSection = LimitSection()

    def spec(self) -> DataSpec:
        """The :class:`~medqa_bench.data.DataSpec` the evaluation harness builds from the same options."""
        return DataSpec(
            path=self.path,
            qtype=self.qtype,
            columns=self.columns,
            split=SplitOptions(seed=self.split.seed, strategy=self.split.strategy, ratios=tuple(self.split.ratios)),
            manifest=self.manifest,
        )


@dataclass(frozen=True)
class TrainingSection:
    epochs: float = 5
    max_steps: Optional[int] = None  # overrides epochs when set
    batch_size: int = 4
    eval_batch_size: Optional[int] = None  # None: batch_size
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-4
    lr_scheduler: str = "linear"
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    optimizer: str = "adamw_torch"
    gradient_checkpointing: bool = True
    group_by_length: bool = False  # batches of similar lengths: little padding, same samples per epoch
    padding_free: bool = False  # each batch packed into one row, attention per sequence: no padding computed
    pad_to_multiple_of: Optional[int] = None  # pad each batch's length up to a multiple: fewer distinct shapes
    compile: bool = False  # torch.compile each decoder layer: fused element-wise kernels, fewer launches
    cache_dequantized: bool = False  # keep the 4-bit base's dequantised weights: same values, 2 bytes/weight more
    logits_once: bool = False  # the loss's LM head projected once a step (gradient in the forward pass), not thrice
    kernels: str = "none"  # "liger": fused Triton kernels (RMSNorm, RoPE, SwiGLU) from liger-kernel, CUDA, no compile
    precision: str = "auto"
    device: str = "auto"
    logging_steps: int = 10
    report_to: tuple[str, ...] = ()  # tensorboard, wandb (offline), mlflow: trackers that also get the logged metrics
    save_steps: Optional[int] = None  # None: a checkpoint at the end of each epoch
    save_total_limit: int = 2


@dataclass(frozen=True)
class OutputSection:
    name: Optional[str] = None  # None: the recipe's name
    dir: str = "adapters"  # relative to the working directory


@dataclass(frozen=True)
class Recipe:
    name: str
    seed: int = 42
    model: ModelSection = ModelSection()
    lora: LoraSection = LoraSection()
    data: DataSection = DataSection()
    training: TrainingSection = TrainingSection()
    output: OutputSection = OutputSection()
    source: Optional[str] = field(default=None, compare=False)  # the file it was read from

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("source")
        return _jsonable(d)

    @property
    def output_name(self) -> str:
        return self.output.name or self.name

    def default_output(self) -> Path:
        return Path(self.output.dir) / self.output_name


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


# --------------------------------------------------------------------------------------------- loading


def bundled_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def _find_recipe(recipe: str | os.PathLike) -> Path:
    path = Path(recipe).expanduser()
    if path.is_file():
        return path
    name = str(recipe)
    if (RECIPES_DIR / f"{name}.yaml").is_file():
        return RECIPES_DIR / f"{name}.yaml"
    names = bundled_recipes()
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise SpecError(f"recipe '{name}' is neither a file nor a bundled recipe; {hint}bundled recipes: {', '.join(names)}")


def load_recipe(recipe: str | os.PathLike, overrides: Sequence[str] = ()) -> Recipe:
    """Read a recipe (a bundled name or a YAML path) and apply ``key=value`` overrides (dotted keys, YAML values).

    >>> load_recipe("smollm2-135m-symptoms", ["training.max_steps=4"]).training.max_steps  # doctest: +SKIP
    4
    """
    import yaml

    path = _find_recipe(recipe)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise SpecError(f"recipe {path} is not valid YAML: {exc}".replace("\n", " ")) from None
    if not isinstance(raw, dict):
        raise SpecError(f"recipe {path} must be a mapping of keys to values, not {type(raw).__name__}")
    raw.setdefault("name", path.stem)
    for item in overrides:
        _apply_override(raw, item)
    built = typed.build(Recipe, raw, doc="recipe", exclude=("source",))
    recipe_obj = dataclasses.replace(built, source=str(path))
    validate(recipe_obj)
    return recipe_obj


def _apply_override(raw: dict[str, Any], item: str) -> None:
    import yaml

    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise SpecError(f"override '{item}' must look like key=value, e.g. lora.r=32 or training.max_steps=10")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise SpecError(f"override '{item}': '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def _choice(key: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise SpecError(f"recipe key '{key}' is '{value}'; choose one of: {', '.join(allowed)}")


def validate(recipe: Recipe) -> None:
    """Range and choice checks that the types alone do not express."""
    t, lora, data = recipe.training, recipe.lora, recipe.data
    _choice("model.quantization", recipe.model.quantization, QUANTIZATIONS)
    _choice("training.precision", t.precision, PRECISIONS)
    _choice("training.device", t.device, DEVICES)
    _choice("training.lr_scheduler", t.lr_scheduler, SCHEDULERS)
    _choice("training.optimizer", t.optimizer, OPTIMIZERS)
    _choice("training.kernels", t.kernels, KERNELS)
    _choice("data.prompt_format", data.prompt_format, PROMPT_FORMATS)
    _choice("data.split.strategy", data.split.strategy, ("grouped", "random", "grouped-by-qtype"))
    positive = {
        "lora.r": lora.r,
        "lora.alpha": lora.alpha,
        "data.max_length": data.max_length,
        "training.batch_size": t.batch_size,
        "training.gradient_accumulation_steps": t.gradient_accumulation_steps,
        "training.learning_rate": t.learning_rate,
        "training.logging_steps": t.logging_steps,
        "training.epochs": t.epochs,
        "training.save_total_limit": t.save_total_limit,
    }
    for optional in ("max_steps", "save_steps", "eval_batch_size", "pad_to_multiple_of"):
        if getattr(t, optional) is not None:
            positive[f"training.{optional}"] = getattr(t, optional)
    for split in ("train", "validation"):
        if getattr(data.limit, split) is not None:
            positive[f"data.limit.{split}"] = getattr(data.limit, split)
    for key, value in positive.items():
        if not value > 0:
            raise SpecError(f"recipe key '{key}' must be greater than 0, not {value}")
    if t.cache_dequantized and recipe.model.quantization != "4bit":
        raise SpecError("recipe key 'training.cache_dequantized' needs model.quantization=4bit: there is nothing to dequantise")
    if t.padding_free and t.pad_to_multiple_of is not None:
        raise SpecError(
            "recipe keys 'training.padding_free' and 'training.pad_to_multiple_of' exclude each other: a padding-free "
            "batch has no padding to round up; drop pad_to_multiple_of"
        )
    if t.compile and t.kernels == "liger":
        raise SpecError(
            "recipe keys 'training.compile' and 'training.kernels=liger' exclude each other: torch.compile cannot trace "
            "Liger's kernels (it fails in the first step); keep compile, which fuses the same element-wise work"
        )
    if not 0 <= lora.dropout < 1:
        raise SpecError(f"recipe key 'lora.dropout' must be in [0, 1), not {lora.dropout}")
    if not 0 <= t.warmup_ratio < 1:
        raise SpecError(f"recipe key 'training.warmup_ratio' must be in [0, 1), not {t.warmup_ratio}")
    if not lora.target_modules:
        raise SpecError("recipe key 'lora.target_modules' is empty; name at least one module, e.g. [q_proj, v_proj]")
    if not recipe.name or "/" in recipe.name or recipe.name.startswith("."):
        raise SpecError(f"recipe name '{recipe.name}' must be a plain folder name")
    if recipe.output.name is not None and ("/" in recipe.output.name or recipe.output.name.startswith(".")):
        raise SpecError(f"recipe key 'output.name' must be a plain folder name, not '{recipe.output.name}'")
    try:
        data.spec()
    except Exception as exc:  # DataError from SplitOptions: a recipe problem here
        raise SpecError(f"recipe section 'data.split': {exc}") from None
