"""Training throughput of the spirl_vae.py skill model (sequences/s = skill windows per second).

    python benchmarks/vae.py                       # maze image model and kitchen state model, batch 16/64/256

Times the exact training step of spirl_vae.py (batch gather, eq. (4) losses, backward, RAdam step) on
random data of each env's shapes, so it needs no dataset: throughput does not depend on the values.
Maze: state (x, y, vx, vy), 2-dim actions, image prior over (6, 32, 32) views. Kitchen: 60-dim state, 9-dim
actions, state prior.
"""

import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import tyro

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import spirl_vae  # noqa: E402

MODELS = {"maze_image": (4, 2, [6, 32, 32]), "kitchen_state": (60, 9, None)}


@dataclass
class Args:
    batch_sizes: list[int] = field(default_factory=lambda: [16, 64, 256])
    """batch sizes to time"""
    threads: int = 1
    """torch CPU threads"""
    seconds: float = 10.0
    """timing window per configuration (after 5 warm-up steps)"""
    state_conditioned_decoder: bool = False
    """time the closed-loop variant instead"""
    seed: int = 0
    """seed of the random data and weights"""


def measure(state_dim, action_dim, image_shape, batch_size, seconds, closed_loop, horizon=10, n=20_000):
    rng = np.random.default_rng(0)
    data = {"states": torch.from_numpy(rng.normal(size=(n, state_dim)).astype(np.float32)),
            "actions": torch.from_numpy(rng.uniform(-1, 1, size=(n, action_dim)).astype(np.float32))}
    if image_shape is not None:
        data["images"] = torch.from_numpy(rng.integers(0, 256, size=(n, *image_shape), dtype=np.uint8))
    model = spirl_vae.SkillModel(state_dim, action_dim, image_shape=image_shape, state_conditioned_decoder=closed_loop)
    optimizer = torch.optim.RAdam(model.parameters(), lr=1e-3, betas=(0.9, 0.999))
    steps, start = -5, None
    while start is None or time.perf_counter() - start < seconds:
        if steps == 0:
            start = time.perf_counter()
        batch = spirl_vae.get_batch(data, rng.integers(0, n - horizon, size=batch_size), horizon)
        recon, kl, prior = spirl_vae.skill_model_losses(model, *batch)
        optimizer.zero_grad()
        (recon + 1e-2 * kl + prior).backward()
        optimizer.step()
        steps += 1
    elapsed = time.perf_counter() - start
    return steps / elapsed, steps * batch_size / elapsed


if __name__ == "__main__":
    args = tyro.cli(Args)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f}, closed loop: {args.state_conditioned_decoder}")
    print("| model | batch | steps/s | sequences/s |\n|-|-|-|-|")
    for name, (state_dim, action_dim, image_shape) in MODELS.items():
        for batch_size in args.batch_sizes:
            steps_per_s, seq_per_s = measure(state_dim, action_dim, image_shape, batch_size, args.seconds,
                                             args.state_conditioned_decoder)
            print(f"| {name} | {batch_size} | {steps_per_s:.1f} | {seq_per_s:.0f} |", flush=True)
