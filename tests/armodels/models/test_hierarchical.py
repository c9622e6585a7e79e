"""The hierarchical (super-resolution) PixelCNN: its sequence's likelihood is the low-resolution image's under the
first stage times the full image's under the second given it, and the second stage sees the whole low image."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import armodels
from armodels.images import ImageDataError, downsample
from tests.armodels.models.util import make

CONFIG = {"height": 4, "width": 6, "vocab_size": 3, "channels": 6, "n_layers": 2, "kernel": 3}


def test_the_log_likelihood_is_the_low_images_plus_the_full_images_given_it():
    model = make("hierarchical_pixelcnn", **CONFIG)
    low = model.config.low_pixels
    assert low == 2 * 3 and model.seq_len == low + 24
    x = torch.randint(0, 3, (5, model.seq_len), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model.conditionals(x)
        first = model.low.log_prob(x[:, :low])  # the first stage is a Gated PixelCNN of the low image
        second = F.log_softmax(logits[:, low:], -1).gather(-1, x[:, low:, None]).squeeze(-1).sum(-1)
        torch.testing.assert_close(model.log_prob(x), first + second)


def test_every_full_resolution_pixel_sees_the_whole_low_image_around_it():
    """Changing one low-resolution pixel changes the second stage's logits at the pixels of its block and of the
    blocks next to it (a 3 × 3 window of the low image), first pixel included, and nowhere else."""
    model = make("hierarchical_pixelcnn", **{**CONFIG, "n_layers": 1})
    x = torch.randint(0, 3, (2, model.seq_len), generator=torch.Generator().manual_seed(2))
    y = x.clone()
    y[:, 4] = (y[:, 4] + 1) % 3  # the low pixel at row 1, column 1 of the 2 × 3 low image
    with torch.no_grad():
        changed = (model.conditionals(x) - model.conditionals(y)).abs().amax(dim=(0, 2))[6:].view(4, 6) > 0
    assert changed[0, 0] and changed.all()  # every block is next to (1, 1) here: all 24 pixels see it
    wide = make("hierarchical_pixelcnn", **{**CONFIG, "width": 10, "n_layers": 1})
    x = torch.randint(0, 3, (2, wide.seq_len), generator=torch.Generator().manual_seed(3))
    y = x.clone()
    y[:, 0] = (y[:, 0] + 1) % 3  # low pixel (0, 0): blocks (0..1, 0..1) only, the full image's columns 0..3
    with torch.no_grad():
        changed = (wide.conditionals(x) - wide.conditionals(y)).abs().amax(dim=(0, 2))[10:].view(4, 10) > 0
    assert changed[:, :4].all() and not changed[:, 4:].any()


def test_bad_factors_are_refused():
    with pytest.raises(ValueError, match=r"factor 2 must divide the image's height and width \(4 × 5\)"):
        armodels.make_config("hierarchical_pixelcnn", height=4, width=5)
    with pytest.raises(ValueError, match="factor"):
        armodels.make_config("hierarchical_pixelcnn", factor=1)


def test_downsampling_keeps_the_levels_and_rounds_each_blocks_mean():
    binary = np.array([[0, 1, 1, 1], [0, 0, 1, 1], [1, 1, 0, 1], [1, 0, 0, 0]], dtype=np.uint8)[None, ..., None]
    low = downsample(binary, 2)
    assert low.shape == (1, 2, 2, 1) and low.dtype == np.uint8
    assert low[0, :, :, 0].tolist() == [[0, 1], [1, 0]]  # means 0.25, 1, 0.75 and 0.25
    assert downsample(np.array([[1, 0], [0, 1]], dtype=np.uint8)[None, ..., None], 2).item() == 1  # 0.5: up
    values = np.array([[10, 20, 0, 255], [30, 41, 255, 255]], dtype=np.uint8)[None, ..., None]
    assert downsample(values, 2)[0, 0, :, 0].tolist() == [25, 191]  # 25.25 and 191.25
    with pytest.raises(ImageDataError, match=r"a factor of 3 must divide the images' height and width \(2 × 4\)"):
        downsample(values, 3)
