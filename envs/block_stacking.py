"""Planar block stacking on MuJoCo (SPiRL section 4.1, appendix C "Block Stacking", Fig. 7).

A gripper carriage moves in the vertical x-z plane above a table with barriers and grips 6 cm cubes
with two parallel fingers; blocks are limited to the same plane (slide x, slide z, hinge y). The
MJCF is generated in code; the observation image is drawn with numpy from the state (no OpenGL).

* Training env (the data): 5 blocks on a 0.8 m table, initialised randomly stacked or placed in
  between (``layout="random_stacks"``).
* Downstream env (``make_env`` default): 11 blocks in a row on the ground, 15 cm apart, the same at every
  reset (``layout="row"``), on a 1.8 m table; stack as many as possible; 1000 steps per episode (the
  authors' ``max_rollout_len``). This is the authors' ``HighStack11StackEnvV0`` scaled to our blocks (6 cm
  vs their 8 cm): 11 blocks at y = -1.0, -0.8, ..., 1.0 m on a 2.4 m table. Every block starts 1.5 block
  widths inside the gripper's reach (theirs: 1.75). Invisible barriers that stop only blocks keep every block centre within
  the gripper's reach (ours, not the authors': a block pushed against a wall would otherwise sit half a block
  beyond where the gripper can centre over it, and a tower there cannot be built on).

Action, Box(low=(-1, -1, 0), high=(1, 1, 1)): (dx, dz) moves the carriage target to the current
position + a * 0.025 m (0.5 m/s at most), and g in [0, 1] opens the gripper (0 closed, 1 open).
Control step 0.05 s = 20 physics steps of 0.0025 s.

Observation dict:
* ``"state"`` float32 (3 + 3 * num_blocks,): gripper x, z (m; z of the grasp point, the finger
  centres), opening in [0, 1] on the action's scale, then per block x, z (m, block centre) and angle
  about y wrapped to [-pi/4, pi/4) (a cube looks the same every 90 degrees). No velocities: the
  stacked image frames carry the motion.
* ``"image"`` uint8 (6, 32, 32): the last two 32x32 RGB front views, oldest first, each a 0.48 m x
  0.48 m window centred on the gripper (x in gx +- 0.24, z in gz - 0.30 .. gz + 0.18).

Reward per step, as the authors' code computes it (their ``HighStackBlockStackEnv``, which produced the
paper's numbers; appendix C describes it as "per-timestep binary rewards for lifting a block from the ground
and moving it on top of another block" plus "a reward proportional to the height of the highest stacked
tower"): every block earns 1 per step from the first time the agent lifted it (held between the closed
fingers, bottom >= 2 cm above the table) and 2 per step from the first time, after that, it was above another
block; these flags stay set for the rest of the episode. Plus 4 per block of height of the highest supported
block the agent has lifted (the authors' 50 per metre of height with their 8 cm blocks). Because the flags
stick, holding a block in the air earns nothing more than putting it down: only new blocks and a taller
tower raise the reward. ``info["blocks_stacked"]`` = (height in blocks of the highest supported tower) - 1,
i.e. the number of blocks stacked on a ground block (a lone block: 0; a 3-block tower: 2), the authors'
"final height" and the paper's "# blocks stacked" (the metric); ``info["lifted"]`` / ``info["stacked"]``:
some block is held in the air / rests on another block now; ``info["blocks_lifted"]`` /
``info["blocks_delivered"]``: how many blocks carry each flag.

``reward="sparse"``: the authors' ``SparseHighStackBlockStackEnv`` (the env of their closed-loop block-stacking
config, whose plots show SPiRL ≈1.9 and SPiRL-cl ≈3.4): only the tower term, 1 per metre of height per step in
their units, i.e. 0.08 per block of height of the highest supported block the agent has lifted; no lift or
delivery flags in the reward (they are still counted in the info). Their sparse env counts any supported block;
ours, as the dense reward does, only blocks the agent has lifted (a block pushed onto another earns nothing).

Data: ``python -m envs.block_stacking --num-trajectories N --out PATH [--random-fraction F]`` runs the
noisy scripted stacking policy (pick, lift, carry, lower, release; 3 consecutive stacks on one tower,
pseudo-random subgoals between and within stacks) in the training env and writes D4RL-style HDF5.
``--script view-limited`` (ours) collects with a memoryless script that decides only from the prior's window instead.
"""

import argparse
import logging
import math
import os
import time
from pathlib import Path

import gymnasium as gym
import h5py
import mujoco
import numpy as np
from tqdm import tqdm

from envs import UnwritablePathError, ensure_writable

METRIC = "blocks_stacked"
DEFAULT_PRIOR_INPUT = "image"  # appendix C: the prior sees two stacked 32x32 front views
DEFAULT_DATASET = Path("data") / "block_stacking.hdf5"  # relative to the current directory, like runs/ and checkpoints/
DEFAULT_NUM_TRAJECTORIES = 400
SCRIPTS = ("chain", "view-limited")  # the data policies: ScriptedStacker, ViewLimitedStacker
LIFTED_REWARD, DELIVERED_REWARD = 1.0, 2.0  # per step and per block, from the first lift / delivery on (authors)
HEIGHT_REWARD_PER_BLOCK = 4.0  # the authors' 50 per metre of tower height x their 8 cm blocks
SPARSE_REWARD_PER_BLOCK = 0.08  # reward="sparse": the authors' 1 per metre of tower height x their 8 cm blocks
ROW_SPACING = 0.15  # the downstream row: the authors' 0.2 m between 8 cm blocks, scaled to 6 cm blocks

HALF = 0.03  # block half size: 6 cm cubes
STEP_SCALE = 0.025  # metres of carriage target displacement per unit action
CARRIAGE_FORCE = 8.0  # newtons: the carriage's force limit (about 7x a block's weight; see the MJCF)
PHYSICS_VERSION = "2: carriage force limit 8 N"  # written into the data: a file of older physics is refused (made again if it is the default one)
SUBSTEPS = 20  # physics steps of 0.0025 s per 0.05 s control step (facts: timestep <= 0.0025 s)
FINGER_CLOSED, FINGER_OPEN = 0.012, 0.05  # finger inner-face offset from the centre (m) at g = 0 / 1
FINGER_HALF_T = 0.005  # finger half thickness (x)
FINGER_BOTTOM, FINGER_TOP = 0.025, 0.045  # fingers span z - 0.025 .. z + 0.045 (palm above, 2 cm)
GRIP_Z_MIN, GRIP_Z_MAX = 0.03, 0.75  # grasp point height range (m)
VIEW_W, VIEW_BELOW, VIEW_ABOVE = 0.48, 0.30, 0.18  # the agent-centred 32x32 window (m)
COLORS = np.array([[66, 133, 244], [219, 68, 55], [244, 160, 0], [15, 157, 88], [171, 71, 188],
                   [0, 172, 193], [255, 112, 67], [158, 157, 36], [92, 107, 192], [240, 98, 146],
                   [121, 85, 72]], dtype=np.float32)
SKY, TABLE, WALL, GRIPPER = (np.array(c, dtype=np.float32) for c in
                             ([225, 230, 235], [150, 110, 70], [70, 70, 70], [30, 30, 30]))


def build_mjcf(num_blocks: int, half_width: float) -> str:
    """MJCF of the table (half width ``half_width``), its barriers, the gripper and the blocks."""
    h = HALF
    cube = " ".join(f"{sx * h} {sy * h} {sz * h}" for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1))
    blocks = "\n".join(
        f"""    <body name="block{i}">
      <joint name="block{i}_x" type="slide" axis="1 0 0"/>
      <joint name="block{i}_z" type="slide" axis="0 0 1"/>
      <joint name="block{i}_a" type="hinge" axis="0 1 0"/>
      <geom name="block{i}" type="mesh" mesh="cube" density="500" contype="3" conaffinity="3" rgba="{' '.join(f'{c / 255:.2f}' for c in COLORS[i % len(COLORS)])} 1"/>
    </body>""" for i in range(num_blocks))
    x_lim = half_width - FINGER_OPEN - 2 * FINGER_HALF_T
    finger_z, finger_h = (FINGER_TOP - FINGER_BOTTOM) / 2, (FINGER_TOP + FINGER_BOTTOM) / 2
    return f"""<mujoco model="block_stacking">
  <!-- facts file: implicitfast + elliptic cones + Newton, dt 0.0025; multiccd for mesh-mesh faces -->
  <option timestep="0.0025" integrator="implicitfast" cone="elliptic" solver="Newton">
    <flag multiccd="enable"/>
  </option>
  <asset>
    <!-- a convex mesh cube, not type="box": mujoco 3.11's box-box collider explodes aligned towers -->
    <mesh name="cube" vertex="{cube}"/>
  </asset>
  <default>
    <geom condim="4" friction="1 0.005 0.0001" solref="0.005 1" solimp="0.95 0.99 0.001"/>
  </default>
  <worldbody>
    <geom name="table" type="plane" size="{half_width} 0.1 0.01" rgba="0.59 0.43 0.27 1"/>
    <geom name="wall_left" type="plane" pos="{-half_width} 0 0" zaxis="1 0 0" size="1 0.1 0.01"/>
    <geom name="wall_right" type="plane" pos="{half_width} 0 0" zaxis="-1 0 0" size="1 0.1 0.01"/>
    <!-- invisible barriers that stop only blocks (contype 2), half a block outside the gripper's reach, so that
         no block can be pushed where the gripper cannot centre over it; the fingers pass through them -->
    <geom name="block_barrier_left" type="plane" pos="{-(x_lim + HALF)} 0 0" zaxis="1 0 0" size="1 0.1 0.01" contype="2" conaffinity="2" rgba="0 0 0 0"/>
    <geom name="block_barrier_right" type="plane" pos="{x_lim + HALF} 0 0" zaxis="-1 0 0" size="1 0.1 0.01" contype="2" conaffinity="2" rgba="0 0 0 0"/>
    <body name="carriage" gravcomp="1">
      <joint name="grip_x" type="slide" axis="1 0 0" range="{-x_lim} {x_lim}" limited="true"/>
      <joint name="grip_z" type="slide" axis="0 0 1" range="{GRIP_Z_MIN - 0.01} {GRIP_Z_MAX}" limited="true"/>
      <inertial pos="0 0 0.05" mass="1" diaginertia="0.01 0.01 0.01"/>
      <geom name="palm" type="box" pos="0 0 {FINGER_TOP + 0.01}" size="{FINGER_OPEN + 2 * FINGER_HALF_T} {HALF} 0.01" mass="0"/>
      <body name="finger_left" gravcomp="1">
        <joint name="finger_left" type="slide" axis="-1 0 0" range="0 {FINGER_OPEN}" limited="true"/>
        <geom name="finger_left" type="box" pos="{-FINGER_HALF_T} 0 {finger_z}" size="{FINGER_HALF_T} {HALF} {finger_h}" mass="0.05"/>
      </body>
      <body name="finger_right" gravcomp="1">
        <joint name="finger_right" type="slide" axis="1 0 0" range="0 {FINGER_OPEN}" limited="true"/>
        <geom name="finger_right" type="box" pos="{FINGER_HALF_T} 0 {finger_z}" size="{FINGER_HALF_T} {HALF} {finger_h}" mass="0.05"/>
      </body>
    </body>
{blocks}
  </worldbody>
  <contact>
    <exclude body1="carriage" body2="finger_left"/>
    <exclude body1="carriage" body2="finger_right"/>
    <exclude body1="finger_left" body2="finger_right"/>
  </contact>
  <actuator>
    <!-- the carriage pushes with at most CARRIAGE_FORCE newtons: unlimited (kp x 2.5 cm = 50 N) it pressed blocks
         up to 16 mm into one another against a barrier, and the squeezed blocks shot up into piles -->
    <position name="grip_x" joint="grip_x" kp="2000" kv="70" forcerange="-{CARRIAGE_FORCE} {CARRIAGE_FORCE}" ctrlrange="{-x_lim} {x_lim}"/>
    <position name="grip_z" joint="grip_z" kp="2000" kv="70" forcerange="-{CARRIAGE_FORCE} {CARRIAGE_FORCE}" ctrlrange="{GRIP_Z_MIN - 0.01} {GRIP_Z_MAX}"/>
    <position name="finger_left" joint="finger_left" kp="1000" kv="14" forcerange="-40 40" ctrlrange="0 {FINGER_OPEN}"/>
    <position name="finger_right" joint="finger_right" kp="1000" kv="14" forcerange="-40 40" ctrlrange="0 {FINGER_OPEN}"/>
  </actuator>
</mujoco>"""


def wrap_angle(angle):
    """Block angle modulo the cube's 90-degree symmetry, in [-pi/4, pi/4)."""
    return (angle + np.pi / 4) % (np.pi / 2) - np.pi / 4


def tower_heights(blocks: np.ndarray) -> np.ndarray:
    """Height in blocks of the supported column under (and including) each block; 0 if unsupported.

    blocks: (N, 3) x, z, angle. A block on the table has height 1; a block resting on a block of
    height k (centres within 0.75 block widths in x, one block height apart in z, +-1.2 cm) has k + 1.
    """
    heights = np.zeros(len(blocks), dtype=np.int64)
    for j in np.argsort(blocks[:, 1]):  # bottom-up, so supporters are resolved first
        x, z = blocks[j, :2]
        if abs(z - HALF) < 0.012:
            heights[j] = 1
            continue
        below = (np.abs(blocks[:, 0] - x) < 1.5 * HALF) & (np.abs(z - blocks[:, 1] - 2 * HALF) < 0.012)
        support = heights[below].max() if below.any() else 0
        heights[j] = support + 1 if support > 0 else 0  # resting on a held block is no tower
    return heights


def covered_blocks(blocks: np.ndarray) -> np.ndarray:
    """(N,) bool: another block rests on this one (centres within 0.75 block widths in x, one block height
    higher, +-1.2 cm), as tower_heights counts support."""
    return np.array([((np.abs(blocks[:, 0] - b[0]) < 1.5 * HALF)
                      & (np.abs(blocks[:, 1] - b[1] - 2 * HALF) < 0.012)).any() for b in blocks])


def draw_front_view(state: np.ndarray, x_range, z_range, width: int, height: int, half_width: float,
                    supersample: int = 2) -> np.ndarray:
    """(height, width, 3) uint8 front view of the x-z window ``x_range`` x ``z_range``, drawn from
    ``state`` (the env's state vector) by point-sampling ``supersample``^2 points per pixel."""
    w, h = width * supersample, height * supersample
    xs = x_range[0] + (np.arange(w) + 0.5) * (x_range[1] - x_range[0]) / w  # (w,) pixel centres
    zs = z_range[0] + (np.arange(h)[::-1] + 0.5) * (z_range[1] - z_range[0]) / h  # (h,), top row first
    img = np.empty((h, w, 3), np.float32)
    img[:] = SKY
    img[:, np.abs(xs) > half_width] = WALL
    img[zs < 0] = TABLE

    px, pz = (x_range[1] - x_range[0]) / w, (z_range[1] - z_range[0]) / h  # pixel size (m)

    def span(x_lo, x_hi, z_lo, z_hi):  # (rows, cols) of the pixel centres inside the rectangle
        def index(a, b, n):  # first centre >= a, last centre <= b (+1), on a grid of n centres
            return slice(min(max(math.ceil(a - 0.5), 0), n), min(max(math.floor(b - 0.5) + 1, 0), n))
        return (index((z_range[1] - z_hi) / pz, (z_range[1] - z_lo) / pz, h),
                index((x_lo - x_range[0]) / px, (x_hi - x_range[0]) / px, w))

    blocks = state[3:].reshape(-1, 3)
    reach = 1.5 * HALF  # a rotated cube stays within 1.42 half sizes of its centre
    for i, (x, z, angle) in enumerate(blocks):
        rows, cols = span(x - reach, x + reach, z - reach, z + reach)
        if rows.start >= rows.stop or cols.start >= cols.stop:
            continue
        dx, dz = xs[cols][None, :] - x, zs[rows][:, None] - z
        c, s = np.cos(angle), np.sin(angle)
        inside = (np.abs(c * dx - s * dz) < HALF) & (np.abs(s * dx + c * dz) < HALF)  # in the block's frame
        img[rows, cols][inside] = COLORS[i % len(COLORS)]
    gx, gz, opening = state[:3]
    inner = FINGER_CLOSED + opening * (FINGER_OPEN - FINGER_CLOSED)
    for x_lo, x_hi, z_lo, z_hi in ((gx - inner - 2 * FINGER_HALF_T, gx - inner, gz - FINGER_BOTTOM, gz + FINGER_TOP),
                                   (gx + inner, gx + inner + 2 * FINGER_HALF_T, gz - FINGER_BOTTOM, gz + FINGER_TOP),
                                   (gx - FINGER_OPEN - 2 * FINGER_HALF_T, gx + FINGER_OPEN + 2 * FINGER_HALF_T,
                                    gz + FINGER_TOP, gz + FINGER_TOP + 0.02)):  # two fingers and the palm
        img[span(x_lo, x_hi, z_lo, z_hi)] = GRIPPER
    pixels = sum(img[i::supersample, j::supersample] for i in range(supersample) for j in range(supersample))
    return (pixels / supersample**2 + 0.5).astype(np.uint8)  # box filter, rounded


class BlockStackingEnv(gym.Env):
    """Planar block stacking; see the module docstring for spaces, reward and layouts."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(self, num_blocks: int = 11, layout: str = "row", half_width: float | None = None,
                 max_episode_steps: int = 1000, image_obs: bool = True, layout_seed: int | None = 0,
                 render_mode: str | None = None, reward: str = "dense"):
        if not 1 <= num_blocks <= 20:
            raise ValueError(f"num_blocks must be in 1..20, got {num_blocks}")
        if reward not in ("dense", "sparse"):
            raise ValueError(f"reward must be 'dense' (the paper's) or 'sparse' (the tower's height only), got {reward!r}")
        self.reward = reward
        if layout not in ("row", "ground", "random_stacks"):
            raise ValueError(f"layout must be 'row', 'ground' or 'random_stacks', got {layout!r}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.num_blocks, self.layout, self.image_obs = num_blocks, layout, image_obs
        row_end = (num_blocks - 1) / 2 * ROW_SPACING  # the row's outermost block centres
        if half_width is None:  # the row: the authors' margin of one spacing to the table's edge; else 0.4 / 0.8 m
            half_width = row_end + ROW_SPACING if layout == "row" else (0.4 if num_blocks <= 5 else 0.8)
        self.half_width = half_width
        if 2 * self.half_width < 0.11 * num_blocks + 0.1 or (
                layout == "row" and row_end + HALF > self.half_width - FINGER_OPEN - 2 * FINGER_HALF_T):
            raise ValueError(f"table half width {self.half_width} m is too small for {num_blocks} blocks "
                             f"in layout {layout!r}")
        self.max_episode_steps, self.layout_seed, self.render_mode = max_episode_steps, layout_seed, render_mode
        self.model = mujoco.MjModel.from_xml_string(build_mjcf(num_blocks, self.half_width))
        self.data = mujoco.MjData(self.model)
        self.x_limit = float(self.model.jnt_range[0, 1])
        self.action_space = gym.spaces.Box(np.array([-1, -1, 0], np.float32), np.ones(3, np.float32))
        spaces = {"state": gym.spaces.Box(-np.inf, np.inf, (3 + 3 * num_blocks,), np.float32)}
        if image_obs:
            spaces["image"] = gym.spaces.Box(0, 255, (6, 32, 32), np.uint8)
        self.observation_space = gym.spaces.Dict(spaces)
        self._frames, self._t = None, 0
        self._lifted_flags, self._delivered_flags = np.zeros((2, num_blocks), dtype=bool)  # per episode (reset)

    # --- state, image, reward -------------------------------------------------------------------
    def state(self) -> np.ndarray:
        q = self.data.qpos
        opening = (q[2] + q[3]) / 2
        blocks = q[4:].reshape(-1, 3).copy()
        blocks[:, 2] = wrap_angle(blocks[:, 2])
        grip = [q[0], q[1], (opening - FINGER_CLOSED) / (FINGER_OPEN - FINGER_CLOSED)]
        return np.concatenate([grip, blocks.ravel()]).astype(np.float32)

    def _frame(self, state):
        gx, gz = state[0], state[1]
        view = draw_front_view(state, (gx - VIEW_W / 2, gx + VIEW_W / 2), (gz - VIEW_BELOW, gz + VIEW_ABOVE),
                               32, 32, self.half_width)
        return view.transpose(2, 0, 1)  # (3, 32, 32)

    def _obs(self, state):
        obs = {"state": state}
        if self.image_obs:
            obs["image"] = np.concatenate(self._frames)  # (6, 32, 32), oldest first
        return obs

    @staticmethod
    def _lifted_blocks(state, heights) -> np.ndarray:
        """(N,) bool: the block is between the closed fingers, not resting on the table or a tower, and its
        bottom is >= 2 cm above the table."""
        gx, gz, opening = state[:3]
        blocks = state[3:].reshape(-1, 3)
        return ((np.abs(blocks[:, 0] - gx) < 0.5 * HALF) & (np.abs(blocks[:, 1] - gz) < HALF)
                & (opening < 0.6) & (heights == 0) & (blocks[:, 1] - HALF > 0.02))

    def task_info(self, state, heights=None) -> dict:
        """blocks_stacked (the metric), and whether a block is lifted / stacked in ``state``; ``heights``:
        tower_heights of its blocks when the caller has them already."""
        heights = tower_heights(state[3:].reshape(-1, 3)) if heights is None else heights
        blocks_stacked = int(max(heights.max() - 1, 0))
        return {"blocks_stacked": blocks_stacked, "lifted": bool(self._lifted_blocks(state, heights).any()),
                "stacked": blocks_stacked > 0}

    def _reward(self, state, heights) -> float:
        """The authors' per-step reward (module docstring); updates the episode's lifted / delivered flags."""
        blocks = state[3:].reshape(-1, 3)
        self._lifted_flags |= self._lifted_blocks(state, heights)
        dx = np.abs(blocks[:, None, 0] - blocks[None, :, 0])  # (N, N): block i vs block j
        dz = blocks[:, None, 1] - blocks[None, :, 1]
        above_another = ((dx < HALF) & (dz > 2 * HALF - 0.005)).any(axis=1)  # over some other block, higher up
        self._delivered_flags |= self._lifted_flags & above_another
        flags = np.where(self._delivered_flags, DELIVERED_REWARD, np.where(self._lifted_flags, LIFTED_REWARD, 0.0))
        built = (heights > 0) & self._lifted_flags  # supported blocks the agent has placed
        height = max(((blocks[built, 1] - HALF) / (2 * HALF)).max(initial=0.0), 0.0)  # in blocks above the ground
        if self.reward == "sparse":  # the authors' SparseHighStack: the tower's height only
            return float(SPARSE_REWARD_PER_BLOCK * height)
        return float(flags.sum() + HEIGHT_REWARD_PER_BLOCK * height)

    # --- gym API ----------------------------------------------------------------------------------
    def _sample_layout(self, rng) -> np.ndarray:
        """(N, 3) block x, z, angle: in the fixed row, on the ground at random spots, or randomly stacked."""
        if self.layout == "row":
            xs = (np.arange(self.num_blocks) - (self.num_blocks - 1) / 2) * ROW_SPACING
            return np.stack([xs, np.full(self.num_blocks, HALF), np.zeros(self.num_blocks)], axis=1)
        num_columns = self.num_blocks
        if self.layout == "random_stacks":  # 1-3 blocks per column, in random order
            heights = [1] * self.num_blocks
            while len(heights) > 1 and rng.random() < 0.6:
                i, j = rng.choice(len(heights), 2, replace=False)
                if heights[i] + heights[j] <= 3:
                    heights[i] += heights[j]
                    del heights[j]
            num_columns = len(heights)
        else:
            heights = [1] * num_columns
        # columns >= 0.11 m apart (room for an open finger in between), uniform over such layouts
        lo, hi, gap = -self.half_width + 0.06, self.half_width - 0.06, 0.11
        xs = np.sort(rng.uniform(lo, hi - (num_columns - 1) * gap, num_columns)) + gap * np.arange(num_columns)
        blocks = [[x, HALF + k * (2 * HALF + 1e-4), 0.0] for x, h in zip(xs, heights) for k in range(h)]
        return np.array(blocks)[rng.permutation(self.num_blocks)]

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        mujoco.mj_resetData(self.model, self.data)
        layout_rng = self.np_random if self.layout_seed is None else np.random.default_rng(self.layout_seed)
        blocks = self._sample_layout(layout_rng)
        q = self.data.qpos
        q[0], q[1] = self.np_random.uniform(-0.1, 0.1), 0.3
        q[2] = q[3] = FINGER_OPEN
        q[4:] = blocks.ravel()
        self.data.ctrl[:] = [q[0], q[1], FINGER_OPEN, FINGER_OPEN]
        mujoco.mj_step(self.model, self.data, nstep=SUBSTEPS)  # let the blocks settle (<0.1 mm gaps)
        self._t = 0
        self._lifted_flags, self._delivered_flags = np.zeros((2, self.num_blocks), dtype=bool)
        state = self.state()
        if self.image_obs:
            frame = self._frame(state)
            self._frames = [frame, frame]
        return self._obs(state), {**self.task_info(state), "reward_flags": self.reward_flags()}

    def reward_flags(self) -> np.ndarray:
        """(2 * num_blocks,) float32: each block's lifted flag, then its delivered flag (0 / 1), as the reward
        holds them for the rest of the episode. The reward depends on them but the state does not show them (a
        block dropped back on the table keeps its flags); ``spirl_sac.py --critic-reward-flags`` gives them to the
        critics, which otherwise see the same state with and without them."""
        return np.concatenate([self._lifted_flags, self._delivered_flags]).astype(np.float32)

    def step(self, action):
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (3,):
            raise ValueError(f"action must have shape (3,): (dx, dz) in [-1, 1] and grip in [0, 1]; got {action.shape}")
        if not np.isfinite(action).all():
            raise ValueError(f"action must be finite, got {action}")
        action = np.clip(action, self.action_space.low, self.action_space.high)
        q = self.data.qpos
        # facts: target = current position + a * 0.025 m, so the target never winds up ahead
        self.data.ctrl[0] = np.clip(q[0] + action[0] * STEP_SCALE, -self.x_limit, self.x_limit)
        self.data.ctrl[1] = np.clip(q[1] + action[1] * STEP_SCALE, GRIP_Z_MIN - 0.01, GRIP_Z_MAX)
        self.data.ctrl[2:] = FINGER_CLOSED + action[2] * (FINGER_OPEN - FINGER_CLOSED)
        mujoco.mj_step(self.model, self.data, nstep=SUBSTEPS)
        self._t += 1
        state = self.state()
        if self.image_obs:
            self._frames = [self._frames[1], self._frame(state)]
        heights = tower_heights(state[3:].reshape(-1, 3))  # once per step, for the reward and the info
        reward = self._reward(state, heights)
        info = {**self.task_info(state, heights), "blocks_lifted": int(self._lifted_flags.sum()),
                "blocks_delivered": int(self._delivered_flags.sum()), "reward_flags": self.reward_flags()}
        truncated = self._t >= self.max_episode_steps
        return self._obs(state), reward, False, truncated, info

    def render(self):
        """(240, W, 3) uint8 front view of the whole table (render_mode="rgb_array")."""
        if self.render_mode != "rgb_array":
            raise ValueError('render() needs make_env(render_mode="rgb_array")')
        top = 0.78
        width = int(round(240 * (2 * self.half_width + 0.1) / (top + 0.05)))
        return draw_front_view(self.state(), (-self.half_width - 0.05, self.half_width + 0.05), (-0.05, top),
                               width, 240, self.half_width, supersample=1)


def make_env(seed=None, render_mode=None, num_blocks: int = 11, **kwargs) -> BlockStackingEnv:
    """The downstream task (appendix C): stack as many of ``num_blocks`` blocks as possible, 1000 steps; the
    blocks start in the authors' fixed row (``layout="row"``).

    kwargs go to BlockStackingEnv (layout, half_width, max_episode_steps, image_obs, layout_seed, reward).
    """
    env = BlockStackingEnv(num_blocks=num_blocks, render_mode=render_mode, **kwargs)
    env.reset(seed=seed)
    env.action_space.seed(seed)
    return env


def waypoint_action(env: BlockStackingEnv, rng: np.random.Generator, err, grip: float, tol: float, gain: float,
                    action_noise: float) -> np.ndarray:
    """The scripted policies' action toward a waypoint ``err`` (dx, dz) m away: the carriage moves at ``gain`` of the
    speed that would close the gap in one step, Gaussian noise is added on all but the precise moves (``tol`` <= 5
    mm, so grasps and placements line up), and the fingers are set to ``grip``."""
    move = np.clip(err / STEP_SCALE * gain, -1, 1)
    if tol > 0.005:
        move = move + rng.normal(0, action_noise, 2)
    return np.clip(np.array([move[0], move[1], grip], np.float32), env.action_space.low, env.action_space.high)


class ScriptedStacker:
    """Noisy hand-coded stacking policy (appendix C) acting on the env's state vector.

    A stack is a queue of waypoints (x, z, grip, tolerance, hold steps): rise, move over a free
    block, descend, close, lift above every tower, carry over another free block or tower, lower,
    open, rise. Pseudo-random subgoals are inserted between and within stacks (probability
    ``subgoal_prob`` at each insertion point), and Gaussian noise is added to every action.

    The data's stacks build one tower, as the authors' data generator does (its
    ``FixedSizeSingleTowerBlockTaskGenerator`` chains (bottom, top) pairs, each top the next bottom;
    the paper: "up to three consecutive stacking manipulations"): the first stack puts a random free
    block on another; every later one puts a random free block on the block placed last, wherever it
    landed, or, when that block cannot take one (covered, tilted, too high), on a random free block.
    ``build_tower`` always targets the highest tower (an upper-bound reference for the downstream task,
    not used for the data).

    ``grasp_miss_prob`` > 0 makes grasps fail and be retried, as the authors' data policy does (its default,
    ``ClosedLoopBlockStackDemoPolicy``, repeats the grasp until the block is lifted): with that probability a
    descent is aimed 2-14 cm beside the source, so the open fingers land on the block or reach the table
    next to it; they close, rise, and when the block did not come along the stack starts its grasp again
    from above the block (at most ``max_retries`` retries, the last one aimed exactly). Without it every
    grasp lands (0, the default data).

    ``low_subgoal_prob`` > 0: with that probability a stack starts with a pseudo-random subgoal on the table
    (the gripper goes down, open, to a spot with no block within 9 cm, then rises and goes on), so the data
    show the way up from there; the paper's subgoals are "placed in between and within stacking sequences"
    to increase the data's support, ours otherwise lie above the blocks (0, the default data).
    """

    def __init__(self, env: BlockStackingEnv, rng: np.random.Generator, num_stacks: int,
                 action_noise: float = 0.1, subgoal_prob: float = 0.3, build_tower: bool = False,
                 grasp_miss_prob: float = 0.0, max_retries: int = 2, low_subgoal_prob: float = 0.0):
        self.env, self.rng, self.stacks_left = env, rng, num_stacks
        self.action_noise, self.subgoal_prob, self.build_tower = action_noise, subgoal_prob, build_tower
        self.grasp_miss_prob, self.max_retries, self.low_subgoal_prob = grasp_miss_prob, max_retries, low_subgoal_prob
        self.gain = rng.uniform(0.5, 1.0)  # per-trajectory speed, for diverse skills
        self.waypoints, self.hold, self.attempts = [], 0, []  # attempts: (source, target) per stack
        # waypoints: (x, z, grip, tolerance, hold steps, step limit or None, check the grasp when reached)
        self.waypoint_steps, self.retries, self.failed_grasps = 0, 0, 0
        self.heights = None  # (empty_z, carry_z) of the current stack, for a retried grasp

    def _subgoal(self, z_min, grip):
        lim = self.env.x_limit
        return (self.rng.uniform(-lim, lim), self.rng.uniform(z_min, min(z_min + 0.2, GRIP_Z_MAX)), grip, 0.03, 0,
                None, False)

    def _grasp(self, sx, sz, empty_z, carry_z):
        """Waypoints of one grasp of the block at (sx, sz): over it, down, close, up to carrying height. A missed
        grasp (grasp_miss_prob) is aimed beside the block; the descent and the closing then stop at a step limit
        (the fingers rest on the block), and reaching carrying height checks whether the block came along."""
        x = sx
        if self.retries < self.max_retries and self.grasp_miss_prob > 0 and self.rng.random() < self.grasp_miss_prob:
            x = float(np.clip(sx + self.rng.choice([-1.0, 1.0]) * self.rng.uniform(0.02, 0.14),
                              -self.env.x_limit, self.env.x_limit))
        return [(x, empty_z, 1.0, 0.01, 0, None, False), (x, sz, 1.0, 0.004, 0, 40, False),
                (x, sz, 0.0, 0.004, 6, 12, False), (x, carry_z, 0.0, 0.02, 0, None, True)]

    def _plan(self, state) -> bool:
        """Queue the waypoints of one stack; False if no (source, target) pair exists."""
        blocks = state[3:].reshape(-1, 3)
        heights = tower_heights(blocks)
        free = np.flatnonzero(~covered_blocks(blocks) & (heights > 0) & (np.abs(blocks[:, 2]) < 0.15))
        pairs = [(s, t) for s in free for t in free
                 if abs(blocks[s, 0] - blocks[t, 0]) > 0.08 and blocks[t, 1] + 4 * HALF + 0.1 < GRIP_Z_MAX]
        if self.build_tower and pairs:
            tallest = max(heights[t] for _, t in pairs)
            pairs = [(s, t) for s, t in pairs if heights[t] == tallest]
            pairs = [(s, t) for s, t in pairs if heights[s] == 1] or pairs  # lone blocks first
        elif self.attempts:  # the authors' chain: the block placed last is the next target
            pairs = [(s, t) for s, t in pairs if t == self.attempts[-1][0]] or pairs
        if not pairs:
            return False
        s, t = pairs[self.rng.integers(len(pairs))]
        self.attempts.append((int(s), int(t)))
        top = blocks[:, 1].max() + HALF  # highest block top
        empty_z = min(top + FINGER_BOTTOM + 0.03, GRIP_Z_MAX)  # open fingers clear every block
        carry_z = min(top + 2 * HALF + 0.04, GRIP_Z_MAX)  # a held block clears every block (and, empty,
        # the fingers clear the new tower)
        sx, sz, tx, tz = blocks[s, 0], blocks[s, 1], blocks[t, 0], blocks[t, 1]
        gx = state[0]
        plan = [(gx, empty_z, 1.0, 0.02, 0, None, False)]
        if self.low_subgoal_prob > 0 and self.rng.random() < self.low_subgoal_prob:  # down to the table and up
            lim = self.env.x_limit
            spots = [x for x in self.rng.uniform(-lim, lim, 20) if np.abs(blocks[:, 0] - x).min() > 0.09]
            if spots:
                plan += [(spots[0], empty_z, 1.0, 0.02, 0, None, False),
                         (spots[0], GRIP_Z_MIN, 1.0, 0.004, int(self.rng.integers(0, 6)), 40, False),
                         (spots[0], empty_z, 1.0, 0.02, 0, None, False)]
        if self.rng.random() < self.subgoal_prob:  # between stacks
            plan.append(self._subgoal(empty_z, self.rng.uniform(0, 1)))
        self.retries, self.heights = 0, (empty_z, carry_z)
        plan += self._grasp(sx, sz, empty_z, carry_z)
        if self.rng.random() < self.subgoal_prob:  # within the stack, while carrying
            plan.append(self._subgoal(carry_z, 0.0))
        plan += [(tx, carry_z, 0.0, 0.01, 0, None, False), (tx, tz + 2 * HALF + 0.004, 0.0, 0.004, 2, None, False),
                 (tx, tz + 2 * HALF + 0.004, 1.0, 0.01, 6, None, False), (tx, carry_z, 1.0, 0.02, 0, None, False)]
        self.waypoints = plan
        return True

    def _check_grasp(self, state):
        """At carrying height after a grasp: if the source block did not come along, grasp it again from above
        (up to max_retries), else give the stack up."""
        source = self.attempts[-1][0]
        block = state[3:].reshape(-1, 3)[source]
        if abs(block[0] - state[0]) < HALF and block[1] > HALF + 0.02:  # held and off the ground or its tower
            return
        self.failed_grasps += 1
        upright = abs(block[2]) < 0.15 and not covered_blocks(state[3:].reshape(-1, 3))[source]
        if self.retries >= self.max_retries or not upright:
            self.waypoints = []  # next act() plans the next stack
            return
        self.retries += 1
        empty_z, carry_z = self.heights
        self.waypoints = [(state[0], empty_z, 1.0, 0.02, 0, None, False)] + self._grasp(
            block[0], block[1], empty_z, carry_z) + self.waypoints

    def done(self) -> bool:
        return not self.waypoints and self.stacks_left == 0

    def act(self, state) -> np.ndarray:
        if not self.waypoints:
            if self.stacks_left == 0 or not self._plan(state):
                self.stacks_left = 0
                return np.array([0.0, 0.0, 1.0], np.float32)
            self.stacks_left -= 1
        x, z, grip, tol, hold, step_limit, check = self.waypoints[0]
        err = np.array([x - state[0], z - state[1]])
        self.waypoint_steps += 1
        if np.abs(err).max() < tol:
            self.hold += 1
        if self.hold > hold or (step_limit is not None and self.waypoint_steps > step_limit):
            self.waypoints.pop(0)
            self.hold = self.waypoint_steps = 0
            if check:
                self._check_grasp(state)
        return waypoint_action(self.env, self.rng, err, grip, tol, self.gain, self.action_noise)


def view_limited_plan(state, half_width, pixel=None):
    """The next few waypoints (x, z, grip, tolerance, hold) of a memoryless controller that decides only from
    what the policy's frames show: the blocks inside the 0.48 m window around the gripper, the wall when it is in the
    window, and whether a block is in the fingers. Its one rule of thumb is a landmark and a direction: the tower goes
    on the block nearest the left wall; with a block in hand it travels left until the wall is in view, empty-handed it
    takes the nearest free block in view, or travels right until one is. ``pixel`` (m): the blocks' positions relative
    to the gripper rounded to it (the frames' 0.48 m / 32 = 1.5 cm), towers and holding still read from the state."""
    gx, gz = state[:2]
    blocks = state[3:].reshape(-1, 3)
    heights, covered = tower_heights(blocks), covered_blocks(blocks)
    held = BlockStackingEnv._lifted_blocks(state, heights)
    if pixel:  # where the blocks are, relative to the gripper, only to the frames' pixel
        blocks = blocks.copy()
        blocks[:, :2] = state[:2] + np.round((blocks[:, :2] - state[:2]) / pixel) * pixel
    visible = ((np.abs(blocks[:, 0] - gx) < VIEW_W / 2) & (blocks[:, 1] > gz - VIEW_BELOW)
               & (blocks[:, 1] < gz + VIEW_ABOVE))
    wall_in_view = gx - VIEW_W / 2 < -half_width
    top = max((blocks[visible & ~held, 1] + HALF).max(initial=0.0), 2 * HALF)  # highest block top in view
    empty_z = min(top + FINGER_BOTTOM + 0.03, GRIP_Z_MAX)  # open fingers clear every block in view
    carry_z = min(top + 2 * HALF + 0.04, GRIP_Z_MAX)  # and so does a held block
    if held.any():
        others = visible & ~held
        if not (wall_in_view and others.any()):
            return [(gx - 0.1, carry_z, 0.0, 0.02, 0)]
        tx = blocks[others, 0].min()  # the column nearest the wall
        tz = blocks[others & (np.abs(blocks[:, 0] - tx) < 1.5 * HALF), 1].max()
        return [(tx, carry_z, 0.0, 0.01, 0), (tx, tz + 2 * HALF + 0.004, 0.0, 0.004, 2),
                (tx, tz + 2 * HALF + 0.004, 1.0, 0.01, 6), (tx, carry_z, 1.0, 0.02, 0)]
    free = visible & (heights == 1) & ~covered
    if wall_in_view:
        free &= blocks[:, 0] > -half_width + 0.2  # the block by the wall is the tower's base
    if not free.any():
        return [(gx + 0.1, empty_z, 1.0, 0.02, 0)]
    i = np.flatnonzero(free)[np.argmin(np.abs(blocks[free, 0] - gx))]
    bx, bz = blocks[i, :2]
    return [(gx, empty_z, 1.0, 0.02, 0), (bx, empty_z, 1.0, 0.01, 0), (bx, bz, 1.0, 0.004, 0), (bx, bz, 0.0, 0.004, 6),
            (bx, carry_z, 0.0, 0.02, 0)]


class ViewLimitedStacker:
    """Noisy memoryless stacking policy that decides only from what the prior's frames show (``--script
    view-limited``; ours, not the paper's data policy): ``view_limited_plan``'s waypoints, planned again from the
    current state whenever the last plan is done, followed as ScriptedStacker follows its own (per-trajectory speed,
    Gaussian noise on all but the precise descents, a waypoint given up after ``waypoint_limit`` steps). Its data
    show the routine a policy with two local frames and no memory can follow: fetch the nearest block in view, or
    travel right until one is; carry it left until the wall is in view; put it on the column nearest the wall. It
    finishes when its plan is a trip past the end of the gripper's range (empty-handed at the right end with no free
    block in view, or holding a block at the left end with none to put it on), else a trajectory runs to
    ``max_steps``."""

    def __init__(self, env: BlockStackingEnv, rng: np.random.Generator, action_noise: float = 0.1,
                 waypoint_limit: int = 60):
        self.env, self.rng, self.action_noise, self.waypoint_limit = env, rng, action_noise, waypoint_limit
        self.gain = rng.uniform(0.5, 1.0)  # per-trajectory speed, for diverse skills
        self.waypoints, self.hold, self.waypoint_steps, self.finished = [], 0, 0, False
        self.attempts, self.failed_grasps = [], 0  # ScriptedStacker's bookkeeping, empty: no planned (source, target)

    def done(self) -> bool:
        return self.finished

    def act(self, state) -> np.ndarray:
        if not self.waypoints:
            self.waypoints = view_limited_plan(state, self.env.half_width)
            travel_x = self.waypoints[0][0]  # a one-waypoint plan is a trip left or right, 0.1 m a time
            at_wall = abs(state[0]) > self.env.x_limit - 0.03
            if len(self.waypoints) == 1 and abs(travel_x) > self.env.x_limit and at_wall:
                self.finished = True  # a trip past a wall: nothing left that the window shows
        x, z, grip, tol, hold = self.waypoints[0]
        err = np.array([x - state[0], z - state[1]])
        self.waypoint_steps += 1
        if np.abs(err).max() < tol:
            self.hold += 1
        if self.hold > hold or self.waypoint_steps > self.waypoint_limit:
            self.waypoints.pop(0)
            self.hold = self.waypoint_steps = 0
        return waypoint_action(self.env, self.rng, err, grip, tol, self.gain, self.action_noise)


def stack_succeeded(state, source: int, target: int) -> bool:
    """Whether block ``source`` rests on block ``target`` in ``state``."""
    blocks = state[3:].reshape(-1, 3)
    return bool(abs(blocks[source, 0] - blocks[target, 0]) < 1.5 * HALF
                and abs(blocks[source, 1] - blocks[target, 1] - 2 * HALF) < 0.012)


def collect_trajectory(env: BlockStackingEnv, rng: np.random.Generator, random_actions: bool = False,
                       max_steps: int = 400, grasp_miss_prob: float = 0.0, low_subgoal_prob: float = 0.0,
                       script: str = "chain") -> dict:
    """One data trajectory in ``env``: the noisy scripted policy doing 3 consecutive stacks (``script="chain"``;
    ``"view-limited"``: ViewLimitedStacker until it finishes), or, with ``random_actions``, 100-250 uniformly random
    actions (appendix G's low-quality data).

    Returns states (T, S), actions (T, A), frames (T, 3, 32, 32) (the newest frame of each
    observation), stack_outcomes (one bool per stack attempt), attempts ((source, target) per stack),
    failed_grasps (grasps retried or given up, with ``grasp_miss_prob``), the final state and the final info.
    """
    obs, info = env.reset(seed=int(rng.integers(2**31)))
    states, actions, frames, outcomes = [], [], [], []
    if random_actions:
        policy = None
    elif script == "view-limited":
        policy = ViewLimitedStacker(env, rng)
    else:
        policy = ScriptedStacker(env, rng, num_stacks=3, grasp_miss_prob=grasp_miss_prob,
                                 low_subgoal_prob=low_subgoal_prob)
    length = int(rng.integers(100, 251)) if random_actions else max_steps
    for _ in range(length):
        if random_actions:
            action = rng.uniform(env.action_space.low, env.action_space.high).astype(np.float32)
        else:
            attempts_before = len(policy.attempts)
            action = policy.act(obs["state"])
            if attempts_before and (len(policy.attempts) > attempts_before or policy.done()):
                outcomes.append(stack_succeeded(obs["state"], *policy.attempts[attempts_before - 1]))
            if policy.done():
                break
        states.append(obs["state"])
        if "image" in obs:
            frames.append(obs["image"][3:])
        actions.append(action)
        obs, _, _, _, info = env.step(action)
    if policy is not None and len(policy.attempts) > len(outcomes):  # a stack cut off by max_steps
        outcomes.append(stack_succeeded(obs["state"], *policy.attempts[-1]))
    return {"states": np.array(states), "actions": np.array(actions), "frames": np.array(frames),
            "stack_outcomes": outcomes, "attempts": [] if policy is None else policy.attempts,
            "failed_grasps": 0 if policy is None else policy.failed_grasps,
            "final_state": obs["state"], "info": info}


def training_env(image_obs: bool = True, half_width: float | None = None) -> BlockStackingEnv:
    """The data-collection env of appendix C: 5 blocks, randomly stacked or placed in between, on a table of half
    width ``half_width`` (None: 0.4 m, a 0.8 m table)."""
    return BlockStackingEnv(num_blocks=5, layout="random_stacks", layout_seed=None, image_obs=image_obs,
                            half_width=half_width)


def generate_dataset(out: str, num_trajectories: int = DEFAULT_NUM_TRAJECTORIES, random_fraction: float = 0.0,
                     seed: int = 0, max_steps: int = 400, grasp_miss_prob: float = 0.0,
                     low_subgoal_prob: float = 0.0, table_half_width: float | None = None,
                     script: str = "chain") -> str:
    """Collect ``num_trajectories`` in the training env (its table of half width ``table_half_width``, None: the
    default 0.4 m) with the data policy ``script`` ("chain": ScriptedStacker, "view-limited": ViewLimitedStacker)
    and write D4RL-style HDF5 to ``out`` atomically.

    Keys: states (N, 18) f32, actions (N, 3) f32, terminals (N,) bool (always False: no task end),
    timeouts (N,) bool (True on each trajectory's last step), frames (N, 3, 32, 32) u8 (the newest
    32x32 view of each observation; load_dataset stacks consecutive frames into "images").
    """
    if num_trajectories < 1:
        raise ValueError(f"--num-trajectories must be >= 1, got {num_trajectories}")
    if not 0.0 <= random_fraction <= 1.0:
        raise ValueError(f"--random-fraction must be in [0, 1], got {random_fraction}")
    if script not in SCRIPTS:
        raise ValueError(f"--script must be one of {', '.join(SCRIPTS)}, got {script!r}")
    for name, value in (("grasp-miss-prob", grasp_miss_prob), ("low-subgoal-prob", low_subgoal_prob)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"--{name} must be in [0, 1], got {value}")
    rng = np.random.default_rng(seed)
    env = training_env(half_width=table_half_width)
    num_random = int(round(random_fraction * num_trajectories))
    is_random = np.zeros(num_trajectories, bool)
    is_random[rng.choice(num_trajectories, num_random, replace=False)] = True
    ensure_writable(out, "dataset")  # fails now, not after the collection
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = f"{out}.{os.getpid()}.tmp"  # unique: concurrent "auto" generations cannot collide
    S, A = env.observation_space["state"].shape[0], 3
    try:
        with h5py.File(tmp, "w") as f:
            dsets = {"states": f.create_dataset("states", (0, S), "f4", maxshape=(None, S), chunks=(1024, S)),
                     "actions": f.create_dataset("actions", (0, A), "f4", maxshape=(None, A), chunks=(1024, A)),
                     "terminals": f.create_dataset("terminals", (0,), bool, maxshape=(None,), chunks=(4096,)),
                     "timeouts": f.create_dataset("timeouts", (0,), bool, maxshape=(None,), chunks=(4096,)),
                     "frames": f.create_dataset("frames", (0, 3, 32, 32), "u1", maxshape=(None, 3, 32, 32),
                                                chunks=(256, 3, 32, 32), compression="lzf")}
            outcomes, heights, failed_grasps = [], [], 0
            for i in tqdm(range(num_trajectories), desc="block_stacking data", unit="traj"):
                traj = collect_trajectory(env, rng, random_actions=bool(is_random[i]), max_steps=max_steps,
                                          grasp_miss_prob=grasp_miss_prob, low_subgoal_prob=low_subgoal_prob,
                                          script=script)
                T = len(traj["actions"])
                ends = np.zeros(T, bool)
                ends[-1] = True
                for key, value in (("states", traj["states"]), ("actions", traj["actions"]), ("frames", traj["frames"]),
                                   ("terminals", np.zeros(T, bool)), ("timeouts", ends)):
                    dsets[key].resize(dsets[key].shape[0] + T, axis=0)
                    dsets[key][-T:] = value
                if not is_random[i]:
                    outcomes += traj["stack_outcomes"]
                    heights.append(traj["info"]["blocks_stacked"])
                    failed_grasps += traj["failed_grasps"]
            f.attrs.update(num_blocks=5, num_trajectories=num_trajectories, random_fraction=random_fraction, seed=seed,
                           grasp_miss_prob=grasp_miss_prob, failed_grasps=failed_grasps, low_subgoal_prob=low_subgoal_prob,
                           table_half_width=env.half_width, script=script,
                           physics_version=PHYSICS_VERSION,
                           stack_success_rate=float(np.mean(outcomes)) if outcomes else float("nan"),
                           mean_final_blocks_stacked=float(np.mean(heights)) if heights else float("nan"),
                           source=(f"{num_trajectories} trajectories ({num_random} random-action) of the noisy scripted "
                                   f"stacking policy in the 5-block training env, envs/block_stacking.py, seed {seed}"
                                   + (", the view-limited memoryless script" if script == "view-limited" else "")
                                   + (f", grasp miss probability {grasp_miss_prob}" if grasp_miss_prob else "")
                                   + (f", table subgoal probability {low_subgoal_prob}" if low_subgoal_prob else "")
                                   + (f", table half width {env.half_width} m" if table_half_width is not None else "")))
    except BaseException:  # interrupted or failed: leave no partial file behind
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    os.replace(tmp, out)
    return out


def pad_states(states: np.ndarray, num_blocks: int) -> np.ndarray:
    """States of a smaller env laid out like a ``num_blocks`` env's: the missing block slots repeat
    the real blocks (slot k holds block k mod n).

    The skill model and the RL critic share one state layout with the downstream env, and the critic's
    inputs are normalised per dim with the data's statistics; repeated real blocks give every padded
    dim a real block's spread (constant padding would have none and blow up that normalisation).
    """
    have = (states.shape[1] - 3) // 3
    if num_blocks <= have:
        return states
    blocks = states[:, 3:].reshape(len(states), have, 3)[:, np.arange(num_blocks) % have]  # (N, num_blocks, 3)
    return np.concatenate([states[:, :3], blocks.reshape(len(states), -1)], axis=1)


def _older_physics(path: str) -> str | None:
    """The physics version of a file our collector wrote before the current one (None: current, or not ours)."""
    try:
        with h5py.File(path, "r") as f:
            ours = "envs/block_stacking.py" in str(f.attrs.get("source", ""))
            version = f.attrs.get("physics_version", "1: unlimited carriage force")  # files before the tag
    except OSError:
        return None  # unreadable: load_dataset reports it
    version = version.decode() if isinstance(version, bytes) else str(version)
    return repr(version) if ours and version != PHYSICS_VERSION else None


def load_dataset(path: str = "auto", images: bool = True, state_blocks: int | None = 11, **generate_kwargs) -> dict:
    """The skill model's training data (see envs/__init__.py for the keys).

    ``path="auto"`` uses data/block_stacking.hdf5 and generates it (default size, ~2-3 min) when
    missing or collected on older physics (its ``physics_version`` is not ``PHYSICS_VERSION``); any
    other file of our collector from older physics is refused with the command that remakes it.
    ``images=False`` skips the (N, 6, 32, 32) stacked images (6 KB a step in memory).
    ``state_blocks`` (default 11, the downstream env): pad the 5-block states to this many block slots
    with ``pad_states`` so state_dim matches ``make_env()``; None keeps the file's 18-dim states.
    The image prior (the paper's) never sees the padding.
    """
    if path == "auto":
        path = str(DEFAULT_DATASET)
        stale = os.path.exists(path) and _older_physics(path) is not None
        if stale or not os.path.exists(path):
            why = f"made on older physics ({_older_physics(path)})" if stale else "not found"
            logging.warning("block_stacking: %s %s; generating it with the scripted policy "
                            "(python -m envs.block_stacking, a few minutes)", path, why)
            generate_dataset(path, **generate_kwargs)
    if not os.path.exists(path):
        raise FileNotFoundError(f"block_stacking dataset {path!r} not found: create it with "
                                f"`python -m envs.block_stacking --out {path}` or pass path='auto'")
    older = _older_physics(path)
    if older is not None:
        raise ValueError(f"block_stacking dataset {path!r} was collected on an older version of the env's physics "
                         f"({older}; now {PHYSICS_VERSION!r}): its trajectories no longer match the env. Regenerate "
                         f"it with `python -m envs.block_stacking --out {path}`")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ValueError(f"block_stacking dataset {path!r} is not a readable HDF5 file ({e}); regenerate it "
                         f"with `python -m envs.block_stacking --out {path}`") from None
    with f:
        needed = ["states", "actions", "terminals", "timeouts"] + (["frames"] if images else [])
        missing = [k for k in needed if k not in f]
        if missing:
            raise ValueError(f"block_stacking dataset {path!r} lacks {missing}; regenerate it with "
                             f"`python -m envs.block_stacking --out {path}`")
        data = {k: f[k][()] for k in needed}
        source = str(f.attrs.get("source", f"block stacking data from {path}"))
        if "physics_version" in f.attrs:  # carried into the skill model's record of its data
            source += f" (physics {f.attrs['physics_version']})"
    N = len(data["states"])
    if N == 0 or any(len(v) != N for v in data.values()) or data["actions"].shape[1:] != (3,):
        shapes = {k: v.shape for k, v in data.items()}
        raise ValueError(f"block_stacking dataset {path!r} has inconsistent shapes {shapes}; regenerate it")
    ends = np.flatnonzero(data["terminals"] | data["timeouts"]) + 1
    if len(ends) == 0 or ends[-1] != N:
        ends = np.append(ends, N)  # an unterminated last trajectory still ends at N
    states = data["states"].astype(np.float32)
    if state_blocks is not None:
        states = pad_states(states, state_blocks)
        source += f"; states padded to {state_blocks} block slots (envs.block_stacking.pad_states)"
    out = {"states": states, "actions": data["actions"].astype(np.float32),
           "traj_ends": ends.astype(np.int64), "source": source}
    if images:
        frames = data["frames"]
        previous = np.concatenate([frames[:1], frames[:-1]])
        previous[np.concatenate([[0], ends[:-1]])] = frames[np.concatenate([[0], ends[:-1]])]  # first steps: repeat
        out["images"] = np.concatenate([previous, frames], axis=1)  # (N, 6, 32, 32), oldest first like the env
    return out


def main():
    parser = argparse.ArgumentParser(description="Collect block stacking data with the noisy scripted policy "
                                                 "(SPiRL appendix C) into D4RL-style HDF5.")
    parser.add_argument("--num-trajectories", type=int, default=DEFAULT_NUM_TRAJECTORIES,
                        help="trajectories to collect (the paper: 37000)")
    parser.add_argument("--out", default=str(DEFAULT_DATASET), help="output .hdf5 path (written atomically)")
    parser.add_argument("--random-fraction", type=float, default=0.0,
                        help="fraction of random-action trajectories (appendix G, Table 1)")
    parser.add_argument("--grasp-miss-prob", type=float, default=0.0,
                        help="probability that a scripted grasp is aimed beside its block, fails and is retried "
                             "(the authors' data policy retries failed grasps; 0: every grasp lands)")
    parser.add_argument("--low-subgoal-prob", type=float, default=0.0,
                        help="probability that a stack starts with a subgoal on the table, away from the blocks, "
                             "and the way back up (0: every subgoal lies above the blocks)")
    parser.add_argument("--table-half-width", type=float, default=None,
                        help="half width (m) of the training env's table (default 0.4: 0.8 m; the authors' 1.2 m "
                             "table for 8 cm blocks is 0.45 m scaled to ours)")
    parser.add_argument("--script", default="chain", choices=SCRIPTS,
                        help="data policy: chain (the default: 3 stacks on one tower, as the authors' generator) "
                             "or view-limited (ours: a memoryless script that decides only from the prior's 0.48 m "
                             "window)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.time()
    try:
        out = generate_dataset(args.out, args.num_trajectories, args.random_fraction, args.seed,
                               grasp_miss_prob=args.grasp_miss_prob, low_subgoal_prob=args.low_subgoal_prob,
                               table_half_width=args.table_half_width, script=args.script)
    except ValueError as e:
        parser.error(str(e))
    except UnwritablePathError as e:
        raise SystemExit(f"error: {e}")
    except OSError as e:
        parser.error(f"cannot write {args.out!r}: {e}")
    with h5py.File(out, "r") as f:
        print(f"wrote {out}: {len(f['actions'])} steps, {args.num_trajectories} trajectories, scripted stack "
              f"success {f.attrs['stack_success_rate']:.2f}, final blocks stacked "
              f"{f.attrs['mean_final_blocks_stacked']:.2f}, failed grasps {f.attrs['failed_grasps']}, "
              f"{time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
