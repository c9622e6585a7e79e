"""The training loop: one model of any family, one token budget, DeepSpeed, warmup + cosine learning rate.

It runs wherever torch.distributed is set up: inside Ray Train workers (pipelines/steps/train.py) or in a single
process without Ray (`arscale train --config run.json`, for debugging and GPU checks). It imports no Ray.

Every family trains on the same objective, `model.loss(x)`: the mean negative log-likelihood per token of
`seq_len`-token windows. Count-based families (histogram, n-gram) count the same windows instead of stepping an
optimiser.

Outputs, written by rank 0 into `out_dir`:
    model.safetensors, model.json   the trained weights, the family and its config
    curve.json                      train loss per logged step and validation loss at the evaluation points
    result.json                     tokens, FLOPs, throughput, final losses, and status "ok", "diverged" or
                                    "interrupted" (stopped on request after saving a checkpoint)
    checkpoint/                     while the run is unfinished: the last mid-run checkpoint (armodels.checkpoint);
                                    a run started again in the same folder continues from it
"""

from __future__ import annotations

import atexit
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

import armodels
from armodels.checkpoint import (
    Checkpoint,
    OnFiles,
    gather_json,
    install_checkpoint_engine,
    load_checkpoint,
    load_zero_state,
    remove_checkpoint,
    save_checkpoint,
    save_zero_checkpoint,
)
from armodels.config_fields import added_field
from armodels.data import Batch, TokenWindows, batch_args
from armodels.device import (
    DeviceError,
    configure_torch,
    default_precision,
    fused_adamw,
    local_gpus,
    process_group_backend,
    torch_device,
)
from armodels.files import read_json, write_json_atomic
from armodels.shards import load_document_labels, load_token_stream
from scaling.flops import CONVENTIONS, training_flops


@dataclass(frozen=True)
class TrainConfig:
    tokens: int  # training budget; rounded up to whole global batches
    batch_size: int = 32  # global batch, in sequences
    micro_batch_size: int | None = None  # per worker and micro-step; default: batch_size // workers
    lr: float = 2e-3
    min_lr_ratio: float = 0.1  # the schedule decays to lr * min_lr_ratio
    warmup_fraction: float = 0.05  # warmup as a share of the run's steps, unless warmup_tokens is set
    schedule: str = added_field("cosine")  # after the warmup: cosine, wsd or constant (lr_multiplier)
    decay_fraction: float = added_field(0.2)  # wsd: the share of the steps that decay (the cooldown)
    decay_shape: str = added_field("1-sqrt")  # wsd: how the cooldown decays: linear, cosine or 1-sqrt
    warmup_tokens: int | None = added_field(None)  # warmup as tokens: the same length for every size of a grid
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    zero_stage: int = 0
    precision: str = "fp32"  # "bf16" (fast only on CPUs/GPUs with native bf16), or "auto": armodels.device decides
    compile: bool = False  # torch.compile the loss, compiled in the first step: for GPUs; no faster on a small CPU run
    device: str = added_field("cpu")  # "cpu" or "cuda": where the loop computes (resolved by the planner)
    seed: int = 0
    eval_points: int = 8  # validation evaluations during training, for the loss-vs-tokens curve
    eval_windows: int = 64  # validation windows per evaluation
    log_every: int = 10  # steps between metric reports
    checkpoints: int = 10  # evenly spaced mid-run checkpoints to resume from (0: none); a stop request adds one
    # steps after which a copy of the checkpoint is kept for good, in branch-<step>/: a WSD trunk's branch points,
    # where its cooldown branches start (TrainRun.start_from)
    branch_points: tuple[int, ...] = added_field(())
    # (under ZeRO 1-3 each worker saves its own partition: a checkpoint resumes only with the zero_stage, number of
    # workers and precision that saved it; armodels.checkpoint)

    def __post_init__(self) -> None:
        for name in ("tokens", "batch_size", "lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive (got {getattr(self, name)!r})")
        if self.precision not in ("fp32", "bf16", "auto"):
            raise ValueError(f"precision must be fp32, bf16 or auto, got {self.precision!r}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be cpu or cuda, got {self.device!r}")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}")
        object.__setattr__(self, "branch_points", tuple(sorted(set(self.branch_points))))  # run.json has a list
        if self.branch_points and min(self.branch_points) < 1:
            raise ValueError(f"branch_points must be steps ≥ 1, got {list(self.branch_points)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.decay_shape not in DECAY_SHAPES:
            raise ValueError(f"decay_shape must be one of {', '.join(DECAY_SHAPES)}, got {self.decay_shape!r}")
        if not 0 < self.decay_fraction < 1:
            raise ValueError(f"decay_fraction must be between 0 and 1 (exclusive), got {self.decay_fraction}")


@dataclass(frozen=True)
class ModelCosts:
    params: int
    params_nonembedding: int
    flops_per_token: float  # training FLOPs per token, counted layer by layer by the family


def flops_conventions(family: str) -> tuple[str, ...]:
    """The FLOPs conventions (scaling.flops) that can count a `family` model's compute. "per_layer" is each family's
    own count of what a forward and backward pass spend (logits included; MADE's one pass gives all its
    conditionals); kaplan and chinchilla are transformer formulas, so only transformers have them."""
    return CONVENTIONS if family == "transformer" else ("6ND", "6ND_total", "per_layer")


def flops_per_token(family: str, config: dict, convention: str) -> float:
    """Training FLOPs per token of a `family` model with `config`, counted in `convention`."""
    if convention not in flops_conventions(family):
        raise ValueError(f"the {convention} FLOPs convention does not apply to {family} models; one of "
                         f"{', '.join(flops_conventions(family))}")
    costs = model_costs(family, config)
    if convention == "per_layer":
        return costs.flops_per_token
    shape = {}
    if family == "transformer":
        c = armodels.make_config(family, **config)
        shape = dict(n_layer=c.n_layer, d_model=c.n_embd, seq_len=c.seq_len, vocab_size=c.vocab_size, n_head=c.n_head)
    return training_flops(convention, 1, params_nonembedding=costs.params_nonembedding, params_total=costs.params,
                          **shape)


def model_costs(family: str, config: dict) -> ModelCosts:
    """Parameter counts and FLOPs per token of a `family` model with `config`: the config's closed forms, so no
    model is built (a study plans models far larger than the planning machine's memory)."""
    c = armodels.make_config(family, **config)
    return ModelCosts(c.num_params(non_embedding=False), c.num_params(), c.flops_per_token())


@dataclass(frozen=True)
class TrainRun:
    """Everything one training run needs. Saved as run.json beside its outputs, so it can be re-run alone."""

    family: str
    model: dict  # the family's config fields (see armodels.build)
    train: TrainConfig
    train_shards: str
    val_shards: str
    name: str = "run"
    # a branch point of another run (its branch-<step>/ folder) to start from when the run's own folder holds no
    # checkpoint: a cooldown branch continues its trunk there, with its own schedule
    start_from: str | None = None

    def build(self):
        return armodels.build(self.family, **self.model)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainRun:
        return cls(family=d["family"], model=dict(d["model"]), train=TrainConfig(**d["train"]),
                   train_shards=d["train_shards"], val_shards=d["val_shards"], name=d.get("name", "run"),
                   start_from=d.get("start_from"))

    @classmethod
    def load(cls, path: Path) -> TrainRun:
        try:
            return cls.from_dict(read_json(path, "training run config"))
        except (KeyError, TypeError) as e:
            raise ValueError(f"{path} is not a valid training run config ({e})") from None

    @property
    def seq_len(self) -> int:
        return armodels.make_config(self.family, **self.model).seq_len

    @property
    def steps(self) -> int:
        return math.ceil(self.train.tokens / (self.train.batch_size * self.seq_len))

    @property
    def tokens_seen(self) -> int:
        return self.steps * self.train.batch_size * self.seq_len

    @property
    def warmup_fraction(self) -> float:
        """The share of the steps that warm up: warmup_tokens' worth of steps if set (at most half the run), else
        train.warmup_fraction."""
        if self.train.warmup_tokens is None:
            return self.train.warmup_fraction
        return min(0.5, self.train.warmup_tokens / self.tokens_seen)

    def costs(self) -> ModelCosts:
        return model_costs(self.family, self.model)

    def flops(self, convention: str, tokens: int | None = None) -> float:
        """Training FLOPs for `tokens` (default: the whole run) in `convention` (one of flops_conventions(family))."""
        tokens = self.tokens_seen if tokens is None else tokens
        return flops_per_token(self.family, self.model, convention) * tokens


@dataclass
class Curve:
    """What the loop measured along the way; step = optimizer step, tokens = tokens seen after it."""

    train: list[dict] = field(default_factory=list)  # {"step", "tokens", "loss", "lr"}
    val: list[dict] = field(default_factory=list)  # {"step", "tokens", "loss"}


# How a cooldown falls from 1 to 0 as its progress p goes from 0 to 1. Hägele et al. (2024) found 1 − sqrt best.
DECAY_SHAPES: dict[str, Callable[[float], float]] = {
    "linear": lambda p: 1 - p,
    "cosine": lambda p: 0.5 * (1 + math.cos(math.pi * p)),
    "1-sqrt": lambda p: 1 - math.sqrt(p),
}
SCHEDULES = ("cosine", "wsd", "constant")


def lr_multiplier(step: int, total_steps: int, warmup_fraction: float, min_ratio: float, schedule: str = "cosine",
                  decay_fraction: float = 0.2, decay_shape: str = "1-sqrt") -> float:
    """The learning rate of optimizer step `step` (from 0) of `total_steps`, as a share of the peak: a linear warmup
    over the first `warmup_fraction` of the steps, then

    - cosine: a cosine decay towards `min_ratio` over the rest;
    - wsd (warmup-stable-decay): the peak until the last `decay_fraction` of the steps, which decay to `min_ratio`
      (reached at the last step) along `decay_shape`;
    - constant: the peak to the end (the trunk that WSD cooldowns branch off).
    """
    warmup = max(1, round(warmup_fraction * total_steps))
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        progress = (step - warmup) / max(1, total_steps - warmup)
        return min_ratio + (1 - min_ratio) * DECAY_SHAPES["cosine"](min(1.0, progress))
    decay = max(1, round(decay_fraction * total_steps))
    progress = (step - (total_steps - decay) + 1) / decay  # 1 at the last step
    return 1.0 if progress <= 0 else min_ratio + (1 - min_ratio) * DECAY_SHAPES[decay_shape](min(1.0, progress))


def lr_schedule(run: TrainRun) -> Callable[[int], float]:
    """`run`'s lr_multiplier as a function of the step (what LambdaLR takes)."""
    cfg, total, warmup = run.train, run.steps, run.warmup_fraction
    return lambda step: lr_multiplier(step, total, warmup, cfg.min_lr_ratio, cfg.schedule, cfg.decay_fraction,
                                      cfg.decay_shape)


def deepspeed_config(cfg: TrainConfig, micro_batch: int, accumulation: int, world_size: int, precision: str) -> dict:
    return {
        "train_batch_size": micro_batch * accumulation * world_size,
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": accumulation,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": {"stage": cfg.zero_stage},
        "bf16": {"enabled": precision == "bf16"},
        "steps_per_print": 10**9,  # progress is ours to print
        "wall_clock_breakdown": False,
    }


def _split_batch(cfg: TrainConfig, world_size: int) -> tuple[int, int]:
    """(micro batch per worker, accumulation steps) that make up the global batch."""
    if cfg.batch_size % world_size:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by {world_size} workers")
    per_worker = cfg.batch_size // world_size
    micro = cfg.micro_batch_size or per_worker
    if per_worker % micro:
        raise ValueError(f"micro_batch_size {micro} does not divide the per-worker batch {per_worker}")
    return micro, per_worker // micro


class Objective(torch.nn.Module):
    """What DeepSpeed wraps: the model's mean NLL per token, so every family has the same forward."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        return self.model.loss(x, classes)


def train(run: TrainRun, out_dir: Path, *, on_metrics: Callable[[dict], None] | None = None,
          should_stop: Callable[[], bool] | None = None, on_checkpoint: Callable[[], None] | None = None,
          on_checkpoint_files: OnFiles | None = None, on_result: Callable[[dict], None] | None = None) -> dict:
    """Train `run` on the current torch.distributed group; returns the result dict (also saved as result.json).

    `on_metrics` is called on rank 0 every `log_every` steps and at each evaluation with a flat metrics dict.
    `on_result` is called on every rank, with the same final metrics on each, once at the end (for reporters that
    are collectives, such as `ray.train.report`).
    A non-finite loss stops the run with status "diverged" (the result says where); that is a result, not a crash.
    If `out_dir` holds a checkpoint of this run, training continues from it. `should_stop` is asked after every
    step (by every rank); when it says yes on any rank, all ranks save a checkpoint and return status "interrupted".
    While a checkpoint is written, `on_checkpoint_files(folder, names)` is called on every rank that wrote files of
    it (under ZeRO each rank writes its own partition), before its state.json exists; `on_checkpoint` is called on
    rank 0 once the checkpoint is complete. A study in an object store uploads the files, then the state.json.
    """
    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    # A run that already finished here (its worker died after saving the result, or its step failed afterwards)
    # is not trained again: rank 0 reads its result, and every rank hears whether there is one (gloo: CPU tensor).
    finished = _finished_result(run, Path(out_dir)) if rank == 0 else None
    flag = torch.tensor([1.0 if finished else 0.0])
    if world > 1:
        dist.all_reduce(flag)
    if flag.item():
        return finished or {"name": run.name, "status": "ok", "reason": "finished earlier"}
    torch.manual_seed(run.train.seed)
    model = run.build()
    # a class-conditioned model trains on labelled windows (one image, one label), any other on tokens alone
    windows = TokenWindows(load_token_stream(run.train_shards), model.seq_len, seed=run.train.seed,
                           labels=load_document_labels(run.train_shards) if model.n_classes else None)
    val = TokenWindows(load_token_stream(run.val_shards), model.seq_len,
                       labels=load_document_labels(run.val_shards) if model.n_classes else None)
    loop = _optimise if model.trainable else _count
    start, started_at, cpu_start = time.perf_counter(), time.time(), time.process_time()
    outcome = loop(run, model, windows, val, rank, world, on_metrics or (lambda m: None),
                   Path(out_dir), should_stop or (lambda: False),
                   _CheckpointHooks(on_checkpoint_files, on_checkpoint or (lambda: None)))
    elapsed = time.perf_counter() - start + outcome.earlier_seconds

    tokens = outcome.steps * run.train.batch_size * model.seq_len
    result = {
        "name": run.name, "family": run.family, "status": outcome.status, "reason": outcome.reason,
        "run": _fingerprint(run),  # what a finished result must match to stand for this run (_finished_result)
        "steps": outcome.steps, "tokens": tokens,
        "params": model.num_params(non_embedding=False), "params_nonembedding": model.num_params(),
        **{f"flops_{convention}": run.flops(convention, tokens) for convention in flops_conventions(run.family)},
        "initial_loss": outcome.initial_loss, "final_train_loss": outcome.last_loss,
        "final_val_loss": outcome.curve.val[-1]["loss"] if outcome.curve.val and outcome.status == "ok" else None,
        "train_seconds": elapsed, "tokens_per_s": tokens / elapsed, "workers": world,
        "device": run.train.device, "precision": outcome.precision,
        "resumed_at_step": outcome.resumed_at,
        # this attempt's steps on the wall clock (after DeepSpeed's set-up): what a study's timeline calls training
        "train_started_at": outcome.steps_started_at or started_at, "train_finished_at": time.time(),
        "train_cpu_seconds": time.process_time() - cpu_start,  # all threads; load stretches it less than wall time
    }
    if rank == 0:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        if outcome.status == "ok":
            save_model(model, run.family, Path(out_dir), outcome.weights)
        write_json_atomic(Path(out_dir) / "curve.json", asdict(outcome.curve))
        write_json_atomic(Path(out_dir) / "result.json", result)
        if outcome.status != "interrupted":
            remove_checkpoint(Path(out_dir))  # the run is over: only a stopped run needs its optimizer state
    (on_result or (lambda m: None))(
        {k: result[k] for k in ("tokens", "final_train_loss", "final_val_loss", "tokens_per_s", "params",
                                "params_nonembedding") if result[k] is not None} | {"status": outcome.status})
    return result


@dataclass
class _Outcome:
    curve: Curve
    steps: int
    initial_loss: float
    last_loss: float
    status: str = "ok"
    reason: str | None = None
    resumed_at: int | None = None  # the step a checkpoint let this attempt start from
    earlier_seconds: float = 0.0  # training time spent by earlier attempts
    steps_started_at: float | None = None  # wall clock when this attempt's first step began
    precision: str = "fp32"  # what the loop computed in (TrainConfig.precision, with "auto" resolved)
    weights: dict | None = None  # ZeRO-3, on rank 0: the full weights gathered from every rank's shard


@dataclass
class _CheckpointHooks:
    on_files: OnFiles | None  # every rank, with the checkpoint files it wrote (see `train`)
    on_saved: Callable[[], None]  # rank 0, once the checkpoint is complete


def _optimise(run: TrainRun, model, windows: TokenWindows, val: TokenWindows, rank: int, world: int,
              on_metrics: Callable[[dict], None], out_dir: Path, should_stop: Callable[[], bool],
              on_checkpoint: _CheckpointHooks) -> _Outcome:
    """Gradient descent with DeepSpeed on the global batches of every step, resuming from a checkpoint in
    `out_dir` if there is one and saving checkpoints along the way."""
    cfg = run.train
    if cfg.device == "cuda" and not local_gpus():
        raise DeviceError(f"{run.name} was planned for a GPU but this worker sees none (CUDA_VISIBLE_DEVICES="
                          f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); run it with device: cpu, or on a GPU")
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if cfg.device == "cuda" else "cpu")  # rather than a guess
    import deepspeed  # heavy import, kept out of module import time
    import deepspeed.ops

    # DeepSpeed's CPU backend JIT-compiles a shared-memory all-reduce op in every new process. Only DeepSpeed
    # inference uses it (training all-reduces through torch.distributed), and a process killed mid-build leaves
    # a lock file that makes every later build wait forever: mark it unavailable so it is never built.
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    import torch.distributed as dist

    micro, accum = _split_batch(cfg, world)
    device = torch_device(cfg.device, int(os.environ.get("LOCAL_RANK", 0)))
    precision = default_precision(cfg.device) if cfg.precision == "auto" else cfg.precision
    configure_torch(cfg.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    can_checkpoint = True  # until a ZeRO checkpoint finds no folder that every rank's files reach
    resume = _matching_checkpoint(out_dir, run, rank, world, precision) or _branch_start(run, precision, rank, world)
    if resume and not cfg.zero_stage:
        resume.load_weights(model)  # before DeepSpeed wraps the parameters (ZeRO: DeepSpeed loads them, below)
    model.to(device)  # before the optimizer: its fused kernel needs the parameters where they will live
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused_adamw(cfg.device) or None,
    )
    total = run.steps
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule(run))
    engine, _, _, _ = deepspeed.initialize(model=Objective(model), optimizer=optimizer, lr_scheduler=schedule,
                                           config=deepspeed_config(cfg, micro, accum, world, precision))
    if cfg.compile:
        engine.compile()  # DeepSpeed's way: torch.compile of the wrapped Objective, compiled on its first call
    curve = Curve()
    out = _Outcome(curve, 0, float("nan"), float("nan"), precision=precision)
    first_step = 0
    if cfg.zero_stage:
        install_checkpoint_engine(engine)  # DeepSpeed's partitioned checkpoints, read without unpickling objects
    if resume and cfg.zero_stage:
        _set_rng(load_zero_state(engine, resume), device)  # every rank: weights, its optimizer partition, schedule
    elif resume:
        engine.optimizer.load_state_dict(resume.optimizer["optimizer"])
        schedule.load_state_dict(resume.optimizer["scheduler"])
        _set_rng(resume.optimizer, device)
    if resume:
        for group, base in zip(optimizer.param_groups, schedule.base_lrs):  # by this run's own schedule: a branch's
            group["lr"] = base * lr_schedule(run)(resume.step)  # cooldown differs from the trunk's saved one
        curve.train, curve.val = resume.state["curve"]["train"], resume.state["curve"]["val"]
        first_step = out.steps = out.resumed_at = resume.step
        out.initial_loss, out.last_loss = resume.state["initial_loss"], resume.state["last_loss"]
        out.earlier_seconds = resume.state["train_seconds"]

    def run_state() -> dict:
        """What a checkpoint's state.json says of the run so far."""
        return {"run": _fingerprint(run), "zero_stage": cfg.zero_stage, "world_size": world, "precision": precision,
                "curve": asdict(curve), "initial_loss": out.initial_loss, "last_loss": out.last_loss,
                "train_seconds": out.earlier_seconds + time.perf_counter() - start}

    def checkpoint(steps_done: int) -> bool:
        """Save a checkpoint after `steps_done` steps (every rank calls it); False if none could be kept."""
        nonlocal can_checkpoint
        state = run_state()
        if cfg.zero_stage:  # every rank writes its partition
            saved = save_zero_checkpoint(out_dir, steps_done, engine, state, _rng_state(device),
                                         on_checkpoint.on_files)
            can_checkpoint = saved is not None
            if saved and rank == 0:
                on_checkpoint.on_saved()
        elif rank == 0:
            optimizer_state = {"optimizer": engine.optimizer.state_dict(), "scheduler": schedule.state_dict(),
                               **_rng_state(device)}
            save_checkpoint(out_dir, steps_done, model, optimizer_state, state, on_checkpoint.on_files)
            on_checkpoint.on_saved()
        dist.barrier()  # no rank runs ahead of a checkpoint it might have to resume from
        return can_checkpoint

    def keep_branch_point(steps_done: int) -> None:
        """A checkpoint after `steps_done` steps that outlives the run, in branch-<steps>/ (every rank calls it).
        Its branches load it as they would their own checkpoint, so under ZeRO they run on as many workers."""
        folder = branch_folder(out_dir, steps_done)
        if cfg.zero_stage:
            if save_zero_checkpoint(folder, steps_done, engine, run_state(), _rng_state(device),
                                    on_checkpoint.on_files) is None:
                raise ValueError(f"{run.name} could not keep its branch point after step {steps_done}: its workers "
                                 "write into folders that are not shared (other machines); put the study on a "
                                 "shared filesystem or in an object store")
            return
        if rank == 0:
            optimizer_state = {"optimizer": engine.optimizer.state_dict(), "scheduler": schedule.state_dict(),
                               **_rng_state(device)}
            save_checkpoint(folder, steps_done, model, optimizer_state, run_state())  # rank 0 has every file
        dist.barrier()

    def evaluate() -> float:
        engine.eval()
        with torch.no_grad():
            loss = mean_loss(lambda *batch: engine(*to_device(batch, device)), val, micro, cfg.eval_windows, rank,
                             world, device)
        engine.train()
        return loss

    eval_steps = {round(total * (i + 1) / cfg.eval_points) - 1 for i in range(cfg.eval_points)}
    checkpoint_steps = {round(total * (i + 1) / (cfg.checkpoints + 1))
                        for i in range(cfg.checkpoints if can_checkpoint else 0)}
    tokens_per_step = cfg.batch_size * model.seq_len

    def step_batches(step: int) -> list[Batch]:
        """This rank's micro-batches of optimizer step `step`, on their way to the device."""
        return [to_device(windows.train_batch(step, cfg.batch_size, offset=(m * world + rank) * micro, size=micro),
                          device) for m in range(accum)]

    start, out.steps_started_at = time.perf_counter(), time.time()
    batches = step_batches(first_step)
    window_loss, window_from = 0.0, first_step  # the loss summed since the last logged point, and its first step
    for step in range(first_step, total):
        model.before_train_step(step)  # MADE moves to this step's mask here
        # [summed mean loss, ranks asked to stop], on the engine's device: NCCL reduces only GPU tensors, and
        # adding losses there keeps the GPU from waiting on the host at every micro-step
        step_loss = torch.zeros(2, dtype=torch.float64, device=device)
        step_lr = optimizer.param_groups[0]["lr"]  # this step's (its last micro-step moves the schedule on)
        for batch in batches:
            loss = engine(*batch_args(batch))
            engine.backward(loss)
            engine.step()
            step_loss[0] += loss.detach().double() / accum
        if step + 1 < total:  # the next step's data is gathered and copied while the device still computes this one
            batches = step_batches(step + 1)
        step_loss[1] = float(should_stop())
        dist.all_reduce(step_loss)  # every rank sees the same loss and stop votes, so all stop together
        out.last_loss, out.steps = step_loss[0].item() / world, step + 1
        stop = step_loss[1].item() > 0 and step + 1 < total and can_checkpoint
        if step == 0:
            out.initial_loss = out.last_loss
        tokens = (step + 1) * tokens_per_step
        if not math.isfinite(out.last_loss):
            out.status, out.reason = "diverged", f"loss became {out.last_loss} at step {step} ({tokens} tokens)"
            break
        window_loss += out.last_loss
        if step % cfg.log_every == 0 or step == total - 1:
            elapsed = time.perf_counter() - start
            # loss: this step's batch; loss_mean: every step's since the last point (from mean_from), log_every
            # times less noisy, for fits of the whole curve (scaling.annealing)
            point = {"step": step, "tokens": tokens, "loss": out.last_loss, "lr": step_lr,
                     "loss_mean": window_loss / (step + 1 - window_from), "mean_from": window_from}
            window_loss, window_from = 0.0, step + 1
            curve.train.append(point)
            if rank == 0:
                on_metrics({**point, "tokens_per_s": (step + 1 - first_step) * tokens_per_step / elapsed,
                            "elapsed_s": elapsed, "progress": (step + 1) / total})
        if step in eval_steps:
            curve.val.append({"step": step, "tokens": tokens, "loss": evaluate()})
            if rank == 0:
                on_metrics({"step": step, "tokens": tokens, "val_loss": curve.val[-1]["loss"]})
        if (stop or step + 1 in checkpoint_steps) and can_checkpoint:
            stop = checkpoint(step + 1) and stop  # with no checkpoint kept, stopping would lose the run: go on
        if step + 1 in cfg.branch_points:
            keep_branch_point(step + 1)
        if stop:
            out.status, out.reason = "interrupted", f"stopped on request after step {step + 1} of {total}"
            break
    if cfg.zero_stage == 3 and out.status == "ok":
        out.weights = _gathered_weights(model, rank)  # a collective: each rank holds a shard of every parameter
    return out


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """The random generators a checkpoint restores (dropout draws from the device's)."""
    return {"rng": torch.get_rng_state(), **({"cuda_rng": torch.cuda.get_rng_state(device)}
                                             if device.type == "cuda" else {})}


def _set_rng(saved: dict, device: torch.device) -> None:
    torch.set_rng_state(saved["rng"])
    if device.type == "cuda" and "cuda_rng" in saved:
        torch.cuda.set_rng_state(saved["cuda_rng"], device)


def _gathered_weights(model, rank: int) -> dict[str, torch.Tensor] | None:
    """The full weights (parameters and buffers) of a ZeRO-3 `model` on rank 0, as CPU copies; None elsewhere. Every
    rank calls it: the parameters of one module at a time are gathered from their shards, copied and let go, so no
    rank ever holds more than one module's full parameters on its device."""
    import deepspeed

    keys = set(model.state_dict())
    weights: dict[str, torch.Tensor] = {}
    for prefix, module in model.named_modules(remove_duplicate=False):
        prefix = f"{prefix}." if prefix else ""
        with deepspeed.zero.GatheredParameters(list(module.parameters(recurse=False)), modifier_rank=None):
            if rank == 0:
                tensors = [*module.named_parameters(recurse=False, remove_duplicate=False),
                           *module.named_buffers(recurse=False, remove_duplicate=False)]
                weights.update({prefix + name: t.detach().to("cpu", copy=True) for name, t in tensors
                                if prefix + name in keys})
    if rank != 0:
        return None
    missing = keys - set(weights)
    if missing:
        raise RuntimeError(f"could not gather the ZeRO-3 weights {sorted(missing)[:5]} for the saved model")
    return weights


# What a branch may change of its trunk's training settings: its length, schedule and checkpointing.
BRANCH_SETTINGS = ("tokens", "schedule", "decay_fraction", "decay_shape", "branch_points", "checkpoints", "eval_points")


def branch_folder(trunk_dir: Path, step: int) -> Path:
    """Where a run keeps its branch point after `step` steps (TrainConfig.branch_points)."""
    return Path(trunk_dir) / f"branch-{step:09d}"


def branch_step(folder: str | Path) -> int:
    """The step of a branch point from its folder's name (branch_folder's inverse)."""
    return int(Path(folder).name.removeprefix("branch-"))


def _branch_start(run: TrainRun, precision: str, rank: int = 0, world: int = 1) -> Checkpoint | None:
    """The branch point `run` starts from (run.start_from), checked against it: the same family, model and
    training settings but for BRANCH_SETTINGS (so the same ZeRO stage), saved in the same precision and, under
    ZeRO, by as many workers (ZeRO partitions do not re-shard). None without one. Every rank calls it and all raise
    the same one-line ValueError when it does not fit."""
    if not run.start_from:
        return None
    start, problem = None, None
    try:
        start = load_checkpoint(Path(run.start_from), rank)
        if start is None:
            raise ValueError(f"{run.start_from} holds no checkpoint to start the branch {run.name} from; run its "
                             "trunk")
        trunk, own = start.state.get("run", {}), _fingerprint(run)
        differs = [k for k in ("family", "model") if trunk.get(k) != own[k]]
        differs += [f"train.{k}" for k, v in own["train"].items()
                    if k not in BRANCH_SETTINGS and trunk.get("train", {}).get(k) != v]
        if differs:
            raise ValueError(f"the branch {run.name} differs from the trunk it starts from ({run.start_from}) in "
                             f"{', '.join(differs)}")
        saved_world = start.world_size if start.zero_stage else world  # zero_stage 0 saves whole state
        saved = (saved_world, start.precision or precision)
        if saved != (world, precision):
            problem = (f"the branch point {start.folder} was saved on {saved[0]} worker(s) in {saved[1]} but the "
                       f"branch {run.name} runs on {world} in {precision}: give the branch its trunk's num_workers "
                       "and precision")
        if start.step >= run.steps:
            problem = f"the branch {run.name} ({run.steps} steps) would start after its end, at step {start.step}"
    except (OSError, ValueError) as e:
        problem = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if world > 1:  # the ranks agree: all start from the branch point, or all refuse with the same line
        problem = next((p for p in gather_json(problem) if p), None)
    if problem:
        raise ValueError(problem)
    return start


def _finished_result(run: TrainRun, out_dir: Path) -> dict | None:
    """The result.json that `run` left in `out_dir` when it finished (status ok, its weights saved), else None."""
    try:
        result = read_json(out_dir / "result.json", "training result")
    except (FileNotFoundError, ValueError):
        return None
    if result.get("status") != "ok" or result.get("run") != _fingerprint(run):
        return None
    return result if (out_dir / "model.safetensors").is_file() else None


def _fingerprint(run: TrainRun) -> dict:
    """What must match for a checkpoint to belong to `run` (data paths may differ: the folder may have moved)."""
    return json.loads(json.dumps({"family": run.family, "model": run.model, "train": asdict(run.train)}))


def _matching_checkpoint(out_dir: Path, run: TrainRun, rank: int, world: int, precision: str) -> Checkpoint | None:
    """The checkpoint in `out_dir` if it was taken by this same run, else None (with a note why on rank 0).

    Every rank calls it and all agree: a damaged checkpoint, one this run saved under another ZeRO stage, number of
    workers (ZeRO partitions do not re-shard) or precision, or ranks that see different checkpoints, raise the same
    one-line ValueError on every rank. A checkpoint of another run config (other than its ZeRO stage) is left alone
    and the run starts afresh, as before ZeRO checkpoints existed."""
    resume, problem = None, None
    try:
        resume = load_checkpoint(out_dir, rank)
        if resume and _without_zero_stage(resume.state.get("run")) != _without_zero_stage(_fingerprint(run)):
            if rank == 0:
                print(f"{run.name}: the checkpoint in {out_dir} belongs to a different run config; starting afresh",
                      flush=True)
            resume = None
        if resume:
            problem = _layout_mismatch(resume, run.train.zero_stage, world, precision)
    except (OSError, ValueError) as e:
        problem = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    views = gather_json({"error": problem, "step": resume.step if resume else None})
    errors = [v["error"] for v in views if v["error"]]
    if errors:
        raise ValueError(errors[0])
    if len({v["step"] for v in views}) > 1:
        seen = ", ".join(f"rank {r}: " + ("none" if v["step"] is None else f"step {v['step']}")
                         for r, v in enumerate(views))
        raise ValueError(f"the workers of {run.name} see different checkpoints in {out_dir} ({seen}); put the run "
                         "folder on a filesystem that all of them share, or the study in an object store")
    if resume and rank == 0:
        print(f"{run.name}: resuming from the checkpoint after step {resume.step} of {run.steps}", flush=True)
    return resume


def _without_zero_stage(fingerprint) -> dict | None:
    if not isinstance(fingerprint, dict) or not isinstance(fingerprint.get("train"), dict):
        return fingerprint
    return {**fingerprint, "train": {k: v for k, v in fingerprint["train"].items() if k != "zero_stage"}}


def _layout_mismatch(resume: Checkpoint, zero_stage: int, world: int, precision: str) -> str | None:
    """Why this run cannot load `resume`, which it saved itself, or None: ZeRO's partitions fit only the stage and
    number of workers that wrote them, and the optimizer state's form depends on the precision."""
    saved_world = resume.world_size if resume.zero_stage else world  # zero_stage 0 saves whole state: any workers
    saved_precision = resume.precision or precision  # older checkpoints do not say
    if (resume.zero_stage, saved_world, saved_precision) == (zero_stage, world, precision):
        return None

    def layout(stage: int, workers: int | None, prec: str) -> str:
        return f"zero_stage {stage}" + (f" on {workers} worker{'s' * (workers != 1)}" if workers else "") + \
            f" in {prec}"

    redo = f"zero_stage {resume.zero_stage}" + (f", num_workers {saved_world}" if saved_world else "") + \
        f", precision {saved_precision}"
    return (f"the checkpoint {resume.folder} was saved with {layout(resume.zero_stage, saved_world, saved_precision)}"
            f" but the run now has {layout(zero_stage, world, precision)}: run it as it was saved ({redo}), or "
            f"delete {resume.folder} to start over")


def _count(run: TrainRun, model, windows: TokenWindows, val: TokenWindows, rank: int, world: int,
           on_metrics: Callable[[dict], None], out_dir: Path, should_stop: Callable[[], bool],
           on_checkpoint: _CheckpointHooks) -> _Outcome:
    """Count-based families see the same token budget as the others, counted once, then summed over workers.
    Counting takes seconds, so it neither checkpoints nor stops early."""
    import torch.distributed as dist

    cfg, total = run.train, run.steps
    chunk = max(1, 4096 // cfg.batch_size)  # steps per fit() call: counting is cheap, re-tabulating is not
    for first in range(0, total, chunk):
        steps = range(first, min(first + chunk, total))
        per_rank = cfg.batch_size // world
        model.fit(torch.cat([windows.train_batch(s, cfg.batch_size, offset=rank * per_rank, size=per_rank)
                             for s in steps]))
    dist.all_reduce(model.counts)
    if hasattr(model, "tabulate"):
        model.tabulate()  # the n-gram's smoothed table, from the summed counts
    tokens = total * cfg.batch_size * model.seq_len
    with torch.no_grad():
        val_loss = mean_loss(model.loss, val, cfg.batch_size // world, cfg.eval_windows, rank, world)
        train_loss = mean_loss(model.loss, windows, cfg.batch_size // world, cfg.eval_windows, rank, world)
    curve = Curve(train=[{"step": total - 1, "tokens": tokens, "loss": train_loss, "lr": 0.0}],
                  val=[{"step": total - 1, "tokens": tokens, "loss": val_loss}])
    if rank == 0:
        on_metrics({"step": total - 1, "tokens": tokens, "val_loss": val_loss})
        on_metrics({**curve.train[0], "tokens_per_s": 0.0, "elapsed_s": 0.0, "progress": 1.0})
    # before any counts every model is uniform: that is where its "training" starts
    return _Outcome(curve, total, math.log(model.vocab_size), train_loss)


def to_device(batch: Batch, device: torch.device) -> Batch:
    """A CPU batch (tokens, or tokens and labels) on `device`; to a GPU through pinned memory, so the copy runs
    while the GPU computes."""
    if isinstance(batch, tuple):
        return tuple(to_device(t, device) for t in batch)
    return batch.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else batch


def mean_loss(loss_fn: Callable[..., torch.Tensor], windows: TokenWindows, batch_size: int,
              max_windows: int, rank: int, world: int, device: torch.device | str = "cpu") -> float:
    """Mean nats/token of `loss_fn(tokens)` (`loss_fn(tokens, labels)` on labelled windows) over the first
    `max_windows` windows, split across ranks and all-reduced."""
    import torch.distributed as dist

    total = torch.zeros(2, dtype=torch.float64, device=device)  # summed nats, tokens
    for batch in windows.eval_batches(batch_size, max_windows=max_windows, rank=rank, world_size=world):
        args = batch_args(batch)
        total += torch.tensor([loss_fn(*args).item() * args[0].numel(), args[0].numel()], dtype=torch.float64,
                              device=device)
    dist.all_reduce(total)
    return (total[0] / total[1]).item()


def save_model(model, family: str, out_dir: Path, weights: dict[str, torch.Tensor] | None = None) -> None:
    """Weights as fp32 safetensors (tied tensors stored once) and the family and config as JSON. `weights`: the
    model's full state dict when `model` holds only a shard of it (ZeRO-3: `_gathered_weights`)."""
    from safetensors.torch import save_model as save_safetensors

    fp32 = armodels.build(family, **asdict(model.config))
    weights = model.state_dict() if weights is None else weights
    fp32.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in weights.items()})
    tmp = out_dir / ".model.safetensors.tmp"
    save_safetensors(fp32, str(tmp))
    os.replace(tmp, out_dir / "model.safetensors")
    write_json_atomic(out_dir / "model.json", {"family": family, "config": asdict(model.config)})


def load_model(directory: Path):
    """Load a model saved by `save_model`: JSON config + safetensors, no pickle."""
    from safetensors.torch import load_model as load_safetensors

    directory = Path(directory)
    spec = read_json(directory / "model.json", "model config")
    try:
        model = armodels.build(spec["family"], **spec["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{directory / 'model.json'} is not a valid model config ({e})") from None
    path = directory / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the training run has no saved weights")
    try:
        load_safetensors(model, str(path))
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise ValueError(f"{path} is not a valid weights file ({e})") from None
    return model.eval()


def train_single_process(run: TrainRun, out_dir: Path, on_metrics: Callable[[dict], None] | None = None,
                         should_stop: Callable[[], bool] | None = None) -> dict:
    """Run the same loop without Ray: a one-process group on this machine (gloo, and NCCL beside it for a run on a
    GPU: armodels.device.process_group_backend).

    The group stays up for later runs in this process: DeepSpeed keeps references to it.
    """
    import torch.distributed as dist

    if not dist.is_initialized():
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("LOCAL_RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        # A group of one meets through a file, not a TCP store: torch's TCP store listens on every interface, and a
        # port inherited from a parent process (MASTER_PORT) may be held by the parent's group.
        rendezvous = Path(tempfile.mkdtemp(prefix="arscale-group-")) / "store"
        atexit.register(shutil.rmtree, rendezvous.parent, ignore_errors=True)
        dist.init_process_group(process_group_backend(run.train.device), init_method=f"file://{rendezvous}", rank=0,
                                world_size=1)
    return train(run, out_dir, on_metrics=on_metrics, should_stop=should_stop)
