#!/usr/bin/env bash
# device-check.sh - the GPU check of issue 22, for an accelerator machine (one H100, <= 8 min).
#
# Runs a superlora binary built by scripts/build-cuda.sh (carried over: the accelerator machine
# has no Rust) and prints, with the device's name:
#   1. ΔW and gradients of every adapter family on CUDA vs the CPU oracle (relative <= 1e-5),
#      `superlora device-check --device cuda`;
#   2. 50 steps of MiniLM (minilm-rt) and of DINOv2 (vit-fmnist) training on cuda and on cpu: the
#      mean training loss every 5 steps must match within LOSS_TOL (default 1e-3 relative at
#      step 5, 2e-2 over the 50 steps: float sums run in another order on the GPU, so the
#      trajectories drift apart slowly; a wrong kernel is off by far more from the first step);
#   3. throughput of LoRA r=8 training (MiniLM, query+value, batch 32, sequence 32, AdamW) with
#      `superlora bench --device cuda` and with PyTorch + PEFT on the same GPU
#      (tools/peft_gpu_bench.py), as a ratio;
#   4. peak GPU memory of both (nvidia-smi, polled every 100 ms, per process; PyTorch's own
#      max_memory_allocated too).
# Nothing here falls back to the CPU: a step that cannot run prints UNMEASURED and why, and the
# script exits non-zero.
#
# Needs there: the NVIDIA driver (libcuda.so.1, nvidia-smi), the CUDA 13.0 libraries the binary
# links (libcudart.so.13, libcublas.so.13, libcublasLt.so.13, libcurand.so.10, libnvrtc.so.13:
# found in LD_LIBRARY_PATH, in $CUDA_LIBS, or in an installed PyTorch's nvidia/cu13/lib), and for
# parts 2-3 the minilm, rotten-tomatoes, dinov2-onnx and fashion-mnist assets under
# $SUPERLORA_CACHE/assets (scripts/setup-assets.sh makes them), and python3 with torch,
# transformers and peft for part 3.
#
# Usage: tools/device-check.sh [BINARY]   (default target/cuda/release/superlora)
# Environment: SUPERLORA_CACHE, CUDA_LIBS, PYTHON (default python3), LOSS_TOL_FIRST, LOSS_TOL,
# OUT (default a temporary folder: run folders and logs).
set -uo pipefail

BIN=${1:-target/cuda/release/superlora}
PYTHON=${PYTHON:-python3}
LOSS_TOL_FIRST=${LOSS_TOL_FIRST:-1e-3}
LOSS_TOL=${LOSS_TOL:-2e-2}
OUT=${OUT:-$(mktemp -d)}
HERE=$(cd "$(dirname "$0")" && pwd)
FAILED=()
START=$(date +%s)

say() { printf '%s\n' "$*"; }
fail() {
	say "UNMEASURED/FAILED: $*"
	FAILED+=("$1")
}

say "== device-check $(date -u +%FT%TZ)"
if ! command -v nvidia-smi >/dev/null; then
	say "no nvidia-smi: not an accelerator machine"
	exit 2
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | sed 's/^/device: /'
[ -x "$BIN" ] || {
	say "no superlora binary at $BIN (build it with scripts/build-cuda.sh and carry it over)"
	exit 2
}

# The CUDA libraries: LD_LIBRARY_PATH, $CUDA_LIBS, or PyTorch's wheels.
if [ -n "${CUDA_LIBS:-}" ]; then
	export LD_LIBRARY_PATH=$CUDA_LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
if ldd "$BIN" | grep -q 'not found'; then
	site=$("$PYTHON" -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null || true)
	for s in $site; do
		for d in "$s"/nvidia/cu13/lib "$s"/nvidia/*/lib; do
			[ -d "$d" ] && LD_LIBRARY_PATH=${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$d
		done
	done
	export LD_LIBRARY_PATH
fi
if ldd "$BIN" | grep 'not found'; then
	say "the binary's libraries above are missing (CUDA 13.0 set; set CUDA_LIBS to a folder that has them)"
	exit 2
fi
"$BIN" --version

# Peak GPU memory of a command, by polling nvidia-smi every 100 ms (MiB, its whole process tree's
# largest single-process figure: both sides are one process).
peak_file=$OUT/peak.txt
with_peak() { # LOG CMD... -> runs CMD, writes its stdout to LOG, the peak MiB to $peak_file
	local log=$1
	shift
	"$@" >"$log" 2>"$log.err" &
	local pid=$! peak=0 m
	while kill -0 "$pid" 2>/dev/null; do
		m=$(nvidia-smi --query-compute-apps=used_memory --format=csv,noheader,nounits 2>/dev/null | sort -n | tail -n1)
		[ -n "$m" ] && [ "$m" -gt "$peak" ] && peak=$m
		sleep 0.1
	done
	wait "$pid"
	local rc=$?
	echo "$peak" >"$peak_file"
	return $rc
}

say
say "== 1. ΔW and gradients of every family, cuda vs cpu"
if ! "$BIN" device-check --device cuda --against cpu --tol 1e-5 2>&1; then
	fail "deltaW" "(see above)"
fi

ASSETS=${SUPERLORA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/superlora}/assets
have() { for a in "$@"; do [ -f "$ASSETS/$a/.ok" ] || [ -d "$ASSETS/$a" ] || return 1; done; }

say
say "== 2. 50 training steps on cuda vs cpu (mean training loss every 5 steps)"
curve() { # PRESET DEVICE -> run folder
	local dir=$OUT/$1-$2
	"$BIN" train --preset "$1" --steps 50 --eval-every 5 --eval-limit 64 --final-eval-limit 64 \
		--device "$2" --out "$dir" --force --no-progress >"$dir.log" 2>&1 || return 1
	echo "$dir"
}
for pair in "minilm-rt minilm rotten-tomatoes" "vit-fmnist dinov2-onnx fashion-mnist"; do
	read -r preset a1 a2 <<<"$pair"
	if ! have "$a1" "$a2"; then
		fail "$preset-curve" "assets $a1, $a2 not under $ASSETS"
		continue
	fi
	t0=$(date +%s)
	if ! gpu=$(curve "$preset" cuda); then
		fail "$preset-curve" "cuda run failed: $(tail -n3 "$OUT/$preset-cuda.log")"
		continue
	fi
	t1=$(date +%s)
	if ! cpu=$(curve "$preset" cpu); then
		fail "$preset-curve" "cpu run failed: $(tail -n3 "$OUT/$preset-cpu.log")"
		continue
	fi
	t2=$(date +%s)
	say "$preset: cuda $((t1 - t0)) s, cpu $((t2 - t1)) s (50 steps + evaluations)"
	if ! "$PYTHON" - "$gpu/metrics.jsonl" "$cpu/metrics.jsonl" "$LOSS_TOL_FIRST" "$LOSS_TOL" <<'EOF'; then
import json, sys
g = [json.loads(l) for l in open(sys.argv[1])]
c = [json.loads(l) for l in open(sys.argv[2])]
first, tol = float(sys.argv[3]), float(sys.argv[4])
ok = len(g) == len(c) and len(g) > 0
print(f"{'step':>5} {'loss cuda':>12} {'loss cpu':>12} {'rel':>10}")
worst = 0.0
for i, (a, b) in enumerate(zip(g, c)):
    r = abs(a["train_loss"] - b["train_loss"]) / max(abs(b["train_loss"]), 1e-12)
    worst = max(worst, r)
    ok &= a["step"] == b["step"] and r <= (first if i == 0 else tol)
    print(f"{a['step']:>5} {a['train_loss']:>12.6f} {b['train_loss']:>12.6f} {r:>10.2e}")
print(f"worst relative difference {worst:.2e} (tolerance {first:g} at the first point, {tol:g} after)")
sys.exit(0 if ok else 1)
EOF
		fail "$preset-curve" "loss curves differ beyond the tolerance"
	fi
done

say
say "== 3-4. LoRA r=8 training throughput and peak GPU memory: superlora vs PyTorch + PEFT"
if ! have minilm rotten-tomatoes; then
	fail "throughput" "assets minilm, rotten-tomatoes not under $ASSETS"
else
	if with_peak "$OUT/bench.json" "$BIN" bench --device cuda --only 0 --steps 50 --warmup 5; then
		ours_peak=$(cat "$peak_file")
		ours=$("$PYTHON" -c 'import json,sys; print(json.load(open(sys.argv[1]))["samples_per_s"])' "$OUT/bench.json")
		say "superlora: $ours samples/s, peak GPU memory $ours_peak MiB (nvidia-smi)"
	else
		fail "throughput" "superlora bench failed: $(tail -n3 "$OUT/bench.json.err")"
	fi
	if ! "$PYTHON" -c 'import torch, transformers, peft' 2>/dev/null; then
		fail "throughput-peft" "python3 lacks torch, transformers or peft"
	elif with_peak "$OUT/peft.json" "$PYTHON" "$HERE/peft_gpu_bench.py" --model "$ASSETS/minilm" \
		--data "$ASSETS/rotten-tomatoes" --steps 50 --warmup 5; then
		peft_peak=$(cat "$peak_file")
		say "PyTorch + PEFT: $(cat "$OUT/peft.json"), peak GPU memory $peft_peak MiB (nvidia-smi)"
		if [ -n "${ours:-}" ]; then
			"$PYTHON" -c 'import json,sys; p=json.load(open(sys.argv[1])); o=float(sys.argv[2]); print(f"throughput ratio superlora / PEFT: {o / p[\"samples_per_s\"]:.3f}")' \
				"$OUT/peft.json" "$ours"
			say "peak GPU memory ratio superlora / PEFT: $ours_peak / $peft_peak MiB"
		fi
	else
		fail "throughput-peft" "peft_gpu_bench.py failed: $(tail -n3 "$OUT/peft.json.err")"
	fi
fi

say
say "== done in $(($(date +%s) - START)) s; logs and run folders in $OUT"
if [ ${#FAILED[@]} -gt 0 ]; then
	say "NOT ALL MEASURED/PASSED: ${FAILED[*]}"
	exit 1
fi
say "all checks passed"
