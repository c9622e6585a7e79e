"""Where a training run computes, decided in one place: the device, its default precision and its torch settings.

A study says `training.device: auto | cpu | cuda`. The planner resolves it against the GPUs the cluster has
(`resolve_device`), Ray places the run's workers accordingly, and inside a worker the loop asks this module for
the torch device, the precision, the process-group backend and the optimizer's kernel. Nothing else in arscale
tests for CUDA.
"""

from __future__ import annotations

DEVICES = ("auto", "cpu", "cuda")


class DeviceError(ValueError):
    """A device was asked for that this machine or cluster does not have."""


def resolve_device(requested: str, gpus_available: float) -> str:
    """'cpu' or 'cuda' for a `training.device` setting, given the GPUs the cluster (or this machine) has.

    auto picks cuda when there is any GPU. cuda without a GPU is an error that says what to do.
    """
    if requested not in DEVICES:
        raise DeviceError(f"device must be one of {', '.join(DEVICES)}, got {requested!r}")
    if requested == "auto":
        return "cuda" if gpus_available > 0 else "cpu"
    if requested == "cuda" and gpus_available <= 0:
        raise DeviceError("training.device is cuda but no GPU was found; use device: auto or cpu, "
                          "or run on a machine or cluster with GPUs")
    return requested


def local_gpus() -> int:
    """GPUs this process can see (0 without a CUDA build of torch)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def default_precision(device: str) -> str:
    """bf16 on a GPU that computes in it natively (Ampere and later), else fp32 (bf16 is slow on most CPUs)."""
    if device != "cuda":
        return "fp32"
    import torch

    return "bf16" if torch.cuda.is_bf16_supported() else "fp32"


def process_group_backend(device: str) -> str:
    """NCCL for CUDA tensors; gloo for CPU tensors, which a GPU run also reduces now and then (counts, votes)."""
    return "cpu:gloo,cuda:nccl" if device == "cuda" else "gloo"


# glibc's malloc settings (mallopt's parameter numbers, from malloc.h) and what arscale sets them to.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
KEEP_FREED_BYTES = 1 << 30


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of handing it back to the kernel; False where there is no
    glibc (macOS, musl), which is harmless.

    A training step on the CPU allocates and frees the same large tensors every step (logits, their gradients,
    activations: megabytes each). By default glibc serves such blocks with fresh mmaps and trims the heap after
    each free, so every step touches new pages: ~2,800 page faults a step at the default grid's top size, ~20% of
    the step on this project's VMs (bench_mfu.py --breakdown). Fixed thresholds keep the pages: the process's
    peak memory is unchanged, it is simply not returned between steps.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, KEEP_FREED_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, KEEP_FREED_BYTES))


def configure_torch(device: str) -> None:
    """Settings that pay off on the device: on the host, freed memory kept for the next step (the CPU computes
    there; a GPU run's host side allocates too); on a GPU, TF32 tensor cores for fp32 matmuls and convolutions."""
    keep_freed_memory()
    if device != "cuda":
        return
    import torch

    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def torch_device(device: str, local_rank: int = 0):
    """The torch.device of a worker: its own GPU (by local rank), or the CPU."""
    import torch

    return torch.device("cuda", local_rank) if device == "cuda" else torch.device("cpu")


def fused_adamw(device: str) -> bool:
    """AdamW's fused kernel: one pass over every parameter instead of a dozen elementwise ops each. On a GPU it
    saves kernel launches; on a CPU (torch >= 2.4) memory passes, ~2% of a step at the default grid's top size."""
    import torch

    return device == "cuda" or (device == "cpu" and hasattr(torch, "_fused_adamw_"))
