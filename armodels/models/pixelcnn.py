"""PixelCNN (van den Oord et al. 2016, "Pixel Recurrent Neural Networks"): masked convolutions in raster order.

The first layer's mask A hides the pixel being predicted; later layers' mask B let a pixel's own features through,
which by then describe earlier pixels only. Stacked masks grow a receptive field that misses pixels above and to
the right of the current one (the blind spot, see tests/armodels/models); gated_pixelcnn.py removes it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from armodels.models.base import MAX_DEPTH, ARModel, ImageConfig, check_sizes
from armodels.models.layers import MaskedConv2d, image_input, raster_mask, raster_taps


@dataclass(frozen=True)
class PixelCNNConfig(ImageConfig):
    channels: int = 32
    n_layers: int = 4  # residual mask-B layers after the mask-A one
    first_kernel: int = 5  # mask A (7 in the paper)
    kernel: int = 3  # mask B

    def __post_init__(self) -> None:
        super().__post_init__()
        check_sizes(self, "channels", "first_kernel", "kernel")
        check_sizes(self, "n_layers", low=0, high=MAX_DEPTH)
        if self.first_kernel % 2 == 0 or self.kernel % 2 == 0:
            raise ValueError(f"kernels must be odd, got first_kernel={self.first_kernel}, kernel={self.kernel}")

    @property
    def trunk_outputs(self) -> int:
        """Features of each pixel's distribution that the trunk's head outputs: here its V logits."""
        return self.vocab_size

    # ---- size and cost ----

    def trunk_size(self) -> tuple[int, int]:
        """(parameters, weights) of the trunk: the parameters leave out the taps a mask holds at zero, the weights
        (which the FLOPs count: masked taps are multiplied too) keep them."""
        C, k1, k, n, out = self.channels, self.first_kernel, self.kernel, self.n_layers, self.trunk_outputs
        head = C * C + out * C  # two 1×1 convolutions
        weights = C * k1 * k1 + n * C * C * k * k + head
        kept = C * raster_taps(k1, k1, include_centre=False) + n * C * C * raster_taps(k, k, include_centre=True)
        biases = C + n * C + C + out
        return kept + head + biases, weights

    def num_params(self, non_embedding: bool = True) -> int:
        """The trunk's (there are no embeddings: pixels enter as intensities)."""
        return self.trunk_size()[0]

    def flops_per_token(self) -> float:
        """Training FLOPs per token: every kernel is applied once per pixel, masked taps included: 3 × 2 · weights."""
        return 3.0 * (2 * self.trunk_size()[1])


class PixelCNNTrunk(nn.Module):
    """Mask A, then residual mask-B layers, then a per-pixel 1×1 head to `out_channels` features of each pixel's
    distribution. Shared with the mixture-of-logistics family, which reads other outputs off the same trunk."""

    def __init__(self, cfg: PixelCNNConfig, out_channels: int):
        super().__init__()
        self.config = cfg
        C = cfg.channels
        self.first = MaskedConv2d(1, C, raster_mask(cfg.first_kernel, cfg.first_kernel, include_centre=False))
        self.layers = nn.ModuleList(MaskedConv2d(C, C, raster_mask(cfg.kernel, cfg.kernel, include_centre=True))
                                    for _ in range(cfg.n_layers))
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(C, C, 1), nn.ReLU(), nn.Conv2d(C, out_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens x [B, H·W] → features [B, out_channels, H, W], each pixel's from earlier pixels only."""
        c = self.config
        h = self.first(image_input(x, c.height, c.width, c.vocab_size))
        for layer in self.layers:
            h = h + layer(F.relu(h))
        return self.head(h)


class PixelCNN(ARModel):
    family = "pixelcnn"

    def __init__(self, cfg: PixelCNNConfig):
        super().__init__(cfg)
        self.trunk = PixelCNNTrunk(cfg, cfg.trunk_outputs)

    def conditionals(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x).flatten(2).transpose(1, 2)  # [B, V, H, W] → [B, T, V], raster order

