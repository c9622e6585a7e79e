"""Building models for the tests in this directory: defaults, tiny enumerable configs, fitted count models."""

from __future__ import annotations

import itertools

import pytest
import torch

import armodels

FAMILIES = armodels.families()
ORDERINGS = ["raster", "random"]


def sized(family: str, vocab_size: int, height: int, width: int) -> dict:
    """A config of `vocab_size` tokens at height × width positions: an image of that size, or a sequence as long."""
    shape = {"height": height, "width": width} if armodels.is_image_family(family) else {"seq_len": height * width}
    return {"vocab_size": vocab_size, **shape}


def make(family: str, **config):
    """A model in eval mode, seeded; count-based families are fitted on random data so their tables are not flat."""
    torch.manual_seed(0)
    model = armodels.build(family, **config).eval()
    if not model.trainable:
        model.fit(torch.randint(0, model.vocab_size, (64, model.seq_len), generator=torch.Generator().manual_seed(1)))
    return model


def tiny(family: str, vocab_size: int = 3) -> dict:
    """A config small enough to enumerate every sequence: 6 positions (2×3 images; 2×2 images for the hierarchical
    family, whose factor of 2 must divide both sides: 1 + 4 positions)."""
    return sized(family, vocab_size, 2, 2 if family == "hierarchical_pixelcnn" else 3)


def make_ordered(family: str, ordering: str, seed: int = 0, **config):
    """`make`, then a random ordering if asked for (skipping the test for raster-only families)."""
    any_order = armodels.any_order_config(family)
    if ordering == "random" and any_order is None:
        pytest.skip(f"{family} decodes in raster order only")
    model = make(family, **config, **(any_order if ordering == "random" else {}))
    if ordering == "random":
        assert model.any_order
        model.set_ordering(torch.randperm(model.seq_len, generator=torch.Generator().manual_seed(seed)))
    return model


@torch.no_grad()
def decoder_error(model, x: torch.Tensor) -> float:
    """Largest difference between the decoder's step logits, teacher-forced on x, and `conditionals(x)`."""
    full = model.conditionals(x)
    decoder, token, worst = model.decoder(x.size(0)), None, 0.0
    for position in model.ordering.tolist():
        worst = max(worst, (decoder.step(token) - full[:, position]).abs().max().item())
        token = x[:, position]
    return worst


@torch.no_grad()
def chunked_forward(model, x: torch.Tensor, prefill: int, singles_until: int) -> torch.Tensor:
    """The logits of x from a transformer's forward with its KV cache: `prefill` tokens at once, then one at a time
    up to position `singles_until`, then the rest as one chunk (the explicit-mask path with several new queries)."""
    logits, _, cache = model(x[:, :prefill])
    parts = [logits]
    for t in range(prefill, singles_until):
        logits, _, cache = model(x[:, t:t + 1], cache=cache)
        parts.append(logits)
    parts.append(model(x[:, singles_until:], cache=cache)[0])
    return torch.cat(parts, dim=1)


def all_sequences(vocab_size: int, length: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product(range(vocab_size), repeat=length)))


def small(family: str) -> dict:
    """A config that decodes quickly by recomputation: 16 positions (4×4 images), 5 tokens."""
    return sized(family, 5, 4, 4)
