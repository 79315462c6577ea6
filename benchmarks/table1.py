"""The paper's Table 1 (blocks stacked against the fraction of random-action data) next to ours, from results.json.

    python benchmarks/table1.py                      # -> docs/table1.md, docs/table1.png

Each row is one sweep of the `table1` preset (the paper's settings, or one change passed with --set and named with
--name), its runs read from docs/results.json (written by `sweep.py --aggregate`), never typed by hand. A variant that
did not run the 0 % case may take it from a longer run with the same data, skill model, seed and settings, cut at the
table's budget (`--same-run`): the 0 % data and skill model are bit for bit the default ones, so a fig4-blocks run of
the same settings repeats that SPiRL run step for step (docs/results.md, table1). The number is then the mean of the
run's binned curve over the table's last 10 % (equal episodes per bin: the mean over those episodes).
"""

import json
import os
from dataclasses import dataclass, field
from typing import Tuple

import numpy as np
import tyro

PAPER = {0: 3.5, 50: 2.0, 75: 1.0}  # Table 1 of the paper, blocks stacked at 0 / 50 / 75 % random data
PERCENTS = (0, 50, 75)


@dataclass
class Args:
    results_json: str = "docs/results.json"
    """the aggregated runs (`python benchmarks/sweep.py --aggregate`)"""
    variants: Tuple[str, ...] = ("paper settings=table1", "critic LayerNorm=table1-critic-ln")
    """rows of the table: LABEL=SWEEP, a sweep of the table1 preset"""
    same_run: Tuple[str, ...] = ("table1-critic-ln/random0=fig4-blocks-critic-ln/spirl__block_stacking__1",)
    """SWEEP/randomP=SWEEP/RUN: where a variant's P % run is missing, read this run cut at the table's budget (same
    data, skill model, seed and flags, only a longer budget)"""
    budget: int = 500_000
    """the table's env steps per run (the table1 preset's)"""
    out_md: str = "docs/table1.md"
    """markdown table written here"""
    out_png: str = "docs/table1.png"
    """bar chart written here"""


def cut_final(result, budget):
    """Mean metric over the curve's bins in the last 10 % of `budget` env steps."""
    curve = np.array(result["curve"], float)
    window = curve[(curve[:, 0] > 0.9 * budget) & (curve[:, 0] <= budget)]
    if result["env_steps"] < budget or not len(window):
        raise SystemExit(f"{result['sweep']}/{result['run']} has {result['env_steps']} env steps, fewer than {budget}")
    return float(window[:, 1].mean())


def table(results, variants, same_run, budget):
    """{label: {percent: (blocks stacked, where it comes from)}} for every variant."""
    by_key = {(r["sweep"], r["run"]): r for r in results}
    substitutes = dict(s.split("=", 1) for s in same_run)
    rows = {}
    for variant in variants:
        label, sweep = variant.split("=", 1)
        row = {}
        for percent in PERCENTS:
            run = by_key.get((sweep, f"spirl__block_stacking__1__random{percent}"))
            if run is not None and run["env_steps"] >= budget:
                row[percent] = (run["final"], f"{sweep}/{run['run']} ({run.get('commit')})")
            elif f"{sweep}/random{percent}" in substitutes:
                other = substitutes[f"{sweep}/random{percent}"]
                source = by_key.get(tuple(other.split("/", 1)))
                if source is not None:
                    row[percent] = (round(cut_final(source, budget), 4),
                                    f"{other} ({source.get('commit')}) cut at {budget // 1000} k")
        rows[label] = row
    return rows


def write(rows, budget, out_md, out_png):
    lines = ["# Table 1: blocks stacked against the fraction of random-action data", "",
             "Written by `python benchmarks/table1.py` from docs/results.json. SPiRL seed 1, "
             f"{budget // 1000} k env steps, blocks stacked in the highest tower, mean over the training episodes "
             "of the last 10 %. Commands and the reading: docs/results.md (sweeps table1, table1-critic-ln).", "",
             "| % random data | " + " | ".join(f"{p} %" for p in PERCENTS) + " | runs |",
             "|---|" + "---:|" * len(PERCENTS) + "---|",
             "| paper (Table 1) | " + " | ".join(f"{PAPER[p]}" for p in PERCENTS) + " | |"]
    for label, row in rows.items():
        lines.append(f"| ours, {label} | " + " | ".join(f"{row[p][0]:.2f}" if p in row else "-" for p in PERCENTS)
                     + " | " + "; ".join(f"{p} %: {row[p][1]}" for p in PERCENTS if p in row) + " |")
    os.makedirs(os.path.dirname(out_md) or ".", exist_ok=True)
    with open(out_md, "w") as f:
        f.write("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [("paper", {p: PAPER[p] for p in PERCENTS})] + [(f"ours, {k}", {p: v[0] for p, v in r.items()})
                                                              for k, r in rows.items()]
    fig, ax = plt.subplots(figsize=(6.4, 4))
    width = 0.8 / len(series)
    for i, (label, values) in enumerate(series):
        xs = [j + (i - (len(series) - 1) / 2) * width for j, p in enumerate(PERCENTS) if p in values]
        ax.bar(xs, [values[p] for p in PERCENTS if p in values], width, label=label)
    ax.set_xticks(range(len(PERCENTS)), [f"{p} %" for p in PERCENTS])
    ax.set_xlabel("random-action trajectories in the skill model's data")
    ax.set_ylabel("blocks stacked")
    ax.set_title(f"Table 1: SPiRL seed 1, last 10 % of {budget // 1000} k env steps", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    args = tyro.cli(Args)
    with open(args.results_json) as f:
        results = json.load(f)
    rows = table(results, args.variants, args.same_run, args.budget)
    write(rows, args.budget, args.out_md, args.out_png)
    print(open(args.out_md).read())
