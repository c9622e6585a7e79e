"""`arscale cluster down` checks its state file against the machine instead of trusting it: a pid recorded there may
belong to another process by now (after a reboot, or once pids wrap around), a session id to someone's login, and
the recorded temp folder may hold someone's files. Those are left alone, with a line saying so.

Real processes (`sleep` in a session of its own stands for the unrelated process); no Ray is needed, so the CLI runs
in this process (its exit code and output are what `arscale` would give).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from cluster import local_cluster
from pipelines.cli import main


@pytest.fixture
def stranger():
    """A live process unrelated to any cluster, in a session of its own (as a login session would be)."""
    process = subprocess.Popen(["sleep", "300"], start_new_session=True)
    yield psutil.Process(process.pid)
    process.kill()
    process.wait()


@pytest.fixture
def user_folder(tmp_path) -> Path:
    folder = tmp_path / "my-work"
    (folder / "n0").mkdir(parents=True)
    (folder / "notes.txt").write_text("mine")
    return folder


def plant(home: Path, process: psutil.Process, folder: Path, **fields) -> Path:
    """A state file naming `process` as the head node's session and process, and `folder` as its temp root."""
    node = {"role": "head", "cpus": 1, "temp_dir": str(folder / "n0"), "session": process.pid, "pids": [process.pid]}
    node.update(fields.pop("node", {}))
    state = {"address": "127.0.0.1:6379", "dashboard_url": "http://127.0.0.1:8265", "token": "$RAY_AUTH_TOKEN",
             "temp_root": str(folder), "started": process.create_time() - 5, "nodes": [node], **fields}
    home.mkdir(exist_ok=True)
    path = home / "cluster.json"
    path.write_text(json.dumps(state))
    return path


def cluster_down(home: Path, capsys) -> tuple[int, str, str]:
    code = main(["cluster", "down", "--home", str(home)])
    out, err = capsys.readouterr()
    return code, out, err


def assert_left_alone(process: psutil.Process, folder: Path) -> None:
    time.sleep(0.2)  # a signal sent would have landed
    assert process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    assert (folder / "notes.txt").read_text() == "mine" and (folder / "n0").is_dir()


def test_a_state_file_of_an_older_arscale_is_not_acted_on(tmp_path, stranger, user_folder, capsys):
    """Without what identifies its processes, the pids and sessions it names could be anyone's by now."""
    plant(tmp_path / "home", stranger, user_folder)
    code, out, err = cluster_down(tmp_path / "home", capsys)
    assert_left_alone(stranger, user_folder)
    assert code == 1 and out == ""
    [line] = err.strip().splitlines()
    assert line.startswith("error: ") and "nothing was stopped" in line and "`ray stop`" in line
    assert f"session {stranger.pid}" in line  # what to stop by hand
    # the file that cannot be acted on is gone: `cluster up` starts afresh, `down` has nothing to do
    assert not (tmp_path / "home" / "cluster.json").exists()
    assert cluster_down(tmp_path / "home", capsys)[1].startswith("no local Ray cluster is up")


def test_a_reused_pid_is_left_alone_and_an_unmarked_folder_kept(tmp_path, stranger, user_folder, capsys):
    """The recorded pid now runs something else, started later: the record's command line and start time differ."""
    record = local_cluster.identity(stranger.pid)
    assert record and record["cmdline"] == ["sleep", "300"]
    record.update(cmdline=[sys.executable, "-m", "ray.raylet"], start=record["start"] - 1000)
    plant(tmp_path / "home", stranger, user_folder, id="c0ffee", boot_id=local_cluster.boot_id(),
          node={"processes": [record]})
    code, out, err = cluster_down(tmp_path / "home", capsys)
    assert_left_alone(stranger, user_folder)
    assert code == 0, err
    skipped = [line for line in out.splitlines() if f"pid {stranger.pid}" in line]
    assert len(skipped) == 1 and "left alone" in skipped[0] and "sleep 300" in skipped[0]
    assert any(f"kept {user_folder}" in line for line in out.splitlines())
    assert "had stopped already" in out and not (tmp_path / "home" / "cluster.json").exists()


def test_after_a_reboot_nothing_recorded_is_signalled(tmp_path, stranger, user_folder, capsys):
    """Even a pid whose command line and start time match the record is another process after a reboot."""
    plant(tmp_path / "home", stranger, user_folder, id="c0ffee", boot_id="another-boot",
          node={"processes": [local_cluster.identity(stranger.pid)]})
    code, out, err = cluster_down(tmp_path / "home", capsys)
    assert code == 0, err
    assert_left_alone(stranger, user_folder)
    assert "restarted" in out and f"kept {user_folder}" in out and "had stopped already" in out


def test_what_the_cluster_started_is_stopped_and_its_folder_removed(tmp_path, user_folder, capsys):
    """The positive case, without Ray: a recorded process that matches its record, and a child it started later
    (not recorded, but carrying the cluster's id in its environment, as Ray's workers and job drivers do)."""
    env = {**os.environ, local_cluster.ID_ENV: "c0ffee"}
    node = subprocess.Popen(["bash", "-c", "sleep 300 & wait"], env=env, start_new_session=True)
    try:
        leader = psutil.Process(node.pid)
        deadline = time.monotonic() + 10
        while not leader.children() and time.monotonic() < deadline:
            time.sleep(0.05)
        [child] = leader.children()
        (user_folder / local_cluster.MARKER).write_text("c0ffee")
        plant(tmp_path / "home", leader, user_folder, id="c0ffee", boot_id=local_cluster.boot_id(),
              node={"processes": [local_cluster.identity(leader.pid)]})
        code, out, err = cluster_down(tmp_path / "home", capsys)
        assert code == 0 and "stopped the local Ray cluster (2 processes)" in out, out + err
        assert node.wait(timeout=10) is not None
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
        assert not user_folder.exists() and not (tmp_path / "home" / "cluster.json").exists()
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()
