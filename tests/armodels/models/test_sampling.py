"""The shared sampler over every family: valid tokens, decoding in the model's ordering, fast decoders that agree
with `conditionals`, and beam search."""

from __future__ import annotations

import pytest
import torch

import armodels
from armodels.sampling import beam_search, sample
from tests.armodels.models.util import (FAMILIES, ORDERINGS, all_sequences, decoder_error, make, make_ordered, small,
                               tiny)


@pytest.mark.parametrize("family", FAMILIES)
def test_samples_are_valid_tokens_and_reproducible(family):
    model = make(family, **small(family))
    for options in ({}, {"temperature": 0.7, "top_k": 2}, {"top_p": 0.9}):
        x = model.sample(4, seed=0, **options)
        assert x.shape == (4, model.seq_len) and x.dtype == torch.long
        assert 0 <= x.min() and x.max() < model.vocab_size
        assert torch.equal(x, model.sample(4, seed=0, **options))


@pytest.mark.parametrize("ordering", ORDERINGS)
@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_decoding_fills_positions_in_the_model_ordering(family, ordering):
    """Decoded in the ordering, every greedy token is the argmax of its conditional given the final sequence;
    decoding in any other order would have seen a different context."""
    model = make_ordered(family, ordering, **small(family))
    prompt = torch.randint(0, model.vocab_size, (3, 1), generator=torch.Generator().manual_seed(4))
    x = model.sample(3, temperature=0, prompt=prompt)
    assert torch.equal(x[:, model.ordering[0]], prompt[:, 0])
    rest = model.ordering[1:]
    assert torch.equal(model.conditionals(x).argmax(-1)[:, rest], x[:, rest])


@pytest.mark.parametrize("ordering", ORDERINGS)
@pytest.mark.parametrize("family", FAMILIES)
def test_decoder_gives_the_logits_of_conditionals(family, ordering):
    """KV cache, linear-attention state, RNN state or recomputation: teacher-forced step logits match (≤ 1e-5)."""
    model = make_ordered(family, ordering, **small(family))
    x = torch.randint(0, model.vocab_size, (2, model.seq_len), generator=torch.Generator().manual_seed(5))
    assert decoder_error(model, x) <= 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_and_recomputed_greedy_decoding_agree(family):
    model = make(family, **small(family))
    assert torch.equal(sample(model, 2, temperature=0), sample(model, 2, temperature=0, use_cache=False))


@pytest.mark.parametrize("family", FAMILIES)
def test_beam_search_finds_the_most_likely_sequence(family):
    """With V^(T-1) beams no prefix is ever dropped, so the best beam is the best of all V^T sequences."""
    model = make(family, **tiny(family))
    V, T = model.vocab_size, model.seq_len
    best = model.log_prob(all_sequences(V, T)).max().item()
    sequences, log_probs = beam_search(model, V ** (T - 1))
    assert log_probs[0].item() == pytest.approx(best, abs=1e-4)
    assert (log_probs[:-1] >= log_probs[1:]).all()
    torch.testing.assert_close(model.log_prob(sequences), log_probs, rtol=0, atol=1e-4)


def test_beam_search_beats_greedy_where_the_likely_first_token_leads_nowhere():
    """Sequences 00 and 01 (60% together) share their mass; 11 alone has 40%: greedy picks 0 first, beams find 11."""
    model = armodels.build("ngram", vocab_size=2, seq_len=2, order=2, smoothing="add_k", k=0.01)
    model.fit(torch.tensor([[0, 0]] * 6 + [[0, 1]] * 6 + [[1, 1]] * 8))
    assert model.sample(1, temperature=0)[0, 0] == 0
    sequences, log_probs = beam_search(model, 2)
    assert sequences[0].tolist() == [1, 1] and log_probs[0].exp().item() == pytest.approx(0.4, abs=0.01)
