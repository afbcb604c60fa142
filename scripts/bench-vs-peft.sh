#!/usr/bin/env bash
# Training throughput, ours against PyTorch + PEFT, side by side in one run (docs/BENCHMARKS.md):
# for each preset, ROUNDS rounds of [ours, peer] alternating, for LoRA r=8 and the head alone, then
# the median over rounds of each side's median step time, their ratio (ours / peer samples/s: ≥ 1
# means we are at least as fast) and both peak RSS figures. Prints the CPU model and flags first,
# since machines differ. Each measurement is its own process.
#
#   scripts/bench-vs-peft.sh [PRESET...]      presets: minilm-rt (default) vit-fmnist
#
# Environment: BIN (default target/release/superlora), PY (a Python with
# tools/requirements-peft.txt; default .venv-peft/bin/python), ROUNDS (2), STEPS (20), WARMUP (3),
# THREADS (all cores; sets RAYON_NUM_THREADS for ours and torch.set_num_threads for the peer),
# CONFIGS ("lora-r8 head"), OUT (runs/bench-vs-peft/<UTC time>, where every JSON row is kept),
# WORKERS (1; above 1 ours runs data parallel, `bench --workers`: that many single-threaded workers
# instead of THREADS threads).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/superlora}
PY=${PY:-.venv-peft/bin/python}
ROUNDS=${ROUNDS:-2}
STEPS=${STEPS:-20}
WARMUP=${WARMUP:-3}
THREADS=${THREADS:-$(nproc)}
CONFIGS=${CONFIGS:-lora-r8 head}
WORKERS=${WORKERS:-1}
OUT=${OUT:-runs/bench-vs-peft/$(date -u +%Y%m%dT%H%M%SZ)}
PRESETS=("$@")
[ ${#PRESETS[@]} -eq 0 ] && PRESETS=(minilm-rt)
[ -x "$BIN" ] || { echo "no $BIN: cargo build --release -p superlora-cli" >&2; exit 2; }
"$PY" -c "import torch, peft" 2>/dev/null || {
  echo "$PY cannot import torch and peft: python3 -m venv .venv-peft && .venv-peft/bin/pip install -r tools/requirements-peft.txt" >&2
  exit 2
}
mkdir -p "$OUT"
{
  echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, threads $THREADS, ours --workers $WORKERS"
  echo "SIMD: $(grep -o -w -E 'avx2|fma|avx512f|avx512bw|avx512_bf16|amx_tile' /proc/cpuinfo | sort -u | tr '\n' ' ')"
  echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "ours: $("$BIN" --version); peer: $("$PY" -c 'import torch, peft, transformers; print(f"torch {torch.__version__}, peft {peft.__version__}, transformers {transformers.__version__}")')"
} | tee "$OUT/machine.txt"
for preset in "${PRESETS[@]}"; do
  for round in $(seq 1 "$ROUNDS"); do
    for config in $CONFIGS; do
      if [ "$WORKERS" -gt 1 ]; then threads=(); else threads=(RAYON_NUM_THREADS="$THREADS"); fi
      env "${threads[@]}" "$BIN" bench --preset "$preset" --configs "$config" --steps "$STEPS" \
        --warmup "$WARMUP" --workers "$WORKERS" --json "$OUT/$preset.$config.ours.$round.json" >/dev/null 2>&1
      "$PY" tools/peft_bench.py --preset "$preset" --config "$config" --steps "$STEPS" --warmup "$WARMUP" \
        --threads "$THREADS" 2>/dev/null >"$OUT/$preset.$config.peer.$round.json"
      echo "  $preset $config round $round done" >&2
    done
  done
done
python3 - "$OUT" "${PRESETS[@]}" <<'EOF' | tee "$OUT/table.md"
import json, statistics, sys
from pathlib import Path
out, presets = Path(sys.argv[1]), sys.argv[2:]
def load(p):
    row = json.loads(p.read_text())
    return row[0] if isinstance(row, list) else row
print("| preset | config | ours ms/step (rounds) | peer ms/step (rounds) | ours samples/s | peer samples/s | ratio ours/peer | ours peak RSS | peer peak RSS |")
print("|---|---|---|---|---:|---:|---:|---:|---:|")
for preset in presets:
    configs = sorted({p.name.split(".")[1] for p in out.glob(f"{preset}.*.ours.*.json")}, key=lambda c: c != "lora-r8")
    for c in configs:
        ours = [load(p) for p in sorted(out.glob(f"{preset}.{c}.ours.*.json"))]
        peer = [load(p) for p in sorted(out.glob(f"{preset}.{c}.peer.*.json"))]
        mo = statistics.median(r["median_step_ms"] for r in ours)
        mp = statistics.median(r["median_step_ms"] for r in peer)
        bs = ours[0]["samples_per_s"] * ours[0]["median_step_ms"] / 1e3
        fmt = lambda rs: ", ".join(f"{r['median_step_ms']:.0f}" for r in rs)
        print(f"| {preset} | {c} | {mo:.1f} ({fmt(ours)}) | {mp:.1f} ({fmt(peer)}) | {bs / mo * 1e3:.1f} | {bs / mp * 1e3:.1f} | "
              f"{mp / mo:.2f}x | {max(r['peak_rss_mb'] for r in ours):.0f} MiB | {max(r['peak_rss_mb'] for r in peer):.0f} MiB |")
EOF
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/machine.txt"
