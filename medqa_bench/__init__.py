"""medqa-bench: evaluation-centric benchmarking for medical question answering.

Nothing heavy is imported here: ``import medqa_bench`` and ``medqa-bench --help`` stay fast.
The public Python API lives in :mod:`medqa_bench.api`.
"""

__version__ = "0.1.0"

# Bumped whenever a change to inference code could change a cached generation or NLL (2: 4-bit layers on a CPU
# compute in the requested dtype, not bitsandbytes' bf16 kernel; 3: stop sequences and stop reasons; 4: a 4-bit base
# keeps its dequantised weights, so single-row decoding no longer takes bitsandbytes' gemv kernel).
CODE_VERSION = "inference-4"


def _drop_optional_kernel_notice() -> None:
    """bitsandbytes logs at import, on CPUs with AVX512-BF16, that the optional ``kernels`` package is missing. The
    4-bit layers never take that kernel here (models.keep_4bit_layout), so the line says nothing useful to a user of
    the CLI or the Python API: a filter on that one logger drops that one message, and every other stays."""
    import logging

    def keep(record: logging.LogRecord) -> bool:
        return "gemm_4bit_forward" not in str(record.msg)

    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(keep)


_drop_optional_kernel_notice()

#: Where each module was before the package was grouped into stages (data, planning, inference, storage): the old
#: dotted names keep importing, as the same module objects (so a monkeypatch of one is a patch of the other).
MOVED = {
    **{f"medqa_bench.{m}": f"medqa_bench.storage.{m}"
       for m in ("atomic", "cache", "run_folder", "fingerprint", "jsonl", "paths", "provenance")},
    **{f"medqa_bench.{m}": f"medqa_bench.data.{m}"
       for m in ("medquad", "readers", "fetch", "items", "training_corpus", "reference_rows", "audit", "rag",
                 "retrieval", "encoders", "adapter_meta")},
    **{f"medqa_bench.{m}": f"medqa_bench.inference.{m}"
       for m in ("models", "weight_files", "generation", "loss", "distributed", "systems", "rows", "backends")},
    "medqa_bench.budget": "medqa_bench.planning.budget",
}


class _MovedModules:
    """A meta-path finder: ``import medqa_bench.models`` gives ``medqa_bench.inference.models`` (see :data:`MOVED`);
    submodules of a moved package too (``medqa_bench.backends.openai``)."""

    @staticmethod
    def _target(name: str) -> str | None:
        for old, new in MOVED.items():
            if name == old or name.startswith(old + "."):
                return new + name[len(old):]
        return None

    def find_spec(self, name, path=None, target=None):
        new = self._target(name)
        if new is None:
            return None
        import importlib.util

        return importlib.util.spec_from_loader(name, _MovedLoader(new))


class _MovedLoader:
    def __init__(self, new: str):
        self.new = new

    def create_module(self, spec):
        import importlib

        return importlib.import_module(self.new)

    def exec_module(self, module):
        pass


def _install_moved_modules() -> None:
    import sys

    if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
        sys.meta_path.insert(0, _MovedModules())


_install_moved_modules()
