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
