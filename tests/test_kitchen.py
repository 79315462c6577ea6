"""Kitchen env (envs/kitchen.py): D4RL observation layout, sparse subtask reward, strict order, dataset loading."""

import http.server
import socket
import threading
import time

import h5py
import numpy as np
import pytest

from envs import kitchen
from envs.kitchen import DOWNSTREAM_TASKS, OBS_ELEMENT_GOALS, OBS_ELEMENT_INDICES

# FrankaKitchen-v1 joints (by name, from the MJCF) that hold each D4RL task element, in OBS_ELEMENT_INDICES order.
ELEMENT_JOINTS = {
    "bottom burner": ["knob_Joint_2", "bottom_left_burner"],
    "top burner": ["knob_Joint_4", "top_left_burner"],
    "light switch": ["light_switch", "light_joint"],
    "slide cabinet": ["slide_cabinet"],
    "hinge cabinet": ["left_hinge_cabinet", "right_hinge_cabinet"],
    "microwave": ["microwave"],
}


def qpos_indices(model, joint):
    j = model.joint(joint)
    width = {0: 7, 1: 4, 2: 1, 3: 1}[int(j.type[0])]  # free, ball, slide, hinge
    return list(range(int(j.qposadr[0]), int(j.qposadr[0]) + width))


def complete(env, task):
    """Put a task element exactly at its D4RL goal (objects at rest)."""
    env.unwrapped.data.qpos[OBS_ELEMENT_INDICES[task]] = OBS_ELEMENT_GOALS[task]
    env.unwrapped.data.qvel[9:] = 0.0


def hold_still():
    return np.zeros(kitchen.ACTION_DIM, dtype=np.float32)


def test_observation_layout_matches_d4rl():
    from gymnasium_robotics.envs.franka_kitchen import kitchen_env as v1

    env = kitchen.make_env(seed=0, noise_ratio=0.0)
    model = env.unwrapped.model
    # D4RL's element indices address the right MuJoCo joints in FrankaKitchen-v1's qpos.
    assert model.nq == 30
    for task, joints in ELEMENT_JOINTS.items():
        assert sum((qpos_indices(model, j) for j in joints), []) == list(OBS_ELEMENT_INDICES[task]), task
    assert qpos_indices(model, "kettle") == list(OBS_ELEMENT_INDICES["kettle"])
    assert [qpos_indices(model, f"robot:panda0_joint{i}")[0] for i in range(1, 8)] == list(range(7))
    assert sorted(qpos_indices(model, "robot:panda0_finger_joint1") + qpos_indices(model, "robot:panda0_finger_joint2")) == [7, 8]
    for task in kitchen.SUBTASKS:  # same constants as the simulator's copy of D4RL's
        np.testing.assert_array_equal(OBS_ELEMENT_INDICES[task], v1.OBS_ELEMENT_INDICES[task])
        np.testing.assert_array_equal(OBS_ELEMENT_GOALS[task], v1.OBS_ELEMENT_GOALS[task])
    assert kitchen.BONUS_THRESH == v1.BONUS_THRESH == 0.3

    obs, _ = env.reset()
    state = obs["state"]
    assert state.shape == (60,) and state.dtype == np.float32 and env.observation_space["state"].contains(state)
    # Without noise the first 30 entries are qpos[0:30]; the kettle element is the kettle body's position.
    np.testing.assert_allclose(state[:30], env.unwrapped.data.qpos[:30], atol=1e-6)
    np.testing.assert_allclose(state[23:26], env.unwrapped.data.body("kettle").xpos, atol=1e-3)
    # Goal part as D4RL's _get_task_goal: zeros except the downstream tasks' goals at their indices.
    goal = state[30:]
    nonzero = sorted(np.concatenate([OBS_ELEMENT_INDICES[t] for t in DOWNSTREAM_TASKS]).tolist())
    for task in DOWNSTREAM_TASKS:
        np.testing.assert_allclose(goal[OBS_ELEMENT_INDICES[task]], OBS_ELEMENT_GOALS[task], atol=1e-6)
    assert np.all(goal[[i for i in range(30) if i not in nonzero]] == 0)
    # Moving the microwave joint moves observation entry 22 only.
    env.unwrapped.data.qpos[22] = -0.5
    obs, *_ = env.step(hold_still())
    assert abs(obs["state"][22] - env.unwrapped.data.qpos[22]) < 1e-6 and obs["state"][22] < -0.3


def test_d4rl_observation_noise_on_robot_and_objects():
    env = kitchen.make_env(seed=1)  # default: D4RL's noise ratio 0.1
    obs, _ = env.reset()
    error = obs["state"][:30] - env.unwrapped.data.qpos[:30]
    assert 1e-3 < np.abs(error[:9]).max() <= 0.1 * 0.1 + 1e-6  # robot: ratio * amplitude 0.1
    assert np.all(np.abs(error[9:30]) <= 0.1 * kitchen.OBJECT_NOISE_AMP + 1e-6)
    assert np.abs(error[20:23]).max() > 1e-4  # hinge/microwave amplitude 0.1 -> noise up to 0.01
    # Same seed, same episode; the seed of make_env seeds the first reset.
    again, _ = kitchen.make_env(seed=1).reset()
    np.testing.assert_array_equal(obs["state"], again["state"])


def test_cached_robot_reading_equals_franka_kitchen_v1s_own():
    """The env reads the robot's joints through cached indices; v1's name-lookup reading gives the same bits."""
    from gymnasium_robotics.envs.franka_kitchen import franka_env

    fast, slow = kitchen.make_env(seed=3), kitchen.make_env(seed=3)
    slow.sim.robot_env._get_obs = franka_env.FrankaRobot._get_obs.__get__(slow.sim.robot_env)
    assert np.array_equal(fast.reset(seed=3)[0]["state"], slow.reset(seed=3)[0]["state"])
    rng = np.random.default_rng(0)
    for _ in range(60):
        action = rng.uniform(-1, 1, 9)
        assert np.array_equal(fast.step(action)[0]["state"], slow.step(action)[0]["state"])
        assert np.array_equal(fast.sim.robot_env._last_robot_qpos, slow.sim.robot_env._last_robot_qpos)


def test_reward_fires_once_per_subtask_and_terminates():
    env = kitchen.make_env(seed=0)
    obs, info = env.reset()
    assert info["subtasks_completed"] == 0 and info["completed_tasks"] == []
    seen_lists = []
    for n, task in enumerate(DOWNSTREAM_TASKS, start=1):
        complete(env, task)
        obs, reward, terminated, truncated, info = env.step(hold_still())
        assert reward == 1.0 and info[kitchen.METRIC] == n and info["completed_tasks"][-1] == task
        assert kitchen.completed_subtasks(obs["state"], [task]) == [task]
        seen_lists.append(info["completed_tasks"])
        assert terminated == (n == 4) and not truncated
        if n < 4:  # the element stays at its goal: no second reward
            complete(env, task)
            _, reward, terminated, _, info = env.step(hold_still())
            assert reward == 0.0 and info[kitchen.METRIC] == n and not terminated
    assert seen_lists[0] == ["microwave"]  # earlier info lists are copies, not one shared list
    assert seen_lists[-1] == list(DOWNSTREAM_TASKS)


def test_strict_order_counts_a_subtask_only_after_all_before_it():
    strict = kitchen.make_env(seed=0)
    strict.reset()
    complete(strict, "kettle")  # second task first: no reward yet
    _, reward, _, _, info = strict.step(hold_still())
    assert reward == 0.0 and info["subtasks_completed"] == 0
    complete(strict, "light switch")
    complete(strict, "microwave")  # now microwave and the kettle (still in place) count together
    _, reward, _, _, info = strict.step(hold_still())
    assert reward == 2.0 and info["completed_tasks"] == ["microwave", "kettle"]
    complete(strict, "bottom burner")  # ... and bottom burner unlocks the light switch
    _, reward, terminated, _, info = strict.step(hold_still())
    assert reward == 2.0 and terminated and info["subtasks_completed"] == 4

    any_order = kitchen.make_env(seed=0, strict_order=False)
    any_order.reset()
    complete(any_order, "kettle")
    _, reward, _, _, info = any_order.step(hold_still())
    assert reward == 1.0 and info["completed_tasks"] == ["kettle"]


@pytest.mark.parametrize("strict_order", [True, False])
def test_info_reports_strict_and_any_order_counts_on_a_scripted_episode(strict_order):
    """A scripted kettle-then-microwave episode (the downstream task's first two subtasks swapped): the any-order
    count sees the kettle when it is done, the strict count (the reward) only once the microwave is open too;
    both keys are there whatever strict_order is."""
    from envs.kitchen_demo import ScriptedKitchenController

    env = kitchen.make_env(seed=0, strict_order=strict_order)
    obs, info = env.reset()
    assert info[kitchen.METRIC] == info[kitchen.ANY_ORDER_METRIC] == 0
    controller = ScriptedKitchenController(env.model, env.data, np.random.default_rng(0))
    controller.observe(obs["state"])
    rewards, counts = 0.0, []
    for action in controller.sequence(("kettle", "microwave")):
        obs, reward, terminated, truncated, info = env.step(action)
        controller.observe(obs["state"])
        rewards += reward
        counts.append((info[kitchen.METRIC], info[kitchen.ANY_ORDER_METRIC]))
    assert kitchen.ANY_ORDER_METRIC == "subtasks_completed_any_order"
    assert info["completed_tasks_any_order"] == ["kettle", "microwave"]
    assert counts[-1] == (2, 2) and rewards == 2.0
    kettle_only = [c for c in counts if c[1] == 1]
    assert kettle_only and all(c == ((0, 1) if strict_order else (1, 1)) for c in kettle_only)


def test_other_task_sequences_and_validation():
    env = kitchen.make_env(seed=0, tasks=("slide cabinet", "hinge cabinet", "top burner", "light switch"))
    obs, _ = env.reset()
    np.testing.assert_allclose(obs["state"][30:], kitchen.goal_vector(env.unwrapped.tasks))
    complete(env, "microwave")  # not part of this task: nothing
    complete(env, "slide cabinet")
    _, reward, _, _, info = env.step(hold_still())
    assert reward == 1.0 and info["completed_tasks"] == ["slide cabinet"]
    with pytest.raises(ValueError, match="distinct names"):
        kitchen.make_env(tasks=("microwave", "toaster"))
    with pytest.raises(ValueError, match="9 entries"):
        env.step(np.zeros(7))
    with pytest.raises(RuntimeError, match="render_mode"):
        env.render()


@pytest.mark.filterwarnings("ignore:.*infinity")  # unbounded state space, as D4RL's positions are
def test_passes_gymnasium_env_checker():
    from gymnasium.utils.env_checker import check_env

    check_env(kitchen.make_env(seed=0), skip_render_check=True)  # spaces, dtypes, seeding determinism


def test_truncates_at_280_steps_with_random_actions():
    env = kitchen.make_env(seed=0)
    assert env.unwrapped.max_episode_steps == 280
    env.reset()
    steps, truncated, terminated = 0, False, False
    while not (truncated or terminated):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        steps += 1
    assert truncated and not terminated and steps == 280


def test_completed_subtasks_from_qpos_and_mjdata():
    env = kitchen.make_env(noise_ratio=0.0)
    env.reset()
    complete(env, "hinge cabinet")
    data = env.unwrapped.data
    assert kitchen.completed_subtasks(data) == ["hinge cabinet"]
    assert kitchen.completed_subtasks(data.qpos.copy()) == ["hinge cabinet"]
    assert kitchen.completed_subtasks(kitchen.d4rl_state(data.qpos)) == ["hinge cabinet"]
    data.qpos[21] = 1.45 - 0.31  # just outside the 0.3 threshold
    assert kitchen.completed_subtasks(data) == []


# ----------------------------------------------------------------------------------------------- datasets


def write_d4rl_file(path, lengths=(5, 7, 4), obs_dim=60, nan=False):
    """A small D4RL-layout kitchen file: trajectory k has observations filled with k; ends marked by
    terminals (first), timeouts (second), nothing (last, unfinished)."""
    n = sum(lengths)
    obs = np.concatenate([np.full((length, obs_dim), k, np.float32) for k, length in enumerate(lengths)])
    actions = np.random.default_rng(0).uniform(-1, 1, (n, 9)).astype(np.float32)
    terminals, timeouts = np.zeros(n, bool), np.zeros(n, bool)
    terminals[lengths[0] - 1] = True
    timeouts[lengths[0] + lengths[1] - 1] = True
    if nan:
        obs[3, 4] = np.nan
    with h5py.File(path, "w") as f:
        f["observations"], f["actions"], f["rewards"] = obs, actions, np.zeros(n, np.float32)
        f["terminals"], f["timeouts"] = terminals, timeouts
    return obs, actions


def test_d4rl_file_loads_and_splits(tmp_path):
    path = tmp_path / "kitchen_microwave_kettle_bottomburner_light-v0.hdf5"
    obs, actions = write_d4rl_file(path)
    data = kitchen.load_dataset(str(path))
    assert data["states"].dtype == np.float32 and data["actions"].dtype == np.float32
    np.testing.assert_array_equal(data["states"], obs)
    np.testing.assert_array_equal(data["actions"], actions)
    assert data["traj_ends"].dtype == np.int64 and data["traj_ends"].tolist() == [5, 12, 16]
    starts = np.concatenate([[0], data["traj_ends"][:-1]])
    for k, (s, e) in enumerate(zip(starts, data["traj_ends"])):
        assert np.all(data["states"][s:e] == k)  # every trajectory holds exactly its own steps
    assert str(path) in data["source"]


def test_bad_files_give_one_clear_error(tmp_path):
    write_d4rl_file(tmp_path / "wrong.hdf5", obs_dim=59)
    with pytest.raises(kitchen.DatasetError, match=r"expected \(N, 60\)") as error:
        kitchen.load_dataset(str(tmp_path / "wrong.hdf5"))
    assert "\n" not in str(error.value)  # one line, naming the fix
    with pytest.raises(kitchen.DatasetError, match="not found"):
        kitchen.load_dataset(str(tmp_path / "missing.hdf5"))
    write_d4rl_file(tmp_path / "nan.hdf5", nan=True)
    with pytest.raises(kitchen.DatasetError, match="NaN"):
        kitchen.load_dataset(str(tmp_path / "nan.hdf5"))
    (tmp_path / "text.hdf5").write_text("not hdf5")
    with pytest.raises(kitchen.DatasetError, match="not a readable HDF5"):
        kitchen.load_dataset(str(tmp_path / "text.hdf5"))
    with pytest.raises(kitchen.DatasetError, match="main_data.hdf5"):
        kitchen.load_dataset(str(tmp_path))


def test_minari_directory_is_converted_to_d4rl_layout(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "data").mkdir()
    episodes = []
    with h5py.File(tmp_path / "data" / "main_data.hdf5", "w") as f:
        for i, steps in enumerate((6, 3)):
            observation = rng.normal(size=(steps + 1, 59))
            actions = rng.uniform(-1, 1, (steps, 9)).astype(np.float32)
            ep = f.create_group(f"episode_{i}")
            ep["observations/observation"] = observation
            for task in DOWNSTREAM_TASKS:
                ep[f"observations/desired_goal/{task}"] = np.tile(OBS_ELEMENT_GOALS[task], (steps + 1, 1))
            ep["actions"] = actions
            ep["rewards"], ep["terminations"], ep["truncations"] = np.zeros(steps), np.zeros(steps, bool), np.ones(steps, bool)
            episodes.append((observation, actions))
    data = kitchen.load_dataset(str(tmp_path))
    assert data["traj_ends"].tolist() == [6, 9] and data["states"].shape == (9, 60)
    observation, actions = episodes[0]
    np.testing.assert_allclose(data["states"][:6, :9], observation[:6, :9], rtol=1e-6)  # robot qpos
    np.testing.assert_allclose(data["states"][:6, 9:30], observation[:6, 18:39], rtol=1e-6)  # object qpos
    np.testing.assert_allclose(data["states"][:, 30:], np.tile(kitchen.goal_vector(), (9, 1)), atol=1e-6)
    np.testing.assert_array_equal(data["actions"][:6], actions)


@pytest.fixture
def offline_auto(tmp_path, monkeypatch):
    """'auto' with no local D4RL file and a ready scripted file in tmp_path (the generator is tested elsewhere)."""
    monkeypatch.setattr(kitchen, "_local_candidates", lambda: [tmp_path / "absent.hdf5"])
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path / "d4rl"))
    monkeypatch.setattr(kitchen, "SCRIPTED_PATH", tmp_path / "kitchen_scripted.hdf5")
    write_d4rl_file(tmp_path / "kitchen_scripted.hdf5")
    return tmp_path


def test_download_failure_falls_back_to_scripted_data_in_seconds(offline_auto):
    start = time.monotonic()
    data = kitchen.load_dataset("auto", url="http://127.0.0.1:9/kitchen.hdf5", timeout=1.0)  # closed port
    assert data["source"].startswith("SCRIPTED") and "NOT the paper's" in data["source"]
    assert data["traj_ends"].tolist() == [5, 12, 16]
    # A server that accepts the connection and never answers is cut off by the socket timeout as well.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    try:
        data = kitchen.load_dataset("auto", url=f"http://127.0.0.1:{silent.getsockname()[1]}/k.hdf5", timeout=1.0)
    finally:
        silent.close()
    assert data["source"].startswith("SCRIPTED")
    assert time.monotonic() - start < 30  # a hang detector (minutes), not a speed assertion
    assert not any((offline_auto / "d4rl").glob("*.part"))


def test_auto_prefers_a_local_d4rl_file(offline_auto, monkeypatch):
    local = offline_auto / kitchen.D4RL_MIXED_FILE
    obs, _ = write_d4rl_file(local, lengths=(3, 3, 3))
    monkeypatch.setattr(kitchen, "_local_candidates", lambda: [offline_auto / "absent.hdf5", local])
    data = kitchen.load_dataset("auto", url="http://127.0.0.1:9/never-asked.hdf5")
    assert data["source"].startswith("D4RL kitchen-mixed-v0") and str(local) in data["source"]
    np.testing.assert_array_equal(data["states"], obs)


def serve(directory):
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(directory))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_download_lands_in_cache_and_is_used(offline_auto, tmp_path):
    (tmp_path / "www").mkdir()
    obs, _ = write_d4rl_file(tmp_path / "www" / kitchen.D4RL_MIXED_FILE, lengths=(4, 4, 4))
    (tmp_path / "www" / "bad.hdf5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    server = serve(tmp_path / "www")
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        with pytest.raises(kitchen.DownloadError):  # served but corrupt: rejected, nothing cached
            kitchen.download_d4rl_mixed(base + "bad.hdf5", cache_dir=tmp_path / "cache", timeout=2.0)
        assert not any((tmp_path / "cache").glob("*"))
        data = kitchen.load_dataset("auto", url=base + kitchen.D4RL_MIXED_FILE, timeout=2.0)
    finally:
        server.shutdown()
    assert data["source"].startswith("D4RL kitchen-mixed-v0") and "downloaded" in data["source"]
    assert (tmp_path / "d4rl" / kitchen.D4RL_MIXED_FILE).is_file()
    np.testing.assert_array_equal(data["states"], obs)
    assert data["traj_ends"].tolist() == [4, 8, 12]
