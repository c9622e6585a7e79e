"""Discretised mixture of logistics (Salimans et al. 2017, PixelCNN++) over a PixelCNN trunk.

Instead of V free logits per pixel, the trunk outputs K mixture weights, means and log-scales; the probability of
level v is the logistic mixture's mass on v's bin of [-1, 1], the two edge bins extending to ±∞. Neighbouring
levels share mass smoothly, which suits 8-bit intensities; the V bin log-probabilities are returned as logits, so
the family fits the same interface. For 1-D data use height 1.

Colour (`channels_in=3`), as in PixelCNN++: the trunk predicts each pixel from earlier pixels only (no channel
masks) and outputs, per component k, a weight π_k and for each of R, G, B a mean and a log-scale, plus three
coefficients α, β, γ (tanh'd): the G mean is μ_G + α·r and the B mean μ_B + β·r + γ·g, with r, g the current
pixel's values in [-1, 1]. A pixel's likelihood is Σ_k π_k P_k(r) P_k(g | r) P_k(b | r, g). As per-sub-pixel
conditionals (the tokens are R, G, B in turn): p(r) = Σ_k π_k P_k(r), p(g | r) the mixture whose weights are the
posterior ∝ π_k P_k(r), p(b | r, g) the one with weights ∝ π_k P_k(r) P_k(g | r); their product is the joint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from armodels.models.base import ARModel, check_sizes
from armodels.models.pixelcnn import PixelCNNConfig, PixelCNNTrunk


@dataclass(frozen=True)
class MixtureOfLogisticsConfig(PixelCNNConfig):
    channel_masks: ClassVar[bool] = False  # the trunk sees earlier pixels only; the mixture links R, G and B
    vocab_size: int = 256
    n_mixtures: int = 5

    def __post_init__(self) -> None:
        super().__post_init__()
        check_sizes(self, "n_mixtures")

    @property
    def trunk_outputs(self) -> int:
        """Per pixel and component: a mixture weight, a mean and a log-scale; for colour a weight, and a mean, a
        log-scale and a coefficient for each of the 3 channels."""
        return (3 if self.channels_in == 1 else 10) * self.n_mixtures

    def flops_per_token(self) -> float:
        """Training FLOPs per token: the trunk's kernels once per pixel, a pixel being channels_in tokens
        (3 × 2 · weights / channels_in), plus about 10 operations per mixture component and level to evaluate the bin
        masses (forward, ×3 for training)."""
        return 3.0 * (2 * self.trunk_size()[1] / self.channels_in + 10 * self.n_mixtures * self.vocab_size)


def discretized_logistic_log_probs(logit_weights: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor,
                                   levels: int) -> torch.Tensor:
    """Log-probabilities [..., levels] of the bins of a logistic mixture with parameters [..., K] on [-1, 1]."""
    log_mass = logistic_bin_log_probs(means, log_scales, levels)
    return torch.logsumexp(F.log_softmax(logit_weights, dim=-1).unsqueeze(-1) + log_mass, dim=-2)


def logistic_bin_log_probs(means: torch.Tensor, log_scales: torch.Tensor, levels: int) -> torch.Tensor:
    """Log-probabilities [..., K, levels] of the bins of [-1, 1] (width 2 / (levels - 1), the edge bins open) under
    each of the K logistics with parameters [..., K]."""
    half_bin = 1 / (levels - 1)
    centres = torch.linspace(-1, 1, levels, device=means.device)
    inv_scale = torch.exp(-log_scales.clamp(min=-7.0)).unsqueeze(-1)  # [..., K, 1]
    upper = inv_scale * (centres + half_bin - means.unsqueeze(-1))  # [..., K, levels], standardised bin edges
    lower = inv_scale * (centres - half_bin - means.unsqueeze(-1))
    upper[..., -1], lower[..., 0] = float("inf"), float("-inf")  # the edge bins take the tails
    # log(σ(u) - σ(l)) = log σ(u) + log σ(-l) + log(1 - e^(l-u)): stable for narrow bins and far tails alike.
    return F.logsigmoid(upper) + F.logsigmoid(-lower) + torch.log(-torch.expm1(lower - upper))


def rgb_logistic_log_probs(params: torch.Tensor, x: torch.Tensor, levels: int) -> torch.Tensor:
    """Per-sub-pixel log-probabilities [..., 3, levels] of PixelCNN++'s colour mixture with parameters [..., 10K]
    (weights, then means, log-scales and coefficients, each [3, K]) for pixels x [..., 3] (levels 0..levels-1):
    R's marginal, G's given R and B's given R and G (see the module's docstring)."""
    K = params.size(-1) // 10
    logit_weights, rest = params[..., :K], params[..., K:].unflatten(-1, (3, 3, K))
    means, log_scales, coeffs = rest.unbind(-3)  # [..., 3, K] each
    means, coeffs = torch.tanh(means), torch.tanh(coeffs)
    r, g = (x[..., :2] * (2 / (levels - 1)) - 1).unsqueeze(-1).to(means.dtype).unbind(-2)  # [..., 1] each
    means = torch.stack([means[..., 0, :], means[..., 1, :] + coeffs[..., 0, :] * r,
                         means[..., 2, :] + coeffs[..., 1, :] * r + coeffs[..., 2, :] * g], dim=-2)
    log_mass = logistic_bin_log_probs(means, log_scales, levels)  # [..., 3, K, levels]
    observed = log_mass.gather(-1, x[..., None, None].expand(*log_mass.shape[:-1], 1)).squeeze(-1)  # [..., 3, K]
    # each channel's weights: the posterior given the current pixel's earlier channels, log π_k + Σ log P_k(before)
    before = F.pad(observed[..., :2, :], (0, 0, 1, 0)).cumsum(-2)  # [..., 3, K]: 0, log P_k(r), + log P_k(g | r)
    log_weights = F.log_softmax(F.log_softmax(logit_weights, dim=-1).unsqueeze(-2) + before, dim=-1)
    return torch.logsumexp(log_weights.unsqueeze(-1) + log_mass, dim=-2)


class MixtureOfLogistics(ARModel):
    family = "mixture_of_logistics"

    def __init__(self, cfg: MixtureOfLogisticsConfig):
        super().__init__(cfg)
        self.trunk = PixelCNNTrunk(cfg, cfg.trunk_outputs)

    def conditionals(self, x: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        params = self.trunk(x, classes).flatten(2).transpose(1, 2)  # [B, H·W, 3K or 10K], raster order
        if self.config.channels_in == 3:
            log_probs = rgb_logistic_log_probs(params, x.reshape(x.size(0), -1, 3), self.vocab_size)
            return log_probs.flatten(1, 2)  # [B, H·W, 3, V] → [B, T, V]: R, G, B of each pixel in turn
        logit_weights, means, log_scales = params.chunk(3, dim=-1)
        means = torch.tanh(means)  # within the data's range [-1, 1]
        return discretized_logistic_log_probs(logit_weights, means, log_scales, self.vocab_size)

