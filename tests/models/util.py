"""Building models for the tests in this directory: defaults, tiny enumerable configs, fitted count models."""

from __future__ import annotations

import itertools
from dataclasses import fields

import pytest
import torch

import armodels


def config_fields(family: str) -> set[str]:
    return {f.name for f in fields(armodels.family_classes(family)[1])}


def make(family: str, **config):
    """A model in eval mode, seeded; count-based families are fitted on random data so their tables are not flat."""
    torch.manual_seed(0)
    model = armodels.build(family, **config).eval()
    if not model.trainable:
        model.fit(torch.randint(0, model.vocab_size, (64, model.seq_len), generator=torch.Generator().manual_seed(1)))
    return model


def tiny(family: str, vocab_size: int = 3) -> dict:
    """A config small enough to enumerate every sequence: 6 positions (2×3 images)."""
    shape = {"height": 2, "width": 3} if "height" in config_fields(family) else {"seq_len": 6}
    return {"vocab_size": vocab_size, **shape}


def any_order(family: str) -> dict:
    """The config option that lets a family decode in any ordering, where it needs one."""
    return {"any_order": True} if "any_order" in config_fields(family) else {}


def make_ordered(family: str, ordering: str, seed: int = 0, **config):
    """`make`, then a random ordering if asked for (skipping the test for raster-only families)."""
    model = make(family, **config, **(any_order(family) if ordering == "random" else {}))
    if ordering == "random":
        if not model.any_order:
            pytest.skip(f"{family} decodes in raster order only")
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


def all_sequences(vocab_size: int, length: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product(range(vocab_size), repeat=length)))


def small(family: str) -> dict:
    """A config that decodes quickly by recomputation: 16 positions (4×4 images), 5 tokens."""
    shape = {"height": 4, "width": 4} if "height" in config_fields(family) else {"seq_len": 16}
    return {"vocab_size": 5, **shape}
