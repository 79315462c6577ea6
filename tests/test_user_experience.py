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
