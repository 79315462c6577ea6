"""Franka kitchen (paper section 4.1, appendix C): D4RL's kitchen task on gymnasium-robotics FrankaKitchen-v1.

The simulator is FrankaKitchen-v1 (the maintained MuJoCo port of D4RL's kitchen); everything the agent sees
follows D4RL's ``kitchen-mixed-v0`` env, so D4RL-trained models and D4RL data fit:

* observation ``{"state": (60,) float32}`` = qpos[0:9] robot joints, qpos[9:30] object joints, then the
  30-dim task goal (zeros except the goal values at the task elements' indices, as D4RL's ``_get_task_goal``);
* action: 9 joint-velocity commands in [-1, 1] (the simulator scales them by 2);
* reward: +1 when a task element comes within ``BONUS_THRESH`` (L2 over its obs indices) of its goal, each
  task at most once; with ``strict_order`` (default, the SPiRL authors' D4RL fork) a task counts only once
  every task before it in the list is done; the episode terminates when all are done, truncates at 280 steps;
* observation noise as D4RL: uniform, ``noise_ratio`` (0.1) times the Franka config's per-joint amplitudes,
  on robot and object positions. The robot part also drives the controller (target = noisy q + 2 a dt, in
  D4RL and v1 alike), so the noise level changes the dynamics; v1's default (0.01 robot, ~0 objects) is
  ``noise_ratio=0.01``.

``info`` carries the reward's count ``subtasks_completed`` (``METRIC``) and, whatever ``strict_order`` is, the
any-order count ``subtasks_completed_any_order`` (``ANY_ORDER_METRIC``).

``load_dataset`` reads D4RL kitchen HDF5 files or Minari datasets, downloads ``kitchen-mixed-v0`` when none is
present, and otherwise falls back to the scripted demonstrations of ``envs/kitchen_demo.py`` (kitchen-mixed's
composition). The task definitions and the env class live in ``envs/kitchen_env.py``, which the demonstrator
imports too; this module re-exports them.
"""

import hashlib
import http.client
import os
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import h5py
import numpy as np

# The task definitions and the env live in envs/kitchen_env.py, which envs/kitchen_demo.py imports too (one way:
# kitchen -> kitchen_demo -> kitchen_env, kitchen -> kitchen_env); re-exported here as the public interface.
from envs.kitchen_env import (ACTION_DIM, ANY_ORDER_METRIC, BONUS_THRESH, D4RL_NOISE_RATIO, DEFAULT_PRIOR_INPUT,  # noqa: F401
                              DOWNSTREAM_TASKS, EPISODE_LENGTH, GLOBAL_ORDER, METRIC, OBJECT_NOISE_AMP, OBS_ELEMENT_GOALS,
                              OBS_ELEMENT_INDICES, STATE_DIM, SUBTASKS, KitchenD4RL, completed_subtasks, d4rl_state,
                              goal_vector, make_env, newly_completed)
from envs import kitchen_demo  # noqa: E402

# kitchen-mixed-v0, the paper's skill data (D4RL registers it with this URL; there is no published hash).
D4RL_MIXED_FILE = "kitchen_microwave_kettle_bottomburner_light-v0.hdf5"
D4RL_MIXED_URL = "http://rail.eecs.berkeley.edu/datasets/offline_rl/kitchen/" + D4RL_MIXED_FILE
DATA_DIR = Path("data")  # relative to the current directory, like runs/ and checkpoints/
SCRIPTED_PATH = DATA_DIR / "kitchen_scripted.hdf5"


# ---------------------------------------------------------------------------------------------------------
# Offline data: D4RL kitchen HDF5 / Minari directory -> download kitchen-mixed-v0 -> scripted demonstrations
# ---------------------------------------------------------------------------------------------------------


class DatasetError(ValueError):
    """A kitchen dataset is missing or does not have the expected layout (the message names the fix)."""


class DownloadError(RuntimeError):
    """kitchen-mixed-v0 could not be downloaded (no network, server down, truncated file)."""


def _d4rl_cache_dir() -> Path:
    return Path(os.environ.get("D4RL_DATASET_DIR", Path.home() / ".d4rl" / "datasets"))


def _local_candidates():
    names = (D4RL_MIXED_FILE, "kitchen-mixed-v0.hdf5")
    return [d / n for d in (DATA_DIR, _d4rl_cache_dir()) for n in names]


def _check(path, states, actions, traj_ends):
    if states.ndim != 2 or states.shape[1] != STATE_DIM:
        raise DatasetError(f"{path}: observations have shape {states.shape}, expected (N, {STATE_DIM}) in D4RL's "
                           f"kitchen layout (9 robot + 21 object positions + 30 goal); pass a D4RL kitchen file")
    if actions.shape != (len(states), ACTION_DIM):
        raise DatasetError(f"{path}: actions have shape {actions.shape}, expected ({len(states)}, {ACTION_DIM}); "
                           f"pass a D4RL kitchen file (9-dim joint-velocity actions)")
    if len(states) == 0:
        raise DatasetError(f"{path}: the dataset is empty")
    if not (np.isfinite(states).all() and np.isfinite(actions).all()):
        raise DatasetError(f"{path}: observations or actions contain NaN/inf; re-download or regenerate the file")
    return {"states": states, "actions": actions, "traj_ends": traj_ends}


def _read_d4rl(path, f) -> dict:
    """D4RL layout: flat observations/actions, trajectories ending where terminals or timeouts is set."""
    missing = [k for k in ("observations", "actions") if k not in f]
    if missing or not ("terminals" in f or "timeouts" in f):
        raise DatasetError(f"{path}: not a D4RL kitchen file (needs observations, actions and terminals/timeouts; "
                           f"has {sorted(f.keys())})")
    states = np.asarray(f["observations"][()], dtype=np.float32)
    actions = np.asarray(f["actions"][()], dtype=np.float32)
    ends_mask = np.zeros(len(states), dtype=bool)
    for key in ("terminals", "timeouts"):
        if key in f:
            flags = np.asarray(f[key][()]).reshape(-1).astype(bool)
            if len(flags) != len(states):
                raise DatasetError(f"{path}: {key} has {len(flags)} entries but observations {len(states)}")
            ends_mask |= flags
    traj_ends = np.flatnonzero(ends_mask).astype(np.int64) + 1
    if len(traj_ends) == 0 or traj_ends[-1] != len(states):
        traj_ends = np.append(traj_ends, len(states)).astype(np.int64)  # an unfinished last trajectory
    return _check(path, states, actions, traj_ends)


def _read_minari(path, f) -> dict:
    """Minari layout (e.g. D4RL/kitchen/mixed-v2): one group per episode with FrankaKitchen-v1 dict observations
    (T + 1 of them) and T actions; converted to D4RL's 60-dim observation, the goal from the episode's tasks."""
    episodes = sorted((k for k in f.keys() if k.startswith("episode_")), key=lambda k: int(k.split("_")[1]))
    if not episodes:
        raise DatasetError(f"{path}: neither a D4RL kitchen file nor a Minari main_data.hdf5 (keys {sorted(f.keys())})")
    states, actions, traj_ends = [], [], []
    for name in episodes:
        ep = f[name]
        try:
            obs = np.asarray(ep["observations"]["observation"][()], dtype=np.float64)  # (T+1, 59)
            tasks = [t for t in SUBTASKS if t in ep["observations"].get("desired_goal", {})] or DOWNSTREAM_TASKS
            act = np.asarray(ep["actions"][()], dtype=np.float32)
        except (KeyError, TypeError, AttributeError):
            raise DatasetError(f"{path}: Minari {name} lacks observations/observation or actions; "
                               f"expected a FrankaKitchen-v1 dataset such as D4RL/kitchen/mixed-v2") from None
        if obs.ndim != 2 or obs.shape[1] != 59 or len(obs) != len(act) + 1:
            raise DatasetError(f"{path}: Minari {name} has observation {obs.shape} and actions {act.shape}; "
                               f"expected (T+1, 59) FrankaKitchen-v1 observations and (T, 9) actions")
        # v1's 59-dim observation: robot qpos 0:9, robot qvel 9:18, object qpos 18:39, object qvel 39:59.
        qpos = np.concatenate([obs[:-1, :9], obs[:-1, 18:39]], axis=1)
        states.append(np.concatenate([qpos, np.tile(goal_vector(tasks), (len(qpos), 1))], axis=1))
        actions.append(act)
        traj_ends.append(sum(len(a) for a in actions))
    return _check(path, np.concatenate(states).astype(np.float32), np.concatenate(actions),
                  np.asarray(traj_ends, dtype=np.int64))


def read_dataset_file(path) -> dict:
    """Load a D4RL kitchen HDF5 file, a Minari main_data.hdf5 or a Minari dataset directory (no fallbacks)."""
    path = Path(path).expanduser()
    if path.is_dir():
        found = [p for p in (path / "data" / "main_data.hdf5", path / "main_data.hdf5") if p.is_file()]
        if not found:
            raise DatasetError(f"{path}: a directory without data/main_data.hdf5; pass a D4RL kitchen .hdf5 file "
                               f"or a Minari dataset directory")
        path = found[0]
    if not path.is_file():
        raise DatasetError(f"kitchen dataset not found: {path}; pass a D4RL kitchen file (e.g. {D4RL_MIXED_FILE}), "
                           f"a Minari dataset directory, or 'auto'")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DatasetError(f"{path}: not a readable HDF5 file ({e}); pass a D4RL kitchen .hdf5 file") from None
    with f:
        return _read_d4rl(path, f) if "observations" in f else _read_minari(path, f)


def _resolve_host(host, timeout):
    """getaddrinfo ignores socket timeouts; a thread bounds it so a dead resolver costs seconds, not minutes."""
    import socket
    result = {}

    def resolve():
        try:
            result["addr"] = socket.getaddrinfo(host, None)
        except OSError as e:
            result["error"] = e

    thread = threading.Thread(target=resolve, daemon=True)
    thread.start()
    thread.join(timeout)
    if "addr" not in result:
        raise DownloadError(f"cannot resolve {host}: {result.get('error', f'no answer in {timeout:.0f} s')}")


def download_d4rl_mixed(url=D4RL_MIXED_URL, cache_dir=None, timeout=5.0) -> Path:
    """Download kitchen-mixed-v0 into D4RL's cache (~/.d4rl/datasets), with a progress bar; the file only takes
    its final name once its size matches Content-Length and it passes the layout check. Network errors raise
    DownloadError within about ``timeout`` seconds (socket timeout on connect and on every read)."""
    from tqdm import tqdm

    dest = Path(cache_dir or _d4rl_cache_dir()) / D4RL_MIXED_FILE
    part = dest.with_name(dest.name + ".part")
    host = urllib.parse.urlparse(url).hostname
    try:
        if host:
            _resolve_host(host, timeout)
        with urllib.request.urlopen(url, timeout=timeout) as response:
            expected = int(response.headers.get("Content-Length") or 0)
            dest.parent.mkdir(parents=True, exist_ok=True)
            sha256, size = hashlib.sha256(), 0
            with open(part, "wb") as out, tqdm(total=expected or None, unit="B", unit_scale=True,
                                               desc=f"downloading {D4RL_MIXED_FILE}") as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    sha256.update(chunk)
                    size += len(chunk)
                    bar.update(len(chunk))
        if expected and size != expected:
            raise DownloadError(f"truncated download: {size} of {expected} bytes")
        read_dataset_file(part)  # layout / NaN check before the file is trusted
        os.replace(part, dest)
        print(f"[kitchen] downloaded {dest} ({size} bytes, sha256 {sha256.hexdigest()})", file=sys.stderr)
        return dest
    except (OSError, urllib.error.URLError, http.client.HTTPException, ValueError, DownloadError) as e:
        part.unlink(missing_ok=True)
        reason = str(e) if isinstance(e, DownloadError) else f"{type(e).__name__}: {e}"
        raise DownloadError(f"download of {url} failed: {reason}") from None


def _scripted_dataset(num_sequences, seed) -> Path:
    """The offline fallback: scripted demonstrations (envs/kitchen_demo.py), generated once and then reused."""
    if num_sequences is None:
        path = SCRIPTED_PATH
        num_sequences = kitchen_demo.DEFAULT_NUM_SEQUENCES
    else:
        path = SCRIPTED_PATH.with_name(f"kitchen_scripted_{num_sequences}.hdf5")
    stale = path.is_file() and _stale_scripted_file(path)
    if stale or not path.is_file():
        why = "it was made by an older demonstrator, " if stale else ""
        print(f"[kitchen] generating {num_sequences} scripted kitchen sequences into {path} ({why}a few minutes) ...",
              file=sys.stderr)
        kitchen_demo.generate_dataset(str(path), num_sequences, seed=seed)
    return path


def _stale_scripted_file(path) -> bool:
    """A file our demonstrator wrote before its current data version (e.g. the old uniformly random orders)."""
    try:
        with h5py.File(path, "r") as f:
            generator = str(f.attrs.get("generator", ""))
            version = f.attrs.get("data_version", "")
    except OSError:
        return False  # unreadable: read_dataset_file reports it
    version = version.decode() if isinstance(version, bytes) else str(version)
    return generator.startswith("envs/kitchen_demo.py") and version != kitchen_demo.DATA_VERSION


def load_dataset(path="auto", download=True, url=D4RL_MIXED_URL, timeout=5.0, num_sequences=None, seed=0) -> dict:
    """The kitchen skill data (keys: states, actions, traj_ends, source; see envs/__init__.py).

    ``path``: a D4RL kitchen HDF5 file, a Minari dataset directory, or "auto": a local kitchen-mixed-v0 in data/
    or ~/.d4rl/datasets, else a download of it (``download``, ``url``, ``timeout`` seconds), else the scripted
    dataset (data/kitchen_scripted.hdf5, ``num_sequences`` sequences, made on first use)."""
    if str(path) != "auto":
        data = read_dataset_file(path)
        data["source"] = f"kitchen data from {Path(path).expanduser()}"
        return data
    for candidate in _local_candidates():
        if candidate.is_file():
            data = read_dataset_file(candidate)
            data["source"] = f"D4RL kitchen-mixed-v0 (the paper's data), local file {candidate}"
            return data
    if download:
        try:
            file = download_d4rl_mixed(url, timeout=timeout)
            data = read_dataset_file(file)
            data["source"] = f"D4RL kitchen-mixed-v0 (the paper's data), downloaded from {url} to {file}"
            return data
        except DownloadError as e:
            print(f"[kitchen] {e}", file=sys.stderr)
    file = _scripted_dataset(num_sequences, seed)
    data = read_dataset_file(file)
    data["source"] = (f"SCRIPTED kitchen demonstrations ({len(data['traj_ends'])} trajectories from "
                      f"envs/kitchen_demo.py, {file}), NOT the paper's D4RL kitchen-mixed-v0: no local copy and no download")
    print("=" * 100 + f"\n[kitchen] USING {data['source']}\n" + "=" * 100, file=sys.stderr)
    return data
