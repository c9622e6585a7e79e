"""Fault 1: a training worker process is killed mid-run. Ray Train restarts the worker group and the loop resumes
from its last checkpoint at the same data position: the same steps, tokens and loss curve as an unbroken run."""

import json
import signal
import subprocess
import threading

import pytest
import torch

from armodels.train import TrainConfig, train_single_process
from pipelines.step import StepContext
from pipelines.steps.train import TrainStepConfig, train_model
from tests.support.cli import ROOT, subprocess_env
from tests.support.processes import kill_named, wait_for_checkpoint


def kill_train_worker_after_first_checkpoint(out, killed: list) -> None:
    try:
        wait_for_checkpoint(out, interval=0.01)
    except AssertionError:
        return  # none within 300 s: nothing killed, which the test reports
    killed.extend(p.pid for p in kill_named("RayTrainWorker"))  # SIGKILL: no chance to clean up


@pytest.mark.slow
@pytest.mark.exclusive  # kills every training worker on the machine
def test_a_killed_worker_resumes_at_the_same_data_position(tmp_path, shards, ray_local):
    model = dict(vocab_size=320, seq_len=32, n_layer=2, n_head=2, n_embd=32)
    train = TrainConfig(tokens=200_000, batch_size=16, lr=3e-3, eval_points=2, eval_windows=8, log_every=5,
                        checkpoints=8)
    step = TrainStepConfig("killed", "transformer", model, train)
    out = tmp_path / "ray"
    out.mkdir()
    killed: list[int] = []
    killer = threading.Thread(target=kill_train_worker_after_first_checkpoint, args=(out, killed))
    killer.start()
    summary = train_model(step, StepContext("train-killed", out, {"shards": shards}))
    killer.join()
    assert killed, "no training worker was found to kill"

    result = json.loads((out / "result.json").read_text())
    assert summary["status"] == "ok" and result["resumed_at_step"], result
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the Ray worker ran, so that the sums are done in the same order
    try:
        single = train_single_process(step.run(shards), tmp_path / "single")
    finally:
        torch.set_num_threads(threads)
    assert result["tokens"] == single["tokens"] and result["steps"] == single["steps"]
    curves = [json.loads((d / "curve.json").read_text()) for d in (out, tmp_path / "single")]
    steps = [[p["step"] for p in c["train"]] for c in curves]
    assert steps[0] == steps[1]  # no logged step lost or repeated
    for a, b in zip(curves[0]["train"] + curves[0]["val"], curves[1]["train"] + curves[1]["val"]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
    assert not (out / "checkpoint").exists()


def test_ctrl_c_in_arscale_train_saves_a_checkpoint_and_the_rerun_resumes(tmp_path, arscale_train):
    """`arscale train` (one process, no Ray): SIGINT ends the current step, saves a checkpoint, exits 130."""
    command = arscale_train(TrainConfig(tokens=400_000, batch_size=16, eval_points=1, eval_windows=8,
                                        checkpoints=20))
    env = subprocess_env()
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    # 300 s, generous: a loaded machine imports torch and DeepSpeed slowly
    wait_for_checkpoint(tmp_path / "out", process=proc, details=lambda: proc.communicate(timeout=10))
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr
    assert "run the same command again to resume" in stderr and json.loads(stdout)["status"] == "interrupted"
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "ok" and result["resumed_at_step"] >= json.loads(stdout)["steps"] - 1
