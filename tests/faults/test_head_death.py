"""The head node's death during a study on a cluster (a real local Ray cluster of one node, `arscale cluster up`):
the study fails within seconds with one line saying what happened and how to resume, and a run of the same command
on a new cluster resumes from what was saved: finished steps are skipped, the interrupted run resumes from its
checkpoint."""

import subprocess
import sys

import pytest

from tests.support.cli import ROOT
from tests.support.local_cluster import cluster_up
from tests.support.processes import CHECKPOINT, kill, wait_for_checkpoint
from tests.support.studies import micro_study_yaml

pytestmark = [pytest.mark.slow, pytest.mark.exclusive]  # kills a node of the machine: alone under pytest -n


def test_the_head_nodes_death_fails_the_study_in_one_line_and_a_new_cluster_resumes_it(tmp_path):
    config = tmp_path / "study.yaml"
    config.write_text(micro_study_yaml("headless", max_bytes=300000, train_bytes=100000, tokens=64000,
                                       checkpoints=40, num_workers=1))
    out, log = tmp_path / "study", tmp_path / "run1.log"
    with cluster_up(tmp_path / "first", workers=0) as cluster:
        study = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "study", "run", str(config), "--out", str(out),
                                  "--address", cluster.state["address"]], cwd=ROOT, env=cluster.env,
                                 stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
        wait_for_checkpoint(out, f"train-*.tmp/{CHECKPOINT}", timeout=240, interval=0.2)
        kill(cluster.processes(cluster.state))  # every process of the head node
        assert study.wait(timeout=120) == 1, log.read_text()[-3000:]
    text = log.read_text()
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "stopped answering (its head node died" in errors[0], text[-3000:]
    assert f"run `arscale study run {config} --out {out} --address <its address>` to resume" in errors[0]
    assert "Traceback" not in text

    with cluster_up(tmp_path / "second", workers=0) as cluster:
        again = cluster.arscale("study", "run", config, "--out", out, "--address", cluster.state["address"],
                                timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "steps already done" in again.stdout
    assert "resuming from the checkpoint" in again.stdout + again.stderr
