"""Step `train-<size>`: one grid point, trained by Ray Train's TorchTrainer running DeepSpeed.

The loop itself is armodels.train.train (no Ray inside); this step only places it on Ray Train workers (warm ones:
the study's runs of the same shape share a worker group, pipelines.warm_workers), logs its
metrics to the step's MLflow run (step = tokens seen) and prints progress. The run's full description is saved as
run.json, so `arscale train --config <step dir>/run.json --out DIR` repeats it in one process without Ray.

Faults: the loop checkpoints into the step's .tmp dir, which outlives a failed attempt. If a worker dies, or the
node it ran on, Ray Train restarts the worker group on the nodes left and the run (at most WORKER_RESTARTS times)
resumes from its last checkpoint; if the whole study dies, the next `arscale study run` does the same. When the
nodes left cannot hold the workers, the step fails after RESOURCE_WAIT_S, saying so (Ray Train alone would wait
forever). A stop request (the study's STOP file) makes the loop checkpoint and end early, and this step then fails
with a message saying so.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

from armodels.checkpoint import NAME as CHECKPOINT
from armodels.checkpoint import is_plain_name
from armodels.config_fields import added_field
from armodels.device import process_group_backend
from armodels.files import file_sha256, read_json, write_json_atomic
from armodels.shards import read_manifest
from armodels.train import TrainConfig, TrainRun, branch_folder, train
from pipelines import warm_workers
from pipelines.errors import RunFailure, StepStopped
from pipelines.progress import PROGRESS_FILE, TrainingProgress
from pipelines.step import StepContext
from pipelines.storage import NOT_PUSHED, StopSignal, StudyStore
from pipelines.tracking import run_logger

VERSION = "1"
WORKER_RESTARTS = 2  # Ray Train restarts a failed worker group this many times before the step fails
RESOURCE_WAIT_S = 600.0  # how long the workers may wait for CPUs (a node died, a cluster still scaling up)
START_TIMEOUT_ENV, START_TIMEOUT_S = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", 60.0  # Ray Train's, per attempt


@dataclass(frozen=True)
class TrainStepConfig:
    name: str
    family: str
    model: dict  # the family's config fields
    train: TrainConfig
    num_workers: int = 1
    cpus_per_worker: int = 1
    gpus_per_worker: float = added_field(0.0)  # with train.device "cuda": a fraction of one GPU, or whole GPUs
    # WSD cooldowns (plan.cooldown_steps): the trunk this run belongs to, and the step of its input `trunk`'s branch
    # point it starts from (0: from scratch). A branch trains its cooldown from there; a trunk segment, its stretch.
    trunk: str = added_field("")
    start_step: int = added_field(0)

    @property
    def worker_resources(self) -> dict[str, float]:
        """What each Ray Train worker holds: its CPUs, and on a GPU run its GPUs (Ray packs fractions on a GPU)."""
        return {"CPU": self.cpus_per_worker, **({"GPU": self.gpus_per_worker} if self.train.device == "cuda" else {})}

    def describe_workers(self) -> str:
        """The run's resource request: "1 worker, 1 CPU", "2 workers, 1 CPU + 0.25 GPU each"."""
        workers = f"{self.num_workers} worker{'s' if self.num_workers > 1 else ''}"
        gpus = f" + {self.gpus_per_worker:g} GPU" if self.train.device == "cuda" else ""
        each = " each" if self.num_workers > 1 else ""
        return f"{workers}, {self.cpus_per_worker} CPU{'s' if self.cpus_per_worker > 1 else ''}{gpus}{each}"

    def run(self, shards_dir: Path, trunk_dir: Path | None = None) -> TrainRun:
        """The run, on the shards in `shards_dir`; one with a start step starts from `trunk_dir`'s branch point."""
        start = str(branch_folder(trunk_dir, self.start_step)) if self.start_step and trunk_dir else None
        return TrainRun(family=self.family, model=self.model, train=self.train, name=self.name,
                        train_shards=str(Path(shards_dir) / "train"), val_shards=str(Path(shards_dir) / "val"),
                        start_from=start)

    def own_tokens(self) -> int:
        """The tokens this step trains itself: all of its run's, less those of the trunk it starts from."""
        run = self.run(Path("."))
        return run.tokens_seen - self.start_step * self.train.batch_size * run.seq_len


def train_model(config: TrainStepConfig, ctx: StepContext) -> dict:
    import ray

    from pipelines.steps.train_reports import RAY_TRAIN_REPORT  # imports ray.train

    run = config.run(ctx.inputs["shards"], ctx.inputs.get("trunk"))
    vocab = read_manifest(run.train_shards).vocab_size
    if vocab > run.model["vocab_size"]:
        raise ValueError(f"the tokenizer has {vocab} tokens but the model only {run.model['vocab_size']}")
    write_json_atomic(ctx.output / "run.json", run.to_dict())
    ctx.log(f"{run.family}: {run.steps} steps × {run.train.batch_size} sequences × {run.seq_len} tokens on "
            f"{config.describe_workers()}")
    reports = ctx.output / RAY_TRAIN_REPORT
    job = {"run": run.to_dict(), "out": str(ctx.output), "threads": config.cpus_per_worker,
           "tracking_uri": ctx.tracking_uri, "run_id": ctx.run_id, "stop_file": str(ctx.stop_file),
           "store_uri": ctx.store.uri if ctx.store else None}
    # on the study's warm workers (its driver's pool); a step run on its own brings a pool of its own
    study_pool = warm_workers.find(ctx.output.parent)
    with nullcontext(study_pool) if study_pool else warm_workers.warm_workers(ctx.output.parent, named=False) as pool:
        outcome = ray.get(pool.run.remote(lane_spec(config), f"{__name__}:_train_job", job, WORKER_RESTARTS))
    if outcome.get("error"):
        raise _worker_error(outcome, config, ctx.output)
    reported = read_json(reports, "Ray Train's last report") if reports.is_file() else {}
    if ctx.store and not (ctx.output / "result.json").is_file():  # rank 0 ran on another node
        ctx.store.pull_into(ctx.output.name, ctx.output)
    result = read_json(ctx.output / "result.json", "training result")
    if result["status"] == "interrupted":
        raise StepStopped(f"{result['reason']}; the checkpoint is kept and the next run of the study resumes it")
    ctx.tracker.log_metrics({k: result[k] for k in ("params", "params_nonembedding", "flops_6ND", "flops_per_layer",
                                                    "tokens_per_s", "train_seconds")}, step=result["tokens"])
    ctx.tracker.set_tags({"arscale.status": result["status"]})
    if result["status"] == "ok":  # the trained weights (safetensors), the family and its config, the run's settings
        for name in ("model.safetensors", "model.json", "run.json"):
            ctx.tracker.log_artifact(ctx.output / name, "model")
    ctx.tracker.flush()
    return {"status": result["status"], "reason": result["reason"], "tokens": result["tokens"],
            "final_train_loss": result["final_train_loss"], "ray_train_metrics": reported}


def train_confirmation(config: TrainStepConfig, ctx: StepContext) -> dict:
    """Step `train-<series>-confirm-<R>x`: a confirmation run, planned before the fit (its shape and tokens) and
    trained after it, at the learning rate the fit's lr-vs-size law gives for its size (fit.json)."""
    series = config.name.rsplit("-confirm-", 1)[0]
    fits = read_json(ctx.inputs["fit"] / "fit.json", "fit results")["families"]
    planned = fits.get(series, {}).get("confirm") or {}
    lr = planned.get("lr")
    if not lr:
        raise RunFailure(f"the fit gives no learning rate for the confirmation run of {series}")
    ctx.log(f"confirmation run: lr {lr:.3g} from the fit ({planned.get('lr_source', 'lr law')})")
    return train_model(replace(config, train=replace(config.train, lr=lr)), ctx)


def _quiet_reports() -> None:
    """Ray Train logs every `ray.train.report` at INFO on a logger named by its file's path, which RunConfig's
    LoggingConfig does not reach; the metrics are in MLflow and the progress lines already."""
    import logging

    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # another Ray Train: nothing to quieten
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def lane_spec(config: TrainStepConfig) -> warm_workers.LaneSpec:
    """The workers the run needs, which runs of the same needs share (pipelines.warm_workers)."""
    timeout = os.environ.get(START_TIMEOUT_ENV)
    return warm_workers.LaneSpec(
        num_workers=config.num_workers, resources=tuple(sorted(config.worker_resources.items())),
        use_gpu=config.train.device == "cuda", backend=process_group_backend(config.train.device),
        start_retries=_start_retries(), env=((START_TIMEOUT_ENV, timeout),) if timeout else ())


def _train_job(loop_config: dict) -> None:
    """One run, on each worker of a warm Ray Train worker group (pipelines.warm_workers); torch.distributed is
    already set up (pipelines.rendezvous)."""
    import ray.train
    import torch

    torch.set_num_threads(loop_config["threads"])
    _quiet_reports()
    run = TrainRun.from_dict(loop_config["run"])
    out = Path(loop_config["out"])
    rank = ray.train.get_context().get_world_rank()
    store = StudyStore(loop_config["store_uri"]) if loop_config["store_uri"] else None
    if store:  # a study in an object store: this node may lack the shards and the checkpoint to resume from
        shards = Path(run.train_shards).parent
        store.pull(shards.name, shards)
        if run.start_from:  # and the trunk whose branch point it starts from
            trunk = Path(run.start_from).parent
            store.pull(trunk.name, trunk)
        out.mkdir(parents=True, exist_ok=True)
        _pull_checkpoint(store, out)
    # rank 0 logs for all workers; the others get a tracker that does nothing
    tracker = run_logger(loop_config["tracking_uri"], loop_config["run_id"] if rank == 0 else None, out)
    # rank 0 prints progress lines and keeps progress.json current for `arscale study status` and the study's ETA
    progress = TrainingProgress(run.name, run.tokens_seen, record=out / PROGRESS_FILE if rank == 0 else None)
    # the loss on the first `eval_windows` validation windows: a subset, named apart from the eval step's val_loss
    names = {"loss": "train_loss", "val_loss": "val_loss_subset", "lr": "lr", "tokens_per_s": "tokens_per_s"}

    def on_metrics(metrics: dict) -> None:
        progress(metrics)
        tracker.log_metrics({names[k]: v for k, v in metrics.items() if k in names}, step=metrics["tokens"])

    # checkpoints outlive this node: every rank uploads the checkpoint files it wrote (under ZeRO, its partition),
    # then rank 0 the state.json that vouches for them all
    push_files = partial(_push_checkpoint_files, store, out) if store else None
    push_state = partial(_push_checkpoint_state, store, out) if store and rank == 0 else None
    stop_signal = StopSignal(Path(loop_config["stop_file"]), store)
    spare_cores = warm_workers.SpareCores(loop_config["threads"])  # the last run of a study takes the idle cores

    def should_stop() -> bool:  # asked after every step
        spare_cores()
        return stop_signal()

    try:
        # every rank reports the run's final metrics to Ray Train (a collective), once: a report waits until Ray
        # Train's controller has taken the one before, which it looks for every 2 s, so a report at each evaluation
        # held a short run's training up for seconds (a third of a 15-second run); MLflow has every evaluation
        train(run, out, on_metrics=on_metrics, should_stop=should_stop,
              on_checkpoint=push_state, on_checkpoint_files=push_files,
              on_result=lambda metrics: ray.train.report({**metrics, "run": out.name}))
        if store and rank == 0:
            _push_run(store, out)  # the result and the model, for the step's own node
    finally:
        tracker.flush()


# A run's checkpoints in the object store: each in its own generation folder, `checkpoint/gen-<step>/`, and the
# pointer `checkpoint/state.json` (the checkpoint's state, plus the names of its generation and of the one before).
# A new generation is written beside the one the pointer names, and the pointer is switched only once every file
# of the new one is there: a node that dies mid-push leaves the pointer on a whole checkpoint. The last two
# generations are kept, so a damaged one (a file that fails its checksum) falls back to the one before.
STORE_RETRY_WAITS_S = (1.0, 2.0, 4.0, 8.0, 16.0)  # between tries of a push to the store: 31 s in all


def _generation(step: int) -> str:
    return f"gen-{step:09d}"


def _retried(what: str, fn, *args) -> bool:
    """Call `fn(*args)`, retrying with backoff while the store fails; False, with a warning, when it never
    succeeded: training goes on, and the store keeps its last whole checkpoint."""
    for wait in (*STORE_RETRY_WAITS_S, None):
        try:
            fn(*args)
            return True
        except Exception as e:
            if wait is None:
                print(f"warning: could not {what} ({type(e).__name__}: {str(e).strip()[:200]}); training goes on, "
                      "and the store keeps its last whole checkpoint", flush=True)
                return False
            time.sleep(wait)
    return False


def _pull_checkpoint(store: StudyStore, out: Path) -> None:
    """Replace this node's checkpoint of the run by the store's when the store's is newer, or when this node's is
    missing or lacks files (other nodes' ZeRO partitions): the generation the store's pointer names, else, when
    that one cannot be fetched whole, the one before. The workers of a node share `out`: one at a time."""
    import fcntl

    base = f"{out.name}/{CHECKPOINT}"
    pointer = store.read_json(f"{base}/state.json")
    if not pointer:
        return
    # a pointer names generations; a store written before generations holds the files beside it
    sources = [f"{base}/{g}" for g in (pointer.get("generation"), pointer.get("previous")) if is_plain_name(g)]
    with open(out.parent / f".{out.name}.checkpoint-lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        local = next((d for d in (out / CHECKPOINT, out / f"{CHECKPOINT}.old") if (d / "state.json").is_file()), None)
        local_state = read_json(local / "state.json", "checkpoint state") if local else None
        for source in sources or [base]:
            remote = store.read_json(f"{source}/state.json") if sources else pointer
            if not remote or not isinstance(remote.get("files"), dict) or not all(map(is_plain_name, remote["files"])):
                continue  # not a checkpoint (loading tells what is wrong with one here)
            if local_state and local_state.get("step", -1) >= remote.get("step", 0) and \
                    all((local / n).is_file() for n in local_state["files"]):
                return
            partial = out / f"{CHECKPOINT}.pull-{os.getpid()}"
            shutil.rmtree(partial, ignore_errors=True)
            try:
                store.pull_into(source, partial, [*remote["files"], "state.json"])
                damaged = [n for n, digest in remote["files"].items() if file_sha256(partial / n) != digest]
            except OSError as e:  # the store's copy is incomplete
                damaged = [f"{type(e).__name__}: {str(e).strip()[:200]}"]
            if damaged:
                shutil.rmtree(partial, ignore_errors=True)
                print(f"warning: the checkpoint {source} in {store.shown} is damaged ({', '.join(damaged)}); "
                      "trying the one before", flush=True)
                continue
            for old in (out / CHECKPOINT, out / f"{CHECKPOINT}.old", out / f"{CHECKPOINT}.tmp"):
                shutil.rmtree(old, ignore_errors=True)
            os.replace(partial, out / CHECKPOINT)
            return


def _push_checkpoint_files(store: StudyStore, out: Path, folder: Path, names: list[str], step: int) -> None:
    """Every rank, while a checkpoint is written: the files it wrote, into the store's folder of this checkpoint's
    generation. Nothing points at them until rank 0 switches the pointer (_push_checkpoint_state). A branch point's
    files (ZeRO partitions in `<run>/branch-<step>/`) go to its folder there; rank 0 sends its state.json with the
    run's other files."""
    if folder.parent != out:  # <run>/branch-<step>/checkpoint.tmp: written once, never replaced
        generation = f"{out.name}/{folder.parent.relative_to(out).as_posix()}/{CHECKPOINT}"
    else:
        generation = f"{out.name}/{CHECKPOINT}/{_generation(step)}"
    for name in names:
        _retried(f"upload {name} of checkpoint {generation} to {store.shown}", store.push, folder / name,
                 f"{generation}/{name}")


def _push_checkpoint_state(store: StudyStore, out: Path) -> None:
    """Rank 0, once a checkpoint is complete and every rank has pushed its files: the run's other files, the
    checkpoint's state.json into its generation, then, when every file it lists is in the store, the pointer,
    which makes it the store's checkpoint; generations older than the one before are removed."""
    state = read_json(out / CHECKPOINT / "state.json", "checkpoint state")
    base, generation = f"{out.name}/{CHECKPOINT}", _generation(state["step"])
    _retried(f"upload the files of {out.name} to {store.shown}", _push_run_files, store, out)
    if not _retried(f"upload checkpoint {base}/{generation}", store.push, out / CHECKPOINT / "state.json",
                    f"{base}/{generation}/state.json"):
        return
    try:
        missing = {*state["files"], "state.json"} - set(store.files(f"{base}/{generation}"))
    except Exception as e:
        missing = {f"the listing ({type(e).__name__})"}
    if missing:
        print(f"warning: checkpoint {base}/{generation} lacks {', '.join(sorted(missing))} in {store.shown}; the "
              "store keeps its last whole checkpoint", flush=True)
        return
    current = (store.read_json(f"{base}/state.json") or {}).get("generation")
    previous = current if current != generation else None
    pointer = json.dumps({**state, "generation": generation, "previous": previous})
    if not _retried(f"switch the checkpoint of {out.name} in {store.shown}", store.write_text, f"{base}/state.json",
                    pointer):
        return
    try:
        for name in {f.split("/", 1)[0] for f in store.files(base)} - {"state.json", generation, previous}:
            store.delete(f"{base}/{name}")
    except Exception:  # left for the next checkpoint to remove
        pass


def _push_run(store: StudyStore, out: Path) -> None:
    """Rank 0, when training returns: the run folder; the store's checkpoint goes too when the run has finished."""
    _push_run_files(store, out)
    if not (out / CHECKPOINT).exists():
        store.delete(f"{out.name}/{CHECKPOINT}")


def _push_run_files(store: StudyStore, out: Path) -> None:
    """The run folder but its checkpoint (every rank sends its own part of that), STATUS.json last."""
    for path in sorted(out.iterdir(), key=lambda p: (p.name == "STATUS.json", p.name)):
        if not path.name.startswith((CHECKPOINT, ".")) and path.name not in NOT_PUSHED:
            store.push(path, f"{out.name}/{path.name}", mirror=False)


def _start_retries() -> int:
    """Ray Train tries to start a worker group for START_TIMEOUT_S at a time and, by default, forever: as many
    tries as fit in RESOURCE_WAIT_S."""
    try:
        timeout = float(os.environ.get(START_TIMEOUT_ENV) or START_TIMEOUT_S)
    except ValueError:
        timeout = START_TIMEOUT_S
    return max(0, math.ceil(RESOURCE_WAIT_S / max(timeout, 1.0)) - 1)


def _worker_error(outcome: dict, config: TrainStepConfig, out: Path) -> Exception:
    """The run's failure (pipelines.warm_workers): a worker's own error, or why no worker could start."""
    if outcome.get("no_room"):
        checkpoint = (out / "checkpoint").is_dir() or (out / "checkpoint.old").is_dir()
        run_on_gpu = config.train.device == "cuda"
        return RunFailure(
            f"its {config.num_workers} training worker(s) of {config.cpus_per_worker} CPU(s)"
            + (f" and {config.gpus_per_worker:g} GPU" if run_on_gpu else "") + " each found no room in the "
            f"Ray cluster for {RESOURCE_WAIT_S:.0f}s (a node died or left, or other work holds the "
            + ("CPUs or GPUs); " if run_on_gpu else "CPUs); ")
            + ("its checkpoint is kept: " if checkpoint else "")
            + "add nodes or lower num_workers, then run the study again" + (" to resume" if checkpoint else ""))
    return RuntimeError(outcome["error"])
