"""Validation curves of spirl_vae.py runs: have the losses flattened at the default training length?

    python benchmarks/vae_curves.py --runs kitchen RUN_DIR maze RUN_DIR --default-steps kitchen 8000 maze 5000

Reads the val/recon, val/kl and val/prior scalars from each run's tensorboard events (spirl_vae.py --run-dir,
or runs/<run_name>), writes them as JSON and draws them with matplotlib (x = skill windows seen = step x batch
size), with the per-env default length marked; prints each loss at the default length and at the run's end.
"""

import json
import os
from dataclasses import dataclass, field
from typing import Dict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import tyro  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

LOSSES = ("val/recon", "val/kl", "val/prior")


@dataclass
class Args:
    runs: Dict[str, str] = field(default_factory=dict)
    """label and tensorboard run directory of each spirl_vae.py run"""
    default_steps: Dict[str, int] = field(default_factory=dict)
    """label and that env's default --total-steps, marked on the plot"""
    batch_size: int = 128
    """the runs' batch size (x axis: skill windows seen)"""
    out: str = "docs/vae_val_curves"
    """output prefix: <out>.json and <out>.png"""


def read_curves(run_dir):
    events = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [[e.step, e.value] for e in events.Scalars(tag)] for tag in LOSSES if tag in events.Tags()["scalars"]}


def value_at(curve, step):
    """The last logged value at or before step."""
    return [v for s, v in curve if s <= step][-1]


def main(args):
    data = {label: {"run_dir": run_dir, "default_steps": args.default_steps.get(label), "batch_size": args.batch_size,
                    "curves": read_curves(run_dir)} for label, run_dir in args.runs.items()}
    fig, axes = plt.subplots(1, len(LOSSES), figsize=(4.2 * len(LOSSES), 3.4))
    for label, run in data.items():
        for ax, tag in zip(axes, LOSSES):
            curve = run["curves"].get(tag, [])[1:]  # step 0 is the untrained model
            ax.plot([s * args.batch_size / 1e6 for s, _ in curve], [v for _, v in curve], label=label)
            default = run["default_steps"]
            if default:
                ax.axvline(default * args.batch_size / 1e6, linestyle=":", color=ax.lines[-1].get_color())
                end = curve[-1][0]
                at_default, at_end = value_at(curve, default), curve[-1][1]
                run.setdefault("summary", {})[tag] = {"at_default": at_default, "at_end": at_end, "end_step": end,
                                                      "change_after_default": (at_end - at_default) / at_default}
                print(f"{label:10s} {tag:10s} at default step {default}: {at_default:.4f} | at step {end}: {at_end:.4f} "
                      f"({100 * (at_end - at_default) / at_default:+.1f} %)")
    for ax, tag in zip(axes, LOSSES):
        ax.set_title(tag)
        ax.set_xlabel("skill windows seen (millions)")
        ax.set_yscale("log")
    axes[0].legend()
    fig.suptitle("spirl_vae.py validation losses (dotted: the default length)")
    fig.tight_layout()
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    fig.savefig(args.out + ".png", dpi=110)
    with open(args.out + ".json", "w") as f:
        json.dump(data, f, indent=1)
    print(f"wrote {args.out}.png and {args.out}.json")


if __name__ == "__main__":
    main(tyro.cli(Args))
