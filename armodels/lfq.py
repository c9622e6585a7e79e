"""LFQ, lookup-free quantization (Yu et al. 2023, "Language Model Beats Diffusion — Tokenizer is Key to Visual
Generation", MAGVIT-v2): the codebook is {−1, +1}^bits, so quantizing needs no nearest-neighbour lookup.

The encoder outputs `bits` channels per code position; each is quantized to its sign (+1 where the channel is above
0, else −1), with a straight-through gradient, and the code is the binary number of those signs (+1 is digit 1),
first channel least significant: 2^bits codes. The loss adds to the reconstruction MSE
- a commitment cost β·‖z − sg(q)‖² (mean over channels), as VQ-VAE's, keeping the latents near ±1 (without it
  they grow without bound);
- the LFQ entropy penalty, entropy_weight · (E[H(p(·|z))] − H(E[p(·|z)])): low entropy of each latent's soft code
  distribution (confident assignments) and high entropy of its average over the batch (the codes all in use). The
  soft assignment of a channel z to c ∈ {−1, +1} is softmax(−(z − c)²/τ), so p(+1 | z) = sigmoid(4z/τ) with τ the
  `temperature`. Both entropies are taken in the factorised form over bits: a soft code's entropy is the sum of its
  bits' (exact, since the bits of one latent are independent), and the batch-average code distribution's entropy is
  the sum of the entropies of each bit's batch-average probability (the sum of the marginals' entropies: an upper
  bound of the joint's that ignores correlations between bits, and costs O(bits), not O(2^bits), per latent).
  Entropies are in nats divided by `bits` (each term in [0, ln 2]), so the weight means the same at any code size.
  The penalty is below 0 when the codes are confident and balanced, so the training loss can be below the MSE.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from armodels.autoencoder import ChannelQuantizedAutoencoder, ConvConfig
from armodels.bpe import MAX_VOCAB_SIZE

MAX_BITS = MAX_VOCAB_SIZE.bit_length() - 1  # 19: 2^bits codes are tokens of the models that read them


@dataclass
class LFQConfig(ConvConfig):
    bits: int = 10  # latent channels per code position; the codebook size is 2^bits
    entropy_weight: float = 0.1  # of the entropy penalty
    # β, weight of the commitment cost. Less than VQ-VAE's 0.25: against the MSE of pixels in [0, 1] that holds each
    # channel at the sign it starts with (scikit-learn digits, 6 bits, 300 steps: 6 of 64 codes in use and MSE 0.041;
    # 61 of 64 and MSE 0.018 at 0.01)
    commitment: float = 0.01
    temperature: float = 1.0  # τ of the soft assignments: p(+1 | z) = sigmoid(4z/τ)

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 1 <= self.bits <= MAX_BITS:
            raise ValueError(f"bits must be an integer from 1 to {MAX_BITS} (2^bits codes, at most "
                             f"{MAX_VOCAB_SIZE:,}), got {self.bits!r}")
        for name in ("entropy_weight", "commitment"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be ≥ 0, got {getattr(self, name)!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be above 0, got {self.temperature!r}")

    @property
    def codebook_size(self) -> int:
        return 2 ** self.bits


class LFQ(ChannelQuantizedAutoencoder):
    def __init__(self, cfg: LFQConfig):
        super().__init__(cfg, (2,) * cfg.bits)

    def quantize(self, z):
        z = z.permute(0, 2, 3, 1)
        signs = torch.where(z > 0, 1.0, -1.0)
        q = z + (signs - z).detach()  # straight-through estimator
        codes = self.digits_to_codes((signs > 0).long())
        cfg = self.config
        per_sample, codebook = entropy_terms(z.reshape(-1, cfg.bits), cfg.temperature)
        loss = cfg.commitment * F.mse_loss(z, signs) + cfg.entropy_weight * (per_sample - codebook)
        return q.permute(0, 3, 1, 2), codes, loss

    def codes_to_latents(self, codes):
        return (self.codes_to_digits(codes) * 2 - 1).float().permute(0, 3, 1, 2)


def entropy_terms(z: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents [N, bits] → (mean entropy of each latent's soft code distribution, entropy of the batch-average code
    distribution), factorised over bits and divided by bits, in nats: each in [0, ln 2] (see the module docstring).
    The entropy penalty is their difference."""
    logits = 4 * z / temperature  # p(+1 | z) = sigmoid(logits)
    p = torch.sigmoid(logits)
    per_sample = (F.softplus(logits) - p * logits).mean()  # H(sigmoid(l)) = softplus(l) − sigmoid(l)·l, stably
    mean = p.mean(0).clamp(1e-6, 1 - 1e-6)  # each bit's share of +1 in the batch
    codebook = (torch.special.entr(mean) + torch.special.entr(1 - mean)).mean()
    return per_sample, codebook
