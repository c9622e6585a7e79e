"""Studies as Ray jobs: `arscale submit` (following and stopping them: cluster.jobs).

A job carries its own code: the packages arscale is made of (as the runtime environment's py_modules, so no
virtual environment, study folder or data set is uploaded) and the study's config (the job's working_dir holds
only that file). Its entrypoint is `python -m pipelines.cli study run study.yaml --out STORAGE/<study name>` on the
head node, which reaches the cluster through the RAY_ADDRESS that Ray sets for it.

The study folder is on the storage path: a path every node sees (a local path for a local cluster, a shared
filesystem for a real one), or an object-store URI (s3://bucket/prefix, ...: see pipelines.storage). So submitting
the same study again after a failure or a stop resumes it: finished steps are skipped, and an interrupted training
run goes on from its checkpoint.

No credentials travel with a job: its entrypoint, metadata and runtime environment (env_vars included) are shown
to anyone who can reach the cluster's dashboard (`ray job list`, the Jobs API). So a storage URI with credentials
in it (s3://KEY:SECRET@bucket, ?secret_key=...) is refused, and the nodes use their own: their environment
(AWS_* variables), ~/.aws, or an instance role.
"""

from __future__ import annotations

import argparse
import importlib
import secrets
import shlex
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from cluster import jobs
from cluster.client import job_client, reaching
from cluster.commands import cluster_options, cluster_url
from pipelines.config import load_config
from pipelines.errors import RunFailure, UserError
from pipelines.step_status import STOP_GRACE_ENV, stop_grace_s
from pipelines.storage import StudyStore, is_uri, join_uri
from pipelines.study import run_study
from pipelines.tracking import redact_uri, uri_secrets, without_credentials

CONFIG_NAME = "study.yaml"  # the config's name in the job's working_dir
PACKAGES = ("pipelines", "armodels", "scaling", "cluster")
EXCLUDES = ["__pycache__", "*.pyc", ".pytest_cache"]


def add_parsers(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("submit", parents=[common, *cluster_options()],
                       description="Submit a study as a Ray job. Its folder is STORAGE/<study name>; submitting "
                                   "the same study again resumes it.")
    p.add_argument("config", nargs="?", help="study YAML file or preset name (default: text-default)")
    p.add_argument("--storage", help="where study folders go: a path every node sees, or an object-store URI "
                                     "such as s3://bucket/studies (default: ./studies)")
    p.add_argument("--wait", action="store_true", help="follow the job's log until it ends")
    p.add_argument("--dry-run", action="store_true", help="print the job and the study's plan; submit nothing")
    p.set_defaults(handler=cmd_submit)


def cmd_submit(args) -> int:
    if args.dry_run:
        return _submit_dry_run(args)
    url = cluster_url(args)
    submission = submit(args.config, url, args.storage)
    print(f"job {submission.job_id} submitted to {url}")
    print(f"  study folder: {submission.out}")
    print(f"  follow it:    arscale jobs logs {submission.job_id} --follow")
    print(f"  its state:    arscale jobs status {submission.job_id}")
    print(f"  stop it:      arscale jobs stop {submission.job_id}   (submit the same config again to resume)")
    if args.wait:
        print(flush=True)
        wait(url, submission)
        print(f"job {submission.job_id} succeeded; `arscale study status {submission.out}` shows its steps")
    return 0


def _submit_dry_run(args) -> int:
    """What `submit` would send, and the study's plan as the cluster would see it now (no cluster needed)."""
    cfg, path, out = prepare(args.config, args.storage)
    print(f"dry run: would submit `{entrypoint(out)}` with {path} as {CONFIG_NAME} and the packages "
          f"{', '.join(PACKAGES)} to {args.address or 'the cluster'}")
    run_study(cfg, path, out, dry_run=True, check_inputs=False)  # the corpus paths are the cluster's
    return 0


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


def wait(url: str, submission: Submission) -> None:
    """Follow a job's log until it ends; RunFailure unless it succeeded."""
    status = jobs.print_logs(url, submission.job_id, follow=True)
    if status != "SUCCEEDED":
        raise RunFailure(f"job {submission.job_id} {status.lower()}: `arscale jobs status {submission.job_id}` "
                         f"shows why; submit it again to resume")


def _package_dir(name: str) -> Path:
    return Path(importlib.import_module(name).__file__).parent
