#!/usr/bin/env bash
# Issue 34's measurement in one sitting on one GPU machine: the README's headline run with today's engine and with
# the slot engine, side by side on the same card, and the decoder probe (Llama-3.2-1B shapes, batch 64).
#
# Stage on the CPU machine (the working tree is about 32 MB and one carry shares 64 MiB with it, so the default
# model's GGUF file, 98 MB, travels in four parts):
#     EXTRA_WHEELS="bm25s==0.3.16 statsmodels patsy" bash ../shared/device/stage.sh       # .device/model-a, model-b, wheels
#     cat .device/model-a/*.part-a .device/model-b/*.part-b > /tmp/gguf && mkdir -p .device/m1 .device/m2 .device/m3 .device/m4
#     (cd /tmp && split -b 24600000 -d -a 1 gguf p. && mv p.0 /work/main/.device/m1/ ...)   # p.0..p.3 into m1..m4
#     cp .device/model-a/*.sha256 ../shared/data/medquad.csv.gz .device/m4/                # the checksum and MedQuAD
#     mkdir -p .device/w2 && cp the needed wheels (statsmodels, patsy, bitsandbytes, rapidfuzz, nltk, gguf, bm25s,
#         rouge_score; not plotly, trl or datasets) into .device/w2
# Then on the GPU machine, back to back (it goes back about 30 s after a call ends), each call carrying one folder:
#     bash benchmarks/gpu/engine_sitting.sh stage m1      # carry .device/m1; likewise m2, m3
#     bash benchmarks/gpu/engine_sitting.sh stage m4      # carry .device/m4: joins the parts and checks the sha256
#     OUT=$OUT bash benchmarks/gpu/engine_sitting.sh run install,slots,old     # carry .device/w2 (about 350 s on an H100)
#     OUT=$OUT bash benchmarks/gpu/engine_sitting.sh run probe                 # nothing carried (same machine); a call
#                                                                              # of its own: its parts take minutes
# `run` parts, in the order given:
#     install  the wheels of .device/w2 and this checkout; the model converted from GGUF once, before any timing
#     old      the headline with today's engine (generate)
#     slots    the headline with the slot engine, exact mode (today's batches)
#     refill   the headline with the slot engine, a finished row's slot taking the next prompt
#     probe    benchmarks/gpu/probe_decoder.py --parts env,llama1b,steps --steps-llama (tokens/s and the bandwidth
#              bound at batch 64; a profile of the decoding step: kernels against launches against the host)
# Each headline runs with --no-cache; its per-row engine stats go to $OUT/engines.jsonl, its run folder
# (results.json, samples.jsonl) to $OUT/<part>-run.tar.xz, its log and TOTAL_SECONDS to $OUT/sitting.log, with the
# card. At most 8 files come back: sitting.log, engines.jsonl, three run packs, the probe's json and log.
# Back on the CPU machine: unpack, `medqa-bench score DIR --metrics default` each run, then
#     python benchmarks/engine_identity.py old slots        # identical share; each metric's move against its CI
# RUN_ARGS adds `run` options to every headline (a dry run on a CPU: RUN_ARGS="--limit 2 --max-new-tokens 8").
set -uo pipefail
STAGE=${STAGE:-/tmp/stage}
GGUF=SmolLM2-135M-Instruct.Q4_1.gguf
mkdir -p "$STAGE"

case "${1:-}" in
  stage)
    cp ".device/$2"/* "$STAGE"/
    if [ -f "$STAGE/p.3" ]; then
      (cd "$STAGE" && cat p.0 p.1 p.2 p.3 > "$GGUF" && echo "$(cat ./*.sha256)  $GGUF" | sha256sum -c - && rm -f p.?)
    fi
    ls -la "$STAGE"
    exit $? ;;
  run) ;;
  *) echo "usage: engine_sitting.sh stage DIR | run PARTS (install,old,slots,refill,probe)" >&2; exit 2 ;;
esac

: "${OUT:?OUT names the folder whose files come back}"
LOG=$OUT/sitting.log
export MEDQA_BENCH_MODEL_DIR=$STAGE MEDQA_BENCH_CACHE=$STAGE/cache HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
card=$(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no GPU")
echo "== $(date -u +%FT%TZ) card: $card; parts: $2" | tee -a "$LOG"

headline() {  # $1: the part's name, $2: the engine
  local run=$STAGE/runs/$1
  rm -rf "$run"
  # shellcheck disable=SC2086
  MEDQA_BENCH_ENGINE=$2 MEDQA_BENCH_ENGINE_STATS=$OUT/engines.jsonl EXTRA="--no-cache ${RUN_ARGS:-}" RUN_OUT=$run \
    bash benchmarks/gpu/headline.sh 2>&1 | tail -n 40 | sed "s/^/[$1] /" | tee -a "$LOG"
  if [ -f "$run/results.json" ]; then
    tar -C "$run" -cJf "$OUT/$1-run.tar.xz" results.json samples.jsonl
    python3 -c "import json,sys; t=json.load(open(sys.argv[1]))['timings']; print('[$1] timings', json.dumps(t))" \
      "$run/results.json" | tee -a "$LOG"
  else
    echo "[$1] no run folder: see the log above" | tee -a "$LOG"
  fi
}

IFS=, read -r -a parts <<< "$2"
for part in "${parts[@]}"; do
  start=$(date +%s)
  case $part in
    install)
      python3 -m pip install -q --no-deps .device/w2/*.whl 2>&1 | tail -n 3 | tee -a "$LOG"
      python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -n 3 | tee -a "$LOG"
      python3 -c "from medqa_bench.inference.models import resolve_model; print('[install] model', resolve_model().location)" \
        2>&1 | tail -n 3 | tee -a "$LOG" ;;
    old) headline old generate ;;
    slots) headline slots slots ;;
    refill) headline refill refill ;;
    probe)
      python3 benchmarks/gpu/probe_decoder.py --parts env,llama1b,steps --steps-llama --out "$OUT" 2>&1 | tail -n 30 \
        | sed "s/^/[probe] /" \
        | tee -a "$LOG" ;;
    *) echo "unknown part $part (install, old, slots, refill, probe)" | tee -a "$LOG"; exit 2 ;;
  esac
  echo "[$part] part seconds $(( $(date +%s) - start ))" | tee -a "$LOG"
done
