"""Behavioural tests of envs/block_stacking.py: physics of grasps and towers, rewards, views, data."""

import subprocess
import sys

import h5py
import mujoco
import numpy as np
import pytest

import envs
from envs import block_stacking as bs

H = bs.HALF


def two_block_env(**kwargs):
    """Two blocks on the ground, far apart, so one scripted stack has a known source and target."""
    env = bs.BlockStackingEnv(num_blocks=2, layout="ground", half_width=0.4, layout_seed=None, **kwargs)
    env.reset(seed=0)
    return env


def place_blocks(env, blocks, gripper_xz=(-0.3, 0.5)):
    """Write block (x, z, angle) rows and the gripper position into the simulator and settle it."""
    q = env.data.qpos
    q[0], q[1] = gripper_xz
    q[4:] = np.asarray(blocks, dtype=np.float64).ravel()
    env.data.qvel[:] = 0
    env.data.ctrl[:] = [gripper_xz[0], gripper_xz[1], bs.FINGER_OPEN, bs.FINGER_OPEN]
    mujoco.mj_forward(env.model, env.data)
    return env.state()


def run_scripted_stack(env, steps=300):
    """One noise-free scripted stack; returns per-step (state, reward, info) and (source, target)."""
    policy = bs.ScriptedStacker(env, np.random.default_rng(0), num_stacks=1, action_noise=0.0, subgoal_prob=0.0)
    state, records = env.state(), []
    for _ in range(steps):
        action = policy.act(state)
        if policy.done():
            break
        obs, reward, _, _, info = env.step(action)
        state = obs["state"]
        records.append((state.copy(), reward, info))
    assert policy.done(), "the scripted stack did not finish"
    return records, policy.attempts[0]


def test_scripted_lift_carries_block_and_release_lands_it_on_the_block_below():
    env = two_block_env(image_obs=False)
    place_blocks(env, [[-0.2, H, 0.0], [0.2, H, 0.0]])
    records, (source, target) = run_scripted_stack(env)
    states = np.array([r[0] for r in records])
    held = np.array([r[2]["lifted"] for r in records])
    assert held.sum() > 10
    # while lifted, the block moves with the gripper: its centre stays at the grasp point
    gripper, block = states[held][:, :2], states[held][:, 3 + 3 * source:5 + 3 * source]
    np.testing.assert_allclose(block, gripper, atol=0.01)
    assert block[:, 1].max() > 3 * H + 0.05  # it rose well above the other block
    assert block[:, 0].max() - block[:, 0].min() > 0.3  # and was carried across
    # after the release it rests on the block below, flat, and the gripper has left it
    final = states[-1]
    b0, b1 = final[3 + 3 * source:6 + 3 * source], final[3 + 3 * target:6 + 3 * target]
    assert abs(b0[0] - b1[0]) < 0.01 and abs(b0[1] - b1[1] - 2 * H) < 0.004 and abs(b0[2]) < 0.05
    assert abs(b1[1] - H) < 0.002
    assert final[1] > b0[1] + 0.05 and final[2] > 0.9
    assert records[-1][2]["blocks_stacked"] == 1


def test_missed_grasps_are_retried_from_above_until_the_block_comes_along():
    """grasp_miss_prob=1: the first two grasps are aimed beside the block (the fingers land on it or on the
    table next to it), rise without it, and are retried; the last retry is aimed exactly and the stack
    succeeds, as the authors' data policy repeats a grasp until its block is lifted. A miss that tips the block
    over gives the stack up (seed 1: the next act() would plan another stack)."""
    for seed in range(4):
        env = two_block_env(image_obs=False)
        state = place_blocks(env, [[-0.2, H, 0.0], [0.2, H, 0.0]])
        policy = bs.ScriptedStacker(env, np.random.default_rng(seed), num_stacks=1, action_noise=0.0,
                                    subgoal_prob=0.0, grasp_miss_prob=1.0, max_retries=2)
        held_before_last_retry, states = [], []
        for _ in range(600):
            action = policy.act(state)
            if policy.done():
                break
            obs, _, _, _, info = env.step(action)
            state = obs["state"]
            states.append(state)
            if policy.retries < 2:
                held_before_last_retry.append(info["lifted"])
        source, target = policy.attempts[0]
        assert not any(held_before_last_retry)  # the missed grasps never lifted the block
        if seed == 1:
            assert policy.done() and policy.failed_grasps == 1 and abs(state[5 + 3 * source]) > 0.15  # tipped
            assert not bs.stack_succeeded(state, source, target)
            continue
        assert policy.done() and policy.failed_grasps == 2 and policy.retries == 2
        assert bs.stack_succeeded(state, source, target)
        states = np.array(states)
        aimed_beside = np.abs(states[:, 0] - states[:, 3 + 3 * source]) > 0.02
        assert (aimed_beside & (states[:, 1] < states[:, 4 + 3 * source] + 2 * H)).sum() > 5  # low, beside it


def test_table_subgoals_go_down_beside_the_blocks_and_back_up_before_the_stack():
    """low_subgoal_prob=1: the stack starts with the open gripper going down to the table at a spot 9 cm or more
    from every block, then up again; the stack itself still succeeds."""
    env = two_block_env(image_obs=False)
    state = place_blocks(env, [[-0.2, H, 0.0], [0.2, H, 0.0]])
    policy = bs.ScriptedStacker(env, np.random.default_rng(0), num_stacks=1, action_noise=0.0, subgoal_prob=0.0,
                                low_subgoal_prob=1.0)
    states = []
    for _ in range(600):
        action = policy.act(state)
        if policy.done():
            break
        state = env.step(action)[0]["state"]
        states.append(state)
    states = np.array(states)
    blocks_x = states[:, 3::3]
    on_table_away = (states[:, 1] < bs.GRIP_Z_MIN + 0.005) & (np.abs(blocks_x - states[:, :1]).min(axis=1) > 0.085)
    assert on_table_away.sum() >= 1
    first_lift = np.flatnonzero(np.abs(blocks_x - states[:, :1]).min(axis=1) < 0.01)[0]  # first time over a block
    assert np.flatnonzero(on_table_away)[0] < first_lift  # before the grasp
    assert bs.stack_succeeded(state, *policy.attempts[0])


def test_five_block_tower_stands_still_for_200_steps():
    env = bs.BlockStackingEnv(num_blocks=5, layout="ground", layout_seed=None, image_obs=False)
    env.reset(seed=0)
    tower = [[0.1, H + k * (2 * H + 1e-4), 0.0] for k in range(5)]
    start = place_blocks(env, tower)
    for _ in range(200):
        obs, _, _, _, info = env.step(np.array([0.0, 0.0, 1.0]))
    drift = np.abs(obs["state"][3:] - start[3:]).reshape(5, 3)
    assert drift[:, :2].max() < 0.004, drift  # facts: a tower creeps ~1 mm in 200 idle steps
    assert drift[:, 2].max() < 0.05
    assert info["blocks_stacked"] == 4


def test_rewards_fire_as_the_authors_env_computes_them_on_a_scripted_episode():
    env = two_block_env(image_obs=False)
    place_blocks(env, [[-0.2, H, 0.0], [0.2, H, 0.0]])
    assert env.task_info(env.state()) == {"blocks_stacked": 0, "lifted": False, "stacked": False}
    records, (source, target) = run_scripted_stack(env)
    rewards = np.array([r[1] for r in records])
    lifted = np.array([r[2]["lifted"] for r in records])
    delivered = np.array([r[2]["blocks_delivered"] for r in records]) > 0
    stacked = np.array([r[2]["stacked"] for r in records])
    # nothing before the grasp; from the lift on, the block earns 1 per step, 2 once it has been above the other
    first_lift, first_delivery, first_stack = np.argmax(lifted), np.argmax(delivered), np.argmax(stacked)
    assert 0 < first_lift < first_delivery < first_stack and lifted.sum() > 10
    assert (rewards[:first_lift] == 0).all()
    assert (rewards[first_lift:first_delivery] == bs.LIFTED_REWARD).all()
    assert (rewards[first_delivery:first_stack] == bs.DELIVERED_REWARD).all()
    # carrying is worth no more than what the block already earned: the carry before the delivery pays 1
    assert lifted[first_lift:first_delivery].all()
    # the placed block adds 4 per block of tower height (one block: ~4)
    assert stacked[first_stack:].all() and len(stacked) - first_stack > 5
    np.testing.assert_allclose(rewards[-5:], bs.DELIVERED_REWARD + bs.HEIGHT_REWARD_PER_BLOCK, atol=0.02)
    assert records[-1][2]["blocks_lifted"] == 1 and records[-1][2]["blocks_delivered"] == 1
    # info["reward_flags"] (what spirl_sac.py --critic-reward-flags feeds the critics): per block lifted, then delivered
    flags = np.array([r[2]["reward_flags"] for r in records])  # (steps, 2 * num_blocks)
    assert flags.dtype == np.float32 and flags.shape[1] == 2 * env.num_blocks
    np.testing.assert_array_equal(flags[:, source], np.arange(len(records)) >= first_lift)
    np.testing.assert_array_equal(flags[:, env.num_blocks + source], np.arange(len(records)) >= first_delivery)
    assert flags[:, [target, env.num_blocks + target]].sum() == 0  # the target block was never lifted
    # the flags stick for the episode: put the block back on the ground, the tower term goes, the 2 stays
    state = env.state()
    blocks = state[3:].reshape(-1, 3).copy()
    blocks[source] = [-0.2, H, 0.0]
    place_blocks(env, blocks, gripper_xz=(0.0, 0.5))
    _, reward, _, _, info = env.step(np.array([0.0, 0.0, 1.0]))
    assert info["blocks_stacked"] == 0 and reward == bs.DELIVERED_REWARD
    np.testing.assert_array_equal(info["reward_flags"], flags[-1])  # the same state as before the carry, other flags
    _, reset_info = env.reset(seed=1)  # a new episode starts without flags
    assert not reset_info["reward_flags"].any() and len(reset_info["reward_flags"]) == 2 * env.num_blocks
    _, reward, _, _, info = env.step(np.array([0.0, 0.0, 1.0]))
    assert reward == 0.0 and info["blocks_lifted"] == 0


def test_sparse_reward_pays_only_the_towers_height_as_the_authors_sparse_env():
    """reward="sparse" (the authors' SparseHighStack): nothing for lifting or carrying a block over another, then
    0.08 per block of tower height per step once the block rests on the other; the flags are still counted."""
    env = two_block_env(image_obs=False, reward="sparse")
    place_blocks(env, [[-0.2, H, 0.0], [0.2, H, 0.0]])
    records, _ = run_scripted_stack(env)
    rewards = np.array([r[1] for r in records])
    stacked = np.array([r[2]["stacked"] for r in records])
    first_stack = np.argmax(stacked)
    assert (rewards[:first_stack] == 0).all() and any(r[2]["lifted"] for r in records[:first_stack])
    np.testing.assert_allclose(rewards[-5:], bs.SPARSE_REWARD_PER_BLOCK, atol=0.001)
    assert records[-1][2]["blocks_lifted"] == 1 and records[-1][2]["blocks_delivered"] == 1
    with pytest.raises(ValueError, match="reward must be"):
        bs.BlockStackingEnv(num_blocks=2, reward="height")


def test_tower_term_counts_only_blocks_the_agent_placed_and_grows_with_height():
    env = bs.BlockStackingEnv(num_blocks=4, layout="ground", half_width=0.4, layout_seed=None, image_obs=False)
    env.reset(seed=0)
    tower = [[0.0, H, 0], [0.0, 3 * H + 1e-4, 0], [0.0, 5 * H + 2e-4, 0], [0.25, H, 0]]
    place_blocks(env, tower)
    _, reward, terminated, _, info = env.step(np.array([0.0, 0.0, 1.0]))
    assert info["blocks_stacked"] == 2 and reward == 0.0 and not terminated  # a tower the agent did not build
    env._lifted_flags[:] = True  # as if the agent had lifted every block (and delivered none)
    _, reward, _, _, info = env.step(np.array([0.0, 0.0, 1.0]))
    # 4 lift flags, the two upper blocks now above another block (delivered, 2 each), and a 2-block-high tower
    assert info["blocks_delivered"] == 2
    np.testing.assert_allclose(reward, 2 * bs.LIFTED_REWARD + 2 * bs.DELIVERED_REWARD + 2 * bs.HEIGHT_REWARD_PER_BLOCK,
                               atol=0.01)


def test_views_have_the_right_shape_and_follow_the_blocks():
    env = bs.make_env(seed=0, num_blocks=5, layout="random_stacks", layout_seed=None, render_mode="rgb_array")
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert obs["image"].shape == (6, 32, 32) and obs["image"].dtype == np.uint8
    np.testing.assert_array_equal(obs["image"][:3], obs["image"][3:])  # reset: both frames the same
    full = env.render()
    assert full.shape[0] == 240 and full.shape[2] == 3 and full.dtype == np.uint8
    obs2, *_ = env.step(np.array([1.0, -1.0, 1.0]))
    np.testing.assert_array_equal(obs2["image"][:3], obs["image"][3:])  # oldest frame first
    assert (obs2["image"][3:] != obs["image"][3:]).any()  # the window follows the gripper
    # moving a block under the (fixed) gripper changes both views where the block is drawn
    state = env.state()
    gx, gz = state[:2]
    before_full, before_view = env.render(), env._frame(state)
    blocks = env.data.qpos[4:].reshape(-1, 3).copy()
    blocks[0] = [gx, gz - 0.15, 0.0]
    place_blocks(env, blocks, gripper_xz=(gx, gz))
    after_view = env._frame(env.state())
    assert (env.render() != before_full).any() and (after_view != before_view).any()
    # the block's colour sits where it should: 0.15 m below the gripper in the centre column
    row = int((bs.VIEW_ABOVE + 0.15) / (bs.VIEW_BELOW + bs.VIEW_ABOVE) * 32)
    np.testing.assert_allclose(after_view[:, row, 16], bs.COLORS[0], atol=1)


def test_make_env_contract_and_time_limit():
    env = envs.make_env("block_stacking", seed=3, max_episode_steps=5)
    assert env.observation_space["state"].shape == (3 + 3 * 11,)
    assert np.allclose(env.action_space.low, [-1, -1, 0]) and np.allclose(env.action_space.high, 1)
    obs, info = env.reset(seed=3)
    assert bs.METRIC in info and info[bs.METRIC] == 0  # downstream: all 11 blocks on the ground
    assert (np.abs(obs["state"][3:].reshape(-1, 3)[:, 1] - H) < 1e-3).all()
    for t in range(5):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert not terminated and truncated == (t == 4)
        assert env.observation_space.contains(obs)


def test_data_stacks_build_one_tower_as_the_authors_generator_chains_them():
    """Each stack after the first targets the block placed last (the authors'
    FixedSizeSingleTowerBlockTaskGenerator), so the last block placed tops the tallest tower, of 4 blocks or more."""
    env, rng = bs.training_env(image_obs=False), np.random.default_rng(3)
    for _ in range(3):
        traj = bs.collect_trajectory(env, rng)
        attempts = traj["attempts"]
        assert len(attempts) == 3 and all(traj["stack_outcomes"])
        assert all(target == previous_source for (_, target), (previous_source, _) in zip(attempts[1:], attempts))
        heights = bs.tower_heights(traj["final_state"][3:].reshape(-1, 3))
        assert heights[attempts[-1][0]] == heights.max() >= 4  # the last block placed tops the tallest tower
        assert traj["info"]["blocks_stacked"] == heights.max() - 1


def test_view_limited_data_policy_carries_to_the_left_wall_and_the_file_says_so(tmp_path):
    """--script view-limited: each trajectory of the memoryless script builds its tower on the block by the left wall
    (every carry it ends goes there), its only grasps are of blocks in the window, it stops when its plan is a trip past
    a wall, and the file records the script; an unknown script is a clear error."""
    env, rng = bs.training_env(image_obs=False), np.random.default_rng(0)
    stacked = []
    for _ in range(6):
        traj = bs.collect_trajectory(env, rng, script="view-limited")
        states = np.concatenate([traj["states"], traj["final_state"][None]])
        assert traj["attempts"] == [] and traj["stack_outcomes"] == []
        assert len(traj["actions"]) == 400 or abs(states[-1, 0]) > env.x_limit - 0.06  # ran out, or ended at a wall
        held = np.array([bs.BlockStackingEnv._lifted_blocks(s, bs.tower_heights(s[3:].reshape(-1, 3))) for s in states])
        for t in np.flatnonzero(held[:-1].any(1) & ~held[1:].any(1)):  # let-gos: all by the left end of the table
            assert states[t, 0] < -env.half_width + bs.VIEW_W / 2 + 0.02
        stacked.append(traj["info"]["blocks_stacked"])
    assert np.mean(stacked) >= 2  # the scripted chain's data: 2.73 at the end
    path = tmp_path / "vl.hdf5"
    bs.generate_dataset(str(path), num_trajectories=2, seed=1, script="view-limited")
    with h5py.File(path) as f:
        assert f.attrs["script"] == "view-limited" and "view-limited" in f.attrs["source"]
    with pytest.raises(ValueError, match="--script"):
        bs.generate_dataset(str(tmp_path / "x.hdf5"), num_trajectories=1, script="tower")


def test_generated_data_round_trips(tmp_path):
    path = tmp_path / "bs.hdf5"
    bs.generate_dataset(str(path), num_trajectories=3, random_fraction=1 / 3, seed=1)
    assert [p.name for p in tmp_path.iterdir()] == ["bs.hdf5"]  # no temporary file left
    data = envs.load_dataset("block_stacking", str(path), state_blocks=None)
    states, actions, ends, images = data["states"], data["actions"], data["traj_ends"], data["images"]
    N = len(states)
    assert states.shape == (N, 18) and states.dtype == np.float32
    assert actions.shape == (N, 3) and actions.dtype == np.float32
    assert images.shape == (N, 6, 32, 32) and images.dtype == np.uint8
    assert ends.dtype == np.int64 and len(ends) == 3 and ends[-1] == N and (np.diff(ends) > 0).all()
    assert (actions[:, :2] >= -1).all() and (actions[:, :2] <= 1).all()
    assert (actions[:, 2] >= 0).all() and (actions[:, 2] <= 1).all()
    assert "scripted" in data["source"]
    starts = np.concatenate([[0], ends[:-1]])
    env = bs.training_env(image_obs=False)
    for t in [0, 1, 7, int(starts[1]), int(starts[2]) + 3, N - 1]:
        np.testing.assert_array_equal(images[t, 3:], env._frame(states[t]))  # the newest frame is the state's view
        if t in starts:
            np.testing.assert_array_equal(images[t, :3], images[t, 3:])
        else:
            np.testing.assert_array_equal(images[t, :3], images[t - 1, 3:])
    with h5py.File(path) as f:
        assert not f["terminals"][()].any() and f["timeouts"][()].sum() == 3
    # default: states laid out like the 11-block downstream env, the extra slots repeating real blocks
    padded = bs.load_dataset(str(path), images=False)
    assert "images" not in padded and padded["states"].shape == (N, bs.make_env(image_obs=False).observation_space["state"].shape[0])
    np.testing.assert_array_equal(padded["states"][:, :18], states)
    np.testing.assert_array_equal(padded["states"][:, 18:33], states[:, 3:18])
    np.testing.assert_array_equal(padded["states"][:, 33:36], states[:, 3:6])


def test_data_on_a_wider_training_table_spread_the_blocks_and_draw_its_walls(tmp_path):
    """--table-half-width: the training env's table (and its walls in the frames) is that wide, its blocks start
    spread over it, and the file says so; a table too small for 5 blocks is a clear error."""
    path = tmp_path / "wide.hdf5"
    bs.generate_dataset(str(path), num_trajectories=2, seed=2, table_half_width=0.6)
    data = envs.load_dataset("block_stacking", str(path), state_blocks=None)
    with h5py.File(path) as f:
        assert f.attrs["table_half_width"] == 0.6 and "table half width 0.6 m" in f.attrs["source"]
    env = bs.training_env(image_obs=False, half_width=0.6)
    assert env.half_width == 0.6 and bs.training_env(image_obs=False).half_width == 0.4
    np.testing.assert_array_equal(data["images"][5, 3:], env._frame(data["states"][5]))
    spreads = [np.ptp(bs.training_env(image_obs=False, half_width=w).reset(seed=k)[0]["state"][3::3])
               for w in (0.4, 0.6) for k in range(20)]
    assert max(spreads[20:]) > 0.68 >= max(spreads[:20])  # the 0.8 m table's blocks span at most 0.68 m
    with pytest.raises(ValueError, match="too small"):
        bs.generate_dataset(str(tmp_path / "narrow.hdf5"), num_trajectories=1, table_half_width=0.2)


def test_data_from_older_physics_is_refused_and_the_default_file_is_made_again(tmp_path, monkeypatch):
    path = tmp_path / "bs.hdf5"
    bs.generate_dataset(str(path), num_trajectories=1, seed=0)
    with h5py.File(path, "r") as f:
        assert f.attrs["physics_version"] == bs.PHYSICS_VERSION
    data = bs.load_dataset(str(path), images=False)
    assert len(data["traj_ends"]) == 1 and f"physics {bs.PHYSICS_VERSION}" in data["source"]
    with h5py.File(path, "r+") as f:
        del f.attrs["physics_version"]  # as every file written before the carriage's force limit
    with pytest.raises(ValueError, match="older version of the env's physics.*python -m envs.block_stacking"):
        bs.load_dataset(str(path), images=False)
    # the default path is remade instead of refused
    made = []

    def remake(out, **kwargs):  # stands in for the few-minute collection: stamps the file as current
        made.append(out)
        with h5py.File(out, "r+") as f:
            f.attrs["physics_version"] = bs.PHYSICS_VERSION

    monkeypatch.setattr(bs, "DEFAULT_DATASET", path)
    monkeypatch.setattr(bs, "generate_dataset", remake)
    assert len(bs.load_dataset("auto", images=False)["traj_ends"]) == 1 and made == [str(path)]
    # a file from elsewhere (no source of ours) is never judged by our physics version
    with h5py.File(path, "r+") as f:
        del f.attrs["physics_version"]
        f.attrs["source"] = "someone's own block stacking data"
    assert len(bs.load_dataset(str(path), images=False)["traj_ends"]) == 1


def test_bad_inputs_give_clear_one_line_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m envs.block_stacking"):
        bs.load_dataset(str(tmp_path / "missing.hdf5"))
    junk = tmp_path / "junk.hdf5"
    junk.write_text("not hdf5")
    with pytest.raises(ValueError, match="not a readable HDF5"):
        bs.load_dataset(str(junk))
    partial = tmp_path / "partial.hdf5"
    with h5py.File(partial, "w") as f:
        f["states"] = np.zeros((4, 18), np.float32)
    with pytest.raises(ValueError, match="lacks"):
        bs.load_dataset(str(partial))
    env = bs.make_env(seed=0, num_blocks=2, half_width=0.4, image_obs=False)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        env.step(np.zeros(2))
    with pytest.raises(ValueError, match="finite"):
        env.step(np.array([np.nan, 0.0, 1.0]))
    with pytest.raises(ValueError, match="render_mode"):
        env.render()
    with pytest.raises(ValueError, match="num_blocks"):
        bs.make_env(num_blocks=0)
    with pytest.raises(ValueError, match="too small"):
        bs.make_env(num_blocks=11, half_width=0.4)
    with pytest.raises(ValueError, match="choose one of"):
        envs.make_env("block_stack")
    cli = subprocess.run([sys.executable, "-m", "envs.block_stacking", "--random-fraction", "2",
                          "--out", str(tmp_path / "x.hdf5")], capture_output=True, text=True)
    assert cli.returncode == 2 and "random-fraction must be in [0, 1]" in cli.stderr
    cli = subprocess.run([sys.executable, "-m", "envs.block_stacking", "--low-subgoal-prob", "-0.1",
                          "--out", str(tmp_path / "x.hdf5")], capture_output=True, text=True)
    assert cli.returncode == 2 and "low-subgoal-prob must be in [0, 1]" in cli.stderr
    assert "Traceback" not in cli.stderr


def import_block_stacking_benchmark():
    """benchmarks/block_stacking.py as a module (benchmarks/ is not a package)."""
    import importlib.util
    import os
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "block_stacking.py")
    spec = importlib.util.spec_from_file_location("block_stacking_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_skill_checkpoint(model, image_shape=None, prior_input="state", **extra):
    """A spirl_vae.py-style checkpoint dict around a tiny block-stacking SkillModel (36-dim states, 3 actions,
    4 latent dims, H = 10), for the benchmark's diagnostics."""
    return {"env": "block_stacking", "state_dim": 36, "action_dim": 3, "latent_dim": 4, "hidden_dim": 16,
            "prior_layers": 2, "image_shape": image_shape, "prior_input": prior_input, "state_conditioned_decoder": False,
            "skill_horizon": 10, "model": model.state_dict(), **extra}


def test_carry_destinations_tell_a_delivery_onto_the_tower_from_one_elsewhere():
    """benchmarks/block_stacking.py's carry_destinations() on hand-made states of three blocks: a 2-block tower at
    x 0.3 and a block picked up at x 0.1 (0.2 m from the tower: inside the 0.48 m view), carried over and let go
    either on top of the tower (landed, on the tower) or onto the table beside it (not landed)."""
    benchmark = import_block_stacking_benchmark()

    def episode(drop_z):
        states = []
        for t in range(20):  # held: fingers closed around block 2, which moves from x 0.1 to 0.3 at 0.2 m height
            x = 0.1 + 0.2 * min(t, 10) / 10
            states.append([x, 0.2, 0.4, 0.3, H, 0.0, 0.3, 3 * H, 0.0, x, 0.2, 0.0])
        for _ in range(15):  # let go: fingers open, the block rests at drop_z
            states.append([0.3, 0.25, 1.0, 0.3, H, 0.0, 0.3, 3 * H, 0.0, 0.3 if drop_z > H else 0.4, drop_z, 0.0])
        return np.array(states, dtype=np.float32)

    (onto,) = benchmark.carry_destinations(episode(5 * H))
    assert onto["landed"] and onto["on_tower"]
    assert abs(onto["dest_dx"] - 0.2) < 1e-6 and abs(onto["tower_dx"] - 0.2) < 1e-6
    (beside,) = benchmark.carry_destinations(episode(H))
    assert not beside["landed"] and not beside["on_tower"] and beside["dest_dx"] is None
    summary = benchmark.destinations_summary([onto, beside])
    assert "ended on another block 1 / 2" in summary and "ended on it when it was in view 1 / 2" in summary


def test_fetches_after_release_tell_a_fetch_beyond_the_view_from_staying():
    """benchmarks/block_stacking.py's fetches_after_release() on hand-made states of three blocks: block 1 carried
    onto block 0 at x 0 and let go there, block 2 standing free at x 0.6 (out of the 0.48 m view) or 0.2 (in it);
    then either the gripper stays, or it goes and picks block 2 up 80 steps after the let-go."""
    benchmark = import_block_stacking_benchmark()

    def episode(far_x, fetch):
        states = []
        for t in range(20):  # block 1 in the closed fingers, from x 0.1 to above block 0 at x 0
            x = 0.1 - 0.1 * min(t, 10) / 10
            states.append([x, 0.2, 0.4, 0.0, H, 0.0, x, 0.2, 0.0, far_x, H, 0.0])
        for _ in range(80):  # let go: block 1 rests on block 0, fingers open
            states.append([0.0, 0.25, 1.0, 0.0, H, 0.0, 0.0, 3 * H, 0.0, far_x, H, 0.0])
        for _ in range(20):  # at block 2: held in the closed fingers, or the gripper still by the tower
            states.append([far_x, 0.2, 0.4, 0.0, H, 0.0, 0.0, 3 * H, 0.0, far_x, 0.2, 0.0] if fetch else
                          [0.0, 0.25, 1.0, 0.0, H, 0.0, 0.0, 3 * H, 0.0, far_x, H, 0.0])
        return np.array(states, dtype=np.float32)

    (fetched,) = benchmark.fetches_after_release(episode(0.6, fetch=True))
    assert not fetched["free_in_view"] and abs(fetched["next_dx"] - 0.6) < 1e-6 and abs(fetched["reach"] - 0.6) < 1e-6
    (stayed,) = benchmark.fetches_after_release(episode(0.6, fetch=False))
    assert not stayed["free_in_view"] and stayed["next_dx"] is None and stayed["reach"] == 0.0
    (in_view,) = benchmark.fetches_after_release(episode(0.2, fetch=False))
    assert in_view["free_in_view"] and in_view["next_dx"] is None
    assert benchmark.fetches_after_release(episode(0.6, fetch=True)[:110]) == []  # < 100 steps left after the let-go
    summary = benchmark.fetches_summary([fetched, stayed, in_view])
    assert "none in view: 2, followed by another pick-up 1 (0.50), of a block out of view at the release 1" in summary
    assert "median 0.00 m, beyond the view's half width (0.24 m) in 0.33" in summary
    assert "0 let-gos (carries >= 5 steps, >= 50 steps left); a free block in view 5 steps later" in \
        benchmark.fetches_summary([], settle=5, min_left=50)  # the text names the values measured with


def test_policy_diagnosis_finds_the_carry_and_the_free_blocks_of_a_scripted_stack():
    """benchmarks/block_stacking.py --policy-rollouts: on one scripted stack, carries() reports one carry of the
    source block from its x to the target's, free_blocks_in_view() counts a block as free only while it stands
    alone on the table, and in view only within the policy's 0.48 m window, and reward_parts() splits the return."""
    benchmark = import_block_stacking_benchmark()
    env = bs.BlockStackingEnv(num_blocks=2, layout="ground", half_width=0.8, layout_seed=None, image_obs=False)
    env.reset(seed=0)
    start = place_blocks(env, [[-0.2, H, 0.0], [0.2, H, 0.0]], gripper_xz=(-0.2, 0.4))
    records, (source, target) = run_scripted_stack(env)
    states = np.array([start] + [r[0] for r in records])
    long_carries = [c for c in benchmark.carries(states) if c[1] - c[0] >= 5]
    assert len(long_carries) == 1
    first, last, block, x_from, x_to = long_carries[0]
    assert block == source and 0 < first < last < len(states) - 1
    assert abs(x_from - start[3 + 3 * source]) < 0.01 and abs(x_to - start[3 + 3 * target]) < 0.01
    # a lone block 0.5 m from the gripper: free but out of view; a 2-block tower: no free block at all
    far = np.array([0.0, 0.4, 1.0, 0.5, H, 0.0, -0.5, H, 0.0], dtype=np.float32)  # gripper at x 0, blocks at +-0.5
    in_view, nearest = benchmark.free_blocks_in_view(np.array([start, far, states[-1]]))
    assert in_view.tolist() == [True, False, False]
    assert nearest[0] < 0.01 and abs(nearest[1] - 0.5) < 1e-6 and np.isinf(nearest[2])
    # parked_low(): the gripper down on the table beside the blocks, not around one and not above them
    beside = far.copy()
    beside[1] = 0.03
    around = beside.copy()
    around[0] = 0.5
    assert benchmark.parked_low(np.array([far, beside, around])).tolist() == [False, True, False]
    assert not benchmark.parked_low(states).any()  # the scripted stack goes down only around a block
    # graspable_free_blocks(): the open fingers (outer faces 6 cm from the centre) need a neighbour on the table more
    # than 9 cm away; a block on a tower is not free, and one moved since the start is counted but not as untouched
    assert benchmark.graspable_free_blocks(start, start) == (2, 2)  # 0.4 m apart
    close = far.copy()
    close[6] = 0.5 - 0.08  # the second block 8 cm from the first: the fingers cannot go down between them
    assert benchmark.graspable_free_blocks(close, far) == (0, 0)
    close[6] = 0.5 - 0.10
    assert benchmark.graspable_free_blocks(close, far) == (2, 1)
    assert benchmark.graspable_free_blocks(states[-1], start) == (0, 0)  # one 2-block tower, nothing free
    # reward_parts() replays the states through the env's reward: its parts add up to the return the env paid, the
    # lift part is 1 per step from the lift to the delivery, and both flags are set on the one moved block
    rewards = np.array([r[1] for r in records])
    parts = benchmark.reward_parts(env, states)
    np.testing.assert_allclose(parts["return_lift"] + parts["return_delivery"] + parts["return_height"], rewards.sum())
    lifted = np.array([r[2]["blocks_lifted"] - r[2]["blocks_delivered"] for r in records])
    assert parts["return_lift"] == bs.LIFTED_REWARD * lifted.sum() > 10
    assert parts["return_height"] > 0 and parts["blocks_lifted_end"] == parts["blocks_delivered_end"] == 1
    assert parts["stacked_never_lifted_end"] == 0  # the one block on another was carried there
    # a block that ends up on another without a grasp (teleported here, pushed up in a run) is counted, and earns
    # the tower term nothing
    pushed = place_blocks(env, [[0.2, H, 0.0], [0.2, 3 * H, 0.0]], gripper_xz=(-0.5, 0.4))
    parts = benchmark.reward_parts(env, np.array([start, pushed]))
    assert parts["stacked_never_lifted_end"] == 1 and parts["return_height"] == 0 and parts["blocks_lifted_end"] == 0


def test_downstream_blocks_start_in_the_authors_row_within_the_grippers_reach():
    """make_env(): the authors' HighStack11StackEnvV0 placement scaled to 6 cm blocks (their 11 blocks 0.2 m apart
    at y = -1.0 .. 1.0 on a 2.4 m table -> ours 0.15 m apart at -0.75 .. 0.75 on 1.8 m), the same at every reset,
    every block 1.5 block widths inside the gripper's reach."""
    env = bs.make_env(seed=0, image_obs=False)
    first = env.state()[3:].reshape(-1, 3)
    np.testing.assert_allclose(first[:, 0], np.linspace(-0.75, 0.75, 11), atol=1e-3)
    np.testing.assert_allclose(first[:, 1], H, atol=1e-3)
    assert env.half_width == pytest.approx(0.9)
    assert env.x_limit - np.abs(first[:, 0]).max() == pytest.approx(3 * H, abs=1e-3)
    env.reset(seed=123)
    np.testing.assert_allclose(env.state()[3:].reshape(-1, 3), first, atol=1e-6)


def test_blocks_stop_within_the_grippers_reach_and_the_gripper_still_reaches_its_limit():
    """A block thrown at a wall stops with its centre at most at the gripper's limit (invisible block-only barriers
    half a block outside the reach), so the gripper can always centre over it; the open fingers pass the barrier."""
    env = bs.make_env(seed=0, num_blocks=2, image_obs=False)
    place_blocks(env, [[-env.x_limit + 0.1, H, 0.0], [env.x_limit - 0.1, H, 0.0]], gripper_xz=(0.0, 0.4))
    env.data.qvel[4], env.data.qvel[7] = -2.0, 2.0  # slide both blocks hard toward the walls
    for _ in range(40):
        state = env.step(np.array([0.0, 0.0, 1.0]))[0]["state"]
    blocks = state[3:].reshape(-1, 3)
    assert blocks[0, 0] >= -env.x_limit - 1e-3 and blocks[1, 0] <= env.x_limit + 1e-3
    assert abs(blocks[0, 0]) > env.x_limit - 0.01 and abs(blocks[1, 0]) > env.x_limit - 0.01  # they did reach it
    for _ in range(60):  # open gripper to the left limit, over the block at the barrier
        state = env.step(np.array([-1.0, 0.0, 1.0]))[0]["state"]
    assert state[0] == pytest.approx(-env.x_limit, abs=2e-3)


def test_pushing_the_row_into_the_barrier_does_not_press_blocks_into_one_another():
    """A policy learned to bulldoze the row against the block barrier: with an unlimited carriage (≈50 N) blocks sank
    up to 16 mm into one another and shot up into piles. With the carriage's force limit, the same push (fingers
    down between two blocks, then 80 steps to the right, then up) keeps every block-block contact within 3 mm and no
    block is thrown above the height of one block resting on another."""
    env = bs.make_env(seed=0, image_obs=False)
    state = env.reset(seed=0)[0]["state"]
    block_geoms = {mujoco.mj_name2id(env.model, mujoco.mjtObj.mjOBJ_GEOM, f"block{i}") for i in range(env.num_blocks)}
    deepest, highest, rightmost = 0.0, 0.0, 0.0
    for t in range(150):
        if t < 40:  # over the gap between two blocks of the row at x = 0.37 m, then down to the table
            action = [np.clip((0.37 - state[0]) / bs.STEP_SCALE, -1, 1), 0.0 if t < 20 else -1.0, 0.45]
        else:  # push right into the barrier, then lift away
            action = [1.0, 0.0, 0.45] if t < 120 else [0.0, 1.0, 0.45]
        state = env.step(np.asarray(action, dtype=np.float32))[0]["state"]
        contacts = [env.data.contact[i] for i in range(env.data.ncon)]
        deepest = min([deepest] + [c.dist for c in contacts if c.geom1 in block_geoms and c.geom2 in block_geoms])
        highest = max(highest, float(state[3:].reshape(-1, 3)[:, 1].max()))
        rightmost = max(rightmost, float(state[3:].reshape(-1, 3)[:, 0].max()))
    assert rightmost > env.x_limit - 0.01  # the push pressed the row against the barrier
    assert deepest > -0.003 and highest < 4 * H  # unlimited: 14.5 mm deep, a block thrown to 0.149 m


def test_data_skills_replay_the_script_raw_and_through_a_skill_model():
    """benchmarks/block_stacking.py --data-skills: the raw mode is the scripted data policy itself (its 3 stacks
    all stand in the row); the autoencoded mode runs the same episodes through an open-loop skill model and reports
    the decoding error per action dim; a closed-loop model is refused."""
    import torch

    import spirl_vae

    benchmark = import_block_stacking_benchmark()
    torch.manual_seed(0)
    model = spirl_vae.SkillModel(state_dim=36, action_dim=3, latent_dim=4, hidden_dim=16, prior_layers=2)
    ckpt = tiny_skill_checkpoint(model, action_low=np.array([-1, -1, 0], np.float32), action_high=np.ones(3, np.float32))
    out = benchmark.data_skills(ckpt, episodes=1, seed=0)
    assert out["raw"]["final"] == [3] and out["raw"]["error"] is None
    assert len(out["autoencoded"]["final"]) == 1 and out["autoencoded"]["error"].shape == (3,)
    assert (out["autoencoded"]["error"] > 0).all()  # an untrained decoder does not return the plan
    with pytest.raises(SystemExit, match="open-loop"):
        benchmark.data_skills({**ckpt, "state_conditioned_decoder": True}, episodes=1, seed=0)


def test_data_skills_runs_the_view_limited_script_and_refuses_an_unknown_one():
    """--data-skills --data-skill-script view-limited: the raw mode is ViewLimitedStacker in the row, which builds a
    tower at the wall (7 blocks stacked in this seed's first episode); an unknown script name is refused."""
    import torch

    import spirl_vae

    benchmark = import_block_stacking_benchmark()
    torch.manual_seed(0)
    model = spirl_vae.SkillModel(state_dim=36, action_dim=3, latent_dim=4, hidden_dim=16, prior_layers=2)
    ckpt = tiny_skill_checkpoint(model, action_low=np.array([-1, -1, 0], np.float32), action_high=np.ones(3, np.float32))
    out = benchmark.data_skills(ckpt, episodes=1, seed=0, script="view-limited")
    assert out["raw"]["final"][0] >= 3 and out["raw"]["error"] is None
    assert out["autoencoded"]["error"].shape == (3,)
    with pytest.raises(SystemExit, match="view-limited"):
        benchmark.data_skills(ckpt, episodes=1, seed=0, script="tower")


def test_scripted_return_is_split_into_the_rewards_parts_and_the_data_policy_stacks():
    """benchmarks/block_stacking.py --scripted-return: one 1000-step episode of the data policy in the row; its return
    is the sum of the lift, delivery and height parts, and its 3 stacks stand at the end."""
    benchmark = import_block_stacking_benchmark()
    (row,) = benchmark.scripted_returns(1, seed=0, num_stacks=3)
    assert row["final"] == 3 and row["blocks_lifted_end"] == 3
    assert row["return"] == pytest.approx(row["return_lift"] + row["return_delivery"] + row["return_height"], rel=1e-9)
    assert row["return_height"] > row["return_delivery"] > row["return_lift"] > 0


def test_decision_images_are_the_frames_the_policy_saw():
    """benchmarks/block_stacking.py's decision_images re-draws, from an episode's low-dim states, the stacked front views
    the env gave at every H-th step (the reset's view twice): what a policy saw when it chose each skill."""
    benchmark = import_block_stacking_benchmark()
    env = bs.make_env(seed=3)
    obs, _ = env.reset(seed=3)
    rng = np.random.default_rng(3)
    states, seen = [obs["state"]], [obs["image"]]
    for t in range(1, 26):
        obs = env.step(rng.uniform(env.action_space.low, env.action_space.high))[0]
        states.append(obs["state"])
        if t % 10 == 0:
            seen.append(obs["image"])
    images = benchmark.decision_images(env, np.array(states), horizon=10)
    assert images.shape == (3, 6, 32, 32) and images.dtype == np.uint8
    np.testing.assert_array_equal(images, np.array(seen))


def test_other_table_moves_the_walls_in_what_spirl_sac_builds_and_sees():
    """benchmarks/block_stacking.py --policy-half-width / --policy-drawn-half-width (other_table): inside, the env
    spirl_sac.py builds has the wider table (the gripper reaches further) or, drawn only, the same physics with
    frames that show no wall where the row's end block stands; outside, the default comes back."""
    benchmark = import_block_stacking_benchmark()
    wall = bs.WALL.astype(np.uint8)

    def walls_and_reach(env):  # wall pixels in the frame at the row's end block, then the gripper's leftmost x
        obs, _ = env.reset(seed=0)
        for _ in range(60):  # to x = -0.75 m, the end block's x
            obs = env.step(np.array([np.clip((-0.75 - obs["state"][0]) / 0.025, -1, 1), 0.0, 1.0], np.float32))[0]
        frame = obs["image"][3:].transpose(1, 2, 0)
        walls = int(np.all(np.abs(frame.astype(int) - wall) <= 2, axis=-1).sum())
        for _ in range(60):
            obs = env.step(np.array([-1.0, 0.0, 1.0], dtype=np.float32))[0]
        return walls, float(obs["state"][0])

    default_walls, default_reach = walls_and_reach(envs.make_env("block_stacking", seed=0))
    with benchmark.other_table(half_width=1.2):
        wide = envs.make_env("block_stacking", seed=0)
        wide_walls, wide_reach = walls_and_reach(wide)
    with benchmark.other_table(drawn_half_width=1.2):
        drawn = envs.make_env("block_stacking", seed=0)
        drawn_walls, drawn_reach = walls_and_reach(drawn)
    assert wide.half_width == 1.2 and drawn.half_width == bs.make_env().half_width
    assert default_walls > 0 and wide_walls == 0 and drawn_walls == 0
    assert wide_reach < default_reach - 0.2 and abs(drawn_reach - default_reach) < 1e-6
    assert walls_and_reach(envs.make_env("block_stacking", seed=0)) == (default_walls, default_reach)


def test_policy_and_prior_spread_is_zero_for_the_prior_and_the_analytic_kl_otherwise():
    """--policy-rollouts' last line: a policy equal to its prior has the prior's sigma and KL 0 at every decision; another
    policy's KL summed over latent dims equals torch.distributions' KL between the two Gaussians on the same frames."""
    import torch

    import spirl_vae

    benchmark = import_block_stacking_benchmark()
    torch.manual_seed(0)
    model = spirl_vae.SkillModel(state_dim=36, action_dim=3, latent_dim=4, hidden_dim=16, prior_layers=2,
                                 image_shape=(6, 32, 32))
    skill_ckpt = tiny_skill_checkpoint(model, image_shape=(6, 32, 32), prior_input="image")
    env = bs.make_env(seed=0)
    rng = np.random.default_rng(0)
    states = [env.reset(seed=0)[0]["state"]] + [env.step(rng.uniform(env.action_space.low, env.action_space.high))[0]["state"]
                                               for _ in range(30)]
    trajectories = [np.array(states)]
    same = benchmark.policy_and_prior_spread({"skill_model": skill_ckpt, "policy": model.skill_prior.state_dict()}, trajectories)
    assert len(same["kl_sum"]) == 3
    np.testing.assert_allclose(same["kl_sum"], 0.0, atol=1e-6)
    np.testing.assert_allclose(same["policy_sigma"], same["prior_sigma"], rtol=1e-6)

    torch.manual_seed(1)
    other = spirl_vae.SkillModel(state_dim=36, action_dim=3, latent_dim=4, hidden_dim=16, prior_layers=2,
                                 image_shape=(6, 32, 32)).skill_prior.eval()
    spread = benchmark.policy_and_prior_spread({"skill_model": skill_ckpt, "policy": other.state_dict()}, trajectories)
    images = torch.as_tensor(benchmark.decision_images(env, trajectories[0], 10))
    prior = model.skill_prior.eval()
    with torch.no_grad():
        (mu_pi, ls_pi), (mu_p, ls_p) = other(images), prior(images)
    expected = torch.distributions.kl_divergence(torch.distributions.Normal(mu_pi, ls_pi.exp()),
                                                 torch.distributions.Normal(mu_p, ls_p.exp())).sum(-1)
    np.testing.assert_allclose(spread["kl_sum"], expected.numpy(), rtol=1e-4)
    assert (spread["kl_sum"] > 0).all()
    np.testing.assert_allclose(spread["policy_sigma"], ls_pi.exp().mean(-1).numpy(), rtol=1e-5)


def test_prior_mean_skill_rollouts_execute_the_mean_and_sampled_ones_a_sample(monkeypatch):
    """--prior-rollouts --prior-mean-skill: every skill is the prior's mean (2 tanh(mu)), no sample is drawn; without it
    every skill is spirl_sac's squashed sample. Checked by recording what execute_skill is given over a whole episode."""
    import torch

    import spirl_sac
    import spirl_vae

    benchmark = import_block_stacking_benchmark()
    torch.manual_seed(0)
    model = spirl_vae.SkillModel(state_dim=36, action_dim=3, latent_dim=4, hidden_dim=16, prior_layers=2)
    data = bs.make_env(seed=0, image_obs=False)
    ckpt = tiny_skill_checkpoint(model, image_shape=(6, 32, 32), state_mean=np.zeros(36, np.float32),
                                 state_std=np.ones(36, np.float32), action_low=data.action_space.low,
                                 action_high=data.action_space.high)
    executed, sampled = [], []
    execute_skill, squashed_sample = spirl_sac.execute_skill, spirl_sac.squashed_sample

    def record_execute(env, obs, z, *rest):
        with torch.no_grad():
            mu, _ = model.skill_prior.eval()(torch.as_tensor(obs["state"]).unsqueeze(0))
        executed.append((z, 2 * torch.tanh(mu)[0].numpy()))
        return execute_skill(env, obs, z, *rest)

    def record_sample(mu, log_sigma, generator=None):
        sampled.append(squashed_sample(mu, log_sigma, generator))
        return sampled[-1]

    monkeypatch.setattr(spirl_sac, "execute_skill", record_execute)
    monkeypatch.setattr(spirl_sac, "squashed_sample", record_sample)
    (row,) = benchmark.decoded_prior_rollouts(ckpt, 1, 0, 11, mean_skill=True)
    assert len(executed) == 100 and not sampled  # 1000 steps of 10-step skills
    for z, mean in executed:
        np.testing.assert_allclose(z, mean, rtol=1e-5, atol=1e-6)
    executed.clear()
    benchmark.decoded_prior_rollouts(ckpt, 1, 0, 11, mean_skill=False)
    assert len(sampled) == 100
    np.testing.assert_array_equal(executed[0][0], sampled[0][0].numpy())
    assert not np.allclose(executed[0][0], executed[0][1])
    assert 0 <= row["final"] <= row["best"] and 0 <= row["lifted"] <= 1


def test_snapshot_and_restore_replay_a_branch_exactly():
    """--critic-probe's branch rollouts: after restore(snapshot) the env takes the same steps as from the snapshot the
    first time (states, rewards, reward flags, frames, time limit), in the middle of a scripted stack (a block held)."""
    benchmark = import_block_stacking_benchmark()
    env = bs.make_env(seed=0, max_episode_steps=160)
    stacker = bs.ScriptedStacker(env, np.random.default_rng(0), num_stacks=1, action_noise=0.0, subgoal_prob=0.0)
    obs, _ = env.reset(seed=0)
    for _ in range(120):
        obs, *_ = env.step(stacker.act(obs["state"]))
    saved = benchmark.snapshot(env)
    rng = np.random.default_rng(1)
    actions = rng.uniform(env.action_space.low, env.action_space.high, (40, 3))

    def branch():
        out = [env.step(a) for a in actions]
        return (np.array([o[0]["state"] for o in out]), np.array([o[0]["image"] for o in out]), [o[1] for o in out],
                np.array([o[4]["reward_flags"] for o in out]), [o[3] for o in out])

    first = branch()
    assert first[3][0].any() and first[4][-1] and not any(first[4][:-1])  # flags set by then; the limit at step 160
    benchmark.restore(env, saved)
    second = branch()
    for a, b in zip(first, second):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_nudge_probe_moves_above_a_block_without_touching_any_and_scores_the_branch():
    """--nudge-probe: the scripted move (move_gripper) brings the open gripper over the row to 8 cm above a block's top
    without moving a block; nudge_outcome tells a block put on the tallest tower (lifted, on the tower, tower +1) from
    the control's tower left alone."""
    benchmark = import_block_stacking_benchmark()
    env = bs.make_env(seed=0, image_obs=False)
    obs, _ = env.reset(seed=0)
    start = obs["state"].copy()
    assert np.abs(start[3::3] - 0.45).min() < 1e-3  # the row has a block at x = 0.45 m
    waypoints = [(float(start[0]), 0.35, 1.0, 0.01, 0), (0.45, 0.35, 1.0, 0.01, 0), (0.45, 2 * H + 0.08, 1.0, 0.01, 0)]
    obs, moved, *_ = benchmark.move_gripper(env, obs, waypoints, max_steps=80)
    assert 20 < len(moved) < 80
    np.testing.assert_allclose(obs["state"][:2], [0.45, 2 * H + 0.08], atol=0.012)
    assert obs["state"][2] > 0.9  # fingers open
    np.testing.assert_allclose(obs["state"][3:], start[3:], atol=1e-3)  # no block moved
    # the grasp branch's script: down to the block, close for 6 steps, up: the block comes along in the fingers
    target = int(np.argmin(np.abs(start[3::3] - 0.45)))
    grasp = [(0.45, H, 1.0, 0.004, 0), (0.45, H, 0.0, 0.004, 6), (0.45, 0.35, 0.0, 0.02, 0)]
    obs, moved, *_ = benchmark.move_gripper(env, obs, grasp, max_steps=160)
    assert len(moved) < 160
    state = obs["state"]
    assert bs.BlockStackingEnv._lifted_blocks(state, bs.tower_heights(state[3:].reshape(-1, 3)))[target]
    assert abs(state[3 + 3 * target + 1] - 0.35) < 0.03  # carried up with the gripper

    # hand-made branch: a 2-block tower at x 0 (blocks 0, 1), block 2 at x 0.3 picked up, carried and put on it
    tower = [0.0, H, 0.0, 0.0, 3 * H, 0.0]
    before = np.array([0.3, 0.3, 1.0, *tower, 0.3, H, 0.0], np.float32)
    carried = [np.array([x, 0.3, 0.4, *tower, x, 0.3, 0.0], np.float32) for x in np.linspace(0.3, 0.0, 10)]
    placed = [np.array([0.0, 0.3, 1.0, *tower, 0.0, 5 * H, 0.0], np.float32)] * 5
    done = benchmark.nudge_outcome(before, carried + placed, target=2)
    assert done["lifted"] and done["on_tower"] and done["tower_change"] == 1
    assert abs(done["gripper_from_tower_end"]) < 1e-6 and 0 < done["near_block"] < 0.2
    idle = benchmark.nudge_outcome(before, [before] * 15, target=2)
    assert not idle["lifted"] and not idle["on_tower"] and idle["tower_change"] == 0 and idle["near_block"] == 1.0


def test_view_limited_controller_decides_from_the_window_and_stacks_the_row():
    """--view-limited-script: the memoryless controller sees only the blocks in the 0.48 m window, the wall when it is
    in it, and whether it holds a block. Empty-handed with no free block in view it travels right; with one in view it
    grasps the nearest; holding a block away from the wall it travels left; at the wall it puts the block on the column
    nearest the wall. In one 1000-step episode of the row it stacks at least 3 blocks (the issue's goal)."""
    benchmark = import_block_stacking_benchmark()
    half_width = 0.9

    def state(gx, gz, opening, blocks):
        return np.array([gx, gz, opening, *np.ravel(blocks)], np.float32)

    row = [[x, H, 0.0] for x in (-0.75, -0.3, 0.3)]
    first = bs.view_limited_plan(state(0.0, 0.3, 1.0, row), half_width)  # nothing within 0.24 m
    assert len(first) == 1 and first[0][0] > 0.05 and first[0][2] == 1.0
    grasp = bs.view_limited_plan(state(0.2, 0.3, 1.0, row), half_width)  # the block at 0.3 in view
    assert abs(grasp[-2][0] - 0.3) < 1e-6 and grasp[-2][2] == 0.0  # closes on it
    held = [[-0.75, H, 0.0], [-0.3, H, 0.0], [0.0, 0.3, 0.0]]  # block 2 in the closed fingers at x 0
    carry = bs.view_limited_plan(state(0.0, 0.3, 0.4, held), half_width)
    assert len(carry) == 1 and carry[0][0] < -0.05 and carry[0][2] == 0.0
    held_at_wall = [[-0.75, H, 0.0], [-0.75, 3 * H, 0.0], [-0.6, H, 0.0], [-0.7, 0.35, 0.0]]
    place = bs.view_limited_plan(state(-0.7, 0.35, 0.4, held_at_wall), half_width)
    assert abs(place[0][0] + 0.75) < 1e-6 and abs(place[1][1] - (3 * H + 2 * H + 0.004)) < 1e-6 and place[2][2] == 1.0

    (episode,) = benchmark.view_limited_episodes(1, 0)
    assert episode["best"] >= 3
