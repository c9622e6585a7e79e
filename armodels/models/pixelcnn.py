"""PixelCNN (van den Oord et al. 2016, "Pixel Recurrent Neural Networks"): masked convolutions in raster order.

The first layer's mask A hides the pixel being predicted; later layers' mask B let a pixel's own features through,
which by then describe earlier pixels only. Stacked masks grow a receptive field that misses pixels above and to
the right of the current one (the blind spot, see tests/armodels/models); gated_pixelcnn.py removes it.

With `channels_in=3` (RGB) every layer's channels are split into R, G and B groups whose centre taps are masked so
that R sees earlier pixels only, G also the current R, B also the current R and G (layers.py); the head gives V
logits per sub-pixel, and the tokens are the sub-pixels in raster order, R → G → B within each pixel.

With `n_classes` > 0 the model is class-conditioned as in the Gated PixelCNN paper: each layer adds a learned bias
per class and channel (a class embedding table per layer, counted as embedding parameters) to its output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from armodels.models.base import MAX_DEPTH, ARModel, ColourImageConfig, check_sizes
from armodels.models.layers import (
    MaskedConv2d,
    class_table,
    image_input,
    image_logits,
    pixel_head,
    pixel_head_size,
    raster_group_mask,
    raster_group_taps,
)


@dataclass(frozen=True)
class PixelCNNConfig(ColourImageConfig):
    # Whether the trunk masks colour channels and predicts each sub-pixel (True), or predicts each pixel from earlier
    # pixels only and leaves the sub-pixels to the output distribution (the mixture of logistics).
    channel_masks: ClassVar[bool] = True
    channels: int = 32
    n_layers: int = 4  # residual mask-B layers after the mask-A one
    first_kernel: int = 5  # mask A (7 in the paper)
    kernel: int = 3  # mask B
    n_classes: int = 0  # > 0: conditioned on a class label, a learned bias per class in every layer

    def __post_init__(self) -> None:
        super().__post_init__()
        check_sizes(self, "n_classes", low=0)
        check_sizes(self, "first_kernel", "kernel")
        check_sizes(self, "channels", low=self.channel_groups)  # at least one channel per colour group
        check_sizes(self, "n_layers", low=0, high=MAX_DEPTH)
        if self.first_kernel % 2 == 0 or self.kernel % 2 == 0:
            raise ValueError(f"kernels must be odd, got first_kernel={self.first_kernel}, kernel={self.kernel}")

    @property
    def channel_groups(self) -> int:
        """Colour groups of the trunk's channels: channels_in when it masks colour channels, else 1."""
        return self.channels_in if self.channel_masks else 1

    @property
    def trunk_outputs(self) -> int:
        """Features of each (sub-)pixel's distribution that the trunk's head outputs, per channel group: here its V
        logits."""
        return self.vocab_size

    # ---- size and cost ----

    def trunk_size(self) -> tuple[int, int]:
        """(parameters, weights) of the trunk: the parameters leave out the taps a mask holds at zero, the weights
        (which the FLOPs count: masked taps are multiplied too) keep them."""
        C, k1, k, n, C_in, G = (self.channels, self.first_kernel, self.kernel, self.n_layers, self.channels_in,
                                self.channel_groups)
        head_params, head_weights = pixel_head_size(C, self.trunk_outputs * G, G)
        weights = C * C_in * k1 * k1 + n * C * C * k * k + head_weights
        kept = (raster_group_taps(C, C_in, k1, k1, G, include_centre=False)
                + n * raster_group_taps(C, C, k, k, G, include_centre=True))
        biases = C + n * C
        return kept + biases + head_params, weights

    def num_params(self, non_embedding: bool = True) -> int:
        """The trunk's (pixels enter as intensities), and without `non_embedding` the class biases' tables."""
        return self.trunk_size()[0] + (0 if non_embedding else self.n_classes * self.channels * (self.n_layers + 1))

    def flops_per_token(self) -> float:
        """Training FLOPs per token: every kernel is applied once per pixel, masked taps included, and a pixel is
        channels_in tokens: 3 × 2 · weights / channels_in."""
        return 3.0 * (2 * self.trunk_size()[1] / self.channels_in)


class PixelCNNTrunk(nn.Module):
    """Mask A, then residual mask-B layers, then a per-pixel 1×1 head to `out_channels` features of each pixel's
    distribution (of each sub-pixel's, `out_channels` per colour group, when the config masks colour channels).
    Shared with the mixture-of-logistics family, which reads other outputs off the same trunk."""

    def __init__(self, cfg: PixelCNNConfig, out_channels: int):
        super().__init__()
        self.config = cfg
        C, C_in, G, k1, k = cfg.channels, cfg.channels_in, cfg.channel_groups, cfg.first_kernel, cfg.kernel
        self.first = MaskedConv2d(C_in, C, raster_group_mask(C, C_in, k1, k1, G, include_centre=False))
        self.layers = nn.ModuleList(MaskedConv2d(C, C, raster_group_mask(C, C, k, k, G, include_centre=True))
                                    for _ in range(cfg.n_layers))
        self.head = pixel_head(C, out_channels * G, G)
        # class-conditioned: each layer's bias per class (the first layer's, then each residual layer's)
        self.class_bias = nn.ModuleList(class_table(cfg.n_classes, C) for _ in range(cfg.n_layers + 1)) \
            if cfg.n_classes else None

    def forward(self, x: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens x [B, H·W·C] → features [B, out_channels · groups, H, W], each pixel's from earlier pixels only
        (and, by colour group, from the current pixel's earlier channels), and from the class of a conditioned
        model."""
        c = self.config
        biases = [0.0] * (c.n_layers + 1) if self.class_bias is None else \
            [table(classes)[:, :, None, None] for table in self.class_bias]
        h = self.first(image_input(x, c.height, c.width, c.vocab_size, c.channels_in)) + biases[0]
        for layer, bias in zip(self.layers, biases[1:]):
            h = h + layer(F.relu(h)) + bias
        return self.head(h)


class PixelCNN(ARModel):
    family = "pixelcnn"

    def __init__(self, cfg: PixelCNNConfig):
        super().__init__(cfg)
        self.trunk = PixelCNNTrunk(cfg, cfg.trunk_outputs)

    def conditionals(self, x: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        return image_logits(self.trunk(x, classes), self.config.channels_in)  # [B, V·C, H, W] → [B, T, V]

