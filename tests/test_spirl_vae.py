"""Tests of spirl_vae.py: eq. (4)'s stop-gradient, the analytic KL, shapes, checkpoints, learning, bad input."""

import os
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import spirl_vae  # noqa: E402
from spirl_vae import Args, SkillModel, gaussian_kl, skill_model_losses  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    """Small networks train fastest on one thread (and do not fight other jobs for the cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def synthetic_dataset(num_traj=40, length=40, state_dim=4, action_dim=2, images=False, seed=0):
    """Trajectories in the envs/__init__.py format whose skills are predictable from the first state:
    the action turns at a constant per-trajectory rate omega, and the state holds the heading and omega."""
    rng = np.random.default_rng(seed)
    states, actions, ends = [], [], []
    for _ in range(num_traj):
        theta, omega = rng.uniform(-np.pi, np.pi), rng.choice([-0.3, 0.0, 0.3])
        thetas = theta + omega * np.arange(length)
        act = 0.8 * np.stack([np.cos(thetas), np.sin(thetas)] + [np.cos(2 * thetas)] * (action_dim - 2), 1)
        obs = np.concatenate([np.cos(thetas)[:, None], np.sin(thetas)[:, None], np.full((length, 1), omega),
                              rng.normal(0, 0.1, (length, state_dim - 3))], 1)
        states.append(obs)
        actions.append(act)
        ends.append(length * (len(ends) + 1))
    dataset = {
        "states": np.concatenate(states).astype(np.float32),
        "actions": np.concatenate(actions).astype(np.float32),
        "traj_ends": np.asarray(ends, dtype=np.int64),
        "source": "synthetic turning-point trajectories (tests/test_spirl_vae.py)",
    }
    if images:  # constant colour planes that encode heading and turn rate, two stacked "frames"
        s = dataset["states"]
        planes = np.stack([s[:, 0], s[:, 1], s[:, 2] / 0.3] * 2, 1)  # (N, 6) in [-1, 1]
        dataset["images"] = np.broadcast_to(((planes + 1) * 127.5).astype(np.uint8)[:, :, None, None],
                                            (len(s), 6, 32, 32)).copy()
    return dataset


def make_spec(state_dim=4, action_dim=2, image=False):
    return {
        "state_dim": state_dim, "action_dim": action_dim, "image_shape": [6, 32, 32] if image else None,
        "action_low": -np.ones(action_dim, np.float32), "action_high": np.ones(action_dim, np.float32),
        "default_prior_input": "image" if image else "state",
    }


def random_batch(batch=8, horizon=10, state_dim=4, action_dim=2, image=False):
    actions, states = torch.randn(batch, horizon, action_dim), torch.randn(batch, horizon, state_dim)
    prior_obs = torch.randint(0, 256, (batch, 6, 32, 32), dtype=torch.uint8) if image else states[:, 0]
    return actions, states, prior_obs


@pytest.mark.parametrize("closed_loop", [False, "state", "image"])
def test_stop_gradient_prior_loss_does_not_reach_encoder(closed_loop):
    torch.manual_seed(0)
    model = SkillModel(4, 2, state_conditioned_decoder=bool(closed_loop),
                       closed_loop_image_shape=[6, 32, 32] if closed_loop == "image" else None)
    actions, states, prior_obs = random_batch()
    step_obs = torch.randint(0, 256, (8, 10, 6, 32, 32), dtype=torch.uint8) if closed_loop == "image" else states
    recon, kl, prior = skill_model_losses(model, actions, step_obs, prior_obs)
    # the encoder and, in the image closed loop, the conv encoder the encoder shares with the decoder
    encoder_params = list(model.encoder.parameters())
    if closed_loop == "image":
        encoder_params += list(model.decoder.image_encoder.parameters())
    prior_grads = torch.autograd.grad(prior, encoder_params, retain_graph=True, allow_unused=True)
    assert all(g is None or torch.count_nonzero(g) == 0 for g in prior_grads)  # exactly zero
    prior_to_prior = torch.autograd.grad(prior, list(model.skill_prior.parameters()), retain_graph=True, allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in prior_to_prior)
    for vae_loss in (recon, kl):
        grads = torch.autograd.grad(vae_loss, encoder_params, retain_graph=True, allow_unused=True)
        assert sum(g.abs().sum().item() for g in grads if g is not None) > 0


def test_analytic_kl_matches_torch_distributions():
    torch.manual_seed(0)
    mu_q, log_sigma_q, mu_p, log_sigma_p = torch.randn(4, 32, 10).unbind(0)
    ours = gaussian_kl(mu_q, log_sigma_q, mu_p, log_sigma_p)
    Normal = torch.distributions.Normal
    reference = torch.distributions.kl_divergence(Normal(mu_q, log_sigma_q.exp()), Normal(mu_p, log_sigma_p.exp()))
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    # the losses are means over elements: the KL term is the mean of the per-dim KL to N(0, I)
    model = SkillModel(4, 2)
    batch = random_batch()
    torch.manual_seed(1)
    _, kl, _ = skill_model_losses(model, *batch)
    mu_z, log_sigma_z = model.encoder(batch[0])
    expected = torch.distributions.kl_divergence(Normal(mu_z, log_sigma_z.exp()), Normal(0.0, 1.0)).mean()
    torch.testing.assert_close(kl, expected)


def test_prior_loss_is_kl_from_the_posterior_to_the_prior_by_value():
    """eq. (4): KL(sg(q(z|a)) || p_a(z|s_1)), in that direction (the reverse KL has another value), mean over
    batch and latent dims; and the reconstruction term is 0.5 * squared error averaged over every element."""
    torch.manual_seed(0)
    model = SkillModel(4, 2).eval()
    with torch.no_grad():  # a prior far from the posterior, with other widths, so the two directions differ
        model.skill_prior.mlp[-1].bias.copy_(torch.cat([torch.full((10,), 1.5), torch.full((10,), -0.7)]))
    actions, states, prior_obs = random_batch()
    torch.manual_seed(1)
    recon, _, prior = skill_model_losses(model, actions, states, prior_obs)
    Normal = torch.distributions.Normal
    torch.manual_seed(1)
    reconstruction, mu_z, ls_z, mu_p, ls_p = model(actions, states, prior_obs)
    q, p = Normal(mu_z, ls_z.exp()), Normal(mu_p, ls_p.exp())
    forward, reverse = torch.distributions.kl_divergence(q, p).mean(), torch.distributions.kl_divergence(p, q).mean()
    assert abs(forward.item() - reverse.item()) > 0.1
    torch.testing.assert_close(prior, forward)
    torch.testing.assert_close(recon, 0.5 * ((reconstruction - actions) ** 2).mean())


class LazyImages:
    """An image store that is not an array (as the maze's memory-mapped stacked views): indexable by an index array."""

    def __init__(self, images):
        self.images, self.shape, self.dtype = images, images.shape, images.dtype

    def __getitem__(self, index):
        assert isinstance(index, np.ndarray)  # a batch's indices, never the whole store
        return self.images[index]


@pytest.mark.parametrize("image", [None, "tensor", "lazy"])
def test_prior_sees_the_first_state_of_the_skill_window(image):
    """get_batch: actions and states of the H-step window, and the prior's input is the window's first state
    (or its first image, from an in-memory tensor or a lazy store), not a later one."""
    n, horizon = 30, 5
    data = {"states": torch.arange(n, dtype=torch.float32)[:, None].repeat(1, 3),  # state t holds t
            "actions": torch.arange(n, dtype=torch.float32)[:, None].repeat(1, 2) + 0.5}
    if image:
        data["images"] = torch.arange(n, dtype=torch.uint8)[:, None, None, None].expand(n, 6, 32, 32)
    if image == "lazy":
        data["images"] = LazyImages(data["images"].numpy())
    starts = np.array([0, 7, 20])
    actions, states, prior_obs = spirl_vae.get_batch(data, starts, horizon)
    assert actions.shape == (3, horizon, 2) and states.shape == (3, horizon, 3)
    if image:  # the image closed loop sees the frames of every step of the window
        _, step_images, _ = spirl_vae.get_batch({**data, "step_images": data["images"]}, starts, horizon)
        assert step_images.shape == (3, horizon, 6, 32, 32) and step_images.dtype == torch.uint8
        torch.testing.assert_close(step_images[:, :, 0, 0, 0].float(), states[:, :, 0])
    torch.testing.assert_close(states[:, :, 0], torch.as_tensor(starts)[:, None].float() + torch.arange(horizon))
    torch.testing.assert_close(actions[:, 0, 0], torch.as_tensor(starts).float() + 0.5)
    first = prior_obs.reshape(3, -1)[:, 0].float()
    torch.testing.assert_close(first, torch.as_tensor(starts).float())


@pytest.mark.parametrize("image", [False, True])
@pytest.mark.parametrize("closed_loop", [False, "state", "image"])
def test_shapes_and_step_by_step_decoding(image, closed_loop):
    torch.manual_seed(0)
    B, H, S, A, Z = 5, 10, 7, 3, 10
    model = SkillModel(S, A, latent_dim=Z, image_shape=[6, 32, 32] if image else None,
                       state_conditioned_decoder=bool(closed_loop),
                       closed_loop_image_shape=[6, 32, 32] if closed_loop == "image" else None)
    actions, states, prior_obs = random_batch(B, H, S, A, image)
    if closed_loop == "image":  # what the closed loop sees at each step: the stacked frames
        states = torch.randint(0, 256, (B, H, 6, 32, 32), dtype=torch.uint8)
    reconstruction, mu_z, log_sigma_z, mu_p, log_sigma_p = model(actions, states, prior_obs)
    assert reconstruction.shape == (B, H, A)
    for t in (mu_z, log_sigma_z, mu_p, log_sigma_p):
        assert t.shape == (B, Z)
    assert log_sigma_p.min() >= -10 and log_sigma_p.max() <= 2
    model.eval()
    z = torch.randn(B, Z)
    cond = model.decoder.condition(states) if closed_loop else None
    full = model.decoder.decode(z, cond, horizon=H)
    hidden, steps = model.decoder.initial_hidden(B), []
    for t in range(H):  # how spirl_sac.py executes a skill, one env step at a time
        action, hidden = model.decoder.decode_step(z, model.decoder.condition(states[:, t]) if closed_loop else None, hidden)
        steps.append(action)
    torch.testing.assert_close(torch.stack(steps, 1), full, rtol=1e-5, atol=1e-5)
    if closed_loop:  # closed loop: other observations, other actions for the same z
        other = torch.flip(states, dims=[0])
        assert not torch.allclose(model.decoder.decode(z, model.decoder.condition(other)), full)


def short_args(tmp_path, **overrides):
    values = dict(env="maze", total_steps=200, batch_size=64, eval_interval=10_000, save_interval=10_000,
                  log_interval=100, save_path=str(tmp_path / "skill_model.pt"), num_qualitative=2)
    values.update(overrides)
    return Args(**values)


def test_checkpoint_round_trip_and_resume(tmp_path):
    dataset, spec = synthetic_dataset(num_traj=10, length=20, images=True), make_spec(image=True)
    result = spirl_vae.train(short_args(tmp_path, total_steps=20, run_dir=str(tmp_path / "mine")), dataset, spec,
                             run_dir=str(tmp_path / "runs"))
    assert any(name.startswith("events.out") for name in os.listdir(tmp_path / "mine"))  # --run-dir is the log dir
    checkpoint = torch.load(result["save_path"], map_location="cpu", weights_only=False)
    assert checkpoint["format"] == "spirl-skill-model-v1" and checkpoint["env"] == "maze"
    assert checkpoint["prior_input"] == "image" and checkpoint["image_shape"] == [6, 32, 32]
    assert (checkpoint["state_dim"], checkpoint["action_dim"], checkpoint["skill_horizon"]) == (4, 2, 10)
    assert checkpoint["latent_dim"] == 10 and checkpoint["hidden_dim"] == 128 and checkpoint["prior_layers"] == 6
    assert checkpoint["state_mean"].shape == (4,) and checkpoint["state_std"].dtype == np.float32
    assert checkpoint["step"] == 20 and checkpoint["data_source"] == dataset["source"]
    assert checkpoint["args"]["beta"] is None and not checkpoint["state_conditioned_decoder"]
    model = spirl_vae.build_model(checkpoint)  # strict load
    model.eval()
    batch = random_batch(image=True)
    torch.manual_seed(0)
    a = model(*batch)
    reloaded = SkillModel(4, 2, image_shape=[6, 32, 32])
    reloaded.load_state_dict(checkpoint["model"], strict=True)
    reloaded.eval()
    torch.manual_seed(0)
    for x, y in zip(a, reloaded(*batch)):
        torch.testing.assert_close(x, y)
    assert os.path.exists(tmp_path / "mine" / "decoded_skills.png")
    # --resume continues at the saved step and reaches the new total
    resumed = spirl_vae.train(short_args(tmp_path, total_steps=30, resume=True), dataset, spec, run_dir=str(tmp_path / "runs"))
    assert torch.load(resumed["save_path"], weights_only=False)["step"] == 30
    assert resumed["run_name"] == result["run_name"]


def test_short_training_lowers_validation_losses(tmp_path):
    torch.manual_seed(0)
    dataset, spec = synthetic_dataset(num_traj=60, length=40), make_spec()
    result = spirl_vae.train(short_args(tmp_path, total_steps=600), dataset, spec, run_dir=str(tmp_path / "runs"))
    first, last = result["first_val"], result["last_val"]
    assert last["recon"] < 0.35 * first["recon"], (first, last)
    # At step 0 the posterior is still ~N(0, I), so the prior loss starts near 0 and grows as the embedding
    # takes shape; what a trained prior must show is that it fits the learned posteriors far better than
    # the uninformed N(0, I) prior (the val KL) and than an untrained prior network.
    assert last["prior"] < 0.3 * last["kl"], (first, last)
    checkpoint = torch.load(result["save_path"], weights_only=False)
    model = spirl_vae.build_model(checkpoint)
    data = {"states": torch.from_numpy((dataset["states"] - checkpoint["state_mean"]) / checkpoint["state_std"]),
            "actions": torch.from_numpy(dataset["actions"])}
    starts = np.arange(0, len(dataset["states"]) - 10, 7)
    starts = starts[(starts % 40) <= 30]  # windows inside one trajectory
    trained = spirl_vae.evaluate(model, data, starts, 10)
    model.skill_prior = spirl_vae.SkillPrior(10, state_dim=4)
    untrained = spirl_vae.evaluate(model, data, starts, 10)
    assert trained["prior"] < 0.3 * untrained["prior"], (trained, untrained)


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda d: d.update(actions=d["actions"][:, :1]), "action dim"),
        (lambda d: d.update(states=d["states"][:, :3]), "state dim"),
        (lambda d: d.update(traj_ends=np.arange(1, 17) * 5), "H=10"),  # 16 trajectories of 5 steps
        (lambda d: d["actions"].__setitem__((7, 1), np.nan), "NaN"),
        (lambda d: d.pop("images"), "no 'images'"),
        (lambda d: d.update(images=d["images"][:, :3]), "expected uint8"),
    ],
)
def test_bad_input_gives_clear_error_before_training(tmp_path, corrupt, message):
    dataset = synthetic_dataset(num_traj=4, length=20, images=True)
    corrupt(dataset)
    with pytest.raises(SystemExit) as error:
        spirl_vae.train(short_args(tmp_path, total_steps=5), dataset, make_spec(image=True), run_dir=str(tmp_path / "runs"))
    assert message in str(error.value) and str(error.value).startswith("error:")
    assert "\n" not in str(error.value)
    assert not os.path.exists(tmp_path / "skill_model.pt")


def test_image_closed_loop_trains_and_rebuilds(tmp_path):
    """--closed-loop-input image (the default closed loop of an image prior): the decoder sees each step's frames
    through its own conv encoder; it learns (reconstruction far below the open-loop decoder's, whose z must carry
    the whole window) and the checkpoint rebuilds the same model."""
    dataset = synthetic_dataset(num_traj=60, length=40, images=True)
    spec = make_spec(image=True)
    recon = {}
    for name, flags, steps in (("open", {}, 300), ("image", dict(state_conditioned_decoder=True), 300),
                               ("state", dict(state_conditioned_decoder=True, closed_loop_input="state"), 5)):
        torch.manual_seed(0)
        args = short_args(tmp_path, total_steps=steps, save_path=str(tmp_path / f"{name}.pt"), **flags)
        recon[name] = spirl_vae.train(args, dataset, spec, run_dir=str(tmp_path / "runs"))["last_val"]["recon"]
    assert recon["image"] < 0.1 * recon["open"], recon  # measured: 0.0006 vs 0.087
    checkpoint = torch.load(tmp_path / "image.pt", weights_only=False)
    assert checkpoint["closed_loop_input"] == "image" and checkpoint["image_shape"] == [6, 32, 32]
    model = spirl_vae.build_model(checkpoint)  # strict load
    assert model.decoder.image_encoder is not None and model.decoder.state_dim == 0
    frames = torch.randint(0, 256, (4, 10, 6, 32, 32), dtype=torch.uint8)
    in_training = model.train().decoder.condition(frames)  # no batch norm: RL (eval mode) sees what training saw
    torch.testing.assert_close(model.eval().decoder.condition(frames), in_training)
    with pytest.raises(SystemExit, match="closed_loop_input"):  # resuming with another closed-loop input
        spirl_vae.train(short_args(tmp_path, total_steps=310, save_path=str(tmp_path / "image.pt"), resume=True,
                                   state_conditioned_decoder=True, closed_loop_input="state"),
                        dataset, spec, run_dir=str(tmp_path / "runs"))
    # a skill model from before --closed-loop-input (no key) is a state closed loop
    legacy = torch.load(tmp_path / "state.pt", weights_only=False)
    legacy.pop("closed_loop_input")
    assert spirl_vae.closed_loop_input_of(legacy) == "state" and spirl_vae.build_model(legacy).decoder.image_encoder is None


def test_short_training_on_generated_maze_data(tmp_path):
    """The real pipeline on a tiny generated maze dataset (planner trajectories, image prior input)."""
    maze = pytest.importorskip("envs.maze")
    path = maze.generate_dataset(tmp_path / "maze.hdf5", 8, seed=0, size=10, progress=False)
    dataset = maze.load_dataset(str(path))
    spec = make_spec(image=True)
    args = short_args(tmp_path, total_steps=250, batch_size=32, val_fraction=0.25)
    result = spirl_vae.train(args, dataset, spec, run_dir=str(tmp_path / "runs"))
    first, last = result["first_val"], result["last_val"]
    # 8 small layouts are too few for the image prior to generalise to held-out layouts; the prior's
    # learning is asserted on the synthetic data above, the reconstruction here
    assert last["recon"] < 0.5 * first["recon"], (first, last)
    assert torch.load(result["save_path"], weights_only=False)["data_source"] == dataset["source"]


def test_image_closed_loop_needs_a_camera_and_images(tmp_path):
    """--closed-loop-input image in an env without frames, or with data without images: one-line errors naming the flag."""
    args = short_args(tmp_path, total_steps=5, state_conditioned_decoder=True, closed_loop_input="image", prior_input="state")
    for dataset, spec, message in ((synthetic_dataset(num_traj=4, length=20), make_spec(), "no camera"),
                                   (synthetic_dataset(num_traj=4, length=20), make_spec(image=True), "no 'images'")):
        with pytest.raises(SystemExit) as error:
            spirl_vae.train(args, dataset, spec, run_dir=str(tmp_path / "runs"))
        assert message in str(error.value) and "--closed-loop-input" in str(error.value)
    assert not os.path.exists(tmp_path / "skill_model.pt")
