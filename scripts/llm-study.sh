#!/usr/bin/env bash
# The decoder-LLM study of docs/LLM.md: SmolLM2-135M-Instruct on Rotten Tomatoes, LoRA r=1 / r=8
# against SuperLoRA configs at and below LoRA r=1's parameter count, 3 seeds, on two tasks:
#   classify  sweeps/smollm2-rt-classify.toml  (--task lm-classify: test accuracy)
#   lm        sweeps/smollm2-rt-lm.toml        (--task causal-lm: test perplexity)
# then `superlora plot` of each into docs/results/smollm2-rt-<task>/.
# Resumable: run it again after an interruption. Several copies may run at once (one per core,
# RAYON_NUM_THREADS=1): their sweeps split the runs. runs/ is not committed; the results are:
# each results.csv is copied to docs/results/smollm2-rt-<task>/study-results.csv after every run
# batch, and a machine without runs/llm-study/ starts from those copies.
#
#   scripts/llm-study.sh [classify|lm ...]     BIN=target/release/superlora by default
set -euo pipefail
BIN=${BIN:-target/release/superlora}
TASKS=("$@")
[ ${#TASKS[@]} -eq 0 ] && TASKS=(classify lm)
for task in "${TASKS[@]}"; do
  case "$task" in
    classify) title="SmolLM2-135M, Rotten Tomatoes by label words: test accuracy vs adapter parameters" ;;
    lm) title="SmolLM2-135M, causal LM on Rotten Tomatoes reviews: test perplexity vs adapter parameters" ;;
    *) echo "unknown task '$task': give classify or lm" >&2; exit 2 ;;
  esac
  name="smollm2-rt-$task"
  root="runs/llm-study/$name"
  published="docs/results/$name/study-results.csv"
  if [ ! -e "$root/results.csv" ] && [ -e "$published" ]; then
    mkdir -p "$root" && cp "$published" "$root/results.csv"
  fi
  status=0
  "$BIN" sweep --grid "sweeps/$name.toml" --out "$root" || status=$?
  mkdir -p "docs/results/$name"
  [ -e "$root/results.csv" ] && cp "$root/results.csv" "$published"
  [ -e "$published" ] && "$BIN" plot "$published" --out "docs/results/$name" --force --title "$title"
  [ "$status" -eq 0 ] || exit "$status"
done
