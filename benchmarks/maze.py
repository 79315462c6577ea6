"""Maze: the downstream task's picture, env and data-collection speed, and the Fig. 5 exploration comparison.

    python benchmarks/maze.py --mode picture    # docs/maze_downstream.png: maze, start, goal, radius, planner rollout
    python benchmarks/maze.py --mode speed      # env steps/s (with / without views), data collection per worker
    python benchmarks/maze.py --mode explore    # Fig. 5: prior vs uniform vs N(0, I) skills, 3 seeds

explore runs ``python spirl_sac.py --env maze --explore {prior,uniform,normal} --total-env-steps N --seed S``
(skill rollouts from the task's start, no learning) with the skill model of ``python spirl_vae.py --env maze``
(checkpoints/skill_model_maze.pt), and measures the fraction of the downstream maze's free cells the point
entered; it writes docs/maze_explore.png (first seed's rollouts per sampler + the means) and .json.
"""

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import List, Literal

import numpy as np
import tyro

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from envs import maze  # noqa: E402

SAMPLER_NAMES = {"prior": "learned prior p(z|s)", "uniform": "uniform z in [-2, 2]^10", "normal": "z ~ N(0, I)"}


@dataclass
class Args:
    mode: Literal["picture", "speed", "explore"] = "picture"
    """what to measure or draw"""
    out_dir: str = os.path.join(REPO, "docs")
    """where figures and numbers go"""
    num_steps: int = 5000
    """speed: env steps to time per observation setting"""
    trajectories: int = 30
    """speed: planner trajectories to time"""
    skill_model: str = os.path.join(REPO, "checkpoints", "skill_model_maze.pt")
    """explore: skill model of spirl_vae.py --env maze"""
    samplers: List[str] = field(default_factory=lambda: ["prior", "uniform", "normal"])
    """explore: skill samplers to compare"""
    seeds: List[int] = field(default_factory=lambda: [1, 2, 3])
    """explore: seeds per sampler"""
    explore_env_steps: int = 40_000
    """explore: env steps per run (20 whole 2000-step episodes)"""


def machine() -> str:
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
            f"{os.getloadavg()[0]:.1f}; python {platform.python_version()}")


def draw_axes_maze(ax, layout):
    """The [x, y] layout drawn with x to the right and y up, walls dark, one unit per cell."""
    from matplotlib.colors import ListedColormap

    lo = -0.5 - maze.CELL_OFFSET  # cell k covers [k - 0.7, k + 0.3)
    ax.imshow(layout.T, origin="lower", cmap=ListedColormap(["#e1e1d7", "#463c6e"]), interpolation="nearest",
              extent=(lo, lo + layout.shape[0], lo, lo + layout.shape[1]))
    ax.set_xticks([])
    ax.set_yticks([])


def picture(args):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    env = maze.make_env(seed=0, images=False)
    start = time.perf_counter()
    xy = maze.planner_rollout(env)
    path = maze.plan_path(env.layout, env.start_cell, env.goal_cell)
    fig, ax = plt.subplots(figsize=(6.4, 6.4))
    draw_axes_maze(ax, env.layout)
    ax.plot(xy[:, 0], xy[:, 1], color="#1f50e6", lw=1.5, label=f"planner + PD controller ({len(xy) - 1} steps to the radius)")
    for radius, style, name in ((maze.GOAL_THRESHOLD, "-", "reward radius 1.0 (paper's time)"), (2.0, ":", "2.0 (authors' later value)")):
        ax.add_patch(plt.Circle(env.goal_xy, radius, fill=False, ls=style, color="#dc2828", lw=1.5, label=name))
    ax.plot(*env.start_xy, "o", color="#28aa3c", ms=9, label=f"start {tuple(maze.DOWNSTREAM_START)}")
    ax.plot(*env.goal_xy, "*", color="#dc2828", ms=13, label=f"goal {tuple(maze.DOWNSTREAM_GOAL)}")
    ax.set_title(f"randMaze0S40 (seed 0, 40 x 40 + border): shortest path {len(path) - 1} cell moves", fontsize=10)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.01), ncol=2, fontsize=8, frameon=False)
    out = os.path.join(args.out_dir, "maze_downstream.png")
    fig.savefig(out, dpi=110, bbox_inches="tight")
    print(f"wrote {out}; planner reached the goal radius in {len(xy) - 1} steps ({time.perf_counter() - start:.1f} s)")


def speed(args):
    print(f"machine: {machine()}")
    maze.make_env(images=False).close()  # imports and MuJoCo's first-use setup are not build time

    for images in (True, False):
        start = time.perf_counter()
        env = maze.make_env(seed=0, images=images)
        build = time.perf_counter() - start
        env.reset()
        start = time.perf_counter()
        for _ in range(args.num_steps):
            _, _, _, truncated, _ = env.step(env.action_space.sample())
            if truncated:
                env.reset()
        print(f"downstream env, {'image + state' if images else 'state only   '}: "
              f"{args.num_steps / (time.perf_counter() - start):7.0f} steps/s (env build {build:.2f} s)")
    start = time.perf_counter()
    runs = [maze.collect_trajectory(np.random.default_rng([0, i])) for i in range(args.trajectories)]
    seconds = time.perf_counter() - start
    steps = sum(len(run["states"]) for run in runs)
    print(f"data collection, one worker, images on: {args.trajectories / seconds:.2f} trajectories/s, "
          f"{steps / seconds:.0f} steps/s, {np.mean([r['reached'] for r in runs]):.0%} reached the goal, "
          f"mean length {steps / args.trajectories:.0f} steps")


def explore(args):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layout = maze.downstream_layout()
    results = {}
    for sampler in args.samplers:
        runs = []
        for seed in args.seeds:
            run_dir = os.path.join(REPO, "runs", "maze_explore", f"{sampler}_{seed}")
            command = [sys.executable, "spirl_sac.py", "--env", "maze", "--explore", sampler, "--total-env-steps",
                       str(args.explore_env_steps), "--seed", str(seed), "--skill-model", args.skill_model,
                       "--run-dir", run_dir]
            start = time.time()
            subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
            with np.load(os.path.join(run_dir, f"explore_{sampler}.npz")) as saved:
                states, starts = saved["states"], saved["episode_starts"]
            episodes = np.split(states, starts[1:] + np.arange(1, len(starts)))  # each episode's states (+ its reset state)
            distance = np.linalg.norm(states[:, :2] - maze.DOWNSTREAM_GOAL, axis=1)
            closest = np.array([np.linalg.norm(ep[:, :2] - maze.DOWNSTREAM_GOAL, axis=1).min() for ep in episodes])
            runs.append({"seed": seed, "free_cells_visited": maze.fraction_free_cells_visited(states[:, :2], layout),
                         "episodes": len(episodes), "episodes_reaching_goal": int((closest <= maze.GOAL_THRESHOLD).sum()),
                         "episodes_within_2m": int((closest <= 2.0).sum()),  # the authors' later radius
                         "closest_to_goal_m": round(float(distance.min()), 2),
                         "wall_s": round(time.time() - start, 1), "xy": [ep[:, :2] for ep in episodes]})
            print(f"{sampler} seed {seed}: {100 * runs[-1]['free_cells_visited']:.1f} % of free cells, "
                  f"{runs[-1]['episodes_reaching_goal']} / {len(episodes)} episodes reach the goal "
                  f"({runs[-1]['episodes_within_2m']} within 2.0 m), closest "
                  f"{runs[-1]['closest_to_goal_m']} m, {runs[-1]['wall_s']} s",
                  flush=True)
        coverage = [r["free_cells_visited"] for r in runs]
        results[sampler] = {"mean": float(np.mean(coverage)), "std": float(np.std(coverage)), "runs": runs}

    fig, axes = plt.subplots(1, len(args.samplers), figsize=(4.2 * len(args.samplers), 4.6))
    for ax, sampler in zip(np.atleast_1d(axes), args.samplers):
        r = results[sampler]
        draw_axes_maze(ax, layout)
        for xy in r["runs"][0]["xy"]:
            ax.plot(xy[:, 0], xy[:, 1], color="#1f50e6", lw=0.6, alpha=0.35)
        ax.plot(*maze.DOWNSTREAM_START, "o", color="#28aa3c", ms=7)
        ax.add_patch(plt.Circle(maze.DOWNSTREAM_GOAL, maze.GOAL_THRESHOLD, color="#dc2828"))
        ax.set_title(f"{SAMPLER_NAMES.get(sampler, sampler)}\n{100 * r['mean']:.1f} +- {100 * r['std']:.1f} % of free cells "
                     f"({len(r['runs'])} seeds)", fontsize=9)
    fig.suptitle(f"Skill rollouts from the start, {args.explore_env_steps} env steps per seed (first seed drawn)", fontsize=10)
    os.makedirs(args.out_dir, exist_ok=True)
    png = os.path.join(args.out_dir, "maze_explore.png")
    fig.savefig(png, dpi=100, bbox_inches="tight")
    summary = {"command": " ".join(sys.argv), "machine": machine(), "skill_model": os.path.relpath(args.skill_model, REPO),
               "free_cells": int((layout == 0).sum()), "env_steps_per_run": args.explore_env_steps,
               "results": {s: {**{k: v for k, v in r.items() if k != "runs"},
                               "runs": [{k: v for k, v in run.items() if k != "xy"} for run in r["runs"]]}
                           for s, r in results.items()}}
    with open(os.path.join(args.out_dir, "maze_explore.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(f"wrote {png} and maze_explore.json")
    print("| skills | free cells visited, mean +- std over seeds | per seed | episodes reaching the goal | closest to the goal (m) |")
    for sampler, r in results.items():
        print(f"| {SAMPLER_NAMES.get(sampler, sampler)} | {100 * r['mean']:.1f} +- {100 * r['std']:.1f} % | "
              + ", ".join(f"{100 * x['free_cells_visited']:.1f}" for x in r["runs"]) + " | "
              + f"{sum(x['episodes_reaching_goal'] for x in r['runs'])} / {sum(x['episodes'] for x in r['runs'])} | "
              + ", ".join(str(x["closest_to_goal_m"]) for x in r["runs"]) + " |")


if __name__ == "__main__":
    args = tyro.cli(Args)
    {"picture": picture, "speed": speed, "explore": explore}[args.mode](args)
