"""envs/maze.py: layouts, planner + controller, local views, downstream reward, HDF5 data, bad input."""

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import envs
from envs import maze

REPO = Path(__file__).resolve().parent.parent


def reachable_free_cells(layout, cell):
    return int((maze.bfs_distances(layout, cell) >= 0).sum())


def doorway_crossings(layout, path):
    """Doorways passed on ``path``: maximal runs of path cells lying in a gap of <= 2 free cells between
    walls along a row or column (rooms and hallways are >= MIN_ROOM = 3 wide, so such gaps are doors)."""
    free = layout == 0

    def in_gap(line, i):
        lo = hi = i
        while lo > 0 and line[lo - 1]:
            lo -= 1
        while hi < len(line) - 1 and line[hi + 1]:
            hi += 1
        return hi - lo + 1 <= 2

    door = [in_gap(free[r, :], c) or in_gap(free[:, c], r) for r, c in path]
    return sum(1 for i, d in enumerate(door) if d and (i == 0 or not door[i - 1]))


def test_layouts_are_walled_connected_and_seeded():
    for size, seeds in ((maze.TRAIN_SIZE, range(150)), (maze.DOWNSTREAM_SIZE, range(10))):
        for seed in seeds:
            layout = maze.generate_layout(size, seed)
            assert layout.shape == (size, size) and layout.dtype == np.uint8
            assert layout[0].all() and layout[-1].all() and layout[:, 0].all() and layout[:, -1].all()
            free = np.argwhere(layout == 0)
            assert 0.5 < len(free) / size**2 < 0.9  # rooms, not an empty box nor a solid block
            # every free cell reachable from any other: any start/goal pair is solvable
            assert reachable_free_cells(layout, free[0]) == len(free), (size, seed)
    assert (maze.generate_layout(20, 7) == maze.generate_layout(20, 7)).all()
    assert (maze.generate_layout(20, 7) != maze.generate_layout(20, 8)).any()


def test_downstream_task_is_fixed_far_and_behind_several_doors():
    layout = maze.downstream_layout()
    assert layout.shape == (40, 40) and (layout == maze.downstream_layout()).all()
    path = maze.plan_path(layout, maze.DOWNSTREAM_START, maze.DOWNSTREAM_GOAL)
    assert path is not None and len(path) - 1 >= 35
    assert doorway_crossings(layout, path) >= 4  # several rooms between start and goal
    assert maze.downstream_free_cell_count() == int((layout == 0).sum()) > 0.5 * 40 * 40


def test_world_cell_conversion_matches_point_maze():
    env = maze.make_env(seed=0, images=False)
    for cell in [(1, 1), maze.DOWNSTREAM_START, maze.DOWNSTREAM_GOAL, (38, 2)]:
        xy = maze.cell_to_world(cell, env.layout.shape)
        np.testing.assert_allclose(xy, env.point_maze.maze.cell_rowcol_to_xy(np.array(cell)))
        assert tuple(maze.world_to_cell(xy + 0.45, env.layout.shape)) == tuple(cell)
    obs, _ = env.reset()
    assert tuple(maze.world_to_cell(obs["state"][:2], env.layout.shape)) == maze.DOWNSTREAM_START
    cells = maze.world_to_cell(np.zeros((5, 3, 2)), (40, 40))  # vectorised
    assert cells.shape == (5, 3, 2) and cells.dtype == np.int64
    # Fig. 5's measure: the planner's path visits exactly its own cells; positions off the map are ignored
    path = maze.plan_path(env.layout, maze.DOWNSTREAM_START, maze.DOWNSTREAM_GOAL)
    xy = np.concatenate([maze.cell_to_world(np.array(path), env.layout.shape), [[99.0, 99.0]]])
    assert maze.fraction_free_cells_visited(xy) == pytest.approx(len(path) / maze.downstream_free_cell_count())


@pytest.mark.filterwarnings("ignore:.*infinity")  # the unbounded state Box is intended
def test_gymnasium_env_checker_passes():
    from gymnasium.utils.env_checker import check_env

    check_env(maze.make_env(seed=0), skip_render_check=True)  # spaces, seeding determinism, step API


def test_planner_and_controller_reach_the_goal_in_200_training_mazes():
    reached = [maze.collect_trajectory(np.random.default_rng([123, i]), images=False)["reached"] for i in range(200)]
    assert np.mean(reached) >= 0.95, np.mean(reached)


def test_local_view_shape_orientation_and_motion():
    layout = np.ones((9, 9), np.uint8)
    layout[1:-1, 1:-1] = 0  # a 7x7 room
    env = maze.make_env(seed=0, layout=layout, start_cell=(4, 4), goal_cell=(1, 1))
    obs, _ = env.reset()
    assert env.observation_space.contains(obs)
    image = obs["image"]
    assert image.shape == (6, 32, 32) and image.dtype == np.uint8
    assert (image[:3] == image[3:]).all()  # at reset both stacked frames are the first view
    # orientation: in the cell next to the east wall the wall fills the right of the view, not the left
    wall = maze.WALL_RGB.astype(np.uint8)[:, None, None]
    view = maze.render_local_view(layout, maze.cell_to_world((4, 7), layout.shape))
    assert (view[:, :, -4:] == wall).all() and not (view[:, 8:24, :12] == wall).all(axis=0).any()
    view = maze.render_local_view(layout, maze.cell_to_world((1, 4), layout.shape))  # north wall: top rows
    assert (view[:, :4, :] == wall).all() and not (view[:, -12:, 8:24] == wall).all(axis=0).any()
    # moving changes the view; the newest frame is the view at the new state, the older one the previous
    previous = obs["image"][3:]
    for _ in range(20):
        obs, *_ = env.step(np.array([1.0, 0.0]))
    assert (obs["image"] != image).any()
    obs2, *_ = env.step(np.array([1.0, 0.0]))
    assert (obs2["image"][:3] == obs["image"][3:]).all()
    np.testing.assert_array_equal(obs2["image"][3:], maze.render_local_view(layout, obs2["state"][:2]))
    # sub-pixel motion (a tenth of a pixel) still changes the area-averaged view
    xy = np.array([0.3, 0.2])
    assert (maze.render_local_view(layout, xy) != maze.render_local_view(layout, xy + [0.025, 0])).any()
    assert (previous != obs2["image"][3:]).any()
    picture = maze.make_env(layout=layout, start_cell=(4, 4), goal_cell=(1, 1), render_mode="rgb_array")
    picture.reset(seed=0)
    assert picture.render().shape == (9 * 8, 9 * 8, 3) and picture.render().dtype == np.uint8


def test_downstream_reward_is_one_only_near_the_goal():
    env = envs.make_env("maze", seed=0)
    assert env.max_episode_steps == maze.EPISODE_LENGTH == 2000 and maze.METRIC == "success"
    obs, info = env.reset()
    assert info["success"] == 0.0 and info["distance_to_goal"] > 20
    point = env.point_maze.point_env

    rewards = {}
    for d in (0.0, 0.3, 0.45, 0.55, 0.8, 3.0):  # put the point at distance d from the goal, at rest
        point.set_state(env.goal_xy + np.array([0.6, 0.8]) * d, np.zeros(2))
        obs, reward, terminated, truncated, info = env.step(np.zeros(2))
        rewards[d] = reward
        assert not terminated and not truncated
    assert rewards == {0.0: 1.0, 0.3: 1.0, 0.45: 1.0, 0.55: 0.0, 0.8: 0.0, 3.0: 0.0}
    assert info["success"] == 1.0  # stays 1 for the rest of the episode once the goal was reached
    env.reset()
    _, reward, _, _, info = env.step(np.zeros(2))
    assert reward == 0.0 and info["success"] == 0.0  # a new episode starts unsuccessful


def test_episode_truncates_at_the_time_limit_and_never_terminates():
    layout = np.ones((7, 7), np.uint8)
    layout[1:-1, 1:-1] = 0
    env = maze.make_env(seed=1, layout=layout, start_cell=(1, 1), goal_cell=(5, 5), max_episode_steps=300, images=False)
    obs, _ = env.reset()
    controller = maze.WaypointController(layout, (5, 5))
    total, steps, truncated = 0.0, 0, False
    while not truncated:
        obs, reward, terminated, truncated, info = env.step(controller.act(obs["state"]))
        assert not terminated
        total, steps = total + reward, steps + 1
    assert steps == 300 and info["success"] == 1.0 and 100 < total < 300  # reward every step at the goal


def test_hdf5_round_trip_and_resume(tmp_path, capsys):
    out = tmp_path / "maze.hdf5"
    maze.generate_dataset(out, num_trajectories=2, seed=5, progress=False)
    assert not (tmp_path / "maze.hdf5.partial").exists()
    first = maze.load_dataset(out)
    # a killed run leaves OUT.partial behind: calling again continues from it (trajectory i depends on (seed, i))
    out.rename(tmp_path / "maze.hdf5.partial")
    maze.generate_dataset(out, num_trajectories=3, seed=5, progress=False)
    assert "resuming" in capsys.readouterr().out
    data = maze.load_dataset(out)
    n, ends = len(data["states"]), data["traj_ends"]
    assert data["states"].shape == (n, 4) and data["states"].dtype == np.float32
    assert data["actions"].shape == (n, 2) and data["actions"].dtype == np.float32
    assert data["images"].shape == (n, 6, 32, 32) and data["images"].dtype == np.uint8
    assert ends.dtype == np.int64 and len(ends) == 3 and ends[-1] == n and (np.diff(ends) > 0).all()
    assert np.isfinite(data["states"]).all() and np.isfinite(data["actions"]).all()
    assert np.abs(data["actions"]).max() <= 1.0 and "3 trajectories" in data["source"]
    np.testing.assert_array_equal(data["states"][: first["traj_ends"][-1]], first["states"])
    lean = maze.load_dataset(out, images=False)
    assert "images" not in lean and (lean["traj_ends"] == data["traj_ends"]).all()
    with h5py.File(out, "r") as f:
        layouts, terminals, goals = f["layouts"][:], f["terminals"][:], f["goal_cells"][:]
    assert layouts.shape == (3, 20, 20) and terminals.sum() == 3  # every trajectory reached its goal
    # images are the views of the stored states, stacked [previous, current] within each trajectory
    starts = np.concatenate([[0], ends[:-1]])
    for k, (s, e) in enumerate(zip(starts, ends)):
        np.testing.assert_array_equal(data["images"][s, :3], data["images"][s, 3:])
        for t in (s, s + 1, e - 1):
            np.testing.assert_array_equal(data["images"][t, 3:], maze.render_local_view(layouts[k], data["states"][t, :2]))
        np.testing.assert_array_equal(data["images"][s + 1 : e, :3], data["images"][s : e - 1, 3:])
        final = data["states"][e - 1, :2] + 0.01 * data["states"][e - 1, 2:]  # one step of dt later
        assert np.linalg.norm(final - maze.cell_to_world(goals[k], (20, 20))) < 0.6


def test_auto_dataset_is_generated_once_with_a_log_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(maze, "DEFAULT_DATA_PATH", tmp_path / "data" / "maze.hdf5")
    data = maze.load_dataset("auto", num_trajectories=1, progress=False)
    assert "not found -- generating 1" in capsys.readouterr().out and len(data["traj_ends"]) == 1
    assert envs.load_dataset("maze")["states"].shape == data["states"].shape  # now found, not regenerated
    assert "generating" not in capsys.readouterr().out


def test_trajectory_png(tmp_path):
    from PIL import Image

    layout = maze.downstream_layout()
    xy = maze.cell_to_world(np.array(maze.plan_path(layout, maze.DOWNSTREAM_START, maze.DOWNSTREAM_GOAL)), layout.shape)
    path = tmp_path / "fig" / "maze.png"
    maze.save_trajectories_png(layout, [xy], path, start_xy=xy[0], goal_xy=xy[-1], cell_px=10)
    picture = np.asarray(Image.open(path))
    assert picture.shape == (400, 400, 3)
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
                                  ("actions", None, "lacks actions")):
        path = tmp_path / f"bad_{name}_{message.split()[0]}.hdf5"
        with h5py.File(path, "w") as f:
            for key, value in good.items():
                value = change if key == name else value
                if value is not None:
                    f[key] = value
        with pytest.raises(ValueError, match=message):
            maze.load_dataset(path)
    for count in (0, -3):
        with pytest.raises(ValueError, match="positive integer"):
            maze.generate_dataset(tmp_path / "x.hdf5", num_trajectories=count)
    with pytest.raises(ValueError, match="wall"):
        maze.make_env(start_cell=(0, 0))
    result = subprocess.run([sys.executable, "-m", "envs.maze", "--num-trajectories", "0", "--out", str(tmp_path / "y.hdf5")],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "error: maze: the number of trajectories must be a positive integer" in result.stderr
