#!/usr/bin/env bash
# bench-user-data.sh - how fast a large user CSV is ready to train: writes a CSV of N short
# labelled texts (default 1,000,000) plus small validation/test files, runs one training step of
# MiniLM LoRA r=8 on it, and prints the seconds until the data was ready, the whole command's wall
# time and its peak RSS (GNU time). Not a test: numbers for docs/BENCHMARKS.md.
#
# Usage: scripts/bench-user-data.sh [ROWS]     (BIN=path/to/superlora to use another binary)
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${1:-1000000}
BIN=${BIN:-target/release/superlora}
[ -x "$BIN" ] || cargo build --release -p superlora-cli
MODEL=${SUPERLORA_CACHE:-$HOME/.cache/superlora}/assets/minilm
[ -d "$MODEL" ] || { echo "missing $MODEL: run scripts/setup-assets.sh minilm" >&2; exit 2; }
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
python3 - "$TMP" "$ROWS" <<'PY'
import csv, sys, random
out, rows = sys.argv[1], int(sys.argv[2])
words = "good bad great dull fine poor moving flat sharp slow bright grim warm cold".split()
rng = random.Random(0)
def write(name, n):
    with open(f"{out}/{name}", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(n):
            text = " ".join(rng.choice(words) for _ in range(rng.randint(4, 12)))
            w.writerow([f"{text}, take {i}", "positive" if i % 2 else "negative"])
write("train.csv", rows)
write("valid.csv", 500)
write("test.csv", 500)
PY
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "train.csv: $ROWS rows, $(du -h "$TMP/train.csv" | cut -f1)"
/usr/bin/time -v "$BIN" train --data "$TMP/train.csv" --valid "$TMP/valid.csv" --test "$TMP/test.csv" \
	--model "$MODEL" --steps 1 --eval-every 1 --batch-size 32 --max-len 32 --no-progress \
	--out "$TMP/run" >"$TMP/stdout" 2>"$TMP/stderr" || { cat "$TMP/stderr" >&2; exit 1; }
grep -m1 '^data:' "$TMP/stderr"
grep -E 'Elapsed \(wall clock\)|Maximum resident set size' "$TMP/stderr" | sed 's/^\s*//'
