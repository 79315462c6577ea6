"""The scripted kitchen demonstrator (envs/kitchen_demo.py): its skills complete their subtasks in the env, the
dataset it writes has D4RL's kitchen layout and kitchen-mixed's composition, whatever the number of workers."""

import subprocess
import sys
from pathlib import Path

import h5py
import mujoco
import numpy as np
import pytest

from envs import kitchen
from envs.kitchen_demo import (DOWN, SEQUENCE_TYPES, TAIL_STEPS, ScriptedKitchenController, completion_order,
                               contains_downstream, follows_global_order, generate_dataset, run_episode, sample_sequence,
                               sequences_from_file, subtask_done)
from envs.kitchen_env import DOWNSTREAM_TASKS, SUBTASKS

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


def test_sequence_types_follow_kitchen_mixed():
    """The drawn sequence types have kitchen-mixed's composition: one global order, microwave / kettle / bottom
    burner first at about 61 / 30 / 9 %, and never the downstream task (its prefix goes on to a cabinet)."""
    rng = np.random.default_rng(0)
    sequences = [sample_sequence(rng) for _ in range(5000)]
    assert all(len(set(s)) == 4 and follows_global_order(s) and not contains_downstream(s) for s in sequences)
    first = {t: np.mean([s[0] == t for s in sequences]) for t in ("microwave", "kettle", "bottom burner")}
    assert abs(first["microwave"] - 0.61) < 0.03 and abs(first["kettle"] - 0.30) < 0.03
    assert abs(first["bottom burner"] - 0.09) < 0.02
    assert {s[3] for s in sequences if s[:3] == DOWNSTREAM_TASKS[:3]} == {"slide cabinet", "hinge cabinet"}
    assert len(set(sequences)) == len(SEQUENCE_TYPES) == 24
    # The order checks themselves, on hand-made orders.
    assert contains_downstream(["microwave", "kettle", "bottom burner", "top burner", "light switch"])
    assert not contains_downstream(["microwave", "bottom burner", "kettle", "light switch"])
    assert not follows_global_order(["kettle", "microwave"]) and follows_global_order(["kettle", "hinge cabinet"])


def test_run_episode_records_d4rl_observations():
    tasks = ("light switch", "slide cabinet", "bottom burner", "microwave")
    episode = run_episode(tasks, seed=3)
    obs, actions = episode["observations"], episode["actions"]
    assert obs.shape == (len(actions), 60) and obs.dtype == np.float32
    assert np.allclose(obs[:, 30:], kitchen.goal_vector(DOWNSTREAM_TASKS))  # kitchen-mixed's goal dims
    assert sorted(episode["completed"]) == sorted(tasks) and episode["rewards"].sum() == 4.0
    # Recording stops TAIL_STEPS after the last subtask, whose completion the observations show.
    assert len(actions) == episode["done_at"] + TAIL_STEPS and not episode["truncated"]
    assert completion_order(obs) == episode["completed"]


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """The same 6 sequences generated with 2 worker processes and with 1."""
    out = tmp_path_factory.mktemp("kitchen_demo")
    paths = {workers: out / f"workers{workers}.hdf5" for workers in (2, 1)}
    for workers, path in paths.items():
        generate_dataset(str(path), num_sequences=6, seed=3, workers=workers)
    return paths


def test_generated_file_follows_kitchen_mixed_order(generated):
    """Measured from the file's observations: each sequence's completion order follows the global order, starts
    with microwave, kettle or bottom burner, and never contains the downstream task."""
    sequences = sequences_from_file(str(generated[2]))
    with h5py.File(generated[2], "r") as f:
        recorded = [s.decode() if isinstance(s, bytes) else s for s in f.attrs["completed"]]
    assert len(sequences) == 6
    for (obs, _), attr in zip(sequences, recorded):
        order = completion_order(obs)
        assert len(order) >= 2 and order[0] in ("microwave", "kettle", "bottom burner"), order
        assert follows_global_order(order) and not contains_downstream(order), order
        assert ",".join(order) == attr


def test_data_do_not_depend_on_the_number_of_workers(generated):
    with h5py.File(generated[2], "r") as two, h5py.File(generated[1], "r") as one:
        for key in ("observations", "actions", "rewards", "terminals", "timeouts"):
            np.testing.assert_array_equal(two[key][()], one[key][()], err_msg=key)
        assert list(two.attrs["sequences"]) == list(one.attrs["sequences"])


def test_generate_dataset_round_trip(generated):
    path = generated[1]
    assert not list(path.parent.glob("*.tmp"))
    with h5py.File(path, "r") as f:
        obs, actions = f["observations"][()], f["actions"][()]
        rewards, terminals, timeouts = f["rewards"][()], f["terminals"][()], f["timeouts"][()]
        sequences = [s.decode() if isinstance(s, bytes) else s for s in f.attrs["sequences"]]
    n = len(actions)
    assert obs.shape == (n, 60) and actions.shape == (n, 9) and rewards.shape == terminals.shape == timeouts.shape == (n,)
    assert obs.dtype == np.float32 and actions.dtype == np.float32
    assert np.isfinite(obs).all() and np.isfinite(actions).all() and np.abs(actions).max() <= 1.0
    # Every sequence ends with one flag: terminals where the plan ran to its end, timeouts where 280 steps cut it.
    ends = np.flatnonzero(terminals | timeouts) + 1
    assert len(ends) == 6 and ends[-1] == n and not (terminals & timeouts).any()
    assert np.diff(np.concatenate([[0], ends])).max() <= kitchen.EPISODE_LENGTH
    assert all(tuple(s.split(",")) in dict(SEQUENCE_TYPES) for s in sequences) and len(sequences) == 6
    # Each sequence's rewards count its planned subtasks that were done, at most 4.
    for start, end in zip(np.concatenate([[0], ends[:-1]]), ends):
        assert 2 <= rewards[start:end].sum() <= 4
    # Consecutive observations within a sequence are one control step apart (no sequence is spliced).
    assert np.abs(np.diff(obs[: ends[0], :7], axis=0)).max() < 0.3
    data = kitchen.read_dataset_file(path)  # the env module's own reader splits it the same way
    assert np.array_equal(data["traj_ends"], ends) and data["states"].shape == (n, 60)


def test_two_cli_runs_writing_the_same_file_do_not_collide(tmp_path):
    out = tmp_path / "cli.hdf5"
    command = [sys.executable, "-m", "envs.kitchen_demo", "--num-sequences", "1", "--out", str(out), "--workers", "1"]
    runs = [subprocess.Popen(command + ["--seed", str(seed)], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for seed in (2, 4)]
    for run in runs:
        _, stderr = run.communicate(timeout=300)
        assert run.returncode == 0, stderr[-2000:]
    with h5py.File(out, "r") as f:
        assert f["observations"].shape[1] == 60 and f.attrs["seed"] in (2, 4)
    assert [p.name for p in tmp_path.iterdir()] == ["cli.hdf5"]
