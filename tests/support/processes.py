"""Faults made the way they happen: wait until a training run has saved a checkpoint, then kill processes with
SIGKILL (no chance to clean up), one by name or a whole `ray start` session at once, as a machine that dies."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import psutil

CHECKPOINT = "checkpoint/state.json"  # written last when a training run saves a checkpoint


def wait_for(condition: Callable[[], object], what: str, *, timeout: float = 300, interval: float = 0.05,
             process: subprocess.Popen | None = None, details: Callable[[], object] | None = None) -> None:
    """Poll `condition` until it is true; an AssertionError after `timeout` seconds, or as soon as `process` (the
    one expected to make it true) has ended, followed by `details()` (its log, say)."""
    deadline = time.monotonic() + timeout
    while not condition():
        ended = process is not None and process.poll() is not None
        if ended or time.monotonic() >= deadline:
            reason = f"the process ended (exit code {process.returncode})" if ended else f"timed out ({timeout:g}s)"
            message = f"{reason} waiting for {what}"
            if details is not None:
                try:
                    message += f"\n{details()}"
                except Exception as e:  # e.g. the output of a process that is still running
                    message += f"\n(no details: {e!r})"
            raise AssertionError(message)
        time.sleep(interval)


def wait_for_checkpoint(folder: Path, pattern: str = CHECKPOINT, **options) -> Path:
    """Wait (see `wait_for`) until a training run in `folder` has saved a checkpoint: a file matching `pattern`
    (a glob, e.g. "train-*.tmp/" + CHECKPOINT in a study folder); returns it."""
    found: list[Path] = []

    def saved() -> bool:
        found[:] = folder.glob(pattern)
        return bool(found)

    wait_for(saved, f"a checkpoint ({folder / pattern})", **options)
    return found[0]


def session_of(process: psutil.Process) -> int | None:
    try:
        return os.getsid(process.pid)
    except OSError:
        return None


def named(processes: Iterable[psutil.Process], name: str) -> list[psutil.Process]:
    """The processes with `name` in their command line (from `psutil.process_iter(["cmdline"])`)."""
    return [p for p in processes if any(name in part for part in p.info["cmdline"] or [])]


def kill(processes: Iterable[psutil.Process]) -> list[psutil.Process]:
    """SIGKILL them all at once and wait (up to 10 s) until they are gone; returns them."""
    victims = list(processes)
    for p in victims:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(victims, timeout=10)
    return victims


def kill_named(name: str) -> list[psutil.Process]:
    """Kill every process with `name` in its command line (a training worker: "RayTrainWorker")."""
    return kill(named(psutil.process_iter(["cmdline"]), name))


def kill_session(session: int) -> list[psutil.Process]:
    """Kill every process of a session (a node's `ray start`) at once, as a machine that dies."""
    return kill(p for p in psutil.process_iter(["cmdline"]) if session_of(p) == session)


def listening_sockets(pid: int | None = None) -> tuple[list, list]:
    """(every socket this process (or process `pid`) and its descendants listen on, those of them not on a loopback
    address, each as (address, process name))."""
    root = psutil.Process(pid)
    ours = {p.pid for p in root.children(recursive=True)} | {root.pid}
    listening = [c for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.pid in ours]
    exposed = []
    for c in listening:
        address = ipaddress.ip_address(c.laddr.ip)
        address = getattr(address, "ipv4_mapped", None) or address
        if not address.is_loopback:
            try:
                exposed.append((c.laddr, psutil.Process(c.pid).name()))
            except psutil.NoSuchProcess:
                exposed.append((c.laddr, c.pid))
    return listening, exposed


class ListeningSockets:
    """Samples listening_sockets() every `every` seconds while the `with` block runs: `seen` (any socket listened
    on), `exposed` (those not on loopback)."""

    def __init__(self, every: float = 0.1):
        self.every, self.seen, self.exposed = every, False, set()
        self._done = threading.Event()

    def _sample(self) -> None:
        while not self._done.wait(self.every):
            listening, exposed = listening_sockets()
            self.seen |= bool(listening)
            self.exposed.update((str(a), str(n)) for a, n in exposed)

    def __enter__(self):
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()
