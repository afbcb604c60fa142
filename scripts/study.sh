#!/usr/bin/env bash
# The parameter-efficiency study of docs/RESULTS.md for one preset (default: both):
#   1. selection sweep (sweeps/<preset>-select.toml): each family's adapter learning rate, on the
#      validation split, seed 0, 120 steps;
#   2. the chosen rates written into the study grid (scripts/pick_lrs.py);
#   3. the study sweep: every config x 3 seeds, 300 steps;
#   4. the plot, Pareto table and claims into docs/results/<preset>/.
# Every step is resumable: run the script again after an interruption. Several copies may run at
# once (one per core, RAYON_NUM_THREADS=1): their sweeps split the runs of a shared folder, and
# whichever finishes last draws the complete plot.
# runs/ is not committed; the results are: scripts/study-status.py copies each results.csv to
# docs/results/<preset>/{select,study}-results.csv, and a machine without runs/study/ starts from
# those copies, so runs that were published are never rerun.
#
#   scripts/study.sh [PRESET...]        BIN=target/release/superlora by default
set -euo pipefail
BIN=${BIN:-target/release/superlora}
PRESETS=("$@")
[ ${#PRESETS[@]} -eq 0 ] && PRESETS=(minilm-rt vit-fmnist)
for preset in "${PRESETS[@]}"; do
  root="runs/study/$preset"
  for stage in select study; do
    if [ ! -e "$root/$stage/results.csv" ] && [ -e "docs/results/$preset/$stage-results.csv" ]; then
      mkdir -p "$root/$stage" && cp "docs/results/$preset/$stage-results.csv" "$root/$stage/results.csv"
    fi
  done
  "$BIN" sweep --grid "sweeps/$preset-select.toml" --out "$root/select"
  mkdir -p "$root"
  python3 scripts/pick_lrs.py "$root/select/results.csv" "sweeps/$preset-study.toml" >"$root/study.toml"
  "$BIN" sweep --grid "$root/study.toml" --out "$root/study"
  "$BIN" plot "$root/study/results.csv" --out "docs/results/$preset" --force \
    --title "$preset: test accuracy vs trainable adapter parameters"
done
