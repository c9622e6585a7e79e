"""Discretised mixture of logistics (Salimans et al. 2017, PixelCNN++) over a PixelCNN trunk.

Instead of V free logits per pixel, the trunk outputs K mixture weights, means and log-scales; the probability of
level v is the logistic mixture's mass on v's bin of [-1, 1], the two edge bins extending to ±∞. Neighbouring
levels share mass smoothly, which suits 8-bit intensities; the V bin log-probabilities are returned as logits, so
the family fits the same interface. For 1-D data use height 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from armodels.models.base import ARModel, check_sizes
from armodels.models.pixelcnn import PixelCNNConfig, PixelCNNTrunk


@dataclass(frozen=True)
class MixtureOfLogisticsConfig(PixelCNNConfig):
    vocab_size: int = 256
    n_mixtures: int = 5

    def __post_init__(self) -> None:
        super().__post_init__()
        check_sizes(self, "n_mixtures")

    @property
    def trunk_outputs(self) -> int:
        """Per pixel and component: a mixture weight, a mean and a log-scale."""
        return 3 * self.n_mixtures

    def flops_per_token(self) -> float:
        """Training FLOPs per token: the trunk's kernels once per pixel (3 × 2 · weights), plus about 10
        operations per mixture component and level to evaluate the bin masses (forward, ×3 for training)."""
        return 3.0 * (2 * self.trunk_size()[1] + 10 * self.n_mixtures * self.vocab_size)


def discretized_logistic_log_probs(logit_weights: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor,
                                   levels: int) -> torch.Tensor:
    """Log-probabilities [..., levels] of the bins of a logistic mixture with parameters [..., K] on [-1, 1]."""
    half_bin = 1 / (levels - 1)
    centres = torch.linspace(-1, 1, levels, device=means.device)
    inv_scale = torch.exp(-log_scales.clamp(min=-7.0)).unsqueeze(-1)  # [..., K, 1]
    upper = inv_scale * (centres + half_bin - means.unsqueeze(-1))  # [..., K, levels], standardised bin edges
    lower = inv_scale * (centres - half_bin - means.unsqueeze(-1))
    upper[..., -1], lower[..., 0] = float("inf"), float("-inf")  # the edge bins take the tails
    # log(σ(u) - σ(l)) = log σ(u) + log σ(-l) + log(1 - e^(l-u)): stable for narrow bins and far tails alike.
    log_mass = F.logsigmoid(upper) + F.logsigmoid(-lower) + torch.log(-torch.expm1(lower - upper))
    return torch.logsumexp(F.log_softmax(logit_weights, dim=-1).unsqueeze(-1) + log_mass, dim=-2)


class MixtureOfLogistics(ARModel):
    family = "mixture_of_logistics"

    def __init__(self, cfg: MixtureOfLogisticsConfig):
        super().__init__(cfg)
        self.trunk = PixelCNNTrunk(cfg, cfg.trunk_outputs)

    def conditionals(self, x: torch.Tensor) -> torch.Tensor:
        params = self.trunk(x).flatten(2).transpose(1, 2)  # [B, T, 3K], raster order
        logit_weights, means, log_scales = params.chunk(3, dim=-1)
        means = torch.tanh(means)  # within the data's range [-1, 1]
        return discretized_logistic_log_probs(logit_weights, means, log_scales, self.vocab_size)

