"""Connecting to Ray: an existing cluster by address, or a private local one bound to 127.0.0.1."""

from __future__ import annotations

import os
import socket
import sys

from pipelines import loopback, ray_auth
from pipelines.errors import UserError

# Settings for the processes Ray starts. Ray Train's print patch routes worker prints through a logger that
# echoes them twice; its preemption watcher only matters on spot instances and logs a warning per run here.
WORKER_ENV = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
# "0": a local Ray starts without its dashboard (a headless machine, CI): ~1.5 s sooner, and no dashboard processes
# taking ~5% of a core while it runs. Nothing arscale does in a study needs the dashboard.
DASHBOARD_ENV = "ARSCALE_RAY_DASHBOARD"


def connect(address: str | None = None, *, num_cpus: int | None = None, num_gpus: float | None = None,
            quiet: bool = True) -> str:
    """Start or join Ray; returns the dashboard URL (empty if there is none).

    With no address (and no RAY_ADDRESS), a local cluster is started on 127.0.0.1 only, so nothing listens on
    the machine's public interfaces; its dashboard binds to 127.0.0.1 as well ($ARSCALE_RAY_DASHBOARD=0: no
    dashboard). That, and joining a cluster at a 127.0.0.1 address (`arscale cluster up`), needs Ray's loopback
    mode (pipelines.loopback). With a token at hand, requests carry it (pipelines.ray_auth).
    """
    if not sys.stdout.isatty():  # plain lines in log files: no colour codes, no "[repeated 2x]" merging and banner
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")  # read when ray is first imported, so before that
    import ray

    ray_auth.secure_token_file()
    if ray.is_initialized():
        return ""
    address = address or os.environ.get("RAY_ADDRESS")
    if not address or loopback.is_loopback(address):
        loopback.use_loopback()
    if address:
        ray_auth.enable_client_auth()
    common = dict(log_to_driver=True, logging_level="ERROR" if quiet else "INFO", configure_logging=True,
                  runtime_env={"env_vars": WORKER_ENV})
    if address:
        _check_answers(address)
        context = ray.init(address=address, **common)
    else:
        dashboard = os.environ.get(DASHBOARD_ENV, "1") != "0"
        context = ray.init(_node_ip_address="127.0.0.1", num_cpus=num_cpus, num_gpus=num_gpus,
                           include_dashboard=dashboard, dashboard_host="127.0.0.1", **common)
    ray_auth.secure_token_file()  # one Ray may have just generated
    return f"http://{context.dashboard_url}" if getattr(context, "dashboard_url", None) else ""


def _check_answers(address: str) -> None:
    """Fail in seconds, with one line, when nothing listens at a cluster address (host:port): Ray would retry for
    ever, printing a warning every few seconds."""
    host, sep, port = address.split("://", 1)[-1].rstrip("/").rpartition(":")
    if address == "auto" or address.startswith("ray://") or not sep or not port.isdigit():
        return  # Ray's own discovery, Ray Client, or a form Ray checks itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as e:
        raise UserError(f"no Ray cluster answers at {address} ({e.strerror or type(e).__name__}); start one "
                        "(`arscale cluster up` prints its address) or check --address / $RAY_ADDRESS") from None


def task_env() -> dict[str, str]:
    """Environment variables for the tasks a command starts on the connected cluster (Ray passes them on to the
    tasks and actors those start): this cluster's address. Ray's own helpers in them (Ray Train's placement-group
    cleaner asks Ray's state API) otherwise look for "the" Ray of this machine, and fail with a traceback when
    another arscale command runs its own Ray beside this one ("Found multiple active Ray instances")."""
    import ray

    return {"RAY_ADDRESS": ray.get_runtime_context().gcs_address}


def cluster_gpus() -> float:
    """The GPUs of the connected Ray cluster (a local one counts this machine's, or the `num_gpus` it was told)."""
    import ray

    return ray.cluster_resources().get("GPU", 0.0)
