"""The paper's Table 1 (blocks stacked against the fraction of random-action data) next to ours, from results.json.

    python benchmarks/table1.py                      # -> docs/table1.md, docs/table1.png

Each row is one sweep of the `table1` preset (the paper's settings, or one change passed with --set and named with
--name), its runs read from docs/results.json (written by `sweep.py --aggregate`), never typed by hand. A variant that
did not run the 0 % case may take it from a longer run with the same data, skill model, seed and settings, cut at the
table's budget (`--same-run`): the 0 % data and skill model are bit for bit the default ones, so a fig4-blocks run of
the same settings repeats that SPiRL run step for step (docs/results.md, table1). The number is then the mean of the
run's binned curve over the table's last 10 % (equal episodes per bin: the mean over those episodes). A case run with
several seeds (`sweep.py --preset-seeds`) shows their mean ± std and each seed's number.
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
    variants: Tuple[str, ...] = ("paper settings=table1", "critic LayerNorm=table1-critic-ln",
                                 "critic LayerNorm, fixed physics=table1-carriage8n-critic-ln",
                                 "closed-loop 3-step skills, critic LayerNorm, fixed physics=table1-cl-h3-critic-ln",
                                 "closed-loop skills, view-limited data (ours), critic LayerNorm, fixed physics="
                                 "table1-cl-h10-viewlimited-critic-ln")
    """rows of the table: LABEL=SWEEP, a sweep of the table1 preset; every seed of its SPiRL runs is read"""
    same_run: Tuple[str, ...] = (
        "table1-critic-ln/random0=fig4-blocks-critic-ln/spirl__block_stacking__1",
        "table1-carriage8n-critic-ln/random0=fig4-blocks-carriage8n-critic-ln/spirl__block_stacking__1",
        "table1-carriage8n-critic-ln/random0=fig4-blocks-carriage8n-critic-ln/spirl__block_stacking__2",
        "table1-cl-h3-critic-ln/random0=fig4-blocks-cl-h3-critic-ln/spirl_cl__block_stacking__1",
        "table1-cl-h3-critic-ln/random0=fig4-blocks-cl-h3-critic-ln/spirl_cl__block_stacking__2",
        "table1-cl-h10-viewlimited-critic-ln/random0=fig4-blocks-cl-h10-viewlimited-critic-ln/spirl_cl__block_stacking__1",
        "table1-cl-h10-viewlimited-critic-ln/random0=fig4-blocks-cl-h10-viewlimited-critic-ln/spirl_cl__block_stacking__2",
        "table1-cl-h10-viewlimited-critic-ln/random0=fig4-blocks-cl-h10-viewlimited-critic-ln/spirl_cl__block_stacking__3")
    """SWEEP/randomP=SWEEP/RUN: where a variant's P % run of RUN's seed is missing, read RUN cut at the table's budget
    (same data, skill model, seed and flags, only a longer budget); one entry per seed"""
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


def run_seed(run_name):
    """The seed in a sweep run's name: spirl__block_stacking__2__random50 -> 2."""
    return int(run_name.split("__")[2])


def table(results, variants, same_run, budget):
    """{label: {percent: [(seed, blocks stacked, where it comes from), ...]}} for every variant, one entry per seed
    that reached the budget: the variant's own run of that seed, else a --same-run substitute of that seed."""
    by_key = {(r["sweep"], r["run"]): r for r in results}
    substitutes = {}
    for s in same_run:
        case, other = s.split("=", 1)
        substitutes.setdefault(case, []).append(other)
    rows = {}
    for variant in variants:
        label, sweep = variant.split("=", 1)
        row = {}
        for percent in PERCENTS:
            entries = {}
            for (run_sweep, run_name), run in by_key.items():
                if (run_sweep == sweep and run_name.startswith("spirl__block_stacking__")
                        and run_name.endswith(f"__random{percent}") and run["env_steps"] >= budget):
                    entries[run_seed(run_name)] = (run["final"], f"{sweep}/{run_name} ({run.get('commit')})")
            for other in substitutes.get(f"{sweep}/random{percent}", []):
                source = by_key.get(tuple(other.split("/", 1)))
                if source is not None and run_seed(source["run"]) not in entries:
                    entries[run_seed(source["run"])] = (round(cut_final(source, budget), 4),
                                                        f"{other} ({source.get('commit')}) cut at {budget // 1000} k")
            if entries:
                row[percent] = [(seed, *entries[seed]) for seed in sorted(entries)]
        rows[label] = row
    return rows


def cell(entries):
    """'0.72' for one seed; 'mean ± std (v1, v2)' over several (std over seeds, ddof 0)."""
    values = [value for _, value, _ in entries]
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{np.mean(values):.2f} ± {np.std(values):.2f} ({', '.join(f'{v:.2f}' for v in values)})"


def write(rows, budget, out_md, out_png):
    lines = ["# Table 1: blocks stacked against the fraction of random-action data", "",
             "Written by `python benchmarks/table1.py` from docs/results.json. SPiRL, "
             f"{budget // 1000} k env steps, blocks stacked in the highest tower, mean over the training episodes "
             "of the last 10 %; with several seeds, their mean ± std and each seed's value in seed order. Commands "
             "and the reading: docs/results.md (the sweeps named in the runs column).", "",
             "| % random data | " + " | ".join(f"{p} %" for p in PERCENTS) + " | runs |",
             "|---|" + "---:|" * len(PERCENTS) + "---|",
             "| paper (Table 1) | " + " | ".join(f"{PAPER[p]}" for p in PERCENTS) + " | |"]
    for label, row in rows.items():
        lines.append(f"| ours, {label} | " + " | ".join(cell(row[p]) if p in row else "-" for p in PERCENTS) + " | "
                     + "; ".join(f"{p} %: " + ", ".join(f"seed {seed} {source}" for seed, _, source in row[p])
                                 for p in PERCENTS if p in row) + " |")
    os.makedirs(os.path.dirname(out_md) or ".", exist_ok=True)
    with open(out_md, "w") as f:
        f.write("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [("paper", {p: [(None, PAPER[p], "")] for p in PERCENTS})] + [(f"ours, {k}", r) for k, r in rows.items()]
    fig, ax = plt.subplots(figsize=(6.4, 4))
    width = 0.8 / len(series)
    for i, (label, row) in enumerate(series):
        xs = [j + (i - (len(series) - 1) / 2) * width for j, p in enumerate(PERCENTS) if p in row]
        entries = [row[p] for p in PERCENTS if p in row]
        ax.bar(xs, [np.mean([value for _, value, _ in e]) for e in entries], width, label=label)
        for x, e in zip(xs, entries):  # every seed as a dot on its bar (the bar is their mean)
            if len(e) > 1:
                ax.plot([x] * len(e), [value for _, value, _ in e], "k.", markersize=4)
    ax.set_xticks(range(len(PERCENTS)), [f"{p} %" for p in PERCENTS])
    ax.set_xlabel("random-action trajectories in the skill model's data")
    ax.set_ylabel("blocks stacked")
    ax.set_title(f"Table 1: SPiRL, last 10 % of {budget // 1000} k env steps (dots: seeds)", fontsize=10)
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
