"""Autoregressive model families behind one interface.

    armodels.families()                       the family names
    armodels.build("made", height=28)         a model from its config dataclass; every field has a small default
    armodels.make_config("made", height=28)   only the config: its size and cost, no weights

Every model has `conditionals(x)`, `log_prob(x)`, `sample(n, ...)`, `ordering`, `num_params()` and
`flops_per_token()`; see armodels/models/base.py. Every config has `num_params()` and `flops_per_token()` too,
counted in closed form, so sizes and costs are known without building a model. Families are imported on first
use, so importing armodels (say, for armodels.files) does not import torch.

What a study needs to know of a family, in one place: `is_image_family`, `fields_set_by_study`,
`any_order_config` and `takes_class`.
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
    "hierarchical_pixelcnn": ("hierarchical_pixelcnn", "HierarchicalPixelCNN", "HierarchicalPixelCNNConfig"),
    "transformer": ("transformer", "Transformer", "TransformerConfig"),
    "linear_attention": ("linear_attention", "LinearAttention", "LinearAttentionConfig"),
    "ssm": ("ssm", "SSM", "SSMConfig"),
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


def make_config(family: str, **config):
    """The config dataclass of `family` with `config` overriding the defaults (ValueError names unknown fields):
    enough to know the model's size and cost (`num_params()`, `flops_per_token()`) without building it."""
    config_class = family_classes(family)[1]
    known = {f.name for f in fields(config_class)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"{family} has no config field {', '.join(unknown)}; its fields: {', '.join(sorted(known))}")
    return config_class(**config)


def build(family: str, **config):
    """A `family` model built from its config dataclass, with `config` overriding the defaults."""
    return family_classes(family)[0](make_config(family, **config))


def is_image_family(family: str) -> bool:
    """Whether `family` models images (height × width) rather than token sequences (seq_len): single-channel, or
    also RGB where its config has `channels_in` (the PixelCNN families)."""
    return getattr(family_classes(family)[1], "models_images", False)


def takes_class(family: str) -> bool:
    """Whether `family` can be conditioned on a class label: its config has `n_classes` (0: unconditioned)."""
    return "n_classes" in {f.name for f in fields(family_classes(family)[1])}


def fields_set_by_study(family: str) -> tuple[str, ...]:
    """The config fields a study sets from its data, not from the sizes: the vocabulary, and the image's height,
    width and channels (for the families that take colour) or the training window's length; the classes of the
    labels (`n_classes`, for the families that take a class: models.condition); and the pyramid's `factor` (for
    the hierarchical family, which models the pyramid stream)."""
    classes = ("n_classes",) if takes_class(family) else ()
    if not is_image_family(family):
        return "vocab_size", "seq_len", *classes
    names = {f.name for f in fields(family_classes(family)[1])}
    data = [name for name in ("channels_in", "factor") if name in names]
    return "vocab_size", "height", "width", *data, *classes


def models_pyramids(family: str) -> bool:
    """Whether `family` models an image study's pyramid stream (a low-resolution image, then the full one)."""
    return "factor" in {f.name for f in fields(family_classes(family)[1])} and is_image_family(family)


def any_order_config(family: str) -> dict | None:
    """The config fields with which `family` decodes in any ordering ({} when it always does), or None when it
    decodes in raster order only (convolutions, recurrences)."""
    config_class = family_classes(family)[1]
    if "any_order" in {f.name for f in fields(config_class)}:
        return {"any_order": True}
    return {} if getattr(config_class, "any_order", False) else None
