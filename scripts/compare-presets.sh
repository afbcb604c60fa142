#!/usr/bin/env bash
# Reproduces docs/RESULTS.md's preset comparison: for each preset (vit-fmnist, minilm-rt), the
# same step budget for every method (head-only, LoRA r=1, LoRA r=8, three SuperLoRA configs);
# each method's learning rate is chosen on the validation split (short runs), then one full run
# per method is scored on the test split. Resumable: a finished run (summary.json) is skipped,
# an interrupted one is resumed.
#
#   scripts/compare-presets.sh [BIN]     BIN: the superlora binary (default target/release/superlora)
#   PRESETS="minilm-rt" STEPS=300 SELECT_STEPS=120 scripts/compare-presets.sh
set -euo pipefail
BIN=${1:-target/release/superlora}
PRESETS=${PRESETS:-"minilm-rt vit-fmnist"}
STEPS=${STEPS:-300}
SELECT_STEPS=${SELECT_STEPS:-120}
OUT=${OUT:-runs/compare}
SEED=${SEED:-0}

# family | adapter flags | learning rates tried on validation
FAMILIES=(
  "head-only|--head-only|"
  "lora-r1|--rank 1|1e-3 3e-3 1e-2"
  "lora-r8|--rank 8|1e-3 3e-3 1e-2"
  "square2d-g4-r8|--fold square --groups 4 --order 2 --factor lora --rank 8|1e-3 3e-3 1e-2"
  "tucker-m3-g12-r5|--fold square --groups 12 --order 3 --factor tucker --rank 5|1e-2 3e-2 1e-1"
  "dense-fastfood-0.01|--fold square --order 1 --factor dense --ratio 0.01|3e-2 1e-1 3e-1"
)
HEAD_LRS="3e-3 1e-2 3e-2"

run() { # dir, flags...
  local dir=$1; shift
  if [ -f "$dir/summary.json" ]; then return 0; fi
  local resume=()
  [ -f "$dir/run.json" ] && resume=(--resume)
  "$BIN" train "$@" --seed "$SEED" --out "$dir" --no-progress "${resume[@]}" </dev/null
}

best() { # prints the learning rate whose run has the best validation accuracy: best dir-prefix
  python3 - "$@" <<'PY'
import glob, json, sys
best = None
for path in glob.glob(sys.argv[1] + "*/summary.json"):
    s = json.load(open(path))
    lr = path.split("-lr")[-1].split("/")[0]
    if best is None or s["final_valid_acc"] > best[0]:
        best = (s["final_valid_acc"], lr)
print(best[1])
PY
}

for preset in $PRESETS; do
  sel="$OUT/$preset/select"
  # 1. the head's learning rate, on the linear probe
  for lr in $HEAD_LRS; do
    run "$sel/head-only-lr$lr" --preset "$preset" --head-only --head-lr "$lr" --steps "$SELECT_STEPS" \
      --eval-every "$SELECT_STEPS" --eval-limit 1000 --final-eval-limit 1000
  done
  head_lr=$(best "$sel/head-only-lr")
  echo "$preset: head learning rate $head_lr (best validation accuracy of the linear probe)"
  for fam in "${FAMILIES[@]}"; do
    IFS='|' read -r name flags lrs <<<"$fam"
    [ "$name" = head-only ] && continue
    # shellcheck disable=SC2086
    for lr in $lrs; do
      run "$sel/$name-lr$lr" --preset "$preset" $flags --adapter-lr "$lr" --head-lr "$head_lr" \
        --steps "$SELECT_STEPS" --eval-every "$SELECT_STEPS" --eval-limit 1000 --final-eval-limit 1000
    done
  done
  # 2. one full run per method with the chosen learning rates, scored on the full test split
  for fam in "${FAMILIES[@]}"; do
    IFS='|' read -r name flags lrs <<<"$fam"
    if [ "$name" = head-only ]; then
      # shellcheck disable=SC2086
      run "$OUT/$preset/final/$name" --preset "$preset" $flags --head-lr "$head_lr" --steps "$STEPS"
    else
      lr=$(best "$sel/$name-lr")
      echo "$preset: $name adapter learning rate $lr"
      # shellcheck disable=SC2086
      run "$OUT/$preset/final/$name" --preset "$preset" $flags --adapter-lr "$lr" --head-lr "$head_lr" --steps "$STEPS"
    fi
  done
done
python3 - "$OUT" <<'PY'
import glob, json, sys
for path in sorted(glob.glob(sys.argv[1] + "/*/final/*/summary.json")):
    s = json.load(open(path))
    name = path.split("/")[-2]; preset = path.split("/")[-4]
    print(f"{preset:11} {name:22} test {s['final_test_acc']:.4f}  valid {s['final_valid_acc']:.4f}  "
          f"adapter {s['adapter_params']:>8}  head {s['head_params']:>5}  {s['train_seconds']:.0f} s  {s['samples_per_s']:.1f} samples/s")
PY
