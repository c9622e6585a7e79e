"""Gated PixelCNN (van den Oord et al. 2016, "Conditional Image Generation with PixelCNN Decoders").

Two stacks remove PixelCNN's blind spot. The vertical stack sees every row up to the current one, with no
restriction on columns; shifted down one row, it tells the horizontal stack about all rows above. The horizontal
stack sees the current row to the left (mask A in the first layer, B after). Both use gated activations
tanh(a) ⊙ σ(b); the horizontal stack is residual, except in the first layer whose input holds the current pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from armodels.models.base import MAX_DEPTH, ARModel, ImageConfig, check_sizes
from armodels.models.layers import MaskedConv2d, image_input, raster_mask, raster_taps, rows_above_mask, rows_above_taps


@dataclass(frozen=True)
class GatedPixelCNNConfig(ImageConfig):
    channels: int = 32
    n_layers: int = 4
    kernel: int = 5  # the receptive field grows kernel // 2 pixels per layer in every direction

    def __post_init__(self) -> None:
        super().__post_init__()
        check_sizes(self, "channels", "kernel")
        check_sizes(self, "n_layers", high=MAX_DEPTH)  # the count loops over layers
        if self.kernel % 2 == 0:
            raise ValueError(f"kernel must be odd, got {self.kernel}")

    # ---- size and cost ----

    def _size(self) -> tuple[int, int]:
        """(parameters, weights): the parameters leave out the taps a mask holds at zero, the weights (which the
        FLOPs count: masked taps are multiplied too) keep them. Layer i reads 1 channel (i = 0) or C into a k × k
        vertical and a 1 × k horizontal convolution of 2C outputs each, then 1×1 convolutions 2C → 2C and C → C."""
        C, k, V = self.channels, self.kernel, self.vocab_size
        weights = kept = biases = 0
        for i in range(self.n_layers):
            pairs = 2 * C * (1 if i == 0 else C)  # (output, input) channels of each masked convolution
            mixing = 4 * C * C + C * C  # the 1×1 convolutions
            weights += pairs * (k * k + k) + mixing
            kept += pairs * (rows_above_taps(k) + raster_taps(1, k, include_centre=i > 0)) + mixing
            biases += 2 * C + 2 * C + 2 * C + C  # vertical, horizontal, 2C → 2C, C → C
        head_weights, head_biases = C * C + V * C, C + V  # two 1×1 convolutions, C → C → V
        return kept + biases + head_weights + head_biases, weights + head_weights

    def num_params(self, non_embedding: bool = True) -> int:
        """The convolutions' (there are no embeddings: pixels enter as intensities)."""
        return self._size()[0]

    def flops_per_token(self) -> float:
        """Training FLOPs per token: every kernel is applied once per pixel, masked taps included: 3 × 2 · weights."""
        return 3.0 * (2 * self._size()[1])


def gate(h: torch.Tensor) -> torch.Tensor:
    a, b = h.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class GatedLayer(nn.Module):
    def __init__(self, in_channels: int, channels: int, kernel: int, first: bool):
        super().__init__()
        self.first = first
        self.vertical = MaskedConv2d(in_channels, 2 * channels, rows_above_mask(kernel))
        self.horizontal = MaskedConv2d(in_channels, 2 * channels, raster_mask(1, kernel, include_centre=not first))
        self.vertical_to_horizontal = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, v: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v = self.vertical(v)
        above = F.pad(v, (0, 0, 1, 0))[:, :, :-1]  # shift down: pixel (i, j) gets row i-1's vertical features
        h_new = self.out(gate(self.horizontal(h) + self.vertical_to_horizontal(above)))
        return gate(v), (h_new if self.first else h + h_new)


class GatedPixelCNN(ARModel):
    family = "gated_pixelcnn"

    def __init__(self, cfg: GatedPixelCNNConfig):
        super().__init__(cfg)
        C = cfg.channels
        self.layers = nn.ModuleList(GatedLayer(1 if i == 0 else C, C, cfg.kernel, first=i == 0)
                                    for i in range(cfg.n_layers))
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(C, C, 1), nn.ReLU(), nn.Conv2d(C, cfg.vocab_size, 1))

    def conditionals(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        v = h = image_input(x, c.height, c.width, c.vocab_size)
        for layer in self.layers:
            v, h = layer(v, h)
        return self.head(h).flatten(2).transpose(1, 2)  # [B, V, H, W] → [B, T, V], raster order

