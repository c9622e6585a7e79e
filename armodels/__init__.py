"""Autoregressive model families behind one interface.

    armodels.families()                  the family names
    armodels.build("made", height=28)   a model from its config dataclass; every field has a small default

Every model has `conditionals(x)`, `log_prob(x)`, `sample(n, ...)`, `ordering`, `num_params()` and
`flops_per_token()`; see armodels/models/base.py. Families are imported on first use, so importing armodels
(say, for armodels.files) does not import torch.
"""

from __future__ import annotations

import importlib
from dataclasses import fields

# family name → (module under armodels.models, model class, config class)
_FAMILIES = {
    "histogram": ("histogram", "Histogram", "HistogramConfig"),
    "ngram": ("ngram", "NGram", "NGramConfig"),
    "mixture_of_logistics": ("mixture_of_logistics", "MixtureOfLogistics", "MixtureOfLogisticsConfig"),
    "made": ("made", "MADE", "MADEConfig"),
    "wavenet": ("wavenet", "WaveNet", "WaveNetConfig"),
    "rnn": ("rnn", "RNN", "RNNConfig"),
    "pixelcnn": ("pixelcnn", "PixelCNN", "PixelCNNConfig"),
    "gated_pixelcnn": ("gated_pixelcnn", "GatedPixelCNN", "GatedPixelCNNConfig"),
    "transformer": ("transformer", "Transformer", "TransformerConfig"),
    "linear_attention": ("linear_attention", "LinearAttention", "LinearAttentionConfig"),
}


def families() -> list[str]:
    return list(_FAMILIES)


def family_classes(family: str) -> tuple[type, type]:
    """(model class, config class) of `family`."""
    if family not in _FAMILIES:
        raise ValueError(f"unknown model family {family!r}; expected one of {', '.join(_FAMILIES)}")
    module_name, model_name, config_name = _FAMILIES[family]
    module = importlib.import_module(f"armodels.models.{module_name}")
    return getattr(module, model_name), getattr(module, config_name)


def build(family: str, **config):
    """A `family` model built from its config dataclass, with `config` overriding the defaults."""
    model_class, config_class = family_classes(family)
    known = {f.name for f in fields(config_class)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"{family} has no config field {', '.join(unknown)}; its fields: {', '.join(sorted(known))}")
    return model_class(config_class(**config))
