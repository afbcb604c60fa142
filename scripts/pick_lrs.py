#!/usr/bin/env python3
"""Fills the `adapter-lr = "@"` placeholders of a study grid with the learning rate each family's
selection runs scored best with on the VALIDATION split (best_valid_acc; ties: the smaller rate).

    scripts/pick_lrs.py SELECT_RESULTS.csv STUDY_TEMPLATE.toml > study.toml
    scripts/pick_lrs.py --table SELECT_RESULTS.csv     # the Markdown table of docs/results/README.md

Families are matched by the `family` column of the selection results.csv and the `family` key of
each [[run]] of the template. A family without selection runs is an error. The choices are printed
on stderr and written as comments at the top of the output.
"""
import csv
import re
import sys


def selection(path):
    """Per family: its config (the flags after --adapter-lr's rate), [(lr, validation accuracy)]
    in file order, and the best (accuracy, lr)."""
    tried, best = {}, {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            m = re.search(r"--adapter-lr (\S+)(.*)", row["config"])
            if not m:
                continue
            lr, acc = float(m.group(1)), float(row["best_valid_acc"])
            fam = row["family"]
            tried.setdefault(fam, (m.group(2).strip(), []))[1].append((lr, acc))
            if fam not in best or acc > best[fam][0] or (acc == best[fam][0] and lr < best[fam][1]):
                best[fam] = (acc, lr)
    return tried, best


def table(path):
    """The selection as a Markdown table (family, config, every rate tried, the chosen one)."""
    tried, best = selection(path)
    lines = ["| family | config | lr → validation accuracy | chosen |", "|---|---|---|---|"]
    for fam, (config, runs) in tried.items():
        cells = ", ".join(f"{lr:g} → {acc:.3f}" for lr, acc in sorted(runs))
        lines.append(f"| {fam} | `{config}` | {cells} | {best[fam][1]:g} |")
    return "\n".join(lines) + "\n"


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--table":
        return sys.stdout.write(table(sys.argv[2]))
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    _, best = selection(sys.argv[1])
    out, family = [], None
    for line in open(sys.argv[2]):
        if line.strip().startswith("[[run]]"):
            family = None
        m = re.match(r'\s*family\s*=\s*"([^"]+)"', line)
        if m:
            family = m.group(1)
        if re.match(r'\s*adapter-lr\s*=\s*"@"', line):
            if family not in best:
                sys.exit(f"no selection runs for family `{family}` in {sys.argv[1]}")
            line = re.sub(r'"@"', repr(best[family][1]), line)
        out.append(line)
    header = [f"# adapter-lr chosen on validation from {sys.argv[1]}:\n"]
    for fam, (acc, lr) in sorted(best.items()):
        header.append(f"#   {fam}: {lr:g} (best validation accuracy {acc:.4f})\n")
        print(f"{fam}: adapter-lr {lr:g} (validation {acc:.4f})", file=sys.stderr)
    sys.stdout.write("".join(header + out))


if __name__ == "__main__":
    main()
