#!/usr/bin/env bash
# On the CPU machine, after `sweep.sh wait` brought the packed sweep back: unpack it and put each piece where the
# README's Results section reads it.
#   benchmarks/results/sweep/   selection.json, sweep.md, train_times.json, card.txt, logs, every configuration's
#                               training metadata and log (weights only for the chosen one, which is shipped)
#   reports/sweep-validation/   every configuration on the validation split (the selection's runs: baselines/, 1/, 2/, ...)
#   reports/headline*/          the chosen adapter on the test split: headline, -decoding, -other-types, -rag
#   reports/sweep-test-baselines/  the same four runs' baseline rows alone (headline, rag, other-types, decoding)
# A pack from before selection (the one right after training) fills in the training part only.
# samples.jsonl of every run is stored xz-compressed (`unxz -k` it before `medqa-bench score`).
# Usage: benchmarks/gpu/sweep_collect.sh DIR_WITH_PARTS
set -euo pipefail
parts=${1:?usage: sweep_collect.sh DIR_WITH_PARTS}
root=$(git rev-parse --show-toplevel)
tmp=$(mktemp -d)
cat "$parts"/sweep.tar.xz.part-* | tar -C "$tmp" -xJf -
dest="$root/benchmarks/results/sweep"
keep=$(mktemp -d) && cp "$dest"/*.sha256 "$keep"/ 2>/dev/null || true  # digests written when the adapters came back
rm -rf "$dest" && mkdir -p "$dest/adapters" && cp "$keep"/* "$dest"/ 2>/dev/null || true
for f in selection.json sweep.md train_times.json card.txt card-training.txt; do cp "$tmp/$f" "$dest"/ 2>/dev/null || true; done
cp -r "$tmp/logs" "$dest/logs"
for a in "$tmp"/adapters/*/; do
  n=$(basename "$a"); mkdir -p "$dest/adapters/$n"
  cp "$a"/medqa_bench.json "$a"/training_log.jsonl "$a"/adapter_config.json "$dest/adapters/$n/" 2>/dev/null || true
done
place() {  # place RUN FOLDER [compress]
  local from="$tmp/runs/$1" to="$root/reports/$2"
  [ -d "$from" ] || { echo "missing run $1" >&2; return 0; }
  rm -rf "$to" && mkdir -p "$to" && cp "$from/results.json" "$to/"
  if [ "${3:-}" = xz ]; then xz -T0 -9 -c "$from/samples.jsonl" > "$to/samples.jsonl.xz"; else cp "$from/samples.jsonl" "$to/"; fi
}
# the reference recipe's headline run keeps its place in history: reports/reference-recipe
if [ -d "$tmp/runs/test" ] && [ -d "$root/reports/headline" ] && [ ! -d "$root/reports/reference-recipe" ]; then
  git -C "$root" mv reports/headline reports/reference-recipe
fi
rm -rf "$root/reports/sweep-validation"
for v in "$tmp"/runs/validation-*/; do  # the baseline rows' run, then one run per group of adapters
  [ -d "$v" ] && place "$(basename "$v")" "sweep-validation/$(basename "$v" | sed 's/^validation-//')" xz
done
place test headline xz
place test-decoding headline-decoding xz
place test-other-types headline-other-types xz
place test-rag headline-rag xz
place test-no-repeat-ngram headline-no-repeat-ngram xz   # sweep.py test-no-repeat-ngram (session 30: run on its own)
# the decoding variant on validation (sweep.py validate-decoding; not part of the selection)
place decoding-validation sweep-validation/decoding xz
# the test runs' baseline rows alone (run before the adapter's, so that a lost machine still brings them back)
rm -rf "$root/reports/sweep-test-baselines"
place test-baselines sweep-test-baselines/headline xz
place test-rag-baselines sweep-test-baselines/rag xz
place test-other-types-baselines sweep-test-baselines/other-types xz
place test-decoding-baselines sweep-test-baselines/decoding xz
if [ -f "$tmp/selection.json" ]; then
  echo "unpacked in $tmp (the chosen adapter: $tmp/adapters/$(python3 -c "import json;print(json.load(open('$tmp/selection.json'))['chosen'])"))"
else
  echo "unpacked in $tmp (a pack from before selection: every adapter's weights are in $tmp/adapters)"
fi
