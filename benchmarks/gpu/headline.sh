#!/usr/bin/env bash
# The headline evaluation: the shipped adapter against the baseline in both prompt formats and the reference rows,
# on the full symptoms test split, with the default budget (the 95th percentile of the references' lengths).
# Runs on the GPU machine after ../shared/device/README.md's three staging calls (model in $STAGE, wheels installed,
# bm25s among them: EXTRA_WHEELS=bm25s ../shared/device/stage.sh). Generation and NLL happen here; metrics, analysis,
# verdict and the report are computed on the CPU machine afterwards, where the embedding model is:
#   medqa-bench score reports/headline --metrics default
# Environment: ADAPTER (evaluate this folder; default: the shipped default adapter,
# data/adapters/smollm2-135m-symptoms-all-linear-qlora), NAME (its name; default: the folder's), STAGE (/tmp/stage),
# RUN_OUT (where the run folder goes), EXTRA (more `run` options).
set -euo pipefail
STAGE=${STAGE:-/tmp/stage}
RUN_OUT=${RUN_OUT:-$STAGE/runs/headline}
export MEDQA_BENCH_MODEL_DIR=$STAGE MEDQA_BENCH_CACHE=$STAGE/cache HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
. benchmarks/gpu/medquad.sh  # MedQuAD into $STAGE/data from a carried copy (see there)
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || echo "no GPU (nvidia-smi failed)"
start=$(date +%s)
adapter_args=()
if [ -n "${ADAPTER:-}" ]; then adapter_args=(--adapter "${NAME:-$(basename "$ADAPTER")}=$ADAPTER"); fi
# shellcheck disable=SC2086
python3 -m medqa_bench.cli -q run --name headline "${adapter_args[@]}" --limit 0 --baseline-formats chat,reference \
  --dtype float32 --metrics loss,perplexity --no-report --out "$RUN_OUT" ${EXTRA:-}
echo "TOTAL_SECONDS $(( $(date +%s) - start ))"
echo HEADLINE_DONE
