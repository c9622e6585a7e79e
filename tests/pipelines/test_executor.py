"""The executor on a real local Ray: versioned directories, skipping, selective re-runs, failures, concurrency."""

import json
import os
import time
from dataclasses import dataclass

import pytest

from pipelines.errors import UserError
from pipelines.executor import Executor
from pipelines.step import Resources, Step, chain_priorities, topological_order
from pipelines.step_status import STEP_STOP_GRACE_S, STOP_GRACE_ENV, step_state
from pipelines.warm_workers import LaneSpec, warm_workers


@dataclass(frozen=True)
class Value:
    value: int
    fail: bool = False
    sleep: float = 0.0


def produce(config: Value, ctx) -> dict:
    """Writes its value plus the sum of its inputs' values; logs when it ran."""
    if config.fail:
        (ctx.output / "partial.txt").write_text("half done")
        raise RuntimeError(f"asked to fail (value {config.value})")
    started = time.time()
    time.sleep(config.sleep)
    total = config.value + sum(json.loads((d / "out.json").read_text())["total"] for d in ctx.inputs.values())
    (ctx.output / "out.json").write_text(json.dumps({"total": total, "start": started, "end": time.time()}))
    return {"total": total}


def dag(a=1, b=2, c=3, fail_b=False, sleep=0.0):
    """a ─► b ─► d,  c ─► d"""
    sa = Step("a", produce, Value(a, sleep=sleep))
    sb = Step("b", produce, Value(b, fail=fail_b), inputs={"a": sa})
    sc = Step("c", produce, Value(c, sleep=sleep))
    sd = Step("d", produce, Value(0), inputs={"b": sb, "c": sc})
    return sa, sb, sc, sd


def test_hash_covers_config_version_and_inputs():
    sa, sb, sc, sd = dag()
    sa2, sb2, sc2, sd2 = dag(a=10)
    assert sa.hash != sa2.hash and sb.hash != sb2.hash and sd.hash != sd2.hash  # a and what reads it
    assert sc.hash == sc2.hash  # an independent step keeps its hash
    assert Step("a", produce, Value(1), version="2").hash != sa.hash
    assert sa.dirname == f"a-{sa.hash}" and len(sa.hash) == 10


def test_the_hash_of_a_step_never_changes():
    """Studies find their finished steps by hash: computing it differently would rerun every step of every study."""
    sa, sb, *_ = dag()
    assert (sa.hash, sb.hash) == ("5856e3082d", "0e7f63fc4e")


def test_run_skip_and_rerun_only_downstream(tmp_path, ray_local):
    *_, sd = dag()
    out = Executor(tmp_path).run([sd])
    assert {n: o.state for n, o in out.items()} == {n: "succeeded" for n in "abcd"}
    assert json.loads((tmp_path / sd.dirname / "out.json").read_text())["total"] == 6
    assert step_state(tmp_path, sd.dirname)["state"] == "succeeded"
    assert not list(tmp_path.glob("*.tmp"))

    again = Executor(tmp_path).run([sd])
    assert {o.state for o in again.values()} == {"skipped"}

    *_, sd2 = dag(c=30)  # change one field of c: c and d re-run, a and b are skipped
    changed = Executor(tmp_path).run([sd2])
    assert {n: o.state for n, o in changed.items()} == {"a": "skipped", "b": "skipped", "c": "succeeded",
                                                        "d": "succeeded"}
    assert json.loads((tmp_path / sd2.dirname / "out.json").read_text())["total"] == 33


def test_a_failed_step_blocks_its_dependents_only_and_keeps_its_work(tmp_path, ray_local):
    sa, sb, sc, sd = dag(fail_b=True)
    out = Executor(tmp_path, log=lambda m: None).run([sd])
    assert {n: o.state for n, o in out.items()} == {"a": "succeeded", "b": "failed", "c": "succeeded",
                                                    "d": "blocked"}
    assert "RuntimeError: asked to fail (value 2)" == out["b"].error
    tmp = tmp_path / f"{sb.dirname}.tmp"
    status = json.loads((tmp / "STATUS.json").read_text())
    assert status["state"] == "failed" and "asked to fail" in status["error"]
    assert (tmp / "partial.txt").exists() and "RuntimeError" in (tmp / "error.log").read_text()
    assert not (tmp_path / sb.dirname).exists()  # never renamed into a "done" directory

    # fixed: the failed step and what it blocked run; finished ones are skipped
    *_, fixed = dag()
    again = Executor(tmp_path, log=lambda m: None).run([fixed])
    assert {n: o.state for n, o in again.items()} == {"a": "skipped", "b": "succeeded", "c": "skipped",
                                                      "d": "succeeded"}


def test_independent_steps_run_concurrently(tmp_path, ray_local):
    sa, _, sc, sd = dag(sleep=3.0)
    Executor(tmp_path, log=lambda m: None).run([sa, sc])
    a, c = (json.loads((tmp_path / s.dirname / "out.json").read_text()) for s in (sa, sc))
    assert a["start"] < c["end"] and c["start"] < a["end"], "a and c should overlap on 2 CPUs"


def test_steps_wait_for_free_cpus(tmp_path, ray_local):
    big = [Step(f"big{i}", produce, Value(i, sleep=2.0), resources=Resources(cpus=2)) for i in range(2)]
    Executor(tmp_path, log=lambda m: None).run(big)
    x, y = (json.loads((tmp_path / s.dirname / "out.json").read_text()) for s in big)
    assert x["end"] <= y["start"] or y["end"] <= x["start"], "two 2-CPU steps must not overlap on 2 CPUs"
    with pytest.raises(UserError, match="needs 3 CPUs but the Ray cluster has 2"):
        Executor(tmp_path).run([Step("huge", produce, Value(0), resources=Resources(cpus=3))])


def test_the_step_a_long_chain_waits_on_starts_first(tmp_path, ray_local):
    """One CPU's worth of room (2-CPU steps on 2 CPUs): `small` has more work of its own than `gate`, but `long`
    (most work) waits on `gate`, so gate starts first, then long, and small last; by own priority alone, small would
    go first (the evaluation before a confirmation run, behind the grid's smaller runs)."""
    two = Resources(cpus=2)
    gate = Step("gate", produce, Value(1, sleep=0.5), resources=two, priority=1.0)
    long = Step("long", produce, Value(2, sleep=0.5), inputs={"gate": gate}, resources=two, priority=10.0)
    small = Step("small", produce, Value(3, sleep=0.5), resources=two, priority=5.0)
    assert chain_priorities(topological_order([long, small])) == {"gate": 11.0, "long": 10.0, "small": 5.0}
    Executor(tmp_path, log=lambda m: None).run([long, small])
    starts = {s.name: json.loads((tmp_path / s.dirname / "out.json").read_text())["start"] for s in (gate, long, small)}
    assert sorted(starts, key=starts.get) == ["gate", "long", "small"], starts


def produce_and_say_where(config: Value, ctx) -> dict:
    """`produce`, and the process it ran in (steps on warm workers)."""
    (ctx.output / "pid").write_text(str(os.getpid()))
    return produce(config, ctx)


def on_warm_workers(name: str, config: Value, **inputs: Step) -> Step:
    lane = LaneSpec(num_workers=1, resources=(("CPU", 1.0),), use_gpu=False, backend="gloo", start_retries=1)
    return Step(name, produce_and_say_where, config, inputs=inputs, warm_lane=lane,
                resources=Resources(cpus=1, held_by_workers=True, cpus_per_worker=1))


@pytest.mark.slow
def test_steps_on_warm_workers_share_their_process_and_a_failed_one_fails_alone(tmp_path, ray_local):
    """Evaluations run this way: each step a job on the study's warm workers, with its own folder, status record and
    summary, and the next step in the same process; a step that fails there fails as any step does (its partial
    work and error.log kept), and the next one gets a fresh process."""
    a = on_warm_workers("a", Value(1))
    b = on_warm_workers("b", Value(2), a=a)
    failing = on_warm_workers("failing", Value(5, fail=True))
    after = on_warm_workers("after", Value(7))
    with warm_workers(tmp_path) as pool:  # the study's pool, as run_study makes it
        done = Executor(tmp_path, log=lambda m: None).run([b])
        failed = Executor(tmp_path, log=lambda m: None).run([failing])
        fresh = Executor(tmp_path, log=lambda m: None).run([after])
        lanes = ray_local.get(pool.lanes_started.remote())
    assert {n: o.state for n, o in done.items()} == {"a": "succeeded", "b": "succeeded"}
    assert done["b"].summary == {"total": 3} and step_state(tmp_path, b.dirname)["summary"] == {"total": 3}
    pid = {s.name: (tmp_path / s.dirname / "pid").read_text() for s in (a, b, after)}
    assert pid["a"] == pid["b"] != str(os.getpid())
    assert failed["failing"].state == "failed" and "RuntimeError: asked to fail (value 5)" in failed["failing"].error
    tmp = tmp_path / f"{failing.dirname}.tmp"
    assert json.loads((tmp / "STATUS.json").read_text())["state"] == "failed"
    assert (tmp / "partial.txt").exists() and "RuntimeError" in (tmp / "error.log").read_text()
    assert fresh["after"].state == "succeeded" and pid["after"] != pid["a"]
    assert lanes == 1  # Ray Train restarted the lane's worker group after the failure: no second lane


def watch_for_a_lane(config: Value, ctx) -> dict:
    """A data step that runs for up to `config.sleep` seconds, until the study's pool has started a lane, and
    records whether one started while it ran."""
    import ray

    from pipelines import warm_workers

    pool = warm_workers.find(ctx.output.parent)
    deadline = time.monotonic() + config.sleep
    while not (started := ray.get(pool.lanes_started.remote())) and time.monotonic() < deadline:
        time.sleep(0.2)
    (ctx.output / "out.json").write_text(json.dumps({"total": config.value, "lane_started_meanwhile": started > 0}))
    return {}


@pytest.mark.slow
@pytest.mark.parametrize("data_cpus", [1, 2])
def test_the_first_runs_workers_start_while_the_data_steps_run_where_the_cluster_holds_both(tmp_path, ray_local,
                                                                                            data_cpus):
    """A study's first training run does not wait for its workers' start-up after the data steps: on this 2-CPU
    cluster a data step of 1 CPU leaves room for them beside it, and the run then takes that lane; one of 2 CPUs
    does not, and the lane starts only after it."""
    data = Step("data", watch_for_a_lane, Value(1, sleep=60 if data_cpus == 1 else 5),
                resources=Resources(cpus=data_cpus))
    trained = on_warm_workers("trained", Value(2), data=data)
    with warm_workers(tmp_path) as pool:
        outcomes = Executor(tmp_path, log=lambda m: None).run([trained])
        lanes = ray_local.get(pool.lanes_started.remote())
    assert {n: o.state for n, o in outcomes.items()} == {"data": "succeeded", "trained": "succeeded"}
    record = json.loads((tmp_path / data.dirname / "out.json").read_text())
    assert record["lane_started_meanwhile"] == (data_cpus == 1)
    assert lanes == 1  # the run took the lane started early, or started the only one


def test_an_incomplete_final_directory_is_not_trusted(tmp_path, ray_local):
    sa = Step("a", produce, Value(1))
    (tmp_path / sa.dirname).mkdir()  # e.g. copied by hand, no success record
    assert step_state(tmp_path, sa.dirname)["state"] == "pending"
    assert Executor(tmp_path, log=lambda m: None).run([sa])["a"].state == "succeeded"


def test_the_checkpoint_grace_of_a_stop_is_configurable(tmp_path, monkeypatch):
    """So it fits a scheduler's window (templates set theirs above it)."""
    assert Executor(tmp_path).stop_grace_s == STEP_STOP_GRACE_S
    monkeypatch.setenv(STOP_GRACE_ENV, "45")
    assert Executor(tmp_path).stop_grace_s == 45
    for bad in ("soon", "-1", "inf"):
        monkeypatch.setenv(STOP_GRACE_ENV, bad)
        with pytest.raises(UserError, match=r"\$ARSCALE_STOP_GRACE_S must be a number of seconds, 0 or more"):
            Executor(tmp_path)
