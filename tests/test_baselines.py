"""Tests of baselines/: what each script adds to SAC, on hand-made tensors, and a short run of each on each env."""

import importlib.util
import copy
import math
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.distributions import AffineTransform, Normal, TanhTransform, TransformedDistribution, kl_divergence

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import envs  # noqa: E402


def load_script(name):
    spec = importlib.util.spec_from_file_location(f"baseline_{name}", ROOT / "baselines" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sac, bc_sac, flat_prior, ssp = (load_script(n) for n in ("sac", "bc_sac", "flat_prior", "ssp"))


def squashed_gaussian(mean, std, scale, bias):
    """torch.distributions' tanh-squashed, affinely scaled Gaussian: the reference for our log-likelihoods."""
    return TransformedDistribution(Normal(mean, std), [TanhTransform(cache_size=1), AffineTransform(bias, scale)])


# ---------------------------------------------------------------------------------------------------- sac.py


def test_sac_log_prob_matches_torch_distributions():
    torch.manual_seed(0)
    low, high = np.array([-2.0, 0.0], np.float32), np.array([2.0, 1.0], np.float32)
    actor = sac.Actor((3,), low, high, hidden_dim=16, hidden_layers=1)
    obs = torch.randn(5, 3)
    torch.manual_seed(1)
    action, log_prob, _ = actor.get_action(obs)
    mean, log_std = actor(obs)
    reference = squashed_gaussian(mean, log_std.exp(), actor.action_scale, actor.action_bias).log_prob(action).sum(-1, keepdim=True)
    assert torch.all(action >= torch.as_tensor(low)) and torch.all(action <= torch.as_tensor(high))
    torch.testing.assert_close(log_prob, reference, atol=2e-3, rtol=1e-3)  # 1e-6 inside the log only


def test_sac_bellman_target_on_hand_made_batch():
    rewards, next_q, next_log_prob = torch.tensor([[1.0], [1.0]]), torch.tensor([[2.0], [2.0]]), torch.tensor([[-0.5], [-0.5]])
    terminated = torch.tensor([[0.0], [1.0]])
    target = sac.soft_q_target(rewards, terminated, next_q, next_log_prob, alpha=0.2, gamma=0.9)
    torch.testing.assert_close(target, torch.tensor([[1.0 + 0.9 * (2.0 + 0.2 * 0.5)], [1.0]]))


@pytest.mark.parametrize("entropy, rises", [(-5.0, True), (5.0, False)])
def test_sac_alpha_tracks_entropy_target(entropy, rises):
    log_alpha = torch.zeros(1, requires_grad=True)
    loss = sac.entropy_alpha_loss(log_alpha, torch.full((8, 1), -entropy), target_entropy=-1.0)
    loss.backward()
    assert (log_alpha.grad.item() < 0) == rises  # gradient descent raises alpha when entropy < target


@pytest.mark.parametrize("env_name", envs.ENV_NAMES)
def test_flat_sac_policy_sees_the_state_unless_told_images(env_name):
    """The authors' flat-SAC configs give the policy the state in every env; --obs image gives it the frames."""
    env_or_skip(env_name)
    for obs_mode, expected in (("auto", "state"), ("state", "state"), ("image", "image")):
        env, _, obs_key = sac.make_env(env_name, 0, obs_mode)
        env.close()
        assert obs_key == expected


# ---------------------------------------------------------------------------------------------------- bc_sac.py


def test_bc_loss_is_negative_log_likelihood_of_squashed_policy():
    torch.manual_seed(0)
    low, high = np.array([-1.0, -3.0], np.float32), np.array([1.0, 1.0], np.float32)
    actor = bc_sac.Actor((4,), low, high, 16, 2, state_mean=np.full(4, 0.5, np.float32), state_std=np.full(4, 2.0, np.float32))
    obs, actions = torch.randn(6, 4), torch.rand(6, 2) * torch.tensor([1.8, 3.8]) + torch.tensor([-0.9, -2.9])
    mean, log_std = actor(obs)
    reference = -squashed_gaussian(mean, log_std.exp(), actor.action_scale, actor.action_bias).log_prob(actions).sum(-1).mean()
    torch.testing.assert_close(bc_sac.bc_loss(actor, obs, actions), reference, atol=1e-4, rtol=1e-4)


def test_behavioural_cloning_recovers_a_linear_controller():
    rng = np.random.default_rng(0)
    states = rng.normal(size=(2000, 3)).astype(np.float32)
    actions = np.tanh(states @ np.array([[0.8], [-0.5], [0.3]], np.float32)).astype(np.float32) * 0.9
    torch.manual_seed(0)
    actor = bc_sac.Actor((3,), np.array([-1.0], np.float32), np.array([1.0], np.float32), 32, 2,
                         states.mean(0), states.std(0))
    before = bc_sac.bc_loss(actor, torch.as_tensor(states), torch.as_tensor(actions)).item()
    after = bc_sac.behavioural_cloning(actor, states, actions, steps=300, lr=3e-3, batch_size=128, rng=rng)
    assert after < before - 2.0
    with torch.no_grad():
        mean_action = actor.get_action(torch.as_tensor(states[:200]))[2].numpy()
    assert np.abs(mean_action - actions[:200]).mean() < 0.1


def test_bc_dataset_with_wrong_dims_is_a_one_line_error(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, states=np.zeros((10, 5), np.float32), actions=np.zeros((10, 2), np.float32))
    with pytest.raises(SystemExit, match="made for another env"):
        bc_sac.load_offline_data("Pendulum-v1", str(path), "state", (3,), 1)
    with pytest.raises(SystemExit, match="check --dataset"):
        bc_sac.load_offline_data("Pendulum-v1", str(tmp_path / "missing.npz"), "state", (3,), 1)


# ---------------------------------------------------------------------------------------------------- flat_prior.py


def test_flat_prior_kl_matches_torch_distributions_mean_over_dims():
    torch.manual_seed(0)
    mean_pi, log_std_pi, mean_p, log_std_p = torch.randn(7, 3), torch.randn(7, 3) * 0.5, torch.randn(7, 3), torch.randn(7, 3) * 0.5
    reference = kl_divergence(Normal(mean_pi, log_std_pi.exp()), Normal(mean_p, log_std_p.exp())).mean(-1, keepdim=True)
    torch.testing.assert_close(flat_prior.prior_divergence(mean_pi, log_std_pi, mean_p, log_std_p), reference)
    far = flat_prior.prior_divergence(torch.full((1, 2), 100.0), torch.zeros(1, 2), torch.zeros(1, 2), torch.full((1, 2), -3.0))
    assert far.item() == 100.0  # clamped
    zero = flat_prior.prior_divergence(mean_p, log_std_p, mean_p, log_std_p)
    torch.testing.assert_close(zero, torch.zeros(7, 1))  # a policy copied from the prior starts at KL 0


@pytest.mark.parametrize("kl, rises", [(3.0, True), (0.2, False)])
def test_flat_prior_alpha_rises_when_kl_exceeds_delta(kl, rises):
    log_alpha = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.Adam([log_alpha], lr=0.1)
    loss = flat_prior.alpha_loss_fn(log_alpha, torch.full((8, 1), kl, requires_grad=True), target_divergence=1.0)
    loss.backward()
    optimizer.step()
    assert (log_alpha.item() > 0) == rises


def test_flat_prior_q_target_subtracts_weighted_kl():
    target = flat_prior.prior_regularised_q_target(torch.tensor([[1.0], [1.0]]), torch.tensor([[0.0], [1.0]]),
                                                   torch.tensor([[2.0], [2.0]]), torch.tensor([[0.5], [0.5]]), 0.1, 0.9)
    torch.testing.assert_close(target, torch.tensor([[1.0 + 0.9 * (2.0 - 0.05)], [1.0]]))


# ---------------------------------------------------------------------------------------------------- ssp.py


def test_ssp_skill_log_prob_matches_torch_distributions():
    torch.manual_seed(0)
    mu, log_sigma = torch.randn(5, 10), torch.randn(5, 10) * 0.3
    torch.manual_seed(1)
    z, log_prob = ssp.sample_skill(mu, log_sigma, max_skill=2.0)
    reference = squashed_gaussian(mu, log_sigma.exp(), torch.tensor(2.0), torch.tensor(0.0)).log_prob(z).sum(-1, keepdim=True)
    assert z.abs().max() <= 2.0
    torch.testing.assert_close(log_prob, reference, atol=5e-3, rtol=1e-3)


def test_ssp_entropy_term_and_target():
    # target -latent_dim: a policy whose entropy is below it gets a larger alpha, above it a smaller one
    latent_dim = 10
    for entropy, rises in ((-2.0 * latent_dim, True), (0.0, False)):
        log_alpha = torch.zeros(1, requires_grad=True)
        ssp.entropy_alpha_loss(log_alpha, torch.full((4, 1), -entropy), -float(latent_dim)).backward()
        assert (log_alpha.grad.item() < 0) == rises
    # the Q-target's entropy bonus: -alpha * log pi(z'|s') on H-step summed rewards
    target = ssp.soft_q_target(torch.tensor([[3.0]]), torch.tensor([[0.0]]), torch.tensor([[1.0]]), torch.tensor([[-4.0]]), 0.5, 0.99)
    torch.testing.assert_close(target, torch.tensor([[3.0 + 0.99 * (1.0 + 2.0)]]))


def write_skill_model(path, env_name, state_dim, action_dim, image_shape=None, closed_loop=False, latent_dim=4):
    """A checkpoint in the contract's format, built with spirl_vae.py's own classes (untrained). closed_loop:
    False, True / "state" (the decoder sees the state) or "image" (it sees image_shape frames)."""
    import spirl_vae

    closed_loop_input = None if not closed_loop else ("image" if closed_loop == "image" else "state")
    model = spirl_vae.SkillModel(state_dim, action_dim, latent_dim, hidden_dim=32, prior_layers=3,
                                 image_shape=image_shape, state_conditioned_decoder=bool(closed_loop),
                                 closed_loop_image_shape=image_shape if closed_loop_input == "image" else None)
    torch.save({"format": "spirl-skill-model-v1", "env": env_name, "args": {}, "data_source": "test",
                "prior_input": "image" if image_shape else "state", "state_dim": state_dim,
                "image_shape": list(image_shape) if image_shape else None, "action_dim": action_dim,
                "skill_horizon": 5, "latent_dim": latent_dim, "hidden_dim": 32, "prior_layers": 3,
                "state_conditioned_decoder": bool(closed_loop), "closed_loop_input": closed_loop_input,
                "state_mean": np.zeros(state_dim, np.float32), "state_std": np.ones(state_dim, np.float32),
                "action_low": -np.ones(action_dim, np.float32), "action_high": np.ones(action_dim, np.float32),
                "model": model.state_dict(), "step": 0}, path)
    return model


@pytest.mark.parametrize("image_shape, closed_loop", [(None, False), ((6, 32, 32), True), ((6, 32, 32), "image")])
def test_ssp_loads_spirl_vae_checkpoint_strictly(tmp_path, image_shape, closed_loop):
    model = write_skill_model(tmp_path / "m.pt", "kitchen", 7, 3, image_shape, closed_loop)
    _, decoder, prior = ssp.load_skill_model(str(tmp_path / "m.pt"), "kitchen")
    z = torch.randn(2, 4)
    model.eval()
    seen = {False: None, True: torch.randn(2, 5, 7), "image": torch.randint(0, 255, (2, 5, 6, 32, 32), dtype=torch.uint8)}
    conds = decoder.condition(seen[closed_loop]) if closed_loop else None
    assert (decoder.image_encoder is not None) == (closed_loop == "image")
    torch.testing.assert_close(decoder.decode(z, conds, horizon=5),
                               model.decoder.decode(z, model.decoder.condition(seen[closed_loop]) if closed_loop else None, horizon=5))
    prior_in = torch.randint(0, 255, (2, *image_shape), dtype=torch.uint8) if image_shape else torch.randn(2, 7)
    prior.eval()
    torch.testing.assert_close(prior(prior_in)[0], model.skill_prior(prior_in)[0])
    with pytest.raises(SystemExit, match="trained on 'kitchen'"):
        ssp.load_skill_model(str(tmp_path / "m.pt"), "maze")
    with pytest.raises(SystemExit, match="spirl_vae.py --env maze"):
        ssp.load_skill_model(str(tmp_path / "missing.pt"), "maze")


# ---------------------------------------------------------------------------------------------------- smoke runs


def env_or_skip(name):
    try:
        module = envs.env_module(name)
    except ModuleNotFoundError:
        pytest.skip(f"envs/{name}.py not written yet")
    return module


def run_script(name, argv, monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)  # runs/ goes to tmp_path
    monkeypatch.setattr(sys, "argv", [f"{name}.py", *argv])
    runpy.run_path(str(ROOT / "baselines" / f"{name}.py"), run_name="__main__")
    return capsys.readouterr().out


def synthetic_dataset(path, env_name):
    """A small random dataset in envs.load_dataset's format, with the downstream env's dimensions."""
    env = envs.make_env(env_name, seed=0)
    obs, _ = env.reset(seed=0)
    rng, n = np.random.default_rng(0), 300
    low, high = env.action_space.low, env.action_space.high
    data = {"states": rng.normal(size=(n, obs["state"].shape[0])).astype(np.float32),
            "actions": rng.uniform(low, high, size=(n, len(low))).astype(np.float32),
            "traj_ends": np.array([n], np.int64)}
    if "image" in obs:
        data["images"] = rng.integers(0, 256, size=(n, *obs["image"].shape), dtype=np.uint8)
    np.savez(path, **data)
    env.close()


SMALL = ["--hidden-dim", "32", "--batch-size", "32", "--log-interval", "100", "--learning-starts", "100"]
STEPS = {"kitchen": 300, "maze": 200, "block_stacking": 200}  # kitchen: one full 280-step episode, so its metric is logged


@pytest.mark.parametrize("env_name", envs.ENV_NAMES)
@pytest.mark.parametrize("script", ["sac", "bc_sac", "flat_prior"])
def test_flat_baseline_smoke(script, env_name, tmp_path, monkeypatch, capsys):
    module = env_or_skip(env_name)
    argv = ["--env", env_name, "--total-timesteps", str(STEPS[env_name]), "--policy-layers", "1", *SMALL]
    if script == "sac" and env_name != "kitchen":  # its default policy input is the state (kitchen runs that path)
        argv += ["--obs", "image"]
    if script != "sac":
        synthetic_dataset(tmp_path / "data.npz", env_name)
        argv += ["--dataset", str(tmp_path / "data.npz"), "--bc-steps" if script == "bc_sac" else "--prior-steps", "20"]
    out = run_script(script, argv, monkeypatch, tmp_path, capsys)
    assert f"step {STEPS[env_name]}/{STEPS[env_name]}" in out
    run_dir = next((tmp_path / "runs").iterdir())
    agent = torch.load(run_dir / "agent.pt", map_location="cpu", weights_only=False)
    assert all(torch.isfinite(v).all() for v in agent["actor"].values())
    if env_name == "kitchen":  # an episode ended: the task metric was logged
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        tags = EventAccumulator(str(run_dir)).Reload().Tags()["scalars"]
        for tag in ("charts/episodic_return", f"charts/{module.METRIC}", "charts/subtasks_completed_any_order",
                    "charts/env_steps_per_s_overall", "charts/env_steps_per_s_collecting", "losses/alpha"):
            assert tag in tags


@pytest.mark.parametrize("env_name", envs.ENV_NAMES)
@pytest.mark.parametrize("prior_init", [False, True])
def test_ssp_smoke(env_name, prior_init, tmp_path, monkeypatch, capsys):
    module = env_or_skip(env_name)
    env = envs.make_env(env_name, seed=0)
    obs, _ = env.reset(seed=0)
    image_shape = obs["image"].shape if module.DEFAULT_PRIOR_INPUT == "image" else None
    # image envs: the run without prior init executes an image closed-loop model (decoder sees the frames)
    closed_loop = "image" if image_shape is not None and not prior_init else False
    write_skill_model(tmp_path / "m.pt", env_name, obs["state"].shape[0], env.action_space.shape[0], image_shape, closed_loop)
    env.close()
    argv = ["--env", env_name, "--skill-model", str(tmp_path / "m.pt"), "--total-timesteps", str(STEPS[env_name]),
            "--critic-hidden-dim", "32", "--batch-size", "16", "--log-interval", "100", "--learning-starts", "100"]
    out = run_script("ssp", argv + (["--prior-init"] if prior_init else []), monkeypatch, tmp_path, capsys)
    assert "target entropy -4.0" in out  # default: -latent_dim
    assert f"step {STEPS[env_name]}/{STEPS[env_name]}" in out
    agent = torch.load(next((tmp_path / "runs").iterdir()) / "agent.pt", map_location="cpu", weights_only=False)
    assert all(torch.isfinite(v.float()).all() for v in agent["policy"].values())


def test_flat_sac_improves_on_pendulum(tmp_path, monkeypatch, capsys):
    """End to end: a short flat-SAC run on Pendulum-v1 beats its random-action warm-up episodes."""
    # small, fast-learning settings (64 units, batch 64, larger learning rates) to stay within seconds
    out = run_script("sac", ["--env", "Pendulum-v1", "--total-timesteps", "3000", "--learning-starts", "400",
                             "--policy-layers", "2", "--hidden-dim", "64", "--batch-size", "64", "--policy-lr", "1e-3",
                             "--q-lr", "3e-3", "--alpha-lr", "3e-3", "--log-interval", "3000"], monkeypatch, tmp_path, capsys)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    returns = [e.value for e in EventAccumulator(str(next((tmp_path / "runs").iterdir()))).Reload().Scalars("charts/episodic_return")]
    assert "step 3000/3000" in out
    assert np.mean(returns[-3:]) > np.mean(returns[:3]) + 200, returns
    # --evaluate loads the trained policy: its mean-action episodes beat the random warm-up ones too
    run_dir = next((tmp_path / "runs").iterdir())
    with pytest.raises(SystemExit):
        run_script("sac", ["--evaluate", str(run_dir / "agent.pt"), "--eval-episodes", "3", "--eval-deterministic"],
                   monkeypatch, tmp_path, capsys)
    evaluated = sac.evaluate_checkpoint(sac.Args(evaluate=str(run_dir / "agent.pt"), eval_episodes=3,
                                                 eval_deterministic=True))[0]
    assert np.mean(evaluated) > np.mean(returns[:3]) + 200, (evaluated, returns)


# ---------------------------------------------------------------------------------------------------- --resume


def pendulum_dataset(path):
    rng = np.random.default_rng(0)
    np.savez(path, states=rng.normal(size=(300, 3)).astype(np.float32),
             actions=rng.uniform(-2, 2, size=(300, 1)).astype(np.float32))


def small_run_argv(script, tmp_path):
    """A small run of a baseline: Pendulum-v1 for the flat scripts (with a tiny offline dataset where the script needs
    one; episodes of 200 steps), the kitchen for ssp, which needs a skill model of one of our envs (an untrained one of
    H = 5; episodes of 280 steps). ssp's warm-up length is left to the caller."""
    if script == "ssp":
        env_or_skip("kitchen")
        env = envs.make_env("kitchen", seed=0)
        write_skill_model(tmp_path / "m.pt", "kitchen", env.observation_space["state"].shape[0], env.action_space.shape[0])
        env.close()
        return ["--env", "kitchen", "--skill-model", str(tmp_path / "m.pt"), "--critic-hidden-dim", "32",
                "--critic-layers", "2", "--batch-size", "16"]
    argv = ["--env", "Pendulum-v1", "--policy-layers", "1", *SMALL]
    if script != "sac":
        pendulum_dataset(tmp_path / "data.npz")
        argv += ["--dataset", str(tmp_path / "data.npz"), "--bc-steps" if script == "bc_sac" else "--prior-steps", "20"]
    return argv


@pytest.mark.parametrize("script", ["sac", "bc_sac", "flat_prior", "ssp"])
def test_interrupted_run_resumes_exactly(script, tmp_path, monkeypatch, capsys):
    """A run stopped at a checkpoint and continued with --resume ends with the same weights, optimizer
    state, alpha and replay buffer as the same run made in one go; its tensorboard log has no duplicates."""
    episode = 280 if script == "ssp" else 200  # kitchen / Pendulum-v1 episode lengths: checkpoints at an episode end
    argv = small_run_argv(script, tmp_path) + (["--learning-starts", "100"] if script == "ssp" else [])
    argv += ["--log-interval", str(episode), "--checkpoint-interval", str(episode)]
    run_script(script, [*argv, "--total-timesteps", str(episode), "--run-dir", "interrupted"], monkeypatch, tmp_path, capsys)
    out = run_script(script, [*argv, "--total-timesteps", str(2 * episode), "--resume", "interrupted/agent.pt"],
                     monkeypatch, tmp_path, capsys)
    assert f"resumed interrupted/agent.pt at env step {episode}" in out
    run_script(script, [*argv, "--total-timesteps", str(2 * episode), "--run-dir", "straight"], monkeypatch, tmp_path, capsys)
    resumed = torch.load(tmp_path / "interrupted" / "agent.pt", weights_only=False)
    straight = torch.load(tmp_path / "straight" / "agent.pt", weights_only=False)
    assert resumed["global_step"] == straight["global_step"] == 2 * episode
    for key in ("actor" if script != "ssp" else "policy", "qf1", "qf2_target", "q_optimizer", "alpha_optimizer", "log_alpha"):
        a, b = resumed[key], straight[key]
        if key.endswith("optimizer"):
            a, b = a["state"][0], b["state"][0]
        if isinstance(a, dict):
            assert all(torch.equal(a[k], b[k]) for k in a), key
        else:
            assert torch.equal(a, b), key
    with np.load(tmp_path / "interrupted" / "agent.pt.replay.npz") as r, np.load(tmp_path / "straight" / "agent.pt.replay.npz") as s:
        assert int(r["size"]) == int(s["size"]) > 0 and np.array_equal(r["rewards"], s["rewards"])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    steps = [e.step for e in EventAccumulator(str(tmp_path / "interrupted")).Reload().Scalars("charts/episodic_return")]
    assert steps == [episode, 2 * episode]
    # a checkpoint without its replay buffer: the current policy refills it for --learning-starts (100) env steps
    # before the next update, instead of updating on a near-empty buffer (ssp updates once per skill of H = 5)
    (tmp_path / "straight" / "agent.pt.replay.npz").unlink()
    run_script(script, [*argv, "--total-timesteps", str(3 * episode), "--resume", "straight/agent.pt", "--run-dir", "refill"],
               monkeypatch, tmp_path, capsys)
    refilled = torch.load(tmp_path / "refill" / "agent.pt", weights_only=False)
    updates = int(refilled["q_optimizer"]["state"][0]["step"]) - int(straight["q_optimizer"]["state"][0]["step"])
    assert 0 < updates <= (episode - 100) // (5 if script == "ssp" else 1) + 1, updates
    # the same refill stopped half way (a checkpoint at 50 of its 100 env steps, with the half-filled buffer): the
    # resumed run goes on refilling and makes the same number of updates as the refill in one go
    run_script(script, [*argv, "--total-timesteps", str(2 * episode + 50), "--resume", "straight/agent.pt",
                        "--run-dir", "half"], monkeypatch, tmp_path, capsys)
    half = torch.load(tmp_path / "half" / "agent.pt", weights_only=False)
    assert half["q_optimizer"]["state"][0]["step"] == straight["q_optimizer"]["state"][0]["step"]  # no update yet
    run_script(script, [*argv, "--total-timesteps", str(3 * episode), "--resume", "half/agent.pt", "--run-dir", "rest"],
               monkeypatch, tmp_path, capsys)
    rest = torch.load(tmp_path / "rest" / "agent.pt", weights_only=False)
    assert int(rest["q_optimizer"]["state"][0]["step"]) - int(straight["q_optimizer"]["state"][0]["step"]) == updates


@pytest.mark.parametrize("script", ["sac", "bc_sac", "flat_prior", "ssp"])
def test_evaluate_runs_the_saved_policy_on_its_runs_env(script, tmp_path, monkeypatch, capsys):
    """--evaluate plays --eval-episodes episodes of the checkpoint's policy on the env of its run (none of the run's
    flags repeated), writes each episode's states, gives the same episodes for the same seed, refuses other files."""
    episode = 280 if script == "ssp" else 200  # kitchen / Pendulum-v1 episode lengths
    argv = small_run_argv(script, tmp_path) + (["--learning-starts", "100"] if script == "ssp" else [])
    run_script(script, [*argv, "--total-timesteps", str(episode), "--run-dir", "run"], monkeypatch, tmp_path, capsys)
    evaluate = ["--evaluate", "run/agent.pt", "--eval-episodes", "2"]
    with pytest.raises(SystemExit) as exit_info:
        run_script(script, evaluate, monkeypatch, tmp_path, capsys)
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    env_name = "kitchen" if script == "ssp" else "Pendulum-v1"
    assert f"evaluate run/agent.pt (trained {episode} env steps): 2 episodes on {env_name}" in out
    if script == "ssp":
        assert "mean subtasks_completed" in out
    with np.load(tmp_path / "run" / "agent_evaluate.npz") as saved:
        first = {k: saved[k] for k in saved.files}
    assert sorted(first) == ["episode_0", "episode_1"]
    assert first["episode_0"].shape == (episode + 1, 60 if script == "ssp" else 3)  # the states of a whole episode
    assert not np.array_equal(first["episode_0"], first["episode_1"])  # two episodes, two start states
    with pytest.raises(SystemExit):
        run_script(script, evaluate, monkeypatch, tmp_path, capsys)
    with np.load(tmp_path / "run" / "agent_evaluate.npz") as again:
        assert all(np.array_equal(first[k], again[k]) for k in first)
    other = "ssp" if script != "ssp" else "sac"
    torch.save({"format": f"baselines-{other}-v1", "args": {}}, tmp_path / "other.pt")
    with pytest.raises(SystemExit, match="not a checkpoint of this script"):
        run_script(script, ["--evaluate", "other.pt"], monkeypatch, tmp_path, capsys)
    with pytest.raises(SystemExit, match="no such checkpoint"):
        run_script(script, ["--evaluate", "missing.pt"], monkeypatch, tmp_path, capsys)


@pytest.mark.parametrize("script", ["sac", "bc_sac", "flat_prior", "ssp"])
def test_critic_layer_norm_flag_normalises_each_hidden_layer_and_travels_with_the_checkpoint(script, tmp_path,
                                                                                              monkeypatch, capsys):
    """--critic-layer-norm, as spirl_sac.py's: a LayerNorm between each hidden Linear of the critics and its
    activation, so the features the head sees stay bounded however far the input lies from the data (the plain
    critic's grow with it). Without the flag the critics are as before (same state_dict keys: old checkpoints
    resume). A short run stores the flag and the LayerNorm weights, and resumes with them."""
    module = {"sac": sac, "bc_sac": bc_sac, "flat_prior": flat_prior, "ssp": ssp}[script]
    torch.manual_seed(0)
    layers = 3 if script == "ssp" else 2  # ssp counts linear layers (as spirl_sac.py), the flat scripts hidden ones
    plain, normed = module.SoftQNetwork(8, 2, 32, layers), module.SoftQNetwork(8, 2, 32, layers, layer_norm=True)
    activation = "LeakyReLU" if script == "ssp" else "ReLU"
    assert [type(m).__name__ for m in normed.net] == ["Linear", "LayerNorm", activation] * 2 + ["Linear"]
    assert [type(m).__name__ for m in plain.net] == ["Linear", activation] * 2 + ["Linear"]
    far = 1000 * torch.randn(16, 8), 1000 * torch.randn(16, 2)
    with torch.no_grad():
        assert normed.net[:-1](torch.cat(far, -1)).abs().max() < 32 ** 0.5  # LayerNorm: |x| <= sqrt(width) per unit
        assert plain.net[:-1](torch.cat(far, -1)).abs().max() > 100
    steps = 280 if script == "ssp" else 200  # one episode: a checkpoint at its end
    argv = small_run_argv(script, tmp_path) + (["--learning-starts", "100"] if script == "ssp" else [])
    argv += ["--log-interval", str(steps), "--checkpoint-interval", str(steps), "--critic-layer-norm", "--run-dir", "r"]
    run_script(script, [*argv, "--total-timesteps", str(steps)], monkeypatch, tmp_path, capsys)
    ckpt = torch.load(tmp_path / "r" / "agent.pt", weights_only=False)
    assert ckpt["args"]["critic_layer_norm"] and "net.1.weight" in ckpt["qf1"]  # the first LayerNorm's gain
    out = run_script(script, [*argv, "--total-timesteps", str(2 * steps), "--resume", "r/agent.pt"],
                     monkeypatch, tmp_path, capsys)
    assert f"resumed r/agent.pt at env step {steps}" in out
    assert torch.load(tmp_path / "r" / "agent.pt", weights_only=False)["global_step"] == 2 * steps


def test_resume_with_other_flags_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    argv = ["--env", "Pendulum-v1", "--policy-layers", "1", *SMALL, "--total-timesteps", "200", "--run-dir", "r"]
    run_script("sac", argv, monkeypatch, tmp_path, capsys)
    with pytest.raises(SystemExit, match="started with --seed 1"):
        run_script("sac", [*argv, "--seed", "2", "--resume", "r/agent.pt"], monkeypatch, tmp_path, capsys)
    with pytest.raises(SystemExit, match="no such checkpoint"):
        run_script("sac", [*argv, "--resume", "missing/agent.pt"], monkeypatch, tmp_path, capsys)


def test_track_logs_through_wandb(tmp_path, monkeypatch, capsys):
    """--track (CleanRL's convention) calls wandb.init with the run's config; wandb is imported only then."""
    import types

    calls = []
    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=lambda **kw: calls.append(kw)))
    run_script("sac", ["--env", "Pendulum-v1", "--policy-layers", "1", *SMALL, "--total-timesteps", "200", "--track",
                       "--wandb-project-name", "p"], monkeypatch, tmp_path, capsys)
    assert len(calls) == 1 and calls[0]["project"] == "p" and calls[0]["sync_tensorboard"] and calls[0]["config"]["seed"] == 1


@pytest.mark.parametrize("script", ["sac", "bc_sac", "flat_prior"])
def test_goal_radius_flag_reaches_the_maze_and_only_the_maze(script):
    make_env = load_script(script).make_env
    env, _, _ = make_env("maze", 0, "state", 2.0)
    assert env.unwrapped.goal_radius == 2.0
    env, _, _ = make_env("maze", 0, "state")
    assert env.unwrapped.goal_radius == 1.0  # the paper's time
    with pytest.raises(SystemExit, match="only the maze has a goal radius"):
        make_env("kitchen", 0, "auto", 2.0)


@pytest.mark.parametrize("script", ["sac", "bc_sac", "flat_prior"])
def test_sparse_reward_flag_reaches_block_stacking_and_only_block_stacking(script):
    make_env = load_script(script).make_env
    assert make_env("block_stacking", 0, "state", sparse_reward=True)[0].reward == "sparse"
    assert make_env("block_stacking", 0, "state")[0].reward == "dense"
    with pytest.raises(SystemExit, match="only block_stacking has a sparse reward"):
        make_env("maze", 0, "auto", sparse_reward=True)


def test_ssp_sparse_reward_outside_block_stacking_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit, match="only block_stacking has a sparse reward"):
        run_script("ssp", ["--env", "kitchen", "--sparse-reward"], monkeypatch, tmp_path, capsys)


def test_ssp_goal_radius_outside_the_maze_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit, match="only the maze has a goal radius"):
        run_script("ssp", ["--env", "kitchen", "--goal-radius", "2.0"], monkeypatch, tmp_path, capsys)


@pytest.mark.parametrize("bootstrap", [True, False])
@pytest.mark.parametrize("script", ["sac", "bc_sac", "flat_prior", "ssp"])
def test_time_limit_is_terminal_only_when_told(script, bootstrap, tmp_path, monkeypatch, capsys):
    """Pendulum-v1 (kitchen for ssp) never terminates here and truncates every 200 (280) steps: by default no
    transition is stored as terminal (the target bootstraps through the time limit); --no-bootstrap-at-time-limit
    marks exactly the last transition of each episode, as the authors' code does."""
    argv = small_run_argv(script, tmp_path)
    argv += ["--learning-starts", "10", "--total-timesteps", "600"] if script == "ssp" else ["--total-timesteps", "450"]
    run_script(script, argv + ([] if bootstrap else ["--no-bootstrap-at-time-limit"]), monkeypatch, tmp_path, capsys)
    with np.load(next((tmp_path / "runs").iterdir()) / "agent.pt.replay.npz") as saved:
        terminated = saved["terminated"][:int(saved["size"]), 0]
    episode_ends = [55, 111] if script == "ssp" else [199, 399]  # ssp: the test model's skills of H = 5, 56 per episode
    assert np.flatnonzero(terminated).tolist() == ([] if bootstrap else episode_ends)


@pytest.mark.parametrize("module", [sac, bc_sac, flat_prior], ids=["sac", "bc_sac", "flat_prior"])
def test_image_actor_runs_channels_last_with_the_plain_maths(module):
    """The flat baselines' image actors run their convolutions channels-last on a fresh float copy of the frames
    (the in-place / 255 must leave the caller's uint8 batch alone): same outputs as the plain NCHW computation."""
    torch.manual_seed(0)
    actor = module.Actor((6, 32, 32), np.array([-1.0, -1.0]), np.array([1.0, 1.0]), 64, 2)
    frames = torch.randint(0, 256, (5, 6, 32, 32), dtype=torch.uint8)
    before = frames.clone()
    mean, log_std = actor(frames)
    assert torch.equal(frames, before)
    plain = copy.deepcopy(actor).to(memory_format=torch.contiguous_format)
    features = plain.image_encoder(frames.float() / 255.0)
    ref_mean, ref_log_std = plain.net(features).chunk(2, dim=-1)
    ref_log_std = module.LOG_STD_MIN + 0.5 * (module.LOG_STD_MAX - module.LOG_STD_MIN) * (torch.tanh(ref_log_std) + 1)
    torch.testing.assert_close(mean, ref_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(log_std, ref_log_std, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("module", [sac, bc_sac, flat_prior], ids=["sac", "bc_sac", "flat_prior"])
def test_replay_buffer_serves_frames_channels_last_and_loads_the_old_layout(module):
    """Frames go in (C, H, W) and come out of sample() as the same (B, C, H, W) values with channels-last strides
    (no copy before the convolutions); a buffer saved with frames (C, H, W) still loads."""
    rng = np.random.default_rng(0)
    rb = module.ReplayBuffer(8, (6, 32, 32), np.uint8, 3, 2)
    frames = rng.integers(0, 256, (8, 6, 32, 32), dtype=np.uint8)
    for i in range(8):
        rb.add(frames[i], np.full(3, i, np.float32), np.zeros(2), float(i), frames[(i + 1) % 8], np.zeros(3), 0.0)
    obs, states, _, rewards, next_obs, _, _ = rb.sample(16, np.random.default_rng(1))
    assert obs.shape == (16, 6, 32, 32) and obs.is_contiguous(memory_format=torch.channels_last)
    index = states[:, 0].long()
    assert torch.equal(obs, torch.as_tensor(frames)[index])
    assert torch.equal(next_obs, torch.as_tensor(frames)[(index + 1) % 8])
    saved = rb.state_dict()
    old = {**saved, "obs": np.moveaxis(saved["obs"], -1, 1), "next_obs": np.moveaxis(saved["next_obs"], -1, 1)}
    for state_dict in (saved, old):
        loaded = module.ReplayBuffer(8, (6, 32, 32), np.uint8, 3, 2)
        loaded.load_state_dict(state_dict)
        assert np.array_equal(loaded.obs, rb.obs) and np.array_equal(loaded.next_obs, rb.next_obs)


@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize("module", [bc_sac, flat_prior], ids=["bc_sac", "flat_prior"])
def test_offline_data_of_the_maze_default_format_load_as_stacked_frames(module, lazy, tmp_path, monkeypatch):
    """The maze's own HDF5 data (what `--dataset auto` reads) give their images as a StackedViews, memory-mapped
    for the default-size file: load_offline_data turns them into the (N, 6, 32, 32) uint8 frames the env shows."""
    from envs import maze

    path = tmp_path / "maze.hdf5"
    maze.generate_dataset(path, num_trajectories=2, seed=3, progress=False, workers=1)
    data = maze.load_dataset(str(path), lazy=lazy)
    assert isinstance(data["images"], maze.StackedViews)
    monkeypatch.setattr(envs, "load_dataset", lambda name, p: maze.load_dataset(p, lazy=lazy))
    inputs, actions = module.load_offline_data("maze", str(path), "image", (6, 32, 32), 2)
    assert inputs.dtype == np.uint8 and inputs.shape == (len(actions), 6, 32, 32)
    np.testing.assert_array_equal(inputs[:5], data["images"][np.arange(5)])
    states, _ = module.load_offline_data("maze", str(path), "state", data["states"].shape[1:], 2)
    assert states.dtype == np.float32 and len(states) == len(actions)
