"""The executor: runs a study's DAG of steps (pipelines.step) as Ray tasks, each writing one versioned directory.

Re-running a study skips every step whose directory is done (pipelines.step_status). Independent steps run
concurrently; the executor admits a step when the CPUs and GPUs it declares are free in the cluster
(pipelines.admission), and runs it as a Ray task (pipelines.step_runner).

Stopping (Ctrl-C, SIGTERM): the executor writes the file `STOP` in the study folder; long steps (training) look
for it, save a checkpoint in their .tmp dir and end as failed-with-checkpoint; the executor waits for them
(up to $ARSCALE_STOP_GRACE_S, 120 s by default) before it cancels what is left. A second Ctrl-C cancels at once.

A study kept in an object store (pipelines.storage) runs the same way in a local scratch folder, and the executor
counts a step the store holds as finished as done.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines import warm_workers
from pipelines.admission import ClusterRoom
from pipelines.errors import ClusterLost, StepStopped
from pipelines.progress import StudyProgress
from pipelines.ray_connect import task_env
from pipelines.step import Step, chain_priorities, config_dict, topological_order
from pipelines.step_runner import StepLaunch, execute_on_warm_workers, execute_step, one_line_error
from pipelines.step_status import STATUS, STOP_FILE, SUCCEEDED, ensure_failed, finish_commit, step_state, stop_grace_s
from pipelines.storage import StudyStore
from pipelines.tracking import NullStudyTracking, StudyTracking, redact_text

CLUSTER_CHECK_S = 5.0  # while steps run, how often the executor checks that the cluster still answers


@dataclass
class Outcome:
    state: str  # skipped | succeeded | failed | blocked | stopped
    seconds: float = 0.0
    error: str | None = None
    summary: dict = field(default_factory=dict)


class Executor:
    """Runs a DAG of steps on the connected Ray cluster, writing under `root`."""

    def __init__(self, root: Path, tracking: StudyTracking | None = None, log: Callable[[str], None] | None = None,
                 store: StudyStore | None = None):
        self.root = Path(root)
        self.tracking = tracking or NullStudyTracking()
        self.log = log or (lambda msg: print(msg, flush=True))
        self.store = store  # the object store that keeps the study (root is then its local scratch folder)
        self.stop_grace_s = stop_grace_s()

    def plan(self, targets: list[Step]) -> list[tuple[Step, dict]]:
        """Each step in order with its current status record (state: succeeded, failed, pending, ...)."""
        plan = []
        for step in topological_order(targets):
            state = step_state(self.root, step.dirname)
            if self.store and state["state"] != SUCCEEDED:
                stored = self.store.read_json(f"{step.dirname}/{STATUS}")
                state = stored if stored and stored.get("state") == SUCCEEDED else state
            plan.append((step, state))
        return plan

    def run(self, targets: list[Step]) -> dict[str, Outcome]:
        import ray

        for step in topological_order(targets):
            if finish_commit(self.root, step.dirname):
                self.log(f"finished the commit of {step.dirname} (its process died just before the rename)")
        plan = self.plan(targets)
        outcomes: dict[str, Outcome] = {}
        pending: list[Step] = []
        for step, state in plan:
            if state["state"] == SUCCEEDED:
                outcomes[step.name] = Outcome("skipped", summary=state.get("summary", {}))
                self._ensure_stored(step)
            else:
                pending.append(step)
        progress = StudyProgress(len(plan), {step.name: (step.work_tokens, step.work_flops)
                                             for step, _ in plan if step.work_tokens})
        for name in outcomes:
            progress.finished(name, "skipped")
        room = ClusterRoom.of_ray_cluster()
        for step in pending:  # Ray would wait for such room forever
            room.check(step)
        if pending:
            self.log(f"{len(plan) - len(pending)} of {len(plan)} steps already done; running {len(pending)}")
        chain = chain_priorities([step for step, _ in plan])  # the longest chains of work first
        self._start_lane_early(pending, outcomes, chain, room)
        remote = {"task": ray.remote(execute_step), "warm": ray.remote(execute_on_warm_workers)}
        running: dict[Any, tuple[Step, float, str | None]] = {}
        held: dict[str, list] = {}  # step name → the GPU shares it holds
        self._clear_stop()  # left by an earlier stop
        try:
            while pending or running:
                for step in [s for s in pending if self._inputs_failed(s, outcomes)]:
                    pending.remove(step)
                    outcomes[step.name] = Outcome("blocked", error="an input step failed")
                    progress.finished(step.name, "blocked")
                ready = sorted((s for s in pending if self._inputs_done(s, outcomes)), key=lambda s: -chain[s.name])
                for step in ready:
                    taken = room.take(step.resources)
                    if taken is None:
                        continue
                    pending.remove(step)
                    held[step.name] = taken
                    ref, run_id = self._launch(remote, step)
                    running[ref] = (step, time.perf_counter(), run_id)
                    progress.started(step.name)
                if not running:
                    break
                # Not waiting for ever: when the cluster's head dies, Ray reports the running steps lost at once or
                # not at all, and ends this process a minute later without a word of Python.
                done, _ = ray.wait(list(running), num_returns=1, timeout=CLUSTER_CHECK_S)
                if not done:
                    self._check_cluster(running)
                    if progress.due():
                        self.log(progress.line(self._running_folders(running)))
                    continue
                step, started, run_id = running.pop(done[0])
                room.release(step.resources, held.pop(step.name))
                outcomes[step.name] = self._collect(done[0], step, time.perf_counter() - started, run_id)
                progress.finished(step.name, outcomes[step.name].state)
                if pending or running:
                    self.log(progress.line(self._running_folders(running)))
                if outcomes[step.name].state == "failed":
                    self._check_cluster(running)
        except KeyboardInterrupt:
            self._stop(running, outcomes)
            raise
        return outcomes

    def _start_lane_early(self, pending: list[Step], outcomes: dict[str, Outcome], chain: dict[str, float],
                          room: ClusterRoom) -> None:
        """While the first steps to run are plain tasks (the corpus, the tokenizer, the shards) and the training
        runs wait for them, start the warm workers of the first training run beside them, where the cluster holds
        both: a first run's start-up (~10 s) then overlaps the data steps instead of following them."""
        pool = warm_workers.find(self.root)
        later = sorted((s for s in pending if s.trains_on or s.warm_lane), key=lambda s: -chain[s.name])
        ready = [s for s in pending if self._inputs_done(s, outcomes)]
        if pool is None or not later or not ready or any(s.trains_on or s.warm_lane for s in ready):
            return
        first = later[0]
        needs = first.resources
        if (room.total_cpus - sum(s.resources.cpus for s in ready) >= needs.cpus and room.node_cpus >= needs.on_one_node
                and room.gpu_count >= needs.gpus):
            pool.start_early.remote(first.trains_on or first.warm_lane)

    def _running_folders(self, running: dict) -> dict[str, Path]:
        """Each running step's name and the folder it writes (its progress record is there)."""
        return {step.name: self.root / f"{step.dirname}.tmp" for step, _, _ in running.values()}

    def _check_cluster(self, running: dict) -> None:
        """Raise ClusterLost when the cluster's control service (GCS, on its head node) no longer accepts
        connections; the running steps' records say why they ended."""
        import ray

        address = ray.get_runtime_context().gcs_address
        host, port = address.rsplit(":", 1)
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=CLUSTER_CHECK_S).close()
            return
        except OSError:
            pass
        for step, _, run_id in running.values():
            ensure_failed(self.root / f"{step.dirname}.tmp", step.name, step.dirname, "the Ray cluster was lost")
        raise ClusterLost(f"the Ray cluster at {address} stopped answering (its head node died, or the network to "
                          f"it); {len(running)} running step(s) ended with it")

    def _stop(self, running: dict, outcomes: dict[str, Outcome]) -> None:
        """Ask running steps to checkpoint and stop, wait for them a while, then cancel the rest."""
        import ray

        if running:
            (self.root / STOP_FILE).touch()
            if self.store:
                self._track(self.store.write_text, STOP_FILE, "")  # for steps on nodes without this folder
            self.log(f"stopping: {len(running)} running step(s) save a checkpoint first "
                     f"(up to {self.stop_grace_s:.0f}s; Ctrl-C again to stop at once)")
            deadline = time.monotonic() + self.stop_grace_s
            try:
                while running and time.monotonic() < deadline:
                    done, _ = ray.wait(list(running), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
                    for ref in done:
                        step, started, run_id = running.pop(ref)
                        outcomes[step.name] = self._collect(ref, step, time.perf_counter() - started, run_id)
            except KeyboardInterrupt:
                pass
        for ref, (step, _, run_id) in running.items():
            ray.cancel(ref, force=True)
            self._record_failure(step, run_id, "interrupted by the user")
        self._clear_stop()

    def _clear_stop(self) -> None:
        (self.root / STOP_FILE).unlink(missing_ok=True)
        if self.store:
            self._track(self.store.delete, STOP_FILE)

    def _ensure_stored(self, step: Step) -> None:
        """A step finished here whose push to the store failed (the store was down) is pushed now."""
        local = self.root / step.dirname
        if self.store and local.is_dir() and not self.store.exists(f"{step.dirname}/{STATUS}"):
            self.store.push(local, step.dirname)

    @staticmethod
    def _inputs_done(step: Step, outcomes: dict[str, Outcome]) -> bool:
        return all(outcomes.get(d.name, Outcome("pending")).state in ("skipped", "succeeded")
                   for d in step.inputs.values())

    @staticmethod
    def _inputs_failed(step: Step, outcomes: dict[str, Outcome]) -> bool:
        return any(outcomes.get(d.name, Outcome("pending")).state in ("failed", "blocked")
                   for d in step.inputs.values())

    def _launch(self, remote: dict, step: Step):
        """Start a step as a Ray task (after creating its MLflow run), or as a job on the warm workers from a task
        that holds nothing (`step.warm_lane`); returns (object ref, run id)."""
        inputs = {k: str(self.root / s.dirname) for k, s in step.inputs.items()}
        parent = step.inputs.get(step.nested_under) if step.nested_under else None
        parent_run = step_state(self.root, parent.dirname).get("mlflow_run_id") if parent else None
        run_id = self._track(self.tracking.start_step_run, step.name, step.dirname, config_dict(step.config),
                             {k: s.dirname for k, s in step.inputs.items()}, parent_run)
        # a step whose workers hold its resources runs as a task that holds none
        cpus = 0 if step.resources.held_by_workers else step.resources.cpus
        gpus = 0 if step.resources.held_by_workers else step.resources.gpus
        placement = {}
        if step.resources.held_by_workers:
            # The task only coordinates (Ray Train's controller runs where it runs): keep it on this driver's
            # node, so a worker node that dies takes only training workers with it, which Ray Train restarts on
            # the nodes left. Unpinned, Ray puts it on a worker node whenever this node's CPUs are busy.
            import ray
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            placement["scheduling_strategy"] = NodeAffinitySchedulingStrategy(
                ray.get_runtime_context().get_node_id(), soft=False)
        self.log(f"▶ {step.dirname}  ({step.resources.describe()})")
        launch = StepLaunch(step.fn, step.config, step.name, step.dirname, self.root, inputs, self.tracking.uri, run_id,
                            self.store.uri if self.store else None)
        options = dict(num_cpus=cpus, num_gpus=gpus, name=f"step:{step.name}", max_retries=0,
                       runtime_env={"env_vars": task_env()}, **placement)
        if step.warm_lane is not None:
            return remote["warm"].options(**options).remote(launch, step.warm_lane), run_id
        ref = remote["task"].options(**options).remote(launch)
        return ref, run_id

    def _collect(self, ref, step: Step, seconds: float, run_id: str | None) -> Outcome:
        import ray

        try:
            summary = ray.get(ref)
        except Exception as e:
            cause = getattr(e, "cause", None) or e  # RayTaskError wraps the step's own exception
            if isinstance(cause, StepStopped):
                self.log(f"■ {step.dirname} stopped after {seconds:.0f}s: {cause}")
                self._finish_run(run_id, ok=False, error=str(cause))
                return Outcome("stopped", seconds, str(cause))
            error = one_line_error(cause) if cause is not e else _ray_error_line(e)
            self._record_failure(step, run_id, error)
            self.log(f"✘ {step.dirname} failed after {seconds:.0f}s: {error}")
            self.log(f"  details: {self.root / (step.dirname + '.tmp') / 'error.log'}")
            return Outcome("failed", seconds, error)
        self._finish_run(run_id, ok=summary.get("status", "ok") == "ok", error=summary.get("reason"))
        note = f" — {summary['status']}: {summary.get('reason')}" if summary.get("status", "ok") != "ok" else ""
        self.log(f"✔ {step.dirname} in {seconds:.0f}s{note}")
        return Outcome("succeeded", seconds, summary=summary)

    def _record_failure(self, step: Step, run_id: str | None, error: str) -> None:
        """Make sure the .tmp status says failed even when the worker died without writing it."""
        ensure_failed(self.root / f"{step.dirname}.tmp", step.name, step.dirname, error)
        self._finish_run(run_id, ok=False, error=error)

    def _finish_run(self, run_id: str | None, ok: bool, error: str | None = None) -> None:
        """End the step's MLflow run, if it has one (none when the study is untracked or the run could not start)."""
        if run_id:
            self._track(self.tracking.finish_run, run_id, ok=ok, error=error)

    def _track(self, fn, *args, **kwargs):
        """Call the tracker (or the store, for a stop request); if it is down, warn and go on: work beats records."""
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            self.log(f"warning: {fn.__qualname__} failed ({type(e).__name__}: {redact_text(str(e)).strip()[:200]}); "
                     "the study goes on")
            return None


def _ray_error_line(e: Exception) -> str:
    """Ray's own errors (worker died, out of memory) carry long messages; keep the first meaningful line."""
    for line in redact_text(str(e)).splitlines():
        if line.strip() and not line.startswith("Traceback"):
            return f"{type(e).__name__}: {line.strip()}"
    return type(e).__name__
