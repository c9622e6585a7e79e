"""The step executor: a study is a DAG of steps, run as Ray tasks, each writing one versioned directory.

A step is a function, a config dataclass, named input steps and a code version. Its output directory is
`<name>-<hash>`, where the hash covers the name, version, config and the hashes of its inputs: changing one
config field changes that step's hash and the hashes of the steps downstream of it, and nothing else.

A step's directory goes through two names:

    <name>-<hash>.tmp/   while it runs, and after a failure (STATUS.json says running or failed, with the error).
                         Kept between attempts, so a step may resume from what it left there.
    <name>-<hash>/       after success (STATUS.json says succeeded): one atomic rename from the .tmp name.

So a directory without `.tmp` is always complete, and re-running a study skips every step whose directory exists.
Independent steps run concurrently; the executor admits a step when the CPUs it declares are free in the cluster.

Stopping (Ctrl-C, SIGTERM): the executor writes the file `STOP` in the study folder; long steps (training) look
for it, save a checkpoint in their .tmp dir and end as failed-with-checkpoint; the executor waits for them
(up to STOP_GRACE_S) before it cancels what is left. A second Ctrl-C cancels at once.

A study kept in an object store (pipelines.storage) runs the same way in a local scratch folder: each step pulls
the inputs its node lacks before it runs and pushes its folder after (STATUS.json last), and the executor counts a
step the store holds as finished as done.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

from armodels.files import read_json, write_json_atomic
from pipelines.errors import StepStopped, UserError
from pipelines.storage import StudyStore

STATUS = "STATUS.json"
STOP_FILE = "STOP"  # its presence asks running steps to checkpoint and stop
STOP_GRACE_S = 120.0
SUCCEEDED, FAILED, RUNNING, STOPPED = "succeeded", "failed", "running", "stopped"


@dataclass(frozen=True)
class Resources:
    cpus: float = 1.0
    # True for steps that start their own Ray workers (Ray Train): the workers hold the CPUs, the task holds none.
    held_by_workers: bool = False
    cpus_per_worker: float | None = None  # with held_by_workers: what each worker holds, on one node

    @property
    def on_one_node(self) -> float:
        """The CPUs that must be free on a single node: a worker's share, or the whole task's."""
        return (self.cpus_per_worker or 0.0) if self.held_by_workers else self.cpus


@dataclass
class StepContext:
    """What a step function sees: where to write, where its inputs are, and its MLflow run."""

    name: str
    output: Path
    inputs: dict[str, Path]
    tracking_uri: str | None = None
    run_id: str | None = None
    store_uri: str | None = None  # the object store that keeps the study, when it is kept in one

    def log(self, message: str) -> None:
        print(message, flush=True)  # Ray prefixes it with the task name, step:<name>

    @property
    def stop_file(self) -> Path:
        """Exists when the study was asked to stop (the step's .tmp dir sits in the study folder)."""
        return self.output.parent / STOP_FILE

    def logger(self):
        """A RunLogger for this step's MLflow run, or None when the study is not tracked."""
        if not self.run_id:
            return None
        from pipelines.tracking import RunLogger

        return RunLogger(self.tracking_uri, self.run_id, self.output / "mlflow-unsent.jsonl")


StepFn = Callable[[Any, StepContext], "dict | None"]


@dataclass(frozen=True, eq=False)
class Step:
    name: str
    fn: StepFn
    config: Any
    inputs: Mapping[str, Step] = field(default_factory=dict)
    version: str = "1"  # bump when the function's output changes for the same config
    resources: Resources = Resources()
    priority: float = 0.0  # among ready steps, higher starts first (training steps use their FLOPs)
    describe: str = ""  # one line shown by --dry-run

    @property
    def hash(self) -> str:
        payload = {"name": self.name, "version": self.version, "config": _jsonable(self.config),
                   "inputs": {k: s.hash for k, s in sorted(self.inputs.items())}}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:10]

    @property
    def dirname(self) -> str:
        return f"{self.name}-{self.hash}"


def _jsonable(config: Any) -> Any:
    if is_dataclass(config):
        return asdict(config)
    if hasattr(config, "model_dump"):
        return config.model_dump(mode="json")
    return config


def topological_order(targets: list[Step]) -> list[Step]:
    """Every step reachable from `targets`, inputs before the steps that read them."""
    order: list[Step] = []
    seen: dict[str, Step] = {}

    def visit(step: Step) -> None:
        if step.name in seen:
            if seen[step.name] is not step and seen[step.name].hash != step.hash:
                raise ValueError(f"two different steps are both named {step.name!r}")
            return
        seen[step.name] = step
        for dep in step.inputs.values():
            visit(dep)
        order.append(step)

    for t in targets:
        visit(t)
    return order


def step_state(root: Path, dirname: str) -> dict:
    """A step's status record: from its final dir if it succeeded, else from its .tmp dir, else pending.

    A `running` record whose process is gone (on this host) reads as `interrupted`.
    """
    for d in (root / dirname, root / f"{dirname}.tmp"):
        path = d / STATUS
        if path.is_file():
            try:
                state = read_json(path)
            except ValueError:
                continue
            if d.name == dirname and state.get("state") != SUCCEEDED:
                continue  # a final dir is valid only with a success record
            if state.get("state") == RUNNING and not _process_alive(state):
                state = {**state, "state": "interrupted"}
            return state
    return {"state": "pending"}


def _process_alive(state: dict) -> bool:
    if state.get("host") != socket.gethostname():
        return True  # cannot tell for another machine; believe the record
    try:
        os.kill(int(state.get("pid", -1)), 0)
        return True
    except (OSError, ValueError):
        return False


def execute_step(fn: StepFn, config: Any, name: str, dirname: str, root: str, inputs: dict[str, str],
                 tracking_uri: str | None, run_id: str | None, store_uri: str | None = None) -> dict:
    """Run one step in this process (a Ray worker): .tmp dir, status records, atomic rename on success."""
    root_path = Path(root)
    tmp, final = root_path / f"{dirname}.tmp", root_path / dirname
    store = StudyStore(store_uri) if store_uri else None
    if store:  # this node may lack the inputs, or what an earlier attempt left (a checkpoint)
        for path in map(Path, inputs.values()):
            store.pull(path.name, path)
        store.pull(tmp.name, tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    record = {"step": name, "dir": dirname, "state": RUNNING, "host": socket.gethostname(), "pid": os.getpid(),
              "started": time.time(), "mlflow_run_id": run_id, "inputs": inputs}
    write_json_atomic(tmp / STATUS, record)
    ctx = StepContext(name, tmp, {k: Path(v) for k, v in inputs.items()}, tracking_uri, run_id, store_uri)
    try:
        summary = fn(config, ctx) or {}
    except BaseException as e:  # KeyboardInterrupt included: the record must say the step did not finish
        (tmp / "error.log").write_text(traceback.format_exc())
        write_json_atomic(tmp / STATUS, {**record, "state": STOPPED if isinstance(e, StepStopped) else FAILED,
                                         "finished": time.time(), "error": one_line_error(e)})
        if store:
            try:
                # what it leaves, for the next attempt wherever it runs; kept: a checkpoint that a training worker on
                # another node pushed there
                store.push(tmp, tmp.name, mirror=False)
            except Exception as push_error:
                print(f"warning: could not save {tmp.name} to {store.shown}: {one_line_error(push_error)}", flush=True)
        raise
    write_json_atomic(tmp / STATUS, {**record, "state": SUCCEEDED, "finished": time.time(), "summary": summary})
    if final.exists():  # left by hand without a success record (step_state ignores it): replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    if store:
        store.push(final, dirname)
        store.delete(tmp.name)
    return summary


def one_line_error(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


@dataclass
class Outcome:
    state: str  # skipped | succeeded | failed | blocked | stopped
    seconds: float = 0.0
    error: str | None = None
    summary: dict = field(default_factory=dict)


class Executor:
    """Runs a DAG of steps on the connected Ray cluster, writing under `root`."""

    def __init__(self, root: Path, tracking=None, log: Callable[[str], None] | None = None,
                 store: StudyStore | None = None):
        self.root = Path(root)
        self.tracking = tracking  # a pipelines.tracking.StudyTracking, or None
        self.log = log or (lambda msg: print(msg, flush=True))
        self.store = store  # the object store that keeps the study (root is then its local scratch folder)

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

        plan = self.plan(targets)
        outcomes: dict[str, Outcome] = {}
        pending: list[Step] = []
        for step, state in plan:
            if state["state"] == SUCCEEDED:
                outcomes[step.name] = Outcome("skipped", summary=state.get("summary", {}))
                self._ensure_stored(step)
            else:
                pending.append(step)
        total_cpus = ray.cluster_resources().get("CPU", 0)
        largest = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"]), default=0)
        for step in pending:  # Ray would wait for such room forever
            if step.resources.cpus > total_cpus:
                raise UserError(f"step {step.name} needs {step.resources.cpus:g} CPUs but the Ray cluster has "
                                f"{total_cpus:g}; lower its workers or CPUs per worker, or add nodes")
            if step.resources.on_one_node > largest:
                raise UserError(f"step {step.name} needs {step.resources.on_one_node:g} CPUs on one node but the "
                                f"largest node of the Ray cluster has {largest:g}; lower its CPUs per worker (and "
                                "use more workers), or add bigger nodes")
        if pending:
            self.log(f"{len(plan) - len(pending)} of {len(plan)} steps already done; running {len(pending)}")
        remote = ray.remote(execute_step)
        running: dict[Any, tuple[Step, float, str | None]] = {}
        free = total_cpus
        self._clear_stop()  # left by an earlier stop
        try:
            while pending or running:
                for step in [s for s in pending if self._inputs_failed(s, outcomes)]:
                    pending.remove(step)
                    outcomes[step.name] = Outcome("blocked", error="an input step failed")
                ready = sorted((s for s in pending if self._inputs_done(s, outcomes)), key=lambda s: -s.priority)
                for step in ready:
                    if step.resources.cpus > free:
                        continue
                    pending.remove(step)
                    free -= step.resources.cpus
                    ref, run_id = self._launch(remote, step)
                    running[ref] = (step, time.perf_counter(), run_id)
                if not running:
                    break
                done, _ = ray.wait(list(running), num_returns=1)
                step, started, run_id = running.pop(done[0])
                free += step.resources.cpus
                outcomes[step.name] = self._collect(done[0], step, time.perf_counter() - started, run_id)
        except KeyboardInterrupt:
            self._stop(running, outcomes)
            raise
        return outcomes

    def _stop(self, running: dict, outcomes: dict[str, Outcome]) -> None:
        """Ask running steps to checkpoint and stop, wait for them a while, then cancel the rest."""
        import ray

        if running:
            (self.root / STOP_FILE).touch()
            if self.store:
                self._track(self.store.write_text, STOP_FILE, "")  # for steps on nodes without this folder
            self.log(f"stopping: {len(running)} running step(s) save a checkpoint first "
                     f"(up to {STOP_GRACE_S:.0f}s; Ctrl-C again to stop at once)")
            deadline = time.monotonic() + STOP_GRACE_S
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

    def _launch(self, remote, step: Step):
        """Start a step as a Ray task (after creating its MLflow run); returns (object ref, run id)."""
        inputs = {k: str(self.root / s.dirname) for k, s in step.inputs.items()}
        run_id = None
        if self.tracking:
            run_id = self._track(self.tracking.start_step_run, step.name, step.dirname, step.config,
                                 {k: s.dirname for k, s in step.inputs.items()})
        cpus = 0 if step.resources.held_by_workers else step.resources.cpus
        placement = {}
        if step.resources.held_by_workers:
            # The task only coordinates (Ray Train's controller runs where it runs): keep it on this driver's
            # node, so a worker node that dies takes only training workers with it, which Ray Train restarts on
            # the nodes left. Unpinned, Ray puts it on a worker node whenever this node's CPUs are busy.
            import ray
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            placement["scheduling_strategy"] = NodeAffinitySchedulingStrategy(
                ray.get_runtime_context().get_node_id(), soft=False)
        self.log(f"▶ {step.dirname}  ({step.resources.cpus:g} CPU{'s' if step.resources.cpus != 1 else ''})")
        ref = remote.options(num_cpus=cpus, name=f"step:{step.name}", max_retries=0, **placement).remote(
            step.fn, step.config, step.name, step.dirname, str(self.root), inputs,
            self.tracking.uri if self.tracking else None, run_id, self.store.uri if self.store else None)
        return ref, run_id

    def _collect(self, ref, step: Step, seconds: float, run_id: str | None) -> Outcome:
        import ray

        try:
            summary = ray.get(ref)
        except Exception as e:
            cause = getattr(e, "cause", None) or e  # RayTaskError wraps the step's own exception
            if isinstance(cause, StepStopped):
                self.log(f"■ {step.dirname} stopped after {seconds:.0f}s: {cause}")
                if self.tracking and run_id:
                    self._track(self.tracking.finish_run, run_id, ok=False, error=str(cause))
                return Outcome("stopped", seconds, str(cause))
            error = one_line_error(cause) if cause is not e else _ray_error_line(e)
            self._record_failure(step, run_id, error)
            self.log(f"✘ {step.dirname} failed after {seconds:.0f}s: {error}")
            self.log(f"  details: {self.root / (step.dirname + '.tmp') / 'error.log'}")
            return Outcome("failed", seconds, error)
        if self.tracking and run_id:
            self._track(self.tracking.finish_run, run_id, ok=summary.get("status", "ok") == "ok",
                        error=summary.get("reason"))
        note = f" — {summary['status']}: {summary.get('reason')}" if summary.get("status", "ok") != "ok" else ""
        self.log(f"✔ {step.dirname} in {seconds:.0f}s{note}")
        return Outcome("succeeded", seconds, summary=summary)

    def _record_failure(self, step: Step, run_id: str | None, error: str) -> None:
        """Make sure the .tmp status says failed even when the worker died without writing it."""
        tmp = self.root / f"{step.dirname}.tmp"
        status = tmp / STATUS
        if tmp.is_dir():
            record = read_json(status) if status.is_file() else {"step": step.name, "dir": step.dirname}
            if record.get("state") != FAILED:
                write_json_atomic(status, {**record, "state": FAILED, "error": error, "finished": time.time()})
        if self.tracking and run_id:
            self._track(self.tracking.finish_run, run_id, ok=False, error=error)

    def _track(self, fn, *args, **kwargs):
        """Call the tracker (or the store, for a stop request); if it is down, warn and go on: work beats records."""
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            self.log(f"warning: {fn.__qualname__} failed ({type(e).__name__}: {str(e).strip()[:200]}); "
                     "the study goes on")
            return None


def _ray_error_line(e: Exception) -> str:
    """Ray's own errors (worker died, out of memory) carry long messages; keep the first meaningful line."""
    for line in str(e).splitlines():
        if line.strip() and not line.startswith("Traceback"):
            return f"{type(e).__name__}: {line.strip()}"
    return type(e).__name__
