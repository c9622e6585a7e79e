"""Running a study: the DAG that pipelines/plan.py builds from a StudyConfig, in a study folder (or object store),
with one study per folder at a time (StudyLock), study.json describing it, and SIGTERM stopping it like Ctrl-C.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shlex
import signal
import socket
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from armodels.device import local_gpus
from armodels.files import read_json, write_json_atomic
from pipelines.config import StudyConfig
from pipelines.driver_log import driver_log
from pipelines.errors import ClusterLost, RunFailure, UserError
from pipelines.estimate import describe_cost
from pipelines.executor import Executor, Outcome
from pipelines.plan import build_steps, corpus_config, describe_plan
from pipelines.progress import duration
from pipelines.ray_connect import cluster_gpus, connect
from pipelines.step import Step, topological_order
from pipelines.step_status import process_alive, process_start
from pipelines.steps import corpus
from pipelines.storage import StudyStore, is_uri
from pipelines.tracking import StudyTracking, redact_text, redact_uri, resolve_tracking_uri
from pipelines.warm_workers import warm_workers

STUDY_FILE = "study.json"
LOCK_FILE = ".lock"
STORE_LOCK = "LOCK.json"  # the lease of a study kept in an object store (StoreLock)


def check_output_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UserError(f"output directory {out} is not writable ({e.strerror}); choose another with --out") from None


def check_corpus(cfg: StudyConfig) -> None:
    """Fail before starting Ray when the corpus is missing or empty (plan.stream_shapes checks image data)."""
    if cfg.is_image_study:
        return
    try:
        c = corpus_config(cfg)
        files = corpus.find_files(c.paths, c.extensions)
    except FileNotFoundError as e:
        raise UserError(f"{e}; fix corpus.paths in the config") from None
    if not any(f.stat().st_size for f in files):
        raise UserError(f"the corpus is empty: no non-empty files with extensions {list(cfg.corpus.extensions)} "
                        f"under {', '.join(cfg.corpus.paths) or 'the standard library'}")


class StudyLock:
    """One driver per study folder: `.lock` there, held with flock for the driver's whole life (the kernel lets go
    when the process ends, however it ends) and naming its holder: host, pid, the process's start time.

    Taken when no process holds it. A record left by a process of this host that is gone (or whose pid now belongs
    to another process) is taken over; one left by another host is refused, as this host cannot tell whether that
    driver still runs (on a shared filesystem where flock does not reach across hosts)."""

    def __init__(self, out: Path):
        self.path = out / LOCK_FILE
        self.fd: int | None = None

    def __enter__(self):
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(fd)
            for _ in range(20):  # the holder may have just taken it and not yet written its name
                if holder:
                    break
                time.sleep(0.05)
                holder = _lock_holder(fd)
            os.close(fd)
            raise UserError(f"study {self.path.parent} is already running ({_describe(holder)}); wait for it or stop "
                            "it first") from None
        holder = _lock_holder(fd)
        if holder and not self._stale(holder):
            os.close(fd)
            if holder.get("host") == socket.gethostname():
                raise UserError(f"study {self.path.parent} is already running ({_describe(holder)}); wait for it or "
                                "stop it first")
            raise UserError(f"study {self.path.parent} is locked by {_describe(holder)}; if that run is over, "
                            f"delete {self.path} and run again")
        me = {"host": socket.gethostname(), "pid": os.getpid(), "process_start": process_start(os.getpid()),
              "since": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        os.fsync(fd)
        self.fd = fd
        return self

    @staticmethod
    def _stale(holder: dict) -> bool:
        """Whether a lock record (whose flock nobody holds) was left by a process of this host that is gone."""
        if holder.get("host") != socket.gethostname():
            return False
        pid, started = holder.get("pid"), holder.get("process_start")
        return not process_alive(pid) or (started is not None and process_start(pid) != started)

    def __exit__(self, *exc):
        os.ftruncate(self.fd, 0)  # an empty lock file is a free one; the file stays, as others may have it open
        os.close(self.fd)  # lets go of the flock


class StoreLock:
    """One driver per study in an object store, across clusters: a lease, the object LOCK.json beside the study's
    steps naming its holder and when the lease ends. The driver renews it every TTL_S / 3 while it runs; a lease
    that ran out (its driver died) is taken over. Object stores have no atomic create that pyarrow can ask for, so
    a driver that finds the lease free writes its own, waits SETTLE_S for any driver that raced it to write too,
    and keeps the lease only if its own record is the one the store then holds (the others refuse to start)."""

    TTL_S = 60.0
    SETTLE_S = 2.0

    def __init__(self, store: StudyStore):
        self.store = store
        self.record = {"owner": secrets.token_hex(8), "host": socket.gethostname(), "pid": os.getpid(),
                       "since": time.time()}
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def __enter__(self):
        held = self.store.read_json(STORE_LOCK)
        if held and held.get("expires", 0) > time.time():
            raise UserError(f"study {self.store.shown} is already running ({_describe(held)}, lease renewed until "
                            f"{time.strftime('%H:%M:%S', time.localtime(held['expires']))}); wait for it or stop it "
                            f"first (a driver that died lets its lease run out within {self.TTL_S:.0f}s)")
        self._write()
        time.sleep(self.SETTLE_S)
        now = self.store.read_json(STORE_LOCK) or {}
        if now.get("owner") != self.record["owner"]:
            raise UserError(f"study {self.store.shown} was started by another driver at the same time "
                            f"({_describe(now)}); wait for it or stop it first")
        self._renewer = threading.Thread(target=self._renew, name="store-lock", daemon=True)
        self._renewer.start()
        return self

    def _write(self) -> None:
        self.store.write_text(STORE_LOCK, json.dumps({**self.record, "expires": time.time() + self.TTL_S}))

    def _renew(self) -> None:
        while not self._stop.wait(self.TTL_S / 3):
            try:
                self._write()
            except Exception:  # a store outage: the next renewal may get through before the lease runs out
                pass

    def __exit__(self, *exc):
        self._stop.set()
        if self._renewer:
            self._renewer.join()
        try:
            if (self.store.read_json(STORE_LOCK) or {}).get("owner") == self.record["owner"]:
                self.store.delete(STORE_LOCK)
        except Exception:  # the lease runs out by itself
            pass


def _lock_holder(fd: int) -> dict:
    """The record in an open lock file ({} when empty or unreadable)."""
    try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _describe(holder: dict) -> str:
    if not holder:
        return "by another process"
    since = time.strftime("%Y-%m-%d %H:%M", time.localtime(holder["since"])) if holder.get("since") else "?"
    return f"pid {holder.get('pid')} on {holder.get('host')} since {since}"


def run_study(cfg: StudyConfig, config_path: Path, out: Path | str, *, dry_run: bool = False,
              tracking_uri: str | None = None, address: str | None = None, overrides: Sequence[str] = (),
              check_inputs: bool = True, log=print) -> dict[str, Outcome]:
    """Run (or with dry_run, only show) the study in the folder `out` (a path, or an object-store URI: see
    pipelines.storage); returns each step's outcome. `overrides`: the `--set KEY=VALUE` already applied to `cfg`,
    recorded in study.json and repeated in the command that resumes the study.

    A dry run checks the inputs as a run would, prints the plan, the FLOPs and a rough wall time (measured here
    in a second or so), and writes nothing; without `check_inputs` (a study to be submitted to a cluster, whose
    paths are the cluster's) it does not look for the corpus here.

    Raises RunFailure if a step failed, after every step that does not depend on it has run.
    """
    store = StudyStore(str(out)) if is_uri(out) else None
    where = store.shown if store else Path(out).resolve()  # what the user named
    out = store.scratch if store else Path(out).resolve()
    # Planned against this machine's GPUs first (a dry run connects to no cluster); a run plans again against
    # the GPUs of the cluster it joins, which is what training.device auto follows.
    targets = build_steps(cfg, gpus=local_gpus())
    if dry_run:
        if check_inputs:
            check_corpus(cfg)  # the check, and the message, of a run
        plan = Executor(out, store=store).plan(targets)
        if overrides:
            log(f"config {config_path} with {' '.join(f'--set {shlex.quote(o)}' for o in overrides)}")
        log(describe_plan(plan))
        log(describe_cost(plan))
        return {}
    check_output_dir(out)
    check_corpus(cfg)
    if store:
        store.check()
    with StudyLock(out), (StoreLock(store) if store else contextlib.nullcontext()):
        if store:
            store.pull_study_files(out)
        try:
            with driver_log(out, rerun_command(config_path, where, overrides)):
                return _run(cfg, config_path, out, where, targets, store, tracking_uri, address, log, overrides)
        finally:
            if store:
                try:
                    store.push_study_files(out)
                except Exception as e:
                    log(f"warning: could not save study.json and the MLflow store to {store.shown} ({e})")


def _run(cfg: StudyConfig, config_path: Path, out: Path, where: Path | str, targets: list[Step],
         store: StudyStore | None, tracking_uri: str | None, address: str | None, log,
         overrides: Sequence[str] = ()) -> dict[str, Outcome]:
    started = time.time()
    previous = read_json(out / STUDY_FILE) if (out / STUDY_FILE).is_file() else {}
    uri = resolve_tracking_uri(tracking_uri, out)
    tracking = StudyTracking(uri, cfg.name, out, previous.get("mlflow", {}).get("parent_run_id"),
                             config=cfg.model_dump(mode="json"))
    dashboard = connect(address)
    _stop_on_sigterm()  # after connecting: ray.init installs a SIGTERM handler of its own
    targets = build_steps(cfg, gpus=cluster_gpus())
    executor = Executor(out, tracking, log=log, store=store)
    steps = topological_order(targets)
    write_json_atomic(out / STUDY_FILE, {
        "name": cfg.name, "config_path": str(config_path), "overrides": list(overrides),
        "config": cfg.model_dump(mode="json"),
        "steps": [{"name": s.name, "dir": s.dirname, "inputs": {k: d.dirname for k, d in s.inputs.items()},
                   "describe": s.describe} for s in steps],
        "report": f"{targets[0].dirname}/report.md",
        "mlflow": {"tracking_uri": redact_uri(uri), "experiment_id": tracking.experiment_id,
                   "parent_run_id": tracking.parent_run_id},
        **({"storage": store.shown} if store else {}),
    })
    log(f"study {cfg.name} → {where}" + (f" (working in {out})" if store else ""))
    log(f"MLflow: {redact_uri(uri)}" + (f"   Ray dashboard: {dashboard}" if dashboard else ""))
    try:
        with warm_workers(out):  # the training runs of one shape share worker groups
            outcomes = executor.run(targets)
    except ClusterLost as e:
        tracking.finish_study(ok=False)
        again = rerun_command(config_path, where, overrides)
        raise ClusterLost(f"{e}. Finished steps and checkpoints are kept: start a cluster and run `{again} "
                          "--address <its address>` to resume") from None
    except KeyboardInterrupt:
        tracking.finish_study(ok=False)
        raise RunFailure(f"interrupted; finished steps and checkpoints are kept — to resume, run: "
                         f"{rerun_command(config_path, where, overrides)}") from None
    failed = {n: o for n, o in outcomes.items() if o.state == "failed"}
    report_dir = out / targets[0].dirname
    if not failed and report_dir.is_dir():  # in an object store, a skipped report may not be in scratch
        try:
            tracking.log_study_results(report_dir)
        except Exception as e:  # the study's own files hold everything; MLflow is a view of them
            log(f"warning: could not log the report to MLflow ({redact_text(str(e))[:200]})")
    tracking.finish_study(ok=not failed)
    ran = sum(o.state == "succeeded" for o in outcomes.values())
    log(f"{ran} steps ran, {sum(o.state == 'skipped' for o in outcomes.values())} skipped "
        f"in {duration(time.time() - started)}")
    if failed:
        blocked = sum(o.state == "blocked" for o in outcomes.values())
        names = ", ".join(f"{n} ({o.error})" for n, o in failed.items())
        raise RunFailure(f"{len(failed)} step(s) failed: {names}; {blocked} step(s) waiting on them. "
                         f"Finished steps are kept: fix the cause and run the same command again")
    if report_dir.is_dir():
        _link_latest(out / "report", targets[0].dirname)
    log(f"report: {where}/{targets[0].dirname}/report.md (and report.html)")
    return outcomes


def rerun_command(config_path: Path, where: Path | str, overrides: Sequence[str]) -> str:
    """The command that runs this study again (and so resumes it): the same config, overrides and folder."""
    sets = "".join(f" --set {shlex.quote(o)}" for o in overrides)
    return f"arscale study run {config_path}{sets} --out {where}"


def _stop_on_sigterm() -> None:
    """SIGTERM (`kill`, a scheduler's preemption, `ray job stop`) stops the study the way Ctrl-C does: running
    training runs save a checkpoint first. (Ray's own handler would abort the driver without a word.)"""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)


def _link_latest(link: Path, target: str) -> None:
    """`<study>/report` always points at the newest report directory."""
    tmp = link.with_name(f".{link.name}.tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    os.replace(tmp, link)
