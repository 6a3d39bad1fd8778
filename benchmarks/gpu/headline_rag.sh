#!/usr/bin/env bash
# Issue 21's results: the chat-prompted baseline and the shipped adapter, each with and without retrieval (BM25, the
# 3 nearest training passages), on the full symptoms test split; generation and NLL on the GPU, every other metric
# (context_recall, answer_grounding and embedding similarity among them) on the CPU afterwards:
#   medqa-bench score reports/headline-rag --metrics default
# Staging without the embedding model: the GGUF and the wheels (plotly left out) as one tarball cut into parts of
# 52 MB (.device/ra, rb, rc; see sweep.sh for how the bundle is made), one call per part, then `run`.
# Session 24 tried it with 420 s left on the H200: staging and install took about 40 s, and the four rows had not finished
# generating when the call was stopped at 420 s (the shipped adapter runs every answer to the 907-token budget, twice
# here). Give it 10 minutes, or run it as the sweep's test phase does (benchmarks/gpu/sweep.py, job test-rag).
set -euo pipefail
STAGE=${STAGE:-/tmp/stage}
case "${1:-}" in
  stage) mkdir -p "$STAGE/parts" && cp .device/"$2"/* "$STAGE/parts/" && ls "$STAGE/parts" ;;
  run)
    cat "$STAGE"/parts/b2.part-* | tar -C "$STAGE" -xf - && (cd "$STAGE" && sha256sum -c --quiet SHA256SUMS)
    python3 -m pip install -q --no-deps "$STAGE"/wheels/*.whl
    python3 -m pip install -q --no-deps --no-build-isolation -e .
    export MEDQA_BENCH_MODEL_DIR=$STAGE MEDQA_BENCH_CACHE=$STAGE/cache HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
    . benchmarks/gpu/medquad.sh  # MedQuAD into $STAGE/data: put medquad.csv.gz into the bundle, or carry .device/data
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
    start=$(date +%s)
    python3 -m medqa_bench.cli -q run --name headline-rag --limit 0 --rag bm25:k=3 --reference-rows none \
      --dtype float32 --metrics loss,perplexity --no-report --out "$STAGE/runs/headline-rag" 2>&1 | tail -40
    echo "TOTAL_SECONDS $(( $(date +%s) - start ))"
    tar -C "$STAGE/runs" -cJf "$OUT/headline-rag.tar.xz" headline-rag ;;
  *) echo "usage: headline_rag.sh stage rX|run" >&2; exit 2 ;;
esac
