"""A back-of-the-envelope model of data-parallel throughput on 8, 64 and 512 GPUs (bench/README.md, "Scale-out").

Step time on n GPUs = max(compute of the global batch / n, the per-step floor) + the gradient all-reduce that
backward does not hide. The all-reduce is a ring within a node and across nodes (NCCL's tree for small messages:
latency grows with log2 n); its bytes are 2 (n-1)/n × the gradient size. Every number below is either measured on
this machine (the CPU line) or an assumption stated in ASSUMPTIONS; change them and re-run.

    .venv/bin/python bench/scale_out.py
"""

from __future__ import annotations

import math
from dataclasses import dataclass

ASSUMPTIONS = {
    "gpu_flops": 989e12 * 0.40,  # H100 SXM bf16 dense peak × an assumed 40% MFU for a model large enough to fill it
    "step_floor_s": 1.5e-3,  # eager PyTorch on one GPU: ~300 kernel launches per step of a 4-layer model
    "nvlink_bytes_s": 370e9,  # all-reduce bus bandwidth inside an 8-GPU node (NVLink 4)
    "network_bytes_s": 50e9,  # across nodes: 400 Gb/s InfiniBand per GPU
    "latency_s": 10e-6,  # per all-reduce hop
    "overlap": 0.7,  # share of the all-reduce hidden behind backward (DeepSpeed overlap_comm) for large models
    "gpus_per_node": 8,
}


@dataclass(frozen=True)
class Model:
    name: str
    params: float  # all trained parameters: their gradients are all-reduced
    flops_per_token: float  # training FLOPs per token (per-layer count)
    sequences: int  # the global batch, in sequences: data parallelism splits it, so at most this many GPUs
    seq_len: int
    grad_bytes: int = 4  # fp32 gradients (bf16: 2)

    @property
    def tokens_per_step(self) -> int:
        return self.sequences * self.seq_len


def allreduce_seconds(model: Model, gpus: int, a: dict) -> float:
    if gpus == 1:
        return 0.0
    bandwidth = a["nvlink_bytes_s"] if gpus <= a["gpus_per_node"] else a["network_bytes_s"]
    hops = 2 * math.ceil(math.log2(gpus))
    return 2 * (gpus - 1) / gpus * model.params * model.grad_bytes / bandwidth + hops * a["latency_s"]


def data_parallel(model: Model, gpus: int, a: dict = ASSUMPTIONS) -> dict | None:
    """Tokens/s of one run data-parallel on `gpus` GPUs and the share of each step spent communicating; None when
    the global batch has fewer sequences than GPUs."""
    if gpus > model.sequences:
        return None
    compute = max(model.tokens_per_step * model.flops_per_token / a["gpu_flops"] / gpus, a["step_floor_s"])
    comm = allreduce_seconds(model, gpus, a)
    exposed = comm if compute <= a["step_floor_s"] else comm * (1 - a["overlap"])
    step = compute + exposed
    return {"tokens_s": model.tokens_per_step / step, "comm_share": exposed / step, "step_s": step}


# The default grid's largest model (configs/text-default.yaml; params and FLOPs/token as the study reports them),
# and the GPU bench's ~1.3B transformer (bench_mfu.GpuRun) to show where data parallelism and ZeRO start to pay.
DEFAULT_TOP = Model("default grid's largest (4 × 128, 936k params, batch 32 × 128)", 936e3, 6.3e6, 32, 128)
LARGE = Model("~1.3B transformer (batch 512 × 2048, bf16 gradients)", 1.3e9, 9.1e9, 512, 2048, grad_bytes=2)


def main() -> None:
    print("assumptions: " + ", ".join(f"{k}={v:g}" for k, v in ASSUMPTIONS.items()))
    for model in (DEFAULT_TOP, LARGE):
        one = data_parallel(model, 1)
        print(f"\n{model.name}: one GPU {one['tokens_s']:,.0f} tokens/s ({one['step_s'] * 1e3:.2f} ms a step)")
        print(f"{'GPUs':>5} {'data-parallel tokens/s':>23} {'speed-up':>9} {'comm share':>11} "
              f"{'grid-parallel runs at once':>27}")
        for gpus in (8, 64, 512):
            dp = data_parallel(model, gpus)
            if dp is None:
                print(f"{gpus:>5} {'n/a: batch < GPUs':>23} {'':>9} {'':>11} {gpus:>27}")
                continue
            print(f"{gpus:>5} {dp['tokens_s']:>23,.0f} {dp['tokens_s'] / one['tokens_s']:>8.1f}× "
                  f"{dp['comm_share']:>10.0%} {gpus:>27}")


if __name__ == "__main__":
    main()
