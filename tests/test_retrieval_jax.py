"""bm25s runs a JAX top-k when it is imported and JAX is installed. On a CUDA machine JAX then takes 75% of the GPU
for each process that builds a BM25 index (the leakage audit, the retrieval row, RAG): on an H200 that was 105 GiB
per process, and the evaluations beside it ran out of memory. medqa-bench keeps JAX on the CPU while it imports
bm25s, unless the user chose a platform or imported JAX first. Real jax and bm25s, in fresh processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

PROBE = """
import json, os, sys
{before}
from medqa_bench.retrieval import BM25Index
hits = BM25Index.build(["gout causes joint pain", "asthma narrows the airways"], ids=["a", "b"]).search(["airways"], k=1)
import jax
print(json.dumps({{"platforms": jax.config.jax_platforms, "env": os.environ.get("JAX_PLATFORMS"),
                  "hit": hits[0][0][0], "device": jax.devices()[0].platform}}))
"""


def _probe(before: str = "", **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    out = subprocess.run([sys.executable, "-c", PROBE.format(before=before)], env={**clean, **env},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_building_an_index_keeps_jax_on_the_cpu_and_leaves_the_environment_as_it_was():
    got = _probe()
    assert got["hit"] == "b"
    assert got["platforms"] == "cpu"  # without the guard: "" (JAX's default platform, the GPU where there is one)
    assert got["device"] == "cpu"
    assert got["env"] is None  # the user's environment is handed back unchanged


def test_a_platform_the_user_chose_or_jax_imported_first_is_left_alone():
    assert _probe(JAX_PLATFORMS="cpu")["env"] == "cpu"
    got = _probe(before="import jax")
    assert got["platforms"] in ("", None)  # the application's JAX keeps its own default
    assert got["env"] is None
