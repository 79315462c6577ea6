"""Skill-space policy without prior: the "SSP w/o Prior" baseline of SPiRL, section 4.1, and with
--prior-init the "SSP PriorInit + SAC" ablation of appendix E.

Paper: "Accelerating Reinforcement Learning with Learned Skill Priors" (Pertsch, Lee, Lim, CoRL 2020).
The high-level policy pi(z|s) acts in the skill space of the same skill model SPiRL uses (the
checkpoint of spirl_vae.py); every z is decoded into H primitive actions by the frozen skill decoder.
Section 3.3 casts this as a standard MDP: skills replace actions, H-step summed rewards replace
rewards, H-step transitions replace transitions. It is then trained with standard max-entropy SAC
(a uniform skill prior, entropy target -latent_dim) -- SPiRL without its learned skill prior.

    python baselines/ssp.py --env kitchen                 # loads checkpoints/skill_model_kitchen.pt
    python baselines/ssp.py --env kitchen --prior-init    # appendix E: policy starts as the skill prior
    python baselines/ssp.py --evaluate runs/<run>/agent.pt --eval-episodes 8   # episodes of a saved policy

The policy has the skill prior's architecture (appendix B.2: the policy mirrors the prior) and sees
what the prior sees (normalised state, or the stacked images); the critics see the normalised state.
"""

import os
import random
import sys
import time
from dataclasses import dataclass
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root, for `import envs`

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro
from torch.utils.tensorboard import SummaryWriter

import envs

LOG_SIGMA_MIN, LOG_SIGMA_MAX = -10.0, 2.0  # every Gaussian's log sigma is clamped to this range
CHECKPOINT_FORMAT = "spirl-skill-model-v1"
DEFAULT_CRITIC_LAYERS = {"maze": 2, "kitchen": 5, "block_stacking": 5}  # as spirl_sac.py, so only the prior differs


@dataclass
class Args:
    env: str = "kitchen"
    """maze, block_stacking or kitchen"""
    skill_model: str = ""
    """skill-model checkpoint written by spirl_vae.py; empty: checkpoints/skill_model_<env>.pt"""
    prior_init: bool = False
    """appendix E "SSP PriorInit + SAC": initialise the policy with the skill prior's weights (still no prior regularisation)"""
    goal_radius: Optional[float] = None
    """maze only: reward at every step within this distance of the goal; None: 1.0, the authors' value at the
    paper's time (2.0 is their later value; spirl_sac.py has the same flag)"""
    sparse_reward: bool = False
    """block_stacking only: the authors' sparse reward (the tower's height only; spirl_sac.py has the same flag)"""
    seed: int = 1
    """seed of python, numpy, torch and the env"""
    total_timesteps: int = 300_000
    """environment steps (primitive actions) to train for (spirl_sac.py's default, for overlaid curves)"""
    buffer_size: int = 1_000_000
    """replay buffer capacity in skill transitions (appendix B.2: 1e6)"""
    gamma: float = 0.99
    """discount factor per skill transition (appendix B.2)"""
    tau: float = 5e-3
    """target network update rate (appendix B.2)"""
    bootstrap_at_time_limit: bool = True
    """at a time-limit truncation the Q-target bootstraps from the last observation (the standard choice: the state
    did not end); --no-bootstrap-at-time-limit stores it as a terminal, as the authors' code does"""
    batch_size: int = 256
    """replay batch size (appendix B.2)"""
    learning_starts: int = 5000
    """warm-up environment steps that fill the buffer (with the initial policy's skills) before training (appendix B.2)"""
    policy_lr: float = 3e-4
    """Adam learning rate of the policy (appendix B.2)"""
    q_lr: float = 3e-4
    """Adam learning rate of the critics (appendix B.2)"""
    alpha_lr: float = 3e-4
    """Adam learning rate of the entropy temperature (appendix B.2)"""
    target_entropy: Optional[float] = None
    """entropy target of the alpha auto-tuning over z; None: -latent_dim (Haarnoja et al.'s -|action dims|, here skill dims)"""
    max_skill: float = 2.0
    """skills are squashed to z = max_skill * tanh(u) (appendix B.2: range [-2, 2])"""
    critic_hidden_dim: int = 256
    """units of every hidden layer of the critics"""
    critic_layers: Optional[int] = None
    """linear layers of each critic MLP; None: as spirl_sac.py (maze 2, kitchen and block_stacking 5)"""
    critic_layer_norm: bool = False
    """LayerNorm after every hidden Linear of the critics, as spirl_sac.py's --critic-layer-norm (not the paper's nor
    the authors'): the lever that keeps spirl_sac.py's block-stacking critics from diverging; pass it here too when
    comparing with SPiRL runs that use it"""
    torch_threads: int = 1
    """CPU threads for torch (small networks: 1 is fastest on a shared machine)"""
    log_interval: int = 1000
    """environment steps between progress lines and loss scalars"""
    exp_name: str = "ssp"
    """name of the experiment (first part of the run name under runs/; --prior-init appends _prior_init)"""
    save_model: bool = True
    """write checkpoints (<run_dir>/agent.pt: policy, critics, optimizers, alpha, rng; periodic and final)"""
    run_dir: Optional[str] = None
    """directory of the tensorboard events and the checkpoint; None: runs/<run_name> (with --resume: the checkpoint's directory)"""
    checkpoint_interval: int = 50_000
    """env steps between periodic checkpoints, each written at the next episode end (atomically)"""
    save_replay_buffer: bool = True
    """also save the replay buffer (<checkpoint>.replay.npz) so that --resume continues exactly"""
    resume: Optional[str] = None
    """continue the run of this checkpoint (agent.pt); pass the run's other flags unchanged, --total-timesteps may grow"""
    evaluate: Optional[str] = None
    """only run --eval-episodes episodes of this checkpoint's policy (agent.pt) on its run's env and task, its skills
    decoded by the run's skill model (--skill-model, if given, replaces the saved path), print each episode's return
    and task metric, write <checkpoint>_evaluate.npz (each episode's states), then exit"""
    eval_episodes: int = 2
    """episodes of --evaluate, seeded --seed + 10 000 + k as spirl_sac.py's evaluations"""
    eval_deterministic: bool = False
    """--evaluate with the mean skill max_skill * tanh(mu(s)); default: skills sampled from pi(z|s), as in training"""
    track: bool = False
    """log to Weights & Biases too (pip install wandb; WANDB_MODE=offline works without a network)"""
    wandb_project_name: str = "spirl"
    """the W&B project"""
    wandb_entity: Optional[str] = None
    """the W&B entity (team); None: your default"""


# ----------------------------------------------------------------------------------------------------
# Skill-model networks, copied verbatim from spirl_vae.py so that its checkpoint loads with strict=True.
# ----------------------------------------------------------------------------------------------------


def conv_image_encoder(image_shape, batch_norm=True):
    """Appendix B.1's image encoder: 3 conv layers (kernel 3, stride 2, 8 / 16 / 32 channels), batch norm (unless
    batch_norm=False), leaky-ReLU, flattened. Returns the module ((B, C, 32, 32) float -> (B, out_dim)) and out_dim."""
    channels, height, width = image_shape
    conv = []
    for out_channels in (8, 16, 32):
        conv += [nn.Conv2d(channels, out_channels, kernel_size=3, stride=2, padding=1)]
        conv += [nn.BatchNorm2d(out_channels)] if batch_norm else []
        conv += [nn.LeakyReLU(0.2)]
        channels = out_channels
        height, width = (height + 1) // 2, (width + 1) // 2
    return nn.Sequential(*conv, nn.Flatten()), channels * height * width


class SkillDecoder(nn.Module):
    """p(a_1..H | z): LSTM unrolled H steps with z fed at every step; unit-variance Gaussian output (the mean).

    Open loop (paper default): input z each step, learned initial hidden state.
    Closed loop (--state-conditioned-decoder): input [z, c_t], c_t = condition(o_t) of the *current*
    observation each step, so the skill is executed step by step: ``hidden = decoder.initial_hidden(B)``
    then, for t < H, ``action, hidden = decoder.decode_step(z, decoder.condition(o_t), hidden)``.
    decode() is the same computation over a whole window. o_t is the normalised state (state_dim > 0) or
    the (6, 32, 32) stacked frames (image_shape given), which pass through a conv encoder of the decoder's own.
    """

    def __init__(self, action_dim, latent_dim, hidden_dim=128, state_dim=0, image_shape=None):
        super().__init__()
        self.state_dim = state_dim
        self.image_encoder, cond_dim = None, state_dim
        if image_shape is not None:
            # no batch norm: its running statistics, used when the decoder runs in eval mode (RL), lagged the weights
            # and made the decoded actions ~10x worse than in training mode (maze, measured); train = eval without it
            conv, conv_dim = conv_image_encoder(image_shape, batch_norm=False)
            self.image_encoder = nn.Sequential(conv, nn.Linear(conv_dim, hidden_dim))  # frames -> (B, hidden)
            cond_dim = hidden_dim
        self.lstm = nn.LSTM(latent_dim + cond_dim, hidden_dim, batch_first=True)
        self.initial_h = nn.Parameter(torch.zeros(1, 1, hidden_dim))  # learned initial hidden state
        self.initial_c = nn.Parameter(torch.zeros(1, 1, hidden_dim))
        self.head = nn.Linear(hidden_dim, action_dim)

    def condition(self, obs):
        """What the closed loop sees of observations: a normalised state (..., state_dim) as it is, or stacked
        frames (..., 6, 32, 32) (uint8, or float in [0, 1]) through the conv encoder -> (..., hidden)."""
        if self.image_encoder is None:
            return obs
        frames = obs.reshape(-1, *obs.shape[-3:])
        if frames.dtype == torch.uint8:  # in place: a second fresh image-sized tensor page-faults (CPU)
            frames = frames.float().div_(255.0)
        return self.image_encoder(frames).reshape(*obs.shape[:-3], -1)

    def initial_hidden(self, batch_size):
        """The LSTM state (h, c), each (1, B, hidden), before the first action of a skill."""
        return (
            self.initial_h.expand(1, batch_size, -1).contiguous(),
            self.initial_c.expand(1, batch_size, -1).contiguous(),
        )

    def decode_step(self, z, cond=None, hidden=None):
        """One action of the skill. z: (B, latent); cond: (B, cond_dim) = condition(o_t) (closed loop only).
        Returns the action mean (B, action_dim) and the new hidden state."""
        if hidden is None:
            hidden = self.initial_hidden(z.shape[0])
        inputs = z if cond is None else torch.cat([z, cond], dim=-1)
        # one step of self.lstm with its own weights; lstm_cell is ~4x faster than the sequence module for one step
        h, c = torch.lstm_cell(inputs, (hidden[0][0], hidden[1][0]), self.lstm.weight_ih_l0, self.lstm.weight_hh_l0,
                               self.lstm.bias_ih_l0, self.lstm.bias_hh_l0)
        return self.head(h), (h.unsqueeze(0), c.unsqueeze(0))

    def decode(self, z, conds=None, horizon=None):
        """All H actions at once: z (B, latent), conds (B, H, cond_dim) closed loop only -> (B, H, action_dim)."""
        horizon = conds.shape[1] if conds is not None else horizon
        inputs = z.unsqueeze(1).expand(-1, horizon, -1)  # z at every step (B.1)
        if conds is not None:
            inputs = torch.cat([inputs, conds], dim=-1)
        outputs, _ = self.lstm(inputs, self.initial_hidden(z.shape[0]))
        return self.head(outputs)


class SkillPrior(nn.Module):
    """p_a(z | s_1): [conv encoder for images] + MLP (128 units, leaky-ReLU, batch norm) -> (mu, log sigma).

    State input: (B, state_dim) float, normalised. Image input: (B, 6, 32, 32), the two stacked frames,
    uint8 (divided by 255 here) or float in [0, 1].
    """

    def __init__(self, latent_dim, hidden_dim=128, num_layers=6, state_dim=None, image_shape=None):
        super().__init__()
        if image_shape is not None:
            self.image_encoder, in_dim = conv_image_encoder(image_shape)  # flattened feature map (B.1)
        else:
            self.image_encoder = None
            in_dim = state_dim
        layers = []
        for _ in range(num_layers - 1):
            layers += [nn.Linear(in_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.LeakyReLU(0.2)]
            in_dim = hidden_dim
        layers.append(nn.Linear(in_dim, 2 * latent_dim))
        self.mlp = nn.Sequential(*layers)

    def forward(self, obs):
        if self.image_encoder is not None:
            if obs.dtype == torch.uint8:  # in place: a second fresh image-sized tensor page-faults (CPU)
                obs = obs.float().div_(255.0)
            obs = self.image_encoder(obs)
        mu, log_sigma = self.mlp(obs).chunk(2, dim=-1)
        return mu, log_sigma.clamp(LOG_SIGMA_MIN, LOG_SIGMA_MAX)


# ----------------------------------------------------------------------------------------------------
# The high-level SAC agent over skills.
# ----------------------------------------------------------------------------------------------------


def load_skill_model(path, env_name):
    """The checkpoint dict of spirl_vae.py, its frozen decoder and a skill prior network with its weights."""
    if not os.path.exists(path):
        raise SystemExit(f"skill model {path!r} not found: train it first with `python spirl_vae.py --env {env_name}`")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise SystemExit(f"cannot read skill model {path!r} ({type(error).__name__}): retrain it with `python spirl_vae.py --env {env_name}`")
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise SystemExit(f"{path!r} is not a {CHECKPOINT_FORMAT} checkpoint written by spirl_vae.py")
    if ckpt["env"] != env_name:
        raise SystemExit(f"skill model {path!r} was trained on {ckpt['env']!r}, not {env_name!r}: pass --skill-model")
    state_dim, action_dim, latent_dim = ckpt["state_dim"], ckpt["action_dim"], ckpt["latent_dim"]
    # closed loop on the state or on the frames (spirl_vae.py --closed-loop-input; older checkpoints: state)
    closed_loop_input = (ckpt.get("closed_loop_input") or "state") if ckpt["state_conditioned_decoder"] else None
    decoder = SkillDecoder(action_dim, latent_dim, ckpt["hidden_dim"], state_dim=state_dim if closed_loop_input == "state" else 0,
                           image_shape=tuple(ckpt["image_shape"]) if closed_loop_input == "image" else None)
    image_shape = tuple(ckpt["image_shape"]) if ckpt["prior_input"] == "image" else None
    skill_prior = SkillPrior(latent_dim, ckpt["hidden_dim"], ckpt["prior_layers"], state_dim=state_dim, image_shape=image_shape)
    weights = ckpt["model"]
    decoder.load_state_dict({k[len("decoder."):]: v for k, v in weights.items() if k.startswith("decoder.")}, strict=True)
    skill_prior.load_state_dict({k[len("skill_prior."):]: v for k, v in weights.items() if k.startswith("skill_prior.")}, strict=True)
    return ckpt, decoder.eval().requires_grad_(False), skill_prior


class SoftQNetwork(nn.Module):
    """Q(s, z): MLP (leaky-ReLU, like spirl_sac.py's critics) on the normalised state and the squashed skill."""

    def __init__(self, state_dim, latent_dim, hidden_dim, num_layers, layer_norm=False):
        super().__init__()
        layers, in_dim = [], state_dim + latent_dim
        for _ in range(num_layers - 1):  # layer_norm: a LayerNorm between each hidden Linear and its activation
            norm = [nn.LayerNorm(hidden_dim)] if layer_norm else []
            layers += [nn.Linear(in_dim, hidden_dim), *norm, nn.LeakyReLU(0.2)]
            in_dim = hidden_dim
        self.net = nn.Sequential(*layers, nn.Linear(in_dim, 1))

    def forward(self, state, z):
        return self.net(torch.cat([state, z], dim=-1))


def sample_skill(mu, log_sigma, max_skill):
    """Reparameterised z = max_skill * tanh(u), u ~ N(mu, sigma), and log pi(z|s) (B, 1) with the change of
    variables log N(u) - sum log(max_skill * (1 - tanh(u)^2))."""
    u = mu + log_sigma.exp() * torch.randn_like(mu)
    squashed = torch.tanh(u)
    log_prob = torch.distributions.Normal(mu, log_sigma.exp()).log_prob(u)
    log_prob = log_prob - torch.log(max_skill * (1 - squashed.pow(2)) + 1e-6)
    return max_skill * squashed, log_prob.sum(-1, keepdim=True)


def next_skill_action(decoder, z, obs, hidden, state_conditioned, normalise):
    """The decoder's next action of skill z (1, latent_dim) and its LSTM state; a closed-loop decoder
    (state_conditioned) also sees the current obs: its stacked frames, or its state through `normalise`."""
    with torch.no_grad():
        cond = None
        if state_conditioned:
            seen = torch.as_tensor(obs["image"]) if decoder.image_encoder is not None else normalise(obs["state"])
            cond = decoder.condition(seen.unsqueeze(0))
        return decoder.decode_step(z, cond, hidden)


def soft_q_target(rewards, terminated, next_q, next_log_prob, alpha, gamma):
    """SAC target on skill transitions: r~ + gamma * (1 - terminated) * (min_i Q_target_i(s', z') - alpha * log pi(z'|s')),
    r~ the H-step summed reward (section 3.3). The entropy bonus -log pi is KL to a *uniform* skill prior."""
    return rewards + gamma * (1.0 - terminated) * (next_q - alpha * next_log_prob)


def entropy_alpha_loss(log_alpha, log_prob, target_entropy):
    """Standard SAC temperature loss: alpha rises when the policy entropy -log pi falls below the target."""
    return (-log_alpha.exp() * (log_prob.detach() + target_entropy)).mean()


class SkillReplayBuffer:
    """Uniform replay of skill transitions (policy obs, critic state, z, summed reward, next obs, next state, terminated)."""

    def __init__(self, capacity, policy_obs_shape, policy_obs_dtype, state_dim, latent_dim):
        self.obs = np.zeros((capacity, *policy_obs_shape), policy_obs_dtype)
        self.next_obs = np.zeros((capacity, *policy_obs_shape), policy_obs_dtype)
        self.states = np.zeros((capacity, state_dim), np.float32)
        self.next_states = np.zeros((capacity, state_dim), np.float32)
        self.skills = np.zeros((capacity, latent_dim), np.float32)
        self.rewards = np.zeros((capacity, 1), np.float32)
        self.terminated = np.zeros((capacity, 1), np.float32)
        self.capacity, self.pos, self.size = capacity, 0, 0

    def add(self, obs, state, z, reward, next_obs, next_state, terminated):
        i = self.pos
        self.obs[i], self.states[i], self.skills[i], self.rewards[i] = obs, state, z, reward
        self.next_obs[i], self.next_states[i], self.terminated[i] = next_obs, next_state, terminated
        self.pos = (self.pos + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size, rng):
        idx = rng.integers(0, self.size, batch_size)
        arrays = (self.obs, self.states, self.skills, self.rewards, self.next_obs, self.next_states, self.terminated)
        return [torch.as_tensor(x[idx]) for x in arrays]

    KEYS = ("obs", "next_obs", "states", "next_states", "skills", "rewards", "terminated")

    def state_dict(self):
        return {"pos": self.pos, "size": self.size, **{key: getattr(self, key)[: self.size] for key in self.KEYS}}

    def load_state_dict(self, saved):
        size = int(saved["size"])
        if size > self.capacity:
            raise SystemExit(f"the saved replay buffer holds {size} transitions, more than this run's capacity {self.capacity}: "
                             f"raise --total-timesteps or --buffer-size")
        for key in self.KEYS:
            getattr(self, key)[:size] = saved[key]
        # a buffer saved full (its run's whole budget) continues after its rows when this run's buffer is larger
        self.size, self.pos = size, size % self.capacity if size < self.capacity else int(saved["pos"]) % self.capacity


RUN_CHECKPOINT_FORMAT = "baselines-ssp-v1"
# flags that may differ between a run and its --resume; every other flag must be the same
RESUME_MAY_CHANGE = {"total_timesteps", "resume", "run_dir", "log_interval", "checkpoint_interval", "save_replay_buffer",
                     "torch_threads", "track", "wandb_project_name", "wandb_entity"}


def load_resume_checkpoint(path, args):
    """The checkpoint of an interrupted run, checked against this run's flags."""
    if not os.path.isfile(path):
        raise SystemExit(f"--resume {path}: no such checkpoint (this script writes <run_dir>/agent.pt)")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or ckpt.get("format") != RUN_CHECKPOINT_FORMAT:
        raise SystemExit(f"--resume {path}: not a resumable checkpoint of this script ({RUN_CHECKPOINT_FORMAT})")
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
    """--evaluate: episodes of a saved skill policy on the env and task of its run (--goal-radius, if given, overrides
    the maze's), each skill decoded into H actions as in training. Returns the episodes' returns, task metrics and
    the path of their states."""
    if args.eval_episodes < 1:
        raise SystemExit(f"error: --eval-episodes must be >= 1, got {args.eval_episodes}")
    torch.set_num_threads(args.torch_threads)  # as in training: small networks run fastest on one thread
    if not os.path.isfile(args.evaluate):
        raise SystemExit(f"--evaluate {args.evaluate}: no such checkpoint (this script writes <run_dir>/agent.pt)")
    run = torch.load(args.evaluate, map_location="cpu", weights_only=False)
    if not isinstance(run, dict) or run.get("format") != RUN_CHECKPOINT_FORMAT:
        raise SystemExit(f"--evaluate {args.evaluate}: not a checkpoint of this script ({RUN_CHECKPOINT_FORMAT}) but "
                         f"{run.get('format') if isinstance(run, dict) else type(run).__name__!r}: evaluate it with the "
                         f"script that wrote it")
    saved = run["args"]
    out = os.path.splitext(args.evaluate)[0] + "_evaluate.npz"
    try:
        envs.ensure_writable(out, "evaluation output")
    except envs.UnwritablePathError as e:
        raise SystemExit(f"error: {e}")
    env_name = saved["env"]
    ckpt, decoder, policy = load_skill_model(args.skill_model or saved["skill_model"] or
                                             f"checkpoints/skill_model_{env_name}.pt", env_name)
    policy.load_state_dict(run["policy"])  # the policy has the skill prior's architecture (appendix B.2)
    policy.eval()
    state_mean, state_std = torch.as_tensor(ckpt["state_mean"]), torch.as_tensor(ckpt["state_std"])
    action_low, action_high = np.asarray(ckpt["action_low"]), np.asarray(ckpt["action_high"])
    use_image = ckpt["prior_input"] == "image"
    goal_radius = saved.get("goal_radius") if args.goal_radius is None else args.goal_radius
    options = {} if goal_radius is None else {"goal_radius": goal_radius}
    if saved.get("sparse_reward", False):
        options["reward"] = "sparse"
    env, metric = envs.make_env(env_name, seed=args.seed + 10_000, **options), envs.env_module(env_name).METRIC
    state_dim = env.reset(seed=args.seed + 10_000)[0]["state"].shape[0]
    if state_dim != ckpt["state_dim"] or env.action_space.shape[0] != ckpt["action_dim"]:
        raise SystemExit(f"skill model has state_dim {ckpt['state_dim']}, action_dim {ckpt['action_dim']}, the env "
                         f"{state_dim}, {env.action_space.shape[0]}: pass the run's --skill-model")

    def normalise(state):
        return (torch.as_tensor(state, dtype=torch.float32) - state_mean) / state_std

    torch.manual_seed(args.seed + 10_000)  # the sampled actions: the same episodes for the same --seed
    returns, metrics, trajectories = [], [], []
    for episode in range(args.eval_episodes):
        obs, _ = env.reset(seed=args.seed + 10_000 + episode)
        states, episode_return, done, info = [obs["state"]], 0.0, False, {}
        while not done:
            with torch.no_grad():
                seen = torch.as_tensor(obs["image"]) if use_image else normalise(obs["state"])
                mu, log_sigma = policy(seen.unsqueeze(0))
                z = saved["max_skill"] * torch.tanh(mu) if args.eval_deterministic else \
                    sample_skill(mu, log_sigma, saved["max_skill"])[0]
            hidden = None
            for _ in range(ckpt["skill_horizon"]):  # the skill's H actions, decoded as in training
                action, hidden = next_skill_action(decoder, z, obs, hidden, ckpt["state_conditioned_decoder"], normalise)
                obs, reward, terminated, truncated, info = env.step(np.clip(action[0].numpy(), action_low, action_high))
                states.append(obs["state"])
                episode_return += float(reward)
                done = terminated or truncated
                if done:
                    break
        returns.append(episode_return)
        metrics.append(float(info[metric]))
        trajectories.append(np.stack(states))  # (T + 1, state_dim)
    env.close()
    save_atomic({f"episode_{k}": t for k, t in enumerate(trajectories)}, out, save_npz)
    print(f"evaluate {args.evaluate} (trained {run['global_step']} env steps): {args.eval_episodes} episodes on "
          f"{env_name}, mean return {np.mean(returns):.2f}, mean {metric} {np.mean(metrics):.2f}; per episode: "
          + ", ".join(f"{k}: {m:g}" for k, m in enumerate(metrics)))
    print(f"wrote {out} (each episode's states)")
    return returns, metrics, out


if __name__ == "__main__":
    args = tyro.cli(Args)
    if args.evaluate:
        evaluate_checkpoint(args)
        sys.exit(0)
    if args.env not in envs.ENV_NAMES:
        raise SystemExit(f"unknown env {args.env!r}: choose one of {', '.join(envs.ENV_NAMES)}")
    if args.goal_radius is not None and (args.env != "maze" or args.goal_radius <= 0):
        raise SystemExit(f"--goal-radius {args.goal_radius}: only the maze has a goal radius, and it must be > 0")
    if args.sparse_reward and args.env != "block_stacking":
        raise SystemExit(f"--sparse-reward: only block_stacking has a sparse reward variant, not {args.env!r}")
    exp_name = args.exp_name + ("_prior_init" if args.prior_init else "")
    resume_ckpt = load_resume_checkpoint(args.resume, args) if args.resume else None
    run_dir = args.run_dir or (os.path.dirname(args.resume) if args.resume else
                               f"runs/{args.env}__{exp_name}__{args.seed}__{int(time.time())}")
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

    ckpt, decoder, skill_prior = load_skill_model(args.skill_model or f"checkpoints/skill_model_{args.env}.pt", args.env)
    horizon, latent_dim = ckpt["skill_horizon"], ckpt["latent_dim"]
    state_mean, state_std = torch.as_tensor(ckpt["state_mean"]), torch.as_tensor(ckpt["state_std"])
    action_low, action_high = np.asarray(ckpt["action_low"]), np.asarray(ckpt["action_high"])
    use_image = ckpt["prior_input"] == "image"
    critic_layers = args.critic_layers or DEFAULT_CRITIC_LAYERS[args.env]

    options = {} if args.goal_radius is None else {"goal_radius": args.goal_radius}
    if args.sparse_reward:
        options["reward"] = "sparse"
    env, metric = envs.make_env(args.env, seed=args.seed, **options), envs.env_module(args.env).METRIC
    obs, _ = env.reset(seed=args.seed)
    if obs["state"].shape[0] != ckpt["state_dim"] or env.action_space.shape[0] != ckpt["action_dim"]:
        raise SystemExit(f"skill model has state_dim {ckpt['state_dim']}, action_dim {ckpt['action_dim']}, the env "
                         f"{obs['state'].shape[0]}, {env.action_space.shape[0]}: retrain it with spirl_vae.py --env {args.env}")
    if (use_image or decoder.image_encoder is not None) and tuple(obs.get("image", np.zeros(0)).shape) != tuple(ckpt["image_shape"]):
        raise SystemExit(f"the skill model sees images {tuple(ckpt['image_shape'])} but env {args.env!r} gives "
                         f"{obs['image'].shape if 'image' in obs else None}: retrain it with spirl_vae.py --env {args.env}")

    def normalise(state):
        return (torch.as_tensor(state, dtype=torch.float32) - state_mean) / state_std

    def policy_input(obs):
        """What the policy sees, as stored in the buffer: the stacked images (uint8) or the normalised state."""
        return obs["image"] if use_image else normalise(obs["state"]).numpy()

    # policy: the skill prior's architecture; appendix E's ablation keeps the prior's weights, the plain
    # baseline starts from fresh weights. Batch-norm statistics stay fixed (eval mode) while it runs and learns.
    policy = skill_prior if args.prior_init else SkillPrior(
        latent_dim, ckpt["hidden_dim"], ckpt["prior_layers"], state_dim=ckpt["state_dim"],
        image_shape=tuple(ckpt["image_shape"]) if use_image else None)
    policy.eval().requires_grad_(True)
    qf1, qf2, qf1_target, qf2_target = (SoftQNetwork(
        ckpt["state_dim"], latent_dim, args.critic_hidden_dim, critic_layers, args.critic_layer_norm) for _ in range(4))
    qf1_target.load_state_dict(qf1.state_dict())
    qf2_target.load_state_dict(qf2.state_dict())
    q_optimizer = torch.optim.Adam(list(qf1.parameters()) + list(qf2.parameters()), lr=args.q_lr)
    actor_optimizer = torch.optim.Adam(policy.parameters(), lr=args.policy_lr)
    target_entropy = -float(latent_dim) if args.target_entropy is None else args.target_entropy
    log_alpha = torch.zeros(1, requires_grad=True)
    alpha = log_alpha.exp().item()
    alpha_optimizer = torch.optim.Adam([log_alpha], lr=args.alpha_lr)
    example = policy_input(obs)
    capacity = min(args.buffer_size, args.total_timesteps // horizon + 1)
    rb = SkillReplayBuffer(capacity, example.shape, example.dtype, ckpt["state_dim"], latent_dim)
    global_step, episodes = 0, 0
    updates_start = args.learning_starts  # env steps before the first gradient step
    if resume_ckpt is not None:  # continue exactly where the checkpoint left off (it was written at an episode end)
        for module, key in ((policy, "policy"), (qf1, "qf1"), (qf2, "qf2"), (qf1_target, "qf1_target"), (qf2_target, "qf2_target"),
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
    print(f"run {run_name}: H {horizon}, latent_dim {latent_dim}, policy input {ckpt['prior_input']}, "
          f"target entropy {target_entropy}, metric {metric}")
    print(f"tensorboard -> {run_dir}" + (f"; checkpoint -> {os.path.join(run_dir, 'agent.pt')} (every "
          f"{args.checkpoint_interval} env steps at an episode end, and at the end)" if args.save_model else ""))

    def save_checkpoint(step):
        path = os.path.join(run_dir, "agent.pt")
        if args.save_replay_buffer:  # first: a checkpoint never refers to an older buffer
            save_atomic({**rb.state_dict(), "global_step": step}, path + ".replay.npz", save_npz)
        save_atomic({"format": RUN_CHECKPOINT_FORMAT, "args": vars(args), "global_step": step, "episodes": episodes,
                     "updates_start": updates_start,
                     "policy": policy.state_dict(), "qf1": qf1.state_dict(), "qf2": qf2.state_dict(),
                     "qf1_target": qf1_target.state_dict(), "qf2_target": qf2_target.state_dict(),
                     "q_optimizer": q_optimizer.state_dict(), "actor_optimizer": actor_optimizer.state_dict(),
                     "alpha_optimizer": alpha_optimizer.state_dict(), "log_alpha": log_alpha.detach().clone(),
                     "rng": rng_state(rng, env)}, path)
        return path

    next_log, last_return, episode_return, episode_length = global_step + args.log_interval, float("nan"), 0.0, 0
    next_checkpoint = global_step + args.checkpoint_interval
    start_time, env_time, update_time, updates, log_start_step = time.time(), 0.0, 0.0, 0, 0  # rates per log interval
    while global_step < args.total_timesteps:
        # Alg. 1 lines 4-7 without the prior: z ~ pi(z|s), execute the decoded H-step skill, store the transition
        skill_obs, skill_state = policy_input(obs), normalise(obs["state"]).numpy()
        with torch.no_grad():
            z, _ = sample_skill(*policy(torch.as_tensor(skill_obs).unsqueeze(0)), args.max_skill)
        skill_reward, hidden = 0.0, None
        for _ in range(horizon):
            action, hidden = next_skill_action(decoder, z, obs, hidden, ckpt["state_conditioned_decoder"], normalise)
            action = np.clip(action[0].numpy(), action_low, action_high)
            step_start = time.time()
            obs, reward, terminated, truncated, info = env.step(action)
            env_time += time.time() - step_start
            global_step += 1
            skill_reward += float(reward)  # section 3.3: H-step summed reward
            episode_return += float(reward)
            episode_length += 1
            if terminated or truncated:
                break
        done = terminated or (truncated and not args.bootstrap_at_time_limit)  # the time limit: see the flag
        rb.add(skill_obs, skill_state, z[0].numpy(), skill_reward, policy_input(obs), normalise(obs["state"]).numpy(), float(done))
        if terminated or truncated:
            writer.add_scalar("charts/episodic_return", episode_return, global_step)
            writer.add_scalar("charts/episodic_length", episode_length, global_step)
            writer.add_scalar(f"charts/{metric}", float(info[metric]), global_step)
            if "subtasks_completed_any_order" in info:  # kitchen: the any-order count too, whatever the reward counts
                writer.add_scalar("charts/subtasks_completed_any_order", info["subtasks_completed_any_order"], global_step)
            episodes += 1
            obs, _ = env.reset(seed=args.seed + episodes)
            last_return, episode_return, episode_length = episode_return, 0.0, 0

        # one SAC update per skill transition once the warm-up is collected
        if global_step >= updates_start:
            update_start = time.time()
            obs_b, states, skills, rewards, next_obs_b, next_states, dones = rb.sample(args.batch_size, rng)
            with torch.no_grad():
                next_z, next_log_prob = sample_skill(*policy(next_obs_b), args.max_skill)
                next_q = torch.min(qf1_target(next_states, next_z), qf2_target(next_states, next_z))
                target_q = soft_q_target(rewards, dones, next_q, next_log_prob, alpha, args.gamma)
            qf1_loss = F.mse_loss(qf1(states, skills), target_q)
            qf2_loss = F.mse_loss(qf2(states, skills), target_q)
            qf_loss = qf1_loss + qf2_loss
            q_optimizer.zero_grad()
            qf_loss.backward()
            q_optimizer.step()

            # policy: maximise min_i Q_i(s, z~pi) + alpha * entropy (no learned prior: that is the ablation)
            pi_z, log_prob = sample_skill(*policy(obs_b), args.max_skill)
            min_q = torch.min(qf1(states, pi_z), qf2(states, pi_z))
            actor_loss = (alpha * log_prob - min_q).mean()
            actor_optimizer.zero_grad()
            actor_loss.backward()
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

        if global_step >= next_log:  # rates over the last log interval, tags as in spirl_sac.py
            elapsed, steps = time.time() - start_time, global_step - log_start_step
            writer.add_scalar("charts/env_steps_per_s_overall", steps / elapsed, global_step)
            writer.add_scalar("charts/env_steps_per_s_collecting", steps / max(env_time, 1e-9), global_step)
            if update_time > 0:
                writer.add_scalar("charts/grad_steps_per_s_updating", updates / update_time, global_step)
                writer.add_scalar("losses/qf1_values", qf1(states, skills).mean().item(), global_step)
                writer.add_scalar("losses/qf1_loss", qf1_loss.item(), global_step)
                writer.add_scalar("losses/qf2_loss", qf2_loss.item(), global_step)
                writer.add_scalar("losses/qf_loss", qf_loss.item() / 2.0, global_step)
                writer.add_scalar("losses/policy_loss", actor_loss.item(), global_step)
                writer.add_scalar("losses/alpha", alpha, global_step)
                writer.add_scalar("losses/alpha_loss", alpha_loss.item(), global_step)
                writer.add_scalar("losses/entropy", -log_prob.mean().item(), global_step)
            print(f"step {global_step}/{args.total_timesteps} | last return {last_return:.1f} | alpha {alpha:.3f} | "
                  f"{steps / elapsed:.0f} steps/s overall, env {steps / max(env_time, 1e-9):.0f} steps/s, "
                  f"{updates / max(update_time, 1e-9):.1f} grad steps/s", flush=True)
            next_log += args.log_interval
            start_time, env_time, update_time, updates, log_start_step = time.time(), 0.0, 0.0, 0, global_step
        if args.save_model and (terminated or truncated) and next_checkpoint <= global_step < args.total_timesteps:
            next_checkpoint = global_step + args.checkpoint_interval
            print(f"checkpoint {save_checkpoint(global_step)} at env step {global_step}", flush=True)

    if args.save_model:
        print(f"saved {save_checkpoint(global_step)}")
    env.close()
    writer.close()
