"""envs/maze.py: the authors' layouts, the downstream task, planner + controller, local views, HDF5 data."""

import hashlib
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import envs
from envs import maze

REPO = Path(__file__).resolve().parent.parent

# Held-out check: the authors' own generator (kpertsch/d4rl, d4rl/pointmaze/maze_layouts.py,
# rand_layout(seed=0, size=40), run outside this repo) gives this 42x42 grid for their randMaze0S40;
# row x as 42 bits, 1 = wall, y = 0 at the most significant bit.
AUTHORS_RANDMAZE0S40 = [
    "3ffffffffff", "20004000201", "24004680221", "24405effa21", "24404680271", "24e04400201", "24004404271",
    "2ee04684221", "2043fef4221", "2e404684221", "24484404221", "244844042a1", "2448e4ffee1", "24480e042a1",
    "2448e004229", "24484e04709", "24480544009", "241fff74709", "2008054e209", "20080400009", "201d000e009",
    "2005ffc401d", "221d0000401", "2208000041d", "22080000409", "36088000409", "37fffc00409", "3717fffc409",
    "20148000409", "27009400409", "2203f7ff409", "22009400401", "22008500401", "2203fdfce01", "2201c500001",
    "22000000e01", "2201c00a401", "20289ffbc01", "2feffe0a401", "20288000401", "20000000401", "3ffffffffff"]
# sha256 of the padded uint8 grids of the authors' rand_layout(seed, size) (first 16 hex digits)
AUTHORS_HASHES = {(1, 20): "44c38a197b29faf8", (7, 20): "22fbb0fe7373aabb", (3, 10): "39efcd74a4e3c60b"}


def authors_grid():
    return np.array([[int(bit) for bit in format(int(row, 16), "042b")] for row in AUTHORS_RANDMAZE0S40], np.uint8)


def test_generator_reproduces_the_authors_layouts_and_is_seeded():
    layout = maze.downstream_layout()
    assert layout.shape == (42, 42) and layout.dtype == np.uint8
    mismatches = np.argwhere(layout != authors_grid())
    assert len(mismatches) == 0, f"cells differing from the authors' randMaze0S40: {mismatches[:10].tolist()}"
    for (seed, size), digest in AUTHORS_HASHES.items():
        assert hashlib.sha256(maze.generate_layout(size, seed).tobytes()).hexdigest()[:16] == digest, (seed, size)
    for size in (maze.TRAIN_SIZE, maze.DOWNSTREAM_SIZE):
        for seed in range(5):
            grid = maze.generate_layout(size, seed)
            assert (grid == maze.generate_layout(size, seed)).all()  # deterministic per seed
            assert grid[0].all() and grid[-1].all() and grid[:, 0].all() and grid[:, -1].all()
            assert maze.WALL_COVERAGE <= grid[1:-1, 1:-1].mean() < 0.4
    assert (maze.generate_layout(20, 7) != maze.generate_layout(20, 8)).any()


def test_downstream_task_start_goal_and_path():
    layout = maze.downstream_layout()
    assert layout[maze.DOWNSTREAM_START] == 0 and layout[maze.DOWNSTREAM_GOAL] == 0
    assert maze.DOWNSTREAM_START == (10, 24) and maze.DOWNSTREAM_GOAL == (18, 8)
    path = maze.plan_path(layout, maze.DOWNSTREAM_START, maze.DOWNSTREAM_GOAL)
    assert len(path) - 1 == 34  # the shortest 4-connected path: 34 moves
    assert maze.downstream_free_cell_count() == int((layout == 0).sum()) == 1182


def test_reset_is_exactly_at_the_start_and_walls_are_where_the_grid_says():
    env = envs.make_env("maze", seed=0, images=False)
    assert env.max_episode_steps == maze.EPISODE_LENGTH == 2000 and maze.METRIC == "success"
    for seed in (0, 1, 2):
        obs, info = env.reset(seed=seed)
        np.testing.assert_array_equal(obs["state"], np.array([10.0, 24.0, 0.0, 0.0], np.float32))
        assert info["success"] == 0.0
    # pushing from the start: the point (radius 0.1) stops at the faces of the nearest wall cells, where
    # wall cell k covers [k - 0.7, k + 0.3) (the authors' qpos convention)
    layout = env.layout
    for axis, sign in ((0, 1), (0, -1), (1, 1), (1, -1)):
        step = np.eye(2, dtype=int)[axis] * sign
        cell = np.array(maze.DOWNSTREAM_START)
        while layout[tuple(cell + step)] == 0:
            cell += step
        face = cell[axis] + (0.3 if sign > 0 else -0.7)
        env.reset()
        for _ in range(300):
            obs, *_ = env.step(step.astype(float))
        assert obs["state"][axis] == pytest.approx(face - 0.1 * sign, abs=0.01), (axis, sign)
    assert tuple(maze.world_to_cell([10.29, 24.0])) == (10, 24) and tuple(maze.world_to_cell([10.31, 23.3])) == (11, 24)
    np.testing.assert_allclose(maze.cell_to_world((10, 24)), [9.8, 23.8])  # the cell's centre


def test_reward_fires_within_the_goal_radius_only():
    env = maze.make_env(seed=0, images=False)
    env.reset()
    point = env.point_maze.point_env
    rewards = {}
    for d in (0.0, 0.5, 0.99, 1.01, 1.5, 2.5):  # the point at distance d from the goal, at rest
        point.set_state(env.goal_xy + env._origin + np.array([0.6, 0.8]) * d, np.zeros(2))
        obs, reward, terminated, truncated, info = env.step(np.zeros(2))
        rewards[d] = reward
        assert not terminated and not truncated
    assert rewards == {0.0: 1.0, 0.5: 1.0, 0.99: 1.0, 1.01: 0.0, 1.5: 0.0, 2.5: 0.0}
    assert info["success"] == 1.0  # stays 1 for the rest of the episode once the goal was reached
    env.reset()
    _, reward, _, _, info = env.step(np.zeros(2))
    assert reward == 0.0 and info["success"] == 0.0  # a new episode starts unsuccessful
    later = maze.make_env(seed=0, images=False, goal_radius=2.0)  # the authors' later radius
    later.reset()
    later.point_maze.point_env.set_state(later.goal_xy + later._origin + [1.5, 0.0], np.zeros(2))
    assert later.step(np.zeros(2))[1] == 1.0


def test_planner_reaches_the_downstream_goal_and_the_episode_never_terminates():
    env = maze.make_env(seed=0, images=False, max_episode_steps=1200)
    obs, _ = env.reset()
    controller = maze.WaypointController(env.layout, env.goal_cell)
    total, steps, truncated = 0.0, 0, False
    while not truncated:
        obs, reward, terminated, truncated, info = env.step(controller.act(obs["state"]))
        assert not terminated
        total, steps = total + reward, steps + 1
    assert steps == 1200 and info["success"] == 1.0 and 100 < total < 1200  # reward every step at the goal


@pytest.mark.filterwarnings("ignore:.*infinity")  # the unbounded state Box is intended
def test_gymnasium_env_checker_passes():
    from gymnasium.utils.env_checker import check_env

    check_env(maze.make_env(seed=0), skip_render_check=True)  # spaces, seeding determinism, step API


def test_planner_and_controller_reach_the_goal_in_training_mazes():
    runs = [maze.collect_trajectory(np.random.default_rng([123, i]), images=False) for i in range(40)]
    assert np.mean([r["reached"] for r in runs]) >= 0.95
    assert all(r["layout"].shape == (22, 22) for r in runs)
    for r in runs[:5]:  # a layout of the authors' generator, start and goal connected
        assert maze.bfs_distances(r["layout"], r["goal_cell"])[tuple(r["start_cell"])] > 0


def test_waypoint_radius_sets_when_the_controller_moves_on_and_is_stored(tmp_path, capsys):
    layout = np.ones((9, 9), np.uint8)
    layout[4, 1:-1] = 0  # a corridor along y (grids are indexed [x, y])
    state = np.concatenate([maze.cell_to_world((4, 2)) + [0.0, 0.2], [0.0, 0.0]])  # 0.2 m past the cell centre
    tight, loose = (maze.WaypointController(layout, (4, 6), waypoint_radius=r) for r in (0.1, 0.3))
    assert tight.act(state)[1] < 0 < loose.act(state)[1]  # 0.1: back to the centre first; 0.3: on to the next cell
    out = tmp_path / "wp.hdf5"
    maze.generate_dataset(out, num_trajectories=2, seed=3, progress=False, workers=1, waypoint_radius=0.1,
                          action_noise=0.0)
    with h5py.File(out, "r") as f:
        assert f.attrs["waypoint_radius"] == 0.1 and f["terminals"][:].sum() == 2
    # a partial file from before the setting existed (no attribute) resumes at the default radius
    old = tmp_path / "old.hdf5"
    maze.generate_dataset(old, num_trajectories=2, seed=3, flush_every=1, progress=False, workers=1)
    with h5py.File(old, "a") as f:
        del f.attrs["waypoint_radius"]
    old.rename(tmp_path / "old.hdf5.partial")
    maze.generate_dataset(old, num_trajectories=3, seed=3, flush_every=1, progress=False, workers=1)
    assert "resuming" in capsys.readouterr().out


def test_local_view_shape_orientation_and_motion():
    layout = np.ones((9, 9), np.uint8)
    layout[1:-1, 1:-1] = 0  # a 7x7 room
    env = maze.make_env(seed=0, layout=layout, start=(4, 4), goal=(1, 1))
    obs, _ = env.reset()
    assert env.observation_space.contains(obs)
    image = obs["image"]
    assert image.shape == (6, 32, 32) and image.dtype == np.uint8
    assert (image[:3] == image[3:]).all()  # at reset both stacked frames are the first view
    # orientation, up = +y: next to the +x wall the wall fills the right of the view, not the left
    wall = maze.WALL_RGB.astype(np.uint8)[:, None, None]
    view = maze.render_local_view(layout, maze.cell_to_world((7, 4)))
    assert (view[:, :, -4:] == wall).all() and not (view[:, 8:24, :12] == wall).all(axis=0).any()
    view = maze.render_local_view(layout, maze.cell_to_world((4, 7)))  # the +y wall: top rows
    assert (view[:, :4, :] == wall).all() and not (view[:, -12:, 8:24] == wall).all(axis=0).any()
    # moving changes the view; the newest frame is the view at the new state, the older one the previous
    for _ in range(20):
        obs, *_ = env.step(np.array([1.0, 0.0]))
    assert (obs["image"] != image).any()
    obs2, *_ = env.step(np.array([1.0, 0.0]))
    assert (obs2["image"][:3] == obs["image"][3:]).all()
    np.testing.assert_array_equal(obs2["image"][3:], maze.render_local_view(layout, obs2["state"][:2]))
    xy = np.array([4.3, 4.2])  # sub-pixel motion (a tenth of a pixel) still changes the area-averaged view
    assert (maze.render_local_view(layout, xy) != maze.render_local_view(layout, xy + [0.025, 0])).any()
    picture = maze.make_env(layout=layout, start=(4, 4), goal=(1, 1), render_mode="rgb_array")
    picture.reset(seed=0)
    assert picture.render().shape == (9 * 8, 9 * 8, 3) and picture.render().dtype == np.uint8


def test_hdf5_workers_resume_and_lazy_loading(tmp_path, capsys):
    one, two = tmp_path / "one.hdf5", tmp_path / "two.hdf5"
    maze.generate_dataset(one, num_trajectories=4, seed=5, flush_every=2, progress=False, workers=1)
    maze.generate_dataset(two, num_trajectories=4, seed=5, flush_every=2, progress=False, workers=2)
    assert one.read_bytes() == two.read_bytes()  # the file does not depend on the number of workers
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.hdf5", "two.hdf5"]  # no lock, block or partial files
    # a killed run leaves OUT.partial behind: calling again continues from it (trajectory i depends on (seed, i))
    first = maze.load_dataset(one)
    one.rename(tmp_path / "one.hdf5.partial")
    maze.generate_dataset(one, num_trajectories=6, seed=5, flush_every=2, progress=False, workers=1)
    assert "resuming" in capsys.readouterr().out
    data = maze.load_dataset(one)
    n, ends = len(data["states"]), data["traj_ends"]
    assert data["states"].shape == (n, 4) and data["states"].dtype == np.float32
    assert data["actions"].shape == (n, 2) and data["actions"].dtype == np.float32
    assert data["images"].shape == (n, 6, 32, 32) and data["images"].dtype == np.uint8
    assert ends.dtype == np.int64 and len(ends) == 6 and ends[-1] == n and (np.diff(ends) > 0).all()
    assert np.abs(data["actions"]).max() <= 1.0 and "6 trajectories" in data["source"]
    np.testing.assert_array_equal(data["states"][: first["traj_ends"][-1]], first["states"])
    images = np.asarray(data["images"])
    lazy = maze.load_dataset(one, lazy=True)["images"]  # frames memory-mapped from an uncompressed copy
    assert isinstance(lazy.frames, np.memmap) and (tmp_path / "one.hdf5.frames.npy").is_file()
    index = np.array([5, 0, n - 1, 5, ends[0], ends[0] - 1])
    np.testing.assert_array_equal(lazy[index], images[index])
    np.testing.assert_array_equal(data["images"][index], images[index])
    assert "images" not in maze.load_dataset(one, images=False)
    with h5py.File(one, "r") as f:
        layouts, terminals, goals = f["layouts"][:], f["terminals"][:], f["goal_cells"][:]
    assert layouts.shape == (6, 22, 22) and terminals.sum() == 6  # every trajectory reached its goal
    # images are the views of the stored states, stacked [previous, current] within each trajectory
    starts = np.concatenate([[0], ends[:-1]])
    for k, (s, e) in enumerate(zip(starts, ends)):
        np.testing.assert_array_equal(images[s, :3], images[s, 3:])
        for t in (s, s + 1, e - 1):
            np.testing.assert_array_equal(images[t, 3:], maze.render_local_view(layouts[k], data["states"][t, :2]))
        np.testing.assert_array_equal(images[s + 1 : e, :3], images[s : e - 1, 3:])
        final = data["states"][e - 1, :2] + 0.01 * data["states"][e - 1, 2:]  # one step of dt later
        assert np.linalg.norm(final - maze.cell_to_world(goals[k])) < maze.DATA_GOAL_RADIUS + 0.1


def test_auto_dataset_is_generated_once_with_a_log_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(maze, "DEFAULT_DATA_PATH", tmp_path / "data" / "maze.hdf5")
    data = maze.load_dataset("auto", num_trajectories=1, progress=False, workers=1)
    assert "not found -- generating 1" in capsys.readouterr().out and len(data["traj_ends"]) == 1
    assert envs.load_dataset("maze")["states"].shape == data["states"].shape  # now found, not regenerated
    assert "generating" not in capsys.readouterr().out
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["maze.hdf5"]  # the lock file is gone


def test_trajectory_png_and_visited_cells(tmp_path):
    from PIL import Image

    layout = maze.downstream_layout()
    xy = maze.cell_to_world(np.array(maze.plan_path(layout, maze.DOWNSTREAM_START, maze.DOWNSTREAM_GOAL)))
    assert maze.fraction_free_cells_visited(np.concatenate([xy, [[99.0, 99.0]]])) == pytest.approx(35 / 1182)
    path = tmp_path / "fig" / "maze.png"
    maze.save_trajectories_png(layout, [xy], path, start_xy=xy[0], goal_xy=xy[-1], cell_px=10)
    picture = np.asarray(Image.open(path))
    assert picture.shape == (420, 420, 3)
    blue = (picture[..., 2] > 150) & (picture[..., 0] < 200)
    assert blue.sum() > 100  # the drawn path


def test_bad_input_gives_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown env 'mazes'.*maze"):
        envs.make_env("mazes")
    with pytest.raises(FileNotFoundError, match="python -m envs.maze"):
        maze.load_dataset(tmp_path / "missing.hdf5")
    corrupt = tmp_path / "corrupt.hdf5"
    corrupt.write_bytes(b"not an hdf5 file" * 100)
    with pytest.raises(ValueError, match="not a readable HDF5 file") as error:
        maze.load_dataset(corrupt)
    assert "\n" not in str(error.value)
    n = 10
    good = {"observations": np.zeros((n, 4), np.float32), "actions": np.zeros((n, 2), np.float32),
            "terminals": np.eye(n, dtype=bool)[-1], "timeouts": np.zeros(n, bool),
            "frames": np.zeros((n, 3, 32, 32), np.uint8)}
    for name, change, message in (("observations", np.zeros((n, 3), np.float32), "wrong shapes"),
                                  ("frames", np.zeros((n, 3, 64, 64), np.uint8), "wrong shapes"),
                                  ("observations", np.full((n, 4), np.nan, np.float32), "NaN"),
                                  ("terminals", np.zeros(n, bool), "no complete trajectory"),
                                  ("actions", None, "lacks actions"),
                                  ("old", None, "old room layouts")):
        path = tmp_path / f"bad_{name}_{message.split()[0]}.hdf5"
        with h5py.File(path, "w") as f:
            for key, value in good.items():
                value = change if key == name else value
                if value is not None:
                    f[key] = value
            if name != "old":
                f.attrs["generator"] = "authors' sample_layout"
        with pytest.raises(ValueError, match=message):
            maze.load_dataset(path)
    for count in (0, -3):
        with pytest.raises(ValueError, match="positive integer"):
            maze.generate_dataset(tmp_path / "x.hdf5", num_trajectories=count)
    with pytest.raises(ValueError, match="wall"):
        maze.make_env(start=(0, 0))
    result = subprocess.run([sys.executable, "-m", "envs.maze", "--num-trajectories", "0", "--out", str(tmp_path / "y.hdf5")],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "error: maze: the number of trajectories must be a positive integer" in result.stderr
