# Sourced by the GPU scripts (after STAGE is set): MedQuAD is not in the checkout (it is fetched data), so a copy
# travels beside it and is installed, sha256-checked, into $MEDQA_BENCH_DATA ($STAGE/data) once per machine.
# On the CPU machine, before the first call:
#     mkdir -p .device/data && cp ../shared/data/medquad.csv.gz .device/data/    # or the copy in the user data folder
# and name .device/data in that call's carry (5 MB), or put medquad.csv.gz into a staged bundle ($STAGE/medquad.csv.gz).
export MEDQA_BENCH_DATA=${MEDQA_BENCH_DATA:-$STAGE/data}
if [ ! -f "$MEDQA_BENCH_DATA/medquad.csv.gz" ]; then
  for copy in "$STAGE/medquad.csv.gz" .device/data/medquad.csv.gz; do
    if [ -f "$copy" ]; then python3 -m medqa_bench.cli -q data fetch medquad --from "$copy"; break; fi
  done
  [ -f "$MEDQA_BENCH_DATA/medquad.csv.gz" ] || echo "no MedQuAD copy here: carry .device/data (benchmarks/gpu/medquad.sh)" >&2
fi
