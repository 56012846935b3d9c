"""The Makefile's set-up says what it installs before each silent `pip install -q` (issue #22: `make demo` printed
nothing for 2.5 minutes), read from `make -n` (what make would run, without running it)."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("target", [".venv/.installed", ".venv-interop/.installed", ".venv-circuit/.installed"])
def test_every_quiet_install_is_announced_first(target):
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    lines = subprocess.run(["make", "-n", "-B", target], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    lines = lines.splitlines()
    venv = target.split("/")[0]
    installs = [i for i, line in enumerate(lines) if line.startswith(f"{venv}/bin/pip install") and " -q" in line]
    assert installs, f"no quiet pip install into {venv}"
    said = [i for i, line in enumerate(lines) if line.startswith("echo") and "installing" in line and venv + " " in line]
    assert said and said[0] < installs[0], f"{venv}'s quiet install is not announced"
