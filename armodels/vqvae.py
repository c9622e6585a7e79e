"""VQ-VAE (van den Oord et al. 2017) with the codebook learned by exponential moving averages (the paper's
appendix, as in VQ-VAE-2).

Each encoder output vector is replaced by its nearest code; gradients pass the quantization straight through, and
the loss is the reconstruction MSE plus β·‖z − sg(e)‖² (the commitment cost). The codebook gets no gradients: each
step moves every code towards the mean of the vectors assigned to it, by EMAs (decay γ) of the count N_k and the sum
m_k of those vectors, e_k = m_k / N_k with Laplace-smoothed counts (so a code with no vectors divides by no zero).

Two things keep the whole codebook in use, which the plain method does not:
- k-means initialisation: at the first training step the codebook is set by a few Lloyd iterations on that batch's
  encoder outputs, so the codes start where the data is;
- restarts of dead codes: a code is dead when its EMA count of assigned vectors per batch falls below
  `dead_code_threshold` × the count every code would get if all were used equally (vectors per batch / codebook
  size); each dead code is re-seeded with a random encoder output of the current batch, and its EMA count set to
  that threshold, so a re-seeded code that still attracts nothing is dead again at the next step and re-seeded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from armodels.autoencoder import ConvConfig, QuantizedAutoencoder


@dataclass
class VQVAEConfig(ConvConfig):
    codebook_size: int = 256
    code_dim: int = 32  # size of each code vector (the encoder's output channels)
    decay: float = 0.99  # of the codebook EMAs
    commitment: float = 0.25  # β, weight of the commitment cost
    dead_code_threshold: float = 0.1  # dead below this share of a uniform code's EMA count (see above); 0: never
    kmeans_iters: int = 10  # Lloyd iterations of the initialisation
    epsilon: float = 1e-5  # Laplace smoothing of the EMA counts

    def __post_init__(self):
        super().__post_init__()
        if self.codebook_size < 2 or self.code_dim < 1 or not 0 < self.decay < 1:
            raise ValueError(f"codebook_size must be ≥ 2, code_dim ≥ 1 and decay in (0, 1) (got {self.codebook_size}, "
                             f"{self.code_dim}, {self.decay})")


class VQVAE(QuantizedAutoencoder):
    def __init__(self, cfg: VQVAEConfig):
        super().__init__(cfg, cfg.code_dim)
        self.codebook_size = cfg.codebook_size
        # Buffers, not parameters: the optimizer never sees the codebook; save/load and .to() do.
        self.register_buffer("codebook", torch.randn(cfg.codebook_size, cfg.code_dim))
        self.register_buffer("ema_count", torch.zeros(cfg.codebook_size))
        self.register_buffer("ema_sum", torch.zeros(cfg.codebook_size, cfg.code_dim))
        self.register_buffer("initialized", torch.tensor(False))
        self.register_buffer("restarts", torch.tensor(0))  # dead codes re-seeded so far (a statistic)

    def quantize(self, z):
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)
        if self.training and not self.initialized:
            self._kmeans_init(flat.detach())
        codes = nearest(flat, self.codebook)
        e = self.codebook[codes]  # a copy: the EMA update below does not change it
        if self.training:
            self._ema_update(flat.detach(), codes)
        commitment = self.config.commitment * F.mse_loss(flat, e)  # e holds no gradient: it is sg(e)
        z_q = flat + (e - flat).detach()  # straight-through estimator
        return z_q.view(b, h, w, d).permute(0, 3, 1, 2), codes.view(b, h, w), commitment

    def codes_to_latents(self, codes):
        return self.codebook[codes].permute(0, 3, 1, 2)

    @torch.no_grad()
    def _kmeans_init(self, flat: torch.Tensor) -> None:
        k = self.codebook_size
        start = torch.randperm(len(flat))[:k] if len(flat) >= k else torch.randint(len(flat), (k,))
        centroids = flat[start].clone()
        for _ in range(self.config.kmeans_iters):
            counts, sums = _cluster_stats(flat, nearest(flat, centroids), k)
            used = counts > 0  # an empty cluster keeps its centroid (and is restarted as a dead code)
            centroids[used] = sums[used] / counts[used, None]
        self.codebook.copy_(centroids)
        self.ema_count.copy_(counts)
        self.ema_sum.copy_(centroids * counts[:, None])
        self.initialized.fill_(True)

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, codes: torch.Tensor) -> None:
        cfg = self.config
        counts, sums = _cluster_stats(flat, codes, self.codebook_size)
        self.ema_count.mul_(cfg.decay).add_(counts, alpha=1 - cfg.decay)
        self.ema_sum.mul_(cfg.decay).add_(sums, alpha=1 - cfg.decay)
        total = self.ema_count.sum()
        smoothed = (self.ema_count + cfg.epsilon) / (total + self.codebook_size * cfg.epsilon) * total
        self.codebook.copy_(self.ema_sum / smoothed[:, None])
        threshold = cfg.dead_code_threshold * len(flat) / self.codebook_size
        dead = self.ema_count < threshold
        if dead.any():
            seeds = flat[torch.randint(len(flat), (int(dead.sum()),))]
            self.codebook[dead] = seeds
            self.ema_sum[dead] = seeds * threshold
            self.ema_count[dead] = threshold
            self.restarts += int(dead.sum())


def nearest(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest code (squared Euclidean distance) of each row of x."""
    distances = (x * x).sum(1, keepdim=True) - 2 * x @ codebook.T + (codebook * codebook).sum(1)
    return distances.argmin(1)


def _cluster_stats(x: torch.Tensor, codes: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Number of rows of x assigned to each code, and their sum."""
    counts = torch.bincount(codes, minlength=k).to(x.dtype)
    return counts, torch.zeros(k, x.shape[1], dtype=x.dtype).index_add_(0, codes, x)
