"""Fault 7: the disk fills up (simulated with a file-size limit, which makes writes fail as a full disk does).
The run stops with one clear line naming what could not be written; no partial checkpoint is left looking whole,
and the run can be repeated once there is room."""

import json
import resource
import signal
import subprocess

from armodels.checkpoint import load_checkpoint
from armodels.train import TrainConfig
from tests.support.cli import ROOT, subprocess_env


def limit_file_size(max_bytes: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))
    return apply


def test_a_full_disk_while_checkpointing_fails_cleanly(tmp_path, arscale_train):
    command = arscale_train(TrainConfig(tokens=40_000, batch_size=16, eval_points=1, eval_windows=8, checkpoints=2))
    env = subprocess_env()
    full = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env,
                          preexec_fn=limit_file_size(64_000))
    assert full.returncode == 1, full.stderr
    last = full.stderr.strip().splitlines()[-1]
    assert last.startswith("error: could not write the checkpoint") and "free some disk space" in last, last
    assert "Traceback" not in full.stderr
    assert load_checkpoint(tmp_path / "out") is None  # nothing half-written is taken for a checkpoint
    assert not (tmp_path / "out" / "model.safetensors").exists()

    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["status"] == "ok"
