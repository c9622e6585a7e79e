"""Device choice: one place decides cpu or cuda, the precision and the backend (armodels.device)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from armodels.device import (DeviceError, configure_torch, default_precision, fused_adamw, local_gpus,
                             process_group_backend, resolve_device, torch_device)
from tests.support.cli import ROOT


@pytest.mark.parametrize("requested, gpus, expected", [
    ("auto", 0, "cpu"), ("auto", 1, "cuda"), ("auto", 0.25, "cuda"), ("cpu", 8, "cpu"), ("cuda", 2, "cuda"),
])
def test_a_device_setting_resolves_against_the_gpus_there_are(requested, gpus, expected):
    assert resolve_device(requested, gpus) == expected


def test_cuda_without_a_gpu_is_an_error_that_says_what_to_do():
    with pytest.raises(DeviceError, match="no GPU was found; use device: auto or cpu"):
        resolve_device("cuda", 0)
    with pytest.raises(DeviceError, match="one of auto, cpu, cuda"):
        resolve_device("tpu", 1)


def test_the_cpu_gets_fp32_gloo_and_the_fused_optimizer_that_torch_has():
    import torch

    assert default_precision("cpu") == "fp32"
    assert process_group_backend("cpu") == "gloo"
    assert fused_adamw("cpu")  # torch >= 2.4 fuses AdamW on the CPU too
    weight = torch.nn.Parameter(torch.ones(3))
    weight.grad = torch.ones(3)
    torch.optim.AdamW([weight], lr=0.1, fused=True).step()  # the kernel fused_adamw promises runs here
    assert torch.allclose(weight.detach(), torch.full((3,), 0.9), atol=1e-3)
    assert str(torch_device("cpu", local_rank=3)) == "cpu"


def test_a_gpu_gets_nccl_tf32_and_the_fused_optimizer():
    import torch

    assert process_group_backend("cuda") == "cpu:gloo,cuda:nccl"
    assert fused_adamw("cuda")
    assert str(torch_device("cuda", local_rank=1)) == "cuda:1"
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        configure_torch("cuda")  # sets flags only; works without a GPU
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_this_machine_reports_the_gpus_torch_sees():
    import torch

    assert local_gpus() == (torch.cuda.device_count() if torch.cuda.is_available() else 0)


FAULTS_PER_ALLOCATION = """
import resource, sys, torch
from armodels.device import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
for _ in range(20):  # to the steady state: aligned blocks settle in the heap after a few rounds
    torch.empty(10_000_000).fill_(1.0)  # 40 MB: more than glibc ever serves from its heap by default
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    torch.empty(10_000_000).fill_(1.0)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_freed_memory_is_kept_for_the_next_step_instead_of_faulted_in_again():
    def faults(mode: str) -> float:
        done = subprocess.run([sys.executable, "-c", FAULTS_PER_ALLOCATION, mode], capture_output=True, text=True,
                              cwd=ROOT, check=True)
        return float(done.stdout.split()[-1])

    # a 40 MB tensor is 9,766 pages: by default each new one is a fresh mmap, faulted in page by page
    assert faults("default") > 5_000
    assert faults("keep") < 100
