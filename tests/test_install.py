"""Installed outside the repository: a real wheel of arscale, installed into a fresh virtual environment and run
from another folder, finds its presets and plans a study. (The fresh environment takes the dependencies from this
one's site-packages, which a plain `pip install` would download: the machine has no network to spare for torch.)"""

import subprocess
import sys
import sysconfig

from tests.support.cli import ROOT


def test_the_wheel_runs_its_own_presets_from_any_folder(tmp_path):
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist", ROOT],
                   check=True, cwd=tmp_path)
    wheel = next((tmp_path / "dist").glob("arscale-*.whl"))
    fresh = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", fresh], check=True)
    python = fresh / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (tmp_path / site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([*pip, "--python", python, "install", "-q", "--no-deps", "--no-index", wheel], check=True)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PATH": f"{fresh / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)}

    def arscale(*args):
        return subprocess.run([fresh / "bin" / "arscale", *args], capture_output=True, text=True, cwd=elsewhere,
                              env=env, timeout=300)

    where = subprocess.run([python, "-c", "import pipelines; print(pipelines.__file__)"], capture_output=True,
                           text=True, cwd=elsewhere, env=env).stdout
    assert where.startswith(str(fresh)), where  # the wheel's code, not this checkout's
    version = arscale("--version")
    assert version.returncode == 0 and version.stdout.strip() == "arscale 0.1.0"
    listed = arscale("presets")
    assert listed.returncode == 0 and "text-tiny" in listed.stdout and "text-default" in listed.stdout
    assert str(fresh) in listed.stdout
    plan = arscale("study", "run", "text-tiny", "--out", "s", "--dry-run")
    assert plan.returncode == 0, plan.stderr
    assert "train-transformer-" in plan.stdout and "report-" in plan.stdout
