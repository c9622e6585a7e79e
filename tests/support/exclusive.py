"""Tests side by side (`pytest -n 2`, pytest-xdist): which run together, and which alone.

Most tests can share the machine with another test: each has its own Ray, folders and ports. A test marked
`exclusive` cannot: it kills processes by name (every training worker on the machine), or it waits on timings that
a second test's load would stretch (a node's death noticed, a killed process's restart). Around each test, every
xdist worker takes one lock file: shared for an ordinary test, exclusive for an `exclusive` one, so an exclusive
test waits for the test running beside it to end and runs alone.

A plain shared/exclusive lock lets a stream of shared holders starve the exclusive one (there is always a test
running somewhere). A second lock, the turnstile, orders them: every test passes through it to take the main lock,
and an exclusive test keeps it until the main lock is its, so no new test starts in the meantime.

The tests of a module run on one worker, so its module fixtures are made once; each worker makes the session
fixtures (its own Ray, the tiny study) it needs.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

MARKER = "exclusive"


class MachineLock:
    """The two lock files of one `pytest -n` run (named by xdist's run id, shared by its workers)."""

    def __init__(self, run_id: str):
        base = Path(tempfile.gettempdir()) / f"arscale-tests-{run_id}"
        self._turnstile = open(f"{base}.turnstile", "a")  # noqa: SIM115 (held for the session)
        self._main = open(f"{base}.main", "a")  # noqa: SIM115

    @contextmanager
    def hold(self, exclusive: bool):
        fcntl.flock(self._turnstile, fcntl.LOCK_EX)
        try:
            fcntl.flock(self._main, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        finally:
            fcntl.flock(self._turnstile, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(self._main, fcntl.LOCK_UN)


def machine_lock() -> MachineLock | None:
    """The lock of this xdist run, or None when the tests run in one process (nothing runs beside them)."""
    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    return MachineLock(run_id) if run_id and os.environ.get("PYTEST_XDIST_WORKER") else None


SHARED_FIXTURES = ("tiny_study",)  # session fixtures that some tests change: their modules keep their order


def slow_modules_first(items: list) -> list:
    """The tests in the order xdist hands them out (`--dist loadscope --no-loadscope-reorder`: a module at a time,
    to one worker, so its module fixtures are made once): the modules with the most slow tests first, so that the
    longest work starts early and no worker is left alone with it at the end. Modules that use one of
    SHARED_FIXTURES move as one block, in their own order (tests/pipelines/test_study_e2e.py adds to the tiny
    study's folder, after the others have read it)."""
    def module(item) -> str:
        return item.nodeid.split("::")[0]

    shared = {module(i): f for i in items for f in SHARED_FIXTURES if f in i.fixturenames}
    blocks: dict[str, list] = {}
    for item in items:
        blocks.setdefault(shared.get(module(item), module(item)), []).append(item)
    ordered = sorted(blocks.values(), key=lambda tests: -sum(bool(t.get_closest_marker("slow")) for t in tests))
    return [item for tests in ordered for item in tests]
