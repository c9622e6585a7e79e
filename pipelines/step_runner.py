"""Running one step inside a Ray worker: its .tmp folder, its status records, the rename that marks it done.

A study kept in an object store (pipelines.storage) runs the same way in a local scratch folder: the step pulls
the inputs its node lacks (and what an earlier attempt left) before it runs, and pushes its folder after
(STATUS.json last).
"""

from __future__ import annotations

import shutil
import traceback
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from armodels.checkpoint import CHECKPOINT_FOLDERS
from pipelines.errors import RunFailure, StepStopped
from pipelines.step import StepContext, StepFn
from pipelines.step_status import FAILED, STOPPED, commit, write_finished, write_running
from pipelines.storage import StudyStore
from pipelines.tracking import redact_text


@dataclass(frozen=True)
class StepLaunch:
    """What a Ray worker needs to run one step: sent with the task, so the step's inputs are named by folder."""

    fn: StepFn
    config: Any
    name: str
    dirname: str
    root: Path  # the study folder (for a study in an object store: its scratch folder, the same path on every node)
    inputs: dict[str, str]  # input name → the input step's folder
    tracking_uri: str | None = None
    run_id: str | None = None  # the step's MLflow run, when the study is tracked
    store_uri: str | None = None  # the object store that keeps the study, when it is kept in one


def execute_step(launch: StepLaunch) -> dict:
    """Run one step in this process (a Ray worker): .tmp dir, status records, atomic rename on success."""
    tmp, final = launch.root / f"{launch.dirname}.tmp", launch.root / launch.dirname
    store = StudyStore(launch.store_uri) if launch.store_uri else None
    if store:  # this node may lack the inputs, or what an earlier attempt left (a checkpoint)
        for path in map(Path, launch.inputs.values()):
            store.pull(path.name, path)
        store.pull(tmp.name, tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    record = write_running(tmp, launch.name, launch.dirname, launch.run_id, launch.inputs)
    ctx = StepContext(launch.name, tmp, {k: Path(v) for k, v in launch.inputs.items()}, launch.tracking_uri,
                      launch.run_id, store)
    try:
        summary = launch.fn(launch.config, ctx) or {}
    except BaseException as e:  # KeyboardInterrupt included: the record must say the step did not finish
        (tmp / "error.log").write_text(redact_text(traceback.format_exc()))
        write_finished(tmp, record, STOPPED if isinstance(e, StepStopped) else FAILED, error=one_line_error(e))
        if store:
            try:
                # what it leaves, for the next attempt wherever it runs; kept: a checkpoint that a training worker on
                # another node pushed there. Checkpoints are the training step's to push (each time it saves one):
                # this node's copy may be older than the store's.
                store.push(tmp, tmp.name, mirror=False, exclude=CHECKPOINT_FOLDERS)
            except Exception as push_error:
                print(f"warning: could not save {tmp.name} to {store.shown}: {one_line_error(push_error)}", flush=True)
        raise
    if final.exists():  # left by hand without a success record (step_state ignores it): replace it
        shutil.rmtree(final)
    commit(tmp, final, record, summary)
    if store:
        store.push(final, launch.dirname)
        store.delete(tmp.name)
    return summary


WARM_STEP_RESTARTS = 3  # a step on warm workers whose worker dies runs again in the restarted group, this often


def execute_on_warm_workers(launch: StepLaunch, lane, restarts: int = WARM_STEP_RESTARTS) -> dict:
    """Run one step as a job on the study's warm workers of shape `lane` (a pipelines.warm_workers.LaneSpec), from
    a task that holds no resources of its own: `execute_step` there, with all it does (the step's folder, status
    records, the object store). A step run outside a study brings a pool of its own. A worker that dies mid-step
    is replaced and the step runs again from the start, up to `restarts` times."""
    import ray

    from pipelines import warm_workers

    study_pool = warm_workers.find(launch.root)
    with nullcontext(study_pool) if study_pool else warm_workers.warm_workers(launch.root, named=False) as pool:
        outcome = ray.get(pool.run.remote(lane, f"{__name__}:_warm_job", {"launch": launch}, restarts))
    if outcome.get("error"):
        raise RunFailure(outcome["error"])
    return outcome.get("result") or {}


def _warm_job(payload: dict) -> dict:
    return execute_step(payload["launch"])


def one_line_error(e: BaseException) -> str:
    """The error's first line, fit for logs and records (URIs in it redacted)."""
    text = redact_text(str(e)).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__
