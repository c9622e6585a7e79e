"""The diagonal state-space family: its recurrent decoder against its convolution, causality, training, configs."""

from __future__ import annotations

import pytest
import torch

import armodels
from armodels.train import train_single_process
from tests.armodels.models.util import decoder_error, make
from tests.armodels.test_train_loop import make_run


def test_the_recurrence_gives_the_logits_of_the_convolution():
    """Teacher forced over whole sequences, the decoder's state steps agree with `conditionals` (≤ 1e-5), with
    long memories (small Δ) and short ones (large Δ) alike."""
    for dt in ({}, {"dt_min": 0.5, "dt_max": 1.0}):
        model = make("ssm", vocab_size=11, seq_len=40, n_layer=3, n_embd=12, d_state=6, **dt)
        x = torch.randint(0, 11, (3, 40), generator=torch.Generator().manual_seed(0))
        assert decoder_error(model, x) <= 1e-5


def test_the_kernel_is_the_recurrence_unrolled():
    """K_t = Re(C A^t B): the response of the recurrence to one unit input at time 0."""
    ssm = make("ssm", n_embd=5, d_state=3).blocks[0].ssm
    T = 20
    u = torch.zeros(1, T, 5)
    u[0, 0] = 1
    state, ys = torch.zeros(1, 5, 3, dtype=torch.complex64), []
    with torch.no_grad():
        for t in range(T):
            y, state = ssm.step(u[:, t], state)
            ys.append(y)
        response = torch.stack(ys, dim=1)[0].T  # [d, T]
        torch.testing.assert_close(response - ssm.D[:, None] * u[0].T, ssm.kernel(T), rtol=0, atol=1e-6)
        torch.testing.assert_close(ssm(u)[0].T, response, rtol=0, atol=1e-6)


@torch.no_grad()
def test_changing_a_token_changes_no_earlier_logit():
    """Position t's token enters only the logits after t: the FFT's padding lets nothing wrap round."""
    model = make("ssm", vocab_size=7, seq_len=24)
    x = torch.randint(0, 7, (2, 24), generator=torch.Generator().manual_seed(1))
    logits = model.conditionals(x)
    for t in (0, 5, 23):
        y = x.clone()
        y[:, t] = (y[:, t] + 1) % 7
        changed = model.conditionals(y)
        torch.testing.assert_close(changed[:, : t + 1], logits[:, : t + 1], rtol=0, atol=1e-5)
        if t + 1 < 24:
            assert (changed[:, t + 1] - logits[:, t + 1]).abs().max() > 1e-3


def test_a_tiny_model_trains_through_the_training_loop(tmp_path, shards):
    result = train_single_process(make_run(shards, "ssm", dict(n_layer=1, n_embd=16, d_state=8)), tmp_path)
    assert result["status"] == "ok" and result["family"] == "ssm"
    assert result["final_train_loss"] < result["initial_loss"] - 0.5


@pytest.mark.parametrize("field, value", [("n_layer", 0), ("n_embd", 0), ("d_state", -1), ("seq_len", 0),
                                          ("vocab_size", 0), ("d_state", True), ("dt_min", 0.0), ("dt_max", 2.0)])
def test_bad_config_values_are_refused_by_name(field, value):
    with pytest.raises(ValueError, match=f"^{field}:"):
        armodels.make_config("ssm", **{field: value})


def test_dt_min_above_dt_max_is_refused():
    with pytest.raises(ValueError, match="^dt_min: must be at most dt_max"):
        armodels.make_config("ssm", dt_min=0.5, dt_max=0.1)
