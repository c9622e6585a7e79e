"""Class-conditioned models (`n_classes` > 0), over every family that takes a class: for a given class each is still
causal and normalised, different classes give different distributions, and the decoders (KV cache, linear
attention's state, recomputation) agree with the full forward."""

from __future__ import annotations

import pytest
import torch

import armodels
from armodels.sampling import beam_search, class_decoder, sample
from tests.armodels.models.util import ORDERINGS, all_sequences, make_ordered, small, tiny

CONDITIONED = [f for f in armodels.families() if armodels.takes_class(f)]
K = 3  # classes


def test_the_families_that_take_a_class():
    assert {"transformer", "pixelcnn", "gated_pixelcnn", "made"} <= set(CONDITIONED)
    assert not {"rnn", "ssm", "wavenet", "ngram", "histogram"} & set(CONDITIONED)


def random_classes(model, n: int, seed: int) -> torch.Tensor:
    """Class embeddings/biases drawn at a visible scale (some start near 0), and `n` random classes."""
    torch.manual_seed(seed)
    for name, p in model.named_parameters():
        if any(part in name for part in ("wce", "class_bias", "class_embedding", "class_logits")):
            torch.nn.init.normal_(p, std=1.0)
    return torch.randint(0, K, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("ordering", ORDERINGS)
@pytest.mark.parametrize("family", CONDITIONED)
def test_causal_for_a_given_class(family, ordering):
    model = make_ordered(family, ordering, n_classes=K, **small(family))
    T, V = model.seq_len, model.vocab_size
    classes = random_classes(model, 2, 1)
    x = torch.randint(0, V, (2, T), generator=torch.Generator().manual_seed(2))
    logits = model.logits(x, classes)
    step = model.ordering.argsort()
    for j in {int(model.ordering[0]), int(model.ordering[-1]), 5, 9}:
        y = x.clone()
        y[:, j] = (y[:, j] + 1) % V
        not_after = step <= step[j]
        torch.testing.assert_close(model.logits(y, classes)[:, not_after], logits[:, not_after], rtol=0, atol=1e-5)


@pytest.mark.parametrize("ordering", ORDERINGS)
@pytest.mark.parametrize("family", CONDITIONED)
def test_each_class_is_a_normalised_distribution_of_its_own(family, ordering):
    model = make_ordered(family, ordering, n_classes=K, **tiny(family, vocab_size=2))
    random_classes(model, 1, 3)
    x = all_sequences(model.vocab_size, model.seq_len)
    probs = [model.log_prob(x, torch.full((len(x),), c)).exp() for c in range(K)]
    assert [p.sum().item() for p in probs] == pytest.approx([1.0] * K, abs=1e-4)
    # the first position too: a class changes what is likely from the start
    assert all((probs[0] - p).abs().max() > 1e-3 for p in probs[1:])
    first = model.ordering[0]
    assert not torch.allclose(*(model.logits(x[:1], torch.tensor([c]))[0, first] for c in (0, 1)))


@pytest.mark.parametrize("ordering", ORDERINGS)
@pytest.mark.parametrize("family", CONDITIONED)
def test_the_decoder_agrees_with_the_full_forward_given_the_class(family, ordering):
    model = make_ordered(family, ordering, n_classes=K, **small(family))
    classes = random_classes(model, 3, 4)
    x = torch.randint(0, model.vocab_size, (3, model.seq_len), generator=torch.Generator().manual_seed(5))
    full = model.logits(x, classes)
    decoder, token = class_decoder(model, 3, classes), None
    with torch.no_grad():
        for position in model.ordering.tolist():
            torch.testing.assert_close(decoder.step(token), full[:, position], rtol=0, atol=1e-5)
            token = x[:, position]
    # drawn with the cache or by recomputation: the same images of the same classes
    cached = sample(model, 3, seed=6, classes=classes)
    assert torch.equal(cached, sample(model, 3, seed=6, classes=classes, use_cache=False))
    assert torch.equal(cached, model.sample(3, seed=6, classes=classes))


@pytest.mark.parametrize("family", CONDITIONED)
def test_beam_search_of_a_class_finds_that_class_most_likely_sequence(family):
    model = make_ordered(family, "raster", n_classes=K, **tiny(family, vocab_size=2))
    random_classes(model, 1, 7)
    x = all_sequences(2, model.seq_len)
    for c in range(K):
        log_probs = model.log_prob(x, torch.full((len(x),), c))
        sequences, scores = beam_search(model, 2 ** model.seq_len, cls=c)
        assert torch.equal(sequences[0], x[log_probs.argmax()])
        assert scores[0].item() == pytest.approx(log_probs.max().item(), abs=1e-4)


@pytest.mark.parametrize("family", ["pixelcnn", "gated_pixelcnn", "made", "mixture_of_logistics"])
def test_a_conditioned_model_starts_as_its_unconditioned_twin(family):
    """The class biases start at zero: what a conditioned run gains over its twin (same seed), it learned."""
    conditioned = make_ordered(family, "raster", n_classes=K, **small(family))
    plain = make_ordered(family, "raster", **small(family))
    x = torch.randint(0, conditioned.vocab_size, (3, conditioned.seq_len), generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(conditioned.logits(x, torch.tensor([0, 1, 2])), plain.logits(x), rtol=0, atol=0)


@pytest.mark.parametrize("family", CONDITIONED)
def test_classes_must_fit_the_model(family):
    conditioned = make_ordered(family, "raster", n_classes=K, **small(family))
    plain = make_ordered(family, "raster", **small(family))
    x = torch.zeros(2, conditioned.seq_len, dtype=torch.long)
    with pytest.raises(ValueError, match="conditioned on 3 classes: give one class per sequence"):
        conditioned.loss(x)
    with pytest.raises(ValueError, match="classes must be from 0 to 2, got \\[1, 3\\]"):
        conditioned.log_prob(x, torch.tensor([1, 3]))
    with pytest.raises(ValueError, match="not class-conditioned"):
        plain.loss(x, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="not class-conditioned"):
        plain.sample(2, classes=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="n_classes: must be a whole number from 0"):
        armodels.make_config(family, n_classes=-1)
