"""Kitchen task definitions and the D4RL-semantics env, shared by ``envs/kitchen.py`` and ``envs/kitchen_demo.py``.

This module imports neither of them: ``envs/kitchen.py`` (the public interface: ``make_env``, ``load_dataset``)
re-exports everything here and falls back to the scripted data of ``envs/kitchen_demo.py``, which drives this
module's env. See ``envs/kitchen.py`` for the observation, action and reward semantics.
"""

import os

import gymnasium as gym
import numpy as np

METRIC = "subtasks_completed"  # the reward's count: in strict order unless strict_order=False
ANY_ORDER_METRIC = "subtasks_completed_any_order"  # always in any order, whatever strict_order is
DEFAULT_PRIOR_INPUT = "state"

# D4RL's kitchen constants (d4rl/kitchen/kitchen_envs.py; FrankaKitchen-v1 uses the same values).
# Indices are into the 60-dim observation, whose first 30 entries are exactly data.qpos[0:30].
SUBTASKS = ("bottom burner", "top burner", "light switch", "slide cabinet", "hinge cabinet", "microwave", "kettle")
OBS_ELEMENT_INDICES = {
    "bottom burner": np.array([11, 12]),
    "top burner": np.array([15, 16]),
    "light switch": np.array([17, 18]),
    "slide cabinet": np.array([19]),
    "hinge cabinet": np.array([20, 21]),
    "microwave": np.array([22]),
    "kettle": np.array([23, 24, 25, 26, 27, 28, 29]),
}
OBS_ELEMENT_GOALS = {
    "bottom burner": np.array([-0.88, -0.01]),
    "top burner": np.array([-0.92, -0.01]),
    "light switch": np.array([-0.69, -0.05]),
    "slide cabinet": np.array([0.37]),
    "hinge cabinet": np.array([0.0, 1.45]),  # (left door, right door): the right door opens
    "microwave": np.array([-0.75]),
    "kettle": np.array([-0.23, 0.75, 1.62, 0.99, 0.0, 0.0, -0.06]),  # xyz + quaternion of the free joint
}
BONUS_THRESH = 0.3
DOWNSTREAM_TASKS = ("microwave", "kettle", "bottom burner", "light switch")  # the paper's task, in order
# kitchen-mixed-v0's demonstrations all follow this one order: a subtask is done only after every earlier one in
# this list that the demonstration does (shared/notes/kitchen-mixed-composition.md).
GLOBAL_ORDER = ("microwave", "kettle", "bottom burner", "top burner", "light switch", "slide cabinet", "hinge cabinet")
EPISODE_LENGTH = 280
STATE_DIM = 60
ACTION_DIM = 9
D4RL_NOISE_RATIO = 0.1  # D4RL KitchenV0.robot_noise_ratio
# Position-noise amplitudes of qpos 9..29 in the Franka config (franka_config.xml, shipped with
# FrankaKitchen-v1 and D4RL); D4RL adds ratio * amp * U(-1, 1) to every observed object position.
OBJECT_NOISE_AMP = np.array([0.005] * 2 + [0.0005] * 6 + [0.005] * 3 + [0.1] * 3 + [0.005] * 3 + [0.1] * 3 + [0.005])


def goal_vector(tasks=DOWNSTREAM_TASKS) -> np.ndarray:
    """The 30-dim goal part of D4RL's observation: zeros except each task's goal at its element indices."""
    goal = np.zeros(30)
    for task in tasks:
        goal[OBS_ELEMENT_INDICES[task]] = OBS_ELEMENT_GOALS[task]
    return goal


def d4rl_state(qpos, tasks=DOWNSTREAM_TASKS) -> np.ndarray:
    """D4RL's 60-dim observation (without noise) from FrankaKitchen-v1's ``data.qpos`` (30 entries)."""
    return np.concatenate([np.asarray(qpos, dtype=np.float64)[:30], goal_vector(tasks)]).astype(np.float32)


def completed_subtasks(state, tasks=SUBTASKS) -> list:
    """Names of ``tasks`` whose element is within BONUS_THRESH of its goal (order ignored, nothing latched).

    ``state``: a D4RL observation (60,), a qpos vector (30,), anything whose first 30 entries are qpos, or
    a MuJoCo ``MjData`` (its ``qpos`` is used)."""
    qpos = np.asarray(getattr(state, "qpos", state), dtype=np.float64)
    return [t for t in tasks
            if np.linalg.norm(qpos[..., OBS_ELEMENT_INDICES[t]] - OBS_ELEMENT_GOALS[t]) < BONUS_THRESH]


def newly_completed(state, remaining, strict_order=True) -> list:
    """D4RL's bonus rule for one step: which of the ``remaining`` tasks (in task order) complete now.

    With ``strict_order`` a task counts only if every remaining task before it completes too (the SPiRL
    authors' D4RL fork); otherwise in any order (upstream D4RL, FrankaKitchen-v1)."""
    done_now, all_before_done = [], True
    for task in remaining:
        complete = np.linalg.norm(state[OBS_ELEMENT_INDICES[task]] - OBS_ELEMENT_GOALS[task]) < BONUS_THRESH
        if complete and (all_before_done or not strict_order):
            done_now.append(task)
        all_before_done = all_before_done and complete
    return done_now


class KitchenD4RL(gym.Env):
    """D4RL kitchen semantics on top of a FrankaKitchen-v1 simulator (see the module docstring)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 12}

    def __init__(self, tasks=DOWNSTREAM_TASKS, strict_order=True, noise_ratio=D4RL_NOISE_RATIO,
                 max_episode_steps=EPISODE_LENGTH, render_mode=None, seed=None):
        tasks = tuple(tasks)
        unknown = [t for t in tasks if t not in SUBTASKS]
        if unknown or not tasks or len(set(tasks)) != len(tasks):
            raise ValueError(f"kitchen tasks must be distinct names from {', '.join(SUBTASKS)}; got {list(tasks)}")
        if noise_ratio < 0 or max_episode_steps < 1:
            raise ValueError(f"kitchen needs noise_ratio >= 0 and max_episode_steps >= 1, got {noise_ratio}, {max_episode_steps}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"kitchen render_mode must be None or 'rgb_array', got {render_mode!r}")
        if render_mode and "MUJOCO_GL" not in os.environ and not os.environ.get("DISPLAY"):
            os.environ["MUJOCO_GL"] = "egl"  # headless: gymnasium would pick glfw first, which fails without a display
        try:
            from gymnasium_robotics.envs.franka_kitchen.kitchen_env import KitchenEnv
            # Our reward replaces v1's, so v1 neither removes tasks nor terminates; objects get D4RL's noise below.
            self.sim = KitchenEnv(tasks_to_complete=list(tasks), terminate_on_tasks_completed=False,
                                  remove_task_when_completed=False, object_noise_ratio=0.0,
                                  robot_noise_ratio=noise_ratio, render_mode=render_mode)
        except Exception as e:  # mujoco >= 3.12 asserts on the kettle's free joint here
            import mujoco
            raise RuntimeError(f"FrankaKitchen-v1 could not be built ({type(e).__name__}: {e}) with mujoco "
                               f"{mujoco.__version__}; install 'gymnasium-robotics==1.4.2' 'mujoco>=3.3.7,<3.12'") from None
        # v1's robot reads its 9 joints through 18 name lookups per step (~5 % of a step's time); these indices,
        # looked up once, give the same values with the same random draws (a test compares the two).
        robot = self.sim.robot_env
        joint_ids = [robot.model_names.joint_name2id[n] for n in robot.model_names.joint_names if n.startswith("robot")]
        self._robot_qpos_idx, self._robot_qvel_idx = robot.model.jnt_qposadr[joint_ids], robot.model.jnt_dofadr[joint_ids]
        robot._get_obs = self._robot_obs
        self.tasks, self.strict_order, self.noise_ratio = tasks, strict_order, noise_ratio
        self.max_episode_steps, self.render_mode = max_episode_steps, render_mode
        self.goal = goal_vector(tasks)
        self.observation_space = gym.spaces.Dict(
            {"state": gym.spaces.Box(-np.inf, np.inf, shape=(STATE_DIM,), dtype=np.float32)})
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(ACTION_DIM,), dtype=np.float32)
        self._first_seed = seed
        if seed is not None:
            self.action_space.seed(seed)
        self._reset_counts()

    def _reset_counts(self):
        # The reward's count (strict order unless strict_order=False) and, alongside, the any-order count, so
        # every run can report both metrics whatever it is rewarded by.
        self._remaining, self._completed, self._t = list(self.tasks), [], 0
        self._remaining_any, self._completed_any = list(self.tasks), []

    @property
    def model(self):
        return self.sim.model

    @property
    def data(self):
        return self.sim.data

    def _robot_obs(self):
        """FrankaRobot._get_obs of FrankaKitchen-v1 with the joint addresses cached: noisy qpos and qvel (18,)."""
        robot = self.sim.robot_env
        qpos = robot.data.qpos[self._robot_qpos_idx] + robot.robot_noise_ratio * robot.robot_pos_noise_amp[:9] * \
            robot.np_random.uniform(low=-1.0, high=1.0, size=9)
        qvel = robot.data.qvel[self._robot_qvel_idx] + robot.robot_noise_ratio * robot.robot_vel_noise_amp[:9] * \
            robot.np_random.uniform(low=-1.0, high=1.0, size=9)
        robot._last_robot_qpos = qpos  # the velocity controller integrates from the last noisy reading (as v1)
        return np.concatenate((qpos, qvel))

    def _state(self, robot_qpos) -> np.ndarray:
        # Robot part: the simulator's noisy joint reading, the same one its controller integrates from (as D4RL).
        objects = self.sim.data.qpos[9:30] + self.noise_ratio * OBJECT_NOISE_AMP * self.np_random.uniform(-1, 1, 21)
        return np.concatenate([robot_qpos[:9], objects, self.goal]).astype(np.float32)

    def _info(self, step_completions):
        # Fresh lists every step: v1's own info list is one shared object (gymnasium-robotics issue 336).
        return {METRIC: len(self._completed), "completed_tasks": list(self._completed),
                "step_completions": list(step_completions), "tasks_to_complete": list(self._remaining),
                ANY_ORDER_METRIC: len(self._completed_any), "completed_tasks_any_order": list(self._completed_any)}

    def reset(self, *, seed=None, options=None):
        if seed is None and self._first_seed is not None:
            seed, self._first_seed = self._first_seed, None  # make_env(seed=...) seeds the first episode
        super().reset(seed=seed)
        sim_obs, _ = self.sim.reset(seed=None if seed is None else int(self.np_random.integers(2**31)))
        self._reset_counts()
        return {"state": self._state(sim_obs["observation"])}, self._info([])

    def step(self, action):
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape != (ACTION_DIM,):
            raise ValueError(f"kitchen action must have {ACTION_DIM} entries, got shape {action.shape}")
        sim_obs, _, _, _, _ = self.sim.step(np.clip(action, -1.0, 1.0))
        state = self._state(sim_obs["observation"])
        done_now = newly_completed(state, self._remaining, self.strict_order)  # D4RL: on the noisy observation
        for task in done_now:
            self._remaining.remove(task)
            self._completed.append(task)
        for task in newly_completed(state, self._remaining_any, strict_order=False):
            self._remaining_any.remove(task)
            self._completed_any.append(task)
        self._t += 1
        terminated = not self._remaining
        truncated = self._t >= self.max_episode_steps and not terminated
        return {"state": state}, float(len(done_now)), terminated, truncated, self._info(done_now)

    def render(self):
        if self.render_mode != "rgb_array":
            raise RuntimeError("kitchen env was made without render_mode='rgb_array'; pass it to make_env")
        try:
            return self.sim.render()
        except Exception as e:
            raise RuntimeError(f"MuJoCo could not render ({type(e).__name__}: {e}); headless machines need "
                               "MUJOCO_GL=egl (GPU) or MUJOCO_GL=osmesa (CPU, libosmesa) set before start") from None

    def close(self):
        self.sim.close()


def make_env(seed=None, render_mode=None, tasks=DOWNSTREAM_TASKS, strict_order=True,
             noise_ratio=D4RL_NOISE_RATIO, max_episode_steps=EPISODE_LENGTH) -> gym.Env:
    """The paper's kitchen task: microwave -> kettle -> bottom burner -> light switch, in strict order.

    ``tasks``: any sequence of distinct SUBTASKS; ``strict_order=False`` counts them in any order;
    ``noise_ratio``: D4RL's observation-noise ratio (0.1 = D4RL, 0.01 = v1's robot default, 0 = none)."""
    return KitchenD4RL(tasks=tasks, strict_order=strict_order, noise_ratio=noise_ratio,
                       max_episode_steps=max_episode_steps, render_mode=render_mode, seed=seed)
