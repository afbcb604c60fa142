#!/usr/bin/env python3
"""Print docs/DIFFUSION.md's result tables from a diffusion run root (default runs/diffusion).

  python3 scripts/diffusion-table.py [ROOT]
  python3 scripts/diffusion-table.py --best NAME [ROOT]   the chosen learning rate of NAME's probes

Reads <root>/eval/<name>-w<w>.json (w = 1, 2) (from `superlora diffusion eval --json`), <root>/<name>/summary.json
(from `superlora diffusion transfer`/`pretrain`) and <root>/probe/*/ (the learning-rate probes).
"""
import json
import os
import sys

ARGS = sys.argv[1:]
BEST = ARGS[1] if ARGS[:1] == ["--best"] else None
if BEST:
    ARGS = ARGS[2:]
ROOT = ARGS[0] if ARGS else "runs/diffusion"
ROWS = [
    ("base-mnist", "base on MNIST (reference)", "—", "base"),
    ("base-fmnist", "base prompted with Fashion-MNIST classes (before transfer)", "—", "base"),
    ("lora-r1", "LoRA r=1", "`--rank 1`", "lora-r1"),
    ("lora-r8", "LoRA r=8", "`--rank 8`", "lora-r8"),
    ("square2d", "square 2D, G=4, r=2", "`--fold square --groups 4 --order 2 --factor lora --rank 2`", "square2d"),
    ("tucker-m3", "Tucker M=3, G=8, r=4", "`--fold square --groups 8 --order 3 --factor tucker --rank 4`", "tucker-m3"),
    ("tucker-m5", "Tucker M=5, G=8, r=3", "`--fold square --groups 8 --order 5 --factor tucker --rank 3`", "tucker-m5"),
    ("tucker-ff", "Tucker M=3 + fastfood ρ=0.001", "`--fold square --order 3 --factor tucker --rank 3 --ratio 0.001`", "tucker-ff"),
]


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, NotADirectoryError):
        return None


def probes(root):
    """{name: [(lr as written in the folder name, final training loss)]} of <root>/probe/<name>-lr<lr>/."""
    by = {}
    probe = os.path.join(root, "probe")
    for d in sorted(os.listdir(probe)) if os.path.isdir(probe) else []:
        su = load(os.path.join(probe, d, "summary.json"))
        if su and "-lr" in d:
            name, lr = d.rsplit("-lr", 1)
            by.setdefault(name, []).append((lr, su["final_train_loss"]))
    return {name: sorted(pts, key=lambda p: float(p[0])) for name, pts in by.items()}


def chosen(pts):
    """The probe with the lowest final training loss."""
    return min(pts, key=lambda p: p[1])[0]


if BEST:
    pts = probes(ROOT).get(BEST)
    if not pts:
        sys.exit(f"no finished probe of {BEST} in {ROOT}/probe")
    print(chosen(pts))
    sys.exit(0)


def lr_of(summary):
    s = (summary or {}).get("settings") or {}
    for key in ("lr", "peak_lr"):
        if key in s:
            return s[key]
    train = s.get("train") or {}
    return train.get("lr")


print("| adapter | flags | parameters | lr | held-out loss (v / ε) | conditional accuracy, w=1 / w=2 | Fréchet distance, w=1 / w=2 | training time | images/s |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
for name, label, flags, run in ROWS:
    ev = {w: load(os.path.join(ROOT, "eval", f"{name}-w{w}.json")) for w in (1, 2)}
    any_ev = ev[2] or ev[1]
    su = load(os.path.join(ROOT, run, "summary.json"))
    base = name.startswith("base")
    params = 0 if base else (any_ev["adapter_params"] if any_ev else (su or {}).get("trainable_params", ""))
    cells = [label, flags, f"{params:,}" if params != "" else ""]
    cells.append("—" if base else (f"{lr_of(su):g}" if su and lr_of(su) is not None else ""))
    cells.append(f"{any_ev['heldout_loss']:.4f} / {any_ev['heldout_eps_loss']:.4f}" if any_ev else "")
    cells.append(" / ".join(f"{ev[w]['conditional_accuracy']:.3f}" if ev[w] else "–" for w in (1, 2)))
    cells.append(" / ".join(f"{ev[w]['frechet_distance']:.1f}" if ev[w] else "–" for w in (1, 2)))
    if su and not base:
        cells += [f"{su['train_seconds']/60:.1f} min ({su['steps']} steps)", f"{su['samples_per_s']:.0f}"]
    elif su and name == "base-mnist":
        cells += [f"{su['train_seconds']/60:.1f} min ({su['steps']} steps, pretraining)", f"{su['samples_per_s']:.0f}"]
    else:
        cells += ["—", "—"]
    print("| " + " | ".join(cells) + " |")

print()
print("Evaluation wall time (1,000 guided samples, 50 DDIM steps, plus the held-out loss and features):")
print()
for name, label, _, _ in ROWS:
    secs = [load(os.path.join(ROOT, "eval", f"{name}-w{w}.json")) for w in (1, 2)]
    if all(secs):
        print(f"- {label}: {secs[0]['seconds']:.0f} s at w=1, {secs[1]['seconds']:.0f} s at w=2")

by = probes(ROOT)
if by:
    print()
    print("Learning-rate probes (300 steps; mean training loss over steps 151-300; lower is better):")
    print()
    print("| adapter | lr → training loss | chosen |")
    print("|---|---|---|")
    for name, _, _, _ in ROWS:
        if name in by:
            pts = by[name]
            print(f"| {name} | " + ", ".join(f"{float(lr):g} → {loss:.4f}" for lr, loss in pts)
                  + f" | {float(chosen(pts)):g} |")

gs = [(w, load(os.path.join(ROOT, "eval", f"guidance-w{w}.json"))) for w in (1, 2, 3)]
if any(g for _, g in gs):
    print()
    print("Guidance scale on the base model, MNIST (500 guided samples, 1,000 real held-out digits):")
    print()
    print("| w | conditional accuracy | Fréchet distance |")
    print("|---:|---:|---:|")
    for w, g in gs:
        if g:
            print(f"| {w} | {g['conditional_accuracy']:.3f} | {g['frechet_distance']:.1f} |")
