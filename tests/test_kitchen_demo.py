"""The scripted kitchen demonstrator (envs/kitchen_demo.py): its skills complete their subtasks in the env,
and the dataset it writes has D4RL's kitchen layout."""

import subprocess
import sys
from pathlib import Path

import h5py
import mujoco
import numpy as np
import pytest

from envs import kitchen
from envs.kitchen_demo import (DOWN, DOWNSTREAM_TASKS, SUBTASKS, ScriptedKitchenController, generate_dataset, run_episode,
                               sample_sequence, subtask_done)

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("task", SUBTASKS)
def test_each_skill_completes_its_subtask(task):
    """From the reset pose, the skill completes its subtask at the dataset's noise level; the env rewards it
    exactly once and D4RL's distance rule agrees on the final state."""
    for seed in (0, 1):
        env = kitchen.make_env(seed=seed, tasks=(task,), strict_order=False, max_episode_steps=kitchen.EPISODE_LENGTH)
        obs, _ = env.reset()
        assert not subtask_done(env.data.qpos, task)
        controller = ScriptedKitchenController(env.model, env.data, np.random.default_rng(seed))
        controller.observe(obs["state"])
        rewards, done_steps = [], []
        for t, action in enumerate(controller.skill(task)):
            assert action.shape == (9,) and np.all(np.abs(action) <= 1.0)
            obs, reward, terminated, truncated, info = env.step(action)
            controller.observe(obs["state"])
            rewards.append(reward)
            if reward:
                done_steps.append(t)
        assert sum(rewards) == 1.0, f"{task}, seed {seed}: rewards {sum(rewards)}"
        assert info["completed_tasks"] == [task]
        assert subtask_done(env.data.qpos, task) or task == "kettle"  # the kettle may be set down off the goal
        assert done_steps[0] < 100
        env.close()


def test_gravity_compensation_holds_the_arm():
    """A zero joint increment plus the qfrc_bias/kp term keeps the end effector in place; the raw zero action
    lets it sag (the env's position actuators have no gravity compensation)."""
    drift = {}
    for compensate in (True, False):
        env = kitchen.make_env(seed=0, noise_ratio=0.0)
        obs, _ = env.reset()
        controller = ScriptedKitchenController(env.model, env.data, np.random.default_rng(0), noise=0.0)
        start = controller.ee_pos()
        for _ in range(20):
            controller.observe(obs["state"])
            action = controller.joint_action(np.zeros(7), 1.0) if compensate else np.zeros(9)
            obs, *_ = env.step(action)
        drift[compensate] = np.linalg.norm(controller.ee_pos() - start)
        env.close()
    assert drift[True] < 0.01 < 0.05 < drift[False], drift


def test_solve_ik_reaches_a_pregrasp_pose():
    """The kinematics-only IK finds joints within limits that put the end effector on the kettle's pre-grasp
    pose (tool down), a pose 2.5 rad of wrist rotation away from the home posture."""
    env = kitchen.make_env(seed=0)
    env.reset()
    controller = ScriptedKitchenController(env.model, env.data, np.random.default_rng(0))
    target = controller.site("kettle_site") + [0.0, 0.0, 0.1]
    q = controller.solve_ik(target, DOWN)
    scratch = controller.scratch
    scratch.qpos[:7] = q
    mujoco.mj_kinematics(env.model, scratch)
    assert np.linalg.norm(scratch.site_xpos[controller.ee] - target) < 0.002
    assert np.allclose(scratch.site_xmat[controller.ee].reshape(3, 3), DOWN, atol=0.01)
    assert np.all(q >= env.model.jnt_range[:7, 0]) and np.all(q <= env.model.jnt_range[:7, 1])
    env.close()


def test_sequences_exclude_the_downstream_order():
    rng = np.random.default_rng(0)
    sequences = [sample_sequence(rng) for _ in range(3000)]
    assert all(len(set(s)) == 4 and set(s) <= set(SUBTASKS) for s in sequences)
    assert tuple(DOWNSTREAM_TASKS) not in sequences
    assert all(s[-1] == "hinge cabinet" for s in sequences if "hinge cabinet" in s)
    assert len(set(sequences)) > 300  # diverse orders


def test_run_episode_records_d4rl_observations():
    tasks = ("light switch", "slide cabinet", "bottom burner", "microwave")
    episode = run_episode(tasks, seed=3)
    obs, actions = episode["observations"], episode["actions"]
    assert obs.shape == (len(actions), 60) and obs.dtype == np.float32
    assert np.allclose(obs[:, 30:], kitchen.goal_vector(DOWNSTREAM_TASKS))  # kitchen-mixed's goal dims
    assert episode["terminated"] and sorted(episode["completed"]) == sorted(tasks)
    assert episode["rewards"].sum() == 4.0 and len(actions) <= kitchen.EPISODE_LENGTH


def test_generate_dataset_round_trip(tmp_path):
    path = tmp_path / "kitchen_demo.hdf5"
    generate_dataset(str(path), num_sequences=3, seed=1)
    assert not (tmp_path / "kitchen_demo.hdf5.tmp").exists()
    with h5py.File(path, "r") as f:
        obs, actions = f["observations"][()], f["actions"][()]
        rewards, terminals, timeouts = f["rewards"][()], f["terminals"][()], f["timeouts"][()]
        sequences = [s.decode() if isinstance(s, bytes) else s for s in f.attrs["sequences"]]
    n = len(actions)
    assert obs.shape == (n, 60) and actions.shape == (n, 9) and rewards.shape == terminals.shape == timeouts.shape == (n,)
    assert obs.dtype == np.float32 and actions.dtype == np.float32
    assert np.isfinite(obs).all() and np.isfinite(actions).all() and np.abs(actions).max() <= 1.0
    ends = np.flatnonzero(terminals | timeouts) + 1
    assert len(ends) == 3 and ends[-1] == n and not (terminals & timeouts).any()
    assert np.diff(np.concatenate([[0], ends])).max() <= kitchen.EPISODE_LENGTH
    assert all(tuple(s.split(",")) != tuple(DOWNSTREAM_TASKS) for s in sequences) and len(sequences) == 3
    # Each episode's rewards count its completed subtasks, 4 exactly where it terminated.
    for start, end in zip(np.concatenate([[0], ends[:-1]]), ends):
        assert rewards[start:end].sum() <= 4 and (rewards[start:end].sum() == 4) == terminals[end - 1]
    # Consecutive observations within an episode are one control step apart (no episode is spliced).
    assert np.abs(np.diff(obs[: ends[0], :7], axis=0)).max() < 0.3
    data = kitchen.read_dataset_file(path)  # the env module's own reader splits it the same way
    assert np.array_equal(data["traj_ends"], ends) and data["states"].shape == (n, 60)


def test_cli_writes_a_dataset(tmp_path):
    out = tmp_path / "cli.hdf5"
    result = subprocess.run([sys.executable, "-m", "envs.kitchen_demo", "--num-sequences", "1", "--out", str(out),
                             "--seed", "2"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    with h5py.File(out, "r") as f:
        assert f["observations"].shape[1] == 60 and f.attrs["seed"] == 2
