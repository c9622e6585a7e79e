"""Warm worker groups (pipelines.warm_workers) on a real local Ray and real Ray Train runs: later jobs of a shape
run in the processes of the first; a failed job, or a worker killed between jobs, leaves the next job fresh
workers, and no job is lost or run twice; an idle group gives its CPUs back at once to work of another shape, and
to any task that waits for them; a job alone in the cluster may use its idle CPUs (SpareCores).
(Real training on warm workers, and a worker killed mid-run: tests/faults/test_worker_killed.py and the studies.)"""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest

from pipelines.warm_workers import LaneSpec, warm_workers
from tests.support.warm_jobs import records

pytestmark = pytest.mark.slow

ONE_CPU = LaneSpec(num_workers=1, resources=(("CPU", 1.0),), use_gpu=False, backend="gloo", start_retries=1)
RECORD = "tests.support.warm_jobs:record"


def process_id() -> int:
    return os.getpid()


def run(pool, spec: LaneSpec, job: int, log, **payload) -> dict:
    import ray

    return ray.get(pool.run.remote(spec, RECORD, {"job": job, "log": str(log), **payload}, 2), timeout=180)


def test_later_jobs_run_in_the_processes_of_the_first(ray_local, tmp_path):
    log = tmp_path / "jobs.jsonl"
    with warm_workers(tmp_path, named=False) as pool:
        outcomes = [run(pool, ONE_CPU, job, log, ask_threads=True) for job in range(3)]
        lanes = ray_local.get(pool.lanes_started.remote())
    assert outcomes == [{}, {}, {}] and lanes == 1
    ran = records(log)
    assert [r["job"] for r in ran] == [0, 1, 2] and len({r["pid"] for r in ran}) == 1, ran
    assert {r["threads"] for r in ran} == {2}, ran  # alone on Ray's 2 CPUs: the idle one joins in


def test_jobs_at_once_get_a_group_each(ray_local, tmp_path):
    log = tmp_path / "jobs.jsonl"
    with warm_workers(tmp_path, named=False) as pool, ThreadPoolExecutor(2) as threads:
        outcomes = list(threads.map(lambda job: run(pool, ONE_CPU, job, log, meet=2, ask_threads=True, sleep_s=3),
                                    range(2)))
        lanes = ray_local.get(pool.lanes_started.remote())
    ran = records(log)
    assert outcomes == [{}, {}] and lanes == 2 and len({r["pid"] for r in ran}) == 2, ran
    assert [r["threads"] for r in ran] == [1, 1], ran  # no core to spare


def test_a_job_waits_for_a_busy_lane_done_sooner_than_a_new_one_would_start(ray_local, tmp_path):
    """Two short jobs come at once to a pool with one warm lane: the second waits for it (a grid of short runs), and
    no lane starts (~10 s and 15 CPU-seconds) for it. Jobs that must run at once get a lane each after the wait
    (test_jobs_at_once_get_a_group_each)."""
    log = tmp_path / "jobs.jsonl"
    with warm_workers(tmp_path, named=False) as pool:
        assert run(pool, ONE_CPU, 0, log) == {}
        with ThreadPoolExecutor(2) as threads:
            assert list(threads.map(lambda job: run(pool, ONE_CPU, job, log), (1, 2))) == [{}, {}]
        lanes = ray_local.get(pool.lanes_started.remote())
    ran = records(log)
    assert sorted(r["job"] for r in ran) == [0, 1, 2] and len({r["pid"] for r in ran}) == 1, ran
    assert lanes == 1, lanes


def test_a_failed_job_leaves_the_next_one_fresh_workers(ray_local, tmp_path):
    log = tmp_path / "jobs.jsonl"
    with warm_workers(tmp_path, named=False) as pool:
        outcomes = [run(pool, ONE_CPU, 0, log), run(pool, ONE_CPU, 1, log, fail=True), run(pool, ONE_CPU, 2, log)]
    assert outcomes[0] == {} and outcomes[2] == {}, outcomes
    assert outcomes[1] == {"error": "warm worker 0 failed: ValueError: job 1 fails on purpose", "no_room": False}
    ran = records(log)
    assert [r["job"] for r in ran] == [0, 1, 2], ran  # each once: the failed one is not retried
    assert ran[2]["pid"] != ran[1]["pid"], ran  # not the process the failure happened in


def test_a_worker_killed_between_jobs_is_replaced_and_no_job_is_lost_or_repeated(ray_local, tmp_path):
    log = tmp_path / "jobs.jsonl"
    with warm_workers(tmp_path, named=False, idle_s=60) as pool:
        assert run(pool, ONE_CPU, 0, log) == {}
        idle_worker = records(log)[0]["pid"]
        os.kill(idle_worker, signal.SIGKILL)  # while it waits for the next job
        psutil.Process(idle_worker).wait(timeout=30) if psutil.pid_exists(idle_worker) else None
        time.sleep(1)
        outcomes = [run(pool, ONE_CPU, job, log) for job in (1, 2)]
        lanes = ray_local.get(pool.lanes_started.remote())
    ran = records(log)
    assert outcomes == [{}, {}] and [r["job"] for r in ran] == [0, 1, 2], ran
    # the lane's restarted worker group took both: a new process, kept warm
    assert lanes == 1 and idle_worker not in {r["pid"] for r in ran[1:]} and ran[1]["pid"] == ran[2]["pid"], ran


def test_an_idle_group_leaves_at_once_for_work_of_another_shape(ray_local, tmp_path):
    """Two CPUs in all: the idle group of two CPUs must give them back for a job of one, long before idle_s."""
    log = tmp_path / "jobs.jsonl"
    two_cpus = LaneSpec(num_workers=1, resources=(("CPU", 2.0),), use_gpu=False, backend="gloo", start_retries=1)
    with warm_workers(tmp_path, named=False, idle_s=600) as pool:
        assert run(pool, two_cpus, 0, log) == {}
        assert run(pool, ONE_CPU, 1, log) == {}  # times out (180 s) if the idle group kept its CPUs
        lanes = ray_local.get(pool.lanes_started.remote())
    assert lanes == 2 and [r["job"] for r in records(log)] == [0, 1]


def test_an_idle_group_gives_its_cpus_to_a_task_that_waits_for_them(ray_local, tmp_path):
    """As an evaluation step or the fit, which the pool knows nothing of, waiting for a CPU the idle group holds."""
    log = tmp_path / "jobs.jsonl"
    two_cpus = LaneSpec(num_workers=1, resources=(("CPU", 2.0),), use_gpu=False, backend="gloo", start_retries=1)
    with warm_workers(tmp_path, named=False, idle_s=600) as pool:
        assert run(pool, two_cpus, 0, log) == {}
        task = ray_local.remote(num_cpus=1, max_retries=0)(process_id)
        assert ray_local.get(task.remote(), timeout=120)  # times out if the idle group kept its CPUs
        assert run(pool, two_cpus, 1, log) == {}  # a new group, once the task is done
        lanes = ray_local.get(pool.lanes_started.remote())
    assert lanes == 2 and [r["job"] for r in records(log)] == [0, 1]


def sleep_then_say_where(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def test_a_task_that_waits_takes_one_idle_group_and_leaves_the_other_warm(ray_local, tmp_path):
    """The fit after a study's grid: one CPU wanted, two idle groups of one CPU each. One leaves for it; the other
    stays warm for the confirmation run after the fit, although the cluster's status lists the fit as waiting for
    a few seconds after it started."""
    log = tmp_path / "jobs.jsonl"
    with warm_workers(tmp_path, named=False, idle_s=600) as pool:
        with ThreadPoolExecutor(2) as threads:  # two groups, one job each at once
            assert list(threads.map(lambda job: run(pool, ONE_CPU, job, log, meet=2), (0, 1))) == [{}, {}]
        task = ray_local.remote(num_cpus=1, max_retries=0)(sleep_then_say_where)
        assert ray_local.get(task.remote(8.0), timeout=120)
        assert run(pool, ONE_CPU, 2, log) == {}
        lanes = ray_local.get(pool.lanes_started.remote())
    ran = records(log)
    assert lanes == 2, ran  # a third group would mean both left for the one task
    assert ran[2]["pid"] in {ran[0]["pid"], ran[1]["pid"]}, ran
