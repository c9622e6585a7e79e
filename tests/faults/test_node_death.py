"""Fault 5: a worker node of a multi-node cluster dies mid-run. The run goes on on the nodes that are left: Ray
Train restarts its worker group there (FailureConfig) and the loop resumes from its last checkpoint at the same
data position, so the study succeeds with the result of an unbroken run and no finished step is redone.

The cluster is `arscale cluster up`: a head and two worker nodes of 1 CPU each on 127.0.0.1, and the study's driver
`arscale study run --address` on the head (what `arscale submit` runs there as a job, which would only add its own
start-up to this test). Its one training run has 2 workers of 1 CPU, so it spans two nodes, at least one of them
a worker node; that node is killed the way a machine dies: every process of its `ray start` session SIGKILLed at
once (raylet, agents, the training worker), right after the run's first mid-run checkpoint. The head and the third
node keep 2 CPUs, enough for the restarted worker group. The run's coordinator (the step's task and Ray Train's
controller) stays on the driver's node; the head holds the GCS and the driver, so its death ends the study.

The checkpoint is in the study folder, which every node sees here because they share one machine; on a real
cluster of several machines the study storage must be a shared filesystem (`arscale submit --storage`) for a run
to resume on another node.

When the nodes left cannot hold the run's workers, Ray Train would wait for room forever; the step gives up after
pipelines.steps.train.RESOURCE_WAIT_S and the study reports which run failed and why, keeping the checkpoint for a
later run (tested on a local Ray too small for the run, which is what Ray Train sees then).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time

import psutil
import pytest

from armodels.train import TrainConfig
from pipelines.errors import RunFailure
from pipelines.step import StepContext
from pipelines.steps import train as train_step
from tests.support.cli import ROOT
from tests.support.local_cluster import cluster_up
from tests.support.processes import CHECKPOINT, kill_session, named, session_of, wait_for_checkpoint
from tests.support.runs import assert_curves_agree
from tests.support.studies import MICRO_STUDY_STEPS, micro_study_yaml

pytestmark = [pytest.mark.slow, pytest.mark.exclusive]  # kills a node of the machine: alone under pytest -n

STUDY = micro_study_yaml("node-death", max_bytes=200000, train_bytes=60000, tokens=48000, checkpoints=4)


def test_a_run_the_cluster_cannot_hold_fails_saying_why(tmp_path, shards, ray_local, monkeypatch):
    """As after a node died with too few CPUs left: 3 workers of 1 CPU on a local Ray of 2 CPUs."""
    monkeypatch.setattr(train_step, "RESOURCE_WAIT_S", 6.0)
    monkeypatch.setenv(train_step.START_TIMEOUT_ENV, "3")  # Ray Train's tries: 2 of 3 s
    model = dict(vocab_size=320, seq_len=32, n_layer=1, n_head=2, n_embd=16)
    step = train_step.TrainStepConfig("no-room", "transformer", model, TrainConfig(tokens=4000, batch_size=12),
                                      num_workers=3)
    out = tmp_path / "train-no-room.tmp"
    (out / "checkpoint").mkdir(parents=True)  # from an earlier attempt: the run would resume from it
    outcome: list[BaseException] = []

    def train() -> None:
        try:
            train_step.train_model(step, StepContext("train-no-room", out, {"shards": shards}))
        except BaseException as e:
            outcome.append(e)

    runner = threading.Thread(target=train, daemon=True)  # a regression waits forever: fail instead of hanging
    runner.start()
    runner.join(timeout=120)
    assert outcome, "the run still waits for room after 120s"
    assert isinstance(outcome[0], RunFailure) and str(outcome[0]) == (
        "its 3 training worker(s) of 1 CPU(s) each found no room in the Ray cluster for 6s (a node died or left, or "
        "other work holds the CPUs); its checkpoint is kept: add nodes or lower num_workers, then run the study "
        "again to resume"
    ), outcome
    assert (out / "checkpoint").is_dir()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    # Ray's GCS marks a node dead after `failure_threshold` missed health checks (5 × 3 s by default); checks every
    # second let the restarted worker group be placed sooner. Read by the head's GCS from its environment.
    # `cluster down` at the end stops every process `up` started, the dead node's leftovers included.
    with cluster_up(tmp_path_factory.mktemp("arscale-home"), workers=2,
                    env={"RAY_health_check_period_ms": "1000"}) as c:
        yield c


PINNED = """
import json, sys, time
from pathlib import Path

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from pipelines.ray_connect import connect
from pipelines.executor import Executor
from pipelines.step import Resources, Step

def node(config, ctx):
    return {"node": ray.get_runtime_context().get_node_id()}

connect(sys.argv[1])
here = ray.get_runtime_context().get_node_id()
hold = ray.remote(lambda: time.sleep(120)).options(num_cpus=1, scheduling_strategy=NodeAffinitySchedulingStrategy(
    here, soft=False)).remote()
while ray.available_resources().get("CPU", 0) > 2:  # until it holds the driver's node's only CPU
    time.sleep(0.1)
step = Step("coordinator", node, {}, resources=Resources(cpus=1, held_by_workers=True))
outcome = Executor(Path(sys.argv[2]), log=lambda message: None).run([step])["coordinator"]
placed = {"driver": here, "coordinator": outcome.summary.get("node"), "state": outcome.state}
(Path(sys.argv[2]) / "placed.json").write_text(json.dumps(placed))  # not stdout: Ray prints its nodes' news there
"""


def test_a_training_runs_coordinator_stays_on_the_drivers_node(cluster, tmp_path):
    """Even when the driver's node has no CPU free (Ray would otherwise pick another node for a task of 0 CPUs)."""
    placed = subprocess.run([sys.executable, "-c", PINNED, cluster.state["address"], tmp_path], cwd=ROOT,
                            env=cluster.env, capture_output=True, text=True, timeout=120)
    assert placed.returncode == 0, placed.stderr[-3000:]
    nodes = json.loads((tmp_path / "placed.json").read_text())
    assert nodes["state"] == "succeeded" and nodes["coordinator"] == nodes["driver"], nodes


def test_a_run_on_a_node_that_dies_resumes_on_the_other_nodes(cluster, tmp_path):
    state = cluster.state
    nodes = {n["session"]: n["role"] for n in state["nodes"]}
    assert sorted(nodes.values()) == ["head", "worker", "worker"]
    config, study, log = tmp_path / "study.yaml", tmp_path / "node-death", tmp_path / "study.log"
    config.write_text(STUDY)
    unbroken = None
    with log.open("w") as output:
        study_run = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "study", "run", config, "--out", study,
                                      "--address", state["address"]], cwd=ROOT, env=cluster.env, stdout=output,
                                     stderr=subprocess.STDOUT)
    try:
        wait_for_checkpoint(study, f"train-*.tmp/{CHECKPOINT}", process=study_run,
                            details=lambda: log.read_text()[-3000:])
        # The node of a training worker (a worker node: one of the run's two workers is on one).
        hosts = {session_of(p) for p in named(psutil.process_iter(["cmdline"]), "RayTrainWorker")}
        victim = next((s for s in hosts if nodes.get(s) == "worker"), None)
        assert victim, f"no training worker on a worker node: {hosts} of {nodes}"
        victims = kill_session(victim)  # every process of the node at once, as a machine that dies
        killed = {kind for kind in ("raylet", "RayTrainWorker", "dashboard", "runtime_env") if named(victims, kind)}
        killed_at = time.time()
        train_tmp = next(study.glob("train-*.tmp"))
        checkpoint_step = json.loads((train_tmp / "checkpoint" / "state.json").read_text())["step"]
        done = {d.name: json.loads((d / "STATUS.json").read_text()) for d in study.iterdir()
                if (d / "STATUS.json").is_file() and not d.name.endswith(".tmp")}
        # The run unbroken, in one process without Ray, to compare with; meanwhile Ray finds the node dead.
        unbroken = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "train", "--config",
                                     train_tmp / "run.json", "--out", tmp_path / "unbroken"], cwd=ROOT,
                                    env=cluster.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        try:
            assert study_run.wait(timeout=400) == 0, log.read_text()[-5000:]
        except subprocess.TimeoutExpired:
            pytest.fail(f"the study still runs 400s after the node died; its output:\n{log.read_text()[-5000:]}\n"
                        f"the cluster's nodes: {cluster.arscale('cluster', 'status').stdout[-2000:]}")
        assert unbroken.wait(timeout=300) == 0
    finally:
        for process in (study_run, unbroken):
            if process and process.poll() is None:
                process.kill()
                process.wait()
    output = log.read_text()
    assert re.search(r"^report: ", output, re.M), output[-3000:]
    assert {"raylet", "RayTrainWorker"} <= killed, killed  # the node died, not only a worker of it

    # The study did not notice: each step ran once, and those done before the node died were left alone.
    assert {name.rsplit("-", 1)[0] for name in done} == {"corpus", "tokenizer", "shards"}
    for name, record in done.items():
        assert json.loads((study / name / "STATUS.json").read_text()) == record
    for step in MICRO_STUDY_STEPS:
        assert len(re.findall(rf"^▶ {re.escape(step)}-\w+ ", output, re.M)) == 1, (step, output[-3000:])
    train_dir = next(d for d in study.glob("train-*") if not d.name.endswith(".tmp"))
    record = json.loads((train_dir / "STATUS.json").read_text())
    assert record["state"] == "succeeded" and record["finished"] > killed_at

    # The run went on from its checkpoint with both workers, on the nodes left.
    result = json.loads((train_dir / "result.json").read_text())
    assert result["status"] == "ok" and result["workers"] == 2, result
    assert checkpoint_step <= result["resumed_at_step"] < result["steps"], (checkpoint_step, result)
    assert not (train_dir / "checkpoint").exists()

    # The same curve as the unbroken run: no logged step lost or repeated, the same losses (2 workers of the same
    # global batch agree with 1 to rounding; tests/cluster/test_cluster.py).
    assert result["tokens"] == json.loads((tmp_path / "unbroken" / "result.json").read_text())["tokens"]
    assert_curves_agree(train_dir, tmp_path / "unbroken", kinds=("train", "val"), at="step")

    down = cluster.arscale("cluster", "down")
    assert down.returncode == 0 and cluster.processes(state) == [], down.stdout + down.stderr
