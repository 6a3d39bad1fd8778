"""medqa-bench: evaluation-centric benchmarking for medical question answering.

Nothing heavy is imported here: ``import medqa_bench`` and ``medqa-bench --help`` stay fast.
The public Python API lives in :mod:`medqa_bench.api`.
"""

__version__ = "0.1.0"

# Bumped whenever a change to inference code could change a cached generation or NLL (2: 4-bit layers on a CPU
# compute in the requested dtype, not bitsandbytes' bf16 kernel; 3: stop sequences and stop reasons; 4: a 4-bit base
# keeps its dequantised weights, so single-row decoding no longer takes bitsandbytes' gemv kernel).
CODE_VERSION = "inference-4"
