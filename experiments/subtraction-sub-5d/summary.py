"""The Measured tables of the README from a finished run of sub-5d.yaml or addsub-5d.yaml.

    python experiments/subtraction-sub-5d/summary.py runs/subtraction-sub-5d
    python experiments/subtraction-sub-5d/summary.py runs/subtraction-addsub-5d \\
        --evaluate evaluate-add evaluate-sub --probes probes-add probes-sub

Prompt ``12345-67890=`` (positions 0..11, "=" at 11), answer a sign then five digits most
significant first (or the sum's six digits): position 11 predicts the sign (the sum's leading
digit) and position 16 - i predicts digit i (place 10^i). Column j's sub-tasks (MB_j, MZ_j, GT_j,
SC_j) and the borrow out of it (borrow_j) are needed at the position predicting digit j + 1
(15 - j); the top column's (j = 4) at 11. ``carry_in_i`` is needed where digit i is predicted.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from arithinterp.results import Result


def _needed_at(target: str) -> int:
    if target == "negative":
        return 11
    j = int(target.rsplit("_", 1)[1])
    if target.startswith("carry_in_"):
        return 16 - j
    return 11 if j == 4 else 15 - j


def accuracy_tables(ev) -> None:
    per_token = ev.values.mean("prompt").to_numpy()
    exact = ev.values.min("digit").to_series()
    classes = ev.values.coords["complexity"].to_series()
    print(f"exact match {exact.mean():.4f} on {len(exact)} prompts")
    print("| token | sign (add: 10^5) | 10^4 | 10^3 | 10^2 | 10^1 | 10^0 |\n|---|---|---|---|---|---|---|")
    print("| accuracy | " + " | ".join(f"{v:.4f}" for v in per_token) + " |")
    groups = exact.groupby(classes.values)
    print("\n| class | " + " | ".join(groups.groups) + " |")
    print("|---" * (len(groups.groups) + 1) + "|")
    print("| exact (n) | " + " | ".join(f"{g.mean():.4f} ({len(g)})" for _, g in groups) + " |")


def probe_table(pr) -> None:
    sites = list(pr.values.coords["site"].values)
    print("\n| target | pos | majority | " + " | ".join(sites)
          + " | first site >= 0.95 | best (site, pos) | at the column's b token, L0 mid |")
    print("|---" * (len(sites) + 6) + "|")
    for target in pr.values.coords["target"].values:
        pos = _needed_at(str(target))
        cell = pr.values.sel(target=target, pos=pos).to_numpy()
        first = next((s for s, v in zip(sites, cell) if v >= 0.95), "—")
        # a best cell whose teacher-forced input already shows the target's digit is not counted
        allowed = pr.values.sel(target=target).where(~pr.extras["answer_visible"].sel(target=target))
        flat = allowed.stack(cell=("site", "pos"))
        best = flat.isel(cell=int(np.nanargmax(flat.to_numpy())))
        print(f"| {target} | {pos} | {float(pr.extras['majority'].sel(target=target)):.2f} | "
              + " | ".join(f"{v:.2f}" for v in cell)
              + f" | {first} | {float(best):.3f} ({best['site'].item()}, {best['pos'].item()}) | "
              + f"{_at_b_token(pr, str(target))} |")


def _at_b_token(pr, target: str) -> str:
    """MB_j / MZ_j / GT_j right after layer-0 attention at b_j's token (position 10 - j), where
    both of column j's digits are first visible."""
    if target[:3] not in ("MB_", "MZ_", "GT_", "SC_"):
        return "—"
    pos = 10 - int(target[3:])
    if pos not in pr.values.coords["pos"].values:
        return "—"
    return f"{float(pr.values.sel(target=target, pos=pos, site='L0 mid')):.2f} (pos {pos})"


def sign_table(pr) -> None:
    sites = list(pr.values.coords["site"].values)
    print("\n`negative` (the sign) by position (rows) and site; from position 12 on, the input shows the")
    print("teacher-forced sign token:")
    print("| pos | token (first prompt) | " + " | ".join(sites) + " |\n" + "|---" * (len(sites) + 2) + "|")
    for pos in pr.values.coords["pos"].values:
        cell = pr.values.sel(target="negative", pos=pos)
        print(f"| {pos} | {cell['pos_token'].item()} | " + " | ".join(f"{v:.2f}" for v in cell.to_numpy()) + " |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run", type=Path)
    parser.add_argument("--evaluate", nargs="+", default=["evaluate"], help="evaluate steps of the run")
    parser.add_argument("--probes", nargs="+", default=["probes"], help="probes steps of the run")
    args = parser.parse_args()
    for step in args.evaluate:
        print(f"\n## {step}")
        accuracy_tables(Result.load(args.run / step))
    for step in args.probes:
        print(f"\n## {step}")
        probes = Result.load(args.run / step)
        probe_table(probes)
        if "negative" in probes.values.coords["target"].values:
            sign_table(probes)


if __name__ == "__main__":
    main()
