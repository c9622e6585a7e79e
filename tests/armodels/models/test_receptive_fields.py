"""What each pixel of the PixelCNNs sees, measured by perturbing every earlier pixel."""

from __future__ import annotations

import pytest
import torch

import armodels


@pytest.fixture(autouse=True)
def float64():
    """Influences of far pixels at initialisation can be ~1e-6; in float64 they stand far above rounding."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def influence(model) -> torch.Tensor:
    """[T, H, W] booleans: entry [p, i, j] says whether changing pixel (i, j) changes the logits of pixel p
    (over 4 random images)."""
    T, V = model.seq_len, model.vocab_size
    x = torch.randint(0, V, (4, T), generator=torch.Generator().manual_seed(0))
    perturbed = x.repeat(T, 1)  # row q·4 + b is image b with pixel q changed
    perturbed[torch.arange(4 * T), torch.arange(T).repeat_interleave(4)] += 1
    logits = model.conditionals(perturbed % V).view(T, 4, T, V)
    changed = (logits - model.conditionals(x)).abs().amax(dim=(1, 3)) > 1e-10  # [q, p], beyond rounding
    return changed.T.reshape(T, model.config.height, model.config.width)


def before(height: int, width: int, pixel: int) -> torch.Tensor:
    return (torch.arange(height * width) < pixel).view(height, width)


def test_gated_pixelcnn_sees_every_earlier_pixel():
    torch.manual_seed(0)
    model = armodels.build("gated_pixelcnn", channels=8).eval()  # 8×8, 4 layers of 5×5
    H, W = model.config.height, model.config.width
    seen = influence(model)
    for p in range(H * W):
        assert torch.equal(seen[p], before(H, W, p)), f"pixel {divmod(p, W)} has a blind spot"


def test_pixelcnn_has_a_blind_spot_above_and_to_the_right():
    """Deep enough for the last pixel to see everything, PixelCNN still cannot see, from pixel (i, j), any pixel
    (i - r, c) with c > j + r: mask B only reaches one column right per row up (with a 3×3 mask A)."""
    torch.manual_seed(0)
    model = armodels.build("pixelcnn", channels=8, n_layers=12, first_kernel=3, kernel=3).eval()
    H, W = model.config.height, model.config.width
    seen = influence(model)
    assert torch.equal(seen[H * W - 1], before(H, W, H * W - 1))
    rows, cols = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    for i, j in [(H - 1, 0), (H // 2, W // 2)]:
        cone = before(H, W, i * W + j) & ((rows == i) | (cols <= j + (i - rows)))
        assert torch.equal(seen[i * W + j], cone), f"pixel {(i, j)}"
        assert (before(H, W, i * W + j) & ~cone).any()  # the blind spot is not empty
