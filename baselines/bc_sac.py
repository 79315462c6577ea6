"""Behavioural cloning, then SAC finetuning: the "BC + SAC" baseline of SPiRL, section 4.1.

Paper: "Accelerating Reinforcement Learning with Learned Skill Priors" (Pertsch, Lee, Lim, CoRL 2020).
A tanh-squashed Gaussian policy is fitted by maximum likelihood to the (observation, action) pairs of the
offline dataset that SPiRL learns its skills from, then finetuned on the downstream task with standard
max-entropy SAC (appendix B.2 hyperparameters) starting from those weights.

    python baselines/bc_sac.py --env kitchen                       # dataset from envs.load_dataset("kitchen")
    python baselines/bc_sac.py --env Pendulum-v1 --dataset d.npz   # any .npz with "states" and "actions"
    python baselines/bc_sac.py --evaluate runs/<run>/agent.pt --eval-episodes 8  # episodes of a saved policy

Inputs: the critics see obs["state"]; the policy sees what SPiRL's skill prior sees in that env (--obs
auto: the stacked 32x32 frames in maze and block stacking, as the paper's baselines, whose training data
come from other layouts and block counts; the state in kitchen), or --obs state / image.
Warm-up steps are collected with the cloned policy, not uniformly at random, so that the buffer starts
with the behaviour the finetuning begins from.
"""

import os
import random
import sys
import time
from dataclasses import dataclass
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root, for `import envs`

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro
from torch.utils.tensorboard import SummaryWriter

import envs

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0  # policy log std range (CleanRL / SpinningUp)
ACTION_EPS = 1e-4  # dataset actions at the bounds are pulled inside by this much before atanh


@dataclass
class Args:
    env: str = "kitchen"
    """maze, block_stacking or kitchen; or a gymnasium env id with a Box action space (e.g. Pendulum-v1)"""
    obs: str = "auto"
    """what the policy sees: "state", "image" (the two stacked 32x32 frames) or "auto" (the env's DEFAULT_PRIOR_INPUT, what SPiRL's prior sees; state for gymnasium ids). Critics always see the state"""
    goal_radius: Optional[float] = None
    """maze only: reward at every step within this distance of the goal; None: 1.0, the authors' value at the
    paper's time (2.0 is their later value; spirl_sac.py has the same flag)"""
    sparse_reward: bool = False
    """block_stacking only: the authors' sparse reward (the tower's height only; spirl_sac.py has the same flag)"""
    dataset: str = "auto"
    """offline data: "auto" or a path given to envs.load_dataset, or an .npz file with "states" and "actions" arrays"""
    bc_steps: int = 10_000
    """gradient steps of behavioural cloning before RL"""
    bc_lr: float = 1e-3
    """Adam learning rate of behavioural cloning"""
    bc_batch_size: int = 256
    """(observation, action) pairs per behavioural-cloning step"""
    seed: int = 1
    """seed of python, numpy, torch and the env"""
    total_timesteps: int = 300_000
    """environment steps to train for (spirl_sac.py's default, for overlaid curves)"""
    buffer_size: int = 1_000_000
    """replay buffer capacity (appendix B.2: 1e6)"""
    gamma: float = 0.99
    """discount factor (appendix B.2)"""
    tau: float = 5e-3
    """target network update rate (appendix B.2)"""
    bootstrap_at_time_limit: bool = True
    """at a time-limit truncation the Q-target bootstraps from the last observation (the standard choice: the state
    did not end); --no-bootstrap-at-time-limit stores it as a terminal, as the authors' code does"""
    batch_size: int = 256
    """replay batch size (appendix B.2)"""
    learning_starts: int = 5000
    """warm-up steps, collected with the cloned policy, that fill the buffer before training (appendix B.2)"""
    policy_lr: float = 3e-4
    """Adam learning rate of the policy (appendix B.2)"""
    q_lr: float = 3e-4
    """Adam learning rate of the critics (appendix B.2; CleanRL uses 1e-3)"""
    alpha_lr: float = 3e-4
    """Adam learning rate of the entropy temperature (appendix B.2; CleanRL uses q_lr)"""
    policy_frequency: int = 1
    """the policy and alpha are updated this many times every this many steps (1: standard SAC; CleanRL: 2)"""
    target_entropy: Optional[float] = None
    """entropy target of the alpha auto-tuning; None: -action_dim (Haarnoja et al.)"""
    hidden_dim: int = 256
    """units of every hidden layer of policy and critics"""
    policy_layers: int = 5
    """hidden layers of the policy MLP (authors' flat-SAC config: 5 x 256)"""
    critic_layers: int = 2
    """hidden layers of each critic MLP (authors' flat-SAC config: 2 x 256)"""
    critic_layer_norm: bool = False
    """LayerNorm after every hidden Linear of the critics, as spirl_sac.py's --critic-layer-norm (not the paper's nor
    the authors'): the lever that keeps spirl_sac.py's block-stacking critics from diverging; pass it here too when
    comparing with SPiRL runs that use it"""
    torch_threads: int = 1
    """CPU threads for torch (small networks: 1 is fastest on a shared machine)"""
    log_interval: int = 1000
    """environment steps between progress lines and loss scalars"""
    exp_name: str = "bc_sac"
    """name of the experiment (first part of the run name under runs/)"""
    save_model: bool = True
    """write the cloned policy (bc_policy.pt) and checkpoints (agent.pt: policy, critics, optimizers, alpha, rng; periodic and final) to <run_dir>/"""
    run_dir: Optional[str] = None
    """directory of the tensorboard events and the checkpoint; None: runs/<run_name> (with --resume: the checkpoint's directory)"""
    checkpoint_interval: int = 50_000
    """env steps between periodic checkpoints, each written at the next episode end (atomically)"""
    save_replay_buffer: bool = True
    """also save the replay buffer (<checkpoint>.replay.npz) so that --resume continues exactly"""
    resume: Optional[str] = None
    """continue the run of this checkpoint (agent.pt); pass the run's other flags unchanged, --total-timesteps may grow"""
    evaluate: Optional[str] = None
    """only run --eval-episodes episodes of this checkpoint's policy (agent.pt) on its run's env and task, print each
    episode's return and task metric, write <checkpoint>_evaluate.npz (each episode's states), then exit"""
    eval_episodes: int = 2
    """episodes of --evaluate, seeded --seed + 10 000 + k as spirl_sac.py's evaluations"""
    eval_deterministic: bool = False
    """--evaluate with the mean action; default: actions sampled from pi(a|s), as in training"""
    track: bool = False
    """log to Weights & Biases too (pip install wandb; WANDB_MODE=offline works without a network)"""
    wandb_project_name: str = "spirl"
    """the W&B project"""
    wandb_entity: Optional[str] = None
    """the W&B entity (team); None: your default"""


def make_env(name: str, seed: int, obs_mode: str = "auto", goal_radius: Optional[float] = None,
             sparse_reward: bool = False):
    """A project env (obs dict with "state", maybe "image") or a gymnasium Box env whose observation is wrapped
    into {"state": obs}. Returns the env, the name of its task metric in info (None for gymnasium envs) and
    the obs key the policy reads ("state" or "image")."""
    if obs_mode not in ("auto", "state", "image"):
        raise SystemExit(f"--obs {obs_mode!r}: choose auto, state or image")
    if goal_radius is not None and (name != "maze" or goal_radius <= 0):
        raise SystemExit(f"--goal-radius {goal_radius}: only the maze has a goal radius, and it must be > 0")
    if sparse_reward and name != "block_stacking":
        raise SystemExit(f"--sparse-reward: only block_stacking has a sparse reward variant, not {name!r}")
    if name in envs.ENV_NAMES:
        module = envs.env_module(name)
        options = {} if goal_radius is None else {"goal_radius": goal_radius}
        if sparse_reward:
            options["reward"] = "sparse"
        return envs.make_env(name, seed=seed, **options), module.METRIC, module.DEFAULT_PRIOR_INPUT if obs_mode == "auto" else obs_mode
    if obs_mode == "image":
        raise SystemExit(f"--obs image needs one of {', '.join(envs.ENV_NAMES)}; gymnasium env {name!r} has no stacked frames")
    try:
        env = gym.make(name)
    except gym.error.Error as error:
        raise SystemExit(f"unknown env {name!r} ({error}): use one of {', '.join(envs.ENV_NAMES)} or a gymnasium id like Pendulum-v1")
    if not isinstance(env.action_space, gym.spaces.Box) or not isinstance(env.observation_space, gym.spaces.Box):
        raise SystemExit(f"env {name!r} needs Box observation and action spaces for flat SAC")
    state_space = gym.spaces.Box(-np.inf, np.inf, env.observation_space.shape, np.float32)
    env = gym.wrappers.TransformObservation(env, lambda obs: {"state": np.asarray(obs, np.float32)}, gym.spaces.Dict(state=state_space))
    return env, None, "state"


def mlp(in_dim, out_dim, hidden_dim, hidden_layers, layer_norm=False):
    layers = []
    for _ in range(hidden_layers):  # layer_norm: a LayerNorm between each hidden Linear and its activation
        layers += [nn.Linear(in_dim, hidden_dim), *([nn.LayerNorm(hidden_dim)] if layer_norm else []), nn.ReLU()]
        in_dim = hidden_dim
    return nn.Sequential(*layers, nn.Linear(in_dim, out_dim))


class SoftQNetwork(nn.Module):
    """Q(s, a): MLP on the concatenated state and (squashed) action."""

    def __init__(self, state_dim, action_dim, hidden_dim, hidden_layers, layer_norm=False):
        super().__init__()
        self.net = mlp(state_dim + action_dim, 1, hidden_dim, hidden_layers, layer_norm)

    def forward(self, state, action):
        return self.net(torch.cat([state, action], dim=-1))


def nhwc_float(frames):
    """uint8 frames (B, C, H, W) -> a fresh float32 copy with channels-last strides (what the convolutions run
    fastest on; a replay batch already has them, so this is a plain conversion); fresh, so the / 255 can run in
    place (one image-sized tensor per pass instead of two)."""
    return torch.empty_like(frames, dtype=torch.float32, memory_format=torch.channels_last).copy_(frames)


class Actor(nn.Module):
    """pi(a|o): Gaussian over pre-tanh actions u; a = tanh(u) * action_scale + action_bias.
    o is the state (B, state_dim), standardised with the offline data's mean and std (buffers saved with the
    weights), or the stacked frames (B, 6, 32, 32) uint8 through appendix B.1's conv encoder."""

    def __init__(self, obs_shape, action_low, action_high, hidden_dim, hidden_layers, state_mean=None, state_std=None):
        super().__init__()
        action_dim = len(action_low)
        self.image_encoder, in_dim = None, obs_shape[0]
        if len(obs_shape) == 3:  # appendix B.1: 3 conv layers, kernel 3, (8, 16, 32) channels
            self.image_encoder = nn.Sequential(
                nn.Conv2d(obs_shape[0], 8, 3, stride=2, padding=1), nn.ReLU(),
                nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
                nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten())
            self.image_encoder.to(memory_format=torch.channels_last)  # NHWC convolutions: faster on a CPU, same maths
            in_dim = self.image_encoder(torch.zeros(1, *obs_shape)).shape[1]
        self.net = mlp(in_dim, 2 * action_dim, hidden_dim, hidden_layers)
        self.register_buffer("action_scale", torch.as_tensor((action_high - action_low) / 2.0, dtype=torch.float32))
        self.register_buffer("action_bias", torch.as_tensor((action_high + action_low) / 2.0, dtype=torch.float32))
        state_dim = obs_shape[0] if self.image_encoder is None else 1
        self.register_buffer("state_mean", torch.zeros(state_dim) if state_mean is None else torch.as_tensor(state_mean))
        self.register_buffer("state_std", torch.ones(state_dim) if state_std is None else torch.as_tensor(state_std))

    def forward(self, obs):
        """Mean and log std of the pre-tanh Gaussian, each (B, action_dim)."""
        if self.image_encoder is not None:
            features = self.image_encoder(nhwc_float(obs).div_(255.0))
        else:
            features = (obs - self.state_mean) / self.state_std
        mean, log_std = self.net(features).chunk(2, dim=-1)
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (torch.tanh(log_std) + 1)  # smooth clamp
        return mean, log_std

    def get_action(self, obs):
        """A reparameterised sample, its log-likelihood (B, 1) with the tanh change of variables, the mean action."""
        mean, log_std = self(obs)
        normal = torch.distributions.Normal(mean, log_std.exp())
        u = normal.rsample()
        squashed = torch.tanh(u)
        action = squashed * self.action_scale + self.action_bias
        # log pi(a|s) = log N(u) - sum log |da/du|, da/du = scale * (1 - tanh(u)^2)
        log_prob = normal.log_prob(u) - torch.log(self.action_scale * (1 - squashed.pow(2)) + 1e-6)
        return action, log_prob.sum(-1, keepdim=True), torch.tanh(mean) * self.action_scale + self.action_bias


def bc_loss(actor, obs, actions):
    """Behavioural cloning: mean negative log-likelihood of the dataset actions under the squashed policy,
    -log pi(a|s) = -log N(u; mu, sigma) + sum log |da/du| with u = atanh((a - bias) / scale).
    Its minimiser is the maximum-likelihood tanh-Gaussian, so SAC can start from exactly this policy."""
    mean, log_std = actor(obs)
    squashed = ((actions - actor.action_bias) / actor.action_scale).clamp(-1 + ACTION_EPS, 1 - ACTION_EPS)
    u = torch.atanh(squashed)
    log_prob = torch.distributions.Normal(mean, log_std.exp()).log_prob(u)
    log_prob = log_prob - torch.log(actor.action_scale * (1 - squashed.pow(2)))
    return -log_prob.sum(-1).mean()


def load_offline_data(env_name, path, obs_key, obs_shape, action_dim):
    """(policy inputs, actions) of the offline dataset: states (N, state_dim) float32 or stacked frames
    (N, 6, 32, 32) uint8, and actions (N, action_dim) float32, checked against the env's dimensions."""
    try:
        if path.endswith(".npz"):
            with np.load(path) as data:
                data = {key: data[key] for key in data.files}
        elif env_name in envs.ENV_NAMES:
            data = envs.load_dataset(env_name, path)
        else:
            raise SystemExit(f"env {env_name!r} has no default dataset: pass --dataset FILE.npz with 'states' and 'actions'")
    except (OSError, KeyError, ValueError) as error:
        raise SystemExit(f"cannot load dataset {path!r} for env {env_name!r}: {error} (check --dataset)")
    data_key = {"state": "states", "image": "images"}[obs_key]
    if data_key not in data or "actions" not in data:
        raise SystemExit(f"dataset {path!r} needs {data_key!r} and 'actions' arrays for --obs {obs_key}, it has {sorted(data)}")
    inputs, actions = data[data_key], np.asarray(data["actions"], np.float32)
    # np.asarray, not .astype: the maze's images are a StackedViews (frames stacked on demand, memory-mapped
    # for the default data) that only turns into an array through np.asarray
    inputs = np.asarray(inputs, np.float32 if obs_key == "state" else np.uint8)
    if inputs.shape[1:] != tuple(obs_shape) or actions.ndim != 2 or actions.shape[1] != action_dim:
        raise SystemExit(f"dataset {path!r} has {data_key} {inputs.shape} and actions {actions.shape}, the env needs "
                         f"(N, {', '.join(map(str, obs_shape))}) and (N, {action_dim}): was it made for another env?")
    return inputs, actions


def behavioural_cloning(actor, inputs, actions, steps, lr, batch_size, rng, writer=None):
    """Fit the actor to the offline (state, action) pairs by maximum likelihood (bc_loss). Returns the last loss."""
    optimizer = torch.optim.Adam(actor.parameters(), lr=lr)
    inputs, actions = torch.as_tensor(inputs), torch.as_tensor(actions)
    for step in range(1, steps + 1):
        idx = torch.as_tensor(rng.integers(0, len(inputs), batch_size))
        loss = bc_loss(actor, inputs[idx], actions[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if writer is not None and (step % 500 == 0 or step == steps):
            writer.add_scalar("pretrain/bc_nll", loss.item(), step)
            print(f"bc step {step}/{steps}: nll {loss.item():.3f}", flush=True)
    return loss.item()


class ReplayBuffer:
    """Uniform replay of (o, s, a, r, o', s', terminated): o what the policy sees, s the critics' state.
    numpy arrays allocated once (their pages are touched lazily). Frames (C, H, W) are stored (H, W, C), so a
    sampled batch is a channels-last (B, C, H, W) view that the convolutions take without a transposing copy."""

    def __init__(self, capacity, obs_shape, obs_dtype, state_dim, action_dim):
        self.frames = len(obs_shape) == 3
        stored_shape = (*obs_shape[1:], obs_shape[0]) if self.frames else obs_shape
        self.obs = np.zeros((capacity, *stored_shape), obs_dtype)
        self.next_obs = np.zeros((capacity, *stored_shape), obs_dtype)
        self.states = np.zeros((capacity, state_dim), np.float32)
        self.next_states = np.zeros((capacity, state_dim), np.float32)
        self.actions = np.zeros((capacity, action_dim), np.float32)
        self.rewards = np.zeros((capacity, 1), np.float32)
        self.terminated = np.zeros((capacity, 1), np.float32)
        self.capacity, self.pos, self.size = capacity, 0, 0

    def add(self, obs, state, action, reward, next_obs, next_state, terminated):
        if self.frames:
            obs, next_obs = np.moveaxis(obs, 0, -1), np.moveaxis(next_obs, 0, -1)
        i = self.pos
        self.obs[i], self.states[i], self.actions[i], self.rewards[i] = obs, state, action, reward
        self.next_obs[i], self.next_states[i], self.terminated[i] = next_obs, next_state, terminated
        self.pos = (self.pos + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size, rng):
        idx = rng.integers(0, self.size, batch_size)
        arrays = (self.obs, self.states, self.actions, self.rewards, self.next_obs, self.next_states, self.terminated)
        batch = [torch.as_tensor(x[idx]) for x in arrays]
        if self.frames:  # (B, H, W, C) -> (B, C, H, W) with channels-last strides: a view
            batch[0], batch[4] = batch[0].permute(0, 3, 1, 2), batch[4].permute(0, 3, 1, 2)
        return batch

    KEYS = ("obs", "next_obs", "states", "next_states", "actions", "rewards", "terminated")

    def state_dict(self):
        return {"pos": self.pos, "size": self.size, **{key: getattr(self, key)[: self.size] for key in self.KEYS}}

    def load_state_dict(self, saved):
        size = int(saved["size"])
        if size > self.capacity:
            raise SystemExit(f"the saved replay buffer holds {size} transitions, more than this run's capacity {self.capacity}: "
                             f"raise --total-timesteps or --buffer-size")
        for key in self.KEYS:
            array = getattr(self, key)
            if key in ("obs", "next_obs") and saved[key].shape[1:] != array.shape[1:]:
                array[:size] = np.moveaxis(saved[key], 1, -1)  # frames saved (C, H, W) before they were stored (H, W, C)
            else:
                array[:size] = saved[key]
        # a buffer saved full (its run's whole budget) continues after its rows when this run's buffer is larger
        self.size, self.pos = size, size % self.capacity if size < self.capacity else int(saved["pos"]) % self.capacity


def soft_q_target(rewards, terminated, next_q, next_log_prob, alpha, gamma):
    """SAC Bellman target r + gamma * (1 - terminated) * (min_i Q_target_i(s', a') - alpha * log pi(a'|s')).
    terminated = 1 only where the target must not bootstrap: a terminal, or a time limit with
    --no-bootstrap-at-time-limit."""
    return rewards + gamma * (1.0 - terminated) * (next_q - alpha * next_log_prob)


def entropy_alpha_loss(log_alpha, log_prob, target_entropy):
    """SAC temperature loss: alpha rises when the policy entropy -log pi falls below the target."""
    return (-log_alpha.exp() * (log_prob.detach() + target_entropy)).mean()


CHECKPOINT_FORMAT = "baselines-bc-sac-v1"
# flags that may differ between a run and its --resume; every other flag must be the same
RESUME_MAY_CHANGE = {"total_timesteps", "resume", "run_dir", "log_interval", "checkpoint_interval", "save_replay_buffer",
                     "torch_threads", "track", "wandb_project_name", "wandb_entity"}


def load_resume_checkpoint(path, args):
    """The checkpoint of an interrupted run, checked against this run's flags."""
    if not os.path.isfile(path):
        raise SystemExit(f"--resume {path}: no such checkpoint (this script writes <run_dir>/agent.pt)")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise SystemExit(f"--resume {path}: not a resumable checkpoint of this script ({CHECKPOINT_FORMAT})")
    changed = [key for key, value in ckpt["args"].items() if key not in RESUME_MAY_CHANGE and getattr(args, key, value) != value]
    if changed:
        raise SystemExit(f"--resume {path}: the run was started with " + ", ".join(
            f"--{key.replace('_', '-')} {ckpt['args'][key]}" for key in changed) + ": pass the run's flags unchanged")
    return ckpt


def save_atomic(obj, path, save=torch.save):
    """Write to a temporary file, then rename it: a crash never leaves a half-written file."""
    save(obj, path + ".tmp")
    os.replace(path + ".tmp", path)


def save_npz(arrays, path):
    with open(path, "wb") as f:  # a file object, so numpy does not append ".npz" to the temporary name
        np.savez(f, **arrays)


def rng_state(rng, env):
    """Every random stream of a run, so that --resume continues it exactly."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "generator": rng.bit_generator.state, "action_space": env.action_space.np_random.bit_generator.state}


def set_rng_state(state, rng, env):
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    rng.bit_generator.state = state["generator"]
    env.action_space.np_random.bit_generator.state = state["action_space"]


def evaluate_checkpoint(args):
    """--evaluate: episodes of a saved policy on the env and task of its run (--goal-radius, if given, overrides the
    maze's). Returns the episodes' returns, task metrics (nan for a gymnasium env) and the path of their states."""
    if args.eval_episodes < 1:
        raise SystemExit(f"error: --eval-episodes must be >= 1, got {args.eval_episodes}")
    torch.set_num_threads(args.torch_threads)  # as in training: small networks run fastest on one thread
    if not os.path.isfile(args.evaluate):
        raise SystemExit(f"--evaluate {args.evaluate}: no such checkpoint (this script writes <run_dir>/agent.pt)")
    ckpt = torch.load(args.evaluate, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise SystemExit(f"--evaluate {args.evaluate}: not a checkpoint of this script ({CHECKPOINT_FORMAT}) but "
                         f"{ckpt.get('format') if isinstance(ckpt, dict) else type(ckpt).__name__!r}: evaluate it with the "
                         f"script that wrote it")
    saved = ckpt["args"]
    out = os.path.splitext(args.evaluate)[0] + "_evaluate.npz"
    try:
        envs.ensure_writable(out, "evaluation output")
    except envs.UnwritablePathError as e:
        raise SystemExit(f"error: {e}")
    goal_radius = saved.get("goal_radius") if args.goal_radius is None else args.goal_radius
    env, metric, obs_key = make_env(saved["env"], args.seed + 10_000, saved["obs"], goal_radius,
                                    saved.get("sparse_reward", False))
    obs, _ = env.reset(seed=args.seed + 10_000)
    actor = Actor(obs[obs_key].shape, env.action_space.low.astype(np.float32), env.action_space.high.astype(np.float32),
                  saved["hidden_dim"], saved["policy_layers"])
    actor.load_state_dict(ckpt["actor"])
    torch.manual_seed(args.seed + 10_000)  # the sampled actions: the same episodes for the same --seed
    returns, metrics, trajectories = [], [], []
    for episode in range(args.eval_episodes):
        obs, _ = env.reset(seed=args.seed + 10_000 + episode)
        states, episode_return, done, info = [obs["state"]], 0.0, False, {}
        while not done:
            with torch.no_grad():
                action, _, mean_action = actor.get_action(torch.as_tensor(obs[obs_key]).unsqueeze(0))
            obs, reward, terminated, truncated, info = env.step((mean_action if args.eval_deterministic else action)[0].numpy())
            states.append(obs["state"])
            episode_return += float(reward)
            done = terminated or truncated
        returns.append(episode_return)
        metrics.append(float(info[metric]) if metric is not None else float("nan"))
        trajectories.append(np.stack(states))  # (T + 1, state_dim)
    env.close()
    save_atomic({f"episode_{k}": t for k, t in enumerate(trajectories)}, out, save_npz)
    print(f"evaluate {args.evaluate} (trained {ckpt['global_step']} env steps): {args.eval_episodes} episodes on "
          f"{saved['env']}, mean return {np.mean(returns):.2f}" + (f", mean {metric} {np.mean(metrics):.2f}; per episode: "
          + ", ".join(f"{k}: {m:g}" for k, m in enumerate(metrics)) if metric is not None else ""))
    print(f"wrote {out} (each episode's states)")
    return returns, metrics, out


if __name__ == "__main__":
    args = tyro.cli(Args)
    if args.evaluate:
        evaluate_checkpoint(args)
        sys.exit(0)
    resume_ckpt = load_resume_checkpoint(args.resume, args) if args.resume else None
    run_dir = args.run_dir or (os.path.dirname(args.resume) if args.resume else
                               f"runs/{args.env}__{args.exp_name}__{args.seed}__{int(time.time())}")
    run_name = os.path.basename(os.path.normpath(run_dir))
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.torch_threads)
    rng = np.random.default_rng(args.seed)
    if args.total_timesteps < 1:
        raise SystemExit(f"error: --total-timesteps must be >= 1, got {args.total_timesteps}")
    try:  # the checkpoint and tensorboard directory (relative to the current directory), before any work
        envs.ensure_writable(os.path.join(run_dir, "agent.pt"), "checkpoint")
    except envs.UnwritablePathError as e:
        raise SystemExit(f"error: {e}")

    env, metric, obs_key = make_env(args.env, args.seed, args.obs, args.goal_radius, args.sparse_reward)
    action_low, action_high = env.action_space.low.astype(np.float32), env.action_space.high.astype(np.float32)
    env.action_space.seed(args.seed)
    obs, _ = env.reset(seed=args.seed)
    if obs_key not in obs:
        raise SystemExit(f"env {args.env!r} has no {obs_key!r} observation: use --obs state")
    state_dim, action_dim, obs_shape = obs["state"].shape[0], action_low.shape[0], obs[obs_key].shape

    data_obs, data_actions = load_offline_data(args.env, args.dataset, obs_key, obs_shape, action_dim)
    print(f"offline data: {len(data_obs)} ({obs_key}, action) pairs")
    state_mean, state_std = None, None
    if obs_key == "state":  # standardise the state input with the data's statistics; constant dims must not blow up
        state_mean, state_std = data_obs.mean(0), np.maximum(data_obs.std(0), 0.1)  # floor: dims the data never moves
    actor = Actor(obs_shape, action_low, action_high, args.hidden_dim, args.policy_layers, state_mean, state_std)
    qf1, qf2, qf1_target, qf2_target = (SoftQNetwork(
        state_dim, action_dim, args.hidden_dim, args.critic_layers, args.critic_layer_norm) for _ in range(4))
    qf1_target.load_state_dict(qf1.state_dict())
    qf2_target.load_state_dict(qf2.state_dict())
    q_optimizer = torch.optim.Adam(list(qf1.parameters()) + list(qf2.parameters()), lr=args.q_lr)
    actor_optimizer = torch.optim.Adam(actor.parameters(), lr=args.policy_lr)
    target_entropy = -float(action_dim) if args.target_entropy is None else args.target_entropy
    log_alpha = torch.zeros(1, requires_grad=True)
    alpha = log_alpha.exp().item()
    alpha_optimizer = torch.optim.Adam([log_alpha], lr=args.alpha_lr)
    rb = ReplayBuffer(min(args.buffer_size, args.total_timesteps), obs_shape, obs[obs_key].dtype, state_dim, action_dim)
    global_step, episodes = 0, 0
    updates_start = args.learning_starts  # env steps before the first gradient step
    if resume_ckpt is not None:  # continue exactly where the checkpoint left off (it was written at an episode end)
        for module, key in ((actor, "actor"), (qf1, "qf1"), (qf2, "qf2"), (qf1_target, "qf1_target"), (qf2_target, "qf2_target"),
                            (q_optimizer, "q_optimizer"), (actor_optimizer, "actor_optimizer"), (alpha_optimizer, "alpha_optimizer")):
            module.load_state_dict(resume_ckpt[key])
        with torch.no_grad():
            log_alpha.copy_(resume_ckpt["log_alpha"])
        alpha = log_alpha.exp().item()
        global_step, episodes = resume_ckpt["global_step"], resume_ckpt["episodes"]
        updates_start = resume_ckpt.get("updates_start", args.learning_starts)  # a checkpoint written mid-refill
        set_rng_state(resume_ckpt["rng"], rng, env)
        obs, _ = env.reset(seed=args.seed + episodes)
        replay_path = args.resume + ".replay.npz"
        if os.path.isfile(replay_path):
            with np.load(replay_path) as saved:
                if int(saved["global_step"]) == global_step:
                    rb.load_state_dict(saved)
        if not rb.size:  # no updates on a near-empty buffer: the current policy refills it as long as a warm-up first
            updates_start = global_step + args.learning_starts
        print(f"resumed {args.resume} at env step {global_step}, replay buffer {rb.size}"
              + ("" if rb.size else f" ({replay_path} missing or from another step: the current policy refills it for "
                                    f"{args.learning_starts} env steps (--learning-starts) before the next update)"))

    if args.track:  # CleanRL's convention: W&B mirrors the tensorboard scalars
        import wandb

        wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, sync_tensorboard=True, config=vars(args),
                   name=run_name, save_code=True)
    writer = SummaryWriter(run_dir, purge_step=global_step + 1 if resume_ckpt else None)  # drop events after the checkpoint
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in vars(args).items()))
    print(f"run {run_name}: policy input {obs_key} {tuple(obs_shape)}, state_dim {state_dim}, action_dim {action_dim}, metric {metric}")
    print(f"tensorboard -> {run_dir}" + (f"; checkpoint -> {os.path.join(run_dir, 'agent.pt')} (every "
          f"{args.checkpoint_interval} env steps at an episode end, and at the end)" if args.save_model else ""))

    # BC + SAC, part 1: behavioural cloning of the offline data (a resumed run has done it)
    if resume_ckpt is None:
        behavioural_cloning(actor, data_obs, data_actions, args.bc_steps, args.bc_lr, args.bc_batch_size, rng, writer)
        if args.save_model:
            save_atomic(actor.state_dict(), os.path.join(run_dir, "bc_policy.pt"))

    def save_checkpoint(step):
        path = os.path.join(run_dir, "agent.pt")
        if args.save_replay_buffer:  # first: a checkpoint never refers to an older buffer
            save_atomic({**rb.state_dict(), "global_step": step}, path + ".replay.npz", save_npz)
        save_atomic({"format": CHECKPOINT_FORMAT, "args": vars(args), "global_step": step, "episodes": episodes,
                     "updates_start": updates_start,
                     "actor": actor.state_dict(), "qf1": qf1.state_dict(), "qf2": qf2.state_dict(),
                     "qf1_target": qf1_target.state_dict(), "qf2_target": qf2_target.state_dict(),
                     "q_optimizer": q_optimizer.state_dict(), "actor_optimizer": actor_optimizer.state_dict(),
                     "alpha_optimizer": alpha_optimizer.state_dict(), "log_alpha": log_alpha.detach().clone(),
                     "rng": rng_state(rng, env)}, path)
        return path

    episode_return, episode_length, last_return = 0.0, 0, float("nan")
    start_time, env_time, update_time, updates = time.time(), 0.0, 0.0, 0  # for the rates of each log interval
    next_checkpoint = global_step + args.checkpoint_interval
    for global_step in range(global_step + 1, args.total_timesteps + 1):
        # BC + SAC, part 2: collect with the (cloned, then finetuned) stochastic policy, warm-up included
        with torch.no_grad():
            action = actor.get_action(torch.as_tensor(obs[obs_key]).unsqueeze(0))[0][0].numpy()
        step_start = time.time()
        next_obs, reward, terminated, truncated, info = env.step(action)
        env_time += time.time() - step_start
        done = terminated or (truncated and not args.bootstrap_at_time_limit)  # the time limit: see the flag
        rb.add(obs[obs_key], obs["state"], action, reward, next_obs[obs_key], next_obs["state"], float(done))
        episode_return += float(reward)
        episode_length += 1
        obs = next_obs
        if terminated or truncated:
            writer.add_scalar("charts/episodic_return", episode_return, global_step)
            writer.add_scalar("charts/episodic_length", episode_length, global_step)
            if metric is not None:
                writer.add_scalar(f"charts/{metric}", float(info[metric]), global_step)
            if "subtasks_completed_any_order" in info:  # kitchen: the any-order count too, whatever the reward counts
                writer.add_scalar("charts/subtasks_completed_any_order", info["subtasks_completed_any_order"], global_step)
            episodes += 1
            obs, _ = env.reset(seed=args.seed + episodes)
            last_return, episode_return, episode_length = episode_return, 0.0, 0

        if global_step > updates_start:
            update_start = time.time()
            obs_b, states, actions, rewards, next_obs_b, next_states, dones = rb.sample(args.batch_size, rng)
            with torch.no_grad():
                next_actions, next_log_prob, _ = actor.get_action(next_obs_b)
                next_q = torch.min(qf1_target(next_states, next_actions), qf2_target(next_states, next_actions))
                target_q = soft_q_target(rewards, dones, next_q, next_log_prob, alpha, args.gamma)
            qf1_loss = F.mse_loss(qf1(states, actions), target_q)
            qf2_loss = F.mse_loss(qf2(states, actions), target_q)
            qf_loss = qf1_loss + qf2_loss
            q_optimizer.zero_grad()
            qf_loss.backward()
            q_optimizer.step()

            if global_step % args.policy_frequency == 0:
                for _ in range(args.policy_frequency):
                    # policy: maximise min_i Q_i(s, a~pi) + alpha * entropy
                    pi_actions, log_prob, _ = actor.get_action(obs_b)
                    for qf in (qf1, qf2):  # the actor needs dQ/da, not the critics' parameter gradients
                        qf.requires_grad_(False)
                    min_q = torch.min(qf1(states, pi_actions), qf2(states, pi_actions))
                    actor_loss = (alpha * log_prob - min_q).mean()
                    actor_optimizer.zero_grad()
                    actor_loss.backward()
                    for qf in (qf1, qf2):
                        qf.requires_grad_(True)
                    actor_optimizer.step()
                    alpha_loss = entropy_alpha_loss(log_alpha, log_prob, target_entropy)
                    alpha_optimizer.zero_grad()
                    alpha_loss.backward()
                    alpha_optimizer.step()
                    alpha = log_alpha.exp().item()

            with torch.no_grad():  # Polyak averaging of the target critics
                for net, target in ((qf1, qf1_target), (qf2, qf2_target)):
                    for param, target_param in zip(net.parameters(), target.parameters()):
                        target_param.lerp_(param, args.tau)
            updates += 1
            update_time += time.time() - update_start

            if global_step % args.log_interval == 0:
                writer.add_scalar("losses/qf1_values", qf1(states, actions).mean().item(), global_step)
                writer.add_scalar("losses/qf1_loss", qf1_loss.item(), global_step)
                writer.add_scalar("losses/qf2_loss", qf2_loss.item(), global_step)
                writer.add_scalar("losses/qf_loss", qf_loss.item() / 2.0, global_step)
                writer.add_scalar("losses/policy_loss", actor_loss.item(), global_step)
                writer.add_scalar("losses/alpha", alpha, global_step)
                writer.add_scalar("losses/alpha_loss", alpha_loss.item(), global_step)
                writer.add_scalar("losses/entropy", -log_prob.mean().item(), global_step)

        if global_step % args.log_interval == 0:  # rates over the last log interval, tags as in spirl_sac.py
            elapsed = time.time() - start_time
            writer.add_scalar("charts/env_steps_per_s_overall", args.log_interval / elapsed, global_step)
            writer.add_scalar("charts/env_steps_per_s_collecting", args.log_interval / max(env_time, 1e-9), global_step)
            if update_time > 0:
                writer.add_scalar("charts/grad_steps_per_s_updating", updates / update_time, global_step)
            print(f"step {global_step}/{args.total_timesteps} | last return {last_return:.1f} | alpha {alpha:.3f} | "
                  f"{args.log_interval / elapsed:.0f} steps/s overall, env {args.log_interval / max(env_time, 1e-9):.0f} "
                  f"steps/s, {updates / max(update_time, 1e-9):.0f} grad steps/s", flush=True)
            start_time, env_time, update_time, updates = time.time(), 0.0, 0.0, 0
        if args.save_model and (terminated or truncated) and next_checkpoint <= global_step < args.total_timesteps:
            next_checkpoint = global_step + args.checkpoint_interval
            print(f"checkpoint {save_checkpoint(global_step)} at env step {global_step}", flush=True)

    if args.save_model:
        print(f"saved {save_checkpoint(global_step)}")
    env.close()
    writer.close()
