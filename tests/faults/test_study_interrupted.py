"""Faults 2 and 3 at the study level, with the real CLI, Ray, DeepSpeed and MLflow:

- SIGTERM to the study process (as `kill`, a scheduler or `ray job stop` sends it; Ctrl-C takes the same path):
  running training runs save a checkpoint, the study exits 1 saying how to resume, and no stopped step is marked
  succeeded;
- the study's processes SIGKILLed mid-grid: nothing half-written is marked succeeded;
- a re-run skips finished steps, resumes the interrupted runs from their checkpoints, and each resumed run ends
  exactly where an uninterrupted run of it ends;
- all the while another Ray runs on the machine (this test process's, started as every arscale command starts
  its own): no Ray traceback in the study's log.
"""

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

from armodels.train import TrainRun, train_single_process
from pipelines.status import study_status
from pipelines.step_status import step_state
from tests.support.cli import ARSCALE, ROOT
from tests.support.processes import CHECKPOINT, wait_for, wait_for_checkpoint

pytestmark = pytest.mark.slow


def start_study(config: Path, out: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([*ARSCALE, "study", "run", str(config), "--out", str(out)], cwd=ROOT,
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def steps(out: Path) -> dict[str, str]:
    study = json.loads((out / "study.json").read_text())
    return {s["name"]: step_state(out, s["dir"])["state"] for s in study["steps"]}


def test_a_study_stopped_or_killed_resumes_where_it_was(tmp_path, ray_local):
    config = yaml.safe_load((ROOT / "configs" / "text-tiny.yaml").read_text())
    config["training"].update(tokens=200_000, checkpoints=20)  # runs long enough to interrupt
    # three sizes: two train side by side (one to stop mid-run, one to finish) and one waits its turn
    config["models"]["grids"][0]["sizes"] = config["models"]["grids"][0]["sizes"][:3]
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "study"

    # 1. SIGTERM while training
    study = start_study(path, out, tmp_path / "run1.log")
    wait_for_checkpoint(out, f"train-*.tmp/{CHECKPOINT}", timeout=240, interval=0.2)
    status = study_status(out)  # how far each running run is, from its progress record (in-process: no delay)
    study.terminate()
    running_line = r"train-\S+\s+running\s+for \S+\s+\d+% [\d.]+k?/[\d.]+k tokens, loss [\d.]+, ETA"
    assert re.search(running_line, status), status
    assert study.wait(timeout=180) == 1
    log = (tmp_path / "run1.log").read_text()
    assert f"to resume, run: arscale study run {path} --out {out}" in log
    states = steps(out)
    stopped = [n for n, s in states.items() if s == "stopped"]
    assert stopped and all(s != "succeeded" for n, s in states.items() if n.startswith("train-")), states
    for name in stopped:
        assert next(out.glob(f"{name}-*.tmp/checkpoint/state.json"))

    # 2. SIGKILL of the study's processes once a run has resumed and another has finished
    study = start_study(path, out, tmp_path / "run2.log")
    log2 = tmp_path / "run2.log"
    wait_for(lambda: "resuming from the checkpoint" in log2.read_text() and "✔ train" in log2.read_text(),
             "a resumed run and a finished one", timeout=240, interval=0.2)
    os.killpg(study.pid, signal.SIGKILL)  # the study and every Ray process it started, mid-write or not
    study.wait(timeout=30)
    time.sleep(2)
    finished = {n for n, s in steps(out).items() if s == "succeeded"}
    for name, state in steps(out).items():
        if state != "succeeded":
            assert not [d for d in out.glob(f"{name}-*") if not d.name.endswith(".tmp")], name

    # 3. the re-run completes, skipping what finished
    study = start_study(path, out, tmp_path / "run3.log")
    assert study.wait(timeout=600) == 0, (tmp_path / "run3.log").read_text()[-3000:]
    assert f"{len(finished)} of {len(steps(out))} steps already done" in (tmp_path / "run3.log").read_text()
    assert set(steps(out).values()) == {"succeeded"}

    resumed = [json.loads(p.read_text()) for p in out.glob("train-*/result.json")]
    resumed = [r for r in resumed if r["resumed_at_step"]]
    assert resumed
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the Ray workers ran
    try:
        for result in resumed:
            step_dir = next(out.glob(f"train-{result['name']}-*[!p]"))
            alone = train_single_process(TrainRun.load(step_dir / "run.json"), tmp_path / result["name"])
            assert alone["tokens"] == result["tokens"]
            assert alone["final_val_loss"] == pytest.approx(result["final_val_loss"], rel=1e-6), result["name"]
    finally:
        torch.set_num_threads(threads)
    assert (out / "report" / "report.md").is_file()
    for log in ("run1.log", "run2.log", "run3.log"):  # Ray's helpers found this study's Ray, not the other one
        assert "Traceback" not in (tmp_path / log).read_text(), log
        # output to a file is plain text: no colour codes, no Ray banners
        assert "\x1b[" not in (tmp_path / log).read_text() and "Ray deduplicates" not in (tmp_path / log).read_text()
    progress_line = r"progress: \d+/11 steps, \d+/3 training runs, \S+/601k tokens"  # its ETA: test_progress.py
    assert re.search(progress_line, (tmp_path / "run3.log").read_text())
    # the study folder keeps the driver's log of every invocation, the workers' lines included
    driver = (out / "logs" / "driver.log").read_text()
    assert driver.count(f"---- arscale study run {path} --out {out}") == 3
    assert "✔ train-" in driver and re.search(r"\[transformer-\S+\] +\d+%", driver) and "\x1b[" not in driver
