"""bm25s runs a JAX top-k when it is imported and JAX is installed. On a CUDA machine JAX then takes 75% of the GPU
for each process that builds a BM25 index (the leakage audit, the retrieval row, RAG): on an H200 that was 105 GiB
per process, and the evaluations beside it ran out of memory; on a CPU the import alone costs every run ~1.5 s.
medqa-bench ranks with numpy, so it imports bm25s with JAX hidden: JAX is neither imported nor started, unless the
application imported it first. Real jax and bm25s, in fresh processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

PROBE = """
import json, os, sys
{before}
from medqa_bench.data.retrieval import BM25Index
hits = BM25Index.build(["gout causes joint pain", "asthma narrows the airways"], ids=["a", "b"]).search(["airways"], k=1)
imported = "jax" in sys.modules
import bm25s.selection
import jax
print(json.dumps({{"imported": imported, "bm25s_jax": bm25s.selection.JAX_IS_AVAILABLE, "hit": hits[0][0][0],
                  "platforms": jax.config.jax_platforms, "env": os.environ.get("JAX_PLATFORMS")}}))
"""


def _probe(before: str = "", **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    out = subprocess.run([sys.executable, "-c", PROBE.format(before=before)], env={**clean, **env},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_building_an_index_does_not_import_jax_and_leaves_it_importable():
    got = _probe()
    assert got["hit"] == "b"
    assert got["imported"] is False and got["bm25s_jax"] is False  # without the guard: True and True
    assert got["platforms"] in ("", None) and got["env"] is None  # the application's own import of JAX is untouched


def test_jax_the_application_imported_first_is_left_alone():
    got = _probe(before="import jax")
    assert got["imported"] is True and got["bm25s_jax"] is True
    assert got["platforms"] in ("", None) and got["env"] is None
    assert _probe(JAX_PLATFORMS="cpu")["env"] == "cpu"
