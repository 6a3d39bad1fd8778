#!/usr/bin/env bash
# The training tables of benchmarks/RESULTS.md, run on the GPU machine after ../shared/device/README.md's staging
# calls (wheels installed; for `curve`, the default model's GGUF in $STAGE):
#   benchmarks/gpu/train_bench.sh speed   # padding-free attention check, then tokens/s and peak memory on
#                                         # Llama-3.2-1B's architecture (random weights) against TRL's best row
#   benchmarks/gpu/train_bench.sh curve   # one epoch of SmolLM2-135M-Instruct: TRL (two seeds) against ours
# ROWS replaces the rows; TOKENIZER is a folder with the SmolLM2 tokenizer (save_pretrained) for the random model.
set -euo pipefail
STAGE=${STAGE:-/tmp/stage}
OUT=${OUT:-/tmp/out}
TOKENIZER=${TOKENIZER:-.device/wheels/tokenizer}
export MEDQA_BENCH_MODEL_DIR=$STAGE MEDQA_BENCH_CACHE=$STAGE/cache HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
FAST=free=on,kernels=liger,optim=adamw_torch_fused
case "${1:-speed}" in
  speed)
    python3 benchmarks/gpu/probe_varlen.py
    # shellcheck disable=SC2086
    BENCH_PROFILE=${BENCH_PROFILE:-1} python3 benchmarks/bench_train.py --random-llama-1b --tokenizer "$TOKENIZER" \
      --warmup 10 --steps 30 --json "$OUT/speed.json" --rows ${ROWS:-trl:batch=16,gc=off ours:batch=16,gc=off \
      ours:batch=16,gc=off,free=on ours:batch=16,gc=off,free=on,optim=adamw_torch_fused \
      ours:batch=16,gc=off,free=on,kernels=liger ours:batch=16,gc=off,$FAST ours:batch=24,gc=off,$FAST \
      ours:batch=32,gc=off,$FAST}
    ;;
  curve)
    # shellcheck disable=SC2086
    python3 benchmarks/bench_train.py --curve ${ROWS:-trl:batch=16,gc=off,seed=42 trl:batch=16,gc=off,seed=43 \
      ours:batch=16,gc=off,$FAST,seed=42} --json "$OUT/curve.json"
    ;;
  *) echo "usage: $0 speed|curve" >&2; exit 2 ;;
esac
