"""Masked layers shared by MADE and the PixelCNNs: a weight mask (a buffer) zeroes the connections that would let
an output see the inputs it must not, so causality holds by construction.

Colour images (van den Oord et al. 2016) are predicted sub-pixel by sub-pixel, R → G → B within each pixel. The
PixelCNNs then split their feature channels into `groups` (channel c belongs to group c mod groups: R, G, B), and
the centre tap of each kernel, the one that reads the current pixel, connects an output of group g to the inputs of
groups before g (mask A) or up to and including g (mask B); every other tap connects all channels. One group is the
single-channel case, where the centre tap is all (mask B) or nothing (mask A).
"""

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
    """A 'same'-padded convolution whose kernel is multiplied by `mask` [kh, kw] (odd sizes, centred), or by a mask
    per channel pair [out, in, kh, kw] (colour groups)."""

    def __init__(self, in_channels: int, out_channels: int, mask: torch.Tensor):
        kh, kw = mask.shape[-2:]
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


def group_mask(out_channels: int, in_channels: int, groups: int, include_own: bool) -> torch.Tensor:
    """[out, in]: which inputs of the current pixel each output may read at the centre tap. Channel c is in group
    c mod `groups`; an output of group g reads the inputs of groups before g, and of g itself if `include_own`."""
    if groups > min(out_channels, in_channels):
        raise ValueError(f"channels: {groups} colour groups need at least {groups} input and output channels, got "
                         f"{in_channels} in and {out_channels} out")
    out_group = torch.arange(out_channels) % groups
    in_group = torch.arange(in_channels) % groups
    return (in_group[None] < out_group[:, None] + include_own).float()


def group_taps(out_channels: int, in_channels: int, groups: int, include_own: bool) -> int:
    """The ones of `group_mask`: Σ over allowed (output group g, input group h) of their sizes' product."""
    def size(n: int, g: int) -> int:  # channels c < n with c mod groups = g
        return (n - g + groups - 1) // groups

    return sum(size(out_channels, g) * size(in_channels, h)
               for g in range(groups) for h in range(g + include_own))


def raster_group_mask(out_channels: int, in_channels: int, height: int, width: int, groups: int,
                      include_centre: bool) -> torch.Tensor:
    """`raster_mask` per (output, input) channel pair, [out, in, height, width], whose centre tap is `group_mask`:
    mask A (`include_centre=False`) or B of a colour PixelCNN. With one group it equals `raster_mask`."""
    mask = raster_mask(height, width, include_centre=False).expand(out_channels, in_channels, height, width).clone()
    mask[:, :, height // 2, width // 2] = group_mask(out_channels, in_channels, groups, include_centre)
    return mask


def raster_group_taps(out_channels: int, in_channels: int, height: int, width: int, groups: int,
                      include_centre: bool) -> int:
    """The ones of `raster_group_mask`."""
    return (out_channels * in_channels * raster_taps(height, width, include_centre=False)
            + group_taps(out_channels, in_channels, groups, include_centre))


def class_table(n_classes: int, width: int) -> nn.Embedding:
    """A learned bias of `width` features per class, zero at the start: a class-conditioned model starts as its
    unconditioned twin (same seed, same weights) and learns what the class adds. (N(0, 1), nn.Embedding's own
    init, would add biases far larger than the layers' outputs and set small models back.)"""
    return nn.Embedding.from_pretrained(torch.zeros(n_classes, width), freeze=False)  # draws nothing from the RNG


def pointwise(in_channels: int, out_channels: int, groups: int = 1) -> nn.Conv2d:
    """A 1×1 convolution; with colour groups, masked so that each output reads its own group and earlier ones (mask
    B at the centre, the only tap)."""
    if groups == 1:
        return nn.Conv2d(in_channels, out_channels, 1)
    return MaskedConv2d(in_channels, out_channels, group_mask(out_channels, in_channels, groups, True)[..., None, None])


def pixel_head(channels: int, outputs: int, groups: int = 1) -> nn.Sequential:
    """The PixelCNNs' per-pixel head: ReLU, 1×1 C → C, ReLU, 1×1 C → `outputs`, masked by colour group."""
    return nn.Sequential(nn.ReLU(), pointwise(channels, channels, groups), nn.ReLU(),
                         pointwise(channels, outputs, groups))


def pixel_head_size(channels: int, outputs: int, groups: int = 1) -> tuple[int, int]:
    """(parameters, weights) of `pixel_head`: the parameters leave out the weights a mask holds at zero and count the
    biases, the weights (which the FLOPs count) are all of them."""
    kept = group_taps(channels, channels, groups, include_own=True) + group_taps(outputs, channels, groups, True)
    return kept + channels + outputs, channels * channels + outputs * channels


def rows_above_mask(size: int) -> torch.Tensor:
    """Gated PixelCNN's vertical-stack mask: every row up to and including the centre row. The stack is shifted
    down one row before it feeds the horizontal stack, so what a pixel receives comes from rows above only."""
    mask = torch.zeros(size, size)
    mask[: size // 2 + 1] = 1
    return mask


def rows_above_taps(size: int) -> int:
    """The ones of `rows_above_mask`."""
    return (size // 2 + 1) * size


def image_input(x: torch.Tensor, height: int, width: int, levels: int, channels: int = 1) -> torch.Tensor:
    """Tokens [B, H·W·C] (raster order, channels innermost: R, G, B of a pixel are 3 consecutive tokens) as C channels
    of intensities in [-1, 1] (default dtype): [B, C, H, W]."""
    values = x * (2 / (levels - 1)) - 1
    if channels == 1:  # (a plain view: the permuted one below has strides that change convolutions' rounding)
        return values.view(x.size(0), 1, height, width)
    return values.view(x.size(0), height, width, channels).permute(0, 3, 1, 2).contiguous()


def image_logits(out: torch.Tensor, channels: int = 1) -> torch.Tensor:
    """A head's output [B, V·C, H, W] whose channel v·C + g holds logit v of sub-pixel g (group g = channel mod C)
    as logits [B, H·W·C, V] in the token order of `image_input`."""
    B, _, H, W = out.shape
    return out.view(B, -1, channels, H, W).permute(0, 3, 4, 2, 1).reshape(B, H * W * channels, -1)
