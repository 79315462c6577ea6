"""Sweeps: the paper's experiments as grids of runs, executed with submitit, resumable, aggregated into results.

    python benchmarks/sweep.py --preset fig4-maze --dry-run     # print every command of Fig. 4 (left)
    python benchmarks/sweep.py --preset fig4-maze               # run them here, as many at once as CPU cores
    python benchmarks/sweep.py --preset fig4-maze --executor slurm --slurm-partition cpu --slurm-time-min 1440
    python benchmarks/sweep.py --aggregate                      # runs/sweeps/<preset>/* -> docs/results.json,
                                                                # docs/results.md, docs/figures/<preset>.png
    python benchmarks/sweep.py --scripts baselines/sac.py --envs Pendulum-v1 --seeds 1 2 3 \\
        --set "baselines/*.py=--total-timesteps 20000"          # a grid of your own (--name names its directory)

A run is one process of one script (spirl_vae.py, spirl_sac.py, baselines/*.py, a data generator) with one
torch thread. Its outputs (tensorboard events, checkpoint, log.txt, run.json) go to the deterministic directory
runs/sweeps/<preset>/<algo>__<env>__<seed>[__<tag>], so a sweep started again finds its runs: a run with
done.json is skipped, a run with a checkpoint but no done.json continues from it with --resume, the rest start.
Runs that read another run's output (the RL runs read the skill model a spirl_vae.py run of the same preset
trains) start once that run is done: on one machine the sweep submits them then; on Slurm they are submitted
at once with an afterok dependency. submitit runs each job (LocalExecutor here, SlurmExecutor on a cluster);
a Slurm job that reaches its time limit is requeued by submitit and resumes from its last checkpoint.
"""

import fnmatch
import glob
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import asdict, dataclass, field
from typing import List, Literal, Optional, Tuple

import numpy as np
import tyro

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repo: scripts run from here
PRESETS = ("fig4-maze", "fig4-kitchen", "fig4-blocks", "fig5", "fig6", "fig6-maze", "table1")
METRIC = {"maze": "success", "kitchen": "subtasks_completed", "block_stacking": "blocks_stacked"}  # envs/<env>.py METRIC
ANY_ORDER_TAG = "charts/subtasks_completed_any_order"  # kitchen runs may log the any-order count too
METRIC_RANGE = {"success": (0, 1), "subtasks_completed": (0, 4), "blocks_stacked": (0, 10)}  # std bands stay inside
# The numbers to compare with: the paper's text (sections 4.2-4.4, Table 1), the kitchen figures of the reproduction issue
# and the authors' later plots (closed-loop skills, strict order; shared/notes/). Keyed by (env, algo) as the presets name runs,
# or by (env, algo, tag) for one variant (Table 1; "sparse": block-stacking runs with --sparse-reward).
REFERENCE = {
    ("maze", "spirl"): "success ≈1.0 by ≈1.4 M (paper, radius 1.0)",
    ("maze", "sac"): "0: no baseline reaches the goal in training (paper, 4.2)", ("maze", "bc_sac"): "0: no baseline reaches the goal in training (paper, 4.2)", ("maze", "flat_prior"): "0: no baseline reaches the goal in training (paper, 4.2)",
    ("maze", "ssp"): "0: no baseline reaches the goal in training (paper, 4.2)",
    ("kitchen", "spirl"): "≈2.7 any order at 1.3 M (paper); strict ≈1.5 at 0.5 M, ≈2.7 at 1.05-1.3 M (authors)",
    ("kitchen", "spirl_cl"): "strict ≈2.5 at 0.2 M, ≈2.9 at 1.3 M (authors)",
    ("kitchen", "flat_prior"): "≈1.0 (paper)", ("kitchen", "ssp"): "≈0.9 (paper)", ("kitchen", "bc_sac"): "≈0.6 (paper)",
    ("kitchen", "sac"): "≈0.2 (paper)",
    ("block_stacking", "spirl"): "≈3.5 (paper)",
    ("block_stacking", "spirl_cl"): "none on this reward; ≈3.4 on the sparse one (authors' later plot)",
    ("block_stacking", "spirl", "sparse"): "≈1.9 (authors' later plot, sparse reward)",
    ("block_stacking", "spirl_cl", "sparse"): "≈3.4 (authors' later plot, sparse reward)",
    ("block_stacking", "flat_prior"): "best baseline ≈1.5 (paper)",
    ("block_stacking", "spirl", "random0"): "3.5 (paper, Table 1)", ("block_stacking", "spirl", "random50"): "2.0 (paper, Table 1)",
    ("block_stacking", "spirl", "random75"): "1.0 (paper, Table 1)",  # (env, algo, tag): one variant of a preset
}
LOCAL_TIMEOUT_MIN = 60 * 24 * 60  # submitit's LocalExecutor kills a job after its timeout: none that matters here


@dataclass
class Args:
    preset: Optional[Literal["fig4-maze", "fig4-kitchen", "fig4-blocks", "fig5", "fig6", "fig6-maze", "table1"]] = None
    """a paper experiment (its runs and budgets: --dry-run lists them); None: the grid of --scripts/--envs/--seeds"""
    scripts: Tuple[str, ...] = ()
    """custom grid: scripts relative to the repo (spirl_sac.py, baselines/sac.py, ...)"""
    envs: Tuple[str, ...] = ("maze",)
    """custom grid: envs"""
    seeds: Tuple[int, ...] = (1,)
    """custom grid: seeds"""
    preset_seeds: Tuple[int, ...] = ()
    """fig4 and table1 presets: the seeds of their SPiRL runs instead of the preset's (e.g. 3 for a third seed); empty:
    the preset's"""
    set: tyro.conf.UseAppendAction[Tuple[str, ...]] = ()
    """flag overrides "PATTERN=FLAGS" (repeat --set for more), appended to every run whose script matches the glob
    PATTERN, e.g. "spirl_sac.py=--total-env-steps 200000" or "baselines/*.py=--total-timesteps 50000" (presets too)"""
    only: Tuple[str, ...] = ()
    """run only the runs whose names match one of these globs (e.g. "spirl__kitchen__1"), and the runs they read
    (a skill model before its RL run; a finished one without what it read in turn); empty: every run of the grid"""
    name: Optional[str] = None
    """directory name of the sweep under --root; None: the preset's name, or "custom" """
    root: str = "runs/sweeps"
    """where sweep directories go (relative to the current directory)"""
    dry_run: bool = False
    """print each run's command and state (to run / to resume / done) and exit"""
    executor: Literal["local", "slurm"] = "local"
    """local: submitit's LocalExecutor on this machine; slurm: submitit's SlurmExecutor"""
    parallel: int = 0
    """local: runs at once; 0: one per CPU core (each run uses one torch thread)"""
    slurm_partition: Optional[str] = None
    """Slurm partition"""
    slurm_time_min: int = 60 * 24
    """Slurm time limit of one job in minutes (sbatch --time); a job that reaches it is requeued and resumes"""
    slurm_cpus_per_task: int = 1
    """Slurm CPUs per job (one run per job; the scripts use one torch thread)"""
    slurm_mem_gb: int = 16
    """Slurm memory per job in GB (image replay buffers of 1 M env steps need several GB)"""
    slurm_additional: Tuple[str, ...] = ()
    """more sbatch parameters as KEY=VALUE (e.g. account=myproj qos=normal)"""
    keep_replay: bool = False
    """keep the replay buffers of finished runs (only --resume reads them; an image run's buffer is GBs)"""
    aggregate: bool = False
    """read every finished run under the sweep directories and write --results-json, --results-md and figures; no runs"""
    sweeps: Tuple[str, ...] = ()
    """--aggregate: sweep directories to read; empty: every directory under --root (presets and --name sweeps)"""
    results_json: str = "docs/results.json"
    """--aggregate: the list of finished runs, updated: a run read again replaces its entry, the entries of runs whose
    directories are not on this machine (git ignores runs/) are kept, so results outlive the logs they came from"""
    drop_missing: bool = False
    """--aggregate: write only the runs read now, dropping the entries of runs not found"""
    notes_dir: str = "docs/sweep_notes"
    """--aggregate: what a reader must know about a sweep, quoted under its heading: <notes-dir>/<sweep>.md (tracked
    by git), or else a NOTE.md in the sweep directory"""
    results_md: str = "docs/results.md"
    """--aggregate: output markdown table"""
    figures_dir: str = "docs/figures"
    """--aggregate: one PNG per sweep (mean +- std over seeds, x = env steps)"""
    curve_points: int = 200
    """--aggregate: most points of a run's curve (bins of env steps, mean metric of the episodes in each)"""


# ----------------------------------------------------------------------------------------------------
# Runs: what each script needs to write into its run directory and to resume.
# ----------------------------------------------------------------------------------------------------


@dataclass
class Run:
    """One process. flags may contain {dir:NAME}, the run directory of run NAME of the same sweep."""

    name: str
    script: str  # a path relative to the repo, or a module run with -m (envs.block_stacking)
    flags: List[str]
    env: str
    algo: str
    seed: int
    tag: str = ""
    after: List[str] = field(default_factory=list)  # runs whose outputs this one reads


# script -> (flags that put its outputs into the run directory, its checkpoint there, flags that resume from it)
OUTPUTS = {
    "spirl_sac.py": (["--run-dir", "{run_dir}"], "spirl_sac.pt", ["--resume", "{run_dir}/spirl_sac.pt"]),
    "spirl_vae.py": (["--save-path", "{run_dir}/skill_model.pt", "--run-dir", "{run_dir}"], "skill_model.pt", ["--resume"]),
    "baselines/sac.py": (["--run-dir", "{run_dir}"], "agent.pt", ["--resume", "{run_dir}/agent.pt"]),
    "baselines/bc_sac.py": (["--run-dir", "{run_dir}"], "agent.pt", ["--resume", "{run_dir}/agent.pt"]),
    "baselines/flat_prior.py": (["--run-dir", "{run_dir}"], "agent.pt", ["--resume", "{run_dir}/agent.pt"]),
    "baselines/ssp.py": (["--run-dir", "{run_dir}"], "agent.pt", ["--resume", "{run_dir}/agent.pt"]),
    "envs.block_stacking": (["--out", "{run_dir}/data.hdf5"], None, None),  # written atomically: redone if cut
}
ALGO = {"spirl_sac.py": "spirl", "baselines/sac.py": "sac", "baselines/bc_sac.py": "bc_sac",
        "baselines/flat_prior.py": "flat_prior", "baselines/ssp.py": "ssp", "spirl_vae.py": "skills"}


def run_name(algo, env, seed, tag=""):
    return f"{algo}__{env}__{seed}" + (f"__{tag}" if tag else "")


def skills(env, tag="", flags=()):
    """A spirl_vae.py run that trains the skill model (seed 1) the RL runs of a preset read."""
    return Run(run_name("skills", env, 1, tag), "spirl_vae.py", ["--env", env, *flags], env, "skills", 1, tag)


def spirl(env, seed, steps, skill_run, tag="", algo="spirl", flags=()):
    return Run(run_name(algo, env, seed, tag), "spirl_sac.py",
               ["--env", env, "--seed", str(seed), "--total-env-steps", str(steps),
                "--skill-model", f"{{dir:{skill_run.name}}}/skill_model.pt", *flags],
               env, algo, seed, tag, after=[skill_run.name])


def baselines(env, steps, skill_run, seed=1):
    """The four baselines of section 4.1 (and SSP with prior initialisation, appendix E), one seed each. Those that
    read the offline data start after the skill model, whose run makes the env's default dataset if it is missing."""
    common = ["--env", env, "--seed", str(seed), "--total-timesteps", str(steps)]
    runs = [Run(run_name(algo, env, seed), f"baselines/{algo}.py", list(common), env, algo, seed,
                after=[] if algo == "sac" else [skill_run.name]) for algo in ("sac", "bc_sac", "flat_prior")]
    for algo, extra in (("ssp", []), ("ssp_prior_init", ["--prior-init"])):
        runs.append(Run(run_name(algo, env, seed), "baselines/ssp.py",
                        [*common, "--skill-model", f"{{dir:{skill_run.name}}}/skill_model.pt", *extra],
                        env, algo, seed, after=[skill_run.name]))
    return runs


def preset_runs(preset, seeds=()):
    """The runs of a paper experiment, with the budgets of issues 16-18 (SPiRL 1 M env steps; baselines 250 k,
    flat SAC doing an update per env step, ten times SPiRL's; ablations 300-500 k at one seed). seeds: those of the
    fig4 and table1 presets' SPiRL runs, if not the preset's own."""
    if seeds and not preset.startswith(("fig4", "table1")):
        raise SystemExit(f"--preset-seeds applies to the fig4 and table1 presets, not to {preset}")
    if preset == "fig4-maze":  # Fig. 4 left
        model = skills("maze")
        return [model, *(spirl("maze", seed, 1_000_000, model) for seed in seeds or (1, 2, 3)),
                *baselines("maze", 250_000, model)]
    if preset in ("fig4-kitchen", "fig4-blocks"):  # Fig. 4 right / middle: open- and closed-loop skills
        env = "kitchen" if preset == "fig4-kitchen" else "block_stacking"
        model, closed = skills(env), skills(env, "cl", ["--state-conditioned-decoder"])
        closed.after = [model.name]  # one writer of the default dataset, if it has to be made
        return [model, closed, *(spirl(env, seed, 1_000_000, model, flags=["--delta", "5"]) for seed in seeds or (1, 2)),
                *(spirl(env, seed, 1_000_000, closed, algo="spirl_cl", flags=["--delta", "5"]) for seed in seeds or (1, 2)),
                *baselines(env, 250_000, model)]
    if preset == "fig5":  # Fig. 5: where skills from the prior vs random skills lead (no learning)
        model = skills("maze")
        return [model, *(Run(run_name("explore", "maze", seed, sampler), "spirl_sac.py",
                             ["--env", "maze", "--seed", str(seed), "--explore", sampler, "--total-env-steps", "40000",
                              "--skill-model", f"{{dir:{model.name}}}/skill_model.pt"],
                             "maze", f"explore_{sampler}", seed, sampler, after=[model.name])
                         for sampler in ("prior", "uniform", "normal") for seed in (1, 2, 3))]
    if preset in ("fig6", "fig6-maze"):  # Fig. 6: skill horizon H and latent size |Z|, each with its own skill model
        env = "block_stacking" if preset == "fig6" else "maze"  # the paper's Fig. 6 is block stacking; the maze: ours
        runs, first = [], None
        for horizon, latent in ((3, 10), (10, 10), (30, 10), (10, 5), (10, 30)):
            tag = f"H{horizon}_Z{latent}"
            model = skills(env, tag, ["--skill-horizon", str(horizon), "--latent-dim", str(latent)])
            model.after = [first.name] if first else []  # one writer of the default dataset, if it has to be made
            first = first or model
            runs += [model, spirl(env, 1, 300_000, model, tag, flags=["--delta", "5"] if env == "block_stacking" else [])]
        return runs
    if preset == "table1":  # Table 1: skill models on data with 0 / 50 / 75 % random-action trajectories
        runs = []
        for percent in (0, 50, 75):
            tag = f"random{percent}"
            data = Run(run_name("data", "block_stacking", 0, tag), "envs.block_stacking",
                       ["--random-fraction", str(percent / 100)], "block_stacking", "data", 0, tag)
            model = skills("block_stacking", tag, ["--dataset", f"{{dir:{data.name}}}/data.hdf5"])
            model.after = [data.name]
            runs += [data, model, *(spirl("block_stacking", seed, 500_000, model, tag, flags=["--delta", "5"])
                                    for seed in seeds or (1,))]
        return runs
    raise ValueError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")


def custom_runs(scripts, env_names, seeds):
    runs = []
    for script in scripts:
        if script not in OUTPUTS:
            raise SystemExit(f"--scripts {script}: the sweep knows {', '.join(s for s in OUTPUTS if s.endswith('.py'))}")
        for env in env_names:
            for seed in seeds:
                runs.append(Run(run_name(ALGO[script], env, seed), script, ["--env", env, "--seed", str(seed)], env,
                                ALGO[script], seed))
    return runs


def apply_overrides(runs, overrides):
    for override in overrides:
        pattern, sep, flags = override.partition("=")
        if not sep:
            raise SystemExit(f"--set {override!r}: write PATTERN=FLAGS, e.g. 'spirl_sac.py=--total-env-steps 200000'")
        for run in runs:
            if fnmatch.fnmatch(run.script, pattern):
                run.flags += shlex.split(flags)
    return runs


# ----------------------------------------------------------------------------------------------------
# Executing one run (inside a submitit job): resume or start, log, mark done.
# ----------------------------------------------------------------------------------------------------


def run_dir_of(sweep_dir, name):
    return os.path.join(sweep_dir, name)


def state_of(sweep_dir, run):
    """'done', 'resume' (a checkpoint of an interrupted attempt) or 'start'."""
    directory = run_dir_of(sweep_dir, run.name)
    if os.path.isfile(os.path.join(directory, "done.json")):
        return "done"
    checkpoint = OUTPUTS[run.script][1]
    if checkpoint and os.path.isfile(os.path.join(directory, checkpoint)):
        return "resume"
    return "start"


def command_of(sweep_dir, run, state):
    """The argv of a run: python, script, its flags, the flags that put its outputs in its directory (and resume)."""
    directory = os.path.abspath(run_dir_of(sweep_dir, run.name))
    output_flags, _, resume_flags = OUTPUTS[run.script]
    flags = run.flags + output_flags + (resume_flags if state == "resume" else [])
    flags = [flag.replace("{run_dir}", directory) for flag in flags]
    for i, flag in enumerate(flags):
        while "{dir:" in flag:
            start = flag.index("{dir:")
            end = flag.index("}", start)
            flag = flag[:start] + os.path.abspath(run_dir_of(sweep_dir, flag[start + 5:end])) + flag[end + 1:]
        flags[i] = flag
    program = ["-m", run.script] if not run.script.endswith(".py") else [os.path.join(ROOT, run.script)]
    return [sys.executable, *program, *flags]


def git_commit():
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True,
                              timeout=30).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def stop_script(pid):
    """SIGTERM to a run's script and its children; its last checkpoint stays (checkpoints are written atomically)."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        pass


def _submitit():
    import cloudpickle
    import submitit

    if RunJob.__module__ != "__main__":  # imported (tests): ship RunJob's code with the job, as for a script
        cloudpickle.register_pickle_by_value(sys.modules[RunJob.__module__])
    return submitit


class RunJob:
    """The callable submitit runs: one script in a subprocess with one torch thread, its output appended to
    <run_dir>/log.txt; done.json once it exits 0. Checkpointable: a Slurm job cut by its time limit is requeued
    with this same callable, which then finds the run's checkpoint and resumes."""

    def __init__(self, sweep_dir, run, keep_replay=False):
        self.sweep_dir, self.run, self.keep_replay = os.path.abspath(sweep_dir), run, keep_replay
        self.record = asdict(run)  # here: dataclasses.asdict does not work on a class shipped by value to the job
        self.cwd = os.getcwd()  # the scripts' relative paths (checkpoints/, data/, --set paths) mean the same as here

    def __call__(self):
        run, directory = self.run, run_dir_of(self.sweep_dir, self.run.name)
        state = state_of(self.sweep_dir, run)
        if state == "done":
            return "done"
        command = command_of(self.sweep_dir, run, state)
        os.makedirs(directory, exist_ok=True)
        commit = git_commit()
        with open(os.path.join(directory, "run.json"), "w") as f:
            json.dump({**self.record, "command": command, "commit": commit}, f, indent=1)
        threads = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
                   "PYTHONPATH": os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)}  # for -m envs.*
        start = time.time()
        signal.signal(signal.SIGTERM, raise_interrupt)  # so that the finally below stops the script
        with open(os.path.join(directory, "log.txt"), "a") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {state}: {shlex.join(command)}\n")
            log.flush()
            # its own process group, which the sweep stops as a whole when it is interrupted
            script = subprocess.Popen(command, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT,
                                      env={**os.environ, **threads}, start_new_session=True)
            with open(os.path.join(directory, "pid"), "w") as f:
                f.write(str(script.pid))
            try:
                code = script.wait()
            finally:
                if script.poll() is None:  # this job was stopped (Ctrl-C, kill, Slurm): stop the script with it
                    stop_script(script.pid)
                    script.wait()
        if code != 0:
            raise RuntimeError(f"{run.name} exited with {code}: see {os.path.join(directory, 'log.txt')}")
        if not self.keep_replay:
            for path in glob.glob(os.path.join(directory, "*.replay.npz")):
                os.remove(path)
        with open(os.path.join(directory, "done.json"), "w") as f:
            json.dump({"commit": commit, "wall_s": round(time.time() - start, 1), "state_at_start": state,
                       "finished": time.strftime("%Y-%m-%d %H:%M:%S")}, f)
        return state

    def checkpoint(self, *args, **kwargs):
        return _submitit().helpers.DelayedSubmission(self, *args, **kwargs)  # requeue: resumes from the checkpoint


def make_executor(args, sweep_dir):
    submitit = _submitit()
    folder = os.path.join(sweep_dir, ".submitit")
    if args.executor == "local":
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=LOCAL_TIMEOUT_MIN)
    else:
        executor = submitit.SlurmExecutor(folder=folder)
        additional = dict(item.split("=", 1) for item in args.slurm_additional)
        executor.update_parameters(time=args.slurm_time_min, cpus_per_task=args.slurm_cpus_per_task, mem=f"{args.slurm_mem_gb}G",
                                   partition=args.slurm_partition,
                                   signal_delay_s=120, additional_parameters=additional,
                                   setup=[f"cd {shlex.quote(os.getcwd())}"])
    return executor


def check_runs(runs):
    names = [run.name for run in runs]
    if len(set(names)) != len(names):
        raise SystemExit("two runs of the grid have the same name: give them tags")
    for run in runs:
        for name in run.after:
            if name not in names:
                raise SystemExit(f"run {run.name} waits on {name}, which is not in the sweep")


def select_runs(runs, patterns, done=frozenset()):
    """The runs whose names match a glob of `patterns`, with every run they read (transitively), in grid order.
    A run named in `done` is kept, but what it read is not pulled in: its outputs are there (e.g. a finished skill
    model does not bring back the skill model it was ordered after)."""
    if not patterns:
        return runs
    by_name = {run.name: run for run in runs}
    wanted = [run.name for run in runs if any(fnmatch.fnmatch(run.name, p) for p in patterns)]
    if not wanted:
        raise SystemExit(f"--only {' '.join(patterns)} matches no run of the grid; --dry-run lists their names")
    keep = set()
    while wanted:
        name = wanted.pop()
        if name not in keep:
            keep.add(name)
            if name not in done:
                wanted.extend(by_name[name].after)
    return [run for run in runs if run.name in keep]


def execute_local(runs, sweep_dir, parallel, executor, keep_replay=False, poll_s=0.5):
    """submitit's LocalExecutor starts each job as its own process; at most `parallel` run at once, and a run
    is submitted only after the runs it reads are done. Returns {name: "done" | "failed" | "blocked"}."""
    todo = [run for run in runs if state_of(sweep_dir, run) != "done"]
    status = {run.name: "done" for run in runs if run not in todo}
    for run in runs:
        if run.name in status:
            print(f"skip {run.name}: done", flush=True)
    running = {}
    previous_handler = signal.signal(signal.SIGTERM, raise_interrupt)  # `kill` stops the runs too, as Ctrl-C does
    try:
        while todo or running:
            for name, job in list(running.items()):
                if job.done():
                    del running[name]
                    try:
                        job.result()
                        status[name] = "done"
                        print(f"finished {name}", flush=True)
                    except Exception as error:  # noqa: BLE001 - a failed run must not stop the others
                        status[name] = "failed"
                        print(f"FAILED {name}: {str(error).splitlines()[-1] if str(error) else error}", flush=True)
            for run in list(todo):
                if any(status.get(name) in ("failed", "blocked") for name in run.after):
                    status[run.name] = "blocked"
                    todo.remove(run)
                    print(f"blocked {run.name}: {', '.join(run.after)} did not finish", flush=True)
                elif len(running) < parallel and all(status.get(name) == "done" for name in run.after):
                    todo.remove(run)
                    print(f"{state_of(sweep_dir, run)} {run.name}", flush=True)
                    running[run.name] = executor.submit(RunJob(sweep_dir, run, keep_replay))
            if running:
                time.sleep(poll_s)
    except KeyboardInterrupt:
        for name, job in running.items():
            pid_file = os.path.join(run_dir_of(sweep_dir, name), "pid")
            if os.path.isfile(pid_file):
                with open(pid_file) as f:
                    stop_script(int(f.read()))
            job.cancel(check=False)
            print(f"stopped {name}: the same command resumes it from its last checkpoint", flush=True)
        raise SystemExit(130)
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
    return status


def execute_slurm(runs, sweep_dir, executor, keep_replay=False):
    """Submit every run not done at once; a run waits for the runs it reads with an afterok dependency."""
    jobs = {}
    for run in runs:  # presets list a run after the runs it reads
        if state_of(sweep_dir, run) == "done":
            print(f"skip {run.name}: done", flush=True)
            continue
        waits = [jobs[name].job_id for name in run.after if name in jobs]
        executor.update_parameters(job_name=run.name, dependency=f"afterok:{':'.join(waits)}" if waits else None)
        jobs[run.name] = executor.submit(RunJob(sweep_dir, run, keep_replay))
        print(f"submitted {run.name}: job {jobs[run.name].job_id}", flush=True)
    return jobs


# ----------------------------------------------------------------------------------------------------
# Aggregation: tensorboard scalars of finished runs -> results.json, results.md, figures.
# ----------------------------------------------------------------------------------------------------


def read_scalars(run_dir, tags):
    """{tag: [(step, value), ...]} of a run's tensorboard events (a resumed run's purged steps dropped)."""
    import logging

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    tensorboard_logger = logging.getLogger("tensorboard")
    level = tensorboard_logger.level
    tensorboard_logger.setLevel(logging.ERROR)  # its "out of order event.step" warning is a resumed run's intended purge
    try:
        events.Reload()
    finally:
        tensorboard_logger.setLevel(level)
    present = events.Tags()["scalars"]
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in tags if tag in present}


def checkpoint_info(path):
    """Env steps trained and the data source of the run's checkpoint (None where unknown)."""
    import torch

    saved = torch.load(path, map_location="cpu", weights_only=False)
    data = None
    if isinstance(saved.get("skill_model"), dict):  # spirl_sac.py carries its skill model
        data = saved["skill_model"].get("data_source")
    args = saved.get("args", {})
    if data is None and args.get("skill_model"):  # baselines/ssp.py: the skill model it read
        skill_model = args["skill_model"]
        if os.path.isfile(skill_model):
            data = torch.load(skill_model, map_location="cpu", weights_only=False).get("data_source")
    if data is None and "dataset" in args:  # bc_sac.py, flat_prior.py
        data = "the env's default dataset (envs.load_dataset)" if args["dataset"] == "auto" else args["dataset"]
    if data is None and saved.get("format") == "baselines-sac-v1":
        data = "none (flat SAC learns from its own experience only)"
    return saved.get("global_step"), data


def settings_of(flags):
    """The flags as the script saw them: a flag given twice (a --set override) keeps its last value, in the place
    of its first; {run} stands for the directory of that run of the sweep."""
    values, flag = {}, None
    for token in flags:
        if token.startswith("--"):
            flag = token
            values[flag] = []  # a repeated flag replaces its values but keeps its first position
        elif flag is not None:
            values[flag].append(token.replace("{dir:", "{"))
    return shlex.join(token for flag, args in values.items() for token in (flag, *args))


def binned_curve(episodes, env_steps, points):
    """[[bin end, mean value of the episodes ending in the bin], ...] over at most `points` equal bins."""
    if not episodes:
        return []
    steps, values = np.array([s for s, _ in episodes], float), np.array([v for _, v in episodes], float)
    edges = np.linspace(0, max(env_steps, steps.max()), points + 1)
    index = np.clip(np.searchsorted(edges, steps, side="left") - 1, 0, points - 1)
    return [[int(edges[i + 1]), round(float(values[index == i].mean()), 4)] for i in range(points) if (index == i).any()]


def run_result(run_dir, points=200):
    """The results.json entry of one finished RL run, or None (not finished, not RL, no episodes)."""
    if not os.path.isfile(os.path.join(run_dir, "done.json")) or not os.path.isfile(os.path.join(run_dir, "run.json")):
        return None
    with open(os.path.join(run_dir, "run.json")) as f:
        run = json.load(f)
    with open(os.path.join(run_dir, "done.json")) as f:
        done = json.load(f)
    if run["algo"].startswith("explore"):
        return explore_result(run_dir, run, done)
    checkpoint = OUTPUTS.get(run["script"], (None, None))[1]
    if run["algo"] in ("skills", "data") or checkpoint is None:
        return None
    metric = METRIC.get(run["env"], "episodic_return")  # gymnasium envs: the return
    tag = f"charts/{metric}"
    scalars = read_scalars(run_dir, [tag, ANY_ORDER_TAG])
    if tag not in scalars:
        return None
    env_steps, data = checkpoint_info(os.path.join(run_dir, checkpoint))
    episodes = scalars[tag]
    env_steps = int(env_steps if env_steps is not None else episodes[-1][0])
    last = [v for s, v in episodes if s > 0.9 * env_steps]
    result = {
        "env": run["env"], "algo": run["algo"], "seed": run["seed"], "tag": run["tag"] or None,
        "env_steps": env_steps, "metric": metric, "final": round(float(np.mean(last)), 4) if last else None,
        "final_episodes": len(last),
        "strict_order": ("--no-strict-order" not in run["flags"]) if run["env"] == "kitchen" else None,
        "curve": binned_curve(episodes, env_steps, points),
        "settings": settings_of(run["flags"]),
        "data": data, "commit": done.get("commit") or run.get("commit"),
        "sweep": os.path.basename(os.path.dirname(os.path.abspath(run_dir))), "run": os.path.basename(run_dir),
    }
    if ANY_ORDER_TAG in scalars:
        any_order = scalars[ANY_ORDER_TAG]
        last_any = [v for s, v in any_order if s > 0.9 * env_steps]
        result["final_any_order"] = round(float(np.mean(last_any)), 4) if last_any else None
        result["curve_any_order"] = binned_curve(any_order, env_steps, points)
    return result


def explore_result(run_dir, run, done):
    """Fig. 5 (a spirl_sac.py --explore run): `final` is the fraction of the maze's free cells it visited."""
    path = os.path.join(run_dir, f"explore_{run['tag']}.npz")
    if run["env"] != "maze" or not os.path.isfile(path):
        return None
    sys.path.insert(0, ROOT)
    from envs import maze

    with np.load(path) as saved:
        states, env_steps = saved["states"], int(saved["env_steps"])
    return {"env": run["env"], "algo": run["algo"], "seed": run["seed"], "tag": None, "env_steps": env_steps,
            "metric": "free_cells_visited", "final": round(maze.fraction_free_cells_visited(states[:, :2]), 4),
            "final_episodes": None, "strict_order": None, "curve": [],
            "settings": settings_of(run["flags"]), "data": None,
            "commit": done.get("commit") or run.get("commit"), "sweep": os.path.basename(os.path.dirname(os.path.abspath(run_dir))),
            "run": os.path.basename(run_dir)}


def label_of(result):
    return result["algo"] + (f" {result['tag']}" if result.get("tag") else "")


def plot_sweep(results, path, title):
    """Mean +- std over seeds of each (algo, tag) against env steps; a second panel with the any-order count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    if not any(r["curve"] for r in results):  # Fig. 5: one number per run, bars of mean +- std over seeds
        return plot_bars(results, path, title)
    panels = [("curve", "")]
    if any("curve_any_order" in r for r in results):  # kitchen: strict order (the reward) and any order side by side
        panels = [("curve", "strict order" if all(r["strict_order"] is not False for r in results) else ""),
                  ("curve_any_order", "any order")]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 4.4), squeeze=False)
    for ax, (key, panel_title) in zip(axes[0], panels):
        groups = {}
        for r in results:
            if r.get(key):
                groups.setdefault((r["env"], label_of(r)), []).append(r)
        for (env, label), runs in sorted(groups.items()):
            grid = np.linspace(0, max(r["env_steps"] for r in runs), 200)
            curves = np.array([np.interp(grid, *np.array(r[key], float).T, left=np.nan) for r in runs])
            known = ~np.isnan(curves).all(0)  # before a curve's first episode there is nothing to average
            grid, curves = grid[known], curves[:, known]
            mean, std = np.nanmean(curves, 0), np.nanstd(curves, 0)
            seeds = f"{len(runs)} seeds" if len(runs) > 1 else f"seed {runs[0]['seed']}"
            budget = max(r["env_steps"] for r in runs)  # flat SAC's budget is smaller: say so
            line, = ax.plot(grid, mean, label=f"{label}" + (f" ({env})" if len({e for e, _ in groups}) > 1 else "")
                            + f", {seeds}, {budget / 1000:.0f}k env steps")  # a skill may overrun the budget by < H steps
            low, high = METRIC_RANGE.get(runs[0]["metric"], (-np.inf, np.inf))  # a rate of 1.0 +- 0.3 is not 1.3
            ax.fill_between(grid, np.clip(mean - std, low, high), np.clip(mean + std, low, high), color=line.get_color(),
                            alpha=0.2)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x / 1e6:g}M" if x >= 1e6 else f"{x / 1e3:g}k"))
        ax.set_xlabel("env steps (warm-up included)")
        ax.set_ylabel(results[0]["metric"])
        ax.set_title(panel_title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(textwrap.fill(f"{title}: metric of the training episodes (mean per 1/200 of the budget), mean +- std "
                               "over seeds", width=60 * len(panels)))  # wrapped to the figure's width
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_bars(results, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = {}
    for r in results:
        groups.setdefault(label_of(r), []).append(r["final"])
    fig, ax = plt.subplots(figsize=(1.8 * len(groups) + 2, 4))
    labels = sorted(groups)
    ax.bar(labels, [np.mean(groups[k]) for k in labels], yerr=[np.std(groups[k]) for k in labels], capsize=4)
    ax.set_ylabel(results[0]["metric"])
    ax.set_title(f"{title}: mean +- std over seeds\n({', '.join(f'{k}: {len(groups[k])} seeds' for k in labels)}, {results[0]['env_steps']} env steps each)",
                 fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def aggregate(sweep_dirs, results_json, results_md, figures_dir, points=200, notes_dir="docs/sweep_notes",
              drop_missing=False):
    found = [r for sweep_dir in sweep_dirs
             for r in (run_result(d, points) for d in sorted(glob.glob(os.path.join(sweep_dir, "*")))) if r]
    read_now = {(r["sweep"], r["run"]) for r in found}
    kept = []
    if not drop_missing and os.path.isfile(results_json):  # earlier results whose run directories are gone stay
        with open(results_json) as f:
            kept = [r for r in json.load(f) if (r["sweep"], r["run"]) not in read_now]
    results = sorted(kept + found, key=lambda r: (r["sweep"], r["run"]))
    sweep_dir_of = {os.path.basename(os.path.normpath(d)): d for d in sweep_dirs}
    figures, notes = [], {}
    for name in sorted({r["sweep"] for r in results}):
        for note in (os.path.join(notes_dir, f"{name}.md"), os.path.join(sweep_dir_of.get(name, ""), "NOTE.md")):
            if os.path.isfile(note):
                notes[name] = rebase_links(open(note).read().strip(), os.path.dirname(note), os.path.dirname(results_md))
                break
        path = os.path.join(figures_dir, f"{name}.png")  # drawn from the results' curves, whoever ran them
        plot_sweep([r for r in results if r["sweep"] == name], path, name)
        figures.append(path)
    os.makedirs(os.path.dirname(results_json) or ".", exist_ok=True)
    with open(results_json, "w") as f:
        json.dump(results, f, indent=1)
    write_markdown(results, figures, results_md, notes)
    print(f"{len(found)} finished runs read, {len(kept)} earlier entries kept -> {results_json}, {results_md}"
          + (f", {', '.join(figures)}" if figures else ""))
    return results


def rebase_links(markdown, from_dir, to_dir):
    """A note's relative Markdown links ([text](path), written from the note's folder, where a reader opens it) made
    relative to the folder of the file that quotes it; web links, absolute paths and anchors stay as they are."""
    def rebase(match):
        target = match.group(1)
        if re.match(r"[a-z][a-z0-9+.-]*:|[#/]", target):
            return match.group(0)
        return f"]({os.path.relpath(os.path.join(from_dir, target), to_dir or '.')})"
    return re.sub(r"\]\(([^)\s]+)\)", rebase, markdown)


def reference(env, result):
    """The paper's / authors' number for a result's (env, algo): its variant's (Table 1 tags; the block-stacking sparse
    reward, read from the run's flags) if there is one, else the algo's, else "-"."""
    variant = "sparse" if "--sparse-reward" in result["settings"].split() else result["tag"]
    return REFERENCE.get((env, result["algo"], variant), REFERENCE.get((env, result["algo"]), "-"))


def write_markdown(results, figures, path, notes=None):
    lines = ["# Results", "",
             "Written by `python benchmarks/sweep.py --aggregate` from the tensorboard logs of the finished sweep runs",
             "(`docs/results.json` holds every run with its curve, settings, data and commit). `final`: mean of the",
             "per-episode training metric over the episodes in the last 10 % of a run's env steps; mean +- std over",
             "seeds; per seed, the commit that ran it. Runs: `python benchmarks/sweep.py --preset <name>` (see",
             "docs/sweeps.md); a sweep's note (docs/sweep_notes/<sweep>.md), if any, is quoted under its heading.", ""]
    if not results:
        lines += ["No sweep run has finished yet."]
    groups = {}
    for r in results:
        groups.setdefault((r["sweep"], r["env"], label_of(r)), []).append(r)
    sweep = None
    for (name, env, label), runs in groups.items():
        if name != sweep:
            sweep = name
            lines += ["", f"## {name}", ""]
            if (notes or {}).get(name):
                lines += [notes[name], ""]
            figure = next((f for f in figures if os.path.basename(f) == f"{name}.png"), None)
            if figure:
                lines += [f"![{name}]({os.path.relpath(figure, os.path.dirname(path) or '.')})", ""]
            lines += ["| env | algo | seeds | env steps | metric | final (mean +- std) | per seed | paper / authors | settings |",
                      "|---|---|---:|---:|---|---|---|---|---|"]
        finals = [r["final"] for r in runs if r["final"] is not None]
        summary = f"{np.mean(finals):.3g} +- {np.std(finals):.2g}" if finals else "-"
        if any(r.get("final_any_order") is not None for r in runs):
            summary += f" (any order {np.mean([r['final_any_order'] for r in runs if r.get('final_any_order') is not None]):.3g})"
        lines.append(f"| {env} | {label} | {len(runs)} | {max(r['env_steps'] for r in runs)} | {runs[0]['metric']} | {summary} | "
                     + ", ".join(f"{r['seed']}: {r['final']} ({r.get('commit') or '?'})" for r in runs)
                     + f" | {reference(env, runs[0])} | `{runs[0]['settings']}` |")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------------------------------


def main(args):
    if args.aggregate:
        sweep_dirs = list(args.sweeps) or sorted(glob.glob(os.path.join(args.root, "*")))  # every sweep under --root
        return aggregate([d for d in sweep_dirs if os.path.isdir(d)], args.results_json, args.results_md,
                         args.figures_dir, args.curve_points, args.notes_dir, args.drop_missing)
    if args.preset is None and not args.scripts:
        raise SystemExit("choose --preset (one of " + ", ".join(PRESETS) + ") or a grid with --scripts, or --aggregate")
    runs = preset_runs(args.preset, args.preset_seeds) if args.preset else custom_runs(args.scripts, args.envs, args.seeds)
    runs = apply_overrides(runs, args.set)
    check_runs(runs)
    sweep_dir = os.path.join(args.root, args.name or args.preset or "custom")
    runs = select_runs(runs, args.only, {run.name for run in runs if state_of(sweep_dir, run) == "done"})
    if args.dry_run:
        for run in runs:
            state = state_of(sweep_dir, run)
            waits = f"  # after {', '.join(run.after)}" if run.after else ""
            print(f"[{state}] {shlex.join(command_of(sweep_dir, run, state))}{waits}")
        return runs
    executor = make_executor(args, sweep_dir)
    if args.executor == "slurm":
        return execute_slurm(runs, sweep_dir, executor, args.keep_replay)
    parallel = args.parallel or os.cpu_count() or 1
    start = time.time()
    status = execute_local(runs, sweep_dir, parallel, executor, args.keep_replay)
    counts = {s: sum(v == s for v in status.values()) for s in ("done", "failed", "blocked")}
    print(f"sweep {sweep_dir}: {counts['done']} done, {counts['failed']} failed, {counts['blocked']} blocked; "
          f"{time.time() - start:.0f} s with {parallel} at once")
    if counts["failed"] or counts["blocked"]:
        sys.exit(1)
    return status


if __name__ == "__main__":
    main(tyro.cli(Args))
