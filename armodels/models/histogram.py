"""Independent per-position histograms: p(x) = Π_t p_t(x_t), each p_t the smoothed token frequencies at position t.

The baseline that every autoregressive model should beat: it ignores context entirely, so any ordering is the
same model. It is count-based (`trainable = False`): `fit(x)` adds the counts of a batch; there are no gradients.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from armodels.models.base import ARModel, check_sizes


@dataclass(frozen=True)
class HistogramConfig:
    vocab_size: int = 16
    seq_len: int = 8
    pseudocount: float = 1.0  # added to every count (Laplace smoothing), so unseen tokens keep some mass
    any_order: ClassVar[bool] = True  # no position depends on another

    def __post_init__(self) -> None:
        check_sizes(self, "vocab_size", "seq_len")
        if self.pseudocount <= 0:
            raise ValueError(f"pseudocount must be positive, got {self.pseudocount}")

    def num_params(self, non_embedding: bool = True) -> int:
        """The count table's entries: a count model's parameters are its statistics."""
        return self.seq_len * self.vocab_size

    def flops_per_token(self) -> float:
        """No training FLOPs (fitting is counting); this is the cost of one conditional from the counts: add the
        pseudocount and normalise a row of V counts, about 3·V."""
        return 3.0 * self.vocab_size


class Histogram(ARModel):
    family = "histogram"
    trainable = False

    def __init__(self, cfg: HistogramConfig):
        super().__init__(cfg)
        self.register_buffer("counts", torch.zeros(cfg.seq_len, cfg.vocab_size, dtype=torch.float64))

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> None:
        """Add the token counts of x [B, T] at each position."""
        positions = torch.arange(self.seq_len, device=x.device).expand_as(x)
        ones = torch.ones(x.numel(), dtype=self.counts.dtype, device=x.device)
        self.counts.index_put_((positions.flatten(), x.flatten()), ones, accumulate=True)

    def conditionals(self, x: torch.Tensor) -> torch.Tensor:
        smoothed = self.counts + self.config.pseudocount
        log_probs = (smoothed / smoothed.sum(-1, keepdim=True)).log().float()
        return log_probs.expand(x.size(0), -1, -1)

