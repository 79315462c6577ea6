"""Maze: env speed with and without the local views, and data-collection speed.

    python benchmarks/maze.py --num-steps 5000 --trajectories 30

1. Env steps/s of the downstream 40x40 maze with uniformly random actions: with the (6, 32, 32) image
   observation (numpy rendering of two stacked local views) and state-only, plus the env build time.
2. Data collection (BFS planner + PD controller, new random 20x20 layout per trajectory, images on, as
   ``python -m envs.maze`` does it): trajectories/s, steps/s, goal-reaching rate, mean length.
"""

import os
import platform
import sys
import time
from dataclasses import dataclass

import numpy as np
import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from envs import maze  # noqa: E402


@dataclass
class Args:
    num_steps: int = 5000
    """env steps to time per observation setting"""
    trajectories: int = 30
    """planner trajectories to time"""
    seed: int = 0
    """seed of the random actions and of the trajectories"""


def env_speed(images: bool, num_steps: int, seed: int):
    from gymnasium_robotics.envs.maze import point_maze  # noqa: F401  (import time is not build time)

    start = time.perf_counter()
    env = maze.make_env(seed=seed, images=images)
    build = time.perf_counter() - start
    env.reset()
    start = time.perf_counter()
    for _ in range(num_steps):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            env.reset()
    return num_steps / (time.perf_counter() - start), build


def collection_speed(trajectories: int, seed: int):
    start = time.perf_counter()
    runs = [maze.collect_trajectory(np.random.default_rng([seed, i])) for i in range(trajectories)]
    seconds = time.perf_counter() - start
    steps = sum(len(run["states"]) for run in runs)
    return {"traj_per_s": trajectories / seconds, "steps_per_s": steps / seconds,
            "reached": np.mean([run["reached"] for run in runs]), "length": steps / trajectories}


if __name__ == "__main__":
    args = tyro.cli(Args)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}; python {platform.python_version()}")
    for images in (True, False):
        rate, build = env_speed(images, args.num_steps, args.seed)
        print(f"downstream env, {'image + state' if images else 'state only   '}: {rate:7.0f} steps/s "
              f"(env build {build:.2f} s)")
    c = collection_speed(args.trajectories, args.seed)
    print(f"data collection (images on): {c['traj_per_s']:.2f} trajectories/s, {c['steps_per_s']:.0f} steps/s, "
          f"{c['reached']:.0%} reached the goal, mean length {c['length']:.0f} steps")
    print(f"  -> paper's 85000 trajectories: about {85000 / c['traj_per_s'] / 3600:.1f} h on one core")
