"""Cluster jobs on a real multi-node Ray cluster on 127.0.0.1: `arscale cluster up` (a head and a worker node,
1 CPU each), DeepSpeed data parallelism across the two nodes, studies submitted as jobs (followed, stopped,
resumed, failed) with their folder in an object store (a real S3-compatible server, moto, on 127.0.0.1), the error
messages, and `arscale cluster down` leaving no process behind.

Every command runs as a user runs it (a subprocess), so this process never joins a Ray cluster itself. The
cluster's state folder and token are in a temporary folder ($ARSCALE_HOME, $RAY_AUTH_TOKEN_PATH).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from pipelines.storage import StudyStore
from tests.support.cli import ROOT, one_line_error
from tests.support.local_cluster import Cluster, cluster_up
from tests.support.processes import CHECKPOINT, wait_for
from tests.support.runs import assert_curves_agree
from tests.support.studies import MICRO_STUDY_STEPS, micro_study_yaml

pytestmark = pytest.mark.slow

# One training run, on 2 workers of 1 CPU: on a cluster of two 1-CPU nodes, one worker per node.
# Long enough (250 steps) that `arscale jobs stop` reaches the run well before it ends; its first checkpoint comes
# after 6 steps.
MICRO_STUDY = dict(max_bytes=300000, train_bytes=100000, tokens=128000, checkpoints=40)
STUDY_STEPS = len(MICRO_STUDY_STEPS)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, s3):
    """The nodes find the S3 server through the environment they start in, as on a cloud."""
    home = tmp_path_factory.mktemp("arscale-home")
    with cluster_up(home, workers=1, env={**s3.env, "ARSCALE_SCRATCH": str(home / "scratch")}) as c:
        yield c  # the last test stops it


def submit(cluster: Cluster, config: Path, storage: Path | str, *args) -> tuple[str, subprocess.CompletedProcess]:
    result = cluster.arscale("submit", config, "--storage", storage, *args)
    match = re.search(r"^job (\S+) submitted", result.stdout, re.M)
    assert match, result.stdout + result.stderr
    return match.group(1), result


def test_up_starts_two_nodes_on_loopback_with_a_new_token(cluster):
    state = cluster.state
    assert [n["role"] for n in state["nodes"]] == ["head", "worker"]
    assert state["address"].startswith("127.0.0.1:") and state["dashboard_url"].startswith("http://127.0.0.1:")
    assert state["token"] == str(cluster.token)  # generated, as there was none
    # what `down` checks before it signals a process or removes a folder (tests/faults/test_cluster_down_pid_reuse.py)
    assert re.fullmatch(r"[0-9a-f]{32}", state["id"]) and state["boot_id"]
    for node in state["nodes"]:
        assert node["processes"] and {r["pid"] for r in node["processes"]} <= set(node["pids"])
        assert all(r["cmdline"] and r["start"] > 0 for r in node["processes"])
    assert (Path(state["temp_root"]) / ".arscale-cluster").read_text() == state["id"]
    assert re.fullmatch(r"[0-9a-f]{64}", cluster.token.read_text()) and cluster.token.stat().st_mode & 0o077 == 0
    status = cluster.arscale("cluster", "status")
    assert status.returncode == 0, status.stdout + status.stderr
    nodes = re.findall(r"^\s+(head|worker)\s+\w+\s+127\.0\.0\.1\s+ALIVE\s+1 CPU", status.stdout, re.M)
    assert sorted(nodes) == ["head", "worker"] and "CPUs in use: 0 of 2" in status.stdout, status.stdout
    listening = [c.laddr for p in cluster.processes(state) for c in _connections(p) if c.status == "LISTEN"]
    assert listening and all(a.ip in ("127.0.0.1", "::ffff:127.0.0.1") for a in listening), listening


def test_up_again_says_so_and_shows_the_cluster(cluster):
    again = cluster.arscale("cluster", "up")
    assert again.returncode == 0 and "already up" in again.stdout
    assert cluster.state["dashboard_url"] in again.stdout


@pytest.fixture(scope="module")
def resumed_study(cluster, s3, tmp_path_factory):
    """The micro study submitted with its folder in S3, stopped once its training run has saved a checkpoint there,
    its nodes' scratch folders wiped, and submitted again with --wait.

    Returns the study's store, the steps done at the stop ({dir: STATUS.json}), both job ids and the output of the
    second `arscale submit`.
    """
    root = tmp_path_factory.mktemp("jobs")
    config, storage = root / "micro.yaml", s3.uri("studies", options=False)
    config.write_text(micro_study_yaml("micro", **MICRO_STUDY))
    store = StudyStore(s3.uri("studies/micro"))
    first, _ = submit(cluster, config, storage)
    wait_for(lambda: [d for d in store.fs.get_file_info(_everything(store)) if d.path.endswith(f".tmp/{CHECKPOINT}")],
             "a checkpoint in the store", interval=0.5, details=lambda: cluster.arscale("jobs", "logs", first).stdout)
    stopped = cluster.arscale("jobs", "stop", first)
    assert stopped.returncode == 0 and f"job {first}: STOPPED" in stopped.stdout, stopped.stdout + stopped.stderr
    names = {i.path.split("/")[-2] for i in store.fs.get_file_info(_everything(store))
             if i.path.endswith("/STATUS.json")}
    done = {n: store.read_json(f"{n}/STATUS.json") for n in names if not n.endswith(".tmp")}
    shutil.rmtree(cluster.env["ARSCALE_SCRATCH"])  # as if the job ran on a new cluster: only the store is left
    second, result = submit(cluster, config, storage, "--wait")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    return store, done, first, second, result.stdout


def _everything(store: StudyStore):
    from pyarrow import fs

    return fs.FileSelector(store.base, recursive=True, allow_not_found=True)


def test_a_stopped_study_resumes_without_redoing_finished_steps(cluster, resumed_study):
    store, done, first, second, output = resumed_study
    assert {name.split("-")[0] for name in done} == {"corpus", "tokenizer", "shards"}
    assert f"{len(done)} of {STUDY_STEPS} steps already done; running {STUDY_STEPS - len(done)}" in output
    for name, status in done.items():  # not run again: the same records
        assert f"▶ {name}" not in output
        assert store.read_json(f"{name}/STATUS.json")["started"] == status["started"]
    assert re.search(r"resuming from the checkpoint after step \d+ of 250", output), output[-3000:]
    assert f"job {second} succeeded" in output
    assert store.exists(store.read_json("study.json")["report"])
    status = cluster.arscale("study", "status", store.uri)
    assert status.returncode == 0 and f"{STUDY_STEPS} succeeded" in status.stdout, status.stdout + status.stderr
    listing = cluster.arscale("jobs", "list").stdout
    assert re.search(rf"{first}\s+STOPPED", listing) and re.search(rf"{second}\s+SUCCEEDED", listing)
    assert "STOPPED" in cluster.arscale("jobs", "status", first).stdout


def test_the_study_of_a_job_is_in_mlflow(resumed_study, tmp_path):
    from mlflow import MlflowClient

    resumed_study[0].pull_into("", tmp_path, ["mlflow.db"])  # the SQLite store went to S3 with the study
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("micro").experiment_id])
    trained = [r for r in runs if r.info.run_name.startswith("train-") and r.info.status == "FINISHED"]
    assert len(trained) == 1 and len(client.get_metric_history(trained[0].info.run_id, "train_loss")) > 10


WORKER_NODES = """
import json, sys
from ray.util.state import list_actors
workers = list_actors(address=sys.argv[1], filters=[("class_name", "=", "RayTrainWorker")], detail=True)
print(json.dumps(sorted({w.node_id for w in workers})))
"""


def test_a_run_on_two_nodes_follows_the_one_worker_loss_curve(cluster, resumed_study, tmp_path):
    """DeepSpeed data parallel across nodes: the same seed and global batch give the same curve as one worker."""
    from armodels.train import TrainRun, train_single_process

    store = resumed_study[0]
    name = next(s["dir"] for s in store.read_json("study.json")["steps"] if s["name"].startswith("train-"))
    train_dir = tmp_path / name
    assert store.pull(name, train_dir)
    assert json.loads((train_dir / "result.json").read_text())["workers"] == 2
    nodes = subprocess.run([sys.executable, "-c", WORKER_NODES, cluster.state["dashboard_url"]], cwd=ROOT,
                           env={**cluster.env, "RAY_AUTH_MODE": "token"}, capture_output=True, text=True, timeout=120)
    assert len(json.loads(nodes.stdout)) == 2, nodes.stderr  # the only training run: one worker on each node

    single = train_single_process(TrainRun.load(train_dir / "run.json"), tmp_path / "one-worker")
    assert single["status"] == "ok"
    curve = assert_curves_agree(train_dir, tmp_path / "one-worker")["train"]
    assert curve[-1]["loss"] < curve[0]["loss"] - 0.5


def test_a_failed_job_shows_why_and_the_end_of_its_log(cluster, tmp_path):
    config = tmp_path / "broken.yaml"
    config.write_text(f"name: broken\ncorpus: {{source: files, paths: ['{tmp_path / 'nowhere'}']}}\n"
                      "models: {grids: [{sizes: [{n_layer: 1, n_embd: 8, n_head: 2}]}]}\n")
    job, waited = submit(cluster, config, tmp_path / "studies", "--wait")
    assert waited.returncode == 1 and "does not exist" in waited.stdout
    assert waited.stderr.strip().splitlines()[-1] == (f"error: job {job} failed: `arscale jobs status {job}` shows "
                                                      "why; submit it again to resume")
    status = cluster.arscale("jobs", "status", job)
    assert status.returncode == 0
    assert f"job {job}: FAILED" in status.stdout and "exit code 2" in status.stdout
    assert re.search(r"last \d+ lines of its log:\n(.*\n)*\s+error: .*nowhere does not exist", status.stdout)


def test_errors_name_the_problem_and_the_fix(cluster, tmp_path):
    url = cluster.state["dashboard_url"]
    one_line_error(cluster.arscale("submit", "text-tiny", "--address", "http://127.0.0.1:9"), 2,
                   "cannot reach a Ray cluster at http://127.0.0.1:9: start a local cluster with `arscale cluster up`")
    elsewhere = {"ARSCALE_HOME": str(tmp_path / "empty"), "RAY_AUTH_TOKEN_PATH": None, "HOME": str(tmp_path)}
    one_line_error(cluster.arscale("jobs", "list", **elsewhere), 2, "no Ray cluster to talk to")
    one_line_error(cluster.arscale("jobs", "list", "--address", url, **elsewhere), 2,
                   "requires an authentication token and none was found: the cluster's token is printed by "
                   "`ray get-auth-token`")
    one_line_error(cluster.arscale("jobs", "list", "--address", url, RAY_AUTH_TOKEN="0" * 64), 2,
                   "rejected the authentication token from $RAY_AUTH_TOKEN")
    one_line_error(cluster.arscale("jobs", "status", "no-such-job"), 2, "no job no-such-job on the cluster")
    one_line_error(cluster.arscale("submit", "text-tiny", "--storage", "nosuch://bucket/studies"), 2,
                   "nosuch://bucket/studies: not a storage URI pyarrow can open")
    wide = tmp_path / "wide.yaml"  # 2 CPUs in all, but a worker cannot have 2 on one of these 1-CPU nodes
    wide.write_text(micro_study_yaml("micro", **MICRO_STUDY, num_workers=1, cpus_per_worker=2))
    one_line_error(cluster.arscale("study", "run", wide, "--out", tmp_path / "wide", "--address",
                                   cluster.state["address"]), 2,
                   "needs 2 CPUs on one node but the largest node of the Ray cluster has 1")
    one_line_error(cluster.arscale("cluster", "status", **elsewhere), 1, "no local Ray cluster is up")
    nothing = cluster.arscale("cluster", "down", **elsewhere)
    assert nothing.returncode == 0 and "nothing to stop" in nothing.stdout


def test_a_cluster_that_died_is_reported_and_cleared(cluster, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    # sessions no process has, no process recorded, another cluster's id: a cluster whose processes have all ended
    gone = {**cluster.state, "id": "0" * 32, "temp_root": str(tmp_path / "ray"),
            "nodes": [{**n, "session": 2**22 + i, "pids": [], "processes": []}
                      for i, n in enumerate(cluster.state["nodes"])]}
    (home / "cluster.json").write_text(json.dumps(gone))
    one_line_error(cluster.arscale("cluster", "status", ARSCALE_HOME=str(home)), 1,
                   "is gone (its processes have ended)")
    down = cluster.arscale("cluster", "down", ARSCALE_HOME=str(home))
    assert down.returncode == 0 and "had stopped already" in down.stdout and not (home / "cluster.json").exists()


def test_down_stops_every_process_it_started(cluster):
    state = cluster.state
    assert cluster.processes(state)
    down = cluster.arscale("cluster", "down")
    assert down.returncode == 0 and "stopped the local Ray cluster" in down.stdout, down.stderr
    assert cluster.processes(state) == []
    assert not Path(state["temp_root"]).exists() and not (cluster.home / "cluster.json").exists()
    assert "nothing to stop" in cluster.arscale("cluster", "down").stdout


def _connections(process: psutil.Process) -> list:
    try:
        return process.net_connections(kind="inet")
    except psutil.Error:
        return []
