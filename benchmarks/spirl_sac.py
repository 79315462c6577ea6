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
from typing import Literal, Optional

import numpy as np
import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import spirl_sac  # noqa: E402
from envs import maze  # noqa: E402


@dataclass
class Args:
    mode: Literal["explore", "speed"] = "explore"
    """explore: Fig. 5 coverage comparison; speed: throughput of a short training run"""
    skill_model: Optional[str] = None
    """skill model of spirl_vae.py --env maze; None: checkpoints/skill_model_maze.pt"""
    explore_env_steps: int = 40_000
    """env steps per sampling mode (20 whole episodes)"""
    samplers: tuple = ("prior", "uniform", "normal")
    """which skill samplers to compare"""
    seed: int = 1
    """seed of the rollouts"""
    out_dir: str = "docs"
    """where the PNGs and the JSON of figures go"""
    speed_env_steps: int = 6000
    """speed mode: env steps of the training run (the first 5000 are warm-up collection, then updates)"""
    speed_learning_starts: int = 3000
    """speed mode: warm-up env steps before the updates start"""


def explore(args):
    env = maze.make_env(seed=0)
    layout, start_xy, goal_xy = env.layout, maze.cell_to_world(env.start_cell, env.layout.shape), env.goal_xy
    results = {}
    for sampler in args.samplers:
        t0 = time.time()
        out = spirl_sac.main(spirl_sac.Args(env="maze", skill_model=args.skill_model, explore=sampler, seed=args.seed,
                                            total_env_steps=args.explore_env_steps, exp_name=f"explore_{sampler}"))
        with np.load(out["path"]) as saved:
            states, starts = saved["states"], saved["episode_starts"]
        episodes = np.split(states, starts[1:] + np.arange(1, len(starts)))  # each episode's states (+ its reset state)
        goal_reached = [bool((np.linalg.norm(ep[:, :2] - goal_xy, axis=1) <= maze.GOAL_THRESHOLD).any()) for ep in episodes]
        png = os.path.join(args.out_dir, f"spirl_sac_explore_{sampler}.png")
        maze.save_trajectories_png(layout, [ep[:, :2] for ep in episodes], png, start_xy=start_xy, goal_xy=goal_xy)
        results[sampler] = {"free_cells_visited": maze.fraction_free_cells_visited(states[:, :2], layout), "episodes": len(episodes),
                            "env_steps": int(len(states) - len(episodes)), "episodes_reaching_goal": int(sum(goal_reached)),
                            "png": png, "wall_s": round(time.time() - t0, 1)}
        print(f"{sampler}: {results[sampler]}", flush=True)
    with open(os.path.join(args.out_dir, "spirl_sac_explore.json"), "w") as f:
        json.dump({"skill_model": args.skill_model or spirl_sac.default_skill_model_path("maze"), "seed": args.seed,
                   "free_cells": int((layout == 0).sum()), "results": results}, f, indent=1)
    print("| sampler | env steps | episodes | free cells visited | episodes reaching the goal |")
    for sampler, r in results.items():
        print(f"| {sampler} | {r['env_steps']} | {r['episodes']} | {100 * r['free_cells_visited']:.1f} % | "
              f"{r['episodes_reaching_goal']} |")


def speed(args):
    out = spirl_sac.main(spirl_sac.Args(env="maze", skill_model=args.skill_model, seed=args.seed, exp_name="speed",
                                        total_env_steps=args.speed_env_steps, learning_starts=args.speed_learning_starts,
                                        eval_interval=0, eval_episodes=1, save_replay_buffer=False,
                                        save_path=os.path.join("runs", "speed", "spirl_sac.pt")))
    print(f"| maze (image prior, 2x256 critics), batch 256, 1 gradient step per high-level step | "
          f"{out['env_steps_per_s']:.0f} env steps/s collecting | {out['grad_steps_per_s']:.1f} gradient steps/s |")


if __name__ == "__main__":
    args = tyro.cli(Args)
    try:
        explore(args) if args.mode == "explore" else speed(args)
    except spirl_sac.SetupError as e:
        sys.exit(f"benchmarks/spirl_sac.py: error: {e}")
