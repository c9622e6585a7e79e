"""Colour images: the colour-patches data set, PixelCNN and Gated PixelCNN with R → G → B channel masks, and
PixelCNN++'s colour mixture of logistics. A colour image is H·W·3 tokens, raster order with R, G, B of a pixel in
turn (the layout of an [H, W, 3] array flattened)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import armodels
from armodels import images as image_module
from armodels.images import ImageDataError, image_shape, load_images
from armodels.models import gated_pixelcnn, pixelcnn
from armodels.models.layers import MaskedConv2d, group_mask, raster_group_mask, raster_mask
from tests.armodels.models.util import all_sequences, decoder_error, make

COLOUR = {"pixelcnn": {"channels": 12, "n_layers": 2, "first_kernel": 3, "kernel": 3},
          "gated_pixelcnn": {"channels": 12, "n_layers": 2, "kernel": 3},
          "mixture_of_logistics": {"channels": 12, "n_layers": 2, "first_kernel": 3, "kernel": 3, "n_mixtures": 2}}


def colour(family: str, vocab_size: int = 256, height: int = 2, width: int = 2, **config):
    """A colour model of `height` × `width` pixels, seeded, in eval mode."""
    config = {**COLOUR[family], **config}
    return make(family, **config, channels_in=3, vocab_size=vocab_size, height=height, width=width)


def float64_log_prob(model, x: torch.Tensor) -> torch.Tensor:
    """`model.log_prob(x)` without its cast to float32."""
    return model.conditionals(x).log_softmax(-1).gather(-1, x[..., None]).squeeze(-1).sum(-1)


@pytest.fixture
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


# ---- the data set ----

def test_colour_patches_are_8x8_rgb_split_by_photo_columns(monkeypatch):
    train, test = load_images("colour-patches"), load_images("colour-patches", split="test")
    assert train.images.shape == (1612, 8, 8, 3) and test.images.shape == (416, 8, 8, 3)
    assert train.images.dtype == test.images.dtype == np.uint8 and train.labels.dtype == np.int64
    assert np.bincount(train.labels).tolist() == [806, 806] and np.bincount(test.labels).tolist() == [208, 208]
    assert np.array_equal(load_images("colour-patches").images, train.images)  # deterministic
    assert np.array_equal(load_images("colour-patches", split="test", limit=5).images, test.images[:5])
    from sklearn.datasets import load_sample_images

    china = np.asarray(load_sample_images().images[0], float)[:426]  # china.jpg comes first
    halved = np.floor(china.reshape(213, 2, 320, 2, 3).mean((1, 3)) + 0.5)  # rounded means of 2×2 blocks

    def patch(row: int, col: int) -> np.ndarray:
        return halved[8 * row:8 * row + 8, 8 * col:8 * col + 8]

    assert np.array_equal(train.images[0], patch(0, 0)) and np.array_equal(train.images[30], patch(0, 30))
    assert np.array_equal(train.images[31], patch(1, 0))  # 31 train columns a row; column 31 is left out
    assert np.array_equal(test.images[0], patch(0, 32)) and np.array_equal(test.images[9], patch(1, 33))
    assert "colour-patches test split" in test.source
    with pytest.raises(ImageDataError, match="train and test"):
        load_images("colour-patches", split="val")
    monkeypatch.setattr(image_module, "_colour_patches", None)
    assert image_shape("colour-patches", split="test") == (8, 8, 3)  # planned without reading the photos


# ---- masks ----

def test_channel_masks_a_and_b_by_gradients():
    """At the centre tap, R reads none of the current pixel's channels, G reads R, B reads R and G (mask A); mask B
    lets each group read itself too. Two channels per group: channel c is in group c mod 3."""
    torch.manual_seed(0)
    rgb = ["R", "G", "B"]
    for include_centre, seen in [(False, {"R": "", "G": "R", "B": "RG"}), (True, {"R": "R", "G": "RG", "B": "RGB"})]:
        conv = MaskedConv2d(6, 6, raster_group_mask(6, 6, 3, 3, groups=3, include_centre=include_centre))
        jacobian = torch.autograd.functional.jacobian(conv, torch.randn(1, 6, 1, 1)).reshape(6, 6)
        for out in range(6):
            reads = {rgb[c % 3] for c in range(6) if jacobian[out, c] != 0}
            assert reads == set(seen[rgb[out % 3]]), (include_centre, out)
    assert torch.equal(raster_group_mask(4, 2, 3, 5, groups=1, include_centre=True),
                       raster_mask(3, 5, include_centre=True).expand(4, 2, 3, 5))  # one group: as before
    with pytest.raises(ValueError, match="channels: 3 colour groups need at least 3 input"):
        group_mask(6, 1, 3, include_own=False)


@pytest.mark.parametrize("module, family", [(pixelcnn, "pixelcnn"), (gated_pixelcnn, "gated_pixelcnn")])
def test_each_sub_pixel_sees_exactly_the_earlier_ones_by_gradients(module, family, monkeypatch, float64):
    """d(logits of token t) / d(input of token s) ≠ 0 exactly when s comes before t: earlier pixels, and the current
    pixel's earlier channels (a 2×2 image is small enough for PixelCNN to have no blind spot)."""
    model = colour(family, vocab_size=5, channels=24)  # channels to spare: a group of dead ReLUs hides nothing
    T = model.seq_len
    image = torch.randn(8, 3, 2, 2, requires_grad=True)
    monkeypatch.setattr(module, "image_input", lambda *args: image)
    projected = model.conditionals(torch.zeros(8, T, dtype=torch.long)) @ torch.randn(5)  # [8, T]
    seen = torch.zeros(T, T, dtype=torch.bool)
    for t in range(T):
        (grad,) = torch.autograd.grad(projected[:, t].sum(), image, retain_graph=True)
        seen[t] = (grad.permute(0, 2, 3, 1).reshape(8, T) != 0).any(0)  # [B, C, H, W] → token order
    assert torch.equal(seen, torch.ones(T, T, dtype=torch.bool).tril(-1))


@pytest.mark.parametrize("family", COLOUR)
def test_each_sub_pixel_depends_on_exactly_the_earlier_ones_by_perturbation(family, float64):
    model = colour(family, vocab_size=7, channels=24)
    T = model.seq_len
    x = torch.randint(0, 7, (8, T), generator=torch.Generator().manual_seed(0))
    logits = model.conditionals(x)
    for s in range(T):
        y = x.clone()
        y[:, s] = (y[:, s] + 3) % 7
        changed = (model.conditionals(y) - logits).abs().amax(dim=(0, 2)) > 1e-12  # [T]
        assert torch.equal(changed, torch.arange(T) > s), f"changing token {s} (pixel {s // 3}, channel {s % 3})"


def test_refuses_bad_channel_configs():
    for family in COLOUR:
        with pytest.raises(ValueError, match="channels_in: must be 1 .* or 3"):
            armodels.make_config(family, channels_in=2)
    for family in ("pixelcnn", "gated_pixelcnn"):  # channel masks need a channel per group
        with pytest.raises(ValueError, match="channels: must be a whole number from 3"):
            armodels.make_config(family, channels_in=3, channels=2)
    assert armodels.make_config("mixture_of_logistics", channels_in=3, channels=2).seq_len == 8 * 8 * 3
    assert armodels.make_config("pixelcnn").seq_len == 64 and armodels.make_config("pixelcnn").channels_in == 1


# ---- probabilities ----

@pytest.mark.parametrize("family", COLOUR)
def test_probabilities_of_all_1x2_rgb_images_sum_to_one(family, float64):
    model = colour(family, vocab_size=3, height=1, width=2)
    assert model.seq_len == 6
    x = all_sequences(3, 6)
    log_probs = float64_log_prob(model, x)
    assert log_probs.exp().sum().item() == pytest.approx(1.0, abs=1e-12)
    assert model.log_prob(x).exp().sum().item() == pytest.approx(1.0, abs=1e-5)  # (log_prob works in float32)
    model = colour(family)  # 256 levels: every sub-pixel's distribution sums to 1
    x = torch.randint(0, 256, (3, model.seq_len), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(model.conditionals(x).softmax(-1).sum(-1), torch.ones(3, model.seq_len))


def logistic_mass(v: int, mean: float, scale: float, levels: int) -> float:
    """The mass a logistic puts on level v's bin of [-1, 1], the edge bins open."""
    def cdf(z):
        return 1 / (1 + math.exp(-(z - mean) / scale))

    centre = -1 + 2 * v / (levels - 1)
    upper = 1.0 if v == levels - 1 else cdf(centre + 1 / (levels - 1))
    lower = 0.0 if v == 0 else cdf(centre - 1 / (levels - 1))
    return upper - lower


def test_colour_mixture_log_prob_is_the_pixelcnnpp_likelihood(float64):
    """log_prob = Σ over pixels of log Σ_k π_k P_k(r) P_k(g | r) P_k(b | r, g), computed here pixel by pixel from the
    trunk's outputs (weights [K], then means, log-scales and coefficients [3, K]); G's mean moves with r, B's with
    r and g."""
    model = colour("mixture_of_logistics", height=1, width=2)
    K, levels = 2, 256
    x = torch.tensor([[0, 128, 255, 40, 41, 200], [255, 255, 0, 7, 128, 64]])
    params = model.trunk(x).flatten(2).transpose(1, 2).detach()  # [B, 2 pixels, 10K]
    log_probs = float64_log_prob(model, x)
    for b in range(2):
        expected = 0.0
        for p in range(2):
            weights, rest = params[b, p, :K].softmax(0).tolist(), params[b, p, K:].view(3, 3, K)
            means, scales, coeffs = rest[0].tanh(), rest[1].clamp(min=-7).exp(), rest[2].tanh()
            r, g, _ = (x[b, 3 * p:3 * p + 3] * 2 / (levels - 1) - 1).tolist()
            likelihood = 0.0
            for k in range(K):
                mu = [means[0, k], means[1, k] + coeffs[0, k] * r, means[2, k] + coeffs[1, k] * r + coeffs[2, k] * g]
                likelihood += weights[k] * math.prod(logistic_mass(int(x[b, 3 * p + c]), float(mu[c]),
                                                                   float(scales[c, k]), levels) for c in range(3))
            expected += math.log(likelihood)
        assert log_probs[b].item() == pytest.approx(expected, rel=1e-12)
    assert torch.allclose(model.log_prob(x).double(), log_probs, rtol=1e-6)  # (log_prob works in float32)


# ---- sampling and training ----

@pytest.mark.parametrize("family", COLOUR)
def test_samples_are_valid_rgb_images(family):
    model = colour(family, height=2, width=3)
    samples = model.sample(4, seed=0)
    assert samples.shape == (4, 18) and samples.min() >= 0 and samples.max() < 256
    images = samples.numpy().astype(np.uint8).reshape(4, 2, 3, 3)  # [N, H, W, C], as armodels.images gives them
    assert torch.equal(torch.from_numpy(images.reshape(4, -1)).long(), samples)
    assert torch.equal(model.sample(4, seed=0), samples)
    assert decoder_error(model, samples) < 1e-5


@pytest.mark.parametrize("family", COLOUR)
def test_training_on_colour_patches_lowers_bits_per_dim(family):
    patches = load_images("colour-patches", limit=16).images  # [16, 8, 8, 3]
    x = torch.from_numpy(patches.reshape(len(patches), -1)).long()  # raster order, R, G, B innermost
    model = colour(family, height=8, width=8).train()
    assert model.seq_len == x.size(1) == 192
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(10):
        loss = model.loss(x)
        optimiser.zero_grad()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        optimiser.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) < sum(losses[:3]) - 0.3, losses
    with torch.no_grad():
        bits_per_dim = model.loss(x).item() / math.log(2)  # nats per token (a sub-pixel) / ln 2
        total_bits = -model.log_prob(x).sum().item() / math.log(2)
    assert bits_per_dim == pytest.approx(total_bits / patches.size, rel=1e-5)
    assert bits_per_dim < 8  # below the 8 bits of a uniform sub-pixel
