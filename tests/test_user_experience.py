"""What a new user meets around the algorithms: quiet imports, early one-line errors, honest start-up lines."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_gymnasium_robotics_adroit_notice_is_silenced():
    """Importing an env that uses gymnasium-robotics prints nothing about Adroit hands; other notices stay."""
    code = ("import envs.maze, gymnasium_robotics\n"
            "from farama_notifications import notifications\n"
            "print(sorted(notifications))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Adroit" not in result.stderr + result.stdout
    assert "gymnasium_robotics" in result.stdout  # only the Adroit message was dropped, not the table


# ---------------------------------------------------------------------------------------------------- output paths


@pytest.fixture
def blocked(tmp_path):
    """A directory path under a regular file: unwritable even for root (chmod would not stop root)."""
    (tmp_path / "a_file").write_text("")
    return tmp_path / "a_file" / "sub"


@pytest.mark.parametrize("script", ["spirl_sac.py", "spirl_vae.py"])
def test_unwritable_checkpoint_fails_at_once_in_one_line(script, blocked):
    target = blocked / "model.pt"
    result = subprocess.run([sys.executable, str(ROOT / script), "--env", "maze", "--save-path", str(target)],
                            cwd=blocked.parent.parent, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"cannot write the checkpoint {target}" in lines[0] and "a_file is a file, not a directory" in lines[0]


def test_runs_directory_that_is_a_file_is_named(tmp_path, monkeypatch):
    import spirl_sac

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").write_text("")  # runs/ cannot be made: tensorboard logs and the default checkpoint go there
    with pytest.raises(spirl_sac.SetupError, match=r"cannot write the checkpoint runs/.*runs is a file, not a directory"):
        spirl_sac.main(spirl_sac.Args(env="maze"))  # fails before it looks for the skill model


def test_a_run_that_stops_at_start_leaves_no_empty_directories(tmp_path, monkeypatch):
    import spirl_sac

    monkeypatch.chdir(tmp_path)
    with pytest.raises(spirl_sac.SetupError, match="skill model checkpoints/skill_model_maze.pt not found"):
        spirl_sac.main(spirl_sac.Args(env="maze"))  # after the output paths were checked
    assert os.listdir(tmp_path) == []


def test_data_generators_check_their_output_first(blocked):
    import envs
    from envs import block_stacking, kitchen_demo, maze

    for generate in (maze.generate_dataset, block_stacking.generate_dataset, kitchen_demo.generate_dataset):
        with pytest.raises(envs.UnwritablePathError, match=f"cannot write the dataset {blocked / 'd.hdf5'}"):
            generate(str(blocked / "d.hdf5"), 1)
    assert not os.path.exists(blocked)


# ---------------------------------------------------------------------------------------------------- spirl_sac.py


def test_zero_budget_is_rejected_not_replaced_by_the_default():
    import spirl_sac

    with pytest.raises(spirl_sac.SetupError, match="^--total-env-steps must be >= 1, got 0$"):
        spirl_sac.main(spirl_sac.Args(env="maze", total_env_steps=0))


def test_short_run_says_it_ends_in_warm_up_and_evaluate_writes_next_to_checkpoint(tmp_path, monkeypatch, capsys):
    import spirl_sac
    from test_spirl_sac import maze_env, write_skill_model

    monkeypatch.chdir(tmp_path)
    write_skill_model("skill.pt", "maze", maze_env())  # H = 5
    common = dict(env="maze", skill_model="skill.pt", batch_size=8, eval_interval=0, eval_episodes=1, save_path="run/sac.pt")
    spirl_sac.main(spirl_sac.Args(total_env_steps=50, learning_starts=20, **common))
    out = capsys.readouterr().out
    assert "--total-env-steps 50 ends inside the warm-up (--learning-starts 20 skills = 100 env steps at H = 5)" in out
    assert "checkpoint -> run/sac.pt" in out and "replay buffer: up to 10 transitions" in out
    assert "elapsed, eta" in out
    assert "final eval (1 episode, sampled skills)" in out
    assert "checkpoint run/sac.pt; tensorboard --logdir runs/" in out
    assert "watch the policy: python spirl_sac.py --evaluate run/sac.pt --capture-video" in out

    runs_before = sorted(os.listdir("runs"))
    result = spirl_sac.main(spirl_sac.Args(evaluate="run/sac.pt", eval_episodes=1, capture_video=True))
    out = capsys.readouterr().out
    assert "1 episode," in out
    assert "wrote run/sac_evaluate.npz (each episode's states) and run/sac_evaluate_0.gif" in out
    assert result["path"] == "run/sac_evaluate.npz" and os.path.isfile("run/sac_evaluate_0.gif")
    assert sorted(os.listdir("runs")) == runs_before and not os.path.exists("videos")  # no new run directory


# ---------------------------------------------------------------------------------------------------- baselines


def run_baseline(name, argv, monkeypatch):
    import runpy

    monkeypatch.setattr(sys, "argv", [f"{name}.py", *argv])
    runpy.run_path(str(ROOT / "baselines" / f"{name}.py"), run_name="__main__")


@pytest.mark.parametrize("script", ["sac", "bc_sac", "flat_prior", "ssp"])
def test_baselines_reject_empty_budget_and_unwritable_runs(script, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="^error: --total-timesteps must be >= 1, got 0$"):
        run_baseline(script, ["--env", "maze", "--total-timesteps", "0"], monkeypatch)
    (tmp_path / "runs").write_text("")
    with pytest.raises(SystemExit, match=r"^error: cannot write the checkpoint runs/.*runs is a file, not a directory$"):
        run_baseline(script, ["--env", "maze", "--total-timesteps", "10"], monkeypatch)


def test_spirl_vae_rejects_an_empty_budget(tmp_path, monkeypatch):
    import runpy

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["spirl_vae.py", "--env", "maze", "--total-steps", "0"])
    with pytest.raises(SystemExit, match="^error: --total-steps must be >= 1, got 0$"):
        runpy.run_path(str(ROOT / "spirl_vae.py"), run_name="__main__")
    assert os.listdir(tmp_path) == []
