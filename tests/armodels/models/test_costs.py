"""Sizes and costs come from the config alone, so planning builds no model: here they are checked against models
actually built, for every family and several configs (the defaults, other sizes, each option that changes them)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import armodels
from armodels.models.layers import MaskedConv2d, MaskedLinear
from armodels.train import model_costs

CONFIGS = {
    "transformer": [{}, {"n_layer": 3, "n_embd": 48, "n_head": 4, "vocab_size": 300, "seq_len": 17},
                    {"n_layer": 1, "n_embd": 8, "n_head": 2, "any_order": True},
                    {"attention": "strided", "stride": 4, "seq_len": 20}, {"attention": "fixed", "stride": 3}],
    "linear_attention": [{}, {"n_layer": 3, "n_embd": 48, "n_head": 4, "vocab_size": 300, "seq_len": 17},
                         {"n_layer": 1, "n_embd": 8, "n_head": 2, "any_order": True}],
    "ssm": [{}, {"n_layer": 3, "n_embd": 24, "d_state": 5, "vocab_size": 50, "seq_len": 17},
            {"n_layer": 1, "n_embd": 4, "d_state": 1, "vocab_size": 3, "seq_len": 4}],
    "rnn": [{}, {"cell": "gru", "n_layer": 3, "n_embd": 7, "hidden": 13, "vocab_size": 50},
            {"n_layer": 1, "n_embd": 5, "hidden": 9, "vocab_size": 3, "seq_len": 4},
            {"cell": "tanh", "n_layer": 2, "n_embd": 6, "hidden": 11, "vocab_size": 9}],
    "wavenet": [{}, {"channels": 12, "skip_channels": 7, "kernel_size": 3, "dilations": [1, 3, 9], "vocab_size": 40},
                {"kernel_size": 1, "dilations": [2], "channels": 3, "skip_channels": 5}],
    "made": [{}, {"height": 3, "width": 5, "vocab_size": 4, "hidden": [17, 9, 33], "seed": 3},
             {"hidden": [64], "orderings": 3, "order_agnostic": True, "seed": 5},
             {"height": 6, "width": 6, "vocab_size": 3, "hidden": [50, 60], "order_agnostic": True, "seed": 11},
             {"height": 1, "width": 1, "hidden": [4]}, {"height": 1, "width": 2, "vocab_size": 3, "hidden": [5, 6]}],
    "pixelcnn": [{}, {"channels": 5, "n_layers": 0, "first_kernel": 3, "kernel": 5, "vocab_size": 7},
                 {"channels": 6, "n_layers": 3, "first_kernel": 7, "kernel": 1, "height": 5, "width": 3},
                 {"channels": 2, "first_kernel": 1},
                 {"channels_in": 3}, {"channels_in": 3, "channels": 7, "n_layers": 2, "first_kernel": 3, "kernel": 5,
                                      "vocab_size": 256, "height": 3, "width": 5}],
    "hierarchical_pixelcnn": [{}, {"height": 6, "width": 4, "vocab_size": 256, "channels": 5, "n_layers": 2,
                                   "kernel": 3}, {"height": 9, "width": 6, "factor": 3, "n_layers": 1}],
    "gated_pixelcnn": [{}, {"channels": 5, "n_layers": 1, "kernel": 3, "vocab_size": 256},
                       {"channels": 3, "n_layers": 3, "kernel": 1},
                       {"channels": 4, "n_layers": 2, "kernel": 7, "height": 3, "width": 9},
                       {"channels_in": 3},
                       {"channels_in": 3, "channels": 5, "n_layers": 3, "kernel": 3, "vocab_size": 16}],
    "mixture_of_logistics": [{}, {"channels": 5, "n_layers": 2, "n_mixtures": 3, "vocab_size": 16},
                             {"channels": 3, "n_layers": 0, "n_mixtures": 1, "first_kernel": 3},
                             {"channels_in": 3}, {"channels_in": 3, "channels": 4, "n_layers": 1, "n_mixtures": 2}],
    "histogram": [{}, {"vocab_size": 7, "seq_len": 3, "pseudocount": 0.1}],
    "ngram": [{}, {"vocab_size": 5, "order": 2, "smoothing": "add_k"}, {"vocab_size": 3, "order": 4, "seq_len": 5}],
}
for family in armodels.families():  # class-conditioned: the class tables are embeddings (in the total count only)
    if armodels.takes_class(family):
        CONFIGS[family] = [*CONFIGS[family], {"n_classes": 7}, {**CONFIGS[family][1], "n_classes": 2}]
CASES = [(family, config) for family, configs in CONFIGS.items() for config in configs]


def test_every_family_is_checked():
    assert set(CONFIGS) == set(armodels.families())


def built_params(model, non_embedding: bool = True) -> int:
    """A built model's parameters: its tensors' entries, less the weights a mask holds at zero, less (for the
    non-embedding count) the embedding tables. A count model's parameters are its count table's entries."""
    if not model.trainable:
        return model.counts.numel()
    n = sum(p.numel() for p in model.parameters())  # a tied weight (the transformer's head) once
    n -= sum(int((m.mask == 0).sum()) for m in model.modules() if isinstance(m, (MaskedLinear, MaskedConv2d)))
    if non_embedding:
        n -= sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Embedding))
    return n


def built_weight_flops(model) -> int:
    """Forward FLOPs of one application of every weight matrix and kernel of a built model, masked weights
    included: 2 per weight."""
    n = 0
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            n += m.weight.numel()
        elif isinstance(m, nn.RNNBase):
            n += sum(p.numel() for name, p in m.named_parameters() if name.startswith("weight"))
    return 2 * n


def built_flops(family: str, model) -> float:
    """Training FLOPs per token (3 × forward) from a built model's weights, plus what is not a weight."""
    c, weights = model.config, built_weight_flops(model)
    if family == "transformer":  # attention over the T × T square: 4·d·T per layer
        return 3.0 * (weights + c.n_layer * 4 * c.n_embd * c.seq_len)
    if family == "linear_attention":  # the recurrent state's update and read-out instead
        return 3.0 * (weights + c.n_layer * (4 * c.n_embd * (c.n_embd // c.n_head) + 4 * c.n_embd))
    if family == "ssm":  # each channel's state update and read-out, and the skip D
        return 3.0 * (weights + c.n_layer * (16 * c.n_embd * c.d_state + 2 * c.n_embd))
    if family == "made":  # one pass gives all T conditionals
        return 3.0 * weights / c.seq_len
    if family == "mixture_of_logistics":  # once per pixel of channels_in tokens, and the bin masses
        return 3.0 * (weights / c.channels_in + 10 * c.n_mixtures * c.vocab_size)
    if family == "hierarchical_pixelcnn":  # each stage once per pixel of its grid, the conditioning per low pixel
        low = c.stage(low=True).seq_len
        high = built_weight_flops(model.high)
        condition = sum(built_weight_flops(m) for m in model.condition)
        return 3.0 * (built_weight_flops(model.low) * low + high * c.height * c.width + condition * low) / c.seq_len
    if family in ("pixelcnn", "gated_pixelcnn"):  # once per pixel of channels_in tokens
        return 3.0 * (weights / c.channels_in)
    if family == "histogram":
        return 3.0 * c.vocab_size
    if family == "ngram":
        return float((5 * c.order if c.smoothing == "kneser_ney" else 3) * c.vocab_size)
    return 3.0 * weights  # recurrent and convolutional families apply each weight once per token


@pytest.mark.parametrize("family, config", CASES, ids=[f"{f}-{i}" for f, cs in CONFIGS.items() for i in range(len(cs))])
def test_config_counts_equal_the_built_model(family, config):
    cfg = armodels.make_config(family, **config)
    model = armodels.build(family, **config)
    assert cfg.num_params() == built_params(model) and type(cfg.num_params()) is int
    assert cfg.num_params(non_embedding=False) == built_params(model, non_embedding=False)
    assert cfg.flops_per_token() == built_flops(family, model) and type(cfg.flops_per_token()) is float
    # the model gives the config's counts, and so does the planner's model_costs
    assert (model.num_params(), model.num_params(non_embedding=False), model.flops_per_token()) \
        == (cfg.num_params(), cfg.num_params(non_embedding=False), cfg.flops_per_token())
    costs = model_costs(family, config)
    assert (costs.params_nonembedding, costs.params, costs.flops_per_token) \
        == (cfg.num_params(), cfg.num_params(non_embedding=False), cfg.flops_per_token())


def test_made_counts_do_not_depend_on_the_ordering():
    """Every step has V inputs and V outputs, so another ordering's masks keep as many weights."""
    config = {"height": 3, "width": 4, "vocab_size": 3, "hidden": [20, 30], "seed": 2}
    model = armodels.build("made", **config)
    model.set_ordering(torch.randperm(12, generator=torch.Generator().manual_seed(0)))
    assert built_params(model) == armodels.make_config("made", **config).num_params()


def test_model_costs_build_no_model(monkeypatch):
    """A 64-layer transformer 16,384 wide (206G parameters) is planned without allocating its weights."""
    def no_building(*args, **kwargs):
        raise AssertionError("model_costs built a model")

    monkeypatch.setattr(armodels, "build", no_building)
    monkeypatch.setattr(nn.Module, "__init__", no_building)
    costs = model_costs("transformer", {"n_layer": 64, "n_embd": 16384, "n_head": 128, "vocab_size": 50257,
                                        "seq_len": 2048})
    assert costs.params_nonembedding == 12 * 64 * 16384**2 + (2 * 64 + 1) * 2 * 16384
    assert costs.params == costs.params_nonembedding + (50257 + 2048) * 16384
