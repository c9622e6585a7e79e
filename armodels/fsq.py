"""FSQ, finite scalar quantization (Mentzer et al. 2023): no codebook to learn, so no codebook collapse.

The encoder outputs one channel per entry of `levels`; each channel is bounded to the range of its level count L by
f(z) = tanh(z + s)·h − o, with h = (L − 1)(1 − ε)/2, o = 0.5 for even L (else 0) and s = atanh(o / h) so that
f(0) = 0, then rounded to an integer with a straight-through gradient: L values, from −⌊L/2⌋ to ⌈L/2⌉ − 1. The decoder
gets them divided by ⌊L/2⌋ (in [−1, 1]). A code is the mixed-radix number whose digits are the channels' values
shifted to 0..L−1, first channel least significant, so levels (8, 5, 5, 5) make 1,000 codes.
(The paper's listing computes s with tan; atanh is what makes f(0) = 0, as its text intends.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from armodels.autoencoder import ChannelQuantizedAutoencoder, ConvConfig
from armodels.bpe import MAX_VOCAB_SIZE


@dataclass
class FSQConfig(ConvConfig):
    levels: tuple[int, ...] = (8, 5, 5, 5)  # values per channel; the codebook size is their product
    epsilon: float = 1e-3  # keeps tanh's range just inside the outermost rounding boundary

    def __post_init__(self):
        super().__post_init__()
        self.levels = tuple(int(v) for v in self.levels)  # a list, from JSON
        # a level of 2 leaves tanh's range, kept inside (−1, 0), no point where f(0) = 0 (the shift is undefined)
        if not self.levels or min(self.levels) < 3:
            raise ValueError(f"levels must be integers ≥ 3 (for two levels a channel, binary codes, use lfq), got "
                             f"{self.levels}")
        if math.prod(self.levels) > MAX_VOCAB_SIZE:  # every code is a token of the models that read the codes
            raise ValueError(f"levels {self.levels} make {math.prod(self.levels):,} codes, more than a vocabulary may "
                             f"hold ({MAX_VOCAB_SIZE:,}); use fewer channels or levels")

    @property
    def codebook_size(self) -> int:
        return math.prod(self.levels)


class FSQ(ChannelQuantizedAutoencoder):
    def __init__(self, cfg: FSQConfig):
        super().__init__(cfg, cfg.levels)
        self.register_buffer("half_width", (self.levels // 2).float(), persistent=False)

    def bound(self, z: torch.Tensor) -> torch.Tensor:
        """Channels last [..., len(levels)] → each channel in the open range that rounds to its L integers."""
        half = (self.levels - 1) * (1 - self.config.epsilon) / 2
        offset = (self.levels % 2 == 0).float() * 0.5
        return torch.tanh(z + torch.atanh(offset / half)) * half - offset

    def quantize(self, z):
        z = z.permute(0, 2, 3, 1)
        bounded = self.bound(z)
        rounded = bounded + (bounded.round() - bounded).detach()  # straight-through estimator
        codes = self.digits_to_codes(rounded.detach().round().long() + self.levels // 2)
        return (rounded / self.half_width).permute(0, 3, 1, 2), codes, z.new_zeros(())

    def codes_to_latents(self, codes):
        values = self.codes_to_digits(codes) - self.levels // 2
        return (values / self.half_width).permute(0, 3, 1, 2)
