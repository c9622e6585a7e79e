"""What every autoregressive family shares: the ordering, log-likelihood from conditionals, sampling and size.

A family implements one method, `conditionals(x)`: logits [B, T, V] for a batch of token sequences x [B, T], where
the distribution at position t depends only on the tokens that come before t in `self.ordering` (a permutation of
0..T-1, raster order unless the family supports others). Log-likelihood, sampling and beam search follow from it.

Class conditioning: a family whose config has `n_classes` (0: unconditioned) takes `conditionals(x, classes)`, one
class label per sequence ([B] in 0..n_classes-1), which every position may depend on; `log_prob`, `loss`, `sample`
and the decoders pass it through. A conditioned model needs the classes, an unconditioned one refuses them.

Size and cost are properties of the config, counted in closed form beside it: `num_params(non_embedding=True)`
(embedding tables left out of the non-embedding count; weights a mask holds at zero never counted) and
`flops_per_token()`, training FLOPs = 3 × forward. Families that apply their weights once per token count 2 FLOPs
(multiply, add) per weight, masked ones included since they are multiplied too; embeddings (look-ups), biases and
nonlinearities are neglected, as in scaling.flops.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from armodels.sampling import Decoder, RecomputeDecoder, sample

# Bounds on the sizes in a config: far beyond any model trained today, yet small enough that counting a model's
# parameters from its config (some counts loop over layers or draw per-unit masks) stays instant, so a size mistyped
# by a few zeros is refused in one line instead of exhausting memory while a study is planned.
MAX_WIDTH = 1_000_000  # widths, channels, vocabularies, context lengths, kernels
MAX_DEPTH = 10_000  # layers


def check_sizes(config: object, *names: str, low: int = 1, high: int = MAX_WIDTH) -> None:
    """Raise ValueError naming the first field of `config` among `names` that is not a whole number from `low` to
    `high` (booleans are not numbers here)."""
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not low <= value <= high:
            raise ValueError(f"{name}: must be a whole number from {low} to {high:,} (got {value!r})")


def check_size_list(config: object, name: str, *, total: int = MAX_WIDTH) -> None:
    """Raise ValueError unless the field `name` of `config` is 1 to MAX_DEPTH whole numbers, each 1 or more, that add
    up to at most `total`."""
    values = getattr(config, name)
    if (not values or len(values) > MAX_DEPTH or any(isinstance(v, bool) or v < 1 for v in values)
            or sum(values) > total):
        raise ValueError(f"{name}: must be a list of 1 to {MAX_DEPTH:,} whole numbers, each 1 or more, adding up to "
                         f"at most {total:,} (got {values!r})")


def freeze_tuples(config: object) -> None:
    """Turn list-valued fields (as read back from JSON) into tuples, so frozen configs stay hashable."""
    for f in fields(config):
        if isinstance(getattr(config, f.name), list):
            object.__setattr__(config, f.name, tuple(getattr(config, f.name)))


@dataclass(frozen=True)
class ImageConfig:
    """Single-channel images of `height` × `width` pixels with `vocab_size` levels, flattened in raster order.
    The families that subclass it are image families: a study sets height and width, not seq_len."""

    models_images: ClassVar[bool] = True  # armodels.is_image_family reads this
    height: int = 8
    width: int = 8
    vocab_size: int = 2

    @property
    def seq_len(self) -> int:
        return self.height * self.width

    def __post_init__(self) -> None:
        check_sizes(self, "height", "width")
        if self.vocab_size < 2:
            raise ValueError(f"images need at least 2 levels, got vocab_size={self.vocab_size}")


@dataclass(frozen=True)
class ColourImageConfig(ImageConfig):
    """Images of `channels_in` channels: 1 (grey, as ImageConfig) or 3 (RGB). Each sub-pixel is a token of
    `vocab_size` levels, in raster order over pixels and R → G → B within a pixel (the layout of an image array
    [H, W, C] flattened), so seq_len = height · width · channels_in and bits/dim = nats per token / ln 2."""

    channels_in: int = 1

    @property
    def seq_len(self) -> int:
        return self.height * self.width * self.channels_in

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.channels_in not in (1, 3) or isinstance(self.channels_in, bool):
            raise ValueError(f"channels_in: must be 1 (grey) or 3 (RGB), got {self.channels_in!r}")


class ARModel(nn.Module):
    """Base of every family. Subclasses set `family`, build their layers and implement `conditionals`; the ones
    that can decode faster than rerunning the network override `decoder`. Size and cost come from the config:
    every family's config dataclass has `num_params(non_embedding=True)` and `flops_per_token()`, exact closed
    forms (tests/armodels/models/test_costs.py checks them against the built weights), so planning builds no model."""

    family: ClassVar[str]
    # Count-based families (histogram, ngram) have no trainable parameters: the training loop calls `fit(x)` on
    # each batch instead of stepping an optimiser, and their evaluation is the same as any other family's.
    trainable: ClassVar[bool] = True

    def __init__(self, config) -> None:
        super().__init__()
        self.config = config
        self.vocab_size: int = config.vocab_size
        self.seq_len: int = config.seq_len
        # Whether `set_ordering` accepts any permutation: the config says (see armodels.any_order_config); families
        # that are causal by construction in raster order (convolutions, recurrences) accept raster order only.
        self.any_order: bool = getattr(config, "any_order", False)
        self.register_buffer("ordering", torch.arange(self.seq_len))

    def conditionals(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [B, T, V] of every position of x [B, T] given the tokens before it in `self.ordering` (and, in a
        class-conditioned family, `conditionals(x, classes)`: given the class of each sequence too)."""
        raise NotImplementedError

    @property
    def n_classes(self) -> int:
        """The classes the model is conditioned on; 0: unconditioned (or a family that takes no class)."""
        return getattr(self.config, "n_classes", 0)

    def check_classes(self, classes: torch.Tensor | None, batch_size: int) -> None:
        """ValueError unless `classes` fits the model: None when it is unconditioned, else [batch_size] labels in
        0..n_classes-1."""
        if not self.n_classes:
            if classes is not None:
                raise ValueError(f"this {self.family} model is not class-conditioned (n_classes 0): it takes no class")
            return
        if classes is None or classes.shape != (batch_size,):
            raise ValueError(f"this {self.family} model is conditioned on {self.n_classes} classes: give one class "
                             f"per sequence, shape [{batch_size}]")
        if classes.min() < 0 or classes.max() >= self.n_classes:
            raise ValueError(f"classes must be from 0 to {self.n_classes - 1}, got {sorted(set(classes.tolist()))}")

    def logits(self, x: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        """`conditionals(x)`, or `conditionals(x, classes)` for a conditioned model, after checking the classes."""
        self.check_classes(classes, x.size(0))
        return self.conditionals(x) if classes is None else self.conditionals(x, classes)

    def forward(self, x: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        # Calling the module (as DeepSpeed or DDP wrappers do) gives the conditionals.
        return self.logits(x, classes)

    def log_prob(self, x: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        """Log-likelihood in nats of each sequence of x [B, T] (given its class, if conditioned): shape [B]."""
        if x.dim() != 2 or x.size(1) != self.seq_len:
            raise ValueError(f"expected tokens of shape [batch, {self.seq_len}], got {list(x.shape)}")
        logp = F.log_softmax(self.logits(x, classes).float(), dim=-1)
        return logp.gather(-1, x.unsqueeze(-1)).squeeze(-1).sum(-1)

    def loss(self, x: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        """Mean negative log-likelihood in nats per token: what training minimises."""
        logits = self.logits(x, classes)
        return F.cross_entropy(logits.float().flatten(0, 1), x.flatten())

    # ---- ordering ----

    def set_ordering(self, ordering: Sequence[int] | torch.Tensor) -> None:
        """Decode in `ordering` (a permutation of 0..T-1) from now on."""
        perm = torch.as_tensor(ordering, dtype=torch.long, device=self.ordering.device)
        raster = torch.arange(self.seq_len, device=perm.device)
        if perm.shape != (self.seq_len,) or not torch.equal(perm.sort().values, raster):
            raise ValueError(f"an ordering must be a permutation of 0..{self.seq_len - 1}")
        if not self.any_order and not torch.equal(perm, raster):
            raise ValueError(f"the {self.family} family decodes in raster order only")
        self.ordering.copy_(perm)

    def before_train_step(self, step: int) -> None:
        """Called by the training loop before optimiser step `step`; MADE moves to that step's ordering here."""

    # ---- decoding (see armodels.sampling) ----

    def decoder(self, batch_size: int, classes: torch.Tensor | None = None) -> Decoder:
        """A decoder yields the logits of the next position in `self.ordering` one step at a time (of sequences of
        `classes`, if conditioned). This one reruns `conditionals` on the partly decoded sequence; families with a
        cache or a recurrent state override it."""
        return RecomputeDecoder(self, batch_size, classes)

    def sample(self, n: int, *, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
               seed: int | None = None, prompt: torch.Tensor | None = None,
               classes: torch.Tensor | None = None) -> torch.Tensor:
        """`n` sequences [n, T] drawn token by token in `self.ordering` (of `classes` [n], if conditioned);
        temperature 0 is greedy."""
        return sample(self, n, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, prompt=prompt,
                      classes=classes)

    # ---- size and cost: the config's closed forms ----

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count, without (by default) the embedding tables, as in Kaplan et al. 2020. Weights a mask holds
        at zero are not counted: they can never change the output."""
        return self.config.num_params(non_embedding)

    def flops_per_token(self) -> float:
        """Training FLOPs (forward + backward = 3 × forward) per token."""
        return self.config.flops_per_token()
