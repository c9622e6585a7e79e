"""A local multi-node Ray cluster on 127.0.0.1 started as a user starts it (`arscale cluster up`, a subprocess), so
the test process never joins it; its state folder and token are in a temporary folder ($ARSCALE_HOME,
$RAY_AUTH_TOKEN_PATH)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

from tests.support.cli import ROOT


class Cluster:
    """A local cluster, and the environment its commands run in."""

    def __init__(self, home: Path, env: dict | None = None):
        self.home = home
        self.token = home / "auth_token"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        self.env.update(ARSCALE_HOME=str(home), RAY_AUTH_TOKEN_PATH=str(self.token), **(env or {}))

    def arscale(self, *args, timeout: float = 300, **env) -> subprocess.CompletedProcess:
        """Run `arscale ARGS` with this cluster's environment, changed by `env` (None removes a variable)."""
        env = {k: v for k, v in {**self.env, **env}.items() if v is not None}
        return subprocess.run([sys.executable, "-m", "pipelines.cli", *map(str, args)], capture_output=True,
                              text=True, cwd=ROOT, env=env, timeout=timeout)

    @property
    def state(self) -> dict:
        return json.loads((self.home / "cluster.json").read_text())

    def processes(self, state: dict) -> list[psutil.Process]:
        sessions = {n["session"] for n in state["nodes"]}
        found = []
        for p in psutil.process_iter():
            try:
                if os.getsid(p.pid) in sessions:
                    found += [p, *p.children(recursive=True)]
            except (psutil.Error, OSError):
                pass
        return found


@contextmanager
def cluster_up(home: Path, workers: int, env: dict | None = None) -> Iterator[Cluster]:
    """`arscale cluster up` with a head and `workers` worker nodes of 1 CPU each, its nodes started in the
    environment `env` adds to; `arscale cluster down` at the end (every process `up` started)."""
    cluster = Cluster(home, env)
    try:
        up = cluster.arscale("cluster", "up", "--workers", workers, "--cpus-per-node", 1)
        assert up.returncode == 0, up.stdout + up.stderr
        yield cluster
    finally:
        cluster.arscale("cluster", "down")  # done by a test already, unless it failed earlier
