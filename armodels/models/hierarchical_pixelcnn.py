"""Hierarchical (super-resolution) Gated PixelCNN: a low-resolution model, then a high-resolution one conditioned
on it (the multi-scale PixelCNN of Reed et al. 2017 in its simplest form, two scales).

A sequence is the low-resolution image (the rounded mean of each factor × factor block, raster order), then the
full image (raster order): seq_len = (H/f)·(W/f) + H·W. A Gated PixelCNN over the small grid models the first
part; a second one over the full grid models the second, each layer's gates biased by features of the
low-resolution image around each pixel (a 3 × 3 convolution at its resolution, each block's features given to the
block's pixels: the low image is known before any full-resolution pixel, so it needs no mask). The low-resolution
image is a function of the full one, so the sequence's log-likelihood is the full image's: log p(low) +
log p(full | low), and bits per full-resolution pixel compare with any pixel model's. Decoding (shared sampling,
recomputed) draws the low image first, then the full one given it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from armodels.models.base import ARModel, ImageConfig, check_sizes
from armodels.models.gated_pixelcnn import GatedPixelCNN, GatedPixelCNNConfig
from armodels.models.layers import image_input, image_logits

CONDITION_KERNEL = 3  # each full-resolution pixel's gates see its low-resolution pixel and the 8 around it


@dataclass(frozen=True)
class HierarchicalPixelCNNConfig(ImageConfig):
    factor: int = 2  # the low-resolution image has one pixel per factor × factor block
    channels: int = 16  # both stages' (a Gated PixelCNN's) channels, layers and kernel
    n_layers: int = 3
    kernel: int = 5

    @property
    def low_pixels(self) -> int:
        return (self.height // self.factor) * (self.width // self.factor)

    @property
    def seq_len(self) -> int:
        return self.low_pixels + self.height * self.width

    def __post_init__(self) -> None:
        super().__post_init__()
        check_sizes(self, "factor", low=2)
        if self.height % self.factor or self.width % self.factor:
            raise ValueError(f"factor {self.factor} must divide the image's height and width ({self.height} × "
                             f"{self.width})")
        self.stage(low=True), self.stage(low=False)  # their own checks (channels, layers, kernel)

    def stage(self, low: bool) -> GatedPixelCNNConfig:
        """The Gated PixelCNN of the low-resolution image (`low`) or of the full one."""
        f = self.factor if low else 1
        return GatedPixelCNNConfig(height=self.height // f, width=self.width // f, vocab_size=self.vocab_size,
                                   channels=self.channels, n_layers=self.n_layers, kernel=self.kernel)

    def _condition_weights(self) -> int:
        """Per layer, a 3 × 3 convolution of the (one-channel) low image to the 4C gate inputs of both stacks."""
        return self.n_layers * 4 * self.channels * CONDITION_KERNEL ** 2

    def num_params(self, non_embedding: bool = True) -> int:
        """Both stages' and the conditioning convolutions' (weights and biases); there are no embeddings."""
        return (self.stage(True).num_params() + self.stage(False).num_params() + self._condition_weights()
                + self.n_layers * 4 * self.channels)

    def flops_per_token(self) -> float:
        """Training FLOPs per token: each stage's weights once per pixel of its grid (the conditioning convolutions
        once per low-resolution pixel), averaged over the seq_len tokens."""
        low, high = self.stage(True), self.stage(False)
        per_sequence = (low.flops_per_token() * low.seq_len + high.flops_per_token() * high.seq_len
                        + 3.0 * 2 * self._condition_weights() * low.seq_len)
        return per_sequence / self.seq_len


class HierarchicalPixelCNN(ARModel):
    family = "hierarchical_pixelcnn"

    def __init__(self, cfg: HierarchicalPixelCNNConfig):
        super().__init__(cfg)
        self.low = GatedPixelCNN(cfg.stage(low=True))
        self.high = GatedPixelCNN(cfg.stage(low=False))
        self.condition = nn.ModuleList(nn.Conv2d(1, 4 * cfg.channels, CONDITION_KERNEL, padding=CONDITION_KERNEL // 2)
                                       for _ in range(cfg.n_layers))

    def conditionals(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        low, full = x[:, :c.low_pixels], x[:, c.low_pixels:]
        small = image_input(low, c.height // c.factor, c.width // c.factor, c.vocab_size)
        v = h = image_input(full, c.height, c.width, c.vocab_size)
        for layer, condition in zip(self.high.layers, self.condition):
            # features of a 3×3 window of the low image, computed at its resolution, each block's for its pixels
            v, h = layer(v, h, spatial=F.interpolate(condition(small), scale_factor=c.factor, mode="nearest"))
        return torch.cat([self.low.conditionals(low), image_logits(self.high.head(h))], dim=1)
