#!/usr/bin/env python3
"""Rebuilds the study's results.csv files from the run tables of a committed docs/RESULTS.md, for
a machine that lost runs/ (git-ignored) but whose numbers were published.

It was needed once: the development machine was replaced on 2026-11-29 and runs/study/ went with
it, after 80 + 58 study runs and all selection runs had been measured and written into
docs/RESULTS.md (commit 72df16c). Since then scripts/study-status.py also commits the CSVs
themselves (docs/results/<preset>/{select,study}-results.csv) and scripts/study.sh starts from
those, so this script should not be needed again.

    scripts/restore-study.py REV          BIN=target/release/superlora by default

For each preset it writes docs/results/<preset>/select-results.csv and study-results.csv (refusing
to replace existing ones). Cell names and configs come from `sweep --dry-run` of the grids, so the
sweep recognises the restored runs as finished and never reruns them. What the tables did not keep
is left empty: adapter/head parameters, test accuracies, timings of the selection runs; the final
test accuracy of a study run whose best step was not the last; samples/s. Rounded as the tables
were: selection validation accuracy to 3 decimals (on 1,000 examples, so exact), study accuracies to
4, from which the exact fractions are recovered (1,000 examples at intermediate evaluations, the
full 5,000 / 10,000 and 1,275 / 1,275 at the last), training time to 0.1 min. The run_dir column
says where each row came from.
"""
import csv
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))
from pick_lrs import selection  # noqa: E402

BIN = os.environ.get("BIN", "target/release/superlora")
PRESETS = ["vit-fmnist", "minilm-rt"]
COLUMNS = ["cell", "family", "config", "seed", "adapter_params", "head_params", "best_valid_acc", "best_step",
           "test_acc_at_best", "final_test_acc", "wall_s", "samples_per_s", "run_dir"]
HEAD_PARAMS = {"vit-fmnist": 7690, "minilm-rt": 770}  # 768x10+10 and 384x2+2, every run
STEPS = 300
# Evaluation sizes: validation and test at the last step (the full splits), and at earlier steps.
FULL = {"vit-fmnist": (5000, 10000), "minilm-rt": (1275, 1275)}
PARTIAL = 1000


def exact(acc, n):
    """The accuracy k/n that a table's 4-decimal rounding came from (1/n > 1e-4, so k is unique)."""
    k = round(float(acc) * n)
    if abs(k / n - float(acc)) > 5e-5:
        sys.exit(f"{acc} is no count out of {n}")
    return repr(k / n)


def dry_run(grid):
    """(cell, family, config, seed) of every run of a grid, from `sweep --dry-run`."""
    out = subprocess.run([BIN, "sweep", "--grid", grid, "--dry-run"], capture_output=True, text=True, check=True)
    runs = []
    for line in out.stdout.splitlines():
        parts = line.split("\t")
        if len(parts) != 3:
            continue
        m = re.fullmatch(r"(.+)-s(\d+)", parts[0])
        config = re.fullmatch(r"train (.*) --seed \d+", parts[2]).group(1)
        runs.append((m.group(1), parts[1], config, int(m.group(2))))
    return runs


def own_flags(config):
    """The flags a config adds to the grid's shared ones, as the run tables print them."""
    return re.split(r" --steps \d+", config, maxsplit=1)[-1].strip()


def sections(text):
    """{preset: [table rows as cell lists]} for the lines under `preset:` headings."""
    out, preset = {}, None
    for line in text.splitlines():
        m = re.fullmatch(r"(vit-fmnist|minilm-rt):", line.strip())
        if m:
            preset = m.group(1)
            out.setdefault(preset, [])
        elif preset and line.startswith("| ") and not line.startswith("| family"):
            out[preset].append([c.strip() for c in line.strip().strip("|").split("|")])
        elif preset and line.startswith("#"):
            preset = None
    return out


def restore_select(p, rows, rev):
    """Selection rows: `family | config | lr → acc, … | chosen`."""
    tried = {}
    for fam, config, cells, chosen in rows:
        for lr, acc in re.findall(r"([0-9.e-]+) → ([0-9.]+)", cells):
            tried[(fam, float(lr))] = acc
    out = []
    for cell, fam, config, seed in dry_run(f"sweeps/{p}-select.toml"):
        lr = float(re.search(r"--adapter-lr (\S+)", config).group(1))
        acc = tried.pop((fam, lr))
        out.append({"cell": cell, "family": fam, "config": config, "seed": seed, "best_valid_acc": acc,
                    "run_dir": f"restored from docs/RESULTS.md at {rev}"})
    if tried:
        sys.exit(f"{p}: selection runs in docs/RESULTS.md that the grid does not have: {sorted(tried)}")
    return out, {fam: chosen for fam, _, _, chosen in rows}


def restore_study(p, rows, rev, grid):
    """Study rows: `family | flags | params | seed | valid (step) | test at best | t min`."""
    done = {}
    for fam, flags, params, seed, valid, test, minutes in rows:
        v = re.fullmatch(r"([0-9.]+) \((\d+)\)", valid)
        done[(fam, flags.strip("`"), int(seed))] = (params.replace(",", ""), v.group(1), v.group(2), test,
                                                   float(minutes.split()[0]))
    out = []
    for cell, fam, config, seed in dry_run(grid):
        key = (fam, own_flags(config), seed)
        if key not in done:
            continue
        params, valid, step, test, minutes = done.pop(key)
        n_valid, n_test = FULL[p] if int(step) == STEPS else (PARTIAL, PARTIAL)
        valid, test = exact(valid, n_valid), exact(test, n_test)
        out.append({"cell": cell, "family": fam, "config": config, "seed": seed, "adapter_params": params,
                    "head_params": HEAD_PARAMS[p], "best_valid_acc": valid, "best_step": step,
                    "test_acc_at_best": test, "final_test_acc": test if int(step) == STEPS else "",
                    "wall_s": f"{minutes * 60:.0f}", "run_dir": f"restored from docs/RESULTS.md at {rev}"})
    if done:
        sys.exit(f"{p}: study runs in docs/RESULTS.md that the grid does not have: {sorted(done)}")
    return out


def write(path, rows):
    if os.path.exists(path):
        sys.exit(f"{path} exists; this script only fills in what is missing")
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, COLUMNS)
        w.writeheader()
        w.writerows(rows)
    print(f"{path}: {len(rows)} runs restored")


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    rev = sys.argv[1]
    text = subprocess.run(["git", "show", f"{rev}:docs/RESULTS.md"], capture_output=True, text=True, check=True).stdout
    stage1, stage2 = text.split("### Stage 1", 1)[1].split("### Stage 2", 1)
    finished = stage2.split("Every finished study run", 1)[1]
    select_tables, study_tables = sections(stage1), sections(finished)
    for p in PRESETS:
        select_rows, chosen = restore_select(p, select_tables[p], rev)
        os.makedirs(f"docs/results/{p}", exist_ok=True)
        write(f"docs/results/{p}/select-results.csv", select_rows)
        # The study grid as scripts/study.sh makes it, checked against the rates the document chose.
        picked = selection(f"docs/results/{p}/select-results.csv")[1]
        for fam, lr in chosen.items():
            if float(lr) != picked[fam][1]:
                sys.exit(f"{p}: {fam}: the restored selection picks {picked[fam][1]:g}, the document chose {lr}")
        grid = f"/tmp/restore-{p}-study.toml"
        with open(grid, "w") as f:
            subprocess.run([sys.executable, "scripts/pick_lrs.py", f"docs/results/{p}/select-results.csv",
                            f"sweeps/{p}-study.toml"], stdout=f, stderr=subprocess.DEVNULL, check=True)
        write(f"docs/results/{p}/study-results.csv", restore_study(p, study_tables[p], rev, grid))


if __name__ == "__main__":
    main()
