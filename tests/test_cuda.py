"""spirl_sac.py's --cuda path. Skipped where torch sees no GPU (CI and the 2-core dev box); run on a GPU machine:

    python -m pytest -q tests/test_cuda.py
"""

import copy
import os

import numpy as np
import pytest
import torch

import spirl_sac
from spirl_sac import sac_update
from test_spirl_sac import make_batch, make_nets, maze_env, write_skill_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_update_on_gpu_gives_the_cpu_numbers(monkeypatch):
    """One sac_update on the GPU moves every network as the same update on the CPU does: same batch, same noise
    (drawn on the CPU for both), SGD so the step is the gradient itself; float32 without TF32 on both."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)

    def noise_from_cpu(mu, log_sigma, generator=None):  # the same draws on both devices
        eps = torch.randn(mu.shape, generator=cpu_noise).to(mu.device)
        return spirl_sac.SKILL_RANGE * torch.tanh(mu + log_sigma.exp() * eps)

    monkeypatch.setattr(spirl_sac, "squashed_sample", noise_from_cpu)
    prior, policy, qf1, qf2, qf1_t, qf2_t, log_alpha, _ = make_nets()
    batch = make_batch(prior, batch=16, prior_shift=0.4)
    results = {}
    for device in ("cpu", "cuda"):
        nets = [copy.deepcopy(net).to(device) for net in (policy, qf1, qf2, qf1_t, qf2_t)]
        alpha = log_alpha.detach().clone().to(device).requires_grad_(True)
        sgd = lambda params: torch.optim.SGD(params, lr=0.05)
        cpu_noise = torch.Generator().manual_seed(7)
        info = sac_update({k: v.to(device) for k, v in batch.items()}, *nets, alpha, sgd(nets[0].parameters()),
                          sgd(list(nets[1].parameters()) + list(nets[2].parameters())), sgd([alpha]), 0.9, 0.1, 0.5)
        results[device] = (info, [p.detach().cpu() for net in nets for p in net.parameters()], alpha.detach().cpu())
    (cpu_info, cpu_params, cpu_alpha), (gpu_info, gpu_params, gpu_alpha) = results["cpu"], results["cuda"]
    torch.testing.assert_close(gpu_info["q_target"].cpu(), cpu_info["q_target"], rtol=1e-5, atol=1e-5)
    for key in ("qf_loss", "policy_loss", "alpha_loss", "kl"):
        assert gpu_info[key] == pytest.approx(cpu_info[key], rel=1e-4, abs=1e-5), key
    for gpu, cpu in zip(gpu_params, cpu_params):
        torch.testing.assert_close(gpu, cpu, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gpu_alpha, cpu_alpha)
    assert not torch.equal(cpu_params[0], policy.mlp[0].weight.detach())  # the update did move the policy


def test_cuda_run_on_maze_trains_resumes_and_evaluates(tmp_path, monkeypatch):
    """--cuda: the networks and the replay buffer's batches live on the GPU, the frozen skill decoder stays on the CPU
    (it runs once per env step); the checkpoint loads on a CPU-only machine, and a resumed run goes on."""
    env = maze_env()
    monkeypatch.chdir(tmp_path)
    write_skill_model("skill.pt", "maze", env)  # the image prior (two stacked 32x32 frames): convolutions on the GPU
    common = dict(env="maze", skill_model="skill.pt", learning_starts=20, batch_size=16, eval_interval=0,
                  eval_episodes=1, progress_interval=200, log_interval=5, cuda=True)
    out = spirl_sac.main(spirl_sac.Args(total_env_steps=300, save_path="run/sac.pt", **common))
    assert out["global_step"] == 300 and out["grad_steps"] > 0
    saved = torch.load("run/sac.pt", map_location="cpu", weights_only=False)
    assert all(np.isfinite(t.numpy()).all() for t in saved["qf1"].values())
    out2 = spirl_sac.main(spirl_sac.Args(resume="run/sac.pt", total_env_steps=400, cuda=True))
    assert out2["global_step"] == 400 and out2["grad_steps"] > out["grad_steps"]
    assert np.isfinite(spirl_sac.main(spirl_sac.Args(env="maze", evaluate="run/sac.pt", eval_episodes=1,
                                                     cuda=True))["return"])
    assert np.isfinite(spirl_sac.main(spirl_sac.Args(env="maze", evaluate="run/sac.pt", eval_episodes=1))["return"])


def test_cuda_run_with_closed_loop_skills(tmp_path, monkeypatch):
    """A closed-loop skill model (state-conditioned decoder, state prior) on --cuda: the policy's skill crosses to
    the CPU decoder at every step."""
    env = maze_env()
    monkeypatch.chdir(tmp_path)
    write_skill_model("skill_cl.pt", "maze", env, closed_loop=True, prior_input="state")
    out = spirl_sac.main(spirl_sac.Args(env="maze", skill_model="skill_cl.pt", total_env_steps=200, learning_starts=10,
                                        batch_size=8, eval_interval=100, eval_episodes=1, save_path="cl/sac.pt",
                                        cuda=True))
    assert out["global_step"] == 200 and out["grad_steps"] > 0 and os.path.isfile("cl/sac.pt")
