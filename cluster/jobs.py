"""Studies as Ray jobs: `arscale submit` and `arscale jobs list | status | logs | stop`.

A job carries its own code: the packages arscale is made of (as the runtime environment's py_modules, so no
virtual environment, study folder or data set is uploaded) and the study's config (the job's working_dir holds
only that file). Its entrypoint is `python -m pipelines.cli study run study.yaml --out STORAGE/<study name>` on the
head node, which reaches the cluster through the RAY_ADDRESS that Ray sets for it.

The study folder is on the storage path: a path every node sees (a local path for a local cluster, a shared
filesystem for a real one), or an object-store URI (s3://bucket/prefix, ...: see pipelines.storage). So submitting
the same study again after a failure or a stop resumes it: finished steps are skipped, and an interrupted training
run goes on from its checkpoint.

Stopping a job sends SIGINT, which the study takes as Ctrl-C: running steps save a checkpoint, and Ray waits
for that (RAY_JOB_STOP_WAIT_TIME_S) before it kills what is left.

No credentials travel with a job: its entrypoint, metadata and runtime environment (env_vars included) are shown
to anyone who can reach the cluster's dashboard (`ray job list`, the Jobs API). So a storage URI with credentials
in it (s3://KEY:SECRET@bucket, ?secret_key=...) is refused, and the nodes use their own: their environment
(AWS_* variables), ~/.aws, or an instance role.
"""

from __future__ import annotations

import asyncio
import importlib
import secrets
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from cluster.client import job_client, reaching
from pipelines.config import load_config
from pipelines.errors import RunFailure, UserError
from pipelines.executor import STOP_GRACE_ENV, stop_grace_s
from pipelines.progress import duration
from pipelines.storage import StudyStore, is_uri, join_uri
from pipelines.tracking import redact_uri, uri_secrets, without_credentials

CONFIG_NAME = "study.yaml"  # the config's name in the job's working_dir
PACKAGES = ("pipelines", "armodels", "scaling", "cluster")
EXCLUDES = ["__pycache__", "*.pyc", ".pytest_cache"]
LOG_TAIL_LINES = 20
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


@dataclass(frozen=True)
class Submission:
    job_id: str
    study: str
    out: str
    url: str


def study_location(storage: str | None, study: str) -> str:
    """Where the job keeps the study: STORAGE/<study>, a path every node sees or an object-store URI."""
    if storage and is_uri(storage):
        if uri_secrets(storage):
            raise UserError(f"--storage {redact_uri(storage)} holds credentials, and a job's command line and metadata "
                            "are shown to anyone who can reach the cluster's dashboard: give the nodes the store's "
                            "credentials instead (for S3: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in their "
                            "environment, ~/.aws, or an instance role) and use --storage "
                            f"{without_credentials(storage)}")
        StudyStore(storage)  # an unknown scheme is an error here, before anything is sent
        return join_uri(storage, study)
    return str(Path(storage or "studies").expanduser().absolute() / study)


def entrypoint(out: str) -> str:
    return shlex.join(["python", "-m", "pipelines.cli", "study", "run", CONFIG_NAME, "--out", str(out)])


def runtime_env(working_dir: Path) -> dict:
    return {
        "working_dir": str(working_dir),
        "py_modules": [str(_package_dir(name)) for name in PACKAGES],
        "excludes": EXCLUDES,
        # Read by the job's supervisor: stop = Ctrl-C, and time for the study to save its checkpoints (the
        # submitter's $ARSCALE_STOP_GRACE_S, passed on to the study).
        "env_vars": {"RAY_JOB_STOP_SIGNAL": "SIGINT", STOP_GRACE_ENV: f"{stop_grace_s():g}",
                     "RAY_JOB_STOP_WAIT_TIME_S": str(int(stop_grace_s()) + 30)},
    }


def prepare(config: str | None, storage: str | None):
    """The study's config, its file and its folder; a bad config is an error here, before anything is sent."""
    cfg, path = load_config(config)
    return cfg, path, study_location(storage, cfg.name)


def job_request(cfg, path: Path, out: str, staging: Path) -> dict:
    """The arguments of `JobSubmissionClient.submit_job` for the study (its config copied into `staging`): all
    of it is shown to whoever reaches the dashboard, so nothing secret goes in (see the module's docstring)."""
    shutil.copyfile(path, Path(staging) / CONFIG_NAME)
    return {"entrypoint": entrypoint(out), "runtime_env": runtime_env(Path(staging)),
            "submission_id": f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}",
            "metadata": {"arscale.study": cfg.name, "arscale.out": str(out), "arscale.config": str(path)}}


def submit(config: str | None, url: str, storage: str | None) -> Submission:
    """Submit the study as a job; returns at once."""
    cfg, path, out = prepare(config, storage)
    client = job_client(url)
    with tempfile.TemporaryDirectory(prefix="arscale-job-") as staging:
        request = job_request(cfg, path, out, Path(staging))
        with reaching(url):
            client.submit_job(**request)
    return Submission(request["submission_id"], cfg.name, str(out), url)


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


def wait(url: str, submission: Submission) -> None:
    """Follow a job's log until it ends; RunFailure unless it succeeded."""
    status = print_logs(url, submission.job_id, follow=True)
    if status != "SUCCEEDED":
        raise RunFailure(f"job {submission.job_id} {status.lower()}: `arscale jobs status {submission.job_id}` "
                         f"shows why; submit it again to resume")


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


def _package_dir(name: str) -> Path:
    return Path(importlib.import_module(name).__file__).parent


def _time(ms: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) if ms else "-"


def _ran(start_ms: int | None, end_ms: int | None) -> str:
    if not start_ms:
        return "-"
    return duration(((end_ms or time.time() * 1000) - start_ms) / 1000)
