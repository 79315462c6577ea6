"""How close one spirl_sac.py gradient step comes to this CPU's arithmetic floor (issue: update speed).

    python benchmarks/spirl_sac_update.py                            # kitchen and maze configs, this checkout
    python benchmarks/spirl_sac_update.py --reference-commit c3d3c34  # and the same maths at an older commit

For each config (kitchen: 60-dim state prior, critics 256 x (input + 5 blocks + head); maze: the image prior
over two stacked 32x32 frames, critics with 2 blocks) it builds spirl_sac.py's networks at batch 256 and times
`sac_update` on one torch thread. The floor is the update's FLOPs (counted by torch's FlopCounterMode: every
matmul and convolution of the forward and backward passes that the update really computes) divided by the
rate at which this process multiplies 256 x 256 matrices on one thread. ratio = ms per update / floor.
With --reference-commit, spirl_sac.py of that commit is loaded from git and timed on the same configs (its
own FLOPs counted the same way), interleaved with the current one so that both see the same machine load.

    python benchmarks/spirl_sac_update.py --real-run-env-steps 8400 --reference-commit c3d3c34

also runs spirl_sac.py's whole training loop on the kitchen (a skill model of the paper's sizes with random
weights: speed does not depend on what the skills do) for that many env steps, the current code and the
reference commit back to back with the same settings, and reports their env steps/s.

    python benchmarks/spirl_sac_update.py --device cuda --real-run-env-steps 8400

times the same updates (and the real run, with spirl_sac.py's --cuda) on a GPU: ms per update and FLOPs; the
CPU's GEMM floor does not apply there.

Two references are timed with every repeat on the CPU, interleaved with the updates, against the same floor:
- "plain critic step": the simplest eager training step of the config's critic network (forward, backward and a
  fused Adam step of a regression onto fixed targets). Its ratio is what eager PyTorch gets from this network on
  this machine at this moment; the SPiRL step's ratio divided by it drifts far less with the machine's speed.
- "GEMMs replayed": every matmul and convolution the current update computes, forward and backward (recorded once,
  with shapes, strides and operand reuse), run again back to back with nothing else: what they alone cost.

    python benchmarks/spirl_sac_update.py --plot docs/spirl_sac_update_speed_session*_idle.json \
        docs/spirl_sac_update_speed_session44_references.json --plot-out docs/spirl_sac_update_speed_history.png

measures nothing: it draws the kitchen step's ratio (and the references' where a file has them) from earlier JSONs.
"""

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch
import tyro
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


@dataclass
class Args:
    configs: Tuple[str, ...] = ("kitchen", "maze")
    """which update configurations to measure"""
    reference_commit: Optional[str] = None
    """also time spirl_sac.py as it was at this git commit (the 'before' column)"""
    updates: int = 200
    """timed updates per repeat (after 20 warm-up updates)"""
    repeats: int = 5
    """repeats of the timing; the median repeat is reported"""
    batch_size: int = 256
    """high-level transitions per update (B.2)"""
    json_out: Optional[str] = None
    """write the results as JSON here"""
    plot: Tuple[str, ...] = ()
    """instead of measuring: JSON files of earlier runs to draw the kitchen ratios of (with --plot-out)"""
    plot_out: str = "docs/spirl_sac_update_speed_history.png"
    """where --plot draws its figure"""
    real_run_env_steps: int = 0
    """> 0: also time a real kitchen training run of this many env steps (current vs --reference-commit)"""
    real_run_warmup_env_steps: int = 1000
    """warm-up of the real runs in env steps (converted to each version's unit)"""
    device: str = "cpu"
    """cpu (one torch thread), or cuda: the networks, batches and the real run (--cuda) on the GPU"""


CONFIGS = {
    # state_dim, image_shape, critic hidden blocks n (the authors' configs), latent dim, prior layers
    "kitchen": dict(state_dim=60, image_shape=None, critic_blocks=5, latent_dim=10, prior_layers=6),
    "maze": dict(state_dim=4, image_shape=(6, 32, 32), critic_blocks=2, latent_dim=10, prior_layers=6),
}


def load_module(commit):
    """spirl_sac.py of the working tree (commit None) or of a git commit, as a module."""
    if commit is None:
        import spirl_sac
        return spirl_sac
    source = subprocess.run(["git", "show", f"{commit}:spirl_sac.py"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout
    path = os.path.join(tempfile.mkdtemp(), f"spirl_sac_{commit}.py")
    with open(path, "w") as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location(f"spirl_sac_{commit}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def gemm_gflops(seconds=1.0, n=256):
    """GFLOP/s of one thread multiplying n x n matrices (the size of the updates' largest matmuls)."""
    a, b, out = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)
    for _ in range(50):
        torch.mm(a, b, out=out)
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(50):
            torch.mm(a, b, out=out)
        count += 50
    return 2 * n ** 3 * count / (time.perf_counter() - t0) / 1e9


def build(module, config, batch_size, seed=0, device="cpu"):
    """Networks, optimizers and a batch for `module.sac_update`, whichever critic API the module has."""
    torch.manual_seed(seed)
    c = CONFIGS[config]
    prior = module.SkillPrior(c["latent_dim"], 128, c["prior_layers"], state_dim=c["state_dim"],
                              image_shape=c["image_shape"]).eval().requires_grad_(False).to(device)
    meta = {"latent_dim": c["latent_dim"], "hidden_dim": 128, "prior_layers": c["prior_layers"],
            "state_dim": c["state_dim"], "image_shape": c["image_shape"]}
    policy = module.make_policy(prior, meta, prior_init=True).to(device)
    # a replay buffer of random transitions: every timed update samples its batch, as in training
    rng = np.random.default_rng(seed)
    rb = module.ReplayBuffer(4 * batch_size, c["state_dim"], c["latent_dim"], np.zeros(c["state_dim"]),
                             np.ones(c["state_dim"]), c["image_shape"], **({"device": device} if device != "cpu" else {}))
    for _ in range(4 * batch_size):
        images = {}
        if c["image_shape"] is not None:
            images = {k: rng.integers(0, 256, c["image_shape"], dtype=np.uint8) for k in ("image", "next_image")}
        rb.add(state=rng.standard_normal(c["state_dim"]), next_state=rng.standard_normal(c["state_dim"]),
               skill=rng.uniform(-2, 2, c["latent_dim"]), reward=rng.random(), done=float(rng.random() < 0.05),
               **{k: 0.5 * rng.standard_normal(c["latent_dim"]) for k in
                  ("prior_mu", "prior_log_sigma", "next_prior_mu", "next_prior_log_sigma")}, **images)
    log_alpha = torch.zeros((), device=device, requires_grad=True)
    adam = getattr(module, "make_adam", lambda params, lr: torch.optim.Adam(params, lr=lr))  # as the module's main()
    # the same critic architecture in every version: input layer, n blocks, head (older code counted linear layers)
    critic_layers = c["critic_blocks"] if hasattr(module, "make_adam") else c["critic_blocks"] + 2
    critics = [module.Critic(c["state_dim"], c["latent_dim"], 256, critic_layers).to(device) for _ in range(4)]
    critics[2].load_state_dict(critics[0].state_dict())
    critics[3].load_state_dict(critics[1].state_dict())
    policy_optimizer, alpha_optimizer = adam(policy.parameters(), 3e-4), adam([log_alpha], 3e-4)
    q_optimizer = adam(list(critics[0].parameters()) + list(critics[1].parameters()), 3e-4)

    def update():
        batch = rb.sample(batch_size, rng)
        return module.sac_update(batch, policy, *critics, log_alpha, policy_optimizer, q_optimizer, alpha_optimizer,
                                 0.99, 5e-3, 5.0)
    return update


def plain_critic_step(module, config, batch_size, seed=0):
    """The simplest eager training step of the config's critic: 0.5 * squared error to fixed targets, backward,
    fused Adam (as spirl_sac.py's optimizers). What eager PyTorch gets from this network here, for reference."""
    torch.manual_seed(seed)
    c = CONFIGS[config]
    critic = module.Critic(c["state_dim"], c["latent_dim"], 256, c["critic_blocks"])
    optimizer = module.make_adam(critic.parameters(), 3e-4)
    state, skill = torch.randn(batch_size, c["state_dim"]), torch.randn(batch_size, c["latent_dim"])
    target = torch.randn(batch_size)

    def step():
        optimizer.zero_grad()
        (0.5 * (critic(state, skill) - target) ** 2).mean().backward()
        optimizer.step()
    return step


class RecordMatmuls(TorchDispatchMode):
    """Records every mm / addmm / convolution below autograd (forward and backward): the op, each tensor operand's
    shape, strides, offset and storage, and the other arguments."""
    OPS = (torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.convolution.default,
           torch.ops.aten.convolution_backward.default)

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.OPS:
            operands = [(a.shape, a.stride(), a.storage_offset(), a.untyped_storage().data_ptr(),
                         a.untyped_storage().nbytes() // a.element_size(), a.dtype) if isinstance(a, torch.Tensor)
                        else a for a in args]
            self.calls.append((func, operands, kwargs))
        return func(*args, **kwargs)


def matmul_replay(update):
    """The update's matmuls and convolutions alone: recorded from one call of `update`, then replayed on random operands
    of the same dtypes that share storage where the update's did (a weight in its forward and backward products, an
    activation reused)."""
    with RecordMatmuls() as recorder:
        update()
    buffers, calls = {}, []
    for func, operands, kwargs in recorder.calls:
        args = []
        for operand in operands:
            if isinstance(operand, tuple):
                shape, stride, offset, pointer, numel, dtype = operand
                if buffers.get(pointer, torch.empty(0)).numel() < numel:
                    buffers[pointer] = torch.randn(numel, dtype=dtype)
                operand = buffers[pointer].as_strided(shape, stride, offset)
            args.append(operand)
        calls.append((func, args, kwargs))

    def replay():
        for func, args, kwargs in calls:
            func(*args, **kwargs)
    return replay


def count_flops(update):
    with FlopCounterMode(display=False) as counter:
        update()
    return counter.get_total_flops()


def time_updates(update, n, device="cpu"):
    if device != "cpu":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        update()
    if device != "cpu":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n


def write_random_kitchen_skill_model(path):
    """A skill model of the paper's sizes for the kitchen (H 10, z 10, LSTM 128, prior 6 x 128), random weights."""
    import envs
    import spirl_vae

    env = envs.make_env("kitchen", seed=0)
    state_dim, action_dim = env.observation_space["state"].shape[0], env.action_space.shape[0]
    model = spirl_vae.SkillModel(state_dim, action_dim, 10, hidden_dim=128, prior_layers=6)
    torch.save({"format": "spirl-skill-model-v1", "env": "kitchen", "args": {}, "prior_input": "state",
                "state_dim": state_dim, "image_shape": None, "action_dim": action_dim, "skill_horizon": 10,
                "latent_dim": 10, "hidden_dim": 128, "prior_layers": 6, "state_conditioned_decoder": False,
                "state_mean": np.zeros(state_dim, np.float32), "state_std": np.ones(state_dim, np.float32),
                "action_low": env.action_space.low, "action_high": env.action_space.high,
                "data_source": "random weights (benchmark)", "model": model.state_dict(), "step": 0}, path)
    env.close()


def real_runs(args, modules):
    """env steps/s of spirl_sac.py's training loop on the kitchen, each version in turn, same settings."""
    workdir = tempfile.mkdtemp()
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        write_random_kitchen_skill_model("skill.pt")
        results = {}
        for name, module in modules.items():
            new = hasattr(module, "make_adam")  # warm-up in skills and critic blocks (else env steps, linear layers)
            run_args = module.Args(env="kitchen", skill_model="skill.pt", total_env_steps=args.real_run_env_steps,
                                   learning_starts=args.real_run_warmup_env_steps // (10 if new else 1),
                                   critic_layers=5 if new else 7, eval_interval=0, eval_episodes=1,
                                   save_path=f"{name.replace(' ', '_')}/sac.pt", save_replay_buffer=False,
                                   **({"cuda": True} if args.device == "cuda" else {}))
            t0 = time.perf_counter()
            out = module.main(run_args)
            wall = time.perf_counter() - t0
            results[name] = {"env_steps": out["global_step"], "grad_steps": out["grad_steps"], "wall_s": wall,
                             "env_steps_per_s_overall": out["global_step"] / wall,
                             "env_steps_per_s_collecting": out["env_steps_per_s"],
                             "grad_steps_per_s_updating": out["grad_steps_per_s"]}
            print(f"real kitchen run {name:>18s}: {results[name]}", flush=True)
        return results
    finally:
        os.chdir(cwd)


def plot_history(paths, out):
    """The kitchen step's ratio to its floor in each JSON (in the order given), the plain critic step's and the
    replayed GEMMs' where the file has them, and the 1.5x goal."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = []
    for path in paths:
        with open(path) as f:
            kitchen = json.load(f)["configs"]["kitchen"]
        label = os.path.basename(path).replace("spirl_sac_update_speed_", "").replace(".json", "").replace("_", " ")
        rows.append((label, kitchen["current"]["ratio_to_floor"],
                     kitchen.get("plain critic step", {}).get("ratio_to_own_floor"),
                     kitchen.get("GEMMs replayed", {}).get("ratio_to_own_floor")))
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(rows) + 2), 4))
    ax.plot(x, [r[1] for r in rows], "o", color="C0", label="SPiRL kitchen step")
    for column, color, name in ((2, "C1", "plain critic step (same runs)"), (3, "C2", "its GEMMs replayed (same runs)")):
        points = [(i, r[column]) for i, r in enumerate(rows) if r[column] is not None]
        if points:
            ax.plot(*zip(*points), "s", color=color, label=name)
    ax.axhline(1.5, color="k", linestyle="--", linewidth=1, label="goal 1.5x")
    ax.set_xticks(x)
    ax.set_xticklabels([r[0] for r in rows], rotation=45, ha="right")
    ax.set_ylabel("ratio: ms / (FLOPs / GEMM rate)")
    ax.set_title("kitchen gradient step vs this CPU's arithmetic floor (medians of repeats)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


def main(args):
    if args.plot:
        plot_history(args.plot, args.plot_out)
        return None
    torch.set_num_threads(1)
    modules = {"current": load_module(None)}
    if args.reference_commit:
        modules[f"at {args.reference_commit}"] = load_module(args.reference_commit)
    results = {"load_average_1min": os.getloadavg()[0], "torch": torch.__version__, "batch_size": args.batch_size,
               "device": args.device, "configs": {}}
    if args.device != "cpu":
        results["gpu"] = torch.cuda.get_device_name()
    for config in args.configs:
        updates = {name: build(module, config, args.batch_size, device=args.device) for name, module in modules.items()}
        flops = {name: count_flops(update) for name, update in updates.items()}
        for update in updates.values():
            time_updates(update, 20, args.device)
        references = {}  # CPU only: what eager PyTorch gets here from the critic alone; the update's matmuls and convs alone
        if args.device == "cpu":
            references = {"plain critic step": plain_critic_step(modules["current"], config, args.batch_size),
                          "GEMMs replayed": matmul_replay(updates["current"])}
            for name, step in references.items():
                flops[name] = count_flops(step)
                time_updates(step, 20)
        times = {name: [] for name in flops}
        rates = []
        for _ in range(args.repeats):  # interleaved, so every version sees the same load
            if args.device == "cpu":  # the floor's GEMM rate, a CPU measure
                rates.append(gemm_gflops(0.5))
            for name, update in updates.items():
                times[name].append(time_updates(update, args.updates, args.device))
            for name, step in references.items():
                times[name].append(time_updates(step, args.updates))
        if args.device != "cpu":  # no CPU floor on a GPU: the time and the FLOPs it got through
            row = {}
            for name in updates:
                ms = 1e3 * float(np.median(times[name]))
                row[name] = {"ms_per_update": ms, "gflop_per_update": flops[name] / 1e9,
                             "achieved_gflops": flops[name] / (ms * 1e6)}
                print(f"{config:8s} {name:>18s}: {ms:6.2f} ms/update on {args.device} | "
                      f"{flops[name] / 1e9:.2f} GFLOP/update | {flops[name] / (ms * 1e6):.0f} GFLOP/s", flush=True)
            results["configs"][config] = row
            continue
        rate = float(np.median(rates))
        floor_flops = min(flops[name] for name in updates)  # the fewest FLOPs any version needs for the same maths
        row = {"gemm_gflops": rate, "floor_ms": 1e3 * floor_flops / (rate * 1e9)}
        for name in updates:
            ms = 1e3 * float(np.median(times[name]))
            row[name] = {"ms_per_update": ms, "gflop_per_update": flops[name] / 1e9,
                         "ms_at_own_flops": 1e3 * flops[name] / (rate * 1e9),
                         "ratio_to_floor": ms / row["floor_ms"]}
            print(f"{config:8s} {name:>18s}: {ms:6.1f} ms/update | {flops[name] / 1e9:.2f} GFLOP/update | "
                  f"GEMM {rate:.0f} GFLOP/s | floor {row['floor_ms']:.1f} ms | ratio {ms / row['floor_ms']:.2f}", flush=True)
        for name in references:  # each against its own FLOPs at the same GEMM rate
            ms = 1e3 * float(np.median(times[name]))
            own_floor = 1e3 * flops[name] / (rate * 1e9)
            row[name] = {"ms": ms, "gflop": flops[name] / 1e9, "ratio_to_own_floor": ms / own_floor,
                         "share_of_update_flops": flops[name] / flops["current"]}
            print(f"{config:8s} {name:>18s}: {ms:6.1f} ms | {flops[name] / 1e9:.2f} GFLOP "
                  f"({100 * flops[name] / flops['current']:.0f} % of the update's) | ratio {ms / own_floor:.2f}", flush=True)
        if references:  # how far the update is from what eager PyTorch gets from its critic alone, on this machine now
            row["current_ratio_over_plain_critic_step"] = (row["current"]["ratio_to_floor"]
                                                          / row["plain critic step"]["ratio_to_own_floor"])
            print(f"{config:8s} update's ratio / plain critic step's ratio: "
                  f"{row['current_ratio_over_plain_critic_step']:.2f}", flush=True)
        results["configs"][config] = row
    if args.real_run_env_steps > 0:
        results["real_kitchen_runs"] = real_runs(args, modules)
    results["load_average_1min_end"] = os.getloadavg()[0]
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main(tyro.cli(Args))
