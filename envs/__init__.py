"""The three environments of the paper, behind one small interface.

Every env module (``envs/maze.py``, ``envs/block_stacking.py``, ``envs/kitchen.py``) provides

* ``make_env(seed=None, render_mode=None, **kwargs) -> gymnasium.Env`` -- the *downstream* task of the
  paper, with its episode length built in (``truncated`` is True at the time limit, ``terminated``
  only on a true task end). Observations are dicts: ``"state"`` (float32 vector, always present) and,
  where the env has a camera, ``"image"`` (uint8, (6, 32, 32): the last two 32x32 RGB frames stacked
  along channels, oldest first). ``info[METRIC]`` holds the episode's task metric so far.
* ``load_dataset(path="auto", **kwargs) -> dict`` -- the offline training data of the skill model:
  ``"states"`` (N, state_dim) float32, ``"actions"`` (N, action_dim) float32, ``"traj_ends"`` (K,) int64,
  the exclusive end index of every trajectory (sorted, last == N), optionally ``"images"``
  (N, 6, 32, 32) uint8 stacked like the env's, and ``"source"``: a sentence saying where the data came
  from. ``"auto"`` finds or builds the default dataset without network access.
* ``METRIC`` -- the name of the task metric in ``info`` ("success", "blocks_stacked",
  "subtasks_completed"), logged by every RL script as ``charts/<METRIC>``.
* ``DEFAULT_PRIOR_INPUT`` -- "image" or "state": what the paper's skill prior sees in this env.
"""

import importlib

ENV_NAMES = ("maze", "block_stacking", "kitchen")


def env_module(name: str):
    """The module of env ``name``, with an error that lists the valid names."""
    if name not in ENV_NAMES:
        raise ValueError(f"unknown env {name!r}: choose one of {', '.join(ENV_NAMES)}")
    return importlib.import_module(f"envs.{name}")


def make_env(name: str, **kwargs):
    """The downstream task env ``name`` (see the module docstring for what it returns)."""
    return env_module(name).make_env(**kwargs)


def load_dataset(name: str, path: str = "auto", **kwargs) -> dict:
    """The offline dataset of env ``name`` (see the module docstring for its keys)."""
    return env_module(name).load_dataset(path, **kwargs)
