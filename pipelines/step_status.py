"""The status protocol on disk: what a step's folder says about it, and the study's STOP file.

A step's directory goes through two names:

    <name>-<hash>.tmp/   while it runs, and after a failure (STATUS.json says running, failed or stopped, with the
                         error). Kept between attempts, so a step may resume from what it left there.
    <name>-<hash>/       after success (STATUS.json says succeeded): one atomic rename from the .tmp name.

So a directory without `.tmp` is always complete. The study folder's `STOP` file asks running steps to save a
checkpoint and stop (see pipelines.executor).
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from armodels.files import read_json, write_json_atomic

STATUS = "STATUS.json"
STOP_FILE = "STOP"  # its presence asks running steps to checkpoint and stop
SUCCEEDED, FAILED, RUNNING, STOPPED = "succeeded", "failed", "running", "stopped"


def step_state(root: Path, dirname: str) -> dict:
    """A step's status record: from its final dir if it succeeded, else from its .tmp dir, else pending.

    A `running` record whose process is gone (on this host) reads as `interrupted`.
    """
    for d in (root / dirname, root / f"{dirname}.tmp"):
        path = d / STATUS
        if path.is_file():
            try:
                state = read_json(path)
            except ValueError:
                continue
            if d.name == dirname and state.get("state") != SUCCEEDED:
                continue  # a final dir is valid only with a success record
            on_this_host = state.get("host") == socket.gethostname()  # another host's process cannot be checked
            if state.get("state") == RUNNING and on_this_host and not process_alive(state.get("pid")):
                state = {**state, "state": "interrupted"}
            return state
    return {"state": "pending"}


def process_alive(pid) -> bool:
    """Whether the process `pid` of this machine still runs (False for a missing or malformed pid)."""
    try:
        os.kill(int(pid), 0)
        return True
    except (OSError, TypeError, ValueError):
        return False


def write_running(folder: Path, step: str, dirname: str, run_id: str | None, inputs: dict[str, str]) -> dict:
    """Record that this process runs the step in `folder` (its .tmp dir); returns the record."""
    record = {"step": step, "dir": dirname, "state": RUNNING, "host": socket.gethostname(), "pid": os.getpid(),
              "started": time.time(), "mlflow_run_id": run_id, "inputs": inputs}
    write_json_atomic(folder / STATUS, record)
    return record


def write_finished(folder: Path, record: dict, state: str, **details) -> None:
    """Close the running `record` as `state` (succeeded, failed, stopped), with its `summary` or `error`."""
    write_json_atomic(folder / STATUS, {**record, "state": state, "finished": time.time(), **details})


def ensure_failed(folder: Path, step: str, dirname: str, error: str) -> None:
    """Make sure the .tmp `folder` says failed, even when the process running the step died without saying so."""
    status = folder / STATUS
    if folder.is_dir():
        record = read_json(status) if status.is_file() else {"step": step, "dir": dirname}
        if record.get("state") != FAILED:
            write_json_atomic(status, {**record, "state": FAILED, "error": error, "finished": time.time()})
