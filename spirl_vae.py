"""SPiRL skill model: skill VAE q(z|a_1..H) / p(a_1..H|z) and skill prior p_a(z|s_1), trained jointly.

Paper: "Accelerating Reinforcement Learning with Learned Skill Priors" (Pertsch, Lee, Lim, CoRL 2020),
section 3.2, appendix B.1 (architecture, eq. 4) and appendix D (state-conditioned decoder).

    python spirl_vae.py --env maze            # -> checkpoints/skill_model_maze.pt (read by spirl_sac.py)

Skills are H-step action windows cut at random positions out of the offline trajectories. The VAE
encodes a window into z, decodes z back into H actions; the skill prior learns to predict the
posterior over z from the first state of the window alone, behind a stop-gradient so that it cannot
bend the embedding (eq. 4).
"""

import math
import os
import random
import time
from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

LOG_SIGMA_MIN, LOG_SIGMA_MAX = -10.0, 2.0  # every Gaussian's log sigma is clamped to this range
CHECKPOINT_FORMAT = "spirl-skill-model-v1"


@dataclass
class Args:
    env: Literal["maze", "block_stacking", "kitchen"] = "maze"
    """which environment's offline data to learn skills from: maze, block_stacking or kitchen"""
    dataset: str = "auto"
    """path of the offline dataset, or "auto": the env module finds or builds its default dataset offline"""
    prior_input: Literal["auto", "state", "image"] = "auto"
    """what the skill prior sees: "state", "image" (the two stacked 32x32 RGB frames) or "auto" (the env's DEFAULT_PRIOR_INPUT, as in the paper)"""
    seed: int = 1
    """seed of python, numpy and torch (and of the train/validation split)"""
    torch_deterministic: bool = True
    """sets torch.backends.cudnn.deterministic"""
    threads: int = 1
    """torch CPU threads; 1 is fastest for these small networks, many times faster than 2 on a busy 2-core box"""
    total_steps: Optional[int] = None
    """gradient steps to train; None: the per-env default, ~10^6 skill windows for the kitchen (the order of the
    authors' 200 epochs x 10 cycles), under 10 min on one CPU core"""
    batch_size: int = 128
    """skill windows per gradient step: 128 as the authors' code (the paper's text says 16; larger batches are
    several times faster per window on a CPU)"""
    learning_rate: float = 1e-3
    """RAdam learning rate (appendix B.1)"""
    adam_beta1: float = 0.9
    """RAdam beta1 (appendix B.1)"""
    adam_beta2: float = 0.999
    """RAdam beta2 (appendix B.1)"""
    beta: Optional[float] = None
    """weight of the KL(q(z|a) || N(0,I)) term; None: the paper's per-env value (kitchen 5e-4, maze and block_stacking 1e-2)"""
    skill_horizon: int = 10
    """H, the number of actions in one skill"""
    latent_dim: int = 10
    """dimension of the skill embedding z"""
    hidden_dim: int = 128
    """units of the encoder/decoder LSTMs and of the prior's hidden layers"""
    prior_layers: int = 6
    """linear layers of the skill prior MLP (appendix B.1: 6)"""
    state_conditioned_decoder: bool = False
    """closed-loop variant (appendix D, "SPiRL-cl"): encoder and decoder also see the observation at every step"""
    closed_loop_input: Literal["auto", "state", "image"] = "auto"
    """with --state-conditioned-decoder, what encoder and decoder see at every step: "state" (the normalised
    low-dim state; the authors' ClSPiRLMdl), "image" (the two stacked 32x32 frames through the decoder's own conv
    encoder; their ImageClSPiRLMdl) or "auto": what the prior sees. Images matter for block stacking, whose
    state has more block slots downstream (11) than in the data (5, padded)"""
    init_grad_clip_steps: int = 100
    """clip the gradient norm during this many first steps, as the authors do to avoid early NaNs"""
    init_grad_clip: float = 1e-3
    """max gradient norm during the first init_grad_clip_steps steps"""
    val_fraction: float = 0.1
    """fraction of the trajectories held out for validation (split by trajectory, never within one)"""
    val_batches: int = 20
    """batches of validation windows per evaluation"""
    eval_interval: int = 500
    """steps between validation evaluations (and qualitative plots)"""
    save_interval: int = 2000
    """steps between periodic checkpoints (a final one is always written)"""
    log_interval: int = 100
    """steps between progress lines and training scalars"""
    save_path: str = ""
    """checkpoint path; empty: checkpoints/skill_model_<env>.pt, which spirl_sac.py loads by default"""
    run_dir: Optional[str] = None
    """directory of the tensorboard events and the decoded-skills figure; None: runs/<run_name>"""
    resume: bool = False
    """continue from the checkpoint at save_path (weights, optimizer, step, run directory)"""
    exp_name: str = "spirl_vae"
    """name of this experiment (part of the tensorboard run name under runs/)"""
    num_qualitative: int = 4
    """validation skills drawn in the qualitative figure (ground truth vs decoded)"""
    track: bool = False
    """log to Weights & Biases too (pip install wandb; WANDB_MODE=offline works without a network)"""
    wandb_project_name: str = "spirl"
    """the W&B project"""
    wandb_entity: Optional[str] = None
    """the W&B entity (team); None: your default"""


# ----------------------------------------------------------------------------------------------------
# Networks. spirl_sac.py and baselines/ssp.py copy these classes verbatim: keep names and keys stable.
# ----------------------------------------------------------------------------------------------------


def gaussian_kl(mu_q, log_sigma_q, mu_p, log_sigma_p):
    """Elementwise analytic KL(N(mu_q, sigma_q) || N(mu_p, sigma_p)) of diagonal Gaussians."""
    return (
        log_sigma_p
        - log_sigma_q
        + (torch.exp(2 * log_sigma_q) + (mu_q - mu_p) ** 2) / (2 * torch.exp(2 * log_sigma_p))
        - 0.5
    )


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


class SkillEncoder(nn.Module):
    """q(z | a_1..H) (closed-loop variant: q(z | o_1..H, a_1..H)): one-layer LSTM, last output -> (mu, log sigma)."""

    def __init__(self, action_dim, latent_dim, hidden_dim=128, cond_dim=0):
        super().__init__()
        self.lstm = nn.LSTM(action_dim + cond_dim, hidden_dim, batch_first=True)
        self.head = nn.Linear(hidden_dim, 2 * latent_dim)

    def forward(self, actions, cond=None):
        # actions: (B, H, action_dim); cond: (B, H, cond_dim) = decoder.condition(observations), closed loop only
        inputs = actions if cond is None else torch.cat([cond, actions], dim=-1)
        outputs, _ = self.lstm(inputs)  # (B, H, hidden)
        mu, log_sigma = self.head(outputs[:, -1]).chunk(2, dim=-1)  # after the full sequence (B.1)
        return mu, log_sigma.clamp(LOG_SIGMA_MIN, LOG_SIGMA_MAX)


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


class SkillModel(nn.Module):
    """Skill encoder + decoder + prior; state_dict keys "encoder.*", "decoder.*", "skill_prior.*"."""

    def __init__(self, state_dim, action_dim, latent_dim=10, hidden_dim=128, prior_layers=6,
                 image_shape=None, state_conditioned_decoder=False, closed_loop_image_shape=None):
        """image_shape: the prior's input frames (None: the prior sees the state); closed_loop_image_shape: with
        state_conditioned_decoder, the frames the closed loop sees (None: it sees the state)."""
        super().__init__()
        closed_loop_image_shape = closed_loop_image_shape if state_conditioned_decoder else None
        state_cond = state_dim if state_conditioned_decoder and closed_loop_image_shape is None else 0
        cond_dim = hidden_dim if closed_loop_image_shape is not None else state_cond  # as SkillDecoder computes it
        self.encoder = SkillEncoder(action_dim, latent_dim, hidden_dim, cond_dim=cond_dim)
        self.decoder = SkillDecoder(action_dim, latent_dim, hidden_dim, state_dim=state_cond,
                                    image_shape=closed_loop_image_shape)
        self.skill_prior = SkillPrior(latent_dim, hidden_dim, prior_layers, state_dim=state_dim, image_shape=image_shape)
        self.state_conditioned_decoder = state_conditioned_decoder

    def forward(self, actions, step_obs, prior_obs):
        """actions (B, H, A); step_obs: what the closed loop sees at each step, normalised states (B, H, S) or
        frames (B, H, 6, 32, 32); prior_obs: first state (B, S) or frames (B, 6, 32, 32)."""
        # the encoder shares the decoder's view of the observations, as the authors' closed-loop models do
        cond = self.decoder.condition(step_obs) if self.state_conditioned_decoder else None
        mu_z, log_sigma_z = self.encoder(actions, cond)
        z = mu_z + torch.randn_like(mu_z) * log_sigma_z.exp()  # reparameterised posterior sample
        reconstruction = self.decoder.decode(z, cond, horizon=actions.shape[1])
        mu_p, log_sigma_p = self.skill_prior(prior_obs)
        return reconstruction, mu_z, log_sigma_z, mu_p, log_sigma_p


def skill_model_losses(model, actions, step_obs, prior_obs):
    """The three terms of eq. (4), every one a MEAN over its elements, as the authors compute them (the
    paper's beta is calibrated to means; with sums it would have to change by H * action_dim / latent_dim):
    reconstruction: unit-variance Gaussian NLL 0.5 * (a - a_hat)^2 (constant dropped), mean over batch, steps, action dims;
    kl: KL(q(z|a) || N(0, I)), mean over batch and latent dims (weighted by beta by the caller);
    prior: KL(N(sg mu_z, sg sigma_z) || N(mu_p, sigma_p)), mean over batch and latent dims."""
    reconstruction, mu_z, log_sigma_z, mu_p, log_sigma_p = model(actions, step_obs, prior_obs)
    recon = 0.5 * ((reconstruction - actions) ** 2).mean()
    kl = gaussian_kl(mu_z, log_sigma_z, torch.zeros_like(mu_z), torch.zeros_like(log_sigma_z)).mean()
    # eq. (4) prior term: stop-gradient on the posterior, so the prior cannot bend the embedding
    prior = gaussian_kl(mu_z.detach(), log_sigma_z.detach(), mu_p, log_sigma_p).mean()
    return recon, kl, prior


# ----------------------------------------------------------------------------------------------------
# Data: offline trajectories -> H-step skill windows
# ----------------------------------------------------------------------------------------------------

BETA = {"kitchen": 5e-4, "maze": 1e-2, "block_stacking": 1e-2}  # appendix B.1, calibrated to mean losses
# Default gradient steps at batch 128: kitchen 8 000 x 128 = 1.0 M windows (the order of the authors' budget),
# maze and block stacking 5 000 x 128 = 0.64 M (their image priors are ~2x slower per window on a CPU).
DEFAULT_TOTAL_STEPS = {"maze": 5_000, "block_stacking": 5_000, "kitchen": 8_000}


def env_spec(env_name):
    """What the skill model must fit in env ``env_name``: dims, action bounds, the paper's prior input."""
    import envs

    if env_name not in envs.ENV_NAMES:
        raise SystemExit(f"error: unknown env {env_name!r}: choose one of {', '.join(envs.ENV_NAMES)}")
    try:
        module = envs.env_module(env_name)
    except ModuleNotFoundError as e:
        raise SystemExit(f"error: env module envs/{env_name}.py is not available ({e}); pick another --env")
    env = module.make_env(seed=0)
    spaces = env.observation_space.spaces
    spec = {
        "state_dim": int(spaces["state"].shape[0]),
        "image_shape": list(spaces["image"].shape) if "image" in spaces else None,
        "action_dim": int(env.action_space.shape[0]),
        "action_low": np.asarray(env.action_space.low, dtype=np.float32),
        "action_high": np.asarray(env.action_space.high, dtype=np.float32),
        "default_prior_input": module.DEFAULT_PRIOR_INPUT,
    }
    env.close()
    return spec


def check_dataset(dataset, spec, skill_horizon, prior_input, closed_loop_input=None):
    """Stop with a one-line error, before any training, if the data cannot train this env's skill model.
    Returns the (start, end) of every trajectory long enough to hold one H-step skill."""
    for key in ("states", "actions", "traj_ends"):
        if key not in dataset:
            raise SystemExit(f"error: dataset has no {key!r} array (has: {sorted(dataset)}); see envs/__init__.py for the format")
    states, actions, traj_ends = dataset["states"], dataset["actions"], np.asarray(dataset["traj_ends"])
    if actions.ndim != 2 or actions.shape[1] != spec["action_dim"]:
        raise SystemExit(f"error: dataset actions have shape {tuple(actions.shape)} but the env's action dim is "
                         f"{spec['action_dim']}: pass a --dataset recorded in this env")
    if states.ndim != 2 or states.shape[1] != spec["state_dim"]:
        raise SystemExit(f"error: dataset states have shape {tuple(states.shape)} but the env's state dim is "
                         f"{spec['state_dim']}: pass a --dataset recorded in this env")
    if len(states) != len(actions):
        raise SystemExit(f"error: dataset has {len(states)} states but {len(actions)} actions: they must pair up")
    if "image" in (prior_input, closed_loop_input):
        flag = "--prior-input" if prior_input == "image" else "--closed-loop-input"
        if spec["image_shape"] is None:
            raise SystemExit(f"error: {flag} image but this env has no camera: use {flag} state")
        images = dataset.get("images")
        if images is None:
            raise SystemExit(f"error: {flag} image but the dataset has no 'images': use {flag} state "
                             "or a dataset with images")
        if tuple(images.shape) != (len(states), *spec["image_shape"]) or images.dtype != np.uint8:
            raise SystemExit(f"error: dataset images are {images.dtype} {tuple(images.shape)}, expected uint8 "
                             f"{(len(states), *spec['image_shape'])}: pass a --dataset recorded in this env")
    if len(traj_ends) == 0 or traj_ends[-1] != len(states) or np.any(np.diff(traj_ends) <= 0) or traj_ends[0] <= 0:
        raise SystemExit("error: dataset traj_ends must be increasing exclusive end indices with the last == number "
                         f"of steps ({len(states)})")
    for name, array in (("states", states), ("actions", actions)):
        bad = ~np.isfinite(array)
        if bad.any():
            row = int(np.argwhere(bad)[0, 0])
            raise SystemExit(f"error: dataset {name} contain NaN or inf (first at step {row}): clean or regenerate the dataset")
    starts = np.concatenate([[0], traj_ends[:-1]])
    lengths = traj_ends - starts
    usable = lengths >= skill_horizon
    if usable.sum() < 2:
        raise SystemExit(f"error: dataset has {int(usable.sum())} trajectories of at least H={skill_horizon} steps "
                         f"(longest: {int(lengths.max())}); need 2 or more (train and validation): lower "
                         "--skill-horizon or use a longer dataset")
    return list(zip(starts[usable].tolist(), traj_ends[usable].tolist()))


def split_windows(trajectories, skill_horizon, val_fraction, rng):
    """Train/validation split by trajectory; returns the window start indices of each side."""
    order = rng.permutation(len(trajectories))
    num_val = min(max(1, int(round(val_fraction * len(trajectories)))), len(trajectories) - 1)
    def window_starts(ids):
        return np.concatenate([np.arange(trajectories[i][0], trajectories[i][1] - skill_horizon + 1) for i in sorted(ids)])
    return window_starts(order[num_val:]), window_starts(order[:num_val])


def gather_images(images, index):
    """images[index] as a uint8 tensor for an index tensor of any shape -> (*index.shape, 6, 32, 32)."""
    if torch.is_tensor(images):
        return images[index]
    # a lazy image store (the maze's stacked views): only the batch's images are read
    return torch.from_numpy(np.asarray(images[index.reshape(-1).numpy()])).reshape(*index.shape, *images.shape[1:])


def get_batch(data, window_starts, skill_horizon):
    """H-step windows starting at ``window_starts``: actions (B, H, A), what the closed loop sees at each step
    (normalised states (B, H, S), or frames (B, H, 6, 32, 32) if data has "step_images"), the prior's input
    (the first state (B, S), or the first frames (B, 6, 32, 32) if data has "images")."""
    index = torch.as_tensor(window_starts)[:, None] + torch.arange(skill_horizon)  # (B, H)
    states = data["states"][index]
    prior_obs = gather_images(data["images"], index[:, 0]) if "images" in data else states[:, 0]  # s_1 only
    step_obs = gather_images(data["step_images"], index) if "step_images" in data else states
    return data["actions"][index], step_obs, prior_obs


# ----------------------------------------------------------------------------------------------------
# Evaluation, qualitative check, checkpoints
# ----------------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(model, data, window_starts, skill_horizon, chunk=512, seed=0):
    """Mean validation losses (eval mode: batch-norm running statistics, fixed posterior noise)."""
    model.eval()
    totals, count = np.zeros(3), 0
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for i in range(0, len(window_starts), chunk):
            batch = get_batch(data, window_starts[i:i + chunk], skill_horizon)
            losses = skill_model_losses(model, *batch)
            totals += np.array([loss.item() for loss in losses]) * len(batch[0])
            count += len(batch[0])
    model.train()
    return dict(zip(("recon", "kl", "prior"), totals / count))


@torch.no_grad()
def decoded_skills_figure(model, data, window_starts, skill_horizon, panel=(160, 90), header=18):
    """Image (rows: skills, columns: action dims, x: the H steps): ground truth (black), reconstruction from
    the posterior mean (red), decoding of the skill prior's mean given s_1 alone (blue). (H, W, 3) uint8."""
    from PIL import Image, ImageDraw

    model.eval()
    actions, step_obs, prior_obs = get_batch(data, window_starts, skill_horizon)
    cond = model.decoder.condition(step_obs) if model.state_conditioned_decoder else None
    mu_z, _ = model.encoder(actions, cond)
    mu_p, _ = model.skill_prior(prior_obs)
    reconstruction = model.decoder.decode(mu_z, cond, horizon=skill_horizon)
    from_prior = model.decoder.decode(mu_p, cond, horizon=skill_horizon)
    model.train()
    rows, cols = actions.shape[0], actions.shape[2]
    width, height = panel
    image = Image.new("RGB", (max(cols * width, 420), rows * height + header), "white")
    draw = ImageDraw.Draw(image)
    draw.text((4, 3), "black: ground truth   red: reconstruction   blue: decoded prior mean", fill=(0, 0, 0))
    for r in range(rows):
        for c in range(cols):
            curves = [(actions[r, :, c], (0, 0, 0)), (reconstruction[r, :, c], (220, 30, 30)),
                      (from_prior[r, :, c], (40, 80, 230))]
            low = min(curve.min().item() for curve, _ in curves)
            high = max(curve.max().item() for curve, _ in curves)
            pad = max(0.0, 0.2 - (high - low)) / 2  # a panel spans >= 0.2 so tiny errors do not look large
            low, high = low - pad, high + pad
            scale = (height - 10) / (high - low)
            x0, y0 = c * width, header + r * height
            draw.rectangle([x0, y0, x0 + width - 1, y0 + height - 1], outline=(200, 200, 200))
            for curve, color in curves:
                points = [(x0 + 5 + t * (width - 10) / max(skill_horizon - 1, 1), y0 + height - 5 - (v - low) * scale)
                          for t, v in enumerate(curve.tolist())]
                draw.line(points, fill=color, width=2)
    return np.asarray(image)


def save_checkpoint(path, model, optimizer, step, args, spec, prior_input, closed_loop_input, norm, data_source, run_name):
    """Write the checkpoint (format spirl-skill-model-v1, see docs/skill_model_format.md) atomically."""
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "env": args.env,
        "args": dict(vars(args)),
        "prior_input": prior_input,
        "state_dim": spec["state_dim"],
        "image_shape": list(spec["image_shape"]) if "image" in (prior_input, closed_loop_input) else None,
        "action_dim": spec["action_dim"],
        "skill_horizon": args.skill_horizon,
        "latent_dim": args.latent_dim,
        "hidden_dim": args.hidden_dim,
        "prior_layers": args.prior_layers,
        "state_conditioned_decoder": args.state_conditioned_decoder,
        "closed_loop_input": closed_loop_input,
        "state_mean": norm[0],
        "state_std": norm[1],
        "action_low": np.asarray(spec["action_low"], dtype=np.float32),
        "action_high": np.asarray(spec["action_high"], dtype=np.float32),
        "data_source": data_source,
        "model": model.state_dict(),
        "step": step,
        "optimizer": optimizer.state_dict(),
        "run_name": run_name,
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp_path = f"{path}.tmp"
    torch.save(checkpoint, tmp_path)
    os.replace(tmp_path, path)  # atomic: readers never see a half-written file


def closed_loop_input_of(checkpoint):
    """None (open loop), "state" or "image"; checkpoints from before --closed-loop-input have no key: state."""
    if not checkpoint["state_conditioned_decoder"]:
        return None
    return checkpoint.get("closed_loop_input") or "state"


def build_model(checkpoint):
    """The SkillModel described by a checkpoint dict, with its weights (strict)."""
    closed_loop_input = closed_loop_input_of(checkpoint)
    model = SkillModel(
        checkpoint["state_dim"], checkpoint["action_dim"], checkpoint["latent_dim"], checkpoint["hidden_dim"],
        checkpoint["prior_layers"], image_shape=checkpoint["image_shape"] if checkpoint["prior_input"] == "image" else None,
        state_conditioned_decoder=checkpoint["state_conditioned_decoder"],
        closed_loop_image_shape=checkpoint["image_shape"] if closed_loop_input == "image" else None,
    )
    model.load_state_dict(checkpoint["model"])
    return model


# ----------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------


def train(args, dataset, spec, run_dir="runs"):
    """Train the skill model on ``dataset`` (envs/__init__.py format) for the env described by ``spec``.
    Returns the first and last validation losses and the checkpoint path."""
    from torch.utils.tensorboard import SummaryWriter

    prior_input = spec["default_prior_input"] if args.prior_input == "auto" else args.prior_input
    if prior_input not in ("state", "image"):
        raise SystemExit(f"error: --prior-input must be auto, state or image, not {args.prior_input!r}")
    closed_loop_input = None
    if args.state_conditioned_decoder:  # "auto": the closed loop sees what the prior sees
        closed_loop_input = prior_input if args.closed_loop_input == "auto" else args.closed_loop_input
    beta = BETA[args.env] if args.beta is None else args.beta
    total_steps = DEFAULT_TOTAL_STEPS[args.env] if args.total_steps is None else args.total_steps
    save_path = args.save_path or f"checkpoints/skill_model_{args.env}.pt"
    H = args.skill_horizon
    trajectories = check_dataset(dataset, spec, H, prior_input, closed_loop_input)
    data_source = str(dataset.get("source", "unknown (the dataset gave no 'source')"))

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    train_starts, val_starts = split_windows(trajectories, H, args.val_fraction, np.random.default_rng(args.seed))
    val_eval = np.random.default_rng(args.seed + 1).choice(val_starts, min(len(val_starts), 2048), replace=False)
    val_qualitative = val_eval[: args.num_qualitative]

    states = np.asarray(dataset["states"], dtype=np.float32)
    usable_rows = np.concatenate([np.arange(s, e) for s, e in trajectories])
    state_mean = states[usable_rows].mean(0)
    # Floor 0.1, not ~0: a dim that barely moves in the data (a kitchen knob no demo touches, the constant
    # goal dims) would otherwise turn a small push during RL into inputs of 50+ std that wreck the critics.
    state_std = np.maximum(states[usable_rows].std(0), 0.1)

    model = SkillModel(spec["state_dim"], spec["action_dim"], args.latent_dim, args.hidden_dim, args.prior_layers,
                       image_shape=spec["image_shape"] if prior_input == "image" else None,
                       state_conditioned_decoder=args.state_conditioned_decoder,
                       closed_loop_image_shape=spec["image_shape"] if closed_loop_input == "image" else None)
    optimizer = torch.optim.RAdam(model.parameters(), lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2))
    step, run_name = 0, f"{args.env}__{args.exp_name}__{args.seed}__{int(time.time())}"
    if args.resume:
        if not os.path.exists(save_path):
            raise SystemExit(f"error: --resume but no checkpoint at {save_path}: drop --resume to start fresh")
        checkpoint = torch.load(save_path, map_location="cpu", weights_only=False)
        for key in ("env", "prior_input", "skill_horizon", "latent_dim", "hidden_dim", "prior_layers",
                    "state_conditioned_decoder", "closed_loop_input"):
            now = {"env": args.env, "prior_input": prior_input, "skill_horizon": H,
                   "closed_loop_input": closed_loop_input}.get(key, getattr(args, key, None))
            saved = closed_loop_input_of(checkpoint) if key == "closed_loop_input" else checkpoint[key]
            if saved != now:
                raise SystemExit(f"error: cannot resume {save_path}: it has {key}={saved!r}, this run {now!r}")
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        step, run_name = checkpoint["step"], checkpoint["run_name"]
        state_mean, state_std = checkpoint["state_mean"], checkpoint["state_std"]
        torch.set_rng_state(checkpoint["rng"]["torch"])
        np.random.set_state(checkpoint["rng"]["numpy"])
        random.setstate(checkpoint["rng"]["python"])
        print(f"resumed {save_path} at step {step}")

    data = {
        "states": torch.from_numpy((states - state_mean) / state_std),
        "actions": torch.from_numpy(np.asarray(dataset["actions"], dtype=np.float32)),
    }
    if "image" in (prior_input, closed_loop_input):
        images = dataset["images"]  # an array, or a lazy store indexable by an index array (too big for memory)
        images = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
        if prior_input == "image":
            data["images"] = images
        if closed_loop_input == "image":
            data["step_images"] = images

    if args.track:  # CleanRL's convention: W&B mirrors the tensorboard scalars
        import wandb

        wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, sync_tensorboard=True, config=vars(args),
                   name=run_name, save_code=True)
    log_dir = args.run_dir or os.path.join(run_dir, run_name)
    writer = SummaryWriter(log_dir, purge_step=step if args.resume else None)
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in vars(args).items()))
    writer.add_text("data_source", data_source)
    num_trajectories = len(np.asarray(dataset["traj_ends"]))
    print(f"DATA SOURCE: {data_source}")
    print(f"data: {len(states)} steps, {num_trajectories} trajectories, {num_trajectories - len(trajectories)} of them "
          f"shorter than H={H} and skipped; "
          f"{len(train_starts)} train / {len(val_starts)} validation windows (split by trajectory)")
    loop = f"closed loop on the {closed_loop_input}" if closed_loop_input else "open-loop decoder"
    print(f"model: prior input {prior_input}, {loop}, beta {beta}, batch {args.batch_size}, {total_steps} steps, "
          f"{sum(p.numel() for p in model.parameters())} parameters -> {save_path}  (tensorboard: {log_dir})")

    def checkpoint_now():
        save_checkpoint(save_path, model, optimizer, step, args, spec, prior_input, closed_loop_input, (state_mean, state_std),
                        data_source, run_name)

    def validate():
        val = evaluate(model, data, val_eval, H)
        for key, value in val.items():
            writer.add_scalar(f"val/{key}", value, step)
        figure = decoded_skills_figure(model, data, val_qualitative, H)
        writer.add_image("val/decoded_skills", figure, step, dataformats="HWC")
        from PIL import Image
        Image.fromarray(figure).save(os.path.join(log_dir, "decoded_skills.png"))
        print(f"step {step:>7d} | val recon {val['recon']:.4f} kl {val['kl']:.3f} prior {val['prior']:.3f}")
        return val

    first_val = validate()
    model.train()
    train_start, start_step = time.time(), step
    log_start, log_step, running = time.time(), step, np.zeros(3)
    while step < total_steps:
        batch = get_batch(data, train_starts[np.random.randint(len(train_starts), size=args.batch_size)], H)
        recon, kl, prior = skill_model_losses(model, *batch)
        loss = recon + beta * kl + prior  # eq. (4)
        if not math.isfinite(loss.item()):
            raise SystemExit(f"error: loss became {loss.item()} at step {step}: lower --learning-rate")
        optimizer.zero_grad()
        loss.backward()
        if step < args.init_grad_clip_steps:  # the authors clip hard early on to avoid NaNs
            nn.utils.clip_grad_norm_(model.parameters(), args.init_grad_clip)
        optimizer.step()
        step += 1
        running += [recon.item(), kl.item(), prior.item()]

        if step % args.log_interval == 0 or step == total_steps:
            elapsed = time.time() - log_start
            steps_per_s = (step - log_step) / max(elapsed, 1e-9)
            recon_m, kl_m, prior_m = running / (step - log_step)
            for key, value in (("recon", recon_m), ("kl", kl_m), ("prior", prior_m)):
                writer.add_scalar(f"losses/{key}", value, step)
            writer.add_scalar("losses/total", recon_m + beta * kl_m + prior_m, step)
            writer.add_scalar("charts/steps_per_s", steps_per_s, step)
            writer.add_scalar("charts/sequences_per_s", steps_per_s * args.batch_size, step)
            eta = (total_steps - step) / max(steps_per_s, 1e-9)
            print(f"step {step:>7d}/{total_steps} | recon {recon_m:.4f} kl {kl_m:.3f} prior {prior_m:.3f} | "
                  f"{steps_per_s:.0f} steps/s ({steps_per_s * args.batch_size:.0f} seq/s) | eta {eta / 60:.1f} min", flush=True)
            log_start, log_step, running = time.time(), step, np.zeros(3)
        if step % args.eval_interval == 0 and step < total_steps:
            validate()
        if step % args.save_interval == 0 and step < total_steps:
            checkpoint_now()

    last_val = validate()
    checkpoint_now()
    writer.close()
    minutes = (time.time() - train_start) / 60
    print(f"saved {save_path} (step {step}, {step - start_step} steps trained in {minutes:.1f} min; data: {data_source})")
    return {"first_val": first_val, "last_val": last_val, "save_path": save_path, "run_name": run_name}


if __name__ == "__main__":
    import tyro

    import envs

    args = tyro.cli(Args)
    torch.set_num_threads(args.threads)
    for name in ("total_steps", "batch_size"):  # a run that trains nothing must not write a model
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    # every output path, relative to the current directory, checked before the data are made or training starts
    for path, what in ((args.save_path or f"checkpoints/skill_model_{args.env}.pt", "checkpoint"),
                       (os.path.join(args.run_dir or "runs", "events.out"), "tensorboard log")):
        try:
            envs.ensure_writable(path, what)
        except envs.UnwritablePathError as e:
            raise SystemExit(f"error: {e}")
    spec = env_spec(args.env)
    try:
        dataset = envs.load_dataset(args.env, args.dataset)
    except (OSError, KeyError, ValueError, RuntimeError) as e:  # the env modules' one-line dataset errors
        raise SystemExit(f"error: could not load the {args.env} dataset from {args.dataset!r}: {e}")
    train(args, dataset, spec)
