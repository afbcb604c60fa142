#!/usr/bin/env python3
"""Markdown tables of the preset comparison (scripts/compare-presets.sh) for docs/RESULTS.md:
per preset, the learning-rate selection on validation and the final runs on the test split.

    scripts/results-table.py [runs/compare]
"""
import glob
import json
import os
import sys

ORDER = ["head-only", "lora-r1", "lora-r8", "square2d-g4-r8", "tucker-m3-g12-r5", "dense-fastfood-0.01"]


def load(path):
    with open(path) as f:
        return json.load(f)


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "runs/compare"
    for preset in sorted(os.listdir(root)):
        print(f"### {preset}\n")
        sel = {}
        for p in glob.glob(f"{root}/{preset}/select/*/summary.json"):
            name = p.split("/")[-2]
            method, lr = name.rsplit("-lr", 1)
            sel.setdefault(method, []).append((float(lr), load(p)))
        if sel:
            print("Learning-rate selection (short runs, validation accuracy on ≤ 1,000 examples; test shown for reference only):\n")
            print("| method | lr → validation accuracy (test) | chosen |")
            print("|---|---|---|")
            for m in sorted(sel, key=lambda m: ORDER.index(m) if m in ORDER else 99):
                runs = sorted(sel[m], key=lambda x: x[0])
                best = max(runs, key=lambda x: x[1]["best_valid_acc"])
                cells = ", ".join(f"{lr:g} → {s['best_valid_acc']:.3f} ({s['test_acc_at_best']:.3f})" for lr, s in runs)
                print(f"| {m} | {cells} | {best[0]:g} |")
            print()
        finals = {}
        for p in glob.glob(f"{root}/{preset}/final/*/summary.json"):
            finals[p.split("/")[-2]] = load(p)
        if finals:
            print("Final runs (same step budget, full validation and test splits):\n")
            print("| method | adapter params | head params | test acc (final) | best valid acc (step) | test at best valid | training time | samples/s | adapter lr | head lr |")
            print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
            for m in sorted(finals, key=lambda m: ORDER.index(m) if m in ORDER else 99):
                s = finals[m]
                t = s["settings"]["train"]
                print(
                    f"| {m} | {s['adapter_params']:,} | {s['head_params']:,} | {s['final_test_acc']:.4f} | "
                    f"{s['best_valid_acc']:.4f} ({s['best_step']}) | {s['test_acc_at_best']:.4f} | "
                    f"{s['train_seconds']:.0f} s | {s['samples_per_s']:.1f} | "
                    f"{t['adapter_lr'] if s['adapter_params'] else '—'} | {t['head_lr']} |"
                )
            print()


if __name__ == "__main__":
    main()
