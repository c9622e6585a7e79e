"""Gated PixelCNN (van den Oord et al. 2016, "Conditional Image Generation with PixelCNN Decoders").

Two stacks remove PixelCNN's blind spot. The vertical stack sees every row up to the current one, with no
restriction on columns; shifted down one row, it tells the horizontal stack about all rows above. The horizontal
stack sees the current row to the left (mask A in the first layer, B after). Both use gated activations
tanh(a) ⊙ σ(b); the horizontal stack is residual, except in the first layer whose input holds the current pixel.

With `channels_in=3` (RGB) the horizontal stack's channels are split into R, G and B groups, masked at the centre
tap as in pixelcnn.py (its 1×1 convolutions and the head too), so sub-pixels are predicted R → G → B; the vertical
stack reaches the horizontal one from the rows above only, so it needs no channel masks.

With `n_classes` > 0 the model is class-conditioned as in the paper (its eq. 4 with a one-hot class h): each
layer adds a learned bias per class to the gate inputs of both stacks (class embedding tables, counted as
embedding parameters).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from armodels.models.base import MAX_DEPTH, ARModel, ColourImageConfig, check_sizes
from armodels.models.layers import (
    MaskedConv2d,
    class_table,
    group_taps,
    image_input,
    image_logits,
    pixel_head,
    pixel_head_size,
    pointwise,
    raster_group_mask,
    raster_group_taps,
    rows_above_mask,
    rows_above_taps,
)


@dataclass(frozen=True)
class GatedPixelCNNConfig(ColourImageConfig):
    channels: int = 32
    n_layers: int = 4
    kernel: int = 5  # the receptive field grows kernel // 2 pixels per layer in every direction
    n_classes: int = 0  # > 0: conditioned on a class label, a learned bias per class in every layer's gates

    def __post_init__(self) -> None:
        super().__post_init__()
        check_sizes(self, "n_classes", low=0)
        check_sizes(self, "kernel")
        check_sizes(self, "channels", low=self.channels_in)  # at least one channel per colour group
        check_sizes(self, "n_layers", high=MAX_DEPTH)  # the count loops over layers
        if self.kernel % 2 == 0:
            raise ValueError(f"kernel must be odd, got {self.kernel}")

    # ---- size and cost ----

    def _size(self) -> tuple[int, int]:
        """(parameters, weights): the parameters leave out the taps a mask holds at zero, the weights (which the
        FLOPs count: masked taps are multiplied too) keep them. Layer i reads channels_in channels (i = 0) or C into
        a k × k vertical and a 1 × k horizontal convolution of 2C outputs each, then 1×1 convolutions 2C → 2C and
        C → C; colour groups G mask the horizontal convolution's centre tap, the C → C and the head."""
        C, k, G = self.channels, self.kernel, self.channels_in
        out = G * self.vocab_size  # V logits per sub-pixel
        weights = kept = biases = 0
        for i in range(self.n_layers):
            n_in = G if i == 0 else C
            weights += 2 * C * n_in * (k * k + k) + 4 * C * C + C * C
            kept += (2 * C * n_in * rows_above_taps(k) + 2 * raster_group_taps(C, n_in, 1, k, G, include_centre=i > 0)
                     + 4 * C * C + group_taps(C, C, G, include_own=True))
            biases += 2 * C + 2 * C + 2 * C + C  # vertical, horizontal, 2C → 2C, C → C
        head_params, head_weights = pixel_head_size(C, out, G)  # two 1×1 convolutions, C → C → G·V
        return kept + biases + head_params, weights + head_weights

    def num_params(self, non_embedding: bool = True) -> int:
        """The convolutions' (pixels enter as intensities), and without `non_embedding` the class biases' tables:
        2C gate inputs per stack and layer."""
        return self._size()[0] + (0 if non_embedding else self.n_classes * 4 * self.channels * self.n_layers)

    def flops_per_token(self) -> float:
        """Training FLOPs per token: every kernel is applied once per pixel, masked taps included, and a pixel is
        channels_in tokens: 3 × 2 · weights / channels_in."""
        return 3.0 * (2 * self._size()[1] / self.channels_in)


def gate(h: torch.Tensor) -> torch.Tensor:
    a, b = h.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class GatedLayer(nn.Module):
    def __init__(self, in_channels: int, channels: int, kernel: int, first: bool, groups: int = 1,
                 n_classes: int = 0):
        super().__init__()
        self.first = first
        self.vertical = MaskedConv2d(in_channels, 2 * channels, rows_above_mask(kernel))
        # the gate multiplies channel c by channel C + c: both halves of the 2C outputs are grouped as C channels are
        horizontal = raster_group_mask(channels, in_channels, 1, kernel, groups, include_centre=not first)
        self.horizontal = MaskedConv2d(in_channels, 2 * channels, horizontal.repeat(2, 1, 1, 1))
        self.vertical_to_horizontal = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.out = pointwise(channels, channels, groups)
        # class-conditioned: a bias per class on each stack's 2C gate inputs (V_f, V_g of the paper's eq. 4)
        self.class_bias = class_table(n_classes, 4 * channels) if n_classes else None

    def forward(self, v: torch.Tensor, h: torch.Tensor, classes: torch.Tensor | None = None,
                spatial: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """`spatial`: a bias [B, 4C, H, W] on both stacks' gate inputs from an image known in advance (the
        hierarchical family's low-resolution image), the spatial form of the paper's conditioning (its eq. 5)."""
        bias = None if self.class_bias is None else self.class_bias(classes)[:, :, None, None]
        if spatial is not None:
            bias = spatial if bias is None else bias + spatial
        v_bias, h_bias = (0.0, 0.0) if bias is None else bias.chunk(2, dim=1)
        v = self.vertical(v)
        above = F.pad(v, (0, 0, 1, 0))[:, :, :-1]  # shift down: pixel (i, j) gets row i-1's vertical features
        h_new = self.out(gate(self.horizontal(h) + self.vertical_to_horizontal(above) + h_bias))
        return gate(v + v_bias), (h_new if self.first else h + h_new)


class GatedPixelCNN(ARModel):
    family = "gated_pixelcnn"

    def __init__(self, cfg: GatedPixelCNNConfig):
        super().__init__(cfg)
        C = cfg.channels
        G = cfg.channels_in
        self.layers = nn.ModuleList(GatedLayer(G if i == 0 else C, C, cfg.kernel, first=i == 0, groups=G,
                                               n_classes=cfg.n_classes) for i in range(cfg.n_layers))
        self.head = pixel_head(C, G * cfg.vocab_size, G)

    def conditionals(self, x: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        c = self.config
        v = h = image_input(x, c.height, c.width, c.vocab_size, c.channels_in)
        for layer in self.layers:
            v, h = layer(v, h, classes)
        return image_logits(self.head(h), c.channels_in)  # [B, V·C, H, W] → [B, T, V]

