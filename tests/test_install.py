"""Installed outside the repository: a real wheel of arscale, installed into a fresh virtual environment and run
from another folder, finds its presets, plans a study and runs it end to end. (The fresh environment takes the
dependencies from this one's site-packages, which a plain `pip install` would download: the machine has no network
to spare for torch.)"""

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

    def arscale(*args, timeout=300):
        return subprocess.run([fresh / "bin" / "arscale", *args], capture_output=True, text=True, cwd=elsewhere,
                              env=env, timeout=timeout)

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

    # the whole pipeline from the wheel, made smaller with --set: two sizes on a slice of the corpus
    two_sizes = "[{n_layer: 1, n_embd: 8, n_head: 2}, {n_layer: 1, n_embd: 16, n_head: 2}]"
    run = arscale("study", "run", "text-tiny", "--out", "s", "--set", f"models.grids.0.sizes={two_sizes}",
                  "--set", "corpus.max_bytes=400000", "--set", "tokenizer.train_bytes=200000", timeout=1200)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = elsewhere / "s" / "report"
    assert (report / "report.md").is_file() and (report / "report.html").is_file()
    assert "transformer-" in (report / "runs.csv").read_text()
