"""Do a SPiRL run's critics predict what its policy earns? Q against the realised soft return.

    python benchmarks/q_bias.py runs/<run>/spirl_sac.pt [more checkpoints] --episodes 8 --json-out docs/<name>.json

For each checkpoint of spirl_sac.py: whole episodes of its policy (skills sampled from pi(z|s) and squashed, as in
training) on the env it was trained on. At every skill t of an episode it records min(Q1, Q2)(s_t, z_t) of the
online critics, the summed reward r_t and KL(pi || p_a) at s_t, then computes backwards what the critics regress
onto, realised along the episode instead of bootstrapped at every step (Alg. 1 line 9 unrolled):

    G_t = r_t + gamma * (G_{t+1} - alpha * KL_{t+1}),   G_{T-1} = r_{T-1} + gamma * tail

tail = min Q(s_T, z_T) - alpha * KL_T at a time-limit truncation if the run bootstrapped there (its
--bootstrap-at-time-limit), else 0; `own` is the same with tail = 0 (what the episode itself earned). Q - G is the
critics' bias on the policy's own skills: positive = overestimation. Printed per quarter of the episode's skills.
--replay-states N adds the critics' Q surface on the run's recent replay states (see Args).
"""

import json
import os
import sys
from dataclasses import dataclass
from typing import List, Optional

import numpy as np
import torch
import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import spirl_sac  # noqa: E402
import envs  # noqa: E402


@dataclass
class Args:
    checkpoints: tyro.conf.Positional[List[str]]
    """spirl_sac.py checkpoints (spirl_sac.pt, or a kept spirl_sac_<step>.pt)"""
    episodes: int = 8
    """episodes per checkpoint"""
    seed: int = 10_001
    """reset seed of the first episode (the next ones count up); 10 001 = spirl_sac.py's first evaluation episode"""
    json_out: Optional[str] = None
    """write every checkpoint's figures and per-episode rows here"""
    replay_states: int = 0
    """> 0: also the critics' Q surface on this many states of the run's replay buffer (the
    `spirl_sac.pt.replay.npz` next to the checkpoint, which must not have wrapped past the checkpoint's step),
    drawn from the last `replay_window` skills stored before the checkpoint: does Q rise only at the policy's own
    skills (extrapolation in z) or at every skill, the stored ones included (the whole value level inflating)?"""
    replay_window: int = 10_000
    """skills stored before the checkpoint from which --replay-states draws"""


def load(checkpoint_path, env_seed=0):
    """(checkpoint dict, run args, env, decoder, prior, policy, [qf1, qf2], skill-model meta) of a spirl_sac.py
    checkpoint; the env is built as the run built its training env."""
    ckpt = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    run_args = spirl_sac.Args(**ckpt["args"])
    env = spirl_sac.make_env(run_args, env_seed)
    decoder, prior, meta = spirl_sac.build_skill_model(ckpt["skill_model"], run_args.env, env)
    policy = spirl_sac.make_policy(prior, meta, prior_init=True)
    policy.load_state_dict(ckpt["policy"])
    critics = []
    flags_dim = 2 * env.unwrapped.num_blocks if run_args.critic_reward_flags else 0  # --critic-reward-flags
    for key in ("qf1", "qf2"):
        critic = spirl_sac.Critic(state_dim=meta["state_dim"] + flags_dim, latent_dim=meta["latent_dim"],
                                  hidden_dim=run_args.critic_hidden_dim, num_layers=run_args.critic_layers,
                                  layer_norm=run_args.critic_layer_norm)
        critic.load_state_dict(ckpt[key])
        critics.append(critic.eval())
    return ckpt, run_args, env, decoder, prior.eval(), policy.eval(), critics, meta


def realised_returns(rewards, kls, alpha, gamma, tail):
    """G_t of the module docstring for every skill t of an episode: rewards r_t, KLs at s_t, tail after the last."""
    g, out = tail, np.zeros(len(rewards))
    for t in reversed(range(len(rewards))):
        g = rewards[t] + gamma * g
        out[t] = g
        g -= alpha * kls[t]  # the KL at s_t enters the target of the transition before it
    return out


def episode_rows(checkpoint_path, episodes, seed):
    ckpt, run_args, env, decoder, prior, policy, critics, meta = load(checkpoint_path)
    alpha, gamma, reward_scale = float(ckpt["log_alpha"].exp()), run_args.gamma, run_args.reward_scale
    mean, std = np.asarray(meta["state_mean"], np.float32), np.asarray(meta["state_std"], np.float32)
    low, high = np.asarray(meta["action_low"]), np.asarray(meta["action_high"])
    image_prior = meta["image_shape"] is not None
    metric = envs.env_module(run_args.env).METRIC
    generator = torch.Generator().manual_seed(0)

    def skill_at(obs, info):
        """z ~ pi(z|s) squashed, min Q(s, z), KL(pi || p_a) at s (info: the env's, for --critic-reward-flags runs)."""
        policy_obs = (torch.as_tensor(obs["image"]) if image_prior
                      else torch.as_tensor((obs["state"] - mean) / std)).unsqueeze(0)
        flags = info["reward_flags"] if run_args.critic_reward_flags else np.zeros(0, np.float32)
        critic_obs = torch.as_tensor(np.concatenate([(obs["state"] - mean) / std, flags])).unsqueeze(0)
        with torch.no_grad():
            mu, log_sigma = policy(policy_obs)
            z = spirl_sac.squashed_sample(mu, log_sigma, generator)
            q = min(float(critic(critic_obs, z)) for critic in critics)
            kl = float(spirl_sac.prior_divergence(mu, log_sigma, *prior(policy_obs), run_args.kl_reduction))
        return z[0].numpy(), q, kl

    rows = []
    for episode in range(episodes):
        obs, info = env.reset(seed=seed + episode)
        qs, rewards, kls = [], [], []
        while True:
            z, q, kl = skill_at(obs, info)
            obs, reward, terminated, truncated, info, _, _ = spirl_sac.execute_skill(
                env, obs, z, decoder, meta["skill_horizon"], mean, std, low, high, bool(meta["state_conditioned_decoder"]))
            qs.append(q), rewards.append(reward_scale * reward), kls.append(kl)  # what the critics were trained on
            if terminated or truncated:
                break
        _, last_q, last_kl = skill_at(obs, info)
        bootstrap = truncated and not terminated and run_args.bootstrap_at_time_limit
        tail = last_q - alpha * last_kl if bootstrap else 0.0
        returns = {name: realised_returns(rewards, kls, alpha, gamma, end) for name, end in (("G", tail), ("own", 0.0))}
        qs = np.asarray(qs)
        quarters = np.array_split(np.arange(len(qs)), 4)
        rows.append({"episode": episode, metric: float(info.get(metric, 0.0)), "skills": len(qs),
                     "return": float(sum(rewards) / reward_scale), "bootstrapped_tail": bootstrap, "tail": float(tail),
                     "q_first": float(qs[0]), "G_first": float(returns["G"][0]), "own_first": float(returns["own"][0]),
                     "bias_by_quarter": [float((qs[i] - returns["G"][i]).mean()) for i in quarters],
                     "q_by_quarter": [float(qs[i].mean()) for i in quarters],
                     "kl_mean": float(np.mean(kls))})
    return {"checkpoint": checkpoint_path, "env": run_args.env, "global_step": int(ckpt["global_step"]),
            "alpha": alpha, "gamma": gamma, "bootstrap_at_time_limit": run_args.bootstrap_at_time_limit,
            "metric": metric, "episodes": rows}


def replay_surface(checkpoint_path, n_states, window, seed=0):
    """On n_states recent replay states s: min(Q1, Q2) at the policy's skill z ~ pi(z|s), at the skill stored with
    the transition and at a prior sample z ~ p_a(z|s); the stored reward per skill (what those skills earned);
    KL(pi || p_a) at s; |dQ/dz| at the policy's skill; the distance from the policy's skill to the nearest stored
    skill of the window (against the same distance between stored skills)."""
    ckpt, run_args, _, _, prior, policy, critics, meta = load(checkpoint_path)
    replay_path = os.path.join(os.path.dirname(checkpoint_path), "spirl_sac.pt.replay.npz")
    if not os.path.isfile(replay_path):
        raise SystemExit(f"--replay-states needs the run's replay buffer next to the checkpoint: {replay_path} is missing")
    replay = np.load(replay_path)
    end = int(ckpt["skills_collected"])
    if int(replay["size"]) < end or int(replay["pos"]) != int(replay["size"]):
        raise SystemExit(f"{replay_path} has wrapped or holds fewer than the checkpoint's {end} skills")
    rows = np.random.default_rng(seed).choice(np.arange(max(0, end - window), end), min(n_states, window), replace=False)
    mean, std = np.asarray(meta["state_mean"], np.float32), np.asarray(meta["state_std"], np.float32)
    policy_obs = states = torch.as_tensor((replay["state"][rows] - mean) / std)
    if run_args.critic_reward_flags:  # what the critics see: [state, reward flags]
        states = torch.cat([states, torch.as_tensor(replay["flags"][rows])], -1)
    if meta["image_shape"] is not None:  # stored channels-last (B, H, W, C), or (B, C, H, W) by runs before session 6
        policy_obs = torch.as_tensor(replay["image"][rows])
        if tuple(policy_obs.shape[1:]) != tuple(meta["image_shape"]):
            policy_obs = policy_obs.permute(0, 3, 1, 2)
    stored = torch.as_tensor(replay["skill"][rows])  # (N, latent_dim)
    window_skills = torch.as_tensor(replay["skill"][max(0, end - window):end])
    generator = torch.Generator().manual_seed(seed)

    def min_q(z):
        return torch.min(critics[0](states, z), critics[1](states, z))

    with torch.no_grad():
        mu, log_sigma = policy(policy_obs)
        prior_mu, prior_log_sigma = prior(policy_obs)
        own = spirl_sac.squashed_sample(mu, log_sigma, generator)
        from_prior = spirl_sac.squashed_sample(prior_mu, prior_log_sigma, generator)
        kl = spirl_sac.prior_divergence(mu, log_sigma, prior_mu, prior_log_sigma, run_args.kl_reduction)
        q_own, q_stored, q_prior = min_q(own), min_q(stored), min_q(from_prior)
        nearest_own = torch.cdist(own, window_skills).min(1).values
        between = torch.cdist(stored, window_skills)
        nearest_stored = between.masked_fill(between == 0, float("inf")).min(1).values  # itself excluded
    own.requires_grad_(True)
    min_q(own).sum().backward()
    return {"global_step": int(ckpt["global_step"]), "alpha": float(ckpt["log_alpha"].exp()), "states": len(rows),
            "reward_per_skill": float(replay["reward"][rows].mean()), "q_own": float(q_own.mean()),
            "q_stored": float(q_stored.mean()), "q_prior": float(q_prior.mean()), "kl_mean": float(kl.mean()),
            "kl_p90": float(kl.quantile(0.9)), "dq_dz": float(own.grad.norm(dim=1).mean()),
            "nearest_stored_from_own": float(nearest_own.mean()), "nearest_stored_from_stored": float(nearest_stored.mean())}


def summary(result):
    rows, metric = result["episodes"], result["metric"]

    def mean(key):
        return float(np.mean([r[key] for r in rows]))

    bias = np.mean([r["bias_by_quarter"] for r in rows], axis=0)
    print(f"{result['checkpoint']} ({result['env']}, step {result['global_step']}, alpha {result['alpha']:.3g}, "
          f"bootstrap at time limit: {result['bootstrap_at_time_limit']}), {len(rows)} episodes:")
    print(f"  {metric} {mean(metric):.2f}, return {mean('return'):.1f}, KL {mean('kl_mean'):.2f}; first skill: Q "
          f"{mean('q_first'):.2f}, realised G {mean('G_first'):.2f} (tail {mean('tail'):.2f}), own {mean('own_first'):.2f}")
    print("  Q - G by quarter of the episode's skills: " + ", ".join(f"{b:+.2f}" for b in bias))
    return {"mean_" + key: mean(key) for key in (metric, "return", "kl_mean", "q_first", "G_first", "own_first", "tail")} | {
        "bias_by_quarter": [float(b) for b in bias]}


if __name__ == "__main__":
    args = tyro.cli(Args)
    torch.set_num_threads(1)
    results = []
    for path in args.checkpoints:
        result = episode_rows(path, args.episodes, args.seed)
        result["summary"] = summary(result)
        if args.replay_states > 0:
            surface = result["replay_surface"] = replay_surface(path, args.replay_states, args.replay_window)
            print(f"  replay states ({surface['states']}, last {args.replay_window} skills): stored reward per skill "
                  f"{surface['reward_per_skill']:.3f}; min Q at the policy's skill {surface['q_own']:.2f}, at the stored "
                  f"skill {surface['q_stored']:.2f}, at a prior sample {surface['q_prior']:.2f}; KL {surface['kl_mean']:.2f} "
                  f"(p90 {surface['kl_p90']:.1f}); |dQ/dz| {surface['dq_dz']:.2f}; nearest stored skill from the "
                  f"policy's {surface['nearest_stored_from_own']:.2f}, from a stored one {surface['nearest_stored_from_stored']:.2f}")
        results.append(result)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"command": "python " + " ".join(sys.argv), "results": results}, f, indent=1)
