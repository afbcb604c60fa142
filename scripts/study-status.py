#!/usr/bin/env python3
"""Writes docs/results/README.md, the study's generated part, from the run files in
runs/study/<preset>/: both learning-rate selection tables (scripts/pick_lrs.py --table), the
plot, Pareto table and claims of every study row so far (`superlora plot` into
docs/results/<preset>/, titled with the run count while the study is partial), and every finished
run. Run totals come from `sweep --dry-run`.

    scripts/study-status.py DATE         BIN=target/release/superlora by default

Only docs/results/ is written. docs/RESULTS.md (the claims, caveats and provenance) is written by
hand from the plot's claim lines; no script rewrites it, so update it by hand when the runs change.
"""
import csv
import os
import re
import shutil
import subprocess
import sys

from pick_lrs import table

BIN = os.environ.get("BIN", "target/release/superlora")
PRESETS = ["vit-fmnist", "minilm-rt"]


def total(grid):
    """Runs in a grid (configs x seeds), from `sweep --dry-run`'s last line."""
    out = subprocess.run([BIN, "sweep", "--grid", grid, "--dry-run"], capture_output=True, text=True, check=True)
    return int(re.search(r"= (\d+) runs", out.stdout).group(1))


def rows(path):
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except FileNotFoundError:
        return []


def status(p):
    select, study = rows(f"runs/study/{p}/select/results.csv"), rows(f"runs/study/{p}/study/results.csv")
    of = study_total(p)
    of = "? (the selection stage is not finished)" if of is None else of
    return f"{p} selection {len(select)} of {total(f'sweeps/{p}-select.toml')} runs, study {len(study)} of {of}"


def study_total(p):
    """Runs in the study grid, or None before the selection stage has written it."""
    grid = f"runs/study/{p}/study.toml"
    return total(grid) if os.path.exists(grid) else None


def plot(p):
    """Draws docs/results/<p>/accuracy_vs_params.* from the study rows so far; returns the Markdown
    to embed (the plot and the Pareto table + claims that `superlora plot` wrote)."""
    csv_path = f"runs/study/{p}/study/results.csv"
    if not rows(csv_path):
        return "(no study run finished yet)\n"
    done, of = len(rows(csv_path)), study_total(p)
    title = f"{p}: test accuracy vs trainable adapter parameters"
    if of is None:
        title += f" (partial: {done} runs; the selection stage is not finished)"
    elif done < of:
        title += f" (partial: {done} of {of} runs)"
    out = f"docs/results/{p}"
    subprocess.run([BIN, "plot", csv_path, "--out", out, "--force", "--title", title], check=True, capture_output=True)
    with open(f"{out}/accuracy_vs_params.md") as f:
        body = [l for l in f.read().splitlines() if not l.startswith("# ") and not l.startswith("![plot]")]
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(body).strip())
    return f"![{title}]({p}/accuracy_vs_params.png)\n\n{text}\n"


def study_table(p):
    done = rows(f"runs/study/{p}/study/results.csv")
    if not done:
        return "(none yet)\n"
    out = [
        "| family | config | adapter params | seed | best valid (step) | test at best valid | training time (evaluations excluded) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in done:
        flags = re.split(r" --steps \d+", r["config"], maxsplit=1)[-1].strip()  # the config's own flags
        out.append(
            f"| {r['family']} | `{flags}` | {int(float(r['adapter_params'])):,} | {r['seed']} | "
            f"{float(r['best_valid_acc']):.4f} ({r['best_step']}) | {float(r['test_acc_at_best']):.4f} | "
            f"{float(r['wall_s']) / 60:.1f} min |"
        )
    return "\n".join(out) + "\n"


if len(sys.argv) != 2:
    sys.exit(__doc__)
date = sys.argv[1]
# The results themselves are committed (runs/ is not): scripts/study.sh starts from these copies
# on a machine without runs/study/, and so does this script.
for p in PRESETS:
    for stage in ["select", "study"]:
        run_csv, doc_csv = f"runs/study/{p}/{stage}/results.csv", f"docs/results/{p}/{stage}-results.csv"
        if not os.path.exists(run_csv) and os.path.exists(doc_csv):
            os.makedirs(os.path.dirname(run_csv), exist_ok=True)
            shutil.copyfile(doc_csv, run_csv)
        if os.path.exists(f"runs/study/{p}/{stage}/results.csv"):
            shutil.copyfile(f"runs/study/{p}/{stage}/results.csv", f"docs/results/{p}/{stage}-results.csv")
sel = {p: table(f"runs/study/{p}/select/results.csv") for p in PRESETS}
done = {p: study_table(p) for p in PRESETS}
plots = {p: plot(p) for p in PRESETS}
sec = f"""# The parameter-efficiency study: generated tables and plots

Written by `scripts/study-status.py DATE` from the run files in `runs/study/<preset>/` (do not
edit by hand: the next run of the script replaces this file). The claims read off these numbers,
the caveats and the provenance of the runs are written by hand in [../RESULTS.md](../RESULTS.md);
no script touches that file. Regenerate with `scripts/study.sh` (resumable; it starts from the
committed `docs/results/<preset>/{{select,study}}-results.csv`, so on a fresh clone it only
redraws).

Status on {date}:
{status("vit-fmnist")};
{status("minilm-rt")}.

## Stage 1: learning rates, chosen on validation only

Each family's adapter learning rate: one representative config per family, seed 0, 120 steps,
scored on ≤ 1,000 validation examples (`scripts/pick_lrs.py --table <select>/results.csv` prints
these tables; `scripts/pick_lrs.py` writes the chosen rates into the study grid). The head's rate is
3e-2 throughout: the linear probe's best (RESULTS.md, "Preset comparison"), and interior — the same 120-step probe with 0.1
scored lower on both (MiniLM 0.726 vs 0.742, ViT 0.775 vs 0.799). The candidate ranges were
widened wherever the best rate was at an edge: square 2D up to 3e-2 and dense + fastfood down to
1e-2 (from the preset comparison), full fine-tuning down to 3e-5, MiniLM LoRA up to 3e-2, MiniLM
dense + fastfood up to 3e-1. Still at an edge: ViT Kronecker K=3 (0.1, ahead of 0.01 by 0.001) and MiniLM full fine-tuning
(1e-3, ahead of 3e-4 by 0.002; a reference line, not a SuperLoRA family) — both gaps far inside the
±1.3-point standard error of 1,000 validation examples, as are most gaps between the top two rates
here.

vit-fmnist:

{sel['vit-fmnist']}
minilm-rt:

{sel['minilm-rt']}
## Stage 2: the study

300 steps, batch 32, 3 seeds per config, evaluation every 100 steps on ≤ 1,000 examples and at
the end on the full splits; "test at best valid" is what the plot uses. Each preset's claim lines
below are `superlora plot`'s own reading (the prose of RESULTS.md is written from them). In the plots a
family's line joins its own Pareto front (filled dots); its other configs are hollow dots, and a
hollow dot on the bottom edge lies below the axis (its value is in the table: dense + fastfood at
ρ = 0.1 on both presets). Plots and tables: `superlora plot runs/study/<preset>/study/results.csv
--out docs/results/<preset> --force` (run by this script).

### vit-fmnist

{plots['vit-fmnist']}
### minilm-rt

{plots['minilm-rt']}
<details><summary>Every finished study run</summary>

vit-fmnist:

{done['vit-fmnist']}
minilm-rt:

{done['minilm-rt']}
</details>
"""
with open("docs/results/README.md", "w") as f:
    f.write(sec)
