"""Maze navigation (paper section 4.1, appendix C): random room layouts, the D4RL point mass, local views.

* Layouts: a square cell grid (1 = wall) cut into rooms by recursive division -- a wall with a doorway at
  a randomly sampled position, then the same inside each half (appendix C: "placing walls with doorways in
  randomly sampled positions"). Training layouts are 20x20 cells, the downstream maze 40x40 (four times
  the area), one cell = 1 m.
* Simulation: gymnasium-robotics ``PointMazeEnv`` (the D4RL maze2d point mass, dt 0.01 s) built from the
  layout as a custom ``maze_map``. Action: the point's (x, y) force command in [-1, 1]^2.
* Observation: ``"state"`` = (x, y, vx, vy) float32 and ``"image"`` = (6, 32, 32) uint8, the last two
  32x32 RGB local top-down views centred on the agent, oldest first (appendix C stacks two frames so the
  policy sees velocity). A view spans ``VIEW_SIZE`` = 8 m and is drawn with numpy: floor, walls
  (area-averaged, so sub-pixel motion still changes the picture) and the agent. The goal is NOT drawn:
  the views show only what the task-agnostic skill prior may use (the paper reuses one prior for several
  goals, appendix H), and the downstream policy gets the goal from the reward alone, as in the paper.
* Downstream task (``make_env``): a fixed 40x40 layout, fixed start and goal cells far apart with several
  rooms between; reward 1 at every step the point is within ``GOAL_THRESHOLD`` = 0.5 m of the goal centre
  (D4RL maze2d's sparse reward); episodes last ``EPISODE_LENGTH`` = 2000 steps and do NOT end at the goal
  (``terminated`` is always False, as in the authors' maze env): the agent collects reward by staying
  there. ``info["success"]`` is 1.0 from the first step at the goal to the end of the episode.
* Offline data (``load_dataset`` / ``python -m envs.maze``): for every trajectory a new random 20x20
  layout and random start and goal; a BFS planner on the grid gives cell waypoints and a PD controller
  (D4RL's waypoint controller) follows them, with optional Gaussian action noise; stops at the goal.
  Stored D4RL-style in HDF5.

Generate data:   python -m envs.maze --num-trajectories 200 --out data/maze.hdf5   (paper: 85000)
Draw the task:   python -m envs.maze --png maze.png
"""

import os
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import gymnasium as gym
import numpy as np

METRIC = "success"
DEFAULT_PRIOR_INPUT = "image"  # appendix C / authors' config: the maze prior sees the two stacked views

TRAIN_SIZE = 20  # training layouts: 20x20 cells (a quarter of the downstream area)
DOWNSTREAM_SIZE = 40  # downstream layout: 40x40 cells
DOWNSTREAM_SEED = 0  # the fixed downstream layout is generate_layout(DOWNSTREAM_SIZE, DOWNSTREAM_SEED)
DOWNSTREAM_START = (7, 20)  # (row, col); the BFS path to the goal is 42 cells through 6 doorways
DOWNSTREAM_GOAL = (37, 32)
EPISODE_LENGTH = 2000  # downstream episode length in env steps (authors' maze runs)
GOAL_THRESHOLD = 0.5  # reward 1 within 0.5 m (half a cell) of the goal, D4RL maze2d's sparse reward

MIN_ROOM = 3  # no room or hallway narrower than 3 cells
VIEW_PX = 32  # local view resolution (appendix C: 32x32 px)
VIEW_SIZE = 8.0  # metres (= cells) covered by a local view: 4 px per cell, +-4 cells around the agent
FLOOR_RGB = np.array([225, 225, 215], np.float32)
WALL_RGB = np.array([70, 60, 110], np.float32)
AGENT_RGB = np.array([220, 40, 40], np.uint8)
# colour of a view pixel whose area is k/255 wall, k = 0..255: (3, 256) uint8
VIEW_COLOURS = (FLOOR_RGB[:, None] + np.arange(256) / 255 * (WALL_RGB - FLOOR_RGB)[:, None]).round().astype(np.uint8)

DEFAULT_NUM_TRAJECTORIES = 200  # ~2 min on a 2-core CPU; the paper uses 85000
COLLECT_MAX_STEPS = 2000  # a data trajectory that has not reached its goal by then ends as a timeout
DEFAULT_DATA_PATH = Path(__file__).resolve().parent.parent / "data" / "maze.hdf5"


# ---------------------------------------------------------------------------------------------------
# Layouts
# ---------------------------------------------------------------------------------------------------
def generate_layout(size: int, seed=None) -> np.ndarray:
    """A random (size, size) uint8 grid, 1 = wall, outer border walled, every free cell connected.

    Recursive division: a region is cut by a full wall (row or column) with a doorway of 1-2 cells at a
    random position; a wall is never placed where its end would block an earlier doorway, which keeps
    every free cell reachable. Regions narrower than 2 * MIN_ROOM + 1 are rooms."""
    if size < 2 * MIN_ROOM + 3:
        raise ValueError(f"maze layout size must be at least {2 * MIN_ROOM + 3} cells, got {size}")
    rng = np.random.default_rng(seed)
    grid = np.zeros((size, size), np.uint8)
    grid[0, :] = grid[-1, :] = grid[:, 0] = grid[:, -1] = 1
    regions = [(1, 1, size - 2, size - 2)]  # free regions (r0, c0, r1, c1), inclusive
    while regions:
        r0, c0, r1, c1 = regions.pop()
        # walls must leave MIN_ROOM free cells each side and meet solid wall (not a doorway) at both ends
        rows = [r for r in range(r0 + MIN_ROOM, r1 - MIN_ROOM + 1) if grid[r, c0 - 1] and grid[r, c1 + 1]]
        cols = [c for c in range(c0 + MIN_ROOM, c1 - MIN_ROOM + 1) if grid[r0 - 1, c] and grid[r1 + 1, c]]
        if not rows and not cols:
            continue
        height, width = r1 - r0 + 1, c1 - c0 + 1
        horizontal = bool(rows) and (not cols or height > width or (height == width and rng.random() < 0.5))
        door = int(rng.integers(1, 3))  # doorway width in cells
        if horizontal:
            r = int(rng.choice(rows))
            grid[r, c0 : c1 + 1] = 1
            d = int(rng.integers(c0, c1 - door + 2))
            grid[r, d : d + door] = 0
            regions += [(r0, c0, r - 1, c1), (r + 1, c0, r1, c1)]
        else:
            c = int(rng.choice(cols))
            grid[r0 : r1 + 1, c] = 1
            d = int(rng.integers(r0, r1 - door + 2))
            grid[d : d + door, c] = 0
            regions += [(r0, c0, r1, c - 1), (r0, c + 1, r1, c1)]
    return grid


def downstream_layout() -> np.ndarray:
    """The fixed 40x40 downstream maze (1 = wall)."""
    return generate_layout(DOWNSTREAM_SIZE, DOWNSTREAM_SEED)


def downstream_free_cell_count() -> int:
    """Number of free (non-wall) cells of the downstream maze, the denominator of "fraction visited"."""
    return int((downstream_layout() == 0).sum())


def fraction_free_cells_visited(xy, layout: Optional[np.ndarray] = None) -> float:
    """Fraction of the free cells of ``layout`` (default: the downstream maze) containing at least one of
    the world positions ``xy`` (..., 2): the exploration measure of the paper's Fig. 5."""
    layout = downstream_layout() if layout is None else layout
    cells = world_to_cell(np.asarray(xy).reshape(-1, 2), layout.shape)
    cells = cells[((cells >= 0) & (cells < layout.shape)).all(axis=1)]
    visited = np.zeros(layout.shape, bool)
    visited[cells[:, 0], cells[:, 1]] = True
    return float((visited & (layout == 0)).sum() / (layout == 0).sum())


def cell_to_world(cell, shape) -> np.ndarray:
    """Centre (x, y) in metres of cell (row, col) in a layout of ``shape`` (PointMaze's convention:
    maze centred at the origin, row 0 at the top = largest y)."""
    row, col = np.asarray(cell, np.float64)[..., 0], np.asarray(cell, np.float64)[..., 1]
    return np.stack([col + 0.5 - shape[1] / 2, shape[0] / 2 - row - 0.5], axis=-1)


def world_to_cell(xy, shape) -> np.ndarray:
    """Cell (row, col) int64 containing world position(s) ``xy`` (..., 2) in a layout of ``shape``."""
    xy = np.asarray(xy, np.float64)
    row = np.floor(shape[0] / 2 - xy[..., 1])
    col = np.floor(xy[..., 0] + shape[1] / 2)
    return np.stack([row, col], axis=-1).astype(np.int64)


def bfs_distances(layout: np.ndarray, goal_cell) -> np.ndarray:
    """Grid (4-neighbour) path length from every cell to ``goal_cell``; -1 for walls and unreachable."""
    dist = np.full(layout.shape, -1, np.int64)
    dist[tuple(goal_cell)] = 0
    queue = deque([tuple(goal_cell)])
    while queue:
        r, c = queue.popleft()
        for nr, nc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
            if 0 <= nr < layout.shape[0] and 0 <= nc < layout.shape[1] and layout[nr, nc] == 0 and dist[nr, nc] < 0:
                dist[nr, nc] = dist[r, c] + 1
                queue.append((nr, nc))
    return dist


def plan_path(layout: np.ndarray, start_cell, goal_cell) -> Optional[list]:
    """Shortest 4-neighbour cell path [start, ..., goal] (BFS), or None if the goal is unreachable."""
    dist = bfs_distances(layout, goal_cell)
    if dist[tuple(start_cell)] < 0:
        return None
    path = [tuple(int(v) for v in start_cell)]
    while dist[path[-1]] > 0:  # walk downhill on the distance field
        r, c = path[-1]
        path.append(next(n for n in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1))
                         if 0 <= n[0] < layout.shape[0] and 0 <= n[1] < layout.shape[1]
                         and dist[n] == dist[r, c] - 1))
    return path


# ---------------------------------------------------------------------------------------------------
# Pictures (numpy only: no OpenGL, works headless)
# ---------------------------------------------------------------------------------------------------
def render_local_view(layout: np.ndarray, xy) -> np.ndarray:
    """(3, VIEW_PX, VIEW_PX) uint8 top-down view of VIEW_SIZE m centred on the agent at ``xy``; up = +y.

    Each pixel's colour is the wall fraction of its area (exact, via per-axis overlap matrices), so a
    shift of a fraction of a pixel changes the view. Outside the layout counts as wall."""
    pixel = VIEW_SIZE / VIEW_PX
    centre = np.array([layout.shape[0] / 2 - xy[1], xy[0] + layout.shape[1] / 2])  # (row, col), continuous
    edges = centre[:, None] - VIEW_SIZE / 2 + pixel * np.arange(VIEW_PX + 1)  # (2, VIEW_PX + 1) pixel edges
    cells = np.floor(edges[:, :1]).astype(np.int64) + np.arange(int(VIEW_SIZE) + 2)  # (2, K) cells under the view
    # overlap[a, i, k]: fraction of pixel i along axis a (rows, cols) that lies in cell cells[a, k]
    overlap = np.maximum(np.minimum(edges[:, 1:, None], cells[:, None, :] + 1)
                         - np.maximum(edges[:, :-1, None], cells[:, None, :]), 0) / pixel  # (2, VIEW_PX, K)
    inside = (cells >= 0) & (cells < np.array(layout.shape)[:, None])
    walls = np.ones((cells.shape[1], cells.shape[1]), np.float32)  # (K, K), outside the layout = wall
    walls[np.ix_(inside[0], inside[1])] = layout[np.ix_(cells[0, inside[0]], cells[1, inside[1]])]
    coverage = overlap[0] @ walls @ overlap[1].T  # (VIEW_PX, VIEW_PX) wall fraction of every pixel
    image = VIEW_COLOURS[:, (coverage * 255 + 0.5).astype(np.int64)]  # (3, VIEW_PX, VIEW_PX)
    half = VIEW_PX // 2
    image[:, half - 1 : half + 1, half - 1 : half + 1] = AGENT_RGB[:, None, None]  # the agent, always centred
    return image


def render_layout(layout: np.ndarray, agent_xy=None, goal_xy=None, start_xy=None, cell_px: int = 8) -> np.ndarray:
    """(H, W, 3) uint8 picture of the whole layout: floor, walls, start (green), goal (red), agent (blue)."""
    image = np.where(layout[..., None] == 1, WALL_RGB, FLOOR_RGB).astype(np.uint8)
    image = np.repeat(np.repeat(image, cell_px, axis=0), cell_px, axis=1)
    ys, xs = np.mgrid[: image.shape[0], : image.shape[1]] + 0.5
    for xy, rgb, radius in ((start_xy, (40, 170, 60), 0.35), (goal_xy, (220, 40, 40), 0.5), (agent_xy, (30, 60, 220), 0.2)):
        if xy is not None:
            px, py = (xy[0] + layout.shape[1] / 2) * cell_px, (layout.shape[0] / 2 - xy[1]) * cell_px
            image[(xs - px) ** 2 + (ys - py) ** 2 <= (radius * cell_px) ** 2] = rgb
    return image


def save_trajectories_png(layout: np.ndarray, trajectories_xy, path, start_xy=None, goal_xy=None, cell_px: int = 16):
    """Save a PNG of ``layout`` with every trajectory (a (T, 2) array of world x, y) drawn as a blue line,
    start in green and goal in red (the look of the paper's Fig. 5)."""
    from PIL import Image, ImageDraw

    canvas = Image.fromarray(render_layout(layout, goal_xy=goal_xy, start_xy=start_xy, cell_px=cell_px))
    overlay = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    for xy in trajectories_xy:
        xy = np.asarray(xy, np.float64).reshape(-1, 2)
        points = [((x + layout.shape[1] / 2) * cell_px, (layout.shape[0] / 2 - y) * cell_px) for x, y in xy]
        if len(points) > 1:
            draw.line(points, fill=(30, 80, 230, 90), width=max(1, cell_px // 8))
    canvas = Image.alpha_composite(canvas.convert("RGBA"), overlay).convert("RGB")
    marks = ImageDraw.Draw(canvas)  # markers on top of the lines
    for xy, rgb in ((start_xy, (40, 170, 60)), (goal_xy, (220, 40, 40))):
        if xy is not None:
            px, py = (xy[0] + layout.shape[1] / 2) * cell_px, (layout.shape[0] / 2 - xy[1]) * cell_px
            marks.ellipse([px - cell_px / 2, py - cell_px / 2, px + cell_px / 2, py + cell_px / 2], fill=rgb)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


# ---------------------------------------------------------------------------------------------------
# The environment
# ---------------------------------------------------------------------------------------------------
class MazeEnv(gym.Env):
    """PointMaze on ``layout`` from ``start_cell`` to ``goal_cell`` with the paper's observations and reward."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 100}

    def __init__(self, layout, start_cell, goal_cell, max_episode_steps: int = EPISODE_LENGTH,
                 goal_threshold: float = GOAL_THRESHOLD, render_mode: Optional[str] = None, seed: Optional[int] = None,
                 images: bool = True):
        from gymnasium_robotics.envs.maze.point_maze import PointMazeEnv

        self.layout = np.asarray(layout, np.uint8)
        for name, cell in (("start", start_cell), ("goal", goal_cell)):
            if not (0 <= cell[0] < self.layout.shape[0] and 0 <= cell[1] < self.layout.shape[1]) or self.layout[tuple(cell)]:
                raise ValueError(f"maze {name} cell {tuple(cell)} is a wall or outside the {self.layout.shape} layout")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"maze render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.start_cell, self.goal_cell = tuple(int(v) for v in start_cell), tuple(int(v) for v in goal_cell)
        self.goal_xy = cell_to_world(self.goal_cell, self.layout.shape)
        self.max_episode_steps, self.goal_threshold, self.render_mode = max_episode_steps, goal_threshold, render_mode
        self.images = images  # False: "state" only (skips the view rendering, for state-only uses and tests)
        # continuing_task: PointMaze itself never terminates; the time limit and reward are ours
        self.point_maze = PointMazeEnv(maze_map=self.layout.tolist(), continuing_task=True, reset_target=False)
        os.remove(self.point_maze.tmp_xml_file_path)  # PointMaze leaves its generated MJCF in /tmp
        self.action_space = self.point_maze.action_space
        spaces = {"state": gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)}
        if images:
            spaces["image"] = gym.spaces.Box(0, 255, (6, VIEW_PX, VIEW_PX), np.uint8)
        self.observation_space = gym.spaces.Dict(spaces)
        self._seed = seed  # used by the first reset() that is given no seed
        self._frame, self._steps, self._success = None, 0, False

    def _observation(self, point_obs: np.ndarray) -> dict:
        if not self.images:
            return {"state": point_obs.astype(np.float32)}
        frame = render_local_view(self.layout, point_obs[:2])
        previous = frame if self._frame is None else self._frame  # at reset both frames are the first one
        self._frame = frame
        return {"state": point_obs.astype(np.float32), "image": np.concatenate([previous, frame])}

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
        if seed is None and self._seed is not None:
            seed, self._seed = self._seed, None
        super().reset(seed=seed)
        # the start gets PointMaze's uniform +-0.25 m noise inside the start cell; the goal is the cell centre
        obs, _ = self.point_maze.reset(seed=seed, options={"reset_cell": np.array(self.start_cell),
                                                           "goal_cell": np.array(self.goal_cell)})
        self.point_maze.goal = self.goal_xy.copy()
        self.point_maze.update_target_site_pos()
        self._frame, self._steps, self._success = None, 0, False
        observation = self._observation(obs["observation"])
        return observation, {METRIC: 0.0, "distance_to_goal": self._distance(obs["observation"])}

    def _distance(self, point_obs) -> float:
        return float(np.linalg.norm(point_obs[:2] - self.goal_xy))

    def step(self, action):
        obs, *_ = self.point_maze.step(np.asarray(action, np.float64))
        distance = self._distance(obs["observation"])
        reward = float(distance <= self.goal_threshold)  # appendix C: per-timestep binary reward near the goal
        self._success = self._success or reward > 0
        self._steps += 1
        truncated = self._steps >= self.max_episode_steps
        info = {METRIC: float(self._success), "distance_to_goal": distance}
        return self._observation(obs["observation"]), reward, False, truncated, info

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        return render_layout(self.layout, agent_xy=self.point_maze.data.qpos[:2].copy(), goal_xy=self.goal_xy,
                             start_xy=cell_to_world(self.start_cell, self.layout.shape))

    def close(self):
        self.point_maze.close()


def make_env(seed: Optional[int] = None, render_mode: Optional[str] = None, **kwargs) -> MazeEnv:
    """The downstream task: fixed 40x40 maze, fixed start and goal, 2000-step episodes.

    ``kwargs`` may override ``layout``, ``start_cell``, ``goal_cell``, ``max_episode_steps``,
    ``goal_threshold``, ``images`` (tests use small layouts)."""
    layout = kwargs.pop("layout", None)
    layout = downstream_layout() if layout is None else layout
    start_cell = kwargs.pop("start_cell", DOWNSTREAM_START)
    goal_cell = kwargs.pop("goal_cell", DOWNSTREAM_GOAL)
    env = MazeEnv(layout, start_cell, goal_cell, render_mode=render_mode, seed=seed, **kwargs)
    env.action_space.seed(seed)
    return env


# ---------------------------------------------------------------------------------------------------
# Data collection: BFS planner + PD waypoint controller (D4RL maze2d's recipe)
# ---------------------------------------------------------------------------------------------------
class WaypointController:
    """Follows the BFS cell path to ``goal_cell`` with a PD law on the next waypoint (D4RL's gains).

    The waypoint is the next cell centre on the path; it advances once the point is within
    ``waypoint_radius``; if noise pushes the point off the path, it replans from the cell it is in."""

    def __init__(self, layout, goal_cell, p_gain: float = 10.0, d_gain: float = -1.0, waypoint_radius: float = 0.3):
        self.layout, self.goal_cell = layout, tuple(goal_cell)
        self.p_gain, self.d_gain, self.waypoint_radius = p_gain, d_gain, waypoint_radius
        self.distance = bfs_distances(layout, goal_cell)
        self.path, self.index = None, 0

    def act(self, state: np.ndarray) -> np.ndarray:
        cell = tuple(world_to_cell(state[:2], self.layout.shape))
        if self.path is None or cell not in self.path[max(0, self.index - 1) : self.index + 2]:
            self.path, self.index = plan_path(self.layout, cell, self.goal_cell), 0
            if self.path is None:  # inside a wall (cannot happen with rigid walls): head for the goal
                self.path = [self.goal_cell]
            self.waypoints = cell_to_world(np.array(self.path), self.layout.shape)
        while self.index < len(self.path) - 1 and np.linalg.norm(self.waypoints[self.index] - state[:2]) < self.waypoint_radius:
            self.index += 1
        action = self.p_gain * (self.waypoints[self.index] - state[:2]) + self.d_gain * state[2:4]
        return np.clip(action, -1.0, 1.0)


def collect_trajectory(rng: np.random.Generator, size: int = TRAIN_SIZE, action_noise: float = 0.1,
                       max_steps: int = COLLECT_MAX_STEPS, images: bool = True) -> dict:
    """One goal-reaching trajectory in a fresh random layout with random distinct start and goal cells.

    Returns states (T, 4) float32, actions (T, 2) float32 (executed, clipped), frames (T, 3, 32, 32)
    uint8 (the view at each state; (T, 0, 32, 32) with ``images=False``), reached (bool: ended within GOAL_THRESHOLD of the goal), layout,
    start_cell, goal_cell."""
    layout = generate_layout(size, rng)
    free = np.argwhere(layout == 0)
    start_cell, goal_cell = free[rng.choice(len(free), size=2, replace=False)]
    env = MazeEnv(layout, start_cell, goal_cell, max_episode_steps=max_steps, images=images)
    obs, info = env.reset(seed=int(rng.integers(2**31)))
    controller = WaypointController(layout, goal_cell)
    states, actions, frames = [], [], []
    reached, truncated = info["distance_to_goal"] <= GOAL_THRESHOLD, False
    while not reached and not truncated:
        action = controller.act(obs["state"]) + action_noise * rng.standard_normal(2)
        action = np.clip(action, -1.0, 1.0).astype(np.float32)
        states.append(obs["state"])
        frames.append(obs["image"][3:] if images else np.zeros((0, VIEW_PX, VIEW_PX), np.uint8))
        actions.append(action)
        obs, reward, _, truncated, info = env.step(action)
        reached = reward > 0
    env.close()
    n = len(states)  # >= 1: distinct cells put the start >= 0.75 m from the goal
    return {"states": np.array(states, np.float32).reshape(n, 4), "actions": np.array(actions, np.float32).reshape(n, 2),
            "frames": np.array(frames, np.uint8).reshape(n, 3 if images else 0, VIEW_PX, VIEW_PX), "reached": bool(reached),
            "layout": layout, "start_cell": start_cell, "goal_cell": goal_cell}


def _trajectory_rng(seed: int, index: int) -> np.random.Generator:
    """Trajectory ``index`` depends only on (seed, index): a resumed run produces the same data."""
    return np.random.default_rng([seed, index])


def generate_dataset(out, num_trajectories: int = DEFAULT_NUM_TRAJECTORIES, seed: int = 0, action_noise: float = 0.1,
                     max_steps: int = COLLECT_MAX_STEPS, size: int = TRAIN_SIZE, flush_every: int = 50,
                     progress: bool = True, wait_for_other: bool = False) -> Path:
    """Write ``num_trajectories`` planner trajectories to the HDF5 file ``out`` (D4RL-style keys).

    Keys: observations (N, 4) float32 = (x, y, vx, vy); actions (N, 2) float32; terminals (N,) bool (the
    goal was reached after this step's action); timeouts (N,) bool (time limit after this step); frames
    (N, 3, 32, 32) uint8 (the local view of each state; load_dataset stacks pairs into (N, 6, 32, 32));
    layouts (K, size, size) uint8, start_cells / goal_cells (K, 2) int64, and infos/goal (N, 2) float32.
    Written to ``out.partial`` and renamed at the end, so ``out`` is never half-written; a run that was
    killed resumes from ``out.partial`` when called again with the same seed, noise, size and max_steps.
    A second writer of the same file fails at once, or with ``wait_for_other`` waits and reuses its file."""
    if not isinstance(num_trajectories, (int, np.integer)) or num_trajectories <= 0:
        raise ValueError(f"maze: the number of trajectories must be a positive integer (got {num_trajectories!r}); "
                         f"e.g. --num-trajectories {DEFAULT_NUM_TRAJECTORIES}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with _generation_lock(out, wait=wait_for_other):
        if wait_for_other and out.exists():  # another process generated it while we waited
            return out
        return _write_dataset(out, num_trajectories, seed, action_noise, max_steps, size, flush_every, progress)


@contextmanager
def _generation_lock(out: Path, wait: bool):
    """One writer per output file (several scripts may call load_dataset("auto") at once)."""
    import fcntl

    with open(out.with_name(out.name + ".lock"), "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"maze: another process is already writing {out}; wait for it to finish") from None
        yield


def _write_dataset(out: Path, num_trajectories, seed, action_noise, max_steps, size, flush_every, progress) -> Path:
    import h5py
    from tqdm import tqdm

    partial = out.with_name(out.name + ".partial")
    settings = {"seed": seed, "action_noise": action_noise, "max_steps": max_steps, "layout_size": size,
                "view_size": VIEW_SIZE}
    done = 0
    if partial.exists():
        try:
            with h5py.File(partial, "r") as f:
                if all(f.attrs.get(k) == v for k, v in settings.items()):
                    done = min(int(f.attrs["num_trajectories"]), num_trajectories)
        except (OSError, KeyError):
            done = 0
        print(f"maze: resuming {partial} at trajectory {done}" if done else
              f"maze: {partial} is unreadable or has other settings: starting over")
    if not done:
        with h5py.File(partial, "w") as f:
            for name, shape, dtype in (("observations", (4,), np.float32), ("actions", (2,), np.float32),
                                       ("terminals", (), bool), ("timeouts", (), bool), ("infos/goal", (2,), np.float32),
                                       ("frames", (3, VIEW_PX, VIEW_PX), np.uint8)):
                f.create_dataset(name, (0, *shape), dtype, maxshape=(None, *shape), chunks=(1024, *shape),
                                 compression="gzip" if name == "frames" else None)
            for name, shape, dtype in (("layouts", (size, size), np.uint8), ("start_cells", (2,), np.int64),
                                       ("goal_cells", (2,), np.int64)):
                f.create_dataset(name, (0, *shape), dtype, maxshape=(None, *shape), chunks=(256, *shape))
            f.attrs.update(settings)
            f.attrs["num_trajectories"] = 0
            f.attrs["source"] = ("BFS planner + PD waypoint controller in random 20x20 maze layouts "
                                 "(envs/maze.py, one new layout and start/goal per trajectory)")

    def append(f, name, values):
        dset = f[name]
        dset.resize(dset.shape[0] + len(values), axis=0)
        dset[-len(values):] = values

    buffer = []
    with h5py.File(partial, "a") as f, tqdm(total=num_trajectories, initial=done, desc="maze data", unit="traj",
                                           disable=not progress) as bar:
        if done:  # drop anything written after the last completed flush
            ends = np.flatnonzero(f["terminals"][:] | f["timeouts"][:]) + 1
            keep = int(ends[done - 1])
            for name in ("observations", "actions", "terminals", "timeouts", "infos/goal", "frames"):
                f[name].resize(keep, axis=0)
            for name in ("layouts", "start_cells", "goal_cells"):
                f[name].resize(done, axis=0)
        for index in range(done, num_trajectories):
            buffer.append(collect_trajectory(_trajectory_rng(seed, index), size, action_noise, max_steps))
            bar.update(1)
            if len(buffer) == flush_every or index == num_trajectories - 1:
                for t in buffer:
                    n = len(t["states"])
                    terminals, timeouts = np.zeros(n, bool), np.zeros(n, bool)
                    (terminals if t["reached"] else timeouts)[-1] = True
                    append(f, "observations", t["states"])
                    append(f, "actions", t["actions"])
                    append(f, "terminals", terminals)
                    append(f, "timeouts", timeouts)
                    append(f, "infos/goal", np.repeat(cell_to_world(t["goal_cell"], t["layout"].shape)[None], n, 0))
                    append(f, "frames", t["frames"])
                    append(f, "layouts", t["layout"][None])
                    append(f, "start_cells", t["start_cell"][None])
                    append(f, "goal_cells", t["goal_cell"][None])
                f.attrs["num_trajectories"] = index + 1
                f.flush()
                buffer = []
    os.replace(partial, out)
    return out


# ---------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------
def load_dataset(path="auto", num_trajectories: int = DEFAULT_NUM_TRAJECTORIES, images: bool = True, **kwargs) -> dict:
    """The skill model's offline data (see envs/__init__.py): states, actions, traj_ends, images, source.

    ``path="auto"`` uses data/maze.hdf5, generating it (``num_trajectories`` trajectories, ``kwargs`` go
    to generate_dataset) if missing. ``images=False`` skips the images (0.5 GB for the default data).
    Every problem with the file raises a one-line ValueError / FileNotFoundError saying what to do."""
    import h5py

    if path == "auto":
        path = DEFAULT_DATA_PATH
        if not path.exists():
            print(f"maze: {path} not found -- generating {num_trajectories} planner trajectories "
                  f"(python -m envs.maze --num-trajectories {num_trajectories} --out {path})")
            generate_dataset(path, num_trajectories, wait_for_other=True, **kwargs)
    path = Path(path)
    regenerate = f"(re)generate it with `python -m envs.maze --out {path}` (or pass path='auto')"
    if not path.is_file():
        raise FileNotFoundError(f"maze dataset {path} not found: {regenerate}")
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in ("observations", "actions", "terminals", "timeouts", "frames") if k not in f]
            if missing:
                raise ValueError(f"maze dataset {path} lacks {', '.join(missing)}: is it a maze file? {regenerate}")
            states, actions = f["observations"][:], f["actions"][:]
            ends = f["terminals"][:].astype(bool) | f["timeouts"][:].astype(bool)
            frames_shape = f["frames"].shape
            frames = f["frames"][:] if images else None
            source = f.attrs.get("source", "envs/maze.py planner data")
            if f.attrs.get("view_size", VIEW_SIZE) != VIEW_SIZE:
                raise ValueError(f"maze dataset {path} has {f.attrs['view_size']} m views, the env {VIEW_SIZE} m: {regenerate}")
    except OSError as e:
        raise ValueError(f"maze dataset {path} is not a readable HDF5 file ({str(e).splitlines()[0]}): {regenerate}") from None
    n = len(states)
    if states.ndim != 2 or states.shape[1] != 4 or actions.shape != (n, 2) or ends.shape != (n,) \
            or frames_shape != (n, 3, VIEW_PX, VIEW_PX):
        raise ValueError(f"maze dataset {path} has wrong shapes (observations {states.shape}, actions {actions.shape}, "
                         f"frames {frames_shape}; expected (N, 4), (N, 2), (N, 3, {VIEW_PX}, {VIEW_PX})): {regenerate}")
    if n == 0 or not ends[-1]:
        raise ValueError(f"maze dataset {path} holds no complete trajectory: {regenerate}")
    if not (np.isfinite(states).all() and np.isfinite(actions).all()):
        raise ValueError(f"maze dataset {path} contains NaN or inf values: {regenerate}")
    traj_ends = np.flatnonzero(ends).astype(np.int64) + 1
    data = {"states": states.astype(np.float32), "actions": actions.astype(np.float32), "traj_ends": traj_ends,
            "source": f"{source}: {len(traj_ends)} trajectories, {n} steps, from {path}"}
    if not images:
        return data
    # image_t = [frame_{t-1}, frame_t], with frame_{-1} = frame_0 at a trajectory start (as env.reset does)
    stacked = np.empty((n, 6, VIEW_PX, VIEW_PX), np.uint8)  # (N, 6, 32, 32), filled in place to save memory
    stacked[:, 3:] = frames
    stacked[1:, :3] = frames[:-1]
    starts = np.concatenate([[0], traj_ends[:-1]])
    stacked[starts, :3] = frames[starts]
    data["images"] = stacked
    return data


# ---------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------
@dataclass
class Args:
    num_trajectories: int = DEFAULT_NUM_TRAJECTORIES
    """trajectories to collect (the paper: 85000)"""
    out: str = str(DEFAULT_DATA_PATH)
    """HDF5 file to write (written as OUT.partial, renamed when complete; a killed run resumes)"""
    seed: int = 0
    """seed of layouts, start/goal cells and action noise (trajectory i uses the seed pair (seed, i))"""
    action_noise: float = 0.1
    """std of the Gaussian noise added to the controller's action before clipping to [-1, 1]"""
    max_steps: int = COLLECT_MAX_STEPS
    """steps after which a trajectory that has not reached its goal ends (as a timeout)"""
    png: Optional[str] = None
    """if set: only draw the downstream maze with start, goal and one planner rollout to this PNG, and exit"""


def _draw_downstream(path: str):
    env = make_env(seed=0)
    obs, _ = env.reset()
    controller, xy = WaypointController(env.layout, env.goal_cell), [obs["state"][:2]]
    for _ in range(EPISODE_LENGTH):
        obs, reward, _, _, info = env.step(controller.act(obs["state"]))
        xy.append(obs["state"][:2])
        if reward > 0:
            break
    save_trajectories_png(env.layout, [np.array(xy)], path, start_xy=cell_to_world(env.start_cell, env.layout.shape),
                          goal_xy=env.goal_xy)
    outcome = "reached the goal" if info[METRIC] else "did not reach the goal"
    print(f"maze: wrote {path} (downstream {DOWNSTREAM_SIZE}x{DOWNSTREAM_SIZE} maze, planner {outcome} "
          f"in {len(xy) - 1} steps)")


if __name__ == "__main__":
    import tyro

    args = tyro.cli(Args)
    try:
        if args.png:
            _draw_downstream(args.png)
        else:
            start = time.time()
            out = generate_dataset(args.out, args.num_trajectories, args.seed, args.action_noise, args.max_steps)
            data = load_dataset(out)
            print(f"maze: wrote {out}: {len(data['traj_ends'])} trajectories, {len(data['states'])} steps "
                  f"in {time.time() - start:.0f} s")
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}")
