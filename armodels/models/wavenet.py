"""WaveNet (van den Oord et al. 2016): stacked dilated causal convolutions with gated activations, residual and skip
connections, over a token sequence.

The input is the sequence shifted right behind a start token, and every convolution is padded on the left only,
so the output at t sees the tokens before t. Dilations doubling layer by layer reach (kernel - 1) · Σ dilations
tokens back; further tokens cannot matter.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from armodels.models.base import MAX_DEPTH, MAX_WIDTH, ARModel, check_size_list, check_sizes, freeze_tuples


@dataclass(frozen=True)
class WaveNetConfig:
    vocab_size: int = 16
    seq_len: int = 32
    channels: int = 32  # residual stream
    skip_channels: int = 32
    kernel_size: int = 2
    dilations: tuple[int, ...] = (1, 2, 4, 8)

    def __post_init__(self) -> None:
        freeze_tuples(self)
        check_sizes(self, "vocab_size", "seq_len", "channels", "skip_channels", "kernel_size")
        check_size_list(self, "dilations", total=MAX_WIDTH * MAX_DEPTH)  # each dilation a width, one per layer

    @property
    def receptive_field(self) -> int:
        return (self.kernel_size - 1) * sum(self.dilations) + 1

    # ---- size and cost ----

    def _weights(self) -> tuple[int, int]:
        """(convolution weights, biases): per layer the gated dilated convolution (C → 2C, kernel k) and the 1×1
        residual and skip convolutions; then the head's two 1×1 convolutions (S → S → V)."""
        C, S, V, n = self.channels, self.skip_channels, self.vocab_size, len(self.dilations)
        weights = n * (2 * C * C * self.kernel_size + C * C + S * C) + S * S + V * S
        biases = n * (2 * C + C + S) + S + V
        return weights, biases

    def num_params(self, non_embedding: bool = True) -> int:
        """The convolutions; the embedding table has a row per token and one for the start."""
        return sum(self._weights()) + (0 if non_embedding else (self.vocab_size + 1) * self.channels)

    def flops_per_token(self) -> float:
        """Training FLOPs per token: every convolution is applied once per position, 3 × 2 · weights."""
        return 3.0 * (2 * self._weights()[0])


class ResidualLayer(nn.Module):
    def __init__(self, cfg: WaveNetConfig, dilation: int):
        super().__init__()
        self.left_pad = (cfg.kernel_size - 1) * dilation
        self.conv = nn.Conv1d(cfg.channels, 2 * cfg.channels, cfg.kernel_size, dilation=dilation)
        self.residual = nn.Conv1d(cfg.channels, cfg.channels, 1)
        self.skip = nn.Conv1d(cfg.channels, cfg.skip_channels, 1)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = self.conv(F.pad(h, (self.left_pad, 0))).chunk(2, dim=1)
        z = torch.tanh(a) * torch.sigmoid(b)
        return h + self.residual(z), self.skip(z)


class WaveNet(ARModel):
    family = "wavenet"

    def __init__(self, cfg: WaveNetConfig):
        super().__init__(cfg)
        self.embed = nn.Embedding(cfg.vocab_size + 1, cfg.channels)  # the last row is the start token
        self.layers = nn.ModuleList(ResidualLayer(cfg, d) for d in cfg.dilations)
        S = cfg.skip_channels
        self.head = nn.Sequential(nn.ReLU(), nn.Conv1d(S, S, 1), nn.ReLU(), nn.Conv1d(S, cfg.vocab_size, 1))

    def conditionals(self, x: torch.Tensor) -> torch.Tensor:
        shifted = F.pad(x[:, :-1], (1, 0), value=self.vocab_size)
        h = self.embed(shifted).transpose(1, 2)  # [B, C, T]
        skips = 0
        for layer in self.layers:
            h, skip = layer(h)
            skips = skips + skip
        return self.head(skips).transpose(1, 2)

