"""Device choice: one place decides cpu or cuda, the precision and the backend (armodels.device)."""

from __future__ import annotations

import pytest

from armodels.device import (DeviceError, configure_torch, default_precision, fused_adamw, local_gpus,
                             process_group_backend, resolve_device, torch_device)


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


def test_the_cpu_gets_fp32_gloo_and_the_plain_optimizer():
    assert default_precision("cpu") == "fp32"
    assert process_group_backend("cpu") == "gloo"
    assert not fused_adamw("cpu")
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
