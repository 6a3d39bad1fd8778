#!/usr/bin/env bash
# The training tables of benchmarks/RESULTS.md, run on the GPU machine after ../shared/device/README.md's staging
# calls (wheels installed; for `curve` and `probe`, the default model's GGUF in $STAGE):
#   benchmarks/gpu/train_bench.sh speed      # tokens/s and peak memory on Llama-3.2-1B's architecture (random
#                                            # weights): TRL's best row (twice) against our best, with and without
#                                            # Trainer's per-step waits, and without compile (session 13's table)
#   benchmarks/gpu/train_bench.sh switches   # the switches one by one at batch 16-32 (session 12's run 1)
#   benchmarks/gpu/train_bench.sh curve      # one epoch of SmolLM2-135M-Instruct: TRL against ours, seeds 42-44
#                                            # (ROWS with emulate=off on ours: session 13's compiled rows)
#   benchmarks/gpu/train_bench.sh probe      # padding-free attention against SDPA; compiled against eager loss
#   benchmarks/gpu/train_bench.sh head       # the loss's LM head alone: projected twice a step against TRL's three
# ROWS replaces the rows; TOKENIZER is a folder with the SmolLM2 tokenizer (save_pretrained) for the random model.
set -euo pipefail
STAGE=${STAGE:-/tmp/stage}
OUT=${OUT:-/tmp/out}
TOKENIZER=${TOKENIZER:-.device/wheels/tokenizer}
export MEDQA_BENCH_MODEL_DIR=$STAGE MEDQA_BENCH_CACHE=$STAGE/cache HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
. benchmarks/gpu/medquad.sh  # MedQuAD into $STAGE/data from a carried copy (see there)
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
FAST=free=on,kernels=liger,optim=adamw_torch_fused
BEST=batch=22,free=on,optim=adamw_torch_fused,gc=off,cache=on
LLAMA=(--random-llama-1b --tokenizer "$TOKENIZER" --warmup 10 --steps 30)
case "${1:-speed}" in
  speed)
    # shellcheck disable=SC2086
    python3 benchmarks/bench_train.py "${LLAMA[@]}" --json "$OUT/speed.json" --rows ${ROWS:-trl:batch=16,gc=off \
      ours:$BEST,compile=on ours:$BEST trl:batch=16,gc=off ours:$BEST,compile=on,blocking=on}
    ;;
  switches)
    # shellcheck disable=SC2086
    BENCH_PROFILE=${BENCH_PROFILE:-1} python3 benchmarks/bench_train.py "${LLAMA[@]}" --json "$OUT/switches.json" \
      --rows ${ROWS:-trl:batch=16,gc=off ours:batch=16,gc=off \
      ours:batch=16,gc=off,free=on ours:batch=16,gc=off,free=on,optim=adamw_torch_fused \
      ours:batch=16,gc=off,free=on,kernels=liger ours:batch=16,gc=off,$FAST ours:batch=24,gc=off,$FAST \
      ours:batch=32,gc=off,$FAST}
    ;;
  curve)
    C=batch=16,gc=off,free=on,optim=adamw_torch_fused,cache=on,compile=on
    # shellcheck disable=SC2086
    python3 benchmarks/bench_train.py --curve ${ROWS:-trl:batch=16,gc=off,seed=42 trl:batch=16,gc=off,seed=43 \
      ours:$C,seed=42 ours:$C,seed=43 trl:batch=16,gc=off,seed=44 ours:$C,seed=44} --json "$OUT/curve.json"
    ;;
  probe)
    python3 benchmarks/gpu/probe_varlen.py
    python3 benchmarks/probe_compile_loss.py --device cuda --batch 16
    ;;
  head)
    python3 benchmarks/gpu/probe_lm_head.py
    ;;
  *) echo "usage: $0 speed|switches|curve|probe|head" >&2; exit 2 ;;
esac
