"""MADE: a masked autoencoder for distribution estimation (Germain et al. 2015).

An MLP maps the one-hot tokens of a whole sequence to logits for every position at once. Each unit gets a degree:
input and output units that of their position's step in the ordering, hidden units a random degree; a weight is
kept only from a lower-or-equal degree (into a hidden unit) or a strictly lower one (into an output), so the
logits of the step-s position see only positions of earlier steps. Any ordering works: changing it redraws the
masks. `orderings > 1` cycles through that many masks (the training loop calls `before_train_step`), each with
its own hidden degrees and, with `order_agnostic`, its own random ordering: the paper's order-agnostic and
connectivity-agnostic training.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from armodels.models.base import ARModel, ImageConfig, check_positive, freeze_tuples
from armodels.models.layers import MaskedLinear


@dataclass(frozen=True)
class MADEConfig(ImageConfig):
    height: int = 4
    width: int = 4
    vocab_size: int = 2
    hidden: tuple[int, ...] = (128, 128)
    orderings: int = 1  # masks to cycle through during training
    order_agnostic: bool = False  # each mask gets a random ordering (otherwise: raster, or the one set)
    seed: int = 0  # draws hidden degrees and random orderings

    def __post_init__(self) -> None:
        super().__post_init__()
        freeze_tuples(self)
        check_positive(self, "orderings")
        if not self.hidden or min(self.hidden) < 1:
            raise ValueError(f"MADE needs at least one hidden layer of positive width, got {self.hidden}")


class MADE(ARModel):
    family = "made"
    any_order = True

    def __init__(self, cfg: MADEConfig):
        super().__init__(cfg)
        sizes = [cfg.seq_len * cfg.vocab_size, *cfg.hidden, cfg.seq_len * cfg.vocab_size]
        self.layers = nn.ModuleList(MaskedLinear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.mask_index = 0
        self._draw_mask()

    def conditionals(self, x: torch.Tensor) -> torch.Tensor:
        h = F.one_hot(x, self.vocab_size).float().flatten(1)
        for layer in self.layers[:-1]:
            h = F.relu(layer(h))
        return self.layers[-1](h).view(x.size(0), self.seq_len, self.vocab_size)

    def set_ordering(self, ordering) -> None:
        super().set_ordering(ordering)
        self._set_masks(self._generator())

    def before_train_step(self, step: int) -> None:
        # the mask follows from the step alone, so a run resumed from a checkpoint draws the same masks
        index = (step + 1) % self.config.orderings
        if index != self.mask_index:
            self.mask_index = index
            self._draw_mask()

    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.config.seed + self.mask_index)

    def _draw_mask(self) -> None:
        g = self._generator()
        if self.config.order_agnostic:
            super().set_ordering(torch.randperm(self.seq_len, generator=g))
        self._set_masks(g)

    @torch.no_grad()
    def _set_masks(self, g: torch.Generator) -> None:
        T, V = self.seq_len, self.vocab_size
        step = self.ordering.argsort().cpu()  # the step at which each position is decoded
        position_degree = step.repeat_interleave(V)  # all V one-hot units of a position share its degree
        degree = position_degree
        for layer in self.layers[:-1]:
            # Hidden degrees in [lowest below, T-2]: a unit of degree T-1 could feed no output.
            low = int(degree.min())
            hidden = torch.randint(low, max(T - 1, low + 1), (layer.out_features,), generator=g)
            layer.mask.copy_(hidden[:, None] >= degree[None, :])
            degree = hidden
        self.layers[-1].mask.copy_(position_degree[:, None] > degree[None, :])

    def flops_per_token(self) -> float:
        """Training FLOPs per token: one pass of the dense (masked) MLP gives all T conditionals, so
        3 × 2 · weights / T."""
        return 3.0 * self.weight_flops() / self.seq_len
