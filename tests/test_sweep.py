"""Tests of benchmarks/sweep.py: the presets' runs and budgets, and a two-run grid through submitit's LocalExecutor
end to end (run, skip on rerun, resume of an interrupted run, aggregation into results.json and a PNG); and of
benchmarks/lever_trials.py, which bins lever trials' tensorboard curves."""

import importlib.util
import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import envs  # noqa: E402
import sweep  # noqa: E402


def flag(run, name):
    return run.flags[run.flags.index(name) + 1]


def test_presets_hold_the_papers_runs_and_budgets():
    maze = sweep.preset_runs("fig4-maze")
    spirl = [r for r in maze if r.algo == "spirl"]
    assert sorted(r.seed for r in spirl) == [1, 2, 3] and all(int(flag(r, "--total-env-steps")) >= 1_000_000 for r in spirl)
    baselines = [r for r in maze if r.script.startswith("baselines/")]
    assert sorted(r.algo for r in baselines) == ["bc_sac", "flat_prior", "sac", "ssp", "ssp_prior_init"]
    assert all(int(flag(r, "--total-timesteps")) >= 250_000 for r in baselines)
    model = next(r for r in maze if r.algo == "skills")
    for run in spirl + [r for r in baselines if r.algo.startswith("ssp")]:  # skill users wait on the skill model
        assert run.after == [model.name] and f"{{dir:{model.name}}}/skill_model.pt" in run.flags

    fig6 = sweep.preset_runs("fig6")
    models = {(int(flag(r, "--skill-horizon")), int(flag(r, "--latent-dim"))) for r in fig6 if r.algo == "skills"}
    assert models == {(3, 10), (10, 10), (30, 10), (10, 5), (10, 30)}
    assert all(int(flag(r, "--total-env-steps")) >= 300_000 for r in fig6 if r.algo == "spirl")
    assert len({flag(r, "--skill-model") for r in fig6 if r.algo == "spirl"}) == 5  # each its own skill model

    for preset, env in (("fig4-kitchen", "kitchen"), ("fig4-blocks", "block_stacking")):
        runs = sweep.preset_runs(preset)
        for algo in ("spirl", "spirl_cl"):
            rl = [r for r in runs if r.algo == algo]
            assert sorted(r.seed for r in rl) == [1, 2] and all(r.env == env for r in rl)
            assert all(int(flag(r, "--total-env-steps")) >= 1_000_000 and flag(r, "--delta") == "5" for r in rl)
        closed = next(r for r in runs if r.name == next(r for r in runs if r.algo == "spirl_cl").after[0])
        assert "--state-conditioned-decoder" in closed.flags
        assert {r.algo for r in runs if r.script.startswith("baselines/")} == {"sac", "bc_sac", "flat_prior", "ssp", "ssp_prior_init"}

    third = [r for r in sweep.preset_runs("fig4-kitchen", seeds=(3,)) if r.algo in ("spirl", "spirl_cl")]
    assert sorted((r.algo, r.seed, flag(r, "--seed")) for r in third) == [("spirl", 3, "3"), ("spirl_cl", 3, "3")]
    assert [r.name for r in third] == ["spirl__kitchen__3", "spirl_cl__kitchen__3"]
    second = [r for r in sweep.preset_runs("table1", seeds=(2,)) if r.algo == "spirl"]
    assert [(r.name, flag(r, "--seed")) for r in second] == [(f"spirl__block_stacking__2__random{p}", "2") for p in (0, 50, 75)]
    with pytest.raises(SystemExit, match="--preset-seeds applies to the fig4 and table1 presets"):
        sweep.preset_runs("fig5", seeds=(3,))

    table1 = sweep.preset_runs("table1")
    assert sorted(float(flag(r, "--random-fraction")) for r in table1 if r.algo == "data") == [0.0, 0.5, 0.75]
    assert all(int(flag(r, "--total-env-steps")) >= 500_000 for r in table1 if r.algo == "spirl")
    assert len(sweep.preset_runs("fig5")) == 1 + 9  # a skill model, then 3 samplers x 3 seeds


def test_dry_run_prints_each_command_with_its_outputs_in_the_run_directory(tmp_path, capsys):
    sweep.main(sweep.Args(preset="fig4-maze", dry_run=True, root=str(tmp_path)))
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(sweep.preset_runs("fig4-maze")) and all(line.startswith("[start] ") for line in lines)
    spirl_line = next(line for line in lines if "spirl_sac.py" in line and "--seed 2" in line)
    assert f"--run-dir {tmp_path}/fig4-maze/spirl__maze__2" in spirl_line
    assert f"--skill-model {tmp_path}/fig4-maze/skills__maze__1/skill_model.pt" in spirl_line
    import tyro

    args = tyro.cli(sweep.Args, args=["--preset", "fig4-maze", "--set", "spirl_sac.py=--delta 2", "--set", "baselines/*.py=--seed 9"])
    runs = sweep.apply_overrides(sweep.preset_runs(args.preset), args.set)  # a repeated --set adds, it does not replace
    assert all(r.flags[-2:] == (["--delta", "2"] if r.algo == "spirl" else ["--seed", "9"]) for r in runs if r.algo != "skills")
    with pytest.raises(SystemExit, match="PATTERN=FLAGS"):
        sweep.main(sweep.Args(preset="fig6", dry_run=True, root=str(tmp_path), set=("--total-env-steps 5",)))


def write_skill_model(path, env):
    """An untrained skill model in spirl_vae.py's checkpoint format, for the env's dimensions (H = 5)."""
    import spirl_vae

    state_dim, action_dim = env.observation_space["state"].shape[0], env.action_space.shape[0]
    model = spirl_vae.SkillModel(state_dim, action_dim, 4, hidden_dim=16, prior_layers=3)
    torch.save({"format": "spirl-skill-model-v1", "env": "kitchen", "args": {}, "prior_input": "state",
                "state_dim": state_dim, "image_shape": None, "action_dim": action_dim, "skill_horizon": 5,
                "latent_dim": 4, "hidden_dim": 16, "prior_layers": 3, "state_conditioned_decoder": False,
                "state_mean": np.zeros(state_dim, np.float32), "state_std": np.full(state_dim, 5.0, np.float32),
                "action_low": env.action_space.low, "action_high": env.action_space.high, "data_source": "test data",
                "model": model.state_dict(), "step": 0}, path)


def test_two_run_grid_runs_skips_resumes_and_aggregates(tmp_path, monkeypatch, capsys):
    """spirl_sac.py and baselines/sac.py on the kitchen (280-step episodes), tiny budgets, two at once."""
    try:
        env = envs.make_env("kitchen", seed=0)
    except ModuleNotFoundError:
        pytest.skip("kitchen env needs gymnasium-robotics")
    write_skill_model(tmp_path / "skills.pt", env)
    env.close()
    monkeypatch.chdir(tmp_path)
    grid = dict(scripts=("spirl_sac.py", "baselines/sac.py"), envs=("kitchen",), seeds=(1,), root="sweeps", parallel=2,
                set=(f"spirl_sac.py=--total-env-steps 280 --skill-model {tmp_path / 'skills.pt'} --learning-starts 10 "
                     "--batch-size 16 --critic-hidden-dim 32 --critic-layers 1 --eval-interval 0 --eval-episodes 1",
                     "baselines/sac.py=--total-timesteps 560 --learning-starts 100 --batch-size 16 --hidden-dim 32 "
                     "--policy-layers 1 --critic-layers 1 --log-interval 280 --checkpoint-interval 280"))
    sac_dir, spirl_dir = tmp_path / "sweeps" / "custom" / "sac__kitchen__1", tmp_path / "sweeps" / "custom" / "spirl__kitchen__1"

    # an interrupted baseline run: the sweep's own command, stopped after its first episode (checkpoint, no done.json)
    sac_run = next(r for r in sweep.apply_overrides(sweep.custom_runs(grid["scripts"], grid["envs"], grid["seeds"]), grid["set"])
                   if r.algo == "sac")
    command = sweep.command_of("sweeps/custom", sac_run, "start")
    command[command.index("--total-timesteps") + 1] = "280"
    subprocess.run(command, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert (sac_dir / "agent.pt").is_file() and not (sac_dir / "done.json").exists()

    sweep.main(sweep.Args(**grid))
    out = capsys.readouterr().out
    assert "resume sac__kitchen__1" in out and "start spirl__kitchen__1" in out and "2 done, 0 failed" in out
    assert "resumed" in (sac_dir / "log.txt").read_text() and "at env step 280" in (sac_dir / "log.txt").read_text()
    assert torch.load(sac_dir / "agent.pt", weights_only=False)["global_step"] == 560
    assert (spirl_dir / "spirl_sac.pt").is_file() and any(p.name.startswith("events.out") for p in spirl_dir.iterdir())
    assert not list(sac_dir.glob("*.replay.npz"))  # finished runs drop their replay buffers
    stamps = {p: p.stat().st_mtime for p in (sac_dir / "agent.pt", spirl_dir / "spirl_sac.pt")}

    sweep.main(sweep.Args(**grid))  # everything done: skipped
    out = capsys.readouterr().out
    assert "skip sac__kitchen__1: done" in out and "skip spirl__kitchen__1: done" in out
    assert stamps == {p: p.stat().st_mtime for p in stamps}

    (tmp_path / "sweeps" / "custom" / "NOTE.md").write_text("Run with the test's settings.\n")
    sweep.main(sweep.Args(aggregate=True, sweeps=("sweeps/custom",), results_json="docs/results.json",
                          results_md="docs/results.md", figures_dir="docs/figures"))
    results = json.loads((tmp_path / "docs" / "results.json").read_text())
    assert sorted(r["algo"] for r in results) == ["sac", "spirl"]
    for r in results:
        assert r["env"] == "kitchen" and r["metric"] == "subtasks_completed" and r["strict_order"] is True
        assert r["env_steps"] == (560 if r["algo"] == "sac" else 280) and r["seed"] == 1
        assert r["final"] is not None and 1 <= len(r["curve"]) <= 200 and r["curve"][-1][0] <= r["env_steps"]
        assert "--total-" in r["settings"] and r["commit"]
    assert next(r for r in results if r["algo"] == "spirl")["data"] == "test data"
    assert len(next(r for r in results if r["algo"] == "sac")["curve"]) == 2  # both episodes, the resumed one included
    assert (tmp_path / "docs" / "figures" / "custom.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (tmp_path / "docs" / "results.md").read_text()
    assert "| kitchen | spirl | 1 | 280 | subtasks_completed |" in markdown
    assert "## custom\n\nRun with the test's settings.\n" in markdown  # the sweep's note under its heading
    spirl = next(r for r in results if r["algo"] == "spirl")
    assert f"1: {spirl['final']} ({spirl['commit']})" in markdown  # each seed with the commit that ran it


def test_binned_curve_and_final_window():
    episodes = [(100 * k, float(k % 2)) for k in range(1, 11)]  # 10 episodes up to step 1000
    assert sweep.binned_curve(episodes, 1000, 5) == [[200, 0.5], [400, 0.5], [600, 0.5], [800, 0.5], [1000, 0.5]]
    assert len(sweep.binned_curve(episodes, 1000, 200)) == 10


def test_slurm_submission_with_dependencies(tmp_path, monkeypatch, capsys):
    """On Slurm every run is submitted at once (fake sbatch here); a run that reads a skill model waits on it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text('#!/bin/bash\nn=$(ls "$JOBS" | wc -l)\ncp "${@: -1}" "$JOBS/$((n + 1)).sh"\n'
                                    'echo "Submitted batch job $((100 + n + 1))"\n')
    (bin_dir / "srun").write_text("#!/bin/bash\nexit 0\n")
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    (tmp_path / "jobs").mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("JOBS", str(tmp_path / "jobs"))
    monkeypatch.chdir(tmp_path)
    sweep.main(sweep.Args(preset="fig6", executor="slurm", slurm_partition="cpu", slurm_time_min=600, root="sweeps",
                          slurm_additional=("account=proj",)))
    assert "submitted spirl__block_stacking__1__H3_Z10: job 102" in capsys.readouterr().out
    first, second = ((tmp_path / "jobs" / f"{k}.sh").read_text() for k in (1, 2))
    for line in ("#SBATCH --partition=cpu", "#SBATCH --time=600", "#SBATCH --cpus-per-task=1", "#SBATCH --account=proj"):
        assert line in first and line in second
    assert "--dependency" not in first and "#SBATCH --dependency=afterok:101" in second
    assert "#SBATCH --job-name=skills__block_stacking__1__H3_Z10" in first


def test_fig5_exploration_runs_aggregate_to_coverage(tmp_path):
    """A finished --explore run's entry: the fraction of free maze cells its states visited; the figure is bars."""
    from envs import maze

    states = np.random.default_rng(0).uniform(-3, 3, size=(500, 4)).astype(np.float32)
    for seed in (1, 2):
        run_dir = tmp_path / "fig5" / f"explore__maze__{seed}__prior"
        run_dir.mkdir(parents=True)
        np.savez(run_dir / "explore_prior.npz", states=states * seed, episode_starts=np.array([0]), env="maze",
                 mode="prior", env_steps=500)
        (run_dir / "run.json").write_text(json.dumps({"script": "spirl_sac.py", "flags": ["--explore", "prior"], "env": "maze",
                                                      "algo": "explore_prior", "seed": seed, "tag": "prior"}))
        (run_dir / "done.json").write_text(json.dumps({"commit": "abc"}))
    results = sweep.aggregate([str(tmp_path / "fig5")], str(tmp_path / "r.json"), str(tmp_path / "r.md"), str(tmp_path / "fig"))
    assert [r["final"] for r in results] == [round(maze.fraction_free_cells_visited(states[:, :2] * s), 4) for s in (1, 2)]
    assert all(r["metric"] == "free_cells_visited" and r["env_steps"] == 500 for r in results)
    assert (tmp_path / "fig" / "fig5.png").read_bytes()[:4] == b"\x89PNG"


def test_settings_are_the_flags_as_the_script_saw_them():
    flags = ["--env", "maze", "--total-env-steps", "1000000", "--prior-init", "--skill-model", "{dir:skills__maze__1}/m.pt",
             "--total-env-steps", "2000"]  # a --set override repeats a flag: the last value counts
    assert sweep.settings_of(flags) == "--env maze --total-env-steps 2000 --prior-init --skill-model '{skills__maze__1}/m.pt'"


def test_only_selects_runs_with_the_runs_they_read():
    runs = sweep.preset_runs("fig4-kitchen")
    chosen = sweep.select_runs(runs, ("spirl_cl__kitchen__1",))
    # the closed-loop RL run, its skill model, and the open-loop skill model that one waits on (one data writer)
    assert [r.name for r in chosen] == ["skills__kitchen__1", "skills__kitchen__1__cl", "spirl_cl__kitchen__1"]
    assert sweep.select_runs(runs, ()) == runs
    assert {r.algo for r in sweep.select_runs(runs, ("sac__*",))} == {"sac"}  # glob; SAC reads no skill model
    with pytest.raises(SystemExit, match="matches no run"):
        sweep.select_runs(runs, ("nothing*",))
    # a finished skill model is kept for its RL run, but the one it was ordered after is not brought back
    chosen = sweep.select_runs(runs, ("spirl_cl__kitchen__1",), done={"skills__kitchen__1__cl"})
    assert [r.name for r in chosen] == ["skills__kitchen__1__cl", "spirl_cl__kitchen__1"]


def test_lever_trials_draws_the_seeds_of_one_setting_in_its_colour():
    """Runs labelled "<setting>, seed <n>" share the setting's colour and differ in line style; other labels each
    get a colour of their own."""
    spec = importlib.util.spec_from_file_location("lever_trials", os.path.join(ROOT, "benchmarks", "lever_trials.py"))
    lever_trials = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lever_trials)
    labels = ["SPiRL, seed 1", "SPiRL, seed 2", "SSP", "SPiRL, seed 3", "seed 4", "SSP, seed 1"]
    assert lever_trials.line_styles(labels) == [(0, "-"), (0, "--"), (1, "-"), (0, ":"), (2, "-"), (1, "--")]


def test_lever_trials_bins_each_runs_curves_a_resume_dropping_the_stopped_steps(tmp_path, monkeypatch):
    """benchmarks/lever_trials.py: per run, the mean of each tag's scalars per bin of env steps; a run resumed from
    its step-40 checkpoint (SummaryWriter purge_step, as the scripts resume) drops every step the stopped process
    logged after 40, also those it does not log again; the figure is drawn next to the JSON."""
    import time

    from torch.utils.tensorboard import SummaryWriter

    for run, offset in (("a", 0.0), ("b", 10.0)):
        writer = SummaryWriter(str(tmp_path / run))
        for step in (0, 40, 60, 90, 120):
            writer.add_scalar("losses/alpha", offset + step, step)
        writer.close()
    time.sleep(1.1)  # a later file (tensorboard names event files by the second)
    writer = SummaryWriter(str(tmp_path / "b"), purge_step=41)  # "b" resumed from step 40
    writer.add_scalar("losses/alpha", 1000.0, 60)
    writer.close()
    monkeypatch.setattr(sys, "argv", ["lever_trials.py", "--runs", f"A={tmp_path / 'a'}", f"B={tmp_path / 'b'}",
                                      "--tags", "losses/alpha", "--bin", "50", "--json-out", str(tmp_path / "out.json")])
    runpy.run_path(os.path.join(ROOT, "benchmarks", "lever_trials.py"), run_name="__main__")
    data = json.load(open(tmp_path / "out.json"))
    a, b = (run["curves"]["losses/alpha"] for run in data["runs"])
    assert a == [[0, 20.0], [50, 75.0], [100, 120.0]]
    assert b == [[0, 30.0], [50, 1000.0]]  # 90 and 120 belonged to the discarded continuation
    assert os.path.isfile(tmp_path / "out.png")

    # a run whose directory is gone, from the JSON that binned it, next to a run read now
    monkeypatch.setattr(sys, "argv", ["lever_trials.py", "--runs", f"B then={tmp_path / 'out.json'}#B", f"A={tmp_path / 'a'}",
                                      "--tags", "losses/alpha", "--bin", "50", "--json-out", str(tmp_path / "again.json")])
    runpy.run_path(os.path.join(ROOT, "benchmarks", "lever_trials.py"), run_name="__main__")
    again = json.load(open(tmp_path / "again.json"))
    assert [(r["label"], r["curves"]["losses/alpha"]) for r in again["runs"]] == [("B then", b), ("A", a)]
    # --max-env-steps: a longer run over a shorter budget keeps the bins that start before it
    monkeypatch.setattr(sys, "argv", ["lever_trials.py", "--runs", f"A={tmp_path / 'a'}", "--tags", "losses/alpha",
                                      "--bin", "50", "--max-env-steps", "100", "--json-out", str(tmp_path / "cut.json"),
                                      "--reference", "paper=3.5"])
    runpy.run_path(os.path.join(ROOT, "benchmarks", "lever_trials.py"), run_name="__main__")
    cut = json.load(open(tmp_path / "cut.json"))
    assert cut["runs"][0]["curves"]["losses/alpha"] == a[:2]
    assert cut["reference"] == [{"label": "paper", "value": 3.5}]  # --reference: a level drawn as a dashed line
    monkeypatch.setattr(sys, "argv", ["lever_trials.py", "--runs", f"A={tmp_path / 'a'}", "--json-out",
                                      str(tmp_path / "bad.json"), "--reference", "paper"])
    with pytest.raises(SystemExit, match="label=value"):
        runpy.run_path(os.path.join(ROOT, "benchmarks", "lever_trials.py"), run_name="__main__")
    monkeypatch.setattr(sys, "argv", ["lever_trials.py", "--runs", f"C={tmp_path / 'out.json'}#C", "--tags", "losses/alpha",
                                      "--bin", "50", "--json-out", str(tmp_path / "bad.json")])
    with pytest.raises(SystemExit, match="has no run labelled 'C': it has 'A', 'B'"):
        runpy.run_path(os.path.join(ROOT, "benchmarks", "lever_trials.py"), run_name="__main__")
    # a tag the earlier JSON did not bin: an empty curve for that run (its panel shows the others); another bin: refused
    monkeypatch.setattr(sys, "argv", ["lever_trials.py", "--runs", f"B then={tmp_path / 'out.json'}#B", f"A={tmp_path / 'a'}",
                                      "--tags", "losses/alpha", "charts/episodic_return", "--bin", "50",
                                      "--json-out", str(tmp_path / "more.json")])
    runpy.run_path(os.path.join(ROOT, "benchmarks", "lever_trials.py"), run_name="__main__")
    more = json.load(open(tmp_path / "more.json"))
    assert more["runs"][0]["curves"] == {"losses/alpha": b, "charts/episodic_return": []}
    monkeypatch.setattr(sys, "argv", ["lever_trials.py", "--runs", f"B then={tmp_path / 'out.json'}#B", "--tags",
                                      "losses/alpha", "--bin", "100", "--json-out", str(tmp_path / "bad.json")])
    with pytest.raises(SystemExit, match="binned per 50 env steps; pass --bin 50"):
        runpy.run_path(os.path.join(ROOT, "benchmarks", "lever_trials.py"), run_name="__main__")
    # an aggregated run of docs/results.json (`sweep/run`): its metric's curve re-binned, no losses
    results = [{"sweep": "s", "run": "r1", "metric": "blocks_stacked", "curve": [[10, 1.0], [30, 2.0], [60, 4.0]]}]
    json.dump(results, open(tmp_path / "results.json", "w"))
    monkeypatch.setattr(sys, "argv", ["lever_trials.py", "--runs", f"R={tmp_path / 'results.json'}#s/r1", "--tags",
                                      "charts/blocks_stacked", "losses/alpha", "--bin", "50",
                                      "--json-out", str(tmp_path / "res.json")])
    runpy.run_path(os.path.join(ROOT, "benchmarks", "lever_trials.py"), run_name="__main__")
    assert json.load(open(tmp_path / "res.json"))["runs"][0]["curves"] == {
        "charts/blocks_stacked": [[0, 1.5], [50, 4.0]], "losses/alpha": []}
    monkeypatch.setattr(sys, "argv", ["lever_trials.py", "--runs", f"R={tmp_path / 'results.json'}#s/r2", "--tags",
                                      "charts/blocks_stacked", "--bin", "50", "--json-out", str(tmp_path / "bad.json")])
    with pytest.raises(SystemExit, match="has no run 's/r2'"):
        runpy.run_path(os.path.join(ROOT, "benchmarks", "lever_trials.py"), run_name="__main__")


def test_frame_strip_takes_evenly_spaced_frames_first_to_last(tmp_path, monkeypatch):
    """benchmarks/frame_strip.py: 9 of a 25-frame GIF are frames 0, 3, ..., 24, pasted left to right at the asked
    height; a missing GIF names the command that writes one."""
    from PIL import Image

    colours = [(10 * i, 255 - 10 * i, 0) for i in range(25)]
    frames = [Image.new("RGB", (30, 20), colour) for colour in colours]
    frames[0].save(tmp_path / "eval.gif", save_all=True, append_images=frames[1:], duration=40, loop=0)
    monkeypatch.setattr(sys, "argv", ["frame_strip.py", "--gif", str(tmp_path / "eval.gif"), "--count", "9",
                                      "--height", "40", "--out", str(tmp_path / "strip.png")])
    runpy.run_path(os.path.join(ROOT, "benchmarks", "frame_strip.py"), run_name="__main__")
    image = Image.open(tmp_path / "strip.png").convert("RGB")
    assert image.size == (9 * 60, 40)
    for slot, index in enumerate(range(0, 25, 3)):
        assert all(abs(a - b) <= 8 for a, b in zip(image.getpixel((slot * 60 + 30, 20)), colours[index]))
    monkeypatch.setattr(sys, "argv", ["frame_strip.py", "--gif", str(tmp_path / "none.gif"), "--out", "x.png"])
    with pytest.raises(SystemExit, match="--capture-video"):
        runpy.run_path(os.path.join(ROOT, "benchmarks", "frame_strip.py"), run_name="__main__")


def test_std_bands_stay_inside_the_metrics_range(tmp_path, monkeypatch):
    """Three seeds at success 1, 1, 0 have mean 0.67 +- 0.47: the band is drawn from 0.2 to 1.0, not to 1.14; counts
    stop at 0 (blocks stacked 0, 0, 1: from 0, not -0.14); a metric of unknown range keeps mean +- std."""
    import matplotlib.axes

    bands, fill_between = [], matplotlib.axes.Axes.fill_between

    def record(self, x, low, high, **kwargs):
        bands.append((np.asarray(low).min(), np.asarray(high).max()))
        return fill_between(self, x, low, high, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "fill_between", record)
    for metric, values, expected in (("success", (1.0, 1.0, 0.0), (2 / 3 - 0.471, 1.0)),
                                     ("blocks_stacked", (0.0, 0.0, 1.0), (0.0, 1 / 3 + 0.471)),
                                     ("return", (1.0, 1.0, 0.0), (2 / 3 - 0.471, 2 / 3 + 0.471))):
        runs = [{"env": "maze", "algo": "spirl", "tag": None, "seed": seed, "env_steps": 100, "metric": metric,
                 "strict_order": None, "curve": [[0, value], [100, value]]} for seed, value in enumerate(values)]
        sweep.plot_sweep(runs, str(tmp_path / f"{metric}.png"), metric)
        np.testing.assert_allclose(bands.pop(), expected, atol=1e-3)


def test_aggregate_keeps_earlier_results_whose_runs_are_gone(tmp_path):
    """runs/ is not tracked: a new checkout aggregating its own runs must keep the entries of the runs it lacks
    (their figure redrawn from the stored curves, their note from the tracked notes directory), replace the entry of
    a run it reads again, and drop the rest only when asked."""
    from envs import maze

    states = np.random.default_rng(0).uniform(-3, 3, size=(500, 4)).astype(np.float32)
    run_dir = tmp_path / "fig5" / "explore__maze__1__prior"
    run_dir.mkdir(parents=True)
    np.savez(run_dir / "explore_prior.npz", states=states, episode_starts=np.array([0]), env="maze", mode="prior",
             env_steps=500)
    (run_dir / "run.json").write_text(json.dumps({"script": "spirl_sac.py", "flags": ["--explore", "prior"], "env": "maze",
                                                  "algo": "explore_prior", "seed": 1, "tag": "prior"}))
    (run_dir / "done.json").write_text(json.dumps({"commit": "new"}))
    gone = {"env": "kitchen", "algo": "spirl", "seed": 1, "tag": None, "env_steps": 1000, "metric": "subtasks_completed",
            "final": 2.5, "final_episodes": 3, "strict_order": True, "curve": [[500, 1.0], [1000, 2.5]],
            "settings": "--env kitchen", "data": "d", "commit": "old", "sweep": "old-sweep", "run": "spirl__kitchen__1"}
    stale = {**gone, "env": "maze", "algo": "explore_prior", "metric": "free_cells_visited", "final": 0.0, "curve": [],
             "sweep": "fig5", "run": "explore__maze__1__prior"}  # the same run, aggregated before it was rerun
    results_json = tmp_path / "r.json"
    results_json.write_text(json.dumps([gone, stale]))
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "old-sweep.md").write_text(  # links written from the notes' folder, as a reader opens them there
        "Ran on another machine ([curves](../curves.png), [paper](https://arxiv.org/abs/2010.11944), [table](#fig5)).\n")
    paths = [str(results_json), str(tmp_path / "r.md"), str(tmp_path / "fig")]

    results = sweep.aggregate([str(tmp_path / "fig5")], *paths, notes_dir=str(tmp_path / "notes"))
    assert [(r["sweep"], r["commit"]) for r in results] == [("fig5", "new"), ("old-sweep", "old")]
    assert results[0]["final"] == round(maze.fraction_free_cells_visited(states[:, :2]), 4)
    assert json.loads(results_json.read_text()) == results
    assert (tmp_path / "fig" / "old-sweep.png").read_bytes()[:4] == b"\x89PNG"
    # quoted in r.md, the note's relative link is rebased onto r.md's folder; web links and anchors are left alone
    assert ("## old-sweep\n\nRan on another machine ([curves](curves.png), [paper](https://arxiv.org/abs/2010.11944), "
            "[table](#fig5)).\n") in (tmp_path / "r.md").read_text()

    assert sweep.aggregate([str(tmp_path / "fig5")], *paths) == results  # aggregating again changes nothing
    assert [r["sweep"] for r in sweep.aggregate([str(tmp_path / "fig5")], *paths, drop_missing=True)] == ["fig5"]


def test_table1_reads_each_variant_and_cuts_a_longer_same_run_at_the_budget(tmp_path):
    """benchmarks/table1.py: a variant's finished runs give its row, every seed of them; a missing 0 % run is read from
    the named longer run of its seed as the mean of its curve's bins over the last 10 % of the table's budget, not its
    own final; a run shorter than the budget is refused; several seeds show their mean ± std and each seed."""
    import table1

    def entry(sweep_name, run, final, env_steps, curve):
        return {"sweep": sweep_name, "run": run, "final": final, "env_steps": env_steps, "curve": curve, "commit": "c"}

    long_curve = [[step, 1.0 if step < 1000 else 3.0 if step == 1000 else 5.0] for step in range(100, 2001, 100)]
    results = [entry("t1", f"spirl__block_stacking__1__random{p}", value, 1000, []) for p, value in ((0, 3.0), (50, 2.0), (75, 1.0))]
    results += [entry("t1-ln", "spirl__block_stacking__1__random75", 0.5, 1000, []),
                entry("t1-ln", "spirl__block_stacking__2__random75", 0.25, 1000, []),
                entry("t1-ln", "spirl__block_stacking__3__random75", 9.0, 500, []),  # short of the budget: left out
                entry("long", "spirl__block_stacking__1", 4.9, 2000, long_curve),
                entry("long", "spirl__block_stacking__2", 4.9, 2000, [[1000, 1.0]])]
    rows = table1.table(results, ["paper=t1", "ln=t1-ln"], ["t1-ln/random0=long/spirl__block_stacking__1",
                                                            "t1-ln/random0=long/spirl__block_stacking__2"], budget=1000)
    assert {p: [v for _, v, _ in e] for p, e in rows["paper"].items()} == {0: [3.0], 50: [2.0], 75: [1.0]}
    assert [(seed, v) for seed, v, _ in rows["ln"][75]] == [(1, 0.5), (2, 0.25)] and 50 not in rows["ln"]
    assert [(seed, v) for seed, v, _ in rows["ln"][0]] == [(1, pytest.approx(3.0)), (2, 1.0)]  # (900, 1 000] only
    table1.write(rows, 1000, str(tmp_path / "t.md"), str(tmp_path / "t.png"))
    text = (tmp_path / "t.md").read_text()
    assert "| ours, paper | 3.00 | 2.00 | 1.00 |" in text
    assert "| ours, ln | 2.00 ± 1.00 (3.00, 1.00) | - | 0.38 ± 0.12 (0.50, 0.25) |" in text
    assert (tmp_path / "t.png").stat().st_size > 0
    with pytest.raises(SystemExit, match="fewer than"):
        table1.cut_final(results[-2], 5000)


def test_lever_trials_draws_each_run_in_one_colour_in_every_panel(tmp_path, monkeypatch):
    """benchmarks/lever_trials.py's figure: a run that lacks a tag (e.g. the KL summed, in a --kl-reduction mean run) leaves
    that panel without its line, and every other run keeps the colour it has in the other panels."""
    import importlib.util

    import matplotlib.pyplot as plt

    spec = importlib.util.spec_from_file_location("lever_trials", os.path.join(ROOT, "benchmarks", "lever_trials.py"))
    lever_trials = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lever_trials)
    data = {"bin": 50, "tags": ["charts/x", "losses/y"], "runs": [
        {"label": "A", "curves": {"charts/x": [[0, 1.0]], "losses/y": []}},
        {"label": "B", "curves": {"charts/x": [[0, 2.0]], "losses/y": [[0, 3.0]]}}]}
    made = []
    subplots = plt.subplots
    monkeypatch.setattr(plt, "subplots", lambda *a, **k: made.append(subplots(*a, **k)) or made[-1])
    lever_trials.draw(data, str(tmp_path / "f.png"))
    x_panel, y_panel = made[0][1][0]
    colours = {line.get_label(): line.get_color() for line in x_panel.get_lines()}
    assert [line.get_label() for line in y_panel.get_lines()] == ["B"]
    assert y_panel.get_lines()[0].get_color() == colours["B"] != colours["A"]


def test_reference_numbers_follow_the_block_stacking_reward_of_the_run():
    """results.md's paper / authors column: a block-stacking run with --sparse-reward is set against the authors' sparse
    plot (≈1.9 open loop, ≈3.4 closed loop); a closed-loop run on the paper's dense reward has no number of its own."""
    def result(algo, settings, tag=None):
        return {"algo": algo, "tag": tag, "settings": settings}

    base = "--env block_stacking --seed 1 --delta 5"
    assert sweep.reference("block_stacking", result("spirl", base)) == "≈3.5 (paper)"
    assert "1.9" in sweep.reference("block_stacking", result("spirl", base + " --sparse-reward"))
    assert "3.4" in sweep.reference("block_stacking", result("spirl_cl", base + " --sparse-reward"))
    assert sweep.reference("block_stacking", result("spirl_cl", base)).startswith("none on this reward")
    assert sweep.reference("block_stacking", result("spirl", base, "random50")) == "2.0 (paper, Table 1)"
    assert sweep.reference("maze", result("ssp_prior_init", "--env maze")) == "-"
