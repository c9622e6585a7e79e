"""The family interface, checked over every registered family: a new family is tested here automatically."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import armodels
from tests.armodels.models.util import FAMILIES, ORDERINGS, all_sequences, make, make_ordered, tiny


@pytest.mark.parametrize("family", FAMILIES)
def test_builds_from_defaults_with_the_interface(family):
    model = armodels.build(family)
    T, V = model.seq_len, model.vocab_size
    assert isinstance(model, torch.nn.Module) and model.family == family
    assert dataclasses.is_dataclass(model.config) and model.config.__dataclass_params__.frozen
    assert torch.equal(model.ordering, torch.arange(T)) and "ordering" in dict(model.named_buffers())
    x = torch.randint(0, V, (3, T))
    assert model.conditionals(x).shape == (3, T, V)
    log_prob = model.log_prob(x)
    assert log_prob.shape == (3,) and torch.isfinite(log_prob).all() and (log_prob < 0).all()
    assert model.loss(x).item() == pytest.approx(-log_prob.mean().item() / T, rel=1e-5)
    assert isinstance(model.num_params(), int) and 0 < model.num_params() <= model.num_params(non_embedding=False)
    assert model.flops_per_token() > 0


@pytest.mark.parametrize("ordering", ORDERINGS)
@pytest.mark.parametrize("family", FAMILIES)
def test_causal_by_perturbation(family, ordering):
    """Changing the token at j leaves the logits of j and of every position before j in the ordering unchanged."""
    model = make_ordered(family, ordering)
    T, V = model.seq_len, model.vocab_size
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, V, (2, T), generator=g)
    logits = model.conditionals(x)
    step = model.ordering.argsort()
    positions = {int(model.ordering[0]), int(model.ordering[-1]), *torch.randint(0, T, (4,), generator=g).tolist()}
    for j in positions:
        y = x.clone()
        y[:, j] = (y[:, j] + 1) % V
        not_after = step <= step[j]
        torch.testing.assert_close(model.conditionals(y)[:, not_after], logits[:, not_after], rtol=0, atol=1e-5,
                                   msg=f"changing position {j} (step {int(step[j])}) changed earlier logits")


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "histogram"])  # the histogram has no context
def test_the_next_position_depends_on_the_previous_one(family):
    model = make(family)
    x = torch.randint(0, model.vocab_size, (4, model.seq_len), generator=torch.Generator().manual_seed(3))
    y = x.clone()
    y[:, 0] = (y[:, 0] + 1) % model.vocab_size
    assert not torch.allclose(model.conditionals(x)[:, 1], model.conditionals(y)[:, 1])


@pytest.mark.parametrize("ordering", ORDERINGS)
@pytest.mark.parametrize("family", FAMILIES)
def test_probabilities_of_all_sequences_sum_to_one(family, ordering):
    model = make_ordered(family, ordering, **tiny(family))
    x = all_sequences(model.vocab_size, model.seq_len)
    assert model.log_prob(x).exp().sum().item() == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_rejects_non_raster_orderings_unless_supported(family):
    model = armodels.build(family)
    reversed_order = torch.arange(model.seq_len).flip(0)
    with pytest.raises(ValueError, match="permutation"):
        model.set_ordering(torch.zeros(model.seq_len, dtype=torch.long))
    if model.any_order:
        model.set_ordering(reversed_order)
        assert torch.equal(model.ordering, reversed_order)
    else:
        with pytest.raises(ValueError, match="raster order only"):
            model.set_ordering(reversed_order)


def test_build_names_unknown_families_and_fields():
    with pytest.raises(ValueError, match="unknown model family 'lstm'.*transformer"):
        armodels.build("lstm")
    with pytest.raises(ValueError, match="made has no config field n_head; its fields: .*height"):
        armodels.build("made", n_head=4)


def test_configs_read_back_from_json_stay_hashable():
    model = armodels.build("made", hidden=[16, 16])
    assert model.config.hidden == (16, 16) and hash(model.config)


@pytest.mark.parametrize("family", FAMILIES)
def test_family_properties_agree_with_the_models(family):
    """What a study asks of a family without building one: image or sequence, the fields it sets, any ordering."""
    set_by_study = armodels.fields_set_by_study(family)
    model = armodels.build(family)
    assert armodels.is_image_family(family) == ("height" in set_by_study) == hasattr(model.config, "height")
    assert set(set_by_study) <= {f.name for f in dataclasses.fields(model.config)}
    any_order = armodels.any_order_config(family)
    assert model.any_order == (any_order == {})
    if any_order is not None:
        assert armodels.build(family, **any_order).any_order
