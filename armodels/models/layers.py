"""Masked layers shared by MADE and the PixelCNNs: a weight mask (a buffer) zeroes the connections that would let
an output see the inputs it must not, so causality holds by construction."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class MaskedLinear(nn.Linear):
    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features)
        self.register_buffer("mask", torch.ones_like(self.weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class MaskedConv2d(nn.Conv2d):
    """A 'same'-padded convolution whose kernel is multiplied by `mask` [kh, kw] (odd sizes, centred)."""

    def __init__(self, in_channels: int, out_channels: int, mask: torch.Tensor):
        kh, kw = mask.shape
        super().__init__(in_channels, out_channels, (kh, kw), padding=(kh // 2, kw // 2))
        self.register_buffer("mask", mask.to(self.weight.dtype).expand_as(self.weight).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight * self.mask, self.bias)


def raster_mask(height: int, width: int, include_centre: bool) -> torch.Tensor:
    """Kernel mask over the pixels before the centre in raster order: the rows above, and the centre row to the
    left. PixelCNN's mask A (first layer, `include_centre=False`) hides the pixel being predicted; mask B (later
    layers, whose centre holds features of earlier pixels only) lets it through."""
    mask = torch.zeros(height, width)
    mask[: height // 2] = 1
    mask[height // 2, : width // 2 + include_centre] = 1
    return mask


def raster_taps(height: int, width: int, include_centre: bool) -> int:
    """The ones of `raster_mask`: the taps a masked kernel keeps (the configs count parameters from it)."""
    return height // 2 * width + width // 2 + include_centre


def rows_above_mask(size: int) -> torch.Tensor:
    """Gated PixelCNN's vertical-stack mask: every row up to and including the centre row. The stack is shifted
    down one row before it feeds the horizontal stack, so what a pixel receives comes from rows above only."""
    mask = torch.zeros(size, size)
    mask[: size // 2 + 1] = 1
    return mask


def rows_above_taps(size: int) -> int:
    """The ones of `rows_above_mask`."""
    return (size // 2 + 1) * size


def image_input(x: torch.Tensor, height: int, width: int, levels: int) -> torch.Tensor:
    """Tokens [B, H·W] (raster order) as one channel of intensities in [-1, 1] (default dtype): [B, 1, H, W]."""
    return (x * (2 / (levels - 1)) - 1).view(x.size(0), 1, height, width)
