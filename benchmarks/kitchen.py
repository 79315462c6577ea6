"""Kitchen measurements: env speed, the composition of a kitchen dataset, and what prior rollouts do.

    python benchmarks/kitchen.py --num-steps 5000                        # env steps/s (random actions)
    python benchmarks/kitchen.py --composition data/kitchen_scripted.hdf5   # subtask orders vs kitchen-mixed
    python benchmarks/kitchen.py --rollouts runs/<run>/explore_prior.npz    # prior rollouts: microwave, then kettle?
    python benchmarks/kitchen.py --diagnose checkpoints/skill_model_kitchen.pt  # why the prior misses the microwave
    python benchmarks/kitchen.py --policies runs/<run>/spirl_sac.pt          # what a SPiRL policy does first, its Q;
                                                                           # the prior where the policy leaves off

Speed: env steps per second with uniform random actions (episodes of 280 steps, resets included), and the bare
FrankaKitchen-v1 simulator underneath, so the cost of the D4RL layer (60-dim observation, object noise, reward) is
visible. Composition: each sequence's completion order measured from its observations (any D4RL-layout file),
first-subtask and transition frequencies side by side with kitchen-mixed-v0's (shared/notes/
kitchen-mixed-composition.md). Rollouts: the states saved by ``spirl_sac.py --explore prior`` from the downstream
start state; the share of episodes that open the microwave, and that open it and then move the kettle.
"""

import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from typing import Optional

import h5py
import numpy as np
import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from envs import kitchen  # noqa: E402
from envs.kitchen_demo import completion_order, composition, contains_downstream, sequences_from_file  # noqa: E402

# kitchen-mixed-v0's frequencies (%) from shared/notes/kitchen-mixed-composition.md (SkiLD's analysis of its 603
# sequences): first subtask, second given the first, third given the first two.
KITCHEN_MIXED = {
    "first": {"microwave": 60.9, "kettle": 29.7, "bottom burner": 9.5},
    "second": {"microwave": {"bottom burner": 46.6, "kettle": 42.0, "top burner": 5.7, "light switch": 5.7},
               "kettle": {"bottom burner": 78.2, "light switch": 11.2, "top burner": 10.6},
               "bottom burner": {"top burner": 100.0}},
    "third": {"microwave, kettle": {"bottom burner": 31.2, "top burner": 27.3, "light switch": 25.3, "slide cabinet": 16.2},
              "microwave, bottom burner": {"top burner": 42.1, "light switch": 40.4, "slide cabinet": 17.0,
                                           "hinge cabinet": 0.6},
              "kettle, bottom burner": {"top burner": 45.0, "light switch": 35.0, "slide cabinet": 20.0}},
}


@dataclass
class Args:
    num_steps: int = 5000
    """env steps to time (each configuration)"""
    seed: int = 0
    """seed of the env and of the random actions"""
    composition: Optional[str] = None
    """instead of timing: a D4RL-layout kitchen HDF5 file whose subtask orders to measure"""
    rollouts: tuple[str, ...] = ()
    """instead of timing: explore_prior.npz files of spirl_sac.py --explore prior to measure"""
    diagnose: Optional[str] = None
    """instead of timing: a spirl_vae.py kitchen checkpoint whose prior to diagnose (see prior_diagnosis)"""
    dataset: str = "data/kitchen_scripted.hdf5"
    """the skill model's training data, for --diagnose"""
    diagnose_episodes: int = 16
    """rollouts per configuration for --diagnose and --policies"""
    policies: tuple[str, ...] = ()
    """instead of timing: spirl_sac.py kitchen checkpoints whose policy and prior to compare (see policy_diagnosis)"""
    json_out: Optional[str] = None
    """also write the composition / rollout / diagnosis measurements to this JSON file"""


def dataset_composition(path):
    """Completion orders of every sequence in ``path`` and their frequencies next to kitchen-mixed's."""
    sequences = sequences_from_file(path)
    orders = [completion_order(obs) for obs, _ in sequences]
    lengths = np.array([len(actions) for _, actions in sequences])
    stats = composition(orders)
    print(f"{path}: {len(sequences)} sequences, {lengths.sum()} steps, length mean {lengths.mean():.0f} "
          f"(median {np.median(lengths):.0f}, {lengths.min()}-{lengths.max()}), subtasks done per sequence "
          f"{np.mean([len(o) for o in orders]):.2f}, {lengths.sum() / sum(len(o) for o in orders):.0f} steps per "
          f"subtask done; containing the downstream order: {sum(contains_downstream(o) for o in orders)}")
    with h5py.File(path, "r") as f:  # our files record each sequence's plan: how often each planned subtask got done
        planned = [str(s.decode() if isinstance(s, bytes) else s).split(",") for s in f.attrs.get("sequences", [])]
    done_rates = {}
    for plan, order in zip(planned, orders):
        for i, task in enumerate(plan):
            key = "hinge cabinet (4th, attempted)" if task == "hinge cabinet" and i == 3 else task
            done_rates.setdefault(key, []).append(task in order)
    for task, done in done_rates.items():
        print(f"planned {task:32s} done in {np.mean(done):6.1%} of {len(done)}")
    print(f"{'':34s} {'ours %':>7s} {'kitchen-mixed %':>15s}")
    rows = [("first", "", stats["first"], KITCHEN_MIXED["first"])]
    rows += [("second after", k, v, KITCHEN_MIXED["second"].get(k, {})) for k, v in stats["second"].items()]
    rows += [("third after", k, v, KITCHEN_MIXED["third"].get(k, {})) for k, v in stats["third"].items()]
    for what, given, ours, real in rows:
        print(f"{what} {given}".strip() + (f" ({stats['third_counts'][given]} sequences)" if what == "third after" else ""))
        for task in dict.fromkeys(list(ours) + list(real)):
            real_share = f"{real[task]:.1f}" if task in real else "-"
            print(f"    {task:30s} {100 * ours.get(task, 0.0):7.1f} {real_share:>15s}")
    return {"path": path, "sequences": len(sequences), "steps": int(lengths.sum()), "mean_length": float(lengths.mean()),
            "orders": [",".join(o) for o in orders], "composition": stats, "kitchen_mixed": KITCHEN_MIXED,
            "planned_done": {task: float(np.mean(done)) for task, done in done_rates.items()}}


def rollout_episodes(npz_path):
    """Each episode's states (T + 1, 60) from an explore npz: episode k holds its reset state and one state per step,
    so it starts at index episode_starts[k] + k of the concatenated states."""
    data = np.load(npz_path)
    states, starts = data["states"], data["episode_starts"]
    bounds = np.append(starts + np.arange(len(starts)), len(states))
    return [states[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def prior_rollouts(npz_path):
    """Share of episodes that open the microwave, that open it and then move the kettle (both by D4RL's rule), and
    what the episodes complete first."""
    orders = [completion_order(states) for states in rollout_episodes(npz_path)]
    microwave = [o[:1] == ["microwave"] or "microwave" in o for o in orders]
    then_kettle = ["microwave" in o and "kettle" in o and o.index("kettle") > o.index("microwave") for o in orders]
    strict_prefix = [o[:2] == ["microwave", "kettle"] for o in orders]
    firsts = {}
    for o in orders:
        firsts[o[0] if o else "nothing"] = firsts.get(o[0] if o else "nothing", 0) + 1
    result = {"path": npz_path, "episodes": len(orders), "microwave": float(np.mean(microwave)),
              "microwave_then_kettle": float(np.mean(then_kettle)), "microwave_kettle_first_two": float(np.mean(strict_prefix)),
              "subtasks_per_episode": float(np.mean([len(o) for o in orders])), "first_subtask": firsts}
    print(f"{npz_path}: {len(orders)} episodes; microwave opened {result['microwave']:.0%}, microwave then kettle "
          f"{result['microwave_then_kettle']:.0%} (as the first two subtasks {result['microwave_kettle_first_two']:.0%}), "
          f"{result['subtasks_per_episode']:.2f} subtasks per episode (any order); first subtask {firsts}")
    return result


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


def prior_diagnosis(checkpoint_path, dataset_path, episodes=16, steps=200):
    """Why prior rollouts miss the microwave: rollouts of ``steps`` env steps from the start state whose first k
    skills are the posterior means of a microwave-first demonstration's first k windows (k = 0, 1, 3), then prior
    samples, each drawn raw (z ~ N(mu, sigma), what the decoder was trained on) or squashed as spirl_sac.py does
    (2 tanh(u)); plus the posterior means of the demonstrations executed skill by skill (can the decoded skills
    open the microwave at all?) and the share of posterior-mean dims beyond the squash range +-2."""
    import torch

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from spirl_vae import build_model

    torch.set_num_threads(1)
    ckpt = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    model = build_model(ckpt).eval()
    mean, std = np.asarray(ckpt["state_mean"]), np.asarray(ckpt["state_std"])
    closed_loop, horizon = bool(ckpt["state_conditioned_decoder"]), ckpt["skill_horizon"]
    sequences = sequences_from_file(dataset_path)
    microwave_first = [i for i, (obs, _) in enumerate(sequences) if completion_order(obs)[:1] == ["microwave"]]

    def normalised(state):
        return torch.as_tensor((state - mean) / std, dtype=torch.float32)[None]

    @torch.no_grad()
    def posterior_mean(i, t):
        obs, actions = sequences[i]
        cond = normalised(obs[t:t + horizon])[0][None] if closed_loop else None
        return model.encoder(torch.as_tensor(actions[t:t + horizon])[None], cond)[0][0]

    @torch.no_grad()
    def rollout(choose_skill, seed):
        env = kitchen.make_env(seed=seed, strict_order=False)
        obs, _ = env.reset()
        states = [obs["state"]]
        while len(states) <= steps:
            z = choose_skill(obs["state"], len(states) - 1)[None]
            actions = None if closed_loop else model.decoder.decode(z, horizon=horizon)[0].numpy()
            hidden = None
            for k in range(horizon):
                if closed_loop:
                    action, hidden = model.decoder.decode_step(z, normalised(obs["state"]), hidden)
                    action = action[0].numpy()
                else:
                    action = actions[k]
                obs, *_ = env.step(np.clip(action, -1.0, 1.0))
                states.append(obs["state"])
        env.close()
        return completion_order(np.asarray(states))

    results = {"checkpoint": checkpoint_path, "episodes": episodes, "steps": steps}
    demo = microwave_first[:episodes]
    orders = [rollout(lambda s, t, i=i: posterior_mean(i, t), seed=1000 + i) for i in demo]
    results["demo_posteriors"] = float(np.mean(["microwave" in o for o in orders]))
    print(f"{checkpoint_path}: posterior means of {len(demo)} microwave-first demos, executed skill by skill: "
          f"microwave opened {results['demo_posteriors']:.0%}")
    for forced in (0, 1, 3):
        for squash in (False, True):
            orders = []
            for episode in range(episodes):
                generator = torch.Generator().manual_seed(episode)
                demo_index = microwave_first[episode % len(microwave_first)]

                def choose(state, t, generator=generator, demo_index=demo_index):
                    if t < forced * horizon:
                        return posterior_mean(demo_index, t)
                    with torch.no_grad():
                        mu, log_sigma = model.skill_prior(normalised(state))
                    u = mu[0] + torch.randn(mu.shape[1], generator=generator) * log_sigma[0].exp()
                    return 2.0 * torch.tanh(u) if squash else u

                orders.append(rollout(choose, seed=episode))
            key = f"first {forced} skills from a demo, then prior samples ({'2 tanh' if squash else 'raw'})"
            results[key] = {"microwave": float(np.mean(["microwave" in o for o in orders])),
                            "microwave_then_kettle": float(np.mean([o[:2] == ["microwave", "kettle"] for o in orders]))}
            print(f"  {key}: microwave {results[key]['microwave']:.0%}, microwave then kettle "
                  f"{results[key]['microwave_then_kettle']:.0%}", flush=True)
    z = np.array([posterior_mean(i, t).numpy() for i in range(0, len(sequences), 6)
                  for t in range(0, len(sequences[i][1]) - horizon, horizon)])
    results["posterior_beyond_2"] = float((np.abs(z) > 2).mean())
    results["posterior_std_per_dim"] = [round(float(v), 2) for v in z.std(0)]
    print(f"  posterior means of demo windows: {results['posterior_beyond_2']:.0%} of dims beyond +-2 (std per dim "
          f"{results['posterior_std_per_dim']})")
    return results


def policy_diagnosis(checkpoint_path, episodes=16, seed=10_001):
    """What a SPiRL policy does from the start state and how its critics rank that: whole episodes (skills sampled
    as in training, squashed) of the checkpoint's policy and of its prior, from the evaluation env's first start
    state; per episode the first two subtasks completed (any order) and min(Q1, Q2) of the episode's first skill.
    A third set hands over from the policy to the prior once the first subtask is done: does the prior, from the
    states where the policy leaves it, go on to the kettle (the data's second subtask after the microwave in 42 %)?"""
    import torch

    import spirl_sac
    from envs.kitchen_env import completed_subtasks
    from q_bias import load as load_spirl_checkpoint  # benchmarks/q_bias.py: policy, prior and critics of a checkpoint

    torch.set_num_threads(1)
    ckpt, _, env, decoder, prior, policy, critics, meta = load_spirl_checkpoint(checkpoint_path, env_seed=seed)
    mean, std = np.asarray(meta["state_mean"], np.float32), np.asarray(meta["state_std"], np.float32)
    low, high = np.asarray(meta["action_low"]), np.asarray(meta["action_high"])
    generator = torch.Generator().manual_seed(0)
    result = {"checkpoint": checkpoint_path, "global_step": ckpt["global_step"], "alpha": float(ckpt["log_alpha"].exp())}
    for name in ("policy", "prior", "policy, then the prior after the first subtask"):
        firsts = {}
        for _ in range(episodes):
            obs, _ = env.reset(seed=seed)
            order, first_q = [], None
            while True:
                state = torch.as_tensor((obs["state"] - mean) / std).unsqueeze(0)
                net = prior if name == "prior" or (order and name != "policy") else policy
                with torch.no_grad():
                    skill = spirl_sac.squashed_sample(*net(state), generator)
                    if first_q is None:
                        first_q = min(float(critic(state, skill)) for critic in critics)
                obs, _, terminated, truncated, _, _, _ = spirl_sac.execute_skill(
                    env, obs, skill[0].numpy(), decoder, meta["skill_horizon"], mean, std, low, high,
                    bool(meta["state_conditioned_decoder"]))
                order += [t for t in completed_subtasks(obs["state"]) if t not in order]
                if terminated or truncated:
                    break
            firsts.setdefault(" -> ".join(order[:2]) or "none", []).append(first_q)
        result[name] = {first: {"episodes": len(qs), "mean_q_first_skill": round(float(np.mean(qs)), 2)}
                        for first, qs in sorted(firsts.items(), key=lambda item: -len(item[1]))}
        print(f"{checkpoint_path} (step {result['global_step']}, alpha {result['alpha']:.3g}), {name}, {episodes} episodes:")
        for first, row in result[name].items():
            print(f"  {first:32s} {row['episodes']:3d} episodes, mean Q of the first skill {row['mean_q_first_skill']:.2f}")
    return result


if __name__ == "__main__":
    args = tyro.cli(Args)
    if args.composition or args.rollouts or args.diagnose or args.policies:
        results = {}
        if args.composition:
            results["composition"] = dataset_composition(args.composition)
        results["rollouts"] = [prior_rollouts(path) for path in args.rollouts]
        if args.diagnose:
            results["diagnosis"] = prior_diagnosis(args.diagnose, args.dataset, args.diagnose_episodes)
        results["policies"] = [policy_diagnosis(path, args.diagnose_episodes) for path in args.policies]
        if args.json_out:
            with open(args.json_out, "w") as f:
                json.dump(results, f, indent=1)
        sys.exit(0)
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
