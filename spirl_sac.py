"""SPiRL downstream RL: skill-prior-regularised SAC, Algorithm 1 of the paper, inline.

Paper: "Accelerating Reinforcement Learning with Learned Skill Priors" (Pertsch, Lee, Lim, CoRL 2020),
section 3.3 (Algorithm 1), appendix A (derivation, alpha update), B.2 (RL setup), E-F (ablations).

    python spirl_vae.py --env maze && python spirl_sac.py --env maze    # train skills, then the task
    python spirl_sac.py --env kitchen --delta 5                          # the paper's kitchen run
    python spirl_sac.py --env maze --resume runs/<run>/spirl_sac.pt      # continue a run
    python spirl_sac.py --env maze --evaluate runs/<run>/spirl_sac.pt    # evaluation episodes of a saved policy
    python spirl_sac.py --env maze --explore prior --total-env-steps 100000   # Fig. 5: skill rollouts only

A high-level policy pi(z|s) picks a skill z every H env steps; the frozen skill decoder of spirl_vae.py
turns z into H actions. The policy is SAC on this H-step MDP with the entropy bonus replaced by
-alpha * KL(pi(z|s) || p_a(z|s)), the divergence from the frozen learned skill prior p_a, and alpha tuned
so that this divergence stays near the target delta.
"""

import math
import os
import random
import shutil
import sys
import time
import zipfile
from dataclasses import asdict, dataclass
from typing import Literal, Optional

import numpy as np
import torch
import torch.nn as nn
import tyro
from torch.utils.tensorboard import SummaryWriter

import envs

DEFAULT_DELTA = {"maze": 1.0, "kitchen": 5.0, "block_stacking": 5.0}  # appendix B.2
# Critic hidden blocks n of the authors' MLP builder (input layer + n blocks + head, 256 units): their
# configs' n_layers, 2 for the maze and block stacking, 5 for the kitchen.
DEFAULT_CRITIC_LAYERS = {"maze": 2, "kitchen": 5, "block_stacking": 2}
# Run lengths of the authors' configs (kitchen 15 x 100 000, maze 30 x 100 000, block stacking 100 x 100 000).
DEFAULT_TOTAL_ENV_STEPS = {"maze": 3_000_000, "kitchen": 1_500_000, "block_stacking": 10_000_000}
# B.2 and the authors' code: skills are squashed by tanh into [-2, 2]. The VAE's N(0, I) latent prior keeps most
# skills inside, but not all: with the kitchen's small beta 10-16 % of prior samples' dims lie outside and are
# pulled in (measured in docs/kitchen_demo.md).
SKILL_RANGE = 2.0
KL_CLAMP = 100.0  # a state's KL is clamped at 100 (as the authors) so one outlier cannot blow up a batch
CHECKPOINT_FORMAT = "spirl-sac-v1"
SKILL_MODEL_FORMAT = "spirl-skill-model-v1"


@dataclass
class Args:
    env: str = "maze"
    """downstream task: maze, block_stacking or kitchen"""
    skill_model: Optional[str] = None
    """skill model written by spirl_vae.py; None: checkpoints/skill_model_<env>.pt"""
    seed: int = 1
    """seed of python, numpy, torch and the envs"""
    torch_deterministic: bool = True
    """sets torch.backends.cudnn.deterministic"""
    cuda: bool = False
    """train on the GPU if one is available (the default machine is a CPU)"""
    torch_threads: int = 1
    """CPU threads of torch; 1 is the fastest on a small shared CPU (2 threads ran ~10x slower on a busy 2-core box)"""
    exp_name: str = "spirl_sac"
    """name of this experiment (part of the run name under runs/)"""
    total_env_steps: Optional[int] = None
    """env steps to train for, warm-up included; None: the authors' run length (maze 3 M, kitchen 1.5 M,
    block_stacking 10 M), or with --resume the saved run's total"""
    delta: Optional[float] = None
    """target divergence: the bound on KL(pi || p_a), reduced over latent dims as --kl-reduction says; None: the
    paper's per-env value (maze 1, kitchen and block_stacking 5)"""
    kl_reduction: Literal["sum", "mean"] = "sum"
    """how the per-dim KLs of the 10-dim skill are reduced: "sum" is the KL between the skill distributions (the
    paper's D_KL and the authors' code since 2020-11-30); "mean" (their first release) is 10x looser at the same delta"""
    gamma: float = 0.99
    """discount per high-level (H-step) transition (B.2)"""
    tau: float = 5e-3
    """target network update rate (B.2)"""
    batch_size: int = 256
    """high-level transitions per gradient step (B.2)"""
    buffer_size: int = 1_000_000
    """replay buffer capacity in high-level transitions (B.2)"""
    learning_starts: int = 5000
    """warm-up: high-level transitions (skills) sampled from the prior before the first update (B.2; the authors'
    5 000 = 50 000 env steps at H = 10); their env steps count toward --total-env-steps and appear in the curves;
    --resume from a checkpoint whose replay buffer is missing refills as many with the current policy first"""
    gradient_steps: int = 1
    """gradient steps per high-level step (Alg. 1 line 8)"""
    policy_lr: float = 3e-4
    """Adam learning rate of the policy (B.2)"""
    q_lr: float = 3e-4
    """Adam learning rate of the critics (B.2)"""
    alpha_lr: float = 3e-4
    """Adam learning rate of log alpha (B.2)"""
    alpha_init: float = 1.0
    """initial alpha (log alpha = 0, as standard SAC and the authors' code)"""
    alpha_min: Optional[float] = None
    """floor of alpha (None, as the authors' default: no floor). While the policy stays at the prior (KL < delta)
    alpha keeps shrinking; a floor bounds how far the KL can overshoot delta when reward first pulls the policy
    away. Log alpha is projected back onto the floor after each step, so alpha can rise again at once (the
    authors' `alpha_min` clamps alpha in the losses instead, which stops log alpha's gradient below the floor
    and leaves alpha there for good)"""
    reward_scale: float = 1.0
    """factor on the summed reward r~ in the Q-target (the authors' SAC option `reward_scale`, 1 in their configs);
    the critics then learn values of the scaled reward, and alpha, tuned against delta, scales with them. The
    logged returns stay unscaled"""
    bootstrap_at_time_limit: bool = True
    """at a time-limit truncation the Q-target bootstraps from the last observation (the standard choice: the state
    did not end); --no-bootstrap-at-time-limit stores done = 1 there instead, as the authors' code does"""
    critic_layers: Optional[int] = None
    """hidden blocks n of each critic MLP as the authors' builder counts them (input layer, n blocks, head: n + 1
    hidden layers); None: their configs' n (maze and block_stacking 2, kitchen 5)"""
    critic_hidden_dim: int = 256
    """units per critic hidden layer"""
    critic_layer_norm: bool = False
    """LayerNorm after every hidden Linear of the critics (not in the paper nor the authors' code, which use no
    normalisation): a lever against the critic divergence measured in docs/spirl_sac.md, where the whole value
    level inflates through the bootstrapped targets. Normalised features bound |Q| by the head's weights and are
    known to keep TD learning from diverging (Ball et al. 2023; Gallici et al. 2024)"""
    critic_reward_flags: bool = False
    """the critics also see the env's reward flags, info["reward_flags"] (block stacking: each block's sticky lifted
    and delivered flag, which its reward pays on for the rest of the episode but its state does not show). Not the
    paper's nor the authors' (their critics see the state only): a lever of issue 18. The policy and prior are
    unchanged; only the critics' input grows, so the reward they regress onto becomes a function of what they see"""
    prior_init: bool = True
    """initialise the policy with the skill prior's weights (B.2); --no-prior-init is appendix F's ablation"""
    omega_constant_steps: int = 500_000
    """--no-prior-init only: env steps during which every skill is sampled from the prior (omega = 1, appendix F)"""
    omega_anneal_steps: int = 500_000
    """--no-prior-init only: env steps over which omega then falls linearly to 0 (appendix F)"""
    eval_interval: int = 50_000
    """env steps between evaluations (0: only at the end)"""
    eval_episodes: int = 2
    """episodes per evaluation"""
    eval_deterministic: bool = False
    """evaluate with the mean skill 2 tanh(mu(s)); default: skills sampled from pi(z|s) as in training, as the
    authors' agent also evaluates (the mean of a skill distribution that spreads over several skills can be a
    skill no sample would take, e.g. one that stops at a wall)"""
    capture_video: bool = False
    """save the first episode of every evaluation as an animated GIF under videos/, one frame per skill (env must render
    rgb_array); with --evaluate, every episode (<checkpoint>_evaluate_<k>.gif), to pick the best one"""
    log_interval: int = 100
    """high-level steps between tensorboard scalars of the updates"""
    progress_interval: int = 10_000
    """env steps between progress lines"""
    checkpoint_interval: int = 100_000
    """env steps between periodic checkpoints (a final one is always written)"""
    keep_checkpoints: bool = False
    """also keep every periodic checkpoint as <save_path stem>_<env step>.pt (without the replay buffer; kitchen ~13 MB
    each), so that a run's policy can be studied where it changed, e.g. with --evaluate"""
    save_path: Optional[str] = None
    """checkpoint path; None: <run_dir>/spirl_sac.pt"""
    run_dir: Optional[str] = None
    """directory of the tensorboard events, the videos and (without --save-path) the checkpoint; None: runs/<run_name>"""
    save_replay_buffer: bool = True
    """also save the replay buffer (next to the checkpoint, <save_path>.replay.npz) so --resume continues exactly"""
    resume: Optional[str] = None
    """continue training from this checkpoint (its saved settings; --total-env-steps may extend the run, --run-dir /
    --save-path send the outputs elsewhere, by default they go where the saved run wrote them)"""
    evaluate: Optional[str] = None
    """only run --eval-episodes evaluation episodes of this checkpoint's policy, then exit"""
    explore: Optional[Literal["prior", "uniform", "normal"]] = None
    """no learning: roll out skills from the prior, z ~ U[-2, 2]^d ("uniform") or N(0, I) ("normal") for --total-env-steps and save the visited states (Fig. 5)"""
    strict_order: bool = True
    """kitchen only: a subtask counts only once all before it are done (the authors' later plots; harder);
    --no-strict-order counts them in any order, as upstream D4RL and the authors' fork at the paper's time (the
    paper's Fig. 4 numbers). Both counts are logged either way"""
    goal_radius: Optional[float] = None
    """maze only: reward at every step within this distance of the goal; None: 1.0, the authors' value at the
    paper's time (2.0 is their later value); with --evaluate, None is the evaluated run's radius"""
    sparse_reward: bool = False
    """block_stacking only: the authors' sparse reward (their SparseHighStack env, used by their closed-loop config):
    the tower's height only, 0.08 per block per step, no lift / delivery flags; default: the paper's dense reward
    (--evaluate of a run trained with it uses it too)"""
    track: bool = False
    """log to Weights & Biases too (pip install wandb; WANDB_MODE=offline works without a network)"""
    wandb_project_name: str = "spirl"
    """the W&B project"""
    wandb_entity: Optional[str] = None
    """the W&B entity (team); None: your default"""


# ----------------------------------------------------------------------------------------------------
# Skill model networks, copied verbatim from spirl_vae.py so its checkpoints load with strict=True.
# ----------------------------------------------------------------------------------------------------

LOG_SIGMA_MIN, LOG_SIGMA_MAX = -10.0, 2.0  # every Gaussian's log sigma is clamped to this range


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
# SAC networks. The policy pi(z|s) is a SkillPrior (B.2: "the architecture of policy and critic mirror
# the one of the skill prior network"); its Gaussian is over the pre-tanh skill u, z = 2 tanh(u).
# ----------------------------------------------------------------------------------------------------


class Critic(nn.Module):
    """Q(s, z): an MLP over the normalised low-dim state and the skill, built as the authors' builder does:
    an input layer, num_layers hidden blocks and a head (num_layers + 1 hidden layers of hidden_dim), leaky-ReLU,
    no normalisation (layer_norm: our lever, not theirs), Xavier-normal weights and zero biases. The critics see
    obs["state"] even when the prior and policy see images, as in the authors' maze runs (--critic-reward-flags: with
    the env's reward flags appended)."""

    def __init__(self, state_dim, latent_dim, hidden_dim=256, num_layers=2, layer_norm=False):
        super().__init__()
        def hidden(in_dim):  # --critic-layer-norm puts a LayerNorm between the Linear and its activation
            norm = [nn.LayerNorm(hidden_dim)] if layer_norm else []
            return [nn.Linear(in_dim, hidden_dim), *norm, nn.LeakyReLU(0.2)]
        layers = hidden(state_dim + latent_dim)
        for _ in range(num_layers):
            layers += hidden(hidden_dim)
        layers.append(nn.Linear(hidden_dim, 1))
        self.mlp = nn.Sequential(*layers)
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.xavier_normal_(layer.weight)
                nn.init.zeros_(layer.bias)

    def forward(self, state, skill):
        return self.mlp(torch.cat([state, skill], dim=-1)).squeeze(-1)  # (B,)


def squashed_sample(mu, log_sigma, generator=None):
    """Reparameterised skill sample z = 2 tanh(u), u ~ N(mu, sigma) (B.2's tanh squashing to [-2, 2]);
    `generator`: a random stream of its own (evaluation), else torch's global one."""
    u = mu + log_sigma.exp() * torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
    return SKILL_RANGE * torch.tanh(u)


def prior_divergence(mu_pi, log_sigma_pi, mu_prior, log_sigma_prior, reduction="sum"):
    """KL(pi(z|s) || p_a(z|s)) per state, (B,): analytic KL between the policy's Gaussian *before* tanh and
    the prior's Gaussian, per latent dim, then the SUM over latent dims (reduction="mean": the mean).

    Why analytic on the pre-tanh Gaussians: both are diagonal Gaussians, so the KL is exact and has no
    sampling noise (appendix F: sampled estimates were unreliable early in training); the tanh is the same
    fixed bijection applied to policy samples in every state and only keeps skills inside the decoder's
    training range. Why the sum: the paper's D_KL is between distributions over the whole skill z, the sum
    of the per-dim KLs, and the authors' maintained code bounds that sum by delta (their first release
    averaged over dims, a 10x looser constraint at the same delta). Clamped at 100 against outliers."""
    kl = gaussian_kl(mu_pi, log_sigma_pi, mu_prior, log_sigma_prior)  # (B, latent_dim)
    return (kl.sum(-1) if reduction == "sum" else kl.mean(-1)).clamp(max=KL_CLAMP)


def sac_update(batch, policy, qf1, qf2, qf1_target, qf2_target, log_alpha,
               policy_optimizer, q_optimizer, alpha_optimizer, gamma, tau, delta, kl_reduction="sum", alpha_min=None):
    """One gradient step of Algorithm 1 (lines 9-13) on a batch of high-level transitions.

    batch: dict of tensors -- policy_obs / next_policy_obs (what the policy and prior see), critic_obs /
    next_critic_obs (normalised low-dim state; --critic-reward-flags: the reward flags appended), skill (B, d),
    reward (B,) = sum of the H rewards, done (B,) = 1 where the target must not bootstrap (a terminal; a time limit
    with --no-bootstrap-at-time-limit), and the frozen prior's Gaussian at s and s' (prior_mu, prior_log_sigma,
    next_prior_mu, next_prior_log_sigma; computed once when the transition was stored). alpha_min: alpha's floor
    (None: none); log alpha is projected onto it after its step.
    """
    alpha = log_alpha.exp().detach()

    # Alg. 1 line 9: Q-target; alpha * KL(pi || p_a) at s' takes the place of SAC's entropy bonus
    with torch.no_grad():
        next_mu, next_log_sigma = policy(batch["next_policy_obs"])
        next_skill = squashed_sample(next_mu, next_log_sigma)
        next_kl = prior_divergence(next_mu, next_log_sigma, batch["next_prior_mu"], batch["next_prior_log_sigma"],
                                   kl_reduction)
        next_q = torch.min(qf1_target(batch["next_critic_obs"], next_skill), qf2_target(batch["next_critic_obs"], next_skill))
        # no bootstrapping past a terminal; by default a time-limit truncation is stored with done = 0 and
        # bootstraps (--bootstrap-at-time-limit)
        q_target = batch["reward"] + gamma * (1.0 - batch["done"]) * (next_q - alpha * next_kl)

    # Alg. 1 line 10: policy loss alpha * KL(pi || p_a) - min Q(s, z ~ pi), z reparameterised. The gradient
    # reaches the policy through the critics' input z; the critics' own parameters are frozen for this pass,
    # which spares the weight-gradient half of their backward pass (a third of an update's arithmetic).
    mu, log_sigma = policy(batch["policy_obs"])
    skill = squashed_sample(mu, log_sigma)
    kl = prior_divergence(mu, log_sigma, batch["prior_mu"], batch["prior_log_sigma"], kl_reduction)  # (B,)
    qf1.requires_grad_(False)
    qf2.requires_grad_(False)
    q_pi = torch.min(qf1(batch["critic_obs"], skill), qf2(batch["critic_obs"], skill))
    qf1.requires_grad_(True)
    qf2.requires_grad_(True)
    policy_loss = (alpha * kl - q_pi).mean()

    # Alg. 1 line 11: critics regress onto the target, 0.5 * squared error, both critics
    q1 = qf1(batch["critic_obs"], batch["skill"])
    q2 = qf2(batch["critic_obs"], batch["skill"])
    qf_loss = 0.5 * ((q1 - q_target) ** 2).mean() + 0.5 * ((q2 - q_target) ** 2).mean()

    # Alg. 1 line 12, with the sign of appendix A (the algorithm box has it flipped): minimise
    # alpha * (delta - KL) over log alpha, so alpha grows while KL > delta and shrinks while KL < delta
    alpha_loss = (log_alpha.exp() * (delta - kl.detach())).mean()

    # Lines 10-12's steps. Each loss reaches only its own parameters (the critics frozen in the policy loss, alpha
    # and the KL detached where they meet, the critics' loss on replayed skills), and every loss is computed from the
    # parameters before any step, so one backward pass of their sum gives each network exactly the gradient of its
    # own loss: the same step as three backward passes, for one run of the autograd engine (0.7-2.8 ms less per update).
    for optimizer in (policy_optimizer, q_optimizer, alpha_optimizer):
        optimizer.zero_grad()
    (policy_loss + qf_loss + alpha_loss).backward()
    for optimizer in (policy_optimizer, q_optimizer, alpha_optimizer):
        optimizer.step()
    if alpha_min is not None:  # --alpha-min: projected back onto the floor, free to rise from it at the next step
        with torch.no_grad():
            log_alpha.clamp_(min=math.log(alpha_min))

    # Alg. 1 line 13: Polyak averaging of the target critics
    with torch.no_grad():
        for net, target in ((qf1, qf1_target), (qf2, qf2_target)):
            for param, target_param in zip(net.parameters(), target.parameters()):
                target_param.lerp_(param, tau)  # target <- tau * param + (1 - tau) * target

    return {
        "q_target": q_target, "qf1_values": q1.mean().item(), "qf2_values": q2.mean().item(),
        "qf_loss": qf_loss.item(), "policy_loss": policy_loss.item(), "alpha_loss": alpha_loss.item(),
        "alpha": log_alpha.exp().item(), "kl": kl.mean().item(),
    }


# ----------------------------------------------------------------------------------------------------
# The H-step MDP: replay buffer of high-level transitions and skill execution (Alg. 1 lines 4-7).
# ----------------------------------------------------------------------------------------------------


class ReplayBuffer:
    """High-level transitions (s_t, z_t, r~ = sum of the H rewards, s_{t+H}, done) of Alg. 1 line 7.

    States are stored raw; images as uint8. Because the prior is frozen, its Gaussian at s_t and s_{t+H}
    is stored with the transition instead of being recomputed at every gradient step."""

    def __init__(self, capacity, state_dim, latent_dim, state_mean, state_std, image_shape=None, device="cpu",
                 flags_dim=0):
        self.capacity, self.size, self.pos, self.device = capacity, 0, 0, device
        self.state_mean, self.state_std = np.asarray(state_mean, np.float32), np.asarray(state_std, np.float32)
        self.data = {
            "state": np.zeros((capacity, state_dim), np.float32),
            "next_state": np.zeros((capacity, state_dim), np.float32),
            "skill": np.zeros((capacity, latent_dim), np.float32),
            "reward": np.zeros(capacity, np.float32),
            "done": np.zeros(capacity, np.float32),
            "prior_mu": np.zeros((capacity, latent_dim), np.float32),
            "prior_log_sigma": np.zeros((capacity, latent_dim), np.float32),
            "next_prior_mu": np.zeros((capacity, latent_dim), np.float32),
            "next_prior_log_sigma": np.zeros((capacity, latent_dim), np.float32),
        }
        if flags_dim:  # --critic-reward-flags: the env's reward flags at s_t and s_{t+H}, for the critics only
            self.data["flags"] = np.zeros((capacity, flags_dim), np.float32)
            self.data["next_flags"] = np.zeros((capacity, flags_dim), np.float32)
        if image_shape is not None:  # np.zeros only commits memory for the rows that get written
            # stored channels-last, (H, W, C): a sampled batch is then already in the memory layout in which the CPU's
            # convolutions run fastest (see make_policy), with no transposing copy at every update
            channels, height, width = image_shape
            self.data["image"] = np.zeros((capacity, height, width, channels), np.uint8)
            self.data["next_image"] = np.zeros((capacity, height, width, channels), np.uint8)

    def add(self, **transition):
        """One transition; keys as self.data (images only when the prior sees images, as (C, H, W))."""
        for key, array in self.data.items():
            array[self.pos] = np.moveaxis(transition[key], 0, -1) if key in ("image", "next_image") else transition[key]
        self.pos = (self.pos + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size, rng):
        """A uniform batch, as the tensors sac_update() takes."""
        idx = rng.integers(0, self.size, size=batch_size)
        t = {key: torch.as_tensor(array[idx], device=self.device) for key, array in self.data.items()}
        mean, std = torch.as_tensor(self.state_mean, device=self.device), torch.as_tensor(self.state_std, device=self.device)
        state_obs, next_state_obs = (t["state"] - mean) / std, (t["next_state"] - mean) / std
        critic_obs, next_critic_obs = state_obs, next_state_obs
        if "flags" in t:  # --critic-reward-flags: the critics see [normalised state, reward flags]
            critic_obs = torch.cat([state_obs, t["flags"]], -1)
            next_critic_obs = torch.cat([next_state_obs, t["next_flags"]], -1)
        images = "image" in t
        if images:  # (B, H, W, C) -> (B, C, H, W) with channels-last strides: a view, no copy
            t["image"], t["next_image"] = (t[k].permute(0, 3, 1, 2) for k in ("image", "next_image"))
        return {
            "policy_obs": t["image"] if images else state_obs,
            "next_policy_obs": t["next_image"] if images else next_state_obs,
            "critic_obs": critic_obs, "next_critic_obs": next_critic_obs,
            **{key: t[key] for key in ("skill", "reward", "done", "prior_mu", "prior_log_sigma",
                                       "next_prior_mu", "next_prior_log_sigma")},
        }

    def state_dict(self):
        return {"size": self.size, "pos": self.pos, **{k: v[: self.size] for k, v in self.data.items()}}

    def load_state_dict(self, saved):
        size = int(saved["size"])
        if size > self.capacity:
            raise SetupError(f"saved replay buffer holds {size} transitions, more than --buffer-size {self.capacity}")
        for key, array in self.data.items():
            if key not in saved:
                raise SetupError(f"the saved replay buffer has no {key!r}: it was written by a run with other settings")
            if key in ("image", "next_image") and saved[key].shape[1:] != array.shape[1:]:
                array[:size] = np.moveaxis(saved[key], 1, -1)  # a buffer saved before images were stored (H, W, C)
            else:
                array[:size] = saved[key]
        self.size, self.pos = size, int(saved["pos"]) % self.capacity


def execute_skill(env, obs, skill, decoder, skill_horizon, state_mean, state_std, action_low, action_high,
                  closed_loop):
    """Alg. 1 line 6: decode skill z (latent,) into up to H actions and execute them.

    Open loop (paper): all H actions are decoded from z before the first step. Closed loop (a model
    trained with --state-conditioned-decoder): each action is decoded from z and the *current* observation
    (the normalised state, or the stacked frames for a model trained with --closed-loop-input image).
    Stops early when the episode ends inside the skill. Returns the H-step transition's pieces: the last
    observation (before any reset), the summed reward, terminated / truncated of the last step, its info,
    the number of env steps taken and the low-dim states visited after every step (n_steps, state_dim)."""
    z = torch.as_tensor(skill, dtype=torch.float32).unsqueeze(0)
    with torch.no_grad():
        if not closed_loop:
            actions = decoder.decode(z, horizon=skill_horizon)[0].numpy()  # (H, action_dim)
        hidden = None
    reward_sum, visited = 0.0, []
    terminated = truncated = False
    info = {}
    for t in range(skill_horizon):
        if closed_loop:
            if decoder.image_encoder is not None:
                seen = torch.as_tensor(obs["image"]).unsqueeze(0)  # (1, 6, 32, 32) uint8
            else:
                seen = torch.as_tensor((obs["state"] - state_mean) / state_std, dtype=torch.float32).unsqueeze(0)
            with torch.no_grad():
                action, hidden = decoder.decode_step(z, decoder.condition(seen), hidden)
            action = action[0].numpy()
        else:
            action = actions[t]
        obs, reward, terminated, truncated, info = env.step(np.clip(action, action_low, action_high))
        reward_sum += float(reward)
        visited.append(obs["state"])
        if terminated or truncated:
            break
    return obs, reward_sum, terminated, truncated, info, t + 1, np.asarray(visited)


# ----------------------------------------------------------------------------------------------------
# Loading the skill model and checking it fits the env.
# ----------------------------------------------------------------------------------------------------


class SetupError(Exception):
    """A problem with the user's input; main prints it as one line and exits."""


def default_skill_model_path(env_name):
    return os.path.join("checkpoints", f"skill_model_{env_name}.pt")


def read_skill_model(path, env_name):
    """The checkpoint dict spirl_vae.py wrote, or a SetupError naming the command that writes it."""
    command = f"python spirl_vae.py --env {env_name}"
    if path != default_skill_model_path(env_name):
        command += f" --save-path {path}"
    if not os.path.isfile(path):
        raise SetupError(f"skill model {path} not found: train it first with `{command}`")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise SetupError(f"cannot read skill model {path} ({type(e).__name__}): retrain it with `{command}`") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != SKILL_MODEL_FORMAT:
        raise SetupError(f"{path} is not a spirl_vae.py skill model ({SKILL_MODEL_FORMAT}): train one with `{command}`")
    ckpt.pop("optimizer", None)  # the VAE's optimizer state is not needed here
    return ckpt


def load_skill_model(path, env_name, env):
    """The skill model of spirl_vae.py -> (decoder, skill_prior, meta), frozen, checked against env."""
    return build_skill_model(read_skill_model(path, env_name), env_name, env, path)


def build_skill_model(ckpt, env_name, env, source="skill model"):
    """Decoder and prior from a skill-model dict (the file's contents), checked against env."""
    if ckpt["env"] != env_name:
        raise SetupError(f"{source} was trained on env {ckpt['env']!r}, not {env_name!r}: pass --env {ckpt['env']} "
                         f"or train one with `python spirl_vae.py --env {env_name}`")
    state_dim = env.observation_space["state"].shape[0]
    action_dim = env.action_space.shape[0]
    if ckpt["state_dim"] != state_dim or ckpt["action_dim"] != action_dim:
        raise SetupError(f"{source} has state_dim {ckpt['state_dim']} / action_dim {ckpt['action_dim']}, but env "
                         f"{env_name} has {state_dim} / {action_dim}: retrain it with `python spirl_vae.py --env {env_name}`")
    # the closed loop sees the state or the frames (spirl_vae.py --closed-loop-input; older checkpoints: state)
    closed_loop_input = (ckpt.get("closed_loop_input") or "state") if ckpt["state_conditioned_decoder"] else None
    image_shape = tuple(ckpt["image_shape"]) if ckpt["prior_input"] == "image" else None  # the prior's input
    if "image" in (ckpt["prior_input"], closed_loop_input):
        env_image = env.observation_space.spaces.get("image")
        if env_image is None or tuple(env_image.shape) != tuple(ckpt["image_shape"]):
            user = "prior" if ckpt["prior_input"] == "image" else "closed-loop decoder"
            raise SetupError(f"{source} has an image {user} over {tuple(ckpt['image_shape'])}, but env {env_name} gives "
                             f"{None if env_image is None else tuple(env_image.shape)}: retrain it with "
                             f"`python spirl_vae.py --env {env_name}`")
    decoder = SkillDecoder(action_dim, ckpt["latent_dim"], ckpt["hidden_dim"],
                           state_dim=state_dim if closed_loop_input == "state" else 0,
                           image_shape=tuple(ckpt["image_shape"]) if closed_loop_input == "image" else None)
    skill_prior = SkillPrior(ckpt["latent_dim"], ckpt["hidden_dim"], ckpt["prior_layers"],
                             state_dim=state_dim, image_shape=image_shape)
    model = ckpt["model"]
    decoder.load_state_dict({k[len("decoder."):]: v for k, v in model.items() if k.startswith("decoder.")}, strict=True)
    skill_prior.load_state_dict({k[len("skill_prior."):]: v for k, v in model.items() if k.startswith("skill_prior.")}, strict=True)
    for net in (decoder, skill_prior):  # frozen: eval mode (batch-norm statistics fixed), no gradients
        net.eval().requires_grad_(False)
    meta = {k: v for k, v in ckpt.items() if k not in ("model", "optimizer")}
    meta["image_shape"] = image_shape
    return decoder, skill_prior, meta


def make_policy(skill_prior, meta, prior_init):
    """pi(z|s) with the prior's architecture (B.2); with prior_init, a copy of the prior's weights and
    batch-norm statistics. Kept in eval mode for good: batch-norm statistics are never updated (only
    its affine weights train), so the initialised policy's Gaussian equals the prior's on every state."""
    policy = SkillPrior(meta["latent_dim"], meta["hidden_dim"], meta["prior_layers"],
                        state_dim=meta["state_dim"], image_shape=meta["image_shape"])
    if prior_init:
        policy.load_state_dict(skill_prior.state_dict())
    if meta["image_shape"] is not None:  # channels-last conv weights: ~1.5x faster convolutions on a CPU, same maths
        policy = policy.to(memory_format=torch.channels_last)
    return policy.eval()


def make_adam(params, lr):
    """Adam with B.2's settings, fused: one kernel per step for all tensors instead of a dozen small ops per
    tensor (the same maths; ~3 ms less per update on a CPU)."""
    return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), fused=True)


def omega_schedule(env_step, constant_steps, anneal_steps):
    """Appendix F: fraction of skills sampled from the prior instead of the policy (--no-prior-init)."""
    if env_step < constant_steps:
        return 1.0
    return max(0.0, 1.0 - (env_step - constant_steps) / max(anneal_steps, 1))


def save_atomic(obj, path, save=torch.save):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp"
    save(obj, tmp)
    os.replace(tmp, path)


def save_replay(rb, path):
    """The replay buffer as an .npz (np.load reads it), deflated at level 1: a maze buffer of 30 000 transitions
    shrinks 376 -> 44 MB for 1.2 s more per save (np.savez_compressed's level 6: 35 MB but 6 s more)."""
    def save(obj, tmp):
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
            for key, value in obj.items():
                with archive.open(f"{key}.npy", "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.asarray(value), allow_pickle=False)
    save_atomic(rb.state_dict(), path, save)


def save_gif(frames, path, max_frames=300):
    """Frames (rgb arrays) as an animated GIF, at most max_frames evenly spaced ones."""
    from PIL import Image

    frames = [f for f in frames if f is not None]
    if not frames:
        return
    frames = frames[:: max(1, len(frames) // max_frames)]
    images = [Image.fromarray(np.asarray(f, dtype=np.uint8)) for f in frames]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    images[0].save(path, save_all=True, append_images=images[1:], duration=40, loop=0)


# ----------------------------------------------------------------------------------------------------
# Main: setup, Algorithm 1's loop, evaluation, checkpoints.
# ----------------------------------------------------------------------------------------------------


def format_duration(seconds):
    """'42s', '12m05s' or '3h07m', for progress lines."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def load_sac_checkpoint(path, flag):
    if not os.path.isfile(path):
        raise SetupError(f"{flag} {path}: no such checkpoint (spirl_sac.py writes runs/<run>/spirl_sac.pt)")
    saved = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(saved, dict) or saved.get("format") != CHECKPOINT_FORMAT:
        raise SetupError(f"{flag} {path} is not a spirl_sac.py checkpoint")
    return saved


def resolve_args(args):
    """Per-env defaults and checks of the user's values -> (args, the --resume / --evaluate checkpoint or None).
    --resume continues with the saved settings; --evaluate runs the saved policy on its own env."""
    saved = None
    if args.resume is not None:
        saved = load_sac_checkpoint(args.resume, "--resume")
        kept = {"resume": args.resume, "total_env_steps": saved["args"]["total_env_steps"] if args.total_env_steps is None else args.total_env_steps}
        # where the outputs go is not a setting: a given --run-dir / --save-path wins over the saved run's (a resumed
        # copy of a run must not write into the original)
        if args.run_dir is not None:
            kept.update(run_dir=args.run_dir, save_path=args.save_path)
        elif args.save_path is not None:
            kept.update(save_path=args.save_path)
        args = Args(**{**saved["args"], **kept})
    elif args.evaluate is not None:
        saved = load_sac_checkpoint(args.evaluate, "--evaluate")
        args.env = saved["env"]
        # the saved run's task too: its goal radius unless one is given (success depends on it), its reward variant
        if args.goal_radius is None:
            args.goal_radius = saved["args"].get("goal_radius")
        args.sparse_reward = args.sparse_reward or saved["args"].get("sparse_reward", False)
    if args.env not in envs.ENV_NAMES:
        raise SetupError(f"unknown env {args.env!r}: choose one of {', '.join(envs.ENV_NAMES)}")
    args.skill_model = args.skill_model or default_skill_model_path(args.env)
    args.delta = DEFAULT_DELTA[args.env] if args.delta is None else args.delta
    if not args.delta > 0:
        raise SetupError(f"--delta {args.delta}: the target divergence must be > 0 (paper: 1 maze, 5 kitchen / block_stacking)")
    # `is None`, not `or`: an explicit 0 must reach the check below instead of becoming the default
    args.critic_layers = DEFAULT_CRITIC_LAYERS[args.env] if args.critic_layers is None else args.critic_layers
    args.total_env_steps = DEFAULT_TOTAL_ENV_STEPS[args.env] if args.total_env_steps is None else args.total_env_steps
    for name in ("total_env_steps", "batch_size", "buffer_size", "gradient_steps", "critic_layers", "eval_episodes"):
        if getattr(args, name) < 1:
            raise SetupError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not args.reward_scale > 0:
        raise SetupError(f"--reward-scale must be > 0, got {args.reward_scale} (1: the reward as the env gives it)")
    if args.alpha_init <= 0:
        raise SetupError(f"--alpha-init must be > 0, got {args.alpha_init}")
    if args.alpha_min is not None and not 0 < args.alpha_min <= args.alpha_init:
        raise SetupError(f"--alpha-min must be > 0 and at most --alpha-init ({args.alpha_init}), got {args.alpha_min}")
    if args.goal_radius is not None and (args.env != "maze" or args.goal_radius <= 0):
        raise SetupError(f"--goal-radius {args.goal_radius}: only the maze has a goal radius, and it must be > 0")
    if args.sparse_reward and args.env != "block_stacking":
        raise SetupError(f"--sparse-reward: only block_stacking has a sparse reward variant, not {args.env!r}")
    return args, saved


def make_env(args, seed, render_mode=None):
    try:
        options = {"strict_order": args.strict_order} if args.env == "kitchen" else {}
        if args.goal_radius is not None:
            options["goal_radius"] = args.goal_radius
        if args.sparse_reward:
            options["reward"] = "sparse"
        return envs.make_env(args.env, seed=seed, render_mode=render_mode, **options)
    except ModuleNotFoundError as e:
        raise SetupError(f"env {args.env!r} cannot be built: module {e.name} is missing ({e})") from None


def main(args):
    args, saved = resolve_args(args)
    resume_ckpt, eval_ckpt = (saved, None) if args.resume is not None else (None, saved)
    run_name = resume_ckpt["run_name"] if resume_ckpt else f"{args.env}__{args.exp_name}__{args.seed}__{int(time.time())}"
    save_path = args.save_path or os.path.join(args.run_dir or os.path.join("runs", run_name), "spirl_sac.pt")
    # Output paths (relative to the current directory, like every default path). --evaluate writes next to
    # the evaluated checkpoint. All are checked before any work, so a bad path fails now, not after training.
    log_dir = args.run_dir or os.path.join("runs", run_name)
    video_dir = os.path.join(args.run_dir, "videos") if args.run_dir else os.path.join("videos", run_name)
    eval_prefix = os.path.splitext(args.evaluate)[0] + "_evaluate" if args.evaluate is not None else None
    if eval_prefix is not None:
        outputs = {eval_prefix + ".npz": "evaluation output"}
    elif args.explore is not None:
        outputs = {os.path.join(log_dir, f"explore_{args.explore}.npz"): "exploration output"}
    else:
        outputs = {save_path: "checkpoint", os.path.join(log_dir, "events.out"): "tensorboard log"}
        if args.capture_video:
            outputs[os.path.join(video_dir, "eval.gif")] = "video"
    for path, what in outputs.items():
        try:
            envs.ensure_writable(path, what)
        except envs.UnwritablePathError as e:
            raise SetupError(str(e)) from None

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    torch.set_num_threads(args.torch_threads)
    rng = np.random.default_rng(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")

    # Skill model: frozen decoder and prior. A SAC checkpoint carries its own copy (resume / evaluate).
    skill_ckpt = (eval_ckpt or resume_ckpt or {}).get("skill_model")
    skill_source = "the checkpoint's skill model" if skill_ckpt is not None else args.skill_model
    skill_ckpt = skill_ckpt or read_skill_model(args.skill_model, args.env)
    env = make_env(args, args.seed)
    eval_env = make_env(args, args.seed + 10_000, render_mode="rgb_array" if args.capture_video else None)
    metric = envs.env_module(args.env).METRIC
    decoder, skill_prior, meta = build_skill_model(skill_ckpt, args.env, env, skill_source)
    skill_prior = skill_prior.to(device)
    H, latent_dim, closed_loop = meta["skill_horizon"], meta["latent_dim"], bool(meta["state_conditioned_decoder"])
    image_prior = meta["image_shape"] is not None
    state_mean = np.asarray(meta["state_mean"], np.float32)
    state_std = np.asarray(meta["state_std"], np.float32)
    action_low, action_high = np.asarray(meta["action_low"]), np.asarray(meta["action_high"])
    print(f"skill model: {skill_source} | env {args.env} | H {H} | "
          f"z dim {latent_dim} | prior input {meta['prior_input']} | {'closed' if closed_loop else 'open'}-loop decoder | "
          f"data: {meta.get('data_source', '?')}")

    def policy_input(obs):
        """What the prior / policy sees, as a batch of one."""
        if image_prior:
            return torch.as_tensor(obs["image"], device=device).unsqueeze(0)  # (1, 6, 32, 32) uint8
        return torch.as_tensor((obs["state"] - state_mean) / state_std, device=device).unsqueeze(0)

    def run_skill(env, obs, z):
        return execute_skill(env, obs, z, decoder, H, state_mean, state_std, action_low, action_high, closed_loop)

    def reward_flags(info):
        """--critic-reward-flags: the env's reward flags in info (float32), else an empty array."""
        if not args.critic_reward_flags:
            return np.zeros(0, np.float32)
        if "reward_flags" not in info:
            raise SetupError(f"--critic-reward-flags: env {args.env} reports no info['reward_flags'] (block_stacking does)")
        return np.asarray(info["reward_flags"], np.float32)

    # Alg. 1 line 2: policy (initialised from the prior), twin critics and their targets, alpha
    policy = make_policy(skill_prior, meta, args.prior_init).to(device)
    flags_dim = len(reward_flags(env.reset(seed=args.seed)[1])) if args.critic_reward_flags else 0  # critics' extra input
    critic_kwargs = dict(state_dim=meta["state_dim"] + flags_dim, latent_dim=latent_dim,
                         hidden_dim=args.critic_hidden_dim, num_layers=args.critic_layers, layer_norm=args.critic_layer_norm)
    qf1, qf2 = Critic(**critic_kwargs).to(device), Critic(**critic_kwargs).to(device)
    qf1_target, qf2_target = Critic(**critic_kwargs).to(device), Critic(**critic_kwargs).to(device)
    qf1_target.load_state_dict(qf1.state_dict())
    qf2_target.load_state_dict(qf2.state_dict())
    log_alpha = torch.tensor(float(np.log(args.alpha_init)), device=device, requires_grad=True)
    policy_optimizer = make_adam(policy.parameters(), args.policy_lr)
    q_optimizer = make_adam(list(qf1.parameters()) + list(qf2.parameters()), args.q_lr)
    alpha_optimizer = make_adam([log_alpha], args.alpha_lr)
    global_step, grad_steps, episodes, skills_collected = 0, 0, 0, 0  # skills_collected: high-level transitions
    updates_start = args.learning_starts  # skills collected before the first gradient step

    def evaluation_skill(obs, generator):
        with torch.no_grad():
            mu, log_sigma = policy(policy_input(obs))
        # z ~ pi(z|s) from the evaluation's own random stream, or the mean skill; squashed as in training
        z = SKILL_RANGE * torch.tanh(mu) if args.eval_deterministic else squashed_sample(mu, log_sigma, generator)
        return z[0].cpu().numpy()

    def evaluate(num_episodes, videos=()):
        """Episodes of the policy -> (returns, final metrics, [each episode's states]). Sampled skills draw from a
        generator seeded by the env step, so an evaluation does not depend on earlier ones or on a resume.
        videos: GIF paths of the first len(videos) episodes."""
        returns, metrics, trajectories = [], [], []
        generator = torch.Generator(device=device).manual_seed(args.seed + 10_000 + global_step)
        for episode in range(num_episodes):
            obs, _ = eval_env.reset(seed=args.seed + 10_000 + episode)
            episode_video = videos[episode] if episode < len(videos) else None
            frames = [eval_env.render()] if episode_video is not None else None
            episode_return, done, info, states = 0.0, False, {}, [obs["state"][None]]
            while not done:
                obs, reward, terminated, truncated, info, _, visited = run_skill(eval_env, obs, evaluation_skill(obs, generator))
                states.append(visited)
                if frames is not None:
                    frames.append(eval_env.render())  # one frame per skill (every H env steps)
                episode_return += reward
                done = terminated or truncated
            returns.append(episode_return)
            metrics.append(float(info.get(metric, 0.0)))
            trajectories.append(np.concatenate(states))
            if frames is not None:
                if frames and frames[0] is not None:
                    save_gif(frames, episode_video)
                else:
                    print(f"--capture-video: env {args.env} returned no rgb_array frames; no video written")
        return returns, metrics, trajectories

    if eval_ckpt is not None:  # --evaluate: only evaluation episodes of a saved policy
        policy.load_state_dict(eval_ckpt["policy"])
        videos = [f"{eval_prefix}_{k}.gif" for k in range(args.eval_episodes)] if args.capture_video else []
        returns, metrics, trajectories = evaluate(args.eval_episodes, videos)  # a GIF of every episode
        mean_return, mean_metric = float(np.mean(returns)), float(np.mean(metrics))
        out = eval_prefix + ".npz"  # every episode's low-dim states, for pictures
        np.savez(out, **{f"episode_{k}": t for k, t in enumerate(trajectories)})
        episodes_text = f"{args.eval_episodes} episode{'s' if args.eval_episodes != 1 else ''}"
        episodes_text += f" at goal radius {args.goal_radius:g}" if args.goal_radius is not None else ""
        episodes_text += " on the sparse reward" if args.sparse_reward else ""
        print(f"evaluate {args.evaluate} (trained {eval_ckpt['global_step']} env steps): {episodes_text}, "
              f"mean return {mean_return:.2f}, mean {metric} {mean_metric:.2f}; per episode: "
              + ", ".join(f"{k}: {m:g}" for k, m in enumerate(metrics)))
        gifs = [path for path in videos if os.path.isfile(path)]
        print(f"wrote {out} (each episode's states)" + (f" and {gifs[0]} ... (one GIF per episode)" if len(gifs) > 1 else
                                                        f" and {gifs[0]}" if gifs else ""))
        env.close()
        eval_env.close()  # frees the renderer's GL context while its display is still up
        return {"return": mean_return, metric: mean_metric, "path": out}

    if args.explore is not None:  # Fig. 5: where do skills sampled from the prior / uniformly lead?
        states, episode_starts, obs, visited = [], [], None, 0
        while visited < args.total_env_steps:
            if obs is None:
                obs, _ = env.reset(seed=args.seed + len(episode_starts))
                episode_starts.append(visited)
                states.append(obs["state"][None])
            if args.explore == "prior":
                with torch.no_grad():
                    z = squashed_sample(*skill_prior(policy_input(obs)))[0].cpu().numpy()
            elif args.explore == "uniform":
                z = rng.uniform(-SKILL_RANGE, SKILL_RANGE, latent_dim)  # uniform over the policy's skill box
            else:
                z = rng.standard_normal(latent_dim)  # the VAE's N(0, I) latent prior
            obs, _, terminated, truncated, _, steps, skill_states = run_skill(env, obs, z)
            states.append(skill_states)
            visited += steps
            if terminated or truncated:
                obs = None
        out = os.path.join(log_dir, f"explore_{args.explore}.npz")
        os.makedirs(log_dir, exist_ok=True)
        np.savez(out, states=np.concatenate(states), episode_starts=np.asarray(episode_starts), env=args.env,
                 mode=args.explore, env_steps=visited)
        print(f"explore {args.explore}: {visited} env steps in {len(episode_starts)} episodes -> {out}")
        return {"path": out}

    # Training
    rb = ReplayBuffer(min(args.buffer_size, args.total_env_steps), meta["state_dim"], latent_dim, state_mean, state_std,
                      meta["image_shape"], device, flags_dim)
    if resume_ckpt is not None:
        policy.load_state_dict(resume_ckpt["policy"])
        for net, key in ((qf1, "qf1"), (qf2, "qf2"), (qf1_target, "qf1_target"), (qf2_target, "qf2_target")):
            net.load_state_dict(resume_ckpt[key])
        with torch.no_grad():
            log_alpha.copy_(torch.as_tensor(resume_ckpt["log_alpha"]))
        policy_optimizer.load_state_dict(resume_ckpt["policy_optimizer"])
        q_optimizer.load_state_dict(resume_ckpt["q_optimizer"])
        alpha_optimizer.load_state_dict(resume_ckpt["alpha_optimizer"])
        global_step, grad_steps, episodes = resume_ckpt["global_step"], resume_ckpt["grad_steps"], resume_ckpt["episodes"]
        skills_collected = resume_ckpt["skills_collected"]
        updates_start = resume_ckpt.get("updates_start", args.learning_starts)  # a checkpoint written mid-refill
        random.setstate(resume_ckpt["rng"]["python"])
        np.random.set_state(resume_ckpt["rng"]["numpy"])
        torch.set_rng_state(resume_ckpt["rng"]["torch"])
        rng.bit_generator.state = resume_ckpt["rng"]["generator"]
        replay_path = args.resume + ".replay.npz"
        if os.path.isfile(replay_path):
            with np.load(replay_path) as saved:
                rb.load_state_dict(saved)
        else:  # no updates on a near-empty buffer: refill it with the current policy as long as a warm-up first
            updates_start = skills_collected + args.learning_starts
            print(f"--resume: {replay_path} not found, the replay buffer starts empty: the current policy refills it "
                  f"with {args.learning_starts} skills (--learning-starts) before the next gradient step")
        print(f"resumed {args.resume} at env step {global_step}, {grad_steps} gradient steps, replay {rb.size}")

    if args.track:  # CleanRL's convention: W&B mirrors the tensorboard scalars
        import wandb

        wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, sync_tensorboard=True, config=asdict(args),
                   name=run_name, save_code=True)
    writer = SummaryWriter(log_dir, purge_step=global_step + 1 if resume_ckpt else None)  # drop events after the checkpoint
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in vars(args).items()))
    writer.add_text("skill_model", f"{skill_source}; data: {meta.get('data_source', '?')}")
    print(f"checkpoint -> {save_path} (every {args.checkpoint_interval} env steps and at the end); "
          f"tensorboard -> {log_dir} (`tensorboard --logdir runs`)" + (f"; videos -> {video_dir}" if args.capture_video else ""))
    skills_left = -(-(args.total_env_steps - global_step) // H)  # at most; a skill is H env steps unless an episode ends
    transition_bytes = sum(array.itemsize * int(np.prod(array.shape[1:])) for array in rb.data.values())
    max_transitions = min(rb.capacity, rb.size + skills_left)
    saving = (f"every checkpoint also saves it (deflated) to {save_path}.replay.npz so that --resume continues exactly; "
              f"--no-save-replay-buffer skips that" if args.save_replay_buffer else
              "not saved (--no-save-replay-buffer): --resume would refill it with the current policy")
    print(f"replay buffer: up to {max_transitions} transitions, {max_transitions * transition_bytes / 1e6:.0f} MB in "
          f"memory; {saving}")
    if skills_collected + skills_left < args.learning_starts:
        print(f"note: --total-env-steps {args.total_env_steps} ends inside the warm-up (--learning-starts "
              f"{args.learning_starts} skills = {args.learning_starts * H} env steps at H = {H}): no gradient step "
              f"will run and the policy stays the prior; raise --total-env-steps or lower --learning-starts")

    def save_checkpoint():
        save_atomic({
            "format": CHECKPOINT_FORMAT, "args": asdict(args), "run_name": run_name, "env": args.env,
            "global_step": global_step, "grad_steps": grad_steps, "episodes": episodes,
            "skills_collected": skills_collected, "updates_start": updates_start,
            "policy": policy.state_dict(), "qf1": qf1.state_dict(), "qf2": qf2.state_dict(),
            "qf1_target": qf1_target.state_dict(), "qf2_target": qf2_target.state_dict(),
            "log_alpha": log_alpha.detach().cpu(), "policy_optimizer": policy_optimizer.state_dict(),
            "q_optimizer": q_optimizer.state_dict(), "alpha_optimizer": alpha_optimizer.state_dict(),
            "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
                    "generator": rng.bit_generator.state},
            "skill_model": skill_ckpt,
        }, save_path)
        if args.keep_checkpoints:
            shutil.copyfile(save_path, f"{os.path.splitext(save_path)[0]}_{global_step}.pt")
        if args.save_replay_buffer:
            save_replay(rb, save_path + ".replay.npz")

    obs, reset_info = env.reset(seed=args.seed + episodes)
    flags = reward_flags(reset_info)
    with torch.no_grad():
        prior_mu, prior_log_sigma = skill_prior(policy_input(obs))
    episode_return, episode_length, episode_metrics = 0.0, 0, []  # episode_metrics: (env step at its end, metric)
    episode_kls = []  # KL(pi || p_a) at the states where the policy sampled this episode's skills
    last_return, last_metric, info_update = float("nan"), float("nan"), {}
    start_step, start_grad_steps, start_time, env_time, update_time = global_step, grad_steps, time.time(), 0.0, 0.0
    next_eval = global_step + args.eval_interval if args.eval_interval > 0 else None
    next_checkpoint, next_progress = global_step + args.checkpoint_interval, global_step + args.progress_interval
    first_progress_time, eval_step = start_time + 5.0, None
    high_level_steps = 0

    while global_step < args.total_env_steps:  # Alg. 1 line 3
        t0 = time.time()
        # Alg. 1 line 5: z ~ pi(z|s). During warm-up (B.2: the first learning_starts skills) and, without prior
        # init, with probability omega (appendix F) the skill is sampled from the prior instead, squashed the same
        # way as the policy's.
        warm_up = skills_collected < args.learning_starts
        omega = 0.0 if args.prior_init else omega_schedule(global_step, args.omega_constant_steps, args.omega_anneal_steps)
        with torch.no_grad():
            if warm_up or rng.random() < omega:
                z = squashed_sample(prior_mu, prior_log_sigma)
            else:
                mu, log_sigma = policy(policy_input(obs))
                z = squashed_sample(mu, log_sigma)
                # the KL where the policy acts; the replay batches' KL of the updates mixes in states it left long ago
                episode_kls.append(prior_divergence(mu, log_sigma, prior_mu, prior_log_sigma, args.kl_reduction).item())
        z = z[0].cpu().numpy()
        # Alg. 1 line 6: execute the H decoded actions, s_{t+H} ~ p(s_{t+H} | s_t, z_t)
        next_obs, reward, terminated, truncated, info, steps, _ = run_skill(env, obs, z)
        next_flags = reward_flags(info)
        with torch.no_grad():
            next_prior_mu, next_prior_log_sigma = skill_prior(policy_input(next_obs))
        # Alg. 1 line 7: store (s_t, z_t, r~ = sum of the rewards (times --reward-scale), s_{t+H}, done). done is set
        # by a true terminal, and by a time-limit truncation only with --no-bootstrap-at-time-limit (the authors' choice)
        done = terminated or (truncated and not args.bootstrap_at_time_limit)
        rb.add(state=obs["state"], next_state=next_obs["state"], skill=z, reward=args.reward_scale * reward, done=float(done),
               prior_mu=prior_mu[0].cpu().numpy(), prior_log_sigma=prior_log_sigma[0].cpu().numpy(),
               next_prior_mu=next_prior_mu[0].cpu().numpy(), next_prior_log_sigma=next_prior_log_sigma[0].cpu().numpy(),
               **({"image": obs["image"], "next_image": next_obs["image"]} if image_prior else {}),
               **({"flags": flags, "next_flags": next_flags} if flags_dim else {}))
        global_step += steps
        skills_collected += 1
        high_level_steps += 1
        episode_return += reward
        episode_length += steps
        obs, prior_mu, prior_log_sigma, flags = next_obs, next_prior_mu, next_prior_log_sigma, next_flags
        if terminated or truncated:
            episodes += 1
            last_return, last_metric = episode_return, float(info.get(metric, 0.0))
            episode_metrics.append((global_step, last_metric))
            writer.add_scalar("charts/episodic_return", episode_return, global_step)
            writer.add_scalar("charts/episodic_length", episode_length, global_step)
            writer.add_scalar(f"charts/{metric}", last_metric, global_step)
            if "subtasks_completed_any_order" in info:  # kitchen: the any-order count too, whatever the reward counts
                writer.add_scalar("charts/subtasks_completed_any_order", info["subtasks_completed_any_order"], global_step)
            for key in ("blocks_lifted", "blocks_delivered"):  # block stacking: blocks the episode's reward flags hold
                if key in info:
                    writer.add_scalar(f"charts/{key}", info[key], global_step)
            if episode_kls:
                writer.add_scalar(f"charts/kl_{args.kl_reduction}_on_own_states", np.mean(episode_kls), global_step)
            obs, reset_info = env.reset(seed=args.seed + episodes)
            flags = reward_flags(reset_info)
            with torch.no_grad():
                prior_mu, prior_log_sigma = skill_prior(policy_input(obs))
            episode_return, episode_length, episode_kls = 0.0, 0, []
        t1 = time.time()
        env_time += t1 - t0

        # Alg. 1 lines 8-13: gradient steps, once the warm-up skills are in
        if skills_collected >= updates_start:
            for _ in range(args.gradient_steps):
                batch = rb.sample(args.batch_size, rng)
                info_update = sac_update(batch, policy, qf1, qf2, qf1_target, qf2_target, log_alpha, policy_optimizer,
                                         q_optimizer, alpha_optimizer, args.gamma, args.tau, args.delta,
                                         args.kl_reduction, args.alpha_min)
                grad_steps += 1
            update_time += time.time() - t1
            if high_level_steps % args.log_interval == 0:
                for key in ("qf1_values", "qf2_values", "qf_loss", "policy_loss", "alpha_loss", "alpha"):
                    writer.add_scalar(f"losses/{key}", info_update[key], global_step)
                writer.add_scalar(f"losses/kl_{args.kl_reduction}_over_latent_dims", info_update["kl"], global_step)
                writer.add_scalar("losses/q_target", info_update["q_target"].mean().item(), global_step)
                writer.add_scalar("charts/omega", omega, global_step)

        if high_level_steps % args.log_interval == 0:
            elapsed = time.time() - start_time
            # env steps per second of wall clock (everything), of time spent collecting, gradient steps per
            # second of time spent updating
            writer.add_scalar("charts/env_steps_per_s_overall", (global_step - start_step) / elapsed, global_step)
            writer.add_scalar("charts/env_steps_per_s_collecting", (global_step - start_step) / max(env_time, 1e-9), global_step)
            if update_time > 0:
                writer.add_scalar("charts/grad_steps_per_s_updating", (grad_steps - start_grad_steps) / update_time, global_step)
        # progress: every --progress-interval env steps, the first after 5 s at the latest
        if global_step >= next_progress or global_step >= args.total_env_steps or time.time() >= first_progress_time:
            next_progress = (global_step // args.progress_interval + 1) * args.progress_interval
            first_progress_time = float("inf")
            elapsed = time.time() - start_time
            updates = (f"KL {max(info_update['kl'], 0.0):.2f} | Q {info_update['qf1_values']:.2f}" if info_update else "warm-up")
            # ETA: the remaining env steps at the collection rate plus their gradient steps at the update rate
            remaining = args.total_env_steps - global_step
            eta = remaining / max((global_step - start_step) / max(env_time, 1e-9), 1e-9)
            if grad_steps > start_grad_steps:
                remaining_grad_steps = remaining / ((global_step - start_step) / high_level_steps) * args.gradient_steps
                eta += remaining_grad_steps * update_time / (grad_steps - start_grad_steps)
            eta_text = format_duration(eta) if grad_steps > start_grad_steps or remaining == 0 else f"> {format_duration(eta)} (updates not timed yet)"
            print(f"step {global_step}/{args.total_env_steps} | {format_duration(elapsed)} elapsed, eta {eta_text} | "
                  f"episodes {episodes} | last return {last_return:.1f} | "
                  f"{metric} {last_metric:.2f} | alpha {info_update.get('alpha', log_alpha.exp().item()):.3f} | {updates} | "
                  f"{(global_step - start_step) / elapsed:.0f} env-steps/s overall, "
                  f"{(global_step - start_step) / max(env_time, 1e-9):.0f} collecting, "
                  f"{(grad_steps - start_grad_steps) / max(update_time, 1e-9):.1f} grad-steps/s updating", flush=True)
        if next_eval is not None and global_step >= next_eval:
            next_eval += args.eval_interval
            videos = [os.path.join(video_dir, f"eval_{global_step}.gif")] if args.capture_video else []
            eval_returns, eval_metrics, _ = evaluate(args.eval_episodes, videos)
            eval_return, eval_metric = float(np.mean(eval_returns)), float(np.mean(eval_metrics))
            eval_step = global_step
            writer.add_scalar("eval/episodic_return", eval_return, global_step)
            writer.add_scalar(f"eval/{metric}", eval_metric, global_step)
            print(f"eval at step {global_step}: return {eval_return:.2f}, {metric} {eval_metric:.2f}", flush=True)
        if global_step >= next_checkpoint:
            next_checkpoint += args.checkpoint_interval
            save_checkpoint()
            print(f"checkpoint {save_path} at step {global_step}", flush=True)

    if eval_step != global_step:  # the final evaluation, unless the periodic one just ran at this step
        videos = [os.path.join(video_dir, "eval_final.gif")] if args.capture_video else []
        eval_returns, eval_metrics, _ = evaluate(args.eval_episodes, videos)
        eval_return, eval_metric = float(np.mean(eval_returns)), float(np.mean(eval_metrics))
        writer.add_scalar("eval/episodic_return", eval_return, global_step)
        writer.add_scalar(f"eval/{metric}", eval_metric, global_step)
    save_checkpoint()
    writer.close()
    env.close()
    eval_env.close()
    # what the training episodes achieved at the end (the stochastic policy; the paper's curves are of these)
    final_window = [m for step, m in episode_metrics if step > 0.9 * global_step]
    final_training_metric = float(np.mean(final_window)) if final_window else float("nan")
    rates = {"env_steps_per_s": (global_step - start_step) / max(env_time, 1e-9),  # collection alone
             "grad_steps_per_s": (grad_steps - start_grad_steps) / max(update_time, 1e-9),  # updates alone
             "wall_s": time.time() - start_time}
    print(f"done: {global_step} env steps, {grad_steps} gradient steps in {format_duration(rates['wall_s'])} "
          f"({rates['env_steps_per_s']:.0f} env steps/s collecting, {rates['grad_steps_per_s']:.1f} gradient steps/s "
          f"updating); training episodes in the last 10 % of env steps: {metric} {final_training_metric:.2f} "
          f"(mean of {len(final_window)}); final eval ({args.eval_episodes} episode{'s' if args.eval_episodes != 1 else ''}, "
          f"{'mean' if args.eval_deterministic else 'sampled'} skills) return {eval_return:.2f}, {metric} {eval_metric:.2f}")
    print(f"checkpoint {save_path}; tensorboard --logdir {log_dir}; watch the policy: "
          f"python spirl_sac.py --evaluate {save_path} --capture-video")
    return {"checkpoint": save_path, "global_step": global_step, "grad_steps": grad_steps, "eval_return": eval_return,
            metric: eval_metric, f"training_{metric}": final_training_metric, "replay_size": rb.size, **rates}


if __name__ == "__main__":
    try:
        main(tyro.cli(Args))
    except SetupError as e:
        sys.exit(f"spirl_sac.py: error: {e}")
