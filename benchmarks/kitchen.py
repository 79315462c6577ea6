"""Kitchen env speed: env steps per second with uniform random actions (episodes of 280 steps, resets included).

    python benchmarks/kitchen.py --num-steps 5000

Also times the bare FrankaKitchen-v1 simulator underneath, so the cost of the D4RL layer (60-dim observation,
object noise, reward) is visible.
"""

import os
import platform
import sys
import time
from dataclasses import dataclass

import numpy as np
import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from envs import kitchen  # noqa: E402


@dataclass
class Args:
    num_steps: int = 5000
    """env steps to time (each configuration)"""
    seed: int = 0
    """seed of the env and of the random actions"""


def time_steps(env, num_steps, seed):
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    episodes, start = 0, time.perf_counter()
    for _ in range(num_steps):
        _, _, terminated, truncated, _ = env.step(rng.uniform(-1, 1, kitchen.ACTION_DIM).astype(np.float32))
        if terminated or truncated:
            env.reset()
            episodes += 1
    return num_steps / (time.perf_counter() - start), episodes


if __name__ == "__main__":
    args = tyro.cli(Args)
    import gymnasium as gym
    import gymnasium_robotics
    import mujoco

    gym.register_envs(gymnasium_robotics)
    start = time.perf_counter()
    env = kitchen.make_env(seed=args.seed)
    build_s = time.perf_counter() - start
    print(f"python {platform.python_version()}, mujoco {mujoco.__version__}, gymnasium-robotics "
          f"{gymnasium_robotics.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    print(f"make_env: {build_s:.2f} s")
    sps, episodes = time_steps(env, args.num_steps, args.seed)
    print(f"envs.kitchen (D4RL layer):     {sps:7.0f} steps/s over {args.num_steps} steps ({episodes} resets)")
    raw = gym.make("FrankaKitchen-v1", tasks_to_complete=list(kitchen.DOWNSTREAM_TASKS), max_episode_steps=280,
                   disable_env_checker=True)
    sps, episodes = time_steps(raw, args.num_steps, args.seed)
    print(f"FrankaKitchen-v1 (gym.make):   {sps:7.0f} steps/s over {args.num_steps} steps ({episodes} resets)")
