"""Studies as Ray jobs, once submitted (cluster.submit): `arscale jobs list | status | logs | stop`.

Stopping a job sends SIGINT, which the study takes as Ctrl-C: running steps save a checkpoint, and Ray waits
for that (RAY_JOB_STOP_WAIT_TIME_S) before it kills what is left.
"""

from __future__ import annotations

import asyncio
import sys
import time

from cluster.client import job_client, reaching
from pipelines.errors import RunFailure, UserError
from pipelines.progress import duration
from pipelines.step_status import stop_grace_s

LOG_TAIL_LINES = 20
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def list_jobs(url: str) -> str:
    client = job_client(url)
    with reaching(url):
        jobs = [j for j in client.list_jobs() if j.submission_id]
    if not jobs:
        return f"no jobs on the cluster at {url}"
    jobs.sort(key=lambda j: j.start_time or 0)
    width = max(len(j.submission_id) for j in jobs)
    lines = [f"{'job':<{width}}  {'status':<9}  {'started':<19}  {'ran':>7}  study → folder"]
    for j in jobs:
        meta = j.metadata or {}
        lines.append(f"{j.submission_id:<{width}}  {j.status.value:<9}  {_time(j.start_time):<19}  "
                     f"{_ran(j.start_time, j.end_time):>7}  {meta.get('arscale.study', '?')} → "
                     f"{meta.get('arscale.out', j.entrypoint)}")
    return "\n".join(lines)


def job_status(url: str, job_id: str) -> str:
    """The job's state, study and times; for a failed job, the reason and the tail of its log."""
    client = job_client(url)
    info = _info(client, url, job_id)
    meta = info.metadata or {}
    lines = [f"job {job_id}: {info.status.value}",
             f"  study:   {meta.get('arscale.study', '?')} → {meta.get('arscale.out', '?')}",
             f"  started: {_time(info.start_time)}   ran: {_ran(info.start_time, info.end_time)}"]
    if info.status.value == "FAILED":
        # Ray's message goes on with the whole log; its first clause says why.
        reason = (info.message or "unknown").strip().splitlines()[0].split(", last available logs")[0]
        if "exit code" not in reason and info.driver_exit_code is not None:
            reason += f" (exit code {info.driver_exit_code})"
        lines.append(f"  reason:  {reason}")
        with reaching(url):
            log = client.get_job_logs(job_id).rstrip().splitlines()
        lines.append(f"  last {min(len(log), LOG_TAIL_LINES)} lines of its log:")
        lines += [f"    {line}" for line in log[-LOG_TAIL_LINES:]]
    elif info.status.value not in TERMINAL:
        lines.append(f"  follow it: arscale jobs logs {job_id} --follow")
    return "\n".join(lines)


def print_logs(url: str, job_id: str, follow: bool) -> str:
    """Print the job's log (with `follow`, until the job ends); returns its final status."""
    client = job_client(url)
    _info(client, url, job_id)  # an unknown id is an error before anything is printed
    with reaching(url):
        if follow:
            asyncio.run(_tail(client, job_id))
        else:
            sys.stdout.write(client.get_job_logs(job_id))
        return client.get_job_status(job_id).value


def stop(url: str, job_id: str, timeout: float | None = None) -> str:
    """Ask the job to stop and wait until it has; returns its final status."""
    client = job_client(url)
    info = _info(client, url, job_id)
    if info.status.value in TERMINAL:
        return info.status.value
    with reaching(url):
        client.stop_job(job_id)
        deadline = time.monotonic() + (timeout or stop_grace_s() + 60)
        while (status := client.get_job_status(job_id).value) not in TERMINAL:
            if time.monotonic() > deadline:
                raise RunFailure(f"job {job_id} is still {status} after the stop request; "
                                 f"`arscale jobs status {job_id}` shows where it is")
            time.sleep(0.5)
    return status


async def _tail(client, job_id: str) -> None:
    async for chunk in client.tail_job_logs(job_id):
        sys.stdout.write(chunk)
        sys.stdout.flush()


def _info(client, url: str, job_id: str):
    with reaching(url):
        try:
            return client.get_job_info(job_id)
        except RuntimeError as e:
            if "404" in str(e) or "does not exist" in str(e):
                raise UserError(f"no job {job_id} on the cluster at {url}; `arscale jobs list` shows its "
                                "jobs") from None
            raise


def _time(ms: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) if ms else "-"


def _ran(start_ms: int | None, end_ms: int | None) -> str:
    if not start_ms:
        return "-"
    return duration(((end_ms or time.time() * 1000) - start_ms) / 1000)
