"""Continuing a sequence past the model's window (armodels.sampling.continue_sequences, beam_continue), as
`arscale sample` does for text, checked against the logits computed the slow, obvious way."""

import pytest
import torch

import armodels
from armodels.sampling import beam_continue, continue_sequences

SEQ_LEN, VOCAB = 8, 11


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Models this small run fastest on one thread (and many times slower on a busy machine with more)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=["transformer", "rnn"])
def model(request):
    torch.manual_seed(0)
    config = {"transformer": {"n_layer": 2, "n_embd": 16, "n_head": 2},
              "rnn": {"n_layer": 1, "hidden": 16}}[request.param]
    return armodels.build(request.param, vocab_size=VOCAB, seq_len=SEQ_LEN, **config).eval()


def next_logits(model, tokens: list[int]) -> torch.Tensor:
    """The next token's logits from `conditionals` over the last seq_len - 1 tokens (all of them while they fit)."""
    context = tokens[-(SEQ_LEN - 1):]
    x = torch.tensor([context + [0] * (SEQ_LEN - len(context))])
    return model.conditionals(x)[0, len(context)]


@torch.no_grad()
def test_greedy_continuation_past_the_window_matches_the_slow_way(model):
    context = [3, 1, 4]
    new = continue_sequences(model, torch.tensor([context]), 3 * SEQ_LEN, temperature=0)[0].tolist()
    tokens = list(context)
    for _ in range(3 * SEQ_LEN):
        tokens.append(int(next_logits(model, tokens).argmax()))
    assert new == tokens[len(context):]


@torch.no_grad()
def test_sampling_is_seeded_and_stops_at_the_stop_token(model):
    context = torch.tensor([[2, 7]] * 4)

    def draw(seed, stop=None):
        return continue_sequences(model, context, 30, temperature=2.0, generator=torch.Generator().manual_seed(seed),
                                  stop_token=stop)

    assert torch.equal(draw(1), draw(1)) and not torch.equal(draw(1), draw(2))
    assert draw(1).shape == (4, 30) and len(set(map(tuple, draw(1).tolist()))) > 1  # rows differ
    stopped = draw(1, stop=5)
    assert (stopped == 5).any(dim=1).all() or stopped.size(1) == 30  # every row stopped, or it ran to the end
    assert torch.equal(stopped, draw(1)[:, :stopped.size(1)])  # the same draws, cut once all rows stopped


@torch.no_grad()
def test_beam_search_scores_are_the_log_probabilities_of_its_continuations(model):
    context = [6, 0, 9, 9, 2]
    drawn, scores = beam_continue(model, torch.tensor(context), SEQ_LEN + 3, 4)
    assert drawn.shape == (4, SEQ_LEN + 3) and (scores[:-1] >= scores[1:]).all()
    assert len(set(map(tuple, drawn.tolist()))) == 4
    for row, score in zip(drawn.tolist(), scores):
        tokens, logp = list(context), 0.0
        for t in row:
            logp += float(torch.log_softmax(next_logits(model, tokens), -1)[t])
            tokens.append(t)
        assert logp == pytest.approx(float(score), abs=1e-4)
    greedy = continue_sequences(model, torch.tensor([context]), SEQ_LEN + 3, temperature=0)
    assert torch.equal(beam_continue(model, torch.tensor(context), SEQ_LEN + 3, 1)[0], greedy)


@torch.no_grad()
def test_a_finished_beam_keeps_its_score(model):
    context = torch.tensor([1, 2])
    stop = int(torch.log_softmax(next_logits(model, [1, 2]), -1).argmax())  # the most likely first token ends it
    drawn, scores = beam_continue(model, context, 6, 3, stop_token=stop)
    first = torch.log_softmax(next_logits(model, [1, 2]), -1)[stop]
    ended = [i for i, row in enumerate(drawn.tolist()) if row[0] == stop]
    assert ended and (drawn[ended[0]] == stop).all()
    assert float(scores[ended[0]]) == pytest.approx(float(first), abs=1e-5)
