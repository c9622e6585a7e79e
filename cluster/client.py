"""Talking to a Ray cluster's dashboard (the Jobs and State APIs): which cluster, with which token, and Ray's
connection and authentication errors turned into one-line messages that say what to do."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path

from cluster.local_cluster import load_state
from pipelines import ray_auth
from pipelines.errors import UserError

NO_CLUSTER = ("start a local cluster with `arscale cluster up`, or give a running cluster's dashboard address with "
              "--address http://HEAD:8265 (or $RAY_ADDRESS)")


def dashboard_url(address: str | None, home: Path | str | None = None) -> str:
    """--address, else $RAY_ADDRESS when it is a dashboard URL, else the local cluster's dashboard.

    Also turns on token authentication for this process when a token is at hand (pipelines.ray_auth).
    """
    local = load_state(home)
    env = os.environ.get("RAY_ADDRESS", "")
    if address:
        url = address if "://" in address else f"http://{address}"
    elif env.startswith(("http://", "https://")):
        url = env
    elif local:
        url = local.dashboard_url
    else:
        raise UserError(f"no Ray cluster to talk to: {NO_CLUSTER}")
    same = local if local and local.dashboard_url == url.rstrip("/") else None
    ray_auth.enable_client_auth(same.token if same and not same.token.startswith("$") else None)
    return url.rstrip("/")


@contextmanager
def reaching(url: str):
    """Turn Ray's errors about reaching `url` into UserErrors that name the address and the fix."""
    import requests
    from ray.exceptions import AuthenticationError

    try:
        yield
    except AuthenticationError as e:
        if "invalid" in str(e).lower() or "forbidden" in str(e).lower():
            raise UserError(f"the Ray cluster at {url} rejected the authentication token from "
                            f"{ray_auth.token_source()}: {ray_auth.HOW_TO_GET}") from None
        raise UserError(f"the Ray cluster at {url} requires an authentication token and none was found: "
                        f"{ray_auth.HOW_TO_GET}") from None
    except (ConnectionError, requests.ConnectionError):
        raise UserError(f"cannot reach a Ray cluster at {url}: {NO_CLUSTER}") from None


def job_client(url: str):
    from ray.job_submission import JobSubmissionClient

    # After Ray has set its loggers up: their INFO lines (uploading packages, closing sockets) are noise here.
    for name in ("ray", "ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk"):
        logging.getLogger(name).setLevel(logging.WARNING)
    with reaching(url):
        return JobSubmissionClient(url)

