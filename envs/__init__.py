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
import os
import tempfile

ENV_NAMES = ("maze", "block_stacking", "kitchen")


def _silence_adroit_notice():
    """gymnasium-robotics 1.4.2 prints, on import, a notice that its Adroit-hand envs' rewards changed in 1.2.1
    (from the farama_notifications package). We use no Adroit env: drop that one notice, by its text, before
    any env module imports gymnasium_robotics. Every other notice and warning stays."""
    try:
        from farama_notifications import notifications
    except ImportError:
        return
    robotics = notifications.get("gymnasium_robotics", {})
    for version in [v for v, message in robotics.items() if "AdroitHand" in message and "reward functions" in message]:
        del robotics[version]


_silence_adroit_notice()


class UnwritablePathError(OSError):
    """An output path that cannot be written; its message is one line naming the path."""


def ensure_writable(path, what="output"):
    """Raise UnwritablePathError unless a file can be created at ``path``.

    Called by every script before any work starts, so that a bad --save-path / --out fails in seconds, not
    after an hour of training. The check makes the missing parent directories, writes and deletes a temporary
    file there, then removes the directories it made: nothing is left behind if the script stops later."""
    directory = os.path.dirname(os.path.abspath(path))
    made = []  # missing directories, deepest first
    existing = directory
    while not os.path.exists(existing):
        made.append(existing)
        existing = os.path.dirname(existing)
    try:
        if os.path.isdir(path):
            raise IsADirectoryError(21, "it is a directory")
        if not os.path.isdir(existing):
            raise NotADirectoryError(20, f"{existing} is a file, not a directory")
        os.makedirs(directory, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as e:
        raise UnwritablePathError(f"cannot write the {what} {path}: {e.strerror or e}") from None
    finally:
        for made_dir in made:
            try:
                os.rmdir(made_dir)
            except OSError:  # not empty (another process wrote there meanwhile) or never made
                pass


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
