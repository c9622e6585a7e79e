"""The convolutional encoder and decoder shared by the image tokenizers (VQ-VAE, FSQ, LFQ), the autoencoder around a
quantizer that they all are, and the per-channel codes of the two without a codebook (FSQ, LFQ).

The encoder halves height and width `downsample` times (strided 4×4 convolutions), then a 3×3 convolution and residual
blocks as in the VQ-VAE paper (van den Oord et al. 2017); the decoder mirrors it with transposed convolutions. Images
whose sides are not multiples of 2**downsample are padded with black at the bottom and right, and the padding is cut
off the reconstruction, so a 28×28 image has a 7×7 code grid with downsample 2 and an 8×8 one a 2×2 grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ConvConfig:
    in_channels: int = 1  # image channels: 1 grayscale, 3 RGB
    hidden: int = 64  # channels of the convolutions
    downsample: int = 2  # times the encoder halves H and W: 28×28 → 7×7 with 2
    res_blocks: int = 1  # residual blocks after the downsampling (and before the upsampling)

    def __post_init__(self):
        if self.in_channels < 1 or self.hidden < 2 or self.downsample < 0 or self.res_blocks < 0:
            raise ValueError(f"in_channels must be ≥ 1, hidden ≥ 2, downsample and res_blocks ≥ 0 (got "
                             f"{self.in_channels}, {self.hidden}, {self.downsample}, {self.res_blocks})")

    def grid_shape(self, height: int, width: int) -> tuple[int, int]:
        """The code grid (h, w) of a height × width image: each side halved `downsample` times, rounded up."""
        scale = 2 ** self.downsample
        return math.ceil(height / scale), math.ceil(width / scale)


class ResBlock(nn.Module):
    """x + conv1×1(relu(conv3×3(relu(x)))), the residual block of the VQ-VAE paper."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv3 = nn.Conv2d(channels, channels // 2, 3, padding=1)
        self.conv1 = nn.Conv2d(channels // 2, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv1(F.relu(self.conv3(F.relu(x))))


class Encoder(nn.Module):
    def __init__(self, cfg: ConvConfig, out_channels: int):
        super().__init__()
        layers, ch = [], cfg.in_channels
        for _ in range(cfg.downsample):
            layers += [nn.Conv2d(ch, cfg.hidden, 4, stride=2, padding=1), nn.ReLU()]
            ch = cfg.hidden
        layers += [nn.Conv2d(ch, cfg.hidden, 3, padding=1), *(ResBlock(cfg.hidden) for _ in range(cfg.res_blocks)),
                   nn.ReLU(), nn.Conv2d(cfg.hidden, out_channels, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    def __init__(self, cfg: ConvConfig, in_channels: int):
        super().__init__()
        layers = [nn.Conv2d(in_channels, cfg.hidden, 3, padding=1),
                  *(ResBlock(cfg.hidden) for _ in range(cfg.res_blocks)), nn.ReLU()]
        for i in range(cfg.downsample):
            last = i == cfg.downsample - 1
            layers += [nn.ConvTranspose2d(cfg.hidden, cfg.in_channels if last else cfg.hidden, 4, stride=2, padding=1)]
            layers += [] if last else [nn.ReLU()]
        if cfg.downsample == 0:
            layers += [nn.Conv2d(cfg.hidden, cfg.in_channels, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class QuantizedAutoencoder(nn.Module):
    """Encoder → quantizer → decoder on images scaled to [0, 1]. A subclass is the quantizer: it sets
    `codebook_size` and defines `quantize` and `codes_to_latents`."""

    codebook_size: int

    def __init__(self, cfg: ConvConfig, latent_channels: int):
        super().__init__()
        self.config = cfg
        self.scale = 2 ** cfg.downsample
        self.encoder = Encoder(cfg, latent_channels)
        self.decoder = Decoder(cfg, latent_channels)

    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encoder output [B, D, h, w] → (quantized latents with straight-through gradients [B, D, h, w], codes
        int64 [B, h, w], the quantizer's own loss term (0 if none))."""
        raise NotImplementedError

    def codes_to_latents(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [B, h, w] → the quantized latents [B, D, h, w] the decoder takes."""
        raise NotImplementedError

    def grid_shape(self, height: int, width: int) -> tuple[int, int]:
        return self.config.grid_shape(height, width)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Images [B, C, H, W] in [0, 1] → (training loss, reconstruction MSE, codes [B, h, w])."""
        z_q, codes, quantizer_loss = self.quantize(self._encode(x))
        mse = F.mse_loss(self._decode(z_q, x.shape[-2:]), x)
        return mse + quantizer_loss, mse.detach(), codes

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, C, H, W] in [0, 1] → codes int64 [B, h, w]."""
        return self.quantize(self._encode(x))[1]

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Codes [B, h, w] → images [B, C, H, W] in [0, 1], H×W = `size`."""
        return self._decode(self.codes_to_latents(codes), size).clamp(0, 1)

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.grid_shape(*x.shape[-2:])
        x = F.pad(x - 0.5, (0, w * self.scale - x.shape[-1], 0, h * self.scale - x.shape[-2]), value=-0.5)
        return self.encoder(x)

    def _decode(self, z_q: torch.Tensor, size) -> torch.Tensor:
        return self.decoder(z_q)[..., :size[0], :size[1]] + 0.5


class ChannelQuantizedAutoencoder(QuantizedAutoencoder):
    """An autoencoder whose quantizer has no codebook: latent channel i takes one of levels[i] values, and a code is
    the mixed-radix number whose digits are the channels' value indices (0..levels[i]−1), first channel least
    significant, so there are prod(levels) codes (FSQ; LFQ, with two levels per channel)."""

    def __init__(self, cfg: ConvConfig, levels: tuple[int, ...]):
        super().__init__(cfg, len(levels))
        self.codebook_size = math.prod(levels)
        levels = torch.tensor(levels)
        self.register_buffer("levels", levels, persistent=False)  # derived from the config: not saved
        self.register_buffer("basis", torch.cumprod(torch.cat([torch.ones(1, dtype=torch.long), levels[:-1]]), 0),
                             persistent=False)

    def digits_to_codes(self, digits: torch.Tensor) -> torch.Tensor:
        """Per-channel level indices [..., len(levels)] (each in 0..L−1) → codes [...]."""
        return (digits * self.basis).sum(-1)

    def codes_to_digits(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [...] → per-channel level indices [..., len(levels)]: the inverse of digits_to_codes."""
        return codes[..., None] // self.basis % self.levels
