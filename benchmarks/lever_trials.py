"""One run against the lever trials made on it: tensorboard curves binned per N env steps, as JSON and a figure.

    python benchmarks/lever_trials.py --runs "paper settings=runs/sweeps/fig4-kitchen/spirl__kitchen__1" \\
        "critic LayerNorm=runs/sweeps/fig4-kitchen-critic-ln/spirl__kitchen__1" --json-out docs/<name>.json

Each run is `label=run_dir` (a spirl_sac.py run directory with its tensorboard event files; a run resumed from a
checkpoint logged the steps after it twice, and the purge step its SummaryWriter writes drops the stopped process's,
as sweep.py reads them for docs/results.json), or `label=earlier.json#label` for a run binned before into an
earlier output of this script, or `label=docs/results.json#sweep/run` for a run the sweep runner aggregated (its
metric's curve only, as charts/<metric>; git ignores runs/, so a new checkout compares against what the docs kept). For
every tag, the mean of its scalars in each bin of --bin env steps. The figure (next to the JSON, .png) is drawn
from the JSON: one panel per tag, one line per run, values on a symmetric log scale where they span decades (Q,
alpha, the critics' loss); runs labelled "<setting>, seed <n>" share the setting's colour, one line style per seed.
"""

import glob
import json
import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
import tyro

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sweep  # noqa: E402

DEFAULT_TAGS = ["charts/subtasks_completed", "losses/kl_sum_over_latent_dims", "losses/alpha", "losses/qf1_values",
                "losses/qf_loss"]
LOG_SCALE_TAGS = ("losses/alpha", "losses/qf1_values", "losses/qf_loss")


@dataclass
class Args:
    runs: List[str]
    """`label=run_dir`, `label=earlier.json#label` or `label=docs/results.json#sweep/run` per run, the run the trials
    change first"""
    json_out: str
    """the binned curves as JSON; the figure goes next to it with .png"""
    tags: List[str] = field(default_factory=lambda: list(DEFAULT_TAGS))
    """tensorboard scalar tags, one panel each"""
    bin: int = 50_000
    """env steps per bin"""
    title: Optional[str] = None
    """the figure's title"""
    max_env_steps: Optional[int] = None
    """keep only the bins that start before this many env steps (compare a longer run over a shorter budget)"""
    reference: List[str] = field(default_factory=list)
    """`label=value` per level to mark in the first tag's panel as a dashed line (e.g. "paper, SPiRL=3.5": a
    number read off the paper's figure, which has no curve here)"""


def read_scalars(run_dir, tags):
    """{tag: {step: value}} of a run's tensorboard events, as sweep.py reads them for docs/results.json (a resumed
    run's SummaryWriter purges the stopped process's steps after the checkpoint)."""
    if not glob.glob(os.path.join(run_dir, "events.out.tfevents.*")):
        raise SystemExit(f"no tensorboard event files in {run_dir}")
    found = sweep.read_scalars(run_dir, tags)
    return {tag: dict(found.get(tag, [])) for tag in tags}


def results_curves(path, data, name, tags, bin_size):
    """{tag: binned curve} of the aggregated run `sweep/run` in docs/results.json: its metric only (charts/<metric>)."""
    run = next((r for r in data if f"{r.get('sweep')}/{r.get('run')}" == name), None)
    if run is None:
        raise SystemExit(f"{path} has no run {name!r}: name one as sweep/run, e.g. "
                         + ", ".join(repr(f"{r.get('sweep')}/{r.get('run')}") for r in data[:3]))
    metric_tag = f"charts/{run['metric']}"
    missing = [tag for tag in tags if tag != metric_tag]
    if missing:  # results.json keeps the metric's curve, not the losses
        print(f"{path}#{name}: only {metric_tag} in results.json, no {', '.join(missing)}")
    curve = binned(dict((int(step), value) for step, value in run["curve"]), bin_size)
    return {tag: curve if tag == metric_tag else [] for tag in tags}


def earlier_curves(spec, tags, bin_size):
    """{tag: binned curve} of the run labelled `label` in an earlier output JSON of this script (`path#label`), or of
    an aggregated run in docs/results.json (`path#sweep/run`)."""
    path, _, label = spec.partition("#")
    with open(path) as f:
        data = json.load(f)
    if isinstance(data, list):  # docs/results.json: one entry per aggregated run
        return results_curves(path, data, label, tags, bin_size)
    run = next((r for r in data["runs"] if r["label"] == label), None)
    if run is None:
        raise SystemExit(f"{path} has no run labelled {label!r}: it has " + ", ".join(repr(r["label"]) for r in data["runs"]))
    if data["bin"] != bin_size:
        raise SystemExit(f"{spec}: binned per {data['bin']} env steps; pass --bin {data['bin']}")
    missing = [tag for tag in tags if tag not in run["curves"]]
    if missing:  # its panels for these tags show no line for this run
        print(f"{spec}: no {', '.join(missing)} in that JSON (it has {', '.join(run['curves'])})")
    return {tag: run["curves"].get(tag, []) for tag in tags}


def binned(points, bin_size):
    """[[bin start, mean], ...] of the {step: value} points per bin of bin_size steps."""
    bins = {}
    for step, value in points.items():
        bins.setdefault(step // bin_size * bin_size, []).append(value)
    return [[start, float(np.mean(values))] for start, values in sorted(bins.items())]


def line_styles(labels):
    """(colour index, line style) per run: labels that differ only in a trailing ", seed <n>" are seeds of one setting
    and share its colour, told apart by the line style; every other label is a setting of its own."""
    settings, seen, styles = {}, {}, []
    for label in labels:
        setting = re.sub(r",\s*seed \d+$", "", label)
        colour = settings.setdefault(setting, len(settings))
        seen[setting] = seen.get(setting, -1) + 1
        styles.append((colour, ("-", "--", ":", "-.")[seen[setting] % 4]))
    return styles


def draw(data, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tags = data["tags"]
    fig, axes = plt.subplots(1, len(tags), figsize=(4.2 * len(tags), 3.4), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = line_styles([run["label"] for run in data["runs"]])
    for ax, tag in zip(axes[0], tags):
        for run, (colour, linestyle) in zip(data["runs"], styles):  # the same style in every panel, also where a run lacks a tag
            curve = np.asarray(run["curves"][tag]).reshape(-1, 2)
            if len(curve):
                ax.plot((curve[:, 0] + data["bin"] / 2) / 1e3, curve[:, 1], marker=".", label=run["label"],
                        color=colors[colour % len(colors)], linestyle=linestyle)
        if tag in LOG_SCALE_TAGS:
            ax.set_yscale("symlog", linthresh=1e-2 if tag == "losses/alpha" else 1.0)
        if tag == tags[0]:
            for level in data.get("reference", []):
                ax.axhline(level["value"], color="grey", linestyle="--", linewidth=1, label=level["label"])
        ax.set_title(tag.split("/", 1)[1], fontsize=10)
        ax.set_xlabel(f"env steps (k; mean per {data['bin'] // 1000} k)")
        ax.grid(alpha=0.3)
    labelled = {}  # one legend under the panels, so that it covers no curve
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            labelled.setdefault(label, handle)
    fig.legend(labelled.values(), labelled.keys(), loc="lower center", ncol=min(len(labelled), 4), fontsize=8)
    if data.get("title"):
        fig.suptitle(data["title"], fontsize=11)
    legend_rows = -(-len(labelled) // 4)
    fig.tight_layout(rect=(0, 0.05 * legend_rows + 0.03, 1, 1))
    fig.savefig(path, dpi=110, bbox_inches="tight")  # a legend wider than one panel stays whole
    plt.close(fig)


if __name__ == "__main__":
    args = tyro.cli(Args)
    runs = []
    for entry in args.runs:
        label, sep, run_dir = entry.partition("=")
        if not sep:
            raise SystemExit(f"--runs takes label=run_dir, got {entry!r}")
        if ".json#" in run_dir:
            curves = earlier_curves(run_dir, args.tags, args.bin)
        else:
            curves = {tag: binned(points, args.bin) for tag, points in read_scalars(run_dir, args.tags).items()}
        if args.max_env_steps is not None:
            curves = {tag: [point for point in curve if point[0] < args.max_env_steps] for tag, curve in curves.items()}
        runs.append({"label": label, "run_dir": run_dir, "curves": curves})
    reference = []
    for entry in args.reference:
        label, _, value = entry.rpartition("=")
        try:
            reference.append({"label": label, "value": float(value)})
        except ValueError:
            raise SystemExit(f"--reference takes label=value (a number), got {entry!r}") from None
    data = {"command": "python " + shlex.join(sys.argv), "bin": args.bin, "tags": args.tags, "title": args.title,
            "runs": runs, "reference": reference}
    with open(args.json_out, "w") as f:
        json.dump(data, f, indent=1)
    draw(data, os.path.splitext(args.json_out)[0] + ".png")
    for run in runs:
        print(run["label"])
        for tag in args.tags:
            print(f"  {tag}: " + ", ".join(f"{start // 1000}k {value:.3g}" for start, value in run["curves"][tag]))
