"""Jobs for warm worker groups in tests (pipelines.warm_workers): each records which process ran it."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path


def record(payload: dict) -> None:
    """Append {"job", "pid", "at"} (and with payload["ask_threads"], "threads") to payload["log"] (every worker of
    the group), first waiting for payload["meet"] jobs to get there if it says so; then wait payload["sleep_s"],
    and raise when payload["fail"] says so."""
    if payload.get("meet"):  # wait until this many jobs have come this far (all running at once)
        arrived = Path(f"{payload['log']}.arrived")
        with open(arrived, "a") as f:
            f.write(f"{payload['job']}\n")
        deadline = time.monotonic() + 120
        while len(arrived.read_text().split()) < payload["meet"] and time.monotonic() < deadline:
            time.sleep(0.1)
    entry = {"job": payload["job"], "pid": os.getpid(), "at": time.time()}
    if payload.get("ask_threads"):  # what SpareCores would set now, for a job of one CPU
        import ray

        from pipelines import warm_workers

        pool, lane = warm_workers._current
        entry["threads"] = ray.get(pool.threads.remote(lane, 1))
    with open(payload["log"], "a") as log:
        log.write(json.dumps(entry) + "\n")
    time.sleep(payload.get("sleep_s", 0))
    if payload.get("fail"):
        raise ValueError(f"job {payload['job']} fails on purpose")


def records(log: Path) -> list[dict]:
    return [json.loads(line) for line in Path(log).read_text().splitlines()] if Path(log).is_file() else []
