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
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

LOG_SIGMA_MIN, LOG_SIGMA_MAX = -10.0, 2.0  # every Gaussian's log sigma is clamped to this range
CHECKPOINT_FORMAT = "spirl-skill-model-v1"


@dataclass
class Args:
    env: str = "maze"
    """which environment's offline data to learn skills from: maze, block_stacking or kitchen"""
    dataset: str = "auto"
    """path of the offline dataset, or "auto": the env module finds or builds its default dataset offline"""
    prior_input: str = "auto"
    """what the skill prior sees: "state", "image" (the two stacked 32x32 RGB frames) or "auto" (the env's DEFAULT_PRIOR_INPUT, as in the paper)"""
    seed: int = 1
    """seed of python, numpy and torch (and of the train/validation split)"""
    torch_deterministic: bool = True
    """sets torch.backends.cudnn.deterministic"""
    total_steps: Optional[int] = None
    """gradient steps to train; None: the per-env default (a few minutes on a 2-core CPU at batch 16)"""
    batch_size: int = 16
    """skill windows per gradient step (paper: 16). Larger batches are much faster per sequence on a CPU"""
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
    """closed-loop variant (appendix D, "SPiRL-cl"): encoder and decoder also see the state at every step"""
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
    resume: bool = False
    """continue from the checkpoint at save_path (weights, optimizer, step, run directory)"""
    exp_name: str = "spirl_vae"
    """name of this experiment (part of the tensorboard run name under runs/)"""
    num_qualitative: int = 4
    """validation skills drawn in the qualitative figure (ground truth vs decoded)"""


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


class SkillEncoder(nn.Module):
    """q(z | a_1..H) (closed-loop variant: q(z | s_1..H, a_1..H)): one-layer LSTM, last output -> (mu, log sigma)."""

    def __init__(self, action_dim, latent_dim, hidden_dim=128, state_dim=0):
        super().__init__()
        self.lstm = nn.LSTM(action_dim + state_dim, hidden_dim, batch_first=True)
        self.head = nn.Linear(hidden_dim, 2 * latent_dim)

    def forward(self, actions, states=None):
        # actions: (B, H, action_dim); states: (B, H, state_dim) normalised, closed-loop variant only
        inputs = actions if states is None else torch.cat([states, actions], dim=-1)
        outputs, _ = self.lstm(inputs)  # (B, H, hidden)
        mu, log_sigma = self.head(outputs[:, -1]).chunk(2, dim=-1)  # after the full sequence (B.1)
        return mu, log_sigma.clamp(LOG_SIGMA_MIN, LOG_SIGMA_MAX)


class SkillDecoder(nn.Module):
    """p(a_1..H | z): LSTM unrolled H steps with z fed at every step; unit-variance Gaussian output (the mean).

    Open loop (paper default): input z each step, learned initial hidden state.
    Closed loop (--state-conditioned-decoder): input [z, s_t] with the *current* state each step, so the
    skill is executed step by step: ``hidden = decoder.initial_hidden(B)`` then, for t < H,
    ``action, hidden = decoder.decode_step(z, state_t, hidden)``. decode() is the same computation
    over a whole window.
    """

    def __init__(self, action_dim, latent_dim, hidden_dim=128, state_dim=0):
        super().__init__()
        self.state_dim = state_dim
        self.lstm = nn.LSTM(latent_dim + state_dim, hidden_dim, batch_first=True)
        self.initial_h = nn.Parameter(torch.zeros(1, 1, hidden_dim))  # learned initial hidden state
        self.initial_c = nn.Parameter(torch.zeros(1, 1, hidden_dim))
        self.head = nn.Linear(hidden_dim, action_dim)

    def initial_hidden(self, batch_size):
        """The LSTM state (h, c), each (1, B, hidden), before the first action of a skill."""
        return (
            self.initial_h.expand(1, batch_size, -1).contiguous(),
            self.initial_c.expand(1, batch_size, -1).contiguous(),
        )

    def decode_step(self, z, state=None, hidden=None):
        """One action of the skill. z: (B, latent); state: (B, state_dim) normalised (closed loop only).
        Returns the action mean (B, action_dim) and the new hidden state."""
        if hidden is None:
            hidden = self.initial_hidden(z.shape[0])
        inputs = z if state is None else torch.cat([z, state], dim=-1)
        output, hidden = self.lstm(inputs.unsqueeze(1), hidden)
        return self.head(output[:, 0]), hidden

    def decode(self, z, states=None, horizon=None):
        """All H actions at once: z (B, latent), states (B, H, state_dim) closed loop only -> (B, H, action_dim)."""
        horizon = states.shape[1] if states is not None else horizon
        inputs = z.unsqueeze(1).expand(-1, horizon, -1)  # z at every step (B.1)
        if states is not None:
            inputs = torch.cat([inputs, states], dim=-1)
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
            channels, height, width = image_shape
            conv = []
            for out_channels in (8, 16, 32):  # appendix B.1: 3 layers, kernel 3, (8, 16, 32) channels
                conv += [
                    nn.Conv2d(channels, out_channels, kernel_size=3, stride=2, padding=1),
                    nn.BatchNorm2d(out_channels),
                    nn.LeakyReLU(0.2),
                ]
                channels = out_channels
                height, width = (height + 1) // 2, (width + 1) // 2
            self.image_encoder = nn.Sequential(*conv, nn.Flatten())
            in_dim = channels * height * width  # flattened feature map (B.1)
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
            if obs.dtype == torch.uint8:
                obs = obs.float() / 255.0
            obs = self.image_encoder(obs)
        mu, log_sigma = self.mlp(obs).chunk(2, dim=-1)
        return mu, log_sigma.clamp(LOG_SIGMA_MIN, LOG_SIGMA_MAX)


class SkillModel(nn.Module):
    """Skill encoder + decoder + prior; state_dict keys "encoder.*", "decoder.*", "skill_prior.*"."""

    def __init__(self, state_dim, action_dim, latent_dim=10, hidden_dim=128, prior_layers=6,
                 image_shape=None, state_conditioned_decoder=False):
        super().__init__()
        cond_dim = state_dim if state_conditioned_decoder else 0
        self.encoder = SkillEncoder(action_dim, latent_dim, hidden_dim, state_dim=cond_dim)
        self.decoder = SkillDecoder(action_dim, latent_dim, hidden_dim, state_dim=cond_dim)
        self.skill_prior = SkillPrior(latent_dim, hidden_dim, prior_layers, state_dim=state_dim, image_shape=image_shape)
        self.state_conditioned_decoder = state_conditioned_decoder

    def forward(self, actions, states, prior_obs):
        """actions (B, H, A); states (B, H, S) normalised; prior_obs: first state (B, S) or image (B, 6, 32, 32)."""
        cond = states if self.state_conditioned_decoder else None
        mu_z, log_sigma_z = self.encoder(actions, cond)
        z = mu_z + torch.randn_like(mu_z) * log_sigma_z.exp()  # reparameterised posterior sample
        reconstruction = self.decoder.decode(z, cond, horizon=actions.shape[1])
        mu_p, log_sigma_p = self.skill_prior(prior_obs)
        return reconstruction, mu_z, log_sigma_z, mu_p, log_sigma_p


def skill_model_losses(model, actions, states, prior_obs):
    """The three terms of eq. (4), every one a MEAN over its elements, as the authors compute them (the
    paper's beta is calibrated to means; with sums it would have to change by H * action_dim / latent_dim):
    reconstruction: unit-variance Gaussian NLL 0.5 * (a - a_hat)^2 (constant dropped), mean over batch, steps, action dims;
    kl: KL(q(z|a) || N(0, I)), mean over batch and latent dims (weighted by beta by the caller);
    prior: KL(N(sg mu_z, sg sigma_z) || N(mu_p, sigma_p)), mean over batch and latent dims."""
    reconstruction, mu_z, log_sigma_z, mu_p, log_sigma_p = model(actions, states, prior_obs)
    recon = 0.5 * ((reconstruction - actions) ** 2).mean()
    kl = gaussian_kl(mu_z, log_sigma_z, torch.zeros_like(mu_z), torch.zeros_like(log_sigma_z)).mean()
    # eq. (4) prior term: stop-gradient on the posterior, so the prior cannot bend the embedding
    prior = gaussian_kl(mu_z.detach(), log_sigma_z.detach(), mu_p, log_sigma_p).mean()
    return recon, kl, prior
