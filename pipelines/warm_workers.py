"""Warm training workers: the runs of a study that ask for the same workers reuse one Ray Train worker group.

Starting a Ray Train run costs seconds before its first step (the controller, the worker processes, their torch
and DeepSpeed imports, the process group). A study trains many runs of one shape (say 1 worker of 1 CPU), so a
*lane* — one long-lived TorchTrainer run whose workers loop over jobs — trains them one after another in the same
processes, and each later run starts in about a second.

    study driver ── creates ──> WarmWorkers (an actor on the driver's node; one per study)
    executor ── start_early(spec) ──> a lane for the first training run, while the data steps run beside it
    train step task ── run(spec, fn, payload) ──> queued for the first lane of that spec to ask (a new one starts
                                                  when none will be free within a lane's start-up)
    evaluation step's task ── run(spec, execute_step, its launch) ──> a one-worker lane of the same shape
    lane (a task on the driver's node) ── TorchTrainer.fit() ──> workers: loop { next_job; fn(payload) }

What Ray Train gives a run is kept: each run has its own step folder, status, checkpoint and MLflow run (the job's
function does all that); a worker that dies mid-run makes Ray Train restart the lane's worker group, and the pool
hands the restarted group the same job again, which resumes from its checkpoint (at most `restarts` times). A run
whose function raises on a lone worker is failed at once (on one of several workers, where a peer's death also
raises, it is resumed like a death, and fails with its error once its restarts are spent); either way the lane's
worker group is restarted, so nothing of a failed run lingers in the processes that train the next one. A worker
that dies between runs is replaced the same way, and no job is handed to two groups. An idle lane gives its CPUs
back after `idle_s`, and sooner when other work needs them: at once for a job of another shape, within a second or
two for any task that waits in the cluster (an evaluation, the fit).
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import itertools
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

IDLE_S = 60.0  # how long an idle lane waits for the next run of its shape when nothing else needs its CPUs
# How long a queued job waits for a busy lane of its shape before a new lane is started for it: about a lane's
# start-up on a CPU, so a lane done with a short run sooner takes the next one, and no new lane starts for it.
NEW_LANE_WAIT_S = 10.0
DEMAND_CHECK_S = 0.5  # how often, while a lane is idle, the cluster's waiting work is looked at
RELEASE_GRACE_S = 15.0  # how long a lane let go for waiting work counts as given to it (the status lags)
LANE_RESTARTS = 100  # Ray Train restarts of one lane's worker group in all (the pool bounds each job's own)
CLOSE_WAIT_S = 30.0  # how long closing the pool waits for lanes to finish before they are killed
SPARE_CHECK_S = 10.0  # how often a running job asks whether idle CPUs may join it (SpareCores)


@dataclass(frozen=True)
class LaneSpec:
    """The workers a job needs; jobs of equal specs share lanes."""
    num_workers: int
    resources: tuple[tuple[str, float], ...]  # per worker: (("CPU", 1),) or (("CPU", 1), ("GPU", 0.5))
    use_gpu: bool
    backend: str  # the torch process group's: "gloo" or "nccl"
    start_retries: int  # Ray Train's tries to start the worker group (a try lasts its start timeout)
    env: tuple[tuple[str, str], ...] = ()  # for the lane's Ray Train controller (its start timeout)

    def describe(self) -> str:
        each = ", ".join(f"{v:g} {k}" for k, v in self.resources)
        return f"{self.num_workers} × ({each})"


@dataclass
class _Job:
    id: int
    spec: LaneSpec
    fn: str  # "module:function", imported by the workers (the pool itself imports no torch)
    payload: dict
    restarts: int  # worker-group restarts it may resume after
    queued: float = field(default_factory=time.monotonic)  # when it came
    handouts: int = 0  # times a worker group was given it: more than one means it resumes after a restart
    error: str | None = None  # the last error a worker of a multi-worker group raised (a dead peer's, perhaps)
    outcome: dict | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class _Lane:
    id: int
    spec: LaneSpec
    job: _Job | None = None  # the job in flight (handed out, not finished)
    state: str = "starting"  # starting → busy ⇄ idle → leaving
    release: bool = False  # other work waits for its resources: it leaves instead of waiting for a job
    asks: int = 0  # next_job calls: only the latest one's caller is alive (a restarted group asks anew)


class WarmWorkers:
    """The pool (a Ray actor, async): queues jobs by spec and keeps lanes to train them. Methods called by the
    step tasks: `run`; by lanes' rank-0 workers: `next_job`, `finish`; by the driver: `close`, `lanes_started`."""

    def __init__(self, root: str, node_id: str, env: dict[str, str], idle_s: float = IDLE_S):
        self.root, self.node_id, self.env, self.idle_s = root, node_id, env, idle_s
        self.token = f"{int(time.time())}-{os.getpid()}"  # names this pool's lanes apart in Ray Train's storage
        self.lanes: dict[int, _Lane] = {}
        self.queue: list[_Job] = []  # jobs waiting for an idle lane of their spec
        self.ids, self.lane_ids = itertools.count(), itertools.count()
        self.started = 0
        self.closing = False
        self.changed = asyncio.Condition()
        self.demand_watch = None  # the task that releases idle lanes for work that waits (started with the first job)
        self.recheck = None  # the timer that looks again at jobs waiting for a busy lane (_balance)

    async def run(self, spec: LaneSpec, fn: str, payload: dict, restarts: int) -> dict:
        """Run `fn(payload)` ("module:function") on every worker of a lane of `spec`; returns the outcome: {} when
        it returned on every worker ({"result": what rank 0's call returned} when that is not None), else
        {"error": one line, "no_room": whether the workers never found room in the cluster}. A worker group that
        dies mid-job is restarted and resumes the job, up to `restarts` times."""
        job = _Job(next(self.ids), spec, fn, payload, restarts)
        self._watch_demand()
        async with self.changed:
            self.queue.append(job)
            self._balance()
            self.changed.notify_all()
        await job.done.wait()
        return job.outcome

    async def start_early(self, spec: LaneSpec) -> None:
        """Start a lane of `spec` before any job of it comes: its start-up (process starts and imports, ~10 s on a
        CPU) then overlaps the study's data steps. It takes the first job of its spec, or leaves like any idle lane
        (after `idle_s`, or at once for work that waits for its CPUs)."""
        self._watch_demand()
        async with self.changed:
            if not self.closing:
                self._start_lane(spec)

    async def next_job(self, lane_id: int) -> dict | None:
        """Rank 0 of a lane asks for its next job: the one in flight when its worker group was restarted (so that
        job resumes), else the next queued job of its spec; None when the lane should leave."""
        async with self.changed:
            lane = self.lanes[lane_id]
            lane.asks += 1
            ask, idle_until = lane.asks, None
            while True:
                if ask != lane.asks:  # the worker group that asked was restarted and asks again: leave it to that
                    return None
                if lane.job is not None:  # assigned, or in flight before a restart
                    job = lane.job
                    job.handouts += 1
                    if job.handouts <= 1 + job.restarts:
                        lane.state = "busy"
                        return {"id": job.id, "fn": job.fn, "payload": job.payload}
                    self._finish(lane, {"error": job.error or f"its training workers died {job.handouts - 1} times",
                                        "no_room": False})
                    continue
                job = next((j for j in self.queue if j.spec == lane.spec), None)
                if job is not None:
                    self.queue.remove(job)
                    lane.job = job
                    continue
                if self.closing or lane.release or self._others_wait(lane.spec):
                    return self._leave(lane)
                if idle_until is None:
                    lane.state, idle_until = "idle", time.monotonic() + self.idle_s
                    self._balance()
                left = idle_until - time.monotonic()
                if left <= 0:
                    return self._leave(lane)
                try:
                    await asyncio.wait_for(self.changed.wait(), timeout=left)
                except asyncio.TimeoutError:
                    pass

    async def finish(self, lane_id: int, job_id: int, error: str | None = None, retry: bool = False,
                     result: object = None) -> None:
        """A lane's job ended: returned on every worker (no error; rank 0's `result`), or raised on one (the first
        error wins). With
        `retry`, the error may be a dead peer's doing: the job stays in flight, for the restarted group to resume
        (and fails with this error once its restarts are spent)."""
        async with self.changed:
            lane = self.lanes.get(lane_id)
            if lane and lane.job and lane.job.id == job_id:
                if retry:
                    lane.job.error = lane.job.error or error
                else:
                    self._finish(lane, {"error": error, "no_room": False} if error else
                                 {} if result is None else {"result": result})
                    lane.state = "idle"  # its rank 0 asks for the next job now (after a restart, on error)
            self.changed.notify_all()

    async def close(self, timeout_s: float = CLOSE_WAIT_S) -> None:
        """Idle lanes leave now, busy ones after their job; waits up to `timeout_s` for every lane to end."""
        async with self.changed:
            self.closing = True
            self.changed.notify_all()
        deadline = time.monotonic() + timeout_s
        while self.lanes and time.monotonic() < deadline:
            await asyncio.sleep(0.2)

    def threads(self, lane_id: int, own: int) -> int:
        """The threads a one-worker lane's job may use now: its `own` CPUs, plus the cluster's free ones and those
        idle lanes hold, when it is the only job left on a one-node cluster (the last run of a study, which would
        leave cores idle). A job that comes to an idle lane takes its CPU back at the next look (SpareCores)."""
        import ray

        lane = self.lanes.get(lane_id)
        busy = [other for other in self.lanes.values() if other.job is not None]
        if not lane or lane.spec.num_workers != 1 or self.queue or len(busy) != 1 or busy[0] is not lane:
            return own
        if sum(node["Alive"] for node in ray.nodes()) != 1:  # free CPUs elsewhere are of no use to this worker
            return own
        idle = sum(dict(other.spec.resources).get("CPU", 0.0) * other.spec.num_workers for other in self.lanes.values()
                   if other is not lane and other.state == "idle")  # held for a next job that has not come
        return own + int(ray.available_resources().get("CPU", 0.0) + idle)

    def lanes_started(self) -> int:
        """How many lanes (Ray Train runs) this pool has started."""
        return self.started

    async def _release_for_waiting_work(self) -> None:
        """While lanes are idle: when work outside the pool (an evaluation, a fit) waits for resources that idle
        lanes hold, on two looks in a row (not a task the scheduler is about to place), release just enough of
        them."""
        loop, before = asyncio.get_running_loop(), {}
        released: list[tuple[float, dict[str, float]]] = []  # (when, what) lanes were let go for waiting work
        while not self.closing:
            await asyncio.sleep(DEMAND_CHECK_S)
            if not any(lane.state == "idle" and lane.job is None for lane in self.lanes.values()):
                before = {}
                continue
            try:
                waiting = await loop.run_in_executor(None, _waiting_resources)
            except Exception:  # the cluster's status is out of reach this time
                continue
            needed = {k: min(v, before.get(k, 0.0)) for k, v in waiting.items()}
            before = waiting
            # The cluster's status lags: a task that a released lane's CPUs already went to is still listed as
            # waiting for a few seconds. What was released lately counts as given, or every idle lane would go.
            released = [(at, held) for at, held in released if time.monotonic() - at < RELEASE_GRACE_S]
            for _, held in released:
                needed = {k: v - held.get(k, 0.0) for k, v in needed.items()}
            async with self.changed:
                for lane in self.lanes.values():
                    if not any(v > 0 for v in needed.values()):
                        break
                    held = {k: v * lane.spec.num_workers for k, v in lane.spec.resources}
                    if lane.state == "idle" and lane.job is None and any(held.get(k) for k, v in needed.items() if v):
                        lane.release = True
                        released.append((time.monotonic(), held))
                        needed = {k: v - held.get(k, 0.0) for k, v in needed.items()}
                self.changed.notify_all()

    def _watch_demand(self) -> None:
        """Start the task that releases idle lanes for work that waits (once, from the pool's event loop)."""
        if self.demand_watch is None:
            self.demand_watch = asyncio.get_running_loop().create_task(self._release_for_waiting_work())

    def _others_wait(self, spec: LaneSpec) -> bool:
        """Work of another spec waits: a queued job, or a lane still starting (its workers may need our CPUs)."""
        return any(j.spec != spec for j in self.queue) or \
            any(lane.spec != spec and lane.state == "starting" for lane in self.lanes.values())

    def _leave(self, lane: _Lane) -> None:  # what next_job returns to a lane that leaves
        lane.state = "leaving"
        self._balance()
        return None

    def _finish(self, lane: _Lane, outcome: dict) -> None:
        job, lane.job = lane.job, None
        job.outcome = outcome
        job.done.set()

    def _balance(self) -> None:
        """Start lanes for the queued jobs that no idle or starting lane of their spec will take: at once for a
        spec with no lane at all, else once a job has waited NEW_LANE_WAIT_S for a busy lane of its spec. The jobs
        stay queued, and the first lane of their spec that asks takes them: a grid of short runs trains on one warm
        lane, each run after the one before, instead of paying a new lane's start-up (~10 s, 15 CPU-seconds) for
        every run that comes while the lane is busy."""
        now, next_look = time.monotonic(), None
        for spec in {j.spec for j in self.queue}:
            lanes = [lane for lane in self.lanes.values() if lane.spec == spec and lane.state != "leaving"]
            free = sum(lane.state in ("idle", "starting") and lane.job is None for lane in lanes)
            uncovered = [j for j in self.queue if j.spec == spec][free:]
            if uncovered and not lanes:  # nothing of this spec to wait for
                self._start_lane(spec)
                uncovered = uncovered[1:]
            for job in uncovered:
                if now - job.queued >= NEW_LANE_WAIT_S:
                    self._start_lane(spec)
                else:
                    next_look = min(next_look or math.inf, job.queued + NEW_LANE_WAIT_S)
        if next_look is not None and self.recheck is None:
            self.recheck = asyncio.get_running_loop().call_later(max(0.0, next_look - now) + 0.05, self._look_again)

    def _look_again(self) -> None:
        """The recheck timer: balance again, under the pool's lock, now that waiting jobs may have waited enough."""
        async def balance():
            async with self.changed:
                self._balance()
                self.changed.notify_all()

        self.recheck = None
        asyncio.get_running_loop().create_task(balance())

    def _start_lane(self, spec: LaneSpec) -> None:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        lane = _Lane(next(self.lane_ids), spec)
        self.lanes[lane.id] = lane
        self.started += 1
        # on the driver's node, as Ray Train's controller then is: a worker node that dies takes only workers
        ref = ray.remote(_lane_main).options(
            num_cpus=0, max_retries=0, name=f"warm-workers:lane-{lane.id}",
            scheduling_strategy=NodeAffinitySchedulingStrategy(self.node_id, soft=False),
            runtime_env={"env_vars": {**self.env, **dict(spec.env)}},
        ).remote(ray.get_runtime_context().current_actor, lane.id, spec, self.root, f"{self.token}-{lane.id}")
        asyncio.get_running_loop().create_task(self._watch(lane, ref))

    async def _watch(self, lane: _Lane, ref) -> None:
        """When a lane's task ends, forget the lane; a job it held fails with the lane's error."""
        try:
            outcome = await ref
        except Exception as e:  # the lane's task died (its node, or a kill)
            outcome = {"error": _first_line(e), "no_room": False}
        async with self.changed:
            self.lanes.pop(lane.id, None)
            if lane.job is not None:
                self._finish(lane, outcome if outcome.get("error") else
                             {"error": "its training workers stopped before the run ended", "no_room": False})
            elif outcome.get("error"):  # it never started (no room for its workers, say): a job it was started
                # for fails with its error, unless another lane of the spec is there to take it
                waiting = next((j for j in self.queue if j.spec == lane.spec), None)
                if waiting and not any(other.spec == lane.spec for other in self.lanes.values()):
                    self.queue.remove(waiting)
                    waiting.outcome = outcome
                    waiting.done.set()
            self._balance()
            self.changed.notify_all()


def _waiting_resources() -> dict[str, float]:
    """The CPUs and GPUs that tasks and actors waiting in the cluster ask for, all together (what `ray status`
    lists as demands), less what is free now."""
    import ray
    from ray.autoscaler.v2.sdk import get_cluster_status

    demands = get_cluster_status(ray.get_runtime_context().gcs_address).resource_demands
    waiting: dict[str, float] = {}
    for demand in [*demands.ray_task_actor_demand, *demands.placement_group_demand]:
        for request in demand.bundles_by_count:
            for kind in ("CPU", "GPU"):
                waiting[kind] = waiting.get(kind, 0.0) + request.bundle.get(kind, 0.0) * request.count
    free = ray.available_resources()
    return {kind: max(0.0, amount - free.get(kind, 0.0)) for kind, amount in waiting.items()}


def _first_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip() and not line.startswith("Traceback")]
    return f"{type(e).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def _lane_main(pool, lane_id: int, spec: LaneSpec, root: str, name: str) -> dict:
    """A lane: one Ray Train run whose workers train the pool's jobs of `spec` until the pool lets them go.
    Returns {} or {"error": ..., "no_room": ...} when Ray Train gave up (its restarts, or no room to start)."""
    from ray.train import FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipelines.rendezvous import BoundRendezvousConfig  # these import ray.train, as the lines above
    from pipelines.steps.train_reports import LastReport

    trainer = TorchTrainer(
        _lane_loop, train_loop_config={"pool": pool, "lane": lane_id},
        scaling_config=ScalingConfig(num_workers=spec.num_workers, use_gpu=spec.use_gpu,
                                     resources_per_worker=dict(spec.resources)),
        torch_config=BoundRendezvousConfig(backend=spec.backend),
        run_config=RunConfig(name=f"lane-{name}", storage_path=str(Path(root) / "logs" / "ray-train"),
                             failure_config=FailureConfig(max_failures=LANE_RESTARTS,
                                                          controller_failure_limit=spec.start_retries),
                             logging_config=LoggingConfig(log_level="WARNING"),
                             callbacks=[LastReport(Path(root))]),
    )
    try:
        trainer.fit()
        return {}
    except Exception as e:
        no_room = type(getattr(e, "controller_failure", None)).__name__ == "WorkerGroupStartupTimeoutError"
        return {"error": _first_line(e), "no_room": no_room}


def _lane_loop(config: dict) -> None:
    """Each worker of a lane: rank 0 asks the pool for a job and hands it to the other ranks; all run it."""
    import ray
    import ray.train
    import torch.distributed as dist

    pool, lane_id = config["pool"], config["lane"]
    rank, world = dist.get_rank(), dist.get_world_size()
    device = ray.train.torch.get_device() if dist.get_backend() == "nccl" else None
    while True:
        box = [ray.get(pool.next_job.remote(lane_id)) if rank == 0 else None]
        if world > 1:
            dist.broadcast_object_list(box, src=0, device=device)
        job = box[0]
        if job is None:
            return
        module, function = job["fn"].split(":")
        global _current
        _current = (pool, lane_id)
        try:
            result = getattr(importlib.import_module(module), function)(job["payload"])
        except Exception as e:
            # Alone, a worker's error is its run's. Among several, it may come from a peer that died (a collective
            # cut short): the restarted group resumes the run, which fails only once its restarts are spent.
            error = f"warm worker {rank} failed: {type(e).__name__}: {str(e).strip()}"
            ray.get(pool.finish.remote(lane_id, job["id"], error, retry=world > 1))
            raise  # Ray Train restarts the worker group: fresh processes for what comes next
        if world > 1:
            dist.barrier()  # every rank is done before the job is
        if rank == 0:
            ray.get(pool.finish.remote(lane_id, job["id"], result=result))


_current: tuple | None = None  # in a lane's worker: (pool, lane id) of the job it runs


class SpareCores:
    """Called by a job as it runs (say after every step): every SPARE_CHECK_S, sets torch's threads to what the
    pool allows now (WarmWorkers.threads), so the last run of a study takes the cores the others left idle, and
    gives them back when other work comes."""

    def __init__(self, own: int):
        self.own, self.now, self._next = own, own, time.monotonic() + SPARE_CHECK_S

    def __call__(self) -> None:
        if _current is None or time.monotonic() < self._next:
            return
        import ray
        import torch

        self._next = time.monotonic() + SPARE_CHECK_S
        pool, lane_id = _current
        try:
            threads = ray.get(pool.threads.remote(lane_id, self.own), timeout=5)
        except Exception:  # the pool is busy or gone: keep what the job has
            return
        if threads != self.now:
            torch.set_num_threads(threads)
            self.now = threads


def pool_name(root: Path) -> str:
    """The pool's actor name: one per study folder."""
    return "arscale-warm-workers-" + hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:16]


@contextmanager
def warm_workers(root: Path, *, named: bool = True, idle_s: float = IDLE_S) -> Iterator[object]:
    """A pool for the study in `root`, on this process's node, closed (its lanes ended) when the block ends.
    `named`: the study's pool, which its train steps find by name (`find`); else a private one."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from pipelines.ray_connect import task_env

    node = ray.get_runtime_context().get_node_id()
    options = {"name": pool_name(root)} if named else {}
    pool = ray.remote(WarmWorkers).options(
        num_cpus=0, max_restarts=0, max_concurrency=1000, runtime_env={"env_vars": task_env()},
        scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False), **options,
    ).remote(str(root), node, task_env(), idle_s)
    try:
        yield pool
    finally:
        try:  # idle lanes leave (their Ray Train runs end cleanly), busy ones after their job (a stopped study's
            # runs have stopped)
            ray.get(pool.close.remote(), timeout=CLOSE_WAIT_S + 10)
        except Exception:  # the cluster is gone, or the pool with it (a second Ctrl-C goes on after the kill)
            pass
        finally:
            try:
                ray.kill(pool)  # and with it any lane still running (they are its tasks)
            except Exception:
                pass


def find(root: Path):
    """The study's pool (started by its driver), or None when it has none (a step run on its own)."""
    import ray

    try:
        return ray.get_actor(pool_name(root))
    except ValueError:
        return None
