"""Tests of spirl_sac.py: Algorithm 1's updates on hand-made tensors, the H-step MDP, bad input, a smoke run."""

import copy
import os

import gymnasium as gym
import numpy as np
import pytest
import torch

import spirl_sac
from spirl_sac import (Critic, ReplayBuffer, SetupError, SkillDecoder, SkillPrior, execute_skill, gaussian_kl,
                       make_policy, prior_divergence, sac_update)

LATENT, STATE, ACTION, H = 3, 4, 2, 5


def make_nets(seed=0, latent=LATENT, state=STATE):
    torch.manual_seed(seed)
    prior = SkillPrior(latent, hidden_dim=16, num_layers=3, state_dim=state)
    prior.train()
    for _ in range(5):  # non-trivial batch-norm statistics
        prior(torch.randn(32, state) * 3 + 1)
    prior.eval().requires_grad_(False)
    meta = {"latent_dim": latent, "hidden_dim": 16, "prior_layers": 3, "state_dim": state, "image_shape": None}
    policy = make_policy(prior, meta, prior_init=True)
    qf1, qf2 = Critic(state, latent, 32, 2), Critic(state, latent, 32, 2)
    qf1_target, qf2_target = Critic(state, latent, 32, 2), Critic(state, latent, 32, 2)
    qf1_target.load_state_dict(qf1.state_dict())
    qf2_target.load_state_dict(qf2.state_dict())
    for p in qf1_target.parameters():  # targets different from the critics, so Polyak is visible
        p.data.add_(0.3)
    log_alpha = torch.tensor(0.0, requires_grad=True)
    opts = (torch.optim.Adam(policy.parameters(), lr=3e-4),
            torch.optim.Adam(list(qf1.parameters()) + list(qf2.parameters()), lr=3e-4),
            torch.optim.Adam([log_alpha], lr=3e-4))
    return prior, policy, qf1, qf2, qf1_target, qf2_target, log_alpha, opts


def make_batch(prior, batch=8, seed=1, prior_shift=0.0):
    g = torch.Generator().manual_seed(seed)
    s, s2 = torch.randn(batch, STATE, generator=g), torch.randn(batch, STATE, generator=g)
    with torch.no_grad():
        mu, ls = prior(s)
        mu2, ls2 = prior(s2)
    return {
        "policy_obs": s, "next_policy_obs": s2, "critic_obs": s, "next_critic_obs": s2,
        "skill": torch.rand(batch, LATENT, generator=g) * 4 - 2,
        "reward": torch.arange(batch, dtype=torch.float32),
        "done": torch.tensor([0.0, 1.0] * (batch // 2)),
        "prior_mu": mu + prior_shift, "prior_log_sigma": ls, "next_prior_mu": mu2 + prior_shift, "next_prior_log_sigma": ls2,
    }


def run_update(nets, batch, delta=1.0, gamma=0.9, tau=0.1, kl_reduction="sum"):
    prior, policy, qf1, qf2, qf1_t, qf2_t, log_alpha, (po, qo, ao) = nets
    return sac_update(batch, policy, qf1, qf2, qf1_t, qf2_t, log_alpha, po, qo, ao, gamma, tau, delta, kl_reduction)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_q_target_by_hand(reduction):
    nets = make_nets()
    prior, policy, qf1, qf2, qf1_t, qf2_t, log_alpha, _ = nets
    with torch.no_grad():
        log_alpha.fill_(np.log(0.7))
    batch = make_batch(prior, prior_shift=0.5)  # policy != prior here, so the KL term is non-zero
    gamma = 0.9
    with torch.no_grad():  # expected value, computed before the update changes anything
        mu, ls = policy(batch["next_policy_obs"])
        torch.manual_seed(123)
        eps = torch.randn_like(mu)  # the first random draw of sac_update is z' ~ pi(.|s')
        z_next = 2.0 * torch.tanh(mu + ls.exp() * eps)
        q_min = torch.min(qf1_t(batch["next_critic_obs"], z_next), qf2_t(batch["next_critic_obs"], z_next))
        kl_dims = torch.distributions.kl_divergence(
            torch.distributions.Normal(mu, ls.exp()),
            torch.distributions.Normal(batch["next_prior_mu"], batch["next_prior_log_sigma"].exp()))
        kl = kl_dims.sum(-1) if reduction == "sum" else kl_dims.mean(-1)  # over the latent dims
        expected = batch["reward"] + gamma * (1 - batch["done"]) * (q_min - 0.7 * kl)
    assert kl.min() > 0.01
    torch.manual_seed(123)
    info = run_update(nets, batch, gamma=gamma, kl_reduction=reduction)
    torch.testing.assert_close(info["q_target"], expected)
    # a true terminal does not bootstrap: the target is the reward
    torch.testing.assert_close(info["q_target"][1::2], batch["reward"][1::2])


def test_prior_divergence_is_the_kl_of_the_whole_skill_by_default():
    g = torch.Generator().manual_seed(0)
    mu_q, ls_q, mu_p, ls_p = (0.5 * torch.randn(6, 10, generator=g) for _ in range(4))
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(mu_q, ls_q.exp()),
                                            torch.distributions.Normal(mu_p, ls_p.exp()))
    whole = torch.distributions.kl_divergence(  # KL between the 10-dim skill distributions
        torch.distributions.Independent(torch.distributions.Normal(mu_q, ls_q.exp()), 1),
        torch.distributions.Independent(torch.distributions.Normal(mu_p, ls_p.exp()), 1))
    torch.testing.assert_close(prior_divergence(mu_q, ls_q, mu_p, ls_p), whole)
    torch.testing.assert_close(prior_divergence(mu_q, ls_q, mu_p, ls_p, "mean"), ref.mean(-1))
    assert spirl_sac.Args().kl_reduction == "sum"
    torch.testing.assert_close(gaussian_kl(mu_q, ls_q, mu_p, ls_p), ref)
    far = prior_divergence(mu_q + 1e3, ls_q, mu_p, ls_p)  # a state's KL is clamped at 100
    torch.testing.assert_close(far, torch.full_like(far, spirl_sac.KL_CLAMP))


def plain_reference_update(batch, policy, qf1, qf2, qf1_t, qf2_t, log_alpha, gamma, tau, delta, lr):
    """Alg. 1 lines 9-13 written the plain way, independent of sac_update's code: every network run separately,
    the KL of torch.distributions over the whole skill, gradients by autograd.grad and SGD steps of size lr.
    Returns the expected parameters of every network after the update, and the Q-target."""
    dist = lambda mu, log_sigma: torch.distributions.Independent(torch.distributions.Normal(mu, log_sigma.exp()), 1)
    alpha = log_alpha.exp().detach()
    with torch.no_grad():  # line 9
        mu2, ls2 = policy(batch["next_policy_obs"])
        z2 = 2.0 * torch.tanh(mu2 + ls2.exp() * torch.randn_like(mu2))
        kl2 = torch.distributions.kl_divergence(dist(mu2, ls2), dist(batch["next_prior_mu"], batch["next_prior_log_sigma"]))
        q2 = torch.min(qf1_t(batch["next_critic_obs"], z2), qf2_t(batch["next_critic_obs"], z2))
        q_target = batch["reward"] + gamma * (1 - batch["done"]) * (q2 - alpha * kl2)
    mu, ls = policy(batch["policy_obs"])  # line 10: the policy's gradient comes through the critics' input z
    z = 2.0 * torch.tanh(mu + ls.exp() * torch.randn_like(mu))
    kl = torch.distributions.kl_divergence(dist(mu, ls), dist(batch["prior_mu"], batch["prior_log_sigma"]))
    policy_loss = (alpha * kl - torch.min(qf1(batch["critic_obs"], z), qf2(batch["critic_obs"], z))).mean()
    policy_params = [p for p in policy.parameters() if p.requires_grad]
    grads = torch.autograd.grad(policy_loss, policy_params)
    expected = {"policy": [p.detach() - lr * g for p, g in zip(policy_params, grads)]}
    for name, net in (("qf1", qf1), ("qf2", qf2)):  # line 11: each critic regresses on the target
        q = net(batch["critic_obs"], batch["skill"])
        grads = torch.autograd.grad(0.5 * ((q - q_target) ** 2).mean(), list(net.parameters()))
        expected[name] = [p.detach() - lr * g for p, g in zip(net.parameters(), grads)]
    # line 12 (appendix A's sign): d/d log alpha of alpha * (delta - KL) is alpha * (delta - KL)
    expected["log_alpha"] = log_alpha.detach() - lr * alpha * (delta - kl.detach()).mean()
    for name, target in (("qf1", qf1_t), ("qf2", qf2_t)):  # line 13
        expected[name + "_target"] = [tau * new + (1 - tau) * old.detach()
                                      for new, old in zip(expected[name], target.parameters())]
    return expected, q_target


def test_update_equals_plain_reference_computation():
    """sac_update (fused and frozen-critic tricks included) gives the numbers of a plain computation of the same
    maths: policy, critics, alpha and targets after one step, with SGD so that the step is the gradient itself."""
    nets = make_nets()
    prior, policy, qf1, qf2, qf1_t, qf2_t, log_alpha, _ = nets
    with torch.no_grad():
        log_alpha.fill_(np.log(0.3))
    batch = make_batch(prior, batch=16, prior_shift=0.4)
    gamma, tau, delta, lr = 0.9, 0.1, 0.5, 0.05
    reference_nets = copy.deepcopy((policy, qf1, qf2, qf1_t, qf2_t, log_alpha))
    torch.manual_seed(7)
    expected, q_target = plain_reference_update(batch, *reference_nets, gamma, tau, delta, lr)
    sgd = lambda params: torch.optim.SGD(params, lr=lr)
    torch.manual_seed(7)
    info = sac_update(batch, policy, qf1, qf2, qf1_t, qf2_t, log_alpha, sgd(policy.parameters()),
                      sgd(list(qf1.parameters()) + list(qf2.parameters())), sgd([log_alpha]), gamma, tau, delta)
    torch.testing.assert_close(info["q_target"], q_target)
    got = {"policy": [p for p in policy.parameters() if p.requires_grad], "qf1": list(qf1.parameters()),
           "qf2": list(qf2.parameters()), "qf1_target": list(qf1_t.parameters()), "qf2_target": list(qf2_t.parameters())}
    for name, params in got.items():
        assert len(params) == len(expected[name])
        for p, e in zip(params, expected[name]):
            torch.testing.assert_close(p.detach(), e, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(log_alpha.detach(), expected["log_alpha"])
    assert not torch.equal(expected["policy"][0], reference_nets[0].state_dict()["mlp.0.weight"])  # it did move


def test_alpha_floor_projects_log_alpha_and_lets_it_rise_again():
    """--alpha-min: after its step log alpha is projected onto the floor (so KL < delta cannot push alpha below
    it) and from the floor it rises at once when KL > delta; above the floor the update is the plain one."""
    def update(log_alpha_value, delta, alpha_min):
        nets = make_nets()
        with torch.no_grad():
            nets[6].fill_(log_alpha_value)
        prior, policy, qf1, qf2, qf1_t, qf2_t, log_alpha, _ = nets
        sgd = lambda params: torch.optim.SGD(params, lr=0.1)
        batch = make_batch(prior, prior_shift=0.3)
        torch.manual_seed(5)
        info = sac_update(batch, policy, qf1, qf2, qf1_t, qf2_t, log_alpha, sgd(policy.parameters()),
                          sgd(list(qf1.parameters()) + list(qf2.parameters())), sgd([log_alpha]), 0.9, 0.1, delta,
                          alpha_min=alpha_min)
        return info, log_alpha.item()

    floor = 0.2
    info, after = update(np.log(floor), delta=100.0, alpha_min=floor)  # KL << delta: alpha would shrink
    assert after == pytest.approx(np.log(floor)) and info["alpha"] == pytest.approx(floor)
    assert update(np.log(floor), delta=100.0, alpha_min=None)[1] < np.log(floor)  # without the floor it does
    _, after = update(np.log(floor), delta=0.0, alpha_min=floor)  # KL > delta: alpha rises from the floor
    assert after > np.log(floor)
    above, after_above = update(np.log(0.5), delta=1.0, alpha_min=floor)
    plain, after_plain = update(np.log(0.5), delta=1.0, alpha_min=None)
    assert after_above == pytest.approx(after_plain) != pytest.approx(np.log(0.5))
    torch.testing.assert_close(above["q_target"], plain["q_target"])
    assert above["policy_loss"] == pytest.approx(plain["policy_loss"])


def test_actor_loss_value_and_its_gradient_through_the_critics():
    nets = make_nets()
    prior, policy, qf1, qf2, qf1_t, qf2_t, log_alpha, (po, qo, ao) = nets
    with torch.no_grad():
        log_alpha.fill_(np.log(0.5))
    batch = make_batch(prior, prior_shift=0.3)
    torch.manual_seed(3)
    with torch.no_grad():
        torch.randn(8, LATENT)  # the draw of z' in the Q-target comes first
        mu, ls = policy(batch["policy_obs"])
        z = 2.0 * torch.tanh(mu + ls.exp() * torch.randn_like(mu))
        kl = prior_divergence(mu, ls, batch["prior_mu"], batch["prior_log_sigma"])
        expected = (0.5 * kl - torch.min(qf1(batch["critic_obs"], z), qf2(batch["critic_obs"], z))).mean()
    torch.manual_seed(3)
    info = run_update(nets, batch)
    assert info["policy_loss"] == pytest.approx(expected.item(), rel=1e-5)
    # with alpha ~ 0 the policy still learns: its whole gradient then comes through Q(s, z(pi)), and the
    # critics' own weights are not moved by the actor loss (the critic step alone moves them)
    nets = make_nets()
    prior, policy, qf1, qf2, qf1_t, qf2_t, log_alpha, _ = nets
    with torch.no_grad():
        log_alpha.fill_(-30.0)
    before = copy.deepcopy(policy.state_dict())
    critics_before = copy.deepcopy((qf1.state_dict(), qf2.state_dict()))
    sgd = lambda params, lr: torch.optim.SGD(params, lr=lr)
    sac_update(batch, policy, qf1, qf2, qf1_t, qf2_t, log_alpha, sgd(policy.parameters(), 0.1),
               sgd(list(qf1.parameters()) + list(qf2.parameters()), 0.0), sgd([log_alpha], 0.0), 0.9, 0.1, 1.0)
    assert any(not torch.equal(v, before[k]) for k, v in policy.state_dict().items() if "running" not in k)
    for net, saved in zip((qf1, qf2), critics_before):
        for k, v in net.state_dict().items():
            torch.testing.assert_close(v, saved[k], rtol=0, atol=0)
        assert all(p.requires_grad for p in net.parameters())  # unfrozen again after the actor loss


def test_critic_architecture_and_per_env_defaults():
    """The authors' builder: input layer, n hidden blocks, head; Xavier-normal weights, zero biases; their run
    lengths, n and delta per env; the warm-up counted in skills; the KL summed over latent dims."""
    torch.manual_seed(0)
    critic = Critic(60, 10, 256, 5)
    linears = [m for m in critic.mlp if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(70, 256)] + [(256, 256)] * 5 + [(256, 1)]
    assert all(torch.all(m.bias == 0) for m in linears)
    assert linears[1].weight.std().item() == pytest.approx(np.sqrt(2 / 512), rel=0.05)  # Xavier normal
    expected = {"maze": (2, 3_000_000, 1.0), "kitchen": (5, 1_500_000, 5.0), "block_stacking": (2, 10_000_000, 5.0)}
    for env_name, (blocks, steps, delta) in expected.items():
        args, _ = spirl_sac.resolve_args(spirl_sac.Args(env=env_name))
        assert (args.critic_layers, args.total_env_steps, args.delta) == (blocks, steps, delta)
        assert args.learning_starts == 5000 and args.kl_reduction == "sum"


@pytest.mark.parametrize("shift, delta, direction", [(1.5, 0.1, +1), (0.0, 1.0, -1)])
def test_alpha_update_direction(shift, delta, direction):
    """alpha rises while KL(pi || prior) > delta and falls while KL < delta (appendix A; Alg. 1 line 12's
    printed sign is a typo)."""
    nets = make_nets()
    batch = make_batch(nets[0], prior_shift=shift)
    info = run_update(nets, batch, delta=delta)
    assert (info["kl"] > delta) == (direction > 0)
    assert np.sign(info["alpha"] - 1.0) == direction
    # and it keeps moving that way
    for _ in range(5):
        info2 = run_update(nets, batch, delta=delta)
    assert np.sign(info2["alpha"] - info["alpha"]) == direction


def test_prior_initialised_policy_equals_prior_and_batch_norm_is_frozen():
    nets = make_nets()
    prior, policy = nets[0], nets[1]
    states = torch.randn(16, STATE) * 2
    mu_prior, ls_prior = prior(states)
    mu_pi, ls_pi = policy(states)
    torch.testing.assert_close(mu_pi, mu_prior)
    torch.testing.assert_close(ls_pi, ls_prior)
    assert prior_divergence(mu_pi, ls_pi, mu_prior, ls_prior).abs().max() < 1e-6
    bn_before = {k: v.clone() for k, v in policy.state_dict().items() if "running" in k}
    prior_before = copy.deepcopy(prior.state_dict())
    run_update(nets, make_batch(prior, batch=16))
    for key, value in policy.state_dict().items():
        if "running" in key:
            torch.testing.assert_close(value, bn_before[key])  # BN statistics never updated
    for key, value in prior.state_dict().items():
        torch.testing.assert_close(value, prior_before[key])  # the prior is frozen
    assert not policy.training


def test_targets_move_by_exactly_tau():
    nets = make_nets()
    _, _, qf1, qf2, qf1_t, qf2_t, _, _ = nets
    old_targets = [copy.deepcopy(qf1_t.state_dict()), copy.deepcopy(qf2_t.state_dict())]
    tau = 0.1
    run_update(nets, make_batch(nets[0]), tau=tau)
    for net, target, old in ((qf1, qf1_t, old_targets[0]), (qf2, qf2_t, old_targets[1])):
        for key, value in target.state_dict().items():
            expected = tau * net.state_dict()[key] + (1 - tau) * old[key]
            torch.testing.assert_close(value, expected)
            assert not torch.equal(value, old[key])


class CountingEnv(gym.Env):
    """Reward t at step t (1-based); terminated at terminate_at, truncated at truncate_at."""

    def __init__(self, terminate_at=None, truncate_at=100):
        self.observation_space = gym.spaces.Dict({"state": gym.spaces.Box(-np.inf, np.inf, (STATE,), np.float32)})
        self.action_space = gym.spaces.Box(-1, 1, (ACTION,), np.float32)
        self.terminate_at, self.truncate_at = terminate_at, truncate_at
        self.actions = []

    def reset(self, seed=None, options=None):
        self.t = 0
        return {"state": np.zeros(STATE, np.float32)}, {}

    def step(self, action):
        self.t += 1
        self.actions.append(np.array(action))
        obs = {"state": np.full(STATE, self.t, np.float32)}
        return obs, float(self.t), self.t == self.terminate_at, self.t == self.truncate_at, {"success": self.t}


def rollout_one(env, obs, closed_loop=False):
    torch.manual_seed(0)
    decoder = SkillDecoder(ACTION, LATENT, 16, state_dim=STATE if closed_loop else 0).eval()
    z = np.array([0.5, -1.0, 2.0], np.float32)
    out = execute_skill(env, obs, z, decoder, H, np.zeros(STATE, np.float32), np.full(STATE, 2.0, np.float32),
                        -np.ones(ACTION), np.ones(ACTION), closed_loop)
    return decoder, z, out


@pytest.mark.parametrize("terminate_at, truncate_at, steps, done", [(None, 100, H, 0.0), (3, 100, 3, 1.0), (None, 4, 4, 0.0)])
def test_replay_buffer_stores_h_step_transitions(terminate_at, truncate_at, steps, done):
    env = CountingEnv(terminate_at, truncate_at)
    obs, _ = env.reset()
    _, z, (next_obs, reward, terminated, truncated, info, n, visited) = rollout_one(env, obs)
    assert n == steps and reward == sum(range(1, steps + 1))  # summed rewards of the steps actually taken
    assert next_obs["state"][0] == steps  # the last observation, not a reset one
    assert visited.shape == (steps, STATE)
    rb = ReplayBuffer(10, STATE, LATENT, np.zeros(STATE), np.full(STATE, 2.0))
    zeros = np.zeros(LATENT, np.float32)
    rb.add(state=obs["state"], next_state=next_obs["state"], skill=z, reward=reward, done=float(terminated),
           prior_mu=zeros, prior_log_sigma=zeros, next_prior_mu=zeros, next_prior_log_sigma=zeros)
    batch = rb.sample(4, np.random.default_rng(0))
    assert torch.all(batch["reward"] == sum(range(1, steps + 1)))
    assert torch.all(batch["done"] == done)  # truncation (time limit) is not a terminal: bootstrap through it
    torch.testing.assert_close(batch["next_critic_obs"], torch.full((4, STATE), steps / 2.0))
    torch.testing.assert_close(batch["skill"], torch.as_tensor(z).expand(4, -1))


def test_replay_buffer_images_come_back_as_added_in_channels_last_layout():
    rng = np.random.default_rng(0)
    shape = (6, 8, 8)
    images = rng.integers(0, 256, (5, *shape), dtype=np.uint8)  # (C, H, W) each, as the envs give them
    rb = ReplayBuffer(5, STATE, LATENT, np.zeros(STATE), np.ones(STATE), image_shape=shape)
    zeros = np.zeros(LATENT, np.float32)
    for i, image in enumerate(images):
        rb.add(state=np.full(STATE, i, np.float32), next_state=np.zeros(STATE), skill=zeros, reward=0.0, done=0.0,
               prior_mu=zeros, prior_log_sigma=zeros, next_prior_mu=zeros, next_prior_log_sigma=zeros,
               image=image, next_image=255 - image)
    batch = rb.sample(16, np.random.default_rng(1))
    rows = batch["critic_obs"][:, 0].long().numpy()
    assert batch["policy_obs"].shape == (16, *shape) and batch["policy_obs"].dtype == torch.uint8
    assert batch["policy_obs"].is_contiguous(memory_format=torch.channels_last)  # what the policy's convs run fastest on
    np.testing.assert_array_equal(batch["policy_obs"].numpy(), images[rows])
    np.testing.assert_array_equal(batch["next_policy_obs"].numpy(), 255 - images[rows])
    # a buffer saved with images as (C, H, W) (runs started before the channels-last storage) loads the same
    saved = rb.state_dict()
    saved = {**saved, **{k: np.ascontiguousarray(np.moveaxis(saved[k], -1, 1)) for k in ("image", "next_image")}}
    rb2 = ReplayBuffer(5, STATE, LATENT, np.zeros(STATE), np.ones(STATE), image_shape=shape)
    rb2.load_state_dict(saved)
    for key in rb.data:
        np.testing.assert_array_equal(rb2.data[key], rb.data[key])

def test_execute_skill_open_and_closed_loop_actions():
    env = CountingEnv()
    obs, _ = env.reset()
    decoder, z, _ = rollout_one(env, obs)
    open_loop = decoder.decode(torch.as_tensor(z)[None], horizon=H)[0].detach().numpy()
    np.testing.assert_allclose(np.stack(env.actions), np.clip(open_loop, -1, 1), rtol=1e-5, atol=1e-6)
    env = CountingEnv()
    obs, _ = env.reset()
    decoder, z, _ = rollout_one(env, obs, closed_loop=True)
    hidden, expected = None, []
    for t in range(H):  # decoded from z and the *current* (normalised) state at every step
        state = torch.full((1, STATE), t / 2.0)
        action, hidden = decoder.decode_step(torch.as_tensor(z)[None], state, hidden)
        expected.append(action[0].detach().numpy())
    np.testing.assert_allclose(np.stack(env.actions), np.clip(np.stack(expected), -1, 1), rtol=1e-5, atol=1e-6)


def test_omega_schedule():
    assert spirl_sac.omega_schedule(0, 100, 100) == 1.0
    assert spirl_sac.omega_schedule(99, 100, 100) == 1.0
    assert spirl_sac.omega_schedule(150, 100, 100) == pytest.approx(0.5)
    assert spirl_sac.omega_schedule(10_000, 100, 100) == 0.0


# ----------------------------------------------------------------------------------------------------
# Bad input and an end-to-end smoke run, with a tiny skill model written the way spirl_vae.py writes it.
# ----------------------------------------------------------------------------------------------------


def write_skill_model(path, env_name, env, latent=4, horizon=5, closed_loop=False, prior_input=None,
                      closed_loop_input="state"):
    import spirl_vae

    state_dim = env.observation_space["state"].shape[0]
    action_dim = env.action_space.shape[0]
    prior_input = prior_input or ("image" if "image" in env.observation_space.spaces else "state")
    frames = list(env.observation_space["image"].shape) if "image" in env.observation_space.spaces else None
    image_shape = frames if prior_input == "image" else None
    model = spirl_vae.SkillModel(state_dim, action_dim, latent, hidden_dim=16, prior_layers=3, image_shape=image_shape,
                                 state_conditioned_decoder=closed_loop,
                                 closed_loop_image_shape=frames if closed_loop_input == "image" else None)
    torch.save({
        "format": "spirl-skill-model-v1", "env": env_name, "args": {}, "prior_input": prior_input,
        "state_dim": state_dim, "image_shape": frames if closed_loop_input == "image" else image_shape,
        "action_dim": action_dim, "skill_horizon": horizon, "latent_dim": latent, "hidden_dim": 16, "prior_layers": 3,
        "state_conditioned_decoder": closed_loop, "closed_loop_input": closed_loop_input if closed_loop else None,
        "state_mean": np.zeros(state_dim, np.float32), "state_std": np.ones(state_dim, np.float32) * 5,
        "action_low": env.action_space.low, "action_high": env.action_space.high, "data_source": "test",
        "model": model.state_dict(), "step": 0,
    }, path)


def maze_module():
    import envs

    return envs.env_module("maze")


def maze_env():
    return maze_module().make_env(seed=0)


def test_bad_inputs_give_clear_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SetupError, match=r"`python spirl_vae.py --env maze`"):
        spirl_sac.main(spirl_sac.Args(env="maze"))
    with pytest.raises(SetupError, match=r"python spirl_vae.py --env maze --save-path nowhere.pt"):
        spirl_sac.main(spirl_sac.Args(env="maze", skill_model="nowhere.pt"))
    with pytest.raises(SetupError, match="unknown env 'maze2'"):
        spirl_sac.main(spirl_sac.Args(env="maze2"))
    for delta in (0.0, -1.0):
        with pytest.raises(SetupError, match="target divergence must be > 0"):
            spirl_sac.main(spirl_sac.Args(env="maze", delta=delta))
    with pytest.raises(SetupError, match="--reward-scale must be > 0"):
        spirl_sac.main(spirl_sac.Args(env="maze", reward_scale=0.0))
    with pytest.raises(SetupError, match="--evaluate missing.pt: no such checkpoint"):
        spirl_sac.main(spirl_sac.Args(evaluate="missing.pt"))
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SetupError, match="cannot read skill model"):
        spirl_sac.load_skill_model("garbage.pt", "maze", None)

    env = CountingEnv()
    write_skill_model("kitchen.pt", "kitchen", env)
    with pytest.raises(SetupError, match="trained on env 'kitchen', not 'maze'"):
        spirl_sac.load_skill_model("kitchen.pt", "maze", env)
    write_skill_model("fits.pt", "maze", env)
    decoder, prior, meta = spirl_sac.load_skill_model("fits.pt", "maze", env)  # strict=True load of spirl_vae's keys
    assert not any(p.requires_grad for p in list(decoder.parameters()) + list(prior.parameters()))
    other = CountingEnv()
    other.action_space = gym.spaces.Box(-1, 1, (ACTION + 1,), np.float32)
    with pytest.raises(SetupError, match="action_dim 2, but env maze has 4 / 3"):
        spirl_sac.load_skill_model("fits.pt", "maze", other)


def test_smoke_run_on_maze_then_resume_and_evaluate(tmp_path, monkeypatch):
    env = maze_env()
    monkeypatch.chdir(tmp_path)
    write_skill_model("skill.pt", "maze", env)
    common = dict(env="maze", skill_model="skill.pt", learning_starts=20, batch_size=16, eval_interval=0,
                  eval_episodes=1, progress_interval=200, log_interval=5)
    out = spirl_sac.main(spirl_sac.Args(total_env_steps=300, save_path="run/sac.pt", keep_checkpoints=True,
                                        checkpoint_interval=100, **common))
    assert out["global_step"] == 300 and out["grad_steps"] > 0
    assert os.path.isfile("run/sac.pt") and os.path.isfile("run/sac.pt.replay.npz")
    kept = sorted(f for f in os.listdir("run") if f.startswith("sac_") and f.endswith(".pt"))
    assert kept == ["sac_100.pt", "sac_200.pt", "sac_300.pt"], kept  # every periodic checkpoint and the final one
    early, final = (torch.load(f"run/{f}", weights_only=False) for f in ("sac_100.pt", "sac.pt"))
    assert early["global_step"] == 100 and not torch.equal(early["qf1"]["mlp.0.weight"], final["qf1"]["mlp.0.weight"])
    assert np.isfinite(spirl_sac.main(spirl_sac.Args(env="maze", evaluate="run/sac_100.pt", eval_episodes=1))["return"])
    out2 = spirl_sac.main(spirl_sac.Args(resume="run/sac.pt", total_env_steps=400))
    assert out2["global_step"] == 400 and out2["grad_steps"] > out["grad_steps"]
    assert out2["replay_size"] > out["replay_size"]
    before = {f: os.path.getmtime(f"run/{f}") for f in os.listdir("run")}
    out3 = spirl_sac.main(spirl_sac.Args(resume="run/sac.pt", total_env_steps=500, run_dir="copy"))  # a copy elsewhere
    assert out3["global_step"] == 500 and torch.load("copy/spirl_sac.pt", weights_only=False)["global_step"] == 500
    assert any(f.startswith("events.out.tfevents") for f in os.listdir("copy"))
    assert {f: os.path.getmtime(f"run/{f}") for f in os.listdir("run")} == before  # the original is left alone
    # a checkpoint without its replay buffer: the current policy refills --learning-starts skills before any update
    os.remove("copy/spirl_sac.pt.replay.npz")
    out4 = spirl_sac.main(spirl_sac.Args(resume="copy/spirl_sac.pt", total_env_steps=900, run_dir="refill"))
    assert out4["global_step"] == 900 and out4["replay_size"] > common["learning_starts"]
    assert out4["grad_steps"] - out3["grad_steps"] == out4["replay_size"] - common["learning_starts"] + 1
    # the same refill stopped half way: its checkpoint (with the half-refilled buffer) resumes the refill, not the updates
    out5 = spirl_sac.main(spirl_sac.Args(resume="copy/spirl_sac.pt", total_env_steps=550, run_dir="half"))
    assert out5["grad_steps"] == out3["grad_steps"] and 0 < out5["replay_size"] < common["learning_starts"]
    out6 = spirl_sac.main(spirl_sac.Args(resume="half/spirl_sac.pt", total_env_steps=900, run_dir="rest"))
    assert out6["grad_steps"] - out3["grad_steps"] == out6["replay_size"] - common["learning_starts"] + 1
    result = spirl_sac.main(spirl_sac.Args(env="maze", evaluate="run/sac.pt", eval_episodes=2, capture_video=True))
    assert np.isfinite(result["return"])
    assert result["path"] == "run/sac_evaluate.npz"  # next to the checkpoint, with one GIF per episode
    assert os.path.isfile("run/sac_evaluate_0.gif") and os.path.isfile("run/sac_evaluate_1.gif")
    with np.load(result["path"]) as saved:
        assert saved["episode_0"].shape == (1 + maze_module().EPISODE_LENGTH, 4)
    for sampler in ("prior", "uniform"):  # Fig. 5 mode: skill rollouts without learning
        out = spirl_sac.main(spirl_sac.Args(explore=sampler, total_env_steps=50, **common))
        with np.load(out["path"]) as saved:
            assert saved["states"].shape == (1 + 50, 4) and int(saved["env_steps"]) == 50


def test_closed_loop_skill_model_without_prior_init_runs_on_maze(tmp_path, monkeypatch):
    env = maze_env()
    monkeypatch.chdir(tmp_path)
    write_skill_model("skill_cl.pt", "maze", env, closed_loop=True, prior_input="state")
    out = spirl_sac.main(spirl_sac.Args(env="maze", skill_model="skill_cl.pt", total_env_steps=100, learning_starts=10,
                                        batch_size=8, eval_interval=0, eval_episodes=1, save_path="cl/sac.pt",
                                        prior_init=False, omega_constant_steps=60, omega_anneal_steps=20))
    assert out["global_step"] == 100 and out["grad_steps"] > 0
    saved = torch.load("cl/sac.pt", weights_only=False)
    decoder, prior, meta = spirl_sac.build_skill_model(saved["skill_model"], "maze", env)
    policy = make_policy(prior, meta, prior_init=False)
    policy.load_state_dict(saved["policy"])
    states = torch.randn(5, 4)
    assert prior_divergence(*policy(states), *prior(states)).min() > 0  # a policy of its own, not the prior


def test_kitchen_subtask_order_flag():
    """--no-strict-order reaches the kitchen env (any-order counting); the default is the paper's strict order."""
    pytest.importorskip("envs.kitchen")
    for strict in (True, False):
        env = spirl_sac.make_env(spirl_sac.Args(env="kitchen", strict_order=strict), seed=0)
        assert env.unwrapped.strict_order is strict
        env.close()


@pytest.mark.parametrize("prior_init", [True, False])
def test_main_wiring(tmp_path, monkeypatch, prior_init):
    """What main() passes on: the warm-up counted in skills, gamma / tau / delta / the KL reduction / alpha's floor
    per H-step transition, the policy initialised from the prior, the prior's Gaussian stored for s, skills squashed
    into [-2, 2] in training and evaluation, and --eval-deterministic's mean skill 2 tanh(mu(normalised s))."""
    env = maze_env()
    monkeypatch.chdir(tmp_path)
    write_skill_model("skill.pt", "maze", env, prior_input="state", horizon=5)
    ckpt = torch.load("skill.pt", weights_only=False)
    head = max((k for k in ckpt["model"] if k.startswith("skill_prior.mlp.") and k.endswith(".bias")),
               key=lambda k: int(k.split(".")[2]))
    ckpt["model"][head][:4] = 3.0  # prior mean ~3: a skill that is not squashed would leave [-2, 2]
    torch.save(ckpt, "skill.pt")
    updates, skills = [], []
    real_update, real_execute = spirl_sac.sac_update, spirl_sac.execute_skill

    def recording_update(batch, policy, *rest):
        gamma, tau, delta, kl_reduction, alpha_min = rest[-5:]
        with torch.no_grad():
            mu, log_sigma = policy(batch["policy_obs"])
        updates.append({"gamma": gamma, "tau": tau, "delta": delta, "kl_reduction": kl_reduction, "alpha_min": alpha_min,
                        "skills": len(skills),
                        "policy_is_prior": bool(torch.allclose(mu, batch["prior_mu"], atol=1e-5)
                                                and torch.allclose(log_sigma, batch["prior_log_sigma"], atol=1e-5))})
        return real_update(batch, policy, *rest)

    def recording_execute(env, obs, skill, *rest):
        skills.append((id(env), obs["state"].copy(), np.array(skill)))
        return real_execute(env, obs, skill, *rest)

    monkeypatch.setattr(spirl_sac, "sac_update", recording_update)
    monkeypatch.setattr(spirl_sac, "execute_skill", recording_execute)
    out = spirl_sac.main(spirl_sac.Args(env="maze", skill_model="skill.pt", total_env_steps=150, learning_starts=10,
                                        batch_size=8, gamma=0.8, tau=0.2, delta=0.7, kl_reduction="mean",
                                        eval_interval=0, eval_episodes=1, save_path="run/sac.pt", prior_init=prior_init,
                                        omega_constant_steps=0, omega_anneal_steps=1, eval_deterministic=True,
                                        alpha_min=0.05))
    train_env = skills[0][0]
    train = [z for env_id, _, z in skills if env_id == train_env]
    evaluation = [(state, z) for env_id, state, z in skills if env_id != train_env]
    assert len(train) == 30 and out["global_step"] == 150  # 30 skills of H = 5 env steps
    assert updates[0]["skills"] == 10 and len(updates) == 30 - 10 + 1  # first update once 10 skills are in
    assert all((u["gamma"], u["tau"], u["delta"], u["kl_reduction"], u["alpha_min"]) == (0.8, 0.2, 0.7, "mean", 0.05)
               for u in updates)
    assert updates[0]["policy_is_prior"] == prior_init
    train = np.stack(train)
    assert np.abs(train).max() <= 2.0 and np.abs(train).max() > 1.9  # squashed, and the test can see it
    saved = torch.load("run/sac.pt", weights_only=False)
    decoder, prior, meta = spirl_sac.build_skill_model(saved["skill_model"], "maze", env)
    policy = make_policy(prior, meta, prior_init=False)
    policy.load_state_dict(saved["policy"])
    state, z = evaluation[0]
    with torch.no_grad():
        mu, _ = policy(torch.as_tensor((state - meta["state_mean"]) / meta["state_std"])[None])
    np.testing.assert_allclose(z, 2.0 * np.tanh(mu[0].numpy()), rtol=1e-5, atol=1e-6)
    assert len(evaluation) == maze_module().EPISODE_LENGTH // 5


def test_sparse_reward_flag_reaches_block_stacking_and_only_block_stacking():
    """--sparse-reward builds the block-stacking env with the authors' sparse reward; other envs refuse it."""
    assert spirl_sac.make_env(spirl_sac.Args(env="block_stacking"), seed=0).reward == "dense"
    assert spirl_sac.make_env(spirl_sac.Args(env="block_stacking", sparse_reward=True), seed=0).reward == "sparse"
    with pytest.raises(SetupError, match="only block_stacking has a sparse reward"):
        spirl_sac.resolve_args(spirl_sac.Args(env="maze", sparse_reward=True))


def test_maze_goal_radius_flag():
    """--goal-radius reaches the maze env (2.0: the authors' later value); the default is the paper-time 1.0."""
    for radius, expected in ((None, 1.0), (2.0, 2.0)):
        env = spirl_sac.make_env(spirl_sac.Args(env="maze", goal_radius=radius), seed=0)
        assert env.unwrapped.goal_radius == expected
        env.close()
    with pytest.raises(SetupError, match="only the maze has a goal radius"):
        spirl_sac.resolve_args(spirl_sac.Args(env="kitchen", goal_radius=2.0))


def test_final_line_reports_the_training_episodes_of_the_last_tenth(tmp_path, monkeypatch):
    """main() reports the mean metric of the training episodes that end in the last 10 % of the env steps."""
    env = maze_env()
    monkeypatch.chdir(tmp_path)
    write_skill_model("skill.pt", "maze", env, prior_input="state", horizon=5)
    real_execute, calls = spirl_sac.execute_skill, []

    def short_episodes(env, obs, skill, *rest):  # every 4th skill ends the episode with success = skills so far / 100
        next_obs, reward, terminated, _, info, steps, visited = real_execute(env, obs, skill, *rest)
        calls.append(1)
        truncated = len(calls) % 4 == 0
        return next_obs, reward, terminated, truncated, {**info, "success": len(calls) / 100}, steps, visited

    monkeypatch.setattr(spirl_sac, "execute_skill", short_episodes)
    out = spirl_sac.main(spirl_sac.Args(env="maze", skill_model="skill.pt", total_env_steps=400, learning_starts=10,
                                        batch_size=8, eval_interval=0, eval_episodes=1, save_path="run/sac.pt"))
    # 80 training skills of 5 env steps; episodes end after skills 4, 8, ..., 80, the last 10 % (> 360 env steps)
    # holds the episodes ending at skills 76 and 80 (the evaluation's skills come after and end no training episode)
    assert out["training_success"] == pytest.approx((0.76 + 0.80) / 2)


def test_evaluate_uses_the_saved_runs_goal_radius_and_reward_unless_given(monkeypatch):
    """--evaluate plays the saved run's task: its goal radius (success depends on it) unless --goal-radius is
    given, and its sparse reward; a checkpoint from before these options evaluates at the defaults."""
    saved_args = {"maze": {"goal_radius": 2.0}, "block_stacking": {"sparse_reward": True}, "kitchen": {}}
    monkeypatch.setattr(spirl_sac, "load_sac_checkpoint", lambda path, flag: {"env": path, "args": saved_args[path]})
    resolved = lambda **flags: spirl_sac.resolve_args(spirl_sac.Args(**flags))[0]
    assert resolved(evaluate="maze").goal_radius == 2.0
    assert resolved(evaluate="maze", goal_radius=1.0).goal_radius == 1.0
    assert resolved(evaluate="block_stacking").sparse_reward
    old = resolved(evaluate="kitchen")
    assert old.goal_radius is None and not old.sparse_reward


def test_evaluation_samples_skills_reproducibly_by_default(tmp_path, monkeypatch):
    """Evaluation samples z ~ pi(z|s) (as the authors' agent does), from its own stream: the same skills for the
    same checkpoint and seed, and not the mean skill; --eval-deterministic gives the mean skill."""
    env = maze_env()
    monkeypatch.chdir(tmp_path)
    write_skill_model("skill.pt", "maze", env, prior_input="state", horizon=5)
    spirl_sac.main(spirl_sac.Args(env="maze", skill_model="skill.pt", total_env_steps=100, learning_starts=10,
                                  batch_size=8, eval_interval=0, eval_episodes=1, save_path="run/sac.pt"))
    real_execute = spirl_sac.execute_skill

    def skills_of(**flags):
        skills = []

        def recording(env, obs, skill, *rest):
            skills.append((obs["state"].copy(), np.array(skill)))
            return real_execute(env, obs, skill, *rest)

        monkeypatch.setattr(spirl_sac, "execute_skill", recording)
        spirl_sac.main(spirl_sac.Args(env="maze", evaluate="run/sac.pt", eval_episodes=1, **flags))
        return skills[:20]

    sampled, again, mean = skills_of(), skills_of(), skills_of(eval_deterministic=True)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(sampled, again))  # reproducible
    saved = torch.load("run/sac.pt", weights_only=False)
    _, prior, meta = spirl_sac.build_skill_model(saved["skill_model"], "maze", env)
    policy = make_policy(prior, meta, prior_init=False)
    policy.load_state_dict(saved["policy"])
    for samples, is_mean in ((sampled, False), (mean, True)):
        state, z = samples[0]
        with torch.no_grad():
            mu, _ = policy(torch.as_tensor((state - meta["state_mean"]) / meta["state_std"])[None])
        assert np.allclose(z, 2.0 * np.tanh(mu[0].numpy()), atol=1e-5) == is_mean
        assert np.abs(np.stack([s[1] for s in samples])).max() <= 2.0


def test_block_stacking_logs_the_reward_flags_per_episode(tmp_path, monkeypatch):
    """Block stacking: each episode's end logs how many blocks hold the reward's lift / delivery flags, as the env's
    info reports them (tensorboard charts/blocks_lifted, charts/blocks_delivered)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from envs import block_stacking

    monkeypatch.chdir(tmp_path)
    env = block_stacking.make_env(seed=0)
    write_skill_model("skill.pt", "block_stacking", env, prior_input="state", horizon=10)
    ended = []
    real_execute = spirl_sac.execute_skill

    def recording_execute(*a, **k):
        out = real_execute(*a, **k)
        info = out[4]  # (obs, reward, terminated, truncated, info, n_steps, states)
        ended.append((info["blocks_lifted"], info["blocks_delivered"]))
        return out

    monkeypatch.setattr(spirl_sac, "execute_skill", recording_execute)
    spirl_sac.main(spirl_sac.Args(env="block_stacking", skill_model="skill.pt", total_env_steps=1000, learning_starts=1000,
                                  eval_interval=0, eval_episodes=1, save_path="run/sac.pt", run_dir="run",
                                  save_replay_buffer=False))
    scalars = EventAccumulator("run").Reload()
    lifted, delivered = (scalars.Scalars(f"charts/{key}") for key in ("blocks_lifted", "blocks_delivered"))
    assert [e.step for e in lifted] == [e.step for e in delivered] == [1000]  # one training episode, logged at its end
    assert (lifted[0].value, delivered[0].value) == ended[99]  # the episode's last skill's info (100 skills of H = 10)


def test_image_closed_loop_decodes_from_the_current_frames_on_maze(tmp_path, monkeypatch):
    """A skill model trained with --closed-loop-input image (state prior here, so only the decoder sees frames):
    execute_skill feeds the current frames through the decoder's conv encoder at every step, and a short run
    trains on it; an env without frames is refused with a clear error."""
    env = maze_env()
    monkeypatch.chdir(tmp_path)
    write_skill_model("skill_icl.pt", "maze", env, closed_loop=True, prior_input="state", closed_loop_input="image")
    decoder, prior, meta = spirl_sac.load_skill_model("skill_icl.pt", "maze", env)
    assert decoder.image_encoder is not None and meta["image_shape"] is None  # the prior sees the state
    obs, _ = env.reset(seed=0)
    z = np.array([1.5, -1.0, 0.5, 2.0], np.float32)
    seen, taken = [obs["image"]], []

    class Recording:  # the env, recording each action and the frames after it
        def step(self, action):
            taken.append(np.array(action))
            out = env.step(action)
            seen.append(out[0]["image"])
            return out
    execute_skill(Recording(), obs, z, decoder, 5, np.zeros(4, np.float32), np.ones(4, np.float32),
                  env.action_space.low, env.action_space.high, True)
    hidden = None
    for t in range(5):  # the action of step t is decoded from z and the frames before it
        with torch.no_grad():
            action, hidden = decoder.decode_step(torch.as_tensor(z)[None], decoder.condition(torch.as_tensor(seen[t])[None]), hidden)
        np.testing.assert_allclose(taken[t], np.clip(action[0].numpy(), env.action_space.low, env.action_space.high),
                                   rtol=1e-5, atol=1e-6)
    assert not np.array_equal(seen[0], seen[-1])  # the frames did change along the skill
    out = spirl_sac.main(spirl_sac.Args(env="maze", skill_model="skill_icl.pt", total_env_steps=60, learning_starts=5,
                                        batch_size=4, eval_interval=0, eval_episodes=1, save_path="icl/sac.pt"))
    assert out["global_step"] == 60 and out["grad_steps"] > 0
    state_only = maze_module().make_env(seed=0, images=False)
    with pytest.raises(SetupError, match="image closed-loop decoder"):
        spirl_sac.load_skill_model("skill_icl.pt", "maze", state_only)


def test_critic_reward_flags_reach_the_critics_with_each_transition(tmp_path, monkeypatch):
    """--critic-reward-flags: every stored transition carries the env's reward flags at s_t and s_{t+H}
    (info["reward_flags"] after the reset and after each skill), the critics' input is [state, flags], a resumed run
    reads them back from its replay file, and an env without the flags is refused by name."""
    from envs import block_stacking

    monkeypatch.chdir(tmp_path)
    env = block_stacking.make_env(seed=0)
    write_skill_model("skill.pt", "block_stacking", env, prior_input="state", horizon=10)
    real_execute, skill_flags = spirl_sac.execute_skill, []

    def flag_a_block_at_the_fifth_skill(env, *rest):
        if len(skill_flags) == 4:
            env.unwrapped._lifted_flags[3] = True  # as if block 3 had been lifted: the flag sticks from here on
        out = real_execute(env, *rest)
        skill_flags.append(out[4]["reward_flags"].copy())  # (obs, reward, terminated, truncated, info, ...)
        return out

    monkeypatch.setattr(spirl_sac, "execute_skill", flag_a_block_at_the_fifth_skill)
    args = dict(env="block_stacking", skill_model="skill.pt", learning_starts=10, batch_size=8, eval_interval=0,
                eval_episodes=1, save_path="run/spirl_sac.pt", run_dir="run", critic_reward_flags=True)
    spirl_sac.main(spirl_sac.Args(total_env_steps=200, **args))
    replay = np.load("run/spirl_sac.pt.replay.npz")
    flags, next_flags = replay["flags"], replay["next_flags"]  # (20, 22): 20 skills of H = 10, 11 blocks
    assert flags.shape == next_flags.shape == (20, 2 * env.num_blocks)
    np.testing.assert_array_equal(next_flags, np.array(skill_flags[:20]))
    np.testing.assert_array_equal(flags[1:], next_flags[:-1])  # one episode: s_{t+H} of a skill is s_t of the next
    assert not flags[:5].any() and flags[5:, 3].all() and flags.sum() == 15  # after the reset, then block 3 from skill 5
    ckpt = torch.load("run/spirl_sac.pt", map_location="cpu", weights_only=False)
    state_dim = env.observation_space["state"].shape[0]
    assert ckpt["qf1"]["mlp.0.weight"].shape[1] == state_dim + 2 * env.num_blocks + ckpt["skill_model"]["latent_dim"]
    out = spirl_sac.main(spirl_sac.Args(resume="run/spirl_sac.pt", total_env_steps=300))  # reads the flags back
    assert out["global_step"] == 300 and np.load("run/spirl_sac.pt.replay.npz")["flags"].shape == (30, 2 * env.num_blocks)
    q_bias = import_benchmark("q_bias")  # its critics rebuilt with the flags' width, fed the flags of the episode / the replay
    assert len(q_bias.episode_rows("run/spirl_sac.pt", 1, 10_001)["episodes"]) == 1
    assert q_bias.replay_surface("run/spirl_sac.pt", 8, 30)["states"] == 8
    write_skill_model("maze.pt", "maze", maze_env())
    with pytest.raises(SetupError, match=r"--critic-reward-flags: env maze reports no info\['reward_flags'\]"):
        spirl_sac.main(spirl_sac.Args(env="maze", skill_model="maze.pt", critic_reward_flags=True, total_env_steps=20))


@pytest.mark.parametrize("bootstrap, reward_scale", [(True, 1.0), (False, 0.01)])
def test_time_limit_transitions_bootstrap_unless_told_not_to(tmp_path, monkeypatch, bootstrap, reward_scale):
    """A skill that ends in a time-limit truncation is stored with done = 0 (the target bootstraps through it) by
    default, and with done = 1 under --no-bootstrap-at-time-limit (the authors' choice); every other skill has 0.
    The stored reward is the skill's summed reward times --reward-scale."""
    env = maze_env()
    monkeypatch.chdir(tmp_path)
    write_skill_model("skill.pt", "maze", env, prior_input="state", horizon=5)
    real_execute, real_add = spirl_sac.execute_skill, spirl_sac.ReplayBuffer.add
    truncated_flags, stored_done, rewards, stored_rewards = [], [], [], []

    def truncate_every_fourth(env, obs, skill, *rest):
        next_obs, reward, terminated, truncated, info, n, states = real_execute(env, obs, skill, *rest)
        truncated = len(truncated_flags) % 4 == 3
        truncated_flags.append(truncated)
        rewards.append(float(len(rewards) + 1))  # a reward of its own per skill (the maze pays none here)
        return next_obs, rewards[-1], terminated, truncated, info, n, states

    def recording_add(self, **transition):
        stored_done.append(transition["done"])
        stored_rewards.append(transition["reward"])
        return real_add(self, **transition)

    monkeypatch.setattr(spirl_sac, "execute_skill", truncate_every_fourth)
    monkeypatch.setattr(spirl_sac.ReplayBuffer, "add", recording_add)
    out = spirl_sac.main(spirl_sac.Args(env="maze", skill_model="skill.pt", total_env_steps=60, learning_starts=4,
                                        batch_size=4, eval_interval=0, eval_episodes=1, save_path="run/sac.pt",
                                        bootstrap_at_time_limit=bootstrap, reward_scale=reward_scale,
                                        save_replay_buffer=False))
    assert out["global_step"] == 60
    train_flags = truncated_flags[:len(stored_done)]  # the final evaluation's skills come after training's
    assert len(stored_done) == 12 and sum(train_flags) == 3
    assert stored_done == [float(t and not bootstrap) for t in train_flags]
    np.testing.assert_allclose(stored_rewards, [reward_scale * r for r in rewards[:12]])


def import_benchmark(name):
    """benchmarks/<name>.py as a module (benchmarks/ is not a package)."""
    import importlib
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
    return importlib.import_module(name)


def short_maze_run(tmp_path, monkeypatch, total_env_steps=100, **flags):
    """A short SPiRL run on the maze with a tiny skill model, in tmp_path; checkpoint run/sac.pt unless flags say."""
    env = maze_env()
    monkeypatch.chdir(tmp_path)
    write_skill_model("skill.pt", "maze", env)
    return spirl_sac.main(spirl_sac.Args(env="maze", skill_model="skill.pt", total_env_steps=total_env_steps,
                                         learning_starts=10, batch_size=8, eval_interval=0, eval_episodes=1,
                                         **{"save_path": "run/sac.pt", **flags}))


def test_q_bias_realised_returns_unroll_the_q_target(tmp_path, monkeypatch):
    """benchmarks/q_bias.py: G_t = r_t + gamma (G_{t+1} - alpha KL_{t+1}), G_{T-1} = r_{T-1} + gamma tail (by hand);
    on a maze checkpoint the tail is the critics' soft value at the last state only if the run bootstrapped there."""
    q_bias = import_benchmark("q_bias")

    np.testing.assert_allclose(q_bias.realised_returns([1.0, 2.0, 3.0], [0.5, 1.0, 2.0], alpha=2.0, gamma=0.9, tail=10.0),
                               [1 + 0.9 * (9.2 - 2 * 1.0), 2 + 0.9 * (12 - 2 * 2.0), 3 + 0.9 * 10])
    short_maze_run(tmp_path, monkeypatch, save_replay_buffer=False)
    ckpt = torch.load("run/sac.pt", weights_only=False)
    ckpt["args"]["bootstrap_at_time_limit"] = False
    torch.save(ckpt, "run/no_bootstrap.pt")
    with_tail, without = (q_bias.episode_rows(path, episodes=1, seed=0) for path in ("run/sac.pt", "run/no_bootstrap.pt"))
    row, row_without = with_tail["episodes"][0], without["episodes"][0]
    assert row["skills"] == maze_module().EPISODE_LENGTH // 5 and row["bootstrapped_tail"] and row["tail"] != 0.0
    assert not row_without["bootstrapped_tail"] and row_without["tail"] == 0.0
    assert row["own_first"] == row_without["G_first"] == row_without["own_first"]  # same episode, same samples
    assert row["G_first"] == pytest.approx(row["own_first"] + 0.99 ** row["skills"] * row["tail"], rel=1e-6, abs=1e-6)


def test_critic_layer_norm_bounds_q_far_from_the_data_and_travels_with_the_checkpoint(tmp_path, monkeypatch):
    """--critic-layer-norm: a LayerNorm between each hidden Linear and its activation. With zero biases the plain
    leaky-ReLU critic is positively homogeneous (input x 1000 -> Q x 1000: it extrapolates without bound); the
    normalised one keeps |Q| <= the head's |w|_1 * max|feature| + |b| for any input. The flag is stored with the
    run, so resuming and q_bias.load rebuild the same critics (old checkpoints load as before)."""
    torch.manual_seed(0)
    plain, normed = Critic(60, 10, 64, 2), Critic(60, 10, 64, 2, layer_norm=True)
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in plain.mlp)
    assert [type(m).__name__ for m in normed.mlp[:3]] == ["Linear", "LayerNorm", "LeakyReLU"]
    assert list(plain.state_dict())[:4] == ["mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias"]
    state, skill = torch.randn(32, 60), torch.randn(32, 10)
    with torch.no_grad():
        torch.testing.assert_close(plain(1000 * state, 1000 * skill), 1000 * plain(state, skill), rtol=1e-4, atol=1e-3)
        features = normed.mlp[:-1](torch.cat([1000 * state, 1000 * skill], -1))  # (B, 64)
        head = normed.mlp[-1]
        bound = head.weight.abs().sum() * features.abs().max() + head.bias.abs()
        assert features.abs().max() < 64 ** 0.5 and normed(1000 * state, 1000 * skill).abs().max() <= bound
    short_maze_run(tmp_path, monkeypatch, critic_layer_norm=True)
    ckpt = torch.load("run/sac.pt", weights_only=False)
    assert ckpt["args"]["critic_layer_norm"] and "mlp.1.weight" in ckpt["qf1"]  # the LayerNorm's gain
    out = spirl_sac.main(spirl_sac.Args(resume="run/sac.pt", total_env_steps=150))
    assert out["global_step"] == 150
    q_bias = import_benchmark("q_bias")
    assert isinstance(q_bias.load("run/sac.pt")[6][0].mlp[1], torch.nn.LayerNorm)


def test_q_bias_replay_surface_reads_the_skills_stored_before_the_checkpoint(tmp_path, monkeypatch):
    """q_bias.py --replay-states: Q at the stored skills equals min(Q1, Q2) of the checkpoint's critics recomputed
    by hand on the same replay rows, which all lie before the checkpoint's step; a missing replay is a clear error."""
    q_bias = import_benchmark("q_bias")

    short_maze_run(tmp_path, monkeypatch, total_env_steps=200, save_path="run/spirl_sac.pt")
    surface = q_bias.replay_surface("run/spirl_sac.pt", n_states=30, window=35, seed=3)
    assert surface["states"] == 30 and surface["global_step"] == 200
    ckpt, _, _, _, _, _, critics, meta = q_bias.load("run/spirl_sac.pt")
    replay = np.load("run/spirl_sac.pt.replay.npz")
    end = int(ckpt["skills_collected"])
    rows = np.random.default_rng(3).choice(np.arange(end - 35, end), 30, replace=False)
    states = torch.as_tensor((replay["state"][rows] - np.float32(meta["state_mean"])) / np.float32(meta["state_std"]))
    with torch.no_grad():
        by_hand = torch.min(*(c(states, torch.as_tensor(replay["skill"][rows])) for c in critics)).mean()
    assert surface["q_stored"] == pytest.approx(float(by_hand), rel=1e-5, abs=1e-6)
    assert surface["reward_per_skill"] == pytest.approx(float(replay["reward"][rows].mean()))
    assert np.isfinite([surface[k] for k in ("q_own", "q_prior", "kl_mean", "dq_dz")]).all()
    os.remove("run/spirl_sac.pt.replay.npz")
    with pytest.raises(SystemExit, match="replay buffer next to the checkpoint"):
        q_bias.replay_surface("run/spirl_sac.pt", n_states=30, window=35)


def test_each_training_episode_logs_the_kl_on_the_states_where_the_policy_acted(tmp_path, monkeypatch):
    """charts/kl_sum_on_own_states: at each training episode's end, the mean KL(pi || p_a) over the skills the policy
    sampled in it (the prior's warm-up skills excluded); the updates' KL on replay batches mixes in old states."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    env = maze_env()
    monkeypatch.chdir(tmp_path)
    write_skill_model("skill.pt", "maze", env, prior_input="state", horizon=5)
    real_execute, real_divergence = spirl_sac.execute_skill, spirl_sac.prior_divergence
    skills, acting_kls = [], []

    def truncate_every_fourth(env, obs, skill, *rest):
        next_obs, reward, terminated, _, info, n, states = real_execute(env, obs, skill, *rest)
        skills.append(len(skills))
        return next_obs, reward, terminated, len(skills) % 4 == 0, info, n, states

    def recording_divergence(*a, **k):
        kl = real_divergence(*a, **k)
        if kl.shape == (1,):  # where a skill is sampled; the updates pass batches of 4
            acting_kls.append(float(kl))
        return kl

    monkeypatch.setattr(spirl_sac, "execute_skill", truncate_every_fourth)
    monkeypatch.setattr(spirl_sac, "prior_divergence", recording_divergence)
    spirl_sac.main(spirl_sac.Args(env="maze", skill_model="skill.pt", total_env_steps=60, learning_starts=4,
                                  batch_size=4, eval_interval=0, eval_episodes=1, save_path="run/sac.pt", run_dir="run",
                                  save_replay_buffer=False))
    logged = EventAccumulator("run").Reload().Scalars("charts/kl_sum_on_own_states")
    assert len(acting_kls) == 8  # 12 skills: the first episode's 4 are the warm-up's, from the prior
    assert [e.step for e in logged] == [40, 60]  # the second and third episodes' ends
    np.testing.assert_allclose([e.value for e in logged], [np.mean(acting_kls[:4]), np.mean(acting_kls[4:])], rtol=1e-6)
    assert min(acting_kls) >= 0 and max(acting_kls) > 0


def test_critic_probe_branches_candidate_skills_and_ranks_the_top_q_group_first(tmp_path, monkeypatch):
    """benchmarks/block_stacking.py --critic-probe on a short block-stacking run (probing every 50 steps here: the tiny
    policy never builds a tower): per probed state the three candidate groups with their critics' Q and realised
    returns; the prior's top-Q candidates are the best-valued of the 256 samples the plain prior group is drawn from."""
    import importlib.util

    from envs import block_stacking

    monkeypatch.chdir(tmp_path)
    env = block_stacking.make_env(seed=0)
    write_skill_model("skill.pt", "block_stacking", env, prior_input="state", horizon=10)
    for critic_reward_flags in (False, True):
        spirl_sac.main(spirl_sac.Args(env="block_stacking", skill_model="skill.pt", total_env_steps=100,
                                      learning_starts=5, batch_size=4, eval_interval=0, eval_episodes=1,
                                      save_path="run/spirl_sac.pt", run_dir="run", critic_reward_flags=critic_reward_flags))
        path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "block_stacking.py")
        spec = importlib.util.spec_from_file_location("block_stacking_benchmark", path)
        benchmark = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(benchmark)
        rows = benchmark.critic_probe("run/spirl_sac.pt", 1, min_stacked=0, idle_steps=0, candidates=2, follow_skills=1)
        assert [r["step"] for r in rows] == list(range(0, 851, 50))
        for row in rows:
            assert row["prior, top Q"]["q"] >= row["prior"]["q"] - 1e-3
            for group in ("policy", "prior, top Q", "prior"):
                assert np.isfinite(row[group]["realised"]) and 0.0 <= row[group]["new_lift"] <= 1.0


def test_update_benchmark_replays_every_matmul_of_the_update():
    """benchmarks/spirl_sac_update.py's references: the replay of a kitchen and of a maze update (with its image
    encoder's convolutions) does exactly the update's FLOPs, reuses storage where the update did (far fewer buffers
    than operands), and the plain critic step trains its critic (the regression loss falls)."""
    spirl_sac_update = import_benchmark("spirl_sac_update")
    for config in ("maze", "kitchen"):
        update = spirl_sac_update.build(spirl_sac, config, 8)
        update()
        replay = spirl_sac_update.matmul_replay(update)
        assert spirl_sac_update.count_flops(replay) == spirl_sac_update.count_flops(update)
    recorder = spirl_sac_update.RecordMatmuls()
    with recorder:
        update()
    pointers = {operand[3] for _, operands, _ in recorder.calls for operand in operands if isinstance(operand, tuple)}
    operands = sum(isinstance(operand, tuple) for _, operands, _ in recorder.calls for operand in operands)
    assert len(recorder.calls) > 50 and len(pointers) < operands / 2

    step = spirl_sac_update.plain_critic_step(spirl_sac, "kitchen", 8)
    free = {name: cell.cell_contents for name, cell in zip(step.__code__.co_freevars, step.__closure__)}
    def loss():
        return float(0.5 * ((free["critic"](free["state"], free["skill"]) - free["target"]) ** 2).mean().detach())
    before = loss()
    for _ in range(50):
        step()
    assert loss() < 0.5 * before


def test_update_benchmark_plot_draws_the_ratios_of_earlier_runs(tmp_path):
    """benchmarks/spirl_sac_update.py --plot: measures nothing, draws the kitchen ratios of the JSONs it is given
    (one without references, one with) into a PNG."""
    import json
    spirl_sac_update = import_benchmark("spirl_sac_update")
    plain = {"configs": {"kitchen": {"current": {"ratio_to_floor": 1.6}}}}
    with_references = {"configs": {"kitchen": {"current": {"ratio_to_floor": 1.62},
                                               "plain critic step": {"ratio_to_own_floor": 1.57},
                                               "GEMMs replayed": {"ratio_to_own_floor": 1.23}}}}
    paths = []
    for name, data in (("a.json", plain), ("b.json", with_references)):
        paths.append(str(tmp_path / name))
        with open(paths[-1], "w") as f:
            json.dump(data, f)
    out = tmp_path / "history.png"
    assert spirl_sac_update.main(spirl_sac_update.Args(plot=tuple(paths), plot_out=str(out))) is None
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
