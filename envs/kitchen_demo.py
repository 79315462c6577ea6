"""Scripted demonstrator for the Franka kitchen and the offline kitchen dataset it generates.

No public SPiRL implementation can train kitchen skills without downloading D4RL's teleoperated data.
This module replaces that data with scripted demonstrations on gymnasium-robotics ``FrankaKitchen-v1``:

* a controller for the 7 D4RL subtasks: end-effector waypoints per subtask, reached by damped-least-squares
  differential IK through MuJoCo's site Jacobian and turned into the env's joint-velocity actions;
* sequences of 4 subtasks in random orders, excluding the downstream order (microwave, kettle, bottom
  burner, light switch), like D4RL's kitchen-mixed; action noise and randomised waypoints make the skills
  diverse, since the env's reset is deterministic;
* ``generate_dataset`` writes them in D4RL's HDF5 layout (observations (N, 60), actions (N, 9), rewards,
  terminals, timeouts), and ``--evaluate`` measures the demonstrator's success rate per subtask.

Usage:
    python -m envs.kitchen_demo --num-sequences 150 --out data/kitchen_scripted.hdf5
    python -m envs.kitchen_demo --evaluate --trials 50

The control facts this relies on (measured, see ``shared/notes/franka-kitchen-v1-facts.md``): one env step
is 0.08 s and sets the position-actuator targets to ``q_observed + 2 * action * 0.08``; the actuators have no
gravity compensation, so the arm sags unless ``qfrc_bias / kp`` is added to the target; one step realises only
about half of a commanded move, hence the IK gain of 1.5.
"""

import multiprocessing
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass

import h5py
import mujoco
import numpy as np
import tyro
from tqdm import tqdm

# Task names, D4RL's goals and success rule, and the env itself come from envs/kitchen_env.py (envs/kitchen.py
# imports this module for its offline fallback, so this module must not import envs/kitchen.py).
from envs import UnwritablePathError, ensure_writable
from envs.kitchen_env import (DOWNSTREAM_TASKS, EPISODE_LENGTH, GLOBAL_ORDER, SUBTASKS, completed_subtasks, goal_vector,
                              make_env)

DEFAULT_NUM_SEQUENCES = 600  # kitchen-mixed-v0 has 603 (split on terminals)
DEFAULT_NOISE = 0.1
DEFAULT_DATASET_PATH = "data/kitchen_scripted.hdf5"
# Written into every file; envs/kitchen.py regenerates its default file when it was made by another version.
DATA_VERSION = "2: kitchen-mixed sequence types"
# How far a hinge cabinet attempted as the fourth subtask is pulled (rad; the door swings on ~0.15 rad after the
# release and counts from about 1.15): about a fifth of these attempts count, as kitchen-mixed's "often attempted
# last, rarely reaching the threshold".
HINGE_LAST_TARGET = (0.4, 1.15)
# Steps recorded after the last planned subtask is done: kitchen-mixed's demos end soon after it (~227 steps for
# 4 subtasks); the rest of that skill (pushing on, backing off) is not recorded.
TAIL_STEPS = 10
CONTROL_DT = 0.08  # s per env step (0.002 s x frame skip 40)
HOME_QPOS = np.array([0.148, -1.768, 1.844, -2.477, 0.260, 0.713, 1.595])  # the arm's joints after reset

# End-effector orientations (columns: site x, y, z axes in world). FORWARD is the home posture's: tool axis
# (site z) along world +y into the kitchen, fingers closing along world x. DOWN points the tool at the floor.
FORWARD = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
DOWN = np.array([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]])
OPEN, CLOSE = 1.0, -1.0  # gripper action: +1 opens both fingers, -1 closes them


def rot_y(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def rot_x(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def rot_z(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def subtask_done(qpos: np.ndarray, task: str) -> bool:
    """D4RL's success rule (element within BONUS_THRESH of its goal) on the simulator's true state."""
    return task in completed_subtasks(qpos, (task,))


class ScriptedKitchenController:
    """Differential-IK controller with one scripted skill per subtask.

    Skills are generators: each ``yield`` hands one 9-dim action to the caller, who steps the env and resumes
    the generator, which then reads the new MuJoCo state. All randomness (action noise, waypoint offsets)
    comes from ``rng``.
    """

    IK_GAIN = 1.5  # one env step realises only ~50-60 % of a commanded joint move
    DAMPING = 0.05  # damped least squares: lambda of (J J^T + lambda^2 I)
    MAX_STEP = 0.03  # m of end-effector travel commanded per env step near objects
    MAX_TURN = 0.15  # rad of end-effector rotation commanded per env step
    NULL_GAIN = 0.1  # pull of the redundant degree of freedom toward the home posture, per step
    VIA_HOME_TOL = 0.6  # rad: how close to home the arm passes between two subtasks
    # Subtasks on the back wall, handled with the same forward-pointing gripper: the arm goes straight from one
    # to another without passing near home.
    NEIGHBOURS = frozenset({"light switch", "slide cabinet", "bottom burner", "top burner"})

    def __init__(self, model: mujoco.MjModel, data: mujoco.MjData, rng: np.random.Generator,
                 noise: float = DEFAULT_NOISE):
        self.model, self.data = model, data
        self.rng, self.noise = rng, noise
        self.ee = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, "end_effector")
        self.kp = model.actuator_gainprm[:7, 0].copy()
        self.q_low, self.q_high = model.jnt_range[:7, 0], model.jnt_range[:7, 1]
        self.jac_pos = np.zeros((3, model.nv))
        self.jac_rot = np.zeros((3, model.nv))
        self.observed_q = data.qpos[:7].copy()
        self.scratch = mujoco.MjData(model)  # for solving IK without touching the simulation

    def observe(self, state: np.ndarray) -> None:
        """Record the env's observation: its noisy joint reading is what the env integrates the action from."""
        self.observed_q = np.asarray(state[:7], dtype=np.float64)

    # ---- state -------------------------------------------------------------------------------------
    def site(self, name: str) -> np.ndarray:
        return self.data.site(name).xpos.copy()

    def ee_pos(self) -> np.ndarray:
        return self.data.site_xpos[self.ee].copy()

    def ee_rot(self) -> np.ndarray:
        return self.data.site_xmat[self.ee].reshape(3, 3).copy()

    def jitter(self, scale) -> np.ndarray:
        """A random waypoint offset, uniform in +-scale per axis."""
        return self.rng.uniform(-1.0, 1.0, 3) * np.asarray(scale, dtype=float)

    # ---- actions -----------------------------------------------------------------------------------
    def joint_action(self, joint_delta: np.ndarray, grip: float) -> np.ndarray:
        """Joint-position increment -> env action, with gravity-sag compensation and action noise."""
        # The env's target is q_observed + 2 * a * 0.08, q_observed being its noisy reading: aim from the true q,
        # and add the gravity torque over kp so the arm holds its pose instead of sagging.
        target = self.data.qpos[:7] + joint_delta + self.data.qfrc_bias[:7] / self.kp
        action = np.empty(9)
        action[:7] = (target - self.observed_q) / (2.0 * CONTROL_DT)
        action[7:] = grip
        action[:7] += self.noise * self.rng.standard_normal(7)
        return np.clip(action, -1.0, 1.0)

    def ik_action(self, pos, rot, grip: float, max_step: float = MAX_STEP, max_turn: float = MAX_TURN) -> np.ndarray:
        """One damped-least-squares IK step toward the end-effector pose (pos, rot)."""
        error = np.empty(6)
        error[:3] = pos - self.ee_pos()
        distance = np.linalg.norm(error[:3])
        if distance > max_step:
            error[:3] *= max_step / distance
        quat, rotvec = np.empty(4), np.empty(3)
        mujoco.mju_mat2Quat(quat, (rot @ self.ee_rot().T).ravel())
        mujoco.mju_quat2Vel(rotvec, quat, 1.0)
        error[3:] = rotvec * min(1.0, max_turn / max(np.linalg.norm(rotvec), 1e-9))
        mujoco.mj_jacSite(self.model, self.data, self.jac_pos, self.jac_rot, self.ee)
        jac = np.vstack([self.jac_pos, self.jac_rot])[:, :7]  # (6, 7) arm joints only
        q = self.data.qpos[:7]
        # Joint 2 starts at its lower limit: solve without the joints a step would push past their limits.
        active = np.ones(7, dtype=bool)
        # Redundancy: the arm has 7 joints for a 6-dim pose, so a null-space pull toward the home posture keeps
        # the elbow and wrist away from their limits (without it the base joint wanders by a radian).
        posture = self.NULL_GAIN * (HOME_QPOS - q)
        for _ in range(3):
            j = jac[:, active]
            pinv = j.T @ np.linalg.inv(j @ j.T + self.DAMPING**2 * np.eye(6))  # (n_active, 6)
            delta = np.zeros(7)
            delta[active] = pinv @ error + (np.eye(active.sum()) - pinv @ j) @ posture[active]
            blocked = active & (((q <= self.q_low + 1e-3) & (delta < 0)) | ((q >= self.q_high - 1e-3) & (delta > 0)))
            if not blocked.any():
                break
            active &= ~blocked
        return self.joint_action(self.IK_GAIN * delta, grip)

    def solve_ik(self, pos: np.ndarray, rot: np.ndarray, iterations: int = 100) -> np.ndarray:
        """Joint angles that put the end effector at (pos, rot), by iterated DLS on a kinematics-only copy.

        Started from the home posture, so each pose gets the same well-conditioned solution wherever the arm is
        now (starting from the current joints drifts into contorted solutions over a sequence); joints clamped
        to their limits.
        """
        scratch = self.scratch
        scratch.qpos[:] = self.data.qpos
        scratch.qpos[:7] = HOME_QPOS
        jac_pos, jac_rot = np.zeros((3, self.model.nv)), np.zeros((3, self.model.nv))
        quat, rotvec, error = np.empty(4), np.empty(3), np.empty(6)
        for _ in range(iterations):
            mujoco.mj_kinematics(self.model, scratch)
            mujoco.mj_comPos(self.model, scratch)
            error[:3] = pos - scratch.site_xpos[self.ee]
            mujoco.mju_mat2Quat(quat, (rot @ scratch.site_xmat[self.ee].reshape(3, 3).T).ravel())
            mujoco.mju_quat2Vel(rotvec, quat, 1.0)
            error[3:] = rotvec
            if np.linalg.norm(error) < 1e-4:
                break
            mujoco.mj_jacSite(self.model, scratch, jac_pos, jac_rot, self.ee)
            jac = np.vstack([jac_pos, jac_rot])[:, :7]
            delta = jac.T @ np.linalg.solve(jac @ jac.T + self.DAMPING**2 * np.eye(6), error)
            scratch.qpos[:7] = np.clip(scratch.qpos[:7] + np.clip(delta, -0.2, 0.2), self.q_low, self.q_high)
        return scratch.qpos[:7].copy()

    # ---- motion primitives (generators of actions) -------------------------------------------------
    def move_joints(self, q_goal: np.ndarray, grip: float, max_steps: int, tol: float = 0.05) -> Iterator:
        """Go to a joint configuration along a straight line in joint space (fast for large reconfigurations,
        where step-wise Cartesian IK crawls: the folded home posture is far from every object in joint space)."""
        for _ in range(max_steps):
            error = q_goal - self.data.qpos[:7]
            if np.abs(error).max() < tol:
                return
            yield self.joint_action(self.IK_GAIN * np.clip(error, -0.1, 0.1), grip)

    def reach(self, pos, rot, grip, max_steps: int = 40) -> Iterator:
        """Go to a pre-grasp pose: joint-space move to its IK solution, then a Cartesian finish."""
        yield from self.move_joints(self.solve_ik(pos, rot), grip, max_steps)
        yield from self.move(pos, rot, grip, 6, tol=0.012)

    def move(self, pos, rot, grip, max_steps: int, tol=0.01, max_step=MAX_STEP, max_turn=MAX_TURN) -> Iterator:
        """Go to an end-effector pose; stop within tol, or after max_steps (contacts can block the last cm)."""
        for _ in range(max_steps):
            if np.linalg.norm(pos - self.ee_pos()) < tol:
                return
            yield self.ik_action(pos, rot, grip, max_step, max_turn)

    def hold(self, grip: float, steps: int) -> Iterator:
        """Keep the current pose while the gripper opens or closes."""
        pos, rot = self.ee_pos(), self.ee_rot()
        for _ in range(steps):
            yield self.ik_action(pos, rot, grip)

    def go_home(self, max_steps: int = 30, tol: float = 0.05) -> Iterator:
        """Return to a jittered home posture in joint space (keeps the IK out of awkward poses)."""
        yield from self.move_joints(HOME_QPOS + self.rng.uniform(-0.05, 0.05, 7), OPEN, max_steps, tol)

    def back_off(self, offset, rot=None, steps: int = 8) -> Iterator:
        """Open and retreat by ``offset`` keeping the orientation, so the gripper leaves the object cleanly."""
        rot = self.ee_rot() if rot is None else rot
        yield from self.hold(OPEN, 2)
        yield from self.move(self.ee_pos() + np.asarray(offset), rot, OPEN, steps, tol=0.03)

    # ---- skills: one generator per D4RL subtask ----------------------------------------------------
    def light_switch(self) -> Iterator:
        """Push the switch lever toward -x with a closed gripper."""
        # A little below the lever's axis: pushing above it lets the fingers ride up and over it.
        lever = self.site("light_site") + self.jitter([0.0, 0.01, 0.004]) + [0.0, 0.0, -0.006]
        yield from self.reach(lever + [0.08, -0.10, 0.0], FORWARD, CLOSE)
        yield from self.move(lever + [0.07, 0.0, 0.0], FORWARD, CLOSE, 12)
        yield from self.move(lever + [-0.10 - self.rng.uniform(0, 0.04), 0.0, 0.0], FORWARD, CLOSE, 15, max_step=0.025)
        yield from self.back_off([0.0, -0.12, 0.0])

    def slide_cabinet(self) -> Iterator:
        """Push the sliding door's handle toward +x."""
        handle = self.site("slide_site") + self.jitter([0.0, 0.01, 0.02]) + [0.0, 0.0, -0.07]
        yield from self.reach(handle + [-0.08, -0.12, 0.0], FORWARD, CLOSE)
        yield from self.move(handle + [-0.07, 0.0, 0.0], FORWARD, CLOSE, 12)
        yield from self.move(handle + [0.22 + self.rng.uniform(0, 0.08), 0.0, 0.0], FORWARD, CLOSE, 20, max_step=0.025)
        yield from self.back_off([0.0, -0.12, 0.0])

    def knob(self, site: str) -> Iterator:
        """Grasp a burner knob from the front and twist it about world +y (the knob's angle goes negative)."""
        # The end-effector site sits mid-finger: at 3.5 cm in front of the knob the fingertips reach its base
        # disc. Pushing further only presses them into the disc, whose friction then blocks the lateral fix.
        knob = self.site(site) + self.jitter([0.003, 0.0, 0.003]) + [0.0, -0.035, 0.0]
        yield from self.reach(knob + [0.0, -0.10, 0.0], FORWARD, OPEN)
        yield from self.move(knob, FORWARD, OPEN, 8, tol=0.006)
        yield from self.hold(CLOSE, 4)
        # The damped knob slips in the fingers for about half of the twist: ~1.8 rad of wrist for ~0.9 of knob.
        twist = self.rng.uniform(1.7, 1.9)
        yield from self.move(knob, rot_y(twist) @ FORWARD, CLOSE, 18, tol=-1.0, max_turn=0.14)
        yield from self.back_off([0.0, -0.12, 0.0])

    def door(self, site: str, joint: str, hinge: np.ndarray, opening: float, rot: np.ndarray, normal: np.ndarray,
             target: float, max_steps: int, lead: float) -> Iterator:
        """Grasp a vertical door handle and pull it along the door's arc.

        ``opening`` (+1/-1) is the sign of the door's angle change while it opens; ``normal`` points from the
        closed door toward the robot. The target runs ``lead`` rad ahead of the current angle on the arc; the wrist
        keeps its grasp orientation because a wrist that follows the door lets the bar slide out of the fingers.
        """
        handle = self.site(site) + self.jitter([0.004, 0.0, 0.02])
        yield from self.reach(handle + 0.08 * normal, rot, OPEN)
        yield from self.move(handle + 0.01 * normal, rot, OPEN, 6, tol=0.012, max_step=0.04)
        yield from self.hold(CLOSE, 3)
        grasp = self.ee_pos()
        angle0 = self.data.joint(joint).qpos[0]
        for _ in range(max_steps):
            angle = self.data.joint(joint).qpos[0]
            if opening * (angle - target) >= 0:
                break
            # Where the grasp point would be with the door a little further open.
            swing = rot_z(angle - angle0 + opening * lead)
            goal = hinge + swing @ (grasp - hinge)
            goal[2] = grasp[2]
            yield self.ik_action(goal, rot, CLOSE, max_step=0.045)
        opened = rot_z(self.data.joint(joint).qpos[0] - angle0)
        yield from self.back_off(0.10 * (opened @ normal), rot)

    def microwave(self) -> Iterator:
        """Open the microwave door (its angle goes negative) by its vertical handle bar."""
        yaw = 0.3  # the microwave stands yawed by 0.3 rad
        normal = rot_z(yaw) @ np.array([0.0, -1.0, 0.0])
        hinge = self.data.joint("microwave").xanchor.copy()
        target = -self.rng.uniform(0.75, 0.9)
        yield from self.door("microhandle_site", "microwave", hinge, -1.0, rot_z(yaw) @ FORWARD, normal, target, 25,
                             lead=self.rng.uniform(0.15, 0.22))  # faster slips the handle out of the fingers

    def hinge_cabinet(self, target: float | None = None) -> Iterator:
        """Open the right door of the hinged cabinet (angle positive) by its vertical handle, to ``target`` rad
        (default: far enough to count, 1.3-1.45; the success threshold is about 1.15)."""
        hinge = self.data.joint("right_hinge_cabinet").xanchor.copy()
        target = self.rng.uniform(1.3, 1.45) if target is None else target
        yield from self.door("hinge_site2", "right_hinge_cabinet", hinge, 1.0, FORWARD, np.array([0.0, -1.0, 0.0]),
                             target, 30, lead=self.rng.uniform(0.4, 0.5))

    def kettle(self) -> Iterator:
        """Pick the kettle up by its handle bar from above and set it down on the top-left burner.

        The bar runs along x, 6.4 cm thick against an 8 cm finger opening, 11 cm above the kettle's body: the
        tool points down and the fingers close along y around it.
        """
        # Tool down, tilted forward a little: that keeps the wrist low and toward the robot, clear of the burner
        # knobs above the stove.
        hold_rot = rot_x(self.rng.uniform(0.25, 0.4)) @ DOWN
        bar = self.site("kettle_site") + self.jitter([0.01, 0.0, 0.0])
        grasp = bar + [0.0, 0.0, self.rng.uniform(0.005, 0.015)]
        # The bar leaves 8 mm on either side of the fingers: line up precisely above it, then descend slowly.
        yield from self.reach(grasp + [0.0, 0.0, 0.10], hold_rot, OPEN)
        yield from self.move(grasp + [0.0, 0.0, 0.10], hold_rot, OPEN, 4, tol=0.006)
        yield from self.move(grasp, hold_rot, OPEN, 8, tol=0.008, max_step=0.03)
        yield from self.hold(CLOSE, 4)
        # Lift clear before carrying: a kettle dragged over the stove pivots about the bar and tilts.
        lift = self.rng.uniform(0.05, 0.07)
        yield from self.move(grasp + [0.0, 0.0, lift], hold_rot, CLOSE, 8, tol=0.01, max_step=0.03)
        # Over the top-left burner, 10 cm short of the kettle's goal (well inside the 0.3 success distance):
        # further back the wrist runs into the burner knobs above the stove. The handle's height above the
        # kettle's base is 0.26 m.
        place = np.array([-0.234, 0.65, 1.879]) + self.jitter([0.015, 0.01, 0.0]) + grasp - bar
        yield from self.move(place + [0.0, 0.0, lift], hold_rot, CLOSE, 22, tol=0.02, max_step=0.03)
        yield from self.move(place + [0.0, 0.0, 0.01], hold_rot, CLOSE, 6, tol=0.015, max_step=0.02)
        # Back off toward the robot before rising: straight up, the hand catches the bottom-burner knob.
        yield from self.back_off([0.0, -0.10, 0.03], hold_rot)

    def skill(self, task: str) -> Iterator:
        """The scripted skill of one D4RL subtask."""
        if task == "light switch":
            return self.light_switch()
        if task == "slide cabinet":
            return self.slide_cabinet()
        if task == "bottom burner":
            return self.knob("knob2_site")
        if task == "top burner":
            return self.knob("knob4_site")
        if task == "microwave":
            return self.microwave()
        if task == "hinge cabinet":
            return self.hinge_cabinet()
        if task == "kettle":
            return self.kettle()
        raise ValueError(f"unknown subtask {task!r}: choose from {', '.join(SUBTASKS)}")

    def sequence(self, tasks, retries: int = 1) -> Iterator:
        """Do the subtasks one after another, passing near home in between (except between NEIGHBOURS); a
        subtask that did not complete is tried again from home (``retries`` times).

        A hinge cabinet after three other subtasks is only attempted, as in kitchen-mixed, where that fourth
        subtask mostly stops short of D4RL's threshold: the door is pulled to HINGE_LAST_TARGET rad, not retried.
        """
        for i, task in enumerate(tasks):
            attempt_only = task == "hinge cabinet" and i == 3
            for attempt in range(1 + (0 if attempt_only else retries)):
                if attempt > 0:
                    yield from self.go_home()
                elif i > 0 and not {tasks[i - 1], task} <= self.NEIGHBOURS:
                    # Pass near home on the way to the next object: the straight joint-space line between two
                    # objects' postures can sweep the arm through the kettle or a door.
                    yield from self.go_home(tol=self.VIA_HOME_TOL)
                if attempt_only:
                    yield from self.hinge_cabinet(target=self.rng.uniform(*HINGE_LAST_TARGET))
                else:
                    yield from self.skill(task)
                if subtask_done(self.data.qpos, task):
                    break


# kitchen-mixed-v0's 24 sequence types (RPL's demo folders) with their demo counts, from
# shared/notes/kitchen-mixed-composition.md. Each follows GLOBAL_ORDER; drawing types with these weights gives the
# real data's first-subtask and transition frequencies (microwave / kettle / bottom burner first at about
# 60 / 31 / 10 %). The downstream order microwave -> kettle -> bottom burner -> light switch is none of them: its
# prefix continues only to the hinge or slide cabinet, so the agent has to recombine skills.
M, K, BB, TB, L, S, H = GLOBAL_ORDER
SEQUENCE_TYPES = (
    ((M, K, BB, H), 20), ((M, K, BB, S), 29), ((M, K, TB, H), 20), ((M, K, TB, L), 22), ((M, K, L, S), 19),
    ((M, K, L, H), 20), ((M, K, S, H), 24), ((M, BB, S, H), 30), ((M, BB, L, S), 68), ((M, BB, TB, H), 30),
    ((M, BB, TB, S), 21), ((M, BB, TB, L), 22), ((M, TB, L, H), 21), ((M, L, S, H), 21),
    ((K, BB, S, H), 26), ((K, BB, L, S), 27), ((K, BB, L, H), 22), ((K, BB, TB, S), 24), ((K, BB, TB, H), 20),
    ((K, BB, TB, L), 20), ((K, TB, L, S), 19), ((K, L, S, H), 20),
    ((BB, TB, L, S), 27), ((BB, TB, S, H), 30),
)
MAX_REDRAWS = 5  # a sequence whose recorded order breaks GLOBAL_ORDER (an object knocked on the way) is redone


def sample_sequence(rng: np.random.Generator) -> tuple:
    """One of kitchen-mixed's sequence types, drawn with its demo count as weight."""
    weights = np.array([count for _, count in SEQUENCE_TYPES], dtype=float)
    return SEQUENCE_TYPES[rng.choice(len(SEQUENCE_TYPES), p=weights / weights.sum())][0]


def completion_order(observations: np.ndarray) -> list:
    """The subtasks in the order they first reach D4RL's success rule in a recorded sequence (any order, the
    way the note measures kitchen-mixed): works on any file's observations, ours or D4RL's."""
    first = {}
    for t, state in enumerate(observations):
        for task in completed_subtasks(state):
            first.setdefault(task, t)
    return sorted(first, key=lambda task: (first[task], GLOBAL_ORDER.index(task)))


def follows_global_order(order) -> bool:
    ranks = [GLOBAL_ORDER.index(task) for task in order]
    return ranks == sorted(ranks)


def contains_downstream(order) -> bool:
    """Whether the downstream task's four subtasks occur in its order (other subtasks in between allowed)."""
    remaining = iter(order)
    return all(task in remaining for task in DOWNSTREAM_TASKS)


_ENVS = {}


def _recording_env(max_steps: int):
    """This process's recording env, built once (building costs as much as 50 steps). It counts all 7 subtasks, so
    it never terminates mid-plan (the rewards count only the plan's subtasks). A reset with a seed restarts it
    exactly (MuJoCo's data are reset too), so an episode does not depend on the ones before it in the process."""
    if max_steps not in _ENVS:
        _ENVS[max_steps] = make_env(tasks=SUBTASKS, strict_order=False, max_episode_steps=max_steps)
    return _ENVS[max_steps]


def run_episode(tasks, seed: int, noise: float = DEFAULT_NOISE, max_steps: int = EPISODE_LENGTH,
                skill_only: bool = False) -> dict:
    """One scripted episode on the kitchen env (D4RL observation noise), recorded in D4RL's layout.

    ``tasks``: the subtasks, done in this order; ``skill_only`` runs just the first subtask's skill (for
    measuring a skill alone). The episode runs until the plan ends, TAIL_STEPS after all of ``tasks`` are done,
    or at ``max_steps``. Returns observations (T, 60)
    with the downstream task's goal dims (as in kitchen-mixed-v0, whose env is the downstream one), actions
    (T, 9), rewards (T,) (+1 when one of ``tasks`` completes, any order), done_at (the step after which all of
    ``tasks`` were done, or None), truncated (the step limit cut the plan short) and completed (the subtasks of
    ``tasks`` done, in order).
    """
    env = _recording_env(max_steps)
    rng = np.random.default_rng(seed)
    obs, info = env.reset(seed=seed)
    controller = ScriptedKitchenController(env.model, env.data, rng, noise)
    controller.observe(obs["state"])
    downstream_goal = goal_vector(DOWNSTREAM_TASKS)
    plan = controller.skill(tasks[0]) if skill_only else controller.sequence(tasks)
    observations, actions, rewards, completed = [], [], [], []
    truncated, done_at = False, None
    for action in plan:
        observations.append(np.concatenate([obs["state"][:30], downstream_goal]))
        actions.append(action)
        obs, _, _, truncated, info = env.step(action)
        controller.observe(obs["state"])
        now = [task for task in info["step_completions"] if task in tasks]
        completed += now
        rewards.append(len(now))
        if done_at is None and len(completed) == len(tasks):
            done_at = len(actions)
        if truncated or (done_at is not None and not skill_only and len(actions) >= done_at + TAIL_STEPS):
            break
    return {"observations": np.asarray(observations, dtype=np.float32),
            "actions": np.asarray(actions, dtype=np.float32),
            "rewards": np.asarray(rewards, dtype=np.float32),
            "done_at": done_at, "truncated": bool(truncated), "completed": completed}


def generate_sequence(index: int, seed: int = 0, noise: float = DEFAULT_NOISE, max_steps: int = EPISODE_LENGTH) -> dict:
    """Sequence number ``index`` of the dataset with seed ``seed``: its own random stream (type, waypoints, noise),
    so the data do not depend on how the sequences are spread over worker processes.

    A recording whose completion order (measured from its observations) breaks GLOBAL_ORDER or contains the
    downstream task is redone with the next stream of the same index, at most MAX_REDRAWS times."""
    for redraw in range(MAX_REDRAWS + 1):
        rng = np.random.default_rng([seed, index, redraw])
        tasks = sample_sequence(rng)
        episode = run_episode(tasks, seed=int(rng.integers(2**31)), noise=noise, max_steps=max_steps)
        episode["order"] = completion_order(episode["observations"])
        if follows_global_order(episode["order"]) and not contains_downstream(episode["order"]):
            break
    episode.update(tasks=tasks, redraws=redraw)
    return episode


def _generate_sequence(job):
    return generate_sequence(*job)


def generate_dataset(out_path: str, num_sequences: int = DEFAULT_NUM_SEQUENCES, seed: int = 0,
                     noise: float = DEFAULT_NOISE, max_steps: int = EPISODE_LENGTH, workers: int | None = None) -> dict:
    """Write ``num_sequences`` scripted sequences to ``out_path`` in D4RL's kitchen HDF5 layout; returns a summary.

    Keys: observations (N, 60) float32, actions (N, 9) float32 in [-1, 1], rewards (N,), terminals (N,) (set on the
    last step of every sequence that ran its plan to the end, as kitchen-mixed's terminals end every demo),
    timeouts (N,) (set where the step limit cut a sequence short); attributes record the generator, noise, seed,
    each sequence's planned subtasks and its completion order. ``workers`` processes (default: all cores) each
    record whole sequences; the file is identical for any number of workers. Written to a temporary file of this
    process first and moved into place, so an interrupted run leaves no half-written dataset and two runs writing
    the same path do not collide.
    """
    if num_sequences < 1:
        raise ValueError(f"num_sequences must be >= 1, got {num_sequences}")
    ensure_writable(out_path, "dataset")  # fails now, not after the sequences are recorded
    workers = max(1, min(workers or os.cpu_count() or 1, num_sequences))
    jobs = [(i, seed, noise, max_steps) for i in range(num_sequences)]
    start = time.time()
    progress = tqdm(total=num_sequences, desc=f"kitchen demos ({workers} workers)", unit="seq")
    episodes = []
    with multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else nullcontext() as pool:
        for episode in (pool.imap(_generate_sequence, jobs) if pool else map(_generate_sequence, jobs)):
            episodes.append(episode)
            progress.update()
            progress.set_postfix(subtasks=f"{np.mean([len(e['order']) for e in episodes]):.2f}",
                                 steps=f"{np.mean([len(e['actions']) for e in episodes]):.0f}")
    progress.close()
    lengths = [len(e["actions"]) for e in episodes]
    ends = np.cumsum(lengths) - 1
    terminals = np.zeros(sum(lengths), dtype=bool)
    timeouts = np.zeros(sum(lengths), dtype=bool)
    for end, episode in zip(ends, episodes):
        (timeouts if episode["truncated"] else terminals)[end] = True
    out_dir = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(out_dir, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(dir=out_dir, prefix=os.path.basename(out_path) + ".", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes it private; the dataset is an ordinary file
    try:
        with h5py.File(tmp_path, "w") as f:
            f.create_dataset("observations", data=np.concatenate([e["observations"] for e in episodes]), compression="gzip")
            f.create_dataset("actions", data=np.concatenate([e["actions"] for e in episodes]), compression="gzip")
            f.create_dataset("rewards", data=np.concatenate([e["rewards"] for e in episodes]))
            f.create_dataset("terminals", data=terminals)
            f.create_dataset("timeouts", data=timeouts)
            f.attrs["generator"] = "envs/kitchen_demo.py scripted demonstrator on FrankaKitchen-v1, kitchen-mixed's sequence types"
            f.attrs["data_version"] = DATA_VERSION
            f.attrs["noise"], f.attrs["seed"], f.attrs["max_steps"] = noise, seed, max_steps
            f.attrs["sequences"] = np.array([",".join(e["tasks"]) for e in episodes], dtype=h5py.string_dtype())
            f.attrs["completed"] = np.array([",".join(e["order"]) for e in episodes], dtype=h5py.string_dtype())
        os.replace(tmp_path, out_path)
    finally:
        if os.path.exists(tmp_path):
            os.unlink(tmp_path)
    return {"seconds": time.time() - start, "workers": workers, "steps": int(sum(lengths)),
            "redraws": int(sum(e["redraws"] for e in episodes)), "timeouts": int(timeouts.sum())}


def sequences_from_file(path: str) -> list:
    """The recorded sequences of a D4RL-layout kitchen file (ours or kitchen-mixed-v0), split on terminals or
    timeouts: a list of (observations (T, 60), actions (T, 9))."""
    with h5py.File(path, "r") as f:
        obs, actions = f["observations"][()], f["actions"][()]
        ends = np.asarray(f["terminals"][()], bool) | np.asarray(f["timeouts"][()], bool)
    bounds = np.concatenate([[0], np.flatnonzero(ends) + 1])
    if bounds[-1] != len(obs):
        bounds = np.append(bounds, len(obs))
    return [(obs[a:b], actions[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def composition(orders) -> dict:
    """First-subtask and transition frequencies of completion orders (lists of subtask names), as the note
    reports kitchen-mixed's: first subtask, second given first, third given the first two."""
    def shares(counts):
        total = sum(counts.values())
        return {k: v / total for k, v in sorted(counts.items(), key=lambda kv: -kv[1])}

    first, second, third = {}, {}, {}
    for order in orders:
        if order:
            first[order[0]] = first.get(order[0], 0) + 1
        if len(order) >= 2:
            second.setdefault(order[0], {}).setdefault(order[1], 0)
            second[order[0]][order[1]] += 1
        if len(order) >= 3:
            prefix = f"{order[0]}, {order[1]}"
            third.setdefault(prefix, {}).setdefault(order[2], 0)
            third[prefix][order[2]] += 1
    return {"first": shares(first), "second": {k: shares(v) for k, v in second.items()},
            "third": {k: shares(v) for k, v in third.items()},
            "third_counts": {k: sum(v.values()) for k, v in third.items()}}


def evaluate(trials: int = 50, seed: int = 0, noise: float = DEFAULT_NOISE, max_steps: int = EPISODE_LENGTH) -> dict:
    """Success rates of the demonstrator: each subtask's skill alone from the reset pose (``trials`` episodes
    each), and ``trials`` sequences drawn as for the dataset (within ``max_steps``)."""
    rng = np.random.default_rng(seed)
    results = {"skills": {}, "sequences": {}}
    for task in tqdm(SUBTASKS, desc="subtasks", unit="task"):
        steps = []
        for _ in range(trials):
            episode = run_episode((task,), seed=int(rng.integers(2**31)), noise=noise, max_steps=max_steps,
                                  skill_only=True)
            if episode["done_at"] is not None:
                steps.append(episode["done_at"])
        results["skills"][task] = {"success": len(steps) / trials, "median_steps": float(np.median(steps or [0]))}
    in_sequence = {task: [] for task in SUBTASKS}
    completed, lengths = [], []
    for _ in tqdm(range(trials), desc="sequences", unit="seq"):
        tasks = sample_sequence(rng)
        episode = run_episode(tasks, seed=int(rng.integers(2**31)), noise=noise, max_steps=max_steps)
        completed.append(len(episode["completed"]))
        lengths.append(len(episode["actions"]))
        for i, task in enumerate(tasks):
            key = "hinge cabinet (4th, attempt)" if task == "hinge cabinet" and i == 3 else task
            in_sequence.setdefault(key, []).append(task in episode["completed"])
    results["sequences"] = {"mean_subtasks": float(np.mean(completed)), "mean_steps": float(np.mean(lengths)),
                            "subtask_success_in_sequences": {t: (float(np.mean(v)), len(v)) for t, v in
                                                             in_sequence.items() if v}}
    return results


@dataclass
class Args:
    out: str = DEFAULT_DATASET_PATH
    """where to write the HDF5 dataset (D4RL kitchen layout)"""
    num_sequences: int = DEFAULT_NUM_SEQUENCES
    """number of sequences (D4RL's kitchen-mixed-v0 has 603)"""
    noise: float = DEFAULT_NOISE
    """std of the Gaussian noise added to the arm's joint-velocity actions"""
    seed: int = 0
    """seed of the sequence types, waypoint offsets and noise (one stream per sequence)"""
    max_steps: int = EPISODE_LENGTH
    """step limit of each sequence (the env's 280)"""
    workers: int = 0
    """processes recording sequences in parallel; 0: one per CPU core. The data do not depend on it"""
    evaluate: bool = False
    """instead of writing data, measure the success rates per subtask and within sequences"""
    trials: int = 50
    """episodes per subtask and number of sequences for --evaluate"""


if __name__ == "__main__":
    args = tyro.cli(Args)
    if args.num_sequences < 1 or args.trials < 1 or args.max_steps < 1 or args.noise < 0 or args.workers < 0:
        raise SystemExit("error: --num-sequences, --trials and --max-steps must be >= 1, --noise and --workers >= 0")
    start = time.time()
    if args.evaluate:
        report = evaluate(args.trials, args.seed, args.noise, args.max_steps)
        print(f"noise {args.noise}, seed {args.seed}, {args.trials} trials each, {time.time() - start:.0f} s")
        for task, r in report["skills"].items():
            print(f"  {task:14s} alone: {r['success']:6.1%}  (median {r['median_steps']:.0f} steps to done)")
        seq = report["sequences"]
        print(f"  sequences: mean subtasks done {seq['mean_subtasks']:.2f}/4, mean {seq['mean_steps']:.0f} steps")
        for task, (rate, n) in seq["subtask_success_in_sequences"].items():
            print(f"  {task:14s} within sequences: {rate:6.1%} of {n}")
    else:
        try:
            summary = generate_dataset(args.out, args.num_sequences, args.seed, args.noise, args.max_steps,
                                       args.workers or None)
        except UnwritablePathError as e:
            raise SystemExit(f"error: {e}")
        print(f"wrote {args.out}: {summary['steps']} steps in {args.num_sequences} sequences "
              f"({summary['timeouts']} cut by the step limit, {summary['redraws']} redrawn), {summary['workers']} "
              f"workers, {summary['seconds']:.0f} s, load average {os.getloadavg()[0]:.2f}")
