"""MADE: a masked autoencoder for distribution estimation (Germain et al. 2015).

An MLP maps the one-hot tokens of a whole sequence to logits for every position at once. Each unit gets a degree:
input and output units that of their position's step in the ordering, hidden units a random degree; a weight is
kept only from a lower-or-equal degree (into a hidden unit) or a strictly lower one (into an output), so the
logits of the step-s position see only positions of earlier steps. Any ordering works: changing it redraws the
masks. `orderings > 1` cycles through that many masks (the training loop calls `before_train_step`), each with
its own hidden degrees and, with `order_agnostic`, its own random ordering: the paper's order-agnostic and
connectivity-agnostic training. At evaluation, `ensemble_log_prob(x, k)` averages the probabilities of k of those
masks, the paper's ensemble.

With `n_classes` > 0 the model is class-conditioned: a learned embedding of the class is added to the first hidden
layer's inputs, unmasked (the class is known before any position), and a learned bias per class to the logits,
since the first step's outputs see no hidden unit (a hidden unit of degree d feeds only later steps' outputs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from armodels.models.base import MAX_DEPTH, ARModel, ImageConfig, check_size_list, check_sizes, freeze_tuples
from armodels.models.layers import MaskedLinear, class_table


@dataclass(frozen=True)
class MADEConfig(ImageConfig):
    height: int = 4
    width: int = 4
    vocab_size: int = 2
    hidden: tuple[int, ...] = (128, 128)
    orderings: int = 1  # masks to cycle through during training
    order_agnostic: bool = False  # each mask gets a random ordering (otherwise: raster, or the one set)
    seed: int = 0  # draws hidden degrees and random orderings
    n_classes: int = 0  # > 0: conditioned on a class label, embedded into the first hidden layer and the logits
    any_order: ClassVar[bool] = True  # a mask for any ordering

    def __post_init__(self) -> None:
        super().__post_init__()
        freeze_tuples(self)
        check_sizes(self, "n_classes", low=0)
        check_sizes(self, "orderings", high=MAX_DEPTH)
        check_size_list(self, "hidden")  # counting parameters draws every hidden unit's degree

    # ---- size and cost ----

    @property
    def layer_sizes(self) -> list[int]:
        """Units of each layer of the MLP: one-hot inputs, the hidden layers, logits."""
        return [self.seq_len * self.vocab_size, *self.hidden, self.seq_len * self.vocab_size]

    def num_params(self, non_embedding: bool = True) -> int:
        """Weights the first mask keeps, and the biases (no embeddings: the one-hot inputs feed the MLP).

        Every step of the ordering has V input and V output units, so the counts depend on the drawn hidden
        degrees only, not on the ordering: a hidden unit of degree d keeps its weights from the units below of
        degree ≤ d, an output unit of step s those from the last hidden units of degree < s."""
        T, V = self.seq_len, self.vocab_size
        below = torch.arange(T).repeat_interleave(V)  # the input units' degrees (their steps), sorted
        kept = 0
        for degrees in draw_mask(self, 0)[1]:
            kept += int(torch.searchsorted(below, degrees, right=True).sum())
            below = degrees.sort().values
        kept += V * int(torch.searchsorted(below, torch.arange(T)).sum())
        classes = self.n_classes * (self.hidden[0] + self.layer_sizes[-1])  # the class tables: embeddings
        return kept + sum(self.layer_sizes[1:]) + (0 if non_embedding else classes)

    def flops_per_token(self) -> float:
        """Training FLOPs per token: one pass of the dense (masked) MLP gives all T conditionals, so
        3 × 2 · weights / T."""
        sizes = self.layer_sizes
        return 3.0 * (2 * sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))) / self.seq_len


def hidden_degrees(cfg: MADEConfig, g: torch.Generator) -> list[torch.Tensor]:
    """Each hidden layer's unit degrees, drawn from `g` in [lowest degree of the layer below, T-2]: a unit of degree
    T-1 could feed no output. (The inputs' lowest degree is 0, that of the first step.)"""
    degrees, low = [], 0
    for width in cfg.hidden:
        degrees.append(torch.randint(low, max(cfg.seq_len - 1, low + 1), (width,), generator=g))
        low = int(degrees[-1].min())
    return degrees


def draw_mask(cfg: MADEConfig, index: int) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
    """Mask `index` of the cycle, drawn from seed + index: its random ordering (with order_agnostic, else None) and
    hidden degrees. A model's first mask is mask 0."""
    g = torch.Generator().manual_seed(cfg.seed + index)
    ordering = torch.randperm(cfg.seq_len, generator=g) if cfg.order_agnostic else None
    return ordering, hidden_degrees(cfg, g)


class MADE(ARModel):
    family = "made"

    def __init__(self, cfg: MADEConfig):
        super().__init__(cfg)
        sizes = cfg.layer_sizes
        self.layers = nn.ModuleList(MaskedLinear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.class_embedding = class_table(cfg.n_classes, cfg.hidden[0]) if cfg.n_classes else None
        self.class_logits = class_table(cfg.n_classes, sizes[-1]) if cfg.n_classes else None
        self.mask_index = 0
        self._draw_mask()

    def conditionals(self, x: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        h = self.layers[0](F.one_hot(x, self.vocab_size).float().flatten(1))
        if self.class_embedding is not None:
            h = h + self.class_embedding(classes)
        for layer in self.layers[1:]:
            h = layer(F.relu(h))
        if self.class_logits is not None:
            h = h + self.class_logits(classes)
        return h.view(x.size(0), self.seq_len, self.vocab_size)

    def set_ordering(self, ordering) -> None:
        super().set_ordering(ordering)
        g = torch.Generator().manual_seed(self.config.seed + self.mask_index)
        self._set_masks(hidden_degrees(self.config, g))

    def before_train_step(self, step: int) -> None:
        # the mask follows from the step alone, so a run resumed from a checkpoint draws the same masks
        index = (step + 1) % self.config.orderings
        if index != self.mask_index:
            self.mask_index = index
            self._draw_mask()

    @torch.no_grad()
    def ensemble_log_prob(self, x: torch.Tensor, k: int, classes: torch.Tensor | None = None) -> torch.Tensor:
        """log (1/k) Σ_m p_m(x) [B] over masks m = 0..k-1 of the training cycle (mask m % `orderings`, each with its
        ordering when order-agnostic): a mixture of k normalised models, so itself normalised, and by Jensen never
        less likely on average than its masks are one by one. The model's own mask and ordering are put back. For
        evaluation only: no gradients, since the masks are swapped in place."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"ensemble: must be a whole number of masks, 1 or more (got {k!r})")
        saved = self.mask_index, self.ordering.clone(), [layer.mask.clone() for layer in self.layers]
        distinct = min(k, self.config.orderings)  # beyond the cycle, masks repeat: weigh each by its repeats
        terms = []
        try:
            for m in range(distinct):
                self.mask_index = m
                self._draw_mask()
                repeats = len(range(m, k, self.config.orderings))
                terms.append(self.log_prob(x, classes) + math.log(repeats))
        finally:
            self.mask_index = saved[0]
            self.ordering.copy_(saved[1])
            for layer, mask in zip(self.layers, saved[2]):
                layer.mask.copy_(mask)
        return torch.stack(terms).logsumexp(0) - math.log(k)

    def _draw_mask(self) -> None:
        ordering, degrees = draw_mask(self.config, self.mask_index)
        if ordering is not None:
            super().set_ordering(ordering)
        self._set_masks(degrees)

    @torch.no_grad()
    def _set_masks(self, hidden_layer_degrees: list[torch.Tensor]) -> None:
        step = self.ordering.argsort().cpu()  # the step at which each position is decoded
        position_degree = step.repeat_interleave(self.vocab_size)  # all V one-hot units of a position share it
        degree = position_degree
        for layer, hidden in zip(self.layers[:-1], hidden_layer_degrees):
            layer.mask.copy_(hidden[:, None] >= degree[None, :])
            degree = hidden
        self.layers[-1].mask.copy_(position_degree[:, None] > degree[None, :])
