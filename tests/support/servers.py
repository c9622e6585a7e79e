"""Servers the tests start on 127.0.0.1: a free port for them, and a real `mlflow server` (S3: tests/support/s3.py)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from cluster.local_cluster import free_ports


def free_port() -> int:
    return free_ports(1)[0]


def start_mlflow_server(root, port: int, *, backend_store: str | None = None) -> tuple[subprocess.Popen, str]:
    """A real `mlflow server` on 127.0.0.1:port with its store in `root`; returns once it answers. With
    `backend_store` (a URI), it serves that store instead, from the folder `root`, as `mlflow ui` run there would."""
    from mlflow import MlflowClient

    store = ["--backend-store-uri", backend_store] if backend_store else [
        "--backend-store-uri", f"sqlite:///{root}/server.db", "--default-artifact-root", str(root / "artifacts")]
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), *store,
         "--workers", "1"],
        cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 240  # a loaded 2-core machine starts it slowly
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            MlflowClient(uri).search_experiments()
            return proc, uri
        except Exception:
            time.sleep(0.5)
    proc.kill()
    pytest.fail("mlflow server did not start")


def stop_mlflow_server(proc: subprocess.Popen) -> None:
    """Stop the server and its worker processes (they hold the port a restarted server needs)."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)
