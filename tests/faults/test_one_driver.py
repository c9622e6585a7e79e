"""One driver per study: the study folder's lock is atomic (concurrent starts: exactly one wins), names its holder,
is taken over only from a process of this host that is gone, and a study in an object store is held by a lease
that two clusters cannot both take. Concurrent writers of one JSON file never write into each other's temp file."""

import json
import multiprocessing
import os
import re
import socket
import subprocess
import threading
import time

import pytest

from armodels.files import read_json, write_json_atomic
from pipelines.errors import UserError
from pipelines.step_status import process_start
from pipelines.storage import StudyStore
from pipelines.study import LOCK_FILE, STORE_LOCK, StoreLock, StudyLock

FORK = multiprocessing.get_context("fork")  # a start in microseconds: the racers really race


def _race_for_the_lock(out, barrier, results):
    barrier.wait()
    try:
        with StudyLock(out):
            results.put("won")
            time.sleep(0.3)  # hold it while the others try
    except UserError as e:
        results.put(str(e))
    os._exit(0)


def test_concurrent_starts_exactly_one_wins(tmp_path):
    for trial in range(20):
        out = tmp_path / str(trial)
        out.mkdir()
        barrier, results = FORK.Barrier(3), FORK.SimpleQueue()  # writes before the child exits
        racers = [FORK.Process(target=_race_for_the_lock, args=(out, barrier, results)) for _ in range(3)]
        for p in racers:
            p.start()
        for p in racers:
            p.join(timeout=30)
        outcomes = [results.get() for _ in racers if not results.empty()]
        assert outcomes.count("won") == 1, (trial, outcomes)
        for refused in (o for o in outcomes if o != "won"):
            assert refused.startswith(f"study {out} is already running (pid ")
            assert f" on {socket.gethostname()} since " in refused


def test_a_lock_is_taken_over_only_from_a_process_of_this_host_that_is_gone(tmp_path):
    lock = tmp_path / LOCK_FILE
    # a process of this host that is gone: taken over
    gone = subprocess.Popen(["true"])
    gone.wait()
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": gone.pid, "since": time.time()}))
    with StudyLock(tmp_path):
        assert read_json(lock)["pid"] == os.getpid()
    assert lock.read_text() == ""  # released
    # a live process of this host that no longer holds the flock, its pid reused by another process: taken over
    other = subprocess.Popen(["sleep", "30"])
    try:
        lock.write_text(json.dumps({"host": socket.gethostname(), "pid": other.pid,
                                    "process_start": process_start(other.pid) - 1, "since": time.time()}))
        with StudyLock(tmp_path):
            pass
        # the same live process: refused, naming it
        lock.write_text(json.dumps({"host": socket.gethostname(), "pid": other.pid,
                                    "process_start": process_start(other.pid), "since": time.time()}))
        with pytest.raises(UserError, match=rf"already running \(pid {other.pid} on {socket.gethostname()} since"):
            with StudyLock(tmp_path):
                pass
    finally:
        other.kill()
    # another host's record cannot be checked from here: refused, saying what to do
    lock.write_text(json.dumps({"host": "node-7", "pid": 1234, "since": time.time()}))
    with pytest.raises(UserError, match=rf"locked by pid 1234 on node-7 since .*; if that run is over, delete {lock}"):
        with StudyLock(tmp_path):
            pass


def test_concurrent_json_writes_never_collide(tmp_path):
    path, errors = tmp_path / "study.json", []

    def write(i):
        try:
            for _ in range(20):
                write_json_atomic(path, {"writer": i, "padding": "x" * 10_000})
        except Exception as e:
            errors.append(e)

    writers = [threading.Thread(target=write, args=(i,)) for i in range(40)]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    assert not errors and read_json(path)["writer"] in range(40)
    assert [p.name for p in tmp_path.iterdir()] == ["study.json"]  # no temp file left behind


def test_two_drivers_on_one_store_prefix_one_wins_and_a_dead_drivers_lease_runs_out(s3, monkeypatch):
    monkeypatch.setattr(StoreLock, "SETTLE_S", 0.5)
    monkeypatch.setattr(StoreLock, "TTL_S", 3.0)
    uri = s3.uri("studies/locked")
    outcomes, barrier = [], threading.Barrier(2)

    def start():
        lock = StoreLock(StudyStore(uri))
        barrier.wait()
        try:
            with lock:
                outcomes.append("won")
                time.sleep(2)
        except UserError as e:
            outcomes.append(str(e))

    drivers = [threading.Thread(target=start) for _ in range(2)]
    for d in drivers:
        d.start()
    for d in drivers:
        d.join()
    assert outcomes.count("won") == 1, outcomes
    assert "was started by another driver at the same time" in next(o for o in outcomes if o != "won")

    store = StudyStore(uri)
    assert not store.exists(STORE_LOCK)  # released at the end
    # a running driver's lease is renewed and refuses others; once it dies its lease runs out and is taken
    holder = StoreLock(store).__enter__()
    time.sleep(StoreLock.TTL_S * 1.2)  # renewed meanwhile
    with pytest.raises(UserError, match=rf"study {re.escape(store.shown)} is already running \(pid {os.getpid()} on "):
        StoreLock(store).__enter__()
    holder._stop.set()  # the holder dies without releasing
    holder._renewer.join()
    time.sleep(StoreLock.TTL_S)
    with StoreLock(store):
        assert store.read_json(STORE_LOCK)["owner"]
