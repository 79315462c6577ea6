"""Benchmarks of spirl_sac.py on the maze: the paper's Fig. 5 exploration comparison, and throughput.

    python benchmarks/spirl_sac.py --mode explore   # prior vs uniform (vs N(0, I)) skill rollouts -> docs/
    python benchmarks/spirl_sac.py --mode speed     # env steps/s and gradient steps/s of a short training run

Exploration: the same number of env steps (whole 2000-step episodes from the task's start) of skills
sampled from the learned prior (squashed like the prior-initialised policy), uniformly from the policy's
skill box U[-2, 2]^d, and from the VAE's N(0, I); coverage = fraction of the downstream maze's free
cells that the point visits at least once. Figures and pictures are written under docs/.
"""

import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Literal, Optional, Tuple

import numpy as np
import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import spirl_sac  # noqa: E402
from envs import maze  # noqa: E402


SAMPLER_NAMES = {"prior": "skills from the learned prior", "uniform": "uniform skills U[-2, 2]^d", "normal": "skills from N(0, I)"}


@dataclass
class Args:
    mode: Literal["explore", "explore_figure", "speed", "run"] = "explore"
    """explore: Fig. 5 coverage comparison; explore_figure: redraw its side-by-side figure from <out_dir>/<name>.json and
    the single panels; speed: throughput of a short training run; run: summary of a
    training run (success per env-step bin from its tensorboard log, evaluation episodes of its checkpoint drawn)"""
    skill_model: Optional[str] = None
    """skill model of spirl_vae.py --env maze; None: checkpoints/skill_model_maze.pt"""
    explore_env_steps: int = 40_000
    """env steps per sampler and seed (20 whole 2000-step episodes)"""
    samplers: Tuple[str, ...] = ("prior", "uniform", "normal")
    """which skill samplers to compare (spirl_sac.py --explore values)"""
    seeds: Tuple[int, ...] = (1, 2, 3)
    """seeds of the rollouts; the pictures show the first"""
    out_dir: str = "docs"
    """where the PNGs and the JSON of figures go"""
    name: str = "spirl_sac_explore"
    """file name prefix of the outputs in out_dir"""
    run_dir: Optional[str] = None
    """run mode: the run's tensorboard directory (runs/<run>)"""
    checkpoint: Optional[str] = None
    """run mode: the run's checkpoint, whose policy is drawn (spirl_sac.py --evaluate: sampled skills)"""
    goal_radius: Optional[float] = None
    """run mode: the goal radius the run was trained with (its --goal-radius; None: the env's default 1.0)"""
    bin_env_steps: int = 50_000
    """run mode: width of the env-step bins of the success table"""
    speed_env_steps: int = 6000
    """speed mode: env steps of the training run"""
    speed_learning_starts: int = 3000
    """speed mode: warm-up env steps before the updates start"""


def explore_figure(results, samplers, path):
    """The samplers' single panels side by side (matplotlib), each titled with its coverage over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(samplers), figsize=(6.5 * len(samplers), 7), squeeze=False)
    for ax, sampler in zip(axes[0], samplers):
        r = results[sampler]
        ax.imshow(plt.imread(r["png"]))
        ax.set_title(f"{SAMPLER_NAMES.get(sampler, sampler)}:\n{100 * r['mean_free_cells_visited']:.1f} +- "
                     f"{100 * r['std']:.1f} % of free cells (mean of {len(r['runs'])} seeds)", fontsize=11)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def explore(args):
    env = maze.make_env(seed=0)
    layout, start_xy, goal_xy = env.layout, maze.cell_to_world(env.start_cell, env.layout.shape), env.goal_xy
    results = {}
    for sampler in args.samplers:
        runs = []
        for seed in args.seeds:
            t0 = time.time()
            out = spirl_sac.main(spirl_sac.Args(env="maze", skill_model=args.skill_model, explore=sampler, seed=seed,
                                                total_env_steps=args.explore_env_steps, exp_name=f"explore_{sampler}"))
            with np.load(out["path"]) as saved:
                states, starts = saved["states"], saved["episode_starts"]
            episodes = np.split(states, starts[1:] + np.arange(1, len(starts)))  # each episode's states (+ its reset state)
            runs.append({"seed": seed, "free_cells_visited": maze.fraction_free_cells_visited(states[:, :2], layout),
                         "episodes": len(episodes), "env_steps": int(len(states) - len(episodes)),
                         "episodes_reaching_goal": int(sum(bool((np.linalg.norm(ep[:, :2] - goal_xy, axis=1)
                                                                 <= maze.GOAL_THRESHOLD).any()) for ep in episodes)),
                         "wall_s": round(time.time() - t0, 1)})
            if seed == args.seeds[0]:
                png = os.path.join(args.out_dir, f"{args.name}_{sampler}.png")
                maze.save_trajectories_png(layout, [ep[:, :2] for ep in episodes], png, start_xy=start_xy, goal_xy=goal_xy)
            print(f"{sampler}: {runs[-1]}", flush=True)
        coverage = [r["free_cells_visited"] for r in runs]
        results[sampler] = {"mean_free_cells_visited": float(np.mean(coverage)), "std": float(np.std(coverage)),
                            "png": png, "runs": runs}
    explore_figure(results, args.samplers, os.path.join(args.out_dir, f"{args.name}.png"))
    with open(os.path.join(args.out_dir, f"{args.name}.json"), "w") as f:
        json.dump({"skill_model": args.skill_model or spirl_sac.default_skill_model_path("maze"),
                   "free_cells": int((layout == 0).sum()), "env_steps_per_run": args.explore_env_steps,
                   "results": results}, f, indent=1)
    print("| sampler | env steps per seed | free cells visited, mean +- std over seeds | per seed | episodes reaching the goal |")
    for sampler, r in results.items():
        print(f"| {sampler} | {r['runs'][0]['env_steps']} | {100 * r['mean_free_cells_visited']:.1f} +- {100 * r['std']:.1f} % | "
              + ", ".join(f"{100 * x['free_cells_visited']:.1f}" for x in r["runs"]) + " | "
              + " + ".join(str(x["episodes_reaching_goal"]) for x in r["runs"]) + " |")


def redraw_explore_figure(args):
    with open(os.path.join(args.out_dir, f"{args.name}.json")) as f:
        results = json.load(f)["results"]
    samplers = [s for s in args.samplers if s in results and os.path.isfile(results[s]["png"])]
    if not samplers:
        raise SystemExit(f"no single panels of {args.name} found ({', '.join(r['png'] for r in results.values())})")
    explore_figure(results, samplers, os.path.join(args.out_dir, f"{args.name}.png"))
    print(f"drew {os.path.join(args.out_dir, args.name + '.png')} from {args.name}.json and its panels")


def speed(args):
    cpu0 = time.process_time()
    out = spirl_sac.main(spirl_sac.Args(env="maze", skill_model=args.skill_model, seed=args.seeds[0], exp_name="speed",
                                        total_env_steps=args.speed_env_steps, learning_starts=args.speed_learning_starts,
                                        eval_interval=0, eval_episodes=1, save_replay_buffer=False,
                                        save_path=os.path.join("runs", "speed", "spirl_sac.pt")))
    cpu_share = (time.process_time() - cpu0) / out["wall_s"]  # < 1 when other jobs share the cores
    print(f"| maze, image prior, 2x256 critics, batch 256, 1 gradient step per high-level step, 1 torch thread | "
          f"{out['env_steps_per_s']:.0f} env steps/s collecting | {out['grad_steps_per_s']:.1f} gradient steps/s updating | "
          f"process got {cpu_share:.2f} CPU cores on average |")


def summarize_run(args):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(args.run_dir, size_guidance={"scalars": 0})
    events.Reload()
    success = [(e.step, e.value) for e in events.Scalars("charts/success")]
    returns = [(e.step, e.value) for e in events.Scalars("charts/episodic_return")]
    start = min(e.wall_time for e in events.Scalars("charts/episodic_return"))  # end of the first episode
    first = next((e for e in events.Scalars("charts/success") if e.value > 0), None)
    reached = f"at env step {first.step} ({(first.wall_time - start) / 60:.0f} min after the first episode ended)" if first else "never"
    print(f"{args.run_dir}: {len(success)} training episodes up to env step {success[-1][0]}; a training episode "
          f"first reached the goal {reached}")
    print("| env steps | training episodes | episodes reaching the goal | mean return |")
    for lo in range(0, success[-1][0] + 1, args.bin_env_steps):
        s = [v for step, v in success if lo < step <= lo + args.bin_env_steps]
        r = [v for step, v in returns if lo < step <= lo + args.bin_env_steps]
        if s:
            print(f"| {lo // 1000}k-{(lo + args.bin_env_steps) // 1000}k | {len(s)} | {int(sum(s))} | {np.mean(r):.1f} |")
    if "eval/success" in events.Tags()["scalars"]:
        print("eval (evaluation episodes as logged): " + ", ".join(f"{e.step}: success {e.value:.2f}" for e in events.Scalars("eval/success")))
    if args.checkpoint:
        out = spirl_sac.main(spirl_sac.Args(env="maze", evaluate=args.checkpoint, eval_episodes=3, goal_radius=args.goal_radius))
        env = maze.make_env(seed=0)
        with np.load(out["path"]) as saved:
            episodes = [saved[k][:, :2] for k in saved.files]
        png = os.path.join(args.out_dir, f"{args.name}_policy.png")
        maze.save_trajectories_png(env.layout, episodes, png, start_xy=maze.cell_to_world(env.start_cell, env.layout.shape),
                                   goal_xy=env.goal_xy)
        print(f"evaluation episodes drawn -> {png}")


if __name__ == "__main__":
    args = tyro.cli(Args)
    try:
        {"explore": explore, "explore_figure": redraw_explore_figure, "speed": speed, "run": summarize_run}[args.mode](args)
    except spirl_sac.SetupError as e:
        sys.exit(f"benchmarks/spirl_sac.py: error: {e}")
