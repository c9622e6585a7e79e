"""n-gram model: the next token given the n-1 tokens before it, with add-k or interpolated Kneser–Ney smoothing.

Count-based (`trainable = False`): `fit(x)` adds the counts of a batch, then the smoothed probabilities of every
context are tabulated, so `conditionals` is a look-up. Sequences start with n-1 copies of a start symbol (id V,
used in contexts only). Contexts follow `ordering`, so any ordering works.

Counts live in a dense table of (V+1)^(n-1) contexts × V tokens: fine for bytes up to trigrams, not for BPE
vocabularies (the config refuses tables over 2^25 entries).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from armodels.models.base import ARModel, check_sizes

MAX_TABLE = 2**25


@dataclass(frozen=True)
class NGramConfig:
    vocab_size: int = 16
    seq_len: int = 8
    order: int = 3  # n: the context is the n-1 previous tokens
    smoothing: str = "kneser_ney"  # or "add_k"
    k: float = 1.0  # add-k: pseudocount added to every count
    discount: float = 0.75  # Kneser–Ney: absolute discount D, 0 < D ≤ 1
    any_order: ClassVar[bool] = True  # contexts follow the ordering

    def __post_init__(self) -> None:
        check_sizes(self, "vocab_size", "seq_len")
        check_sizes(self, "order", high=64)  # a table of 2^63 entries is already far beyond MAX_TABLE
        if self.smoothing not in ("kneser_ney", "add_k"):
            raise ValueError(f"smoothing must be 'kneser_ney' or 'add_k', got {self.smoothing!r}")
        if self.k <= 0 or not 0 < self.discount <= 1:
            raise ValueError(f"need k > 0 and 0 < discount <= 1, got k={self.k}, discount={self.discount}")
        if self.n_contexts * self.vocab_size > MAX_TABLE:
            raise ValueError(f"a dense {self.order}-gram table over {self.vocab_size} tokens has "
                             f"{self.n_contexts * self.vocab_size:,} entries (more than {MAX_TABLE:,})")

    @property
    def n_contexts(self) -> int:
        return (self.vocab_size + 1) ** (self.order - 1)

    def num_params(self, non_embedding: bool = True) -> int:
        """The count table's entries: a count model's parameters are its statistics."""
        return self.n_contexts * self.vocab_size

    def flops_per_token(self) -> float:
        """No training FLOPs (fitting is counting); this is the cost of one conditional from the counts rather
        than the table: about 5 operations per token of the vocabulary per order (discount, clamp, interpolate,
        normalise) for Kneser–Ney, 3 for add-k."""
        per_entry = 5 * self.order if self.smoothing == "kneser_ney" else 3
        return float(per_entry * self.vocab_size)


def kneser_ney(counts: torch.Tensor, vocab_size: int, discount: float) -> torch.Tensor:
    """Interpolated Kneser–Ney probabilities [(V+1)^(n-1), V] from n-gram counts of the same shape.

    Each order m interpolates its discounted counts with order m-1, h' being h without its oldest token:
        p_m(w | h) = (max(c(h, w) - D, 0) + D · N1+(h, •) · p_{m-1}(w | h')) / c(h, •)
    or p_{m-1}(w | h') where c(h, •) = 0. c is the raw count at the top order and, below it, the continuation
    count N1+(•, h, w): how many distinct tokens came before h w. Order 0 is uniform. Row h holds context h in
    base V+1, oldest token most significant, so h' is row h mod (V+1)^(m-2) of the order below.
    """
    width = vocab_size + 1
    tables = [counts]
    while tables[-1].size(0) > 1:  # continuation counts of each lower order
        tables.append((tables[-1] > 0).view(width, -1, vocab_size).sum(0).to(counts.dtype))
    p = counts.new_full((1, vocab_size), 1 / vocab_size)
    for c in reversed(tables):
        lower = p.repeat(c.size(0) // p.size(0), 1)
        total = c.sum(-1, keepdim=True)
        types = (c > 0).sum(-1, keepdim=True)
        interpolated = ((c - discount).clamp(min=0) + discount * types * lower) / total.clamp(min=1)
        p = torch.where(total > 0, interpolated, lower)
    return p


class NGram(ARModel):
    family = "ngram"
    trainable = False

    def __init__(self, cfg: NGramConfig):
        super().__init__(cfg)
        self.register_buffer("counts", torch.zeros(cfg.n_contexts, cfg.vocab_size, dtype=torch.float64))
        self.register_buffer("log_table", torch.empty(0), persistent=False)  # tabulated from counts
        self.register_load_state_dict_post_hook(lambda module, _: module.tabulate())
        self.tabulate()

    def _contexts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens of x in decoding order [B, T] and the id of the n-1 tokens before each (start-padded) [B, T]."""
        steps = x[:, self.ordering]
        n, T = self.config.order, self.seq_len
        padded = F.pad(steps, (n - 1, 0), value=self.vocab_size)
        ids = torch.zeros_like(steps)
        for i in range(n - 1):  # Horner: the oldest token is the most significant digit
            ids = ids * (self.vocab_size + 1) + padded[:, i:i + T]
        return steps, ids

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> None:
        """Add the n-gram counts of x [B, T] and re-tabulate the smoothed probabilities."""
        steps, ids = self._contexts(x)
        ones = torch.ones(x.numel(), dtype=self.counts.dtype, device=x.device)
        self.counts.index_put_((ids.flatten(), steps.flatten()), ones, accumulate=True)
        self.tabulate()

    def tabulate(self) -> None:
        """Smoothed log-probabilities of every context from `counts`; `fit` and loading call it, and so should
        code that changes `counts` itself (say, after summing them over workers)."""
        c = self.config
        if c.smoothing == "add_k":
            p = (self.counts + c.k) / (self.counts.sum(-1, keepdim=True) + c.k * c.vocab_size)
        else:
            p = kneser_ney(self.counts, c.vocab_size, c.discount)
        self.log_table = p.log().float()

    def conditionals(self, x: torch.Tensor) -> torch.Tensor:
        _, ids = self._contexts(x)
        return self.log_table[ids][:, self.ordering.argsort()]

