#!/usr/bin/env bash
# Train the shipped adapter on the GPU and evaluate baseline vs adapter on the full symptoms test split.
# Runs on the GPU machine after ../shared/device/README.md's three staging calls (model in $STAGE, wheels installed).
# Generation and NLL happen here; metrics, analysis and the report are computed on the CPU machine afterwards:
#   medqa-bench score reports/headline/<run> && medqa-bench report reports/headline/<run>
# Environment: ADAPTER (evaluate this folder, no training), RECIPE (smollm2-135m-symptoms), NAME (adapter name), SETS (extra --set options), STAGE (/tmp/stage).
set -euo pipefail
STAGE=${STAGE:-/tmp/stage}
RECIPE=${RECIPE:-smollm2-135m-symptoms}
NAME=${NAME:-smollm2-135m-symptoms-qlora}
export MEDQA_BENCH_MODEL_DIR=$STAGE MEDQA_BENCH_CACHE=$STAGE/cache HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
start=$(date +%s)
ADAPTER=${ADAPTER:-}   # set to an existing adapter folder to evaluate it without training
if [ -z "$ADAPTER" ]; then
  ADAPTER=$STAGE/adapters/$NAME
  # shellcheck disable=SC2086
  python3 -m medqa_bench.cli train "$RECIPE" ${SETS:-} --out "$ADAPTER" --overwrite
  echo "TRAIN_SECONDS $(( $(date +%s) - start ))"
fi
python3 -m medqa_bench.cli -q run --name "$NAME-test" --adapter "$NAME=$ADAPTER" --limit 0 \
  --max-new-tokens 512 --dtype float32 --metrics loss,perplexity --no-report --out "$STAGE/runs/$NAME"
echo "TOTAL_SECONDS $(( $(date +%s) - start ))"
echo HEADLINE_DONE
