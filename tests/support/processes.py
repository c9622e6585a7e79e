"""Faults made the way they happen: wait until a training run has saved a checkpoint, then kill processes with
SIGKILL (no chance to clean up), one by name or a whole `ray start` session at once, as a machine that dies."""

from __future__ import annotations

import os
import subprocess
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
