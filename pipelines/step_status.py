"""The status protocol on disk: what a step's folder says about it, and the study's STOP file.

A step's directory goes through two names:

    <name>-<hash>.tmp/   while it runs, and after a failure (STATUS.json says running, failed or stopped, with the
                         error). Kept between attempts, so a step may resume from what it left there.
    <name>-<hash>/       after success (STATUS.json says succeeded): one atomic rename from the .tmp name, after
                         every file, the success record and the folder were flushed to disk.

So a directory without `.tmp` is always complete, and only such a directory counts as done. A `.tmp` folder whose
record says succeeded (the process died between the record and the rename) is finished by `finish_commit` when
every file the record lists is there at its size, and otherwise is rerun. The study folder's `STOP` file asks
running steps to save a checkpoint and stop (see pipelines.executor), within `stop_grace_s()`.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path

from armodels.files import fsync_dir, fsync_tree, read_json, write_json_atomic
from pipelines.errors import UserError

STATUS = "STATUS.json"
STOP_FILE = "STOP"  # its presence asks running steps to checkpoint and stop
SUCCEEDED, FAILED, RUNNING, STOPPED, INTERRUPTED = "succeeded", "failed", "running", "stopped", "interrupted"
STEP_STOP_GRACE_S = 120.0  # how long running steps get to save a checkpoint when the study is stopped (default)
STOP_GRACE_ENV = "ARSCALE_STOP_GRACE_S"


def stop_grace_s() -> float:
    """How long running steps get to save a checkpoint when the study is stopped: $ARSCALE_STOP_GRACE_S, else
    STEP_STOP_GRACE_S. A scheduler's own grace (KubeRay's terminationGracePeriodSeconds, the lead time of SLURM's
    --signal) must exceed it by the study's own stopping, about 30 s."""
    text = os.environ.get(STOP_GRACE_ENV)
    if not text:
        return STEP_STOP_GRACE_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise UserError(f"${STOP_GRACE_ENV} must be a number of seconds, 0 or more (got {text!r})")
    return value


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
            if d.name != dirname and state.get("state") == SUCCEEDED:
                # never trusted: done means the final folder (see finish_commit)
                return {**state, "state": INTERRUPTED, "error": "its commit (the rename) did not happen"}
            on_this_host = state.get("host") == socket.gethostname()  # another host's process cannot be checked
            if state.get("state") == RUNNING and on_this_host and not process_alive(state.get("pid")):
                state = {**state, "state": INTERRUPTED}
            return state
    return {"state": "pending"}


def process_alive(pid) -> bool:
    """Whether the process `pid` of this machine still runs (False for a missing or malformed pid)."""
    try:
        os.kill(int(pid), 0)
        return True
    except (OSError, TypeError, ValueError):
        return False


def process_start(pid) -> int | None:
    """When the process `pid` of this machine started, in clock ticks since boot (None if it is gone): with the pid,
    it names one process, as a pid alone may be reused by another after the first ends."""
    try:
        stat = Path(f"/proc/{int(pid)}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])  # field 22; the name in parentheses may hold spaces
    except (OSError, ValueError, TypeError, IndexError):
        return None


def write_running(folder: Path, step: str, dirname: str, run_id: str | None, inputs: dict[str, str]) -> dict:
    """Record that this process runs the step in `folder` (its .tmp dir); returns the record."""
    record = {"step": step, "dir": dirname, "state": RUNNING, "host": socket.gethostname(), "pid": os.getpid(),
              "started": time.time(), "mlflow_run_id": run_id, "inputs": inputs}
    write_json_atomic(folder / STATUS, record)
    return record


def write_finished(folder: Path, record: dict, state: str, **details) -> None:
    """Close the running `record` as `state` (failed, stopped), with its `error`."""
    write_json_atomic(folder / STATUS, {**record, "state": state, "finished": time.time(), **details})


def commit(tmp: Path, final: Path, record: dict, summary: dict) -> None:
    """Mark the step in `tmp` succeeded and rename it to `final`, so that a crash or a power loss at any point
    leaves either an unfinished `.tmp` folder or a complete final one: the files reach the disk first, then the
    success record (which lists every file and its size), then the rename."""
    files = {name: size for name, size in fsync_tree(tmp).items() if name != STATUS}  # the record itself changes
    write_json_atomic(tmp / STATUS, {**record, "state": SUCCEEDED, "finished": time.time(), "summary": summary,
                                     "files": files})
    os.replace(tmp, final)
    fsync_dir(final.parent)


def finish_commit(root: Path, dirname: str) -> bool:
    """Finish the commit of a step whose process died after its success record but before the rename: rename
    its `.tmp` folder when every file the record lists is there at its size (True); otherwise leave it to be rerun
    (False). A step whose final folder exists needs nothing."""
    tmp, final = root / f"{dirname}.tmp", root / dirname
    try:
        record = read_json(tmp / STATUS)
    except (FileNotFoundError, ValueError):
        return False
    if record.get("state") != SUCCEEDED or (final / STATUS).is_file():
        return False
    listed = record.get("files")
    if not isinstance(listed, dict) or any(not (tmp / name).is_file() or (tmp / name).stat().st_size != size
                                           for name, size in listed.items()):
        return False
    if final.exists():  # left without a success record (step_state ignores it): replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(root)
    return True


def ensure_failed(folder: Path, step: str, dirname: str, error: str) -> None:
    """Make sure the .tmp `folder` says failed, even when the process running the step died without saying so."""
    status = folder / STATUS
    if folder.is_dir():
        record = read_json(status) if status.is_file() else {"step": step, "dir": dirname}
        if record.get("state") != FAILED:
            write_json_atomic(status, {**record, "state": FAILED, "error": error, "finished": time.time()})
