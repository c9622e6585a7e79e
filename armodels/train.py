"""The training loop: one model, one token budget, DeepSpeed, warmup + cosine learning rate.

It runs wherever torch.distributed is set up: inside Ray Train workers (pipelines/steps/train.py) or in a single
process without Ray (`arscale train --config run.json`, for debugging and GPU checks). It imports no Ray.

Outputs, written by rank 0 into `out_dir`:
    model.safetensors, model.json   the trained weights and the model config
    curve.json                      train loss per logged step and validation loss at the evaluation points
    result.json                     tokens, FLOPs, throughput, final losses, and status "ok" or "diverged"
"""

from __future__ import annotations

import math
import os
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from armodels.data import TokenWindows
from armodels.files import read_json, write_json_atomic
from armodels.shards import load_token_stream
from armodels.models.transformer import Transformer, TransformerConfig
from scaling.flops import training_flops, transformer_nonembedding_params


@dataclass(frozen=True)
class TrainConfig:
    tokens: int  # training budget; rounded up to whole global batches
    batch_size: int = 32  # global batch, in sequences
    micro_batch_size: int | None = None  # per worker and micro-step; default: batch_size // workers
    lr: float = 2e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_fraction: float = 0.05
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    zero_stage: int = 0
    precision: str = "fp32"  # or "bf16" (fast only on CPUs/GPUs with native bf16)
    seed: int = 0
    eval_points: int = 8  # validation evaluations during training, for the loss-vs-tokens curve
    eval_windows: int = 64  # validation windows per evaluation
    log_every: int = 10  # steps between metric reports

    def __post_init__(self) -> None:
        if self.tokens < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(f"tokens, batch_size and lr must be positive: {self}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, got {self.precision!r}")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}")


@dataclass(frozen=True)
class TrainRun:
    """Everything one training run needs. Saved as run.json beside its outputs, so it can be re-run alone."""

    model: TransformerConfig
    train: TrainConfig
    train_shards: str
    val_shards: str
    name: str = "run"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainRun:
        return cls(model=TransformerConfig(**d["model"]), train=TrainConfig(**d["train"]),
                   train_shards=d["train_shards"], val_shards=d["val_shards"], name=d.get("name", "run"))

    @classmethod
    def load(cls, path: Path) -> TrainRun:
        try:
            return cls.from_dict(read_json(path, "training run config"))
        except (KeyError, TypeError) as e:
            raise ValueError(f"{path} is not a valid training run config ({e})") from None

    @property
    def steps(self) -> int:
        return math.ceil(self.train.tokens / (self.train.batch_size * self.model.seq_len))

    @property
    def tokens_seen(self) -> int:
        return self.steps * self.train.batch_size * self.model.seq_len

    def flops(self, convention: str, tokens: int | None = None) -> float:
        m = self.model
        return training_flops(convention, self.tokens_seen if tokens is None else tokens,
                              params_nonembedding=transformer_nonembedding_params(m.n_layer, m.n_embd), n_layer=m.n_layer,
                              d_model=m.n_embd, seq_len=m.seq_len, vocab_size=m.vocab_size)


@dataclass
class Curve:
    """What the loop measured along the way; step = optimizer step, tokens = tokens seen after it."""

    train: list[dict] = field(default_factory=list)  # {"step", "tokens", "loss", "lr"}
    val: list[dict] = field(default_factory=list)  # {"step", "tokens", "loss"}


def lr_multiplier(step: int, total_steps: int, warmup_fraction: float, min_ratio: float) -> float:
    """Linear warmup to 1, then cosine decay to `min_ratio` at the last step."""
    warmup = max(1, round(warmup_fraction * total_steps))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def deepspeed_config(cfg: TrainConfig, micro_batch: int, accumulation: int, world_size: int) -> dict:
    return {
        "train_batch_size": micro_batch * accumulation * world_size,
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": accumulation,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": {"stage": cfg.zero_stage},
        "bf16": {"enabled": cfg.precision == "bf16"},
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


def train(run: TrainRun, out_dir: Path, *, on_metrics: Callable[[dict], None] | None = None) -> dict:
    """Train `run` on the current torch.distributed group; returns the result dict (also saved as result.json).

    `on_metrics` is called on rank 0 every `log_every` steps and at each evaluation with a flat metrics dict.
    A non-finite loss stops the run with status "diverged" (the result says where); that is a result, not a crash.
    """
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # say so, rather than have DeepSpeed warn it guessed
    import deepspeed  # heavy import, kept out of module import time
    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    cfg, out_dir = run.train, Path(out_dir)
    micro, accum = _split_batch(cfg, world)
    torch.manual_seed(cfg.seed)

    windows = TokenWindows(load_token_stream(run.train_shards), run.model.seq_len, seed=cfg.seed)
    val = TokenWindows(load_token_stream(run.val_shards), run.model.seq_len)
    model = Transformer(run.model)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
    )
    total = run.steps
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_multiplier(s, total, cfg.warmup_fraction, cfg.min_lr_ratio))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=schedule,
                                           config=deepspeed_config(cfg, micro, accum, world))
    device = engine.device

    def evaluate() -> float:
        engine.eval()
        total_loss = torch.zeros(2, dtype=torch.float64)  # summed nats, tokens
        with torch.no_grad():
            for x, y in val.eval_batches(micro, max_windows=cfg.eval_windows, rank=rank, world_size=world):
                _, loss, _ = engine(x.to(device), y.to(device))
                total_loss += torch.tensor([loss.item() * y.numel(), y.numel()], dtype=torch.float64)
        dist.all_reduce(total_loss)
        engine.train()
        return (total_loss[0] / total_loss[1]).item()

    eval_steps = {round(total * (i + 1) / cfg.eval_points) - 1 for i in range(cfg.eval_points)} if cfg.eval_points else set()
    tokens_per_step = cfg.batch_size * run.model.seq_len
    curve, status, reason = Curve(), "ok", None
    start = time.perf_counter()
    initial_loss = last_loss = float("nan")
    for step in range(total):
        step_loss = torch.zeros(1, dtype=torch.float64)
        for m in range(accum):
            x, y = windows.train_batch(step, cfg.batch_size, offset=(m * world + rank) * micro, size=micro)
            _, loss, _ = engine(x.to(device), y.to(device))
            engine.backward(loss)
            engine.step()
            step_loss += loss.item() / accum
        dist.all_reduce(step_loss)  # every rank sees the same mean loss, so all stop together on divergence
        last_loss = step_loss.item() / world
        if step == 0:
            initial_loss = last_loss
        tokens = (step + 1) * tokens_per_step
        if not math.isfinite(last_loss):
            status, reason = "diverged", f"loss became {last_loss} at step {step} ({tokens} tokens)"
            break
        if step % cfg.log_every == 0 or step == total - 1:
            elapsed = time.perf_counter() - start
            point = {"step": step, "tokens": tokens, "loss": last_loss, "lr": schedule.get_last_lr()[0]}
            curve.train.append(point)
            if rank == 0 and on_metrics:
                on_metrics({**point, "tokens_per_s": tokens / elapsed, "elapsed_s": elapsed,
                            "progress": (step + 1) / total})
        if step in eval_steps:
            val_loss = evaluate()
            curve.val.append({"step": step, "tokens": tokens, "loss": val_loss})
            if rank == 0 and on_metrics:
                on_metrics({"step": step, "tokens": tokens, "val_loss": val_loss})
    elapsed = time.perf_counter() - start
    tokens_seen = (step + 1) * tokens_per_step

    result = {
        "name": run.name,
        "status": status,
        "reason": reason,
        "steps": step + 1,
        "tokens": tokens_seen,
        "params": model.num_params(non_embedding=False),
        "params_nonembedding": model.num_params(non_embedding=True),
        "flops_6ND": run.flops("6ND", tokens_seen),
        "flops_per_layer": run.flops("per_layer", tokens_seen),
        "initial_loss": initial_loss,
        "final_train_loss": last_loss,
        "final_val_loss": curve.val[-1]["loss"] if curve.val and status == "ok" else None,
        "train_seconds": elapsed,
        "tokens_per_s": tokens_seen / elapsed,
        "workers": world,
    }
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        if status == "ok":
            save_model(engine.module, run.model, out_dir)
        write_json_atomic(out_dir / "curve.json", asdict(curve))
        write_json_atomic(out_dir / "result.json", result)
    return result


def save_model(model: torch.nn.Module, config: TransformerConfig, out_dir: Path) -> None:
    """Weights as fp32 safetensors (tied tensors stored once) and the config as JSON."""
    from safetensors.torch import save_model as save_safetensors

    fp32 = Transformer(config)
    fp32.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    tmp = out_dir / ".model.safetensors.tmp"
    save_safetensors(fp32, str(tmp))
    os.replace(tmp, out_dir / "model.safetensors")
    write_json_atomic(out_dir / "model.json", asdict(config))


def load_model(directory: Path) -> Transformer:
    """Load a model saved by `save_model`: JSON config + safetensors, no pickle."""
    from safetensors.torch import load_model as load_safetensors

    directory = Path(directory)
    config = TransformerConfig(**read_json(directory / "model.json", "model config"))
    model = Transformer(config)
    path = directory / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the training run has no saved weights")
    try:
        load_safetensors(model, str(path))
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise ValueError(f"{path} is not a valid weights file ({e})") from None
    return model.eval()


def train_single_process(run: TrainRun, out_dir: Path, on_metrics: Callable[[dict], None] | None = None) -> dict:
    """Run the same loop without Ray: a one-process gloo group on this machine (NCCL if a GPU is visible).

    The group stays up for later runs in this process: DeepSpeed keeps references to it.
    """
    import torch.distributed as dist

    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("LOCAL_RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", rank=0, world_size=1)
    return train(run, out_dir, on_metrics=on_metrics)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
