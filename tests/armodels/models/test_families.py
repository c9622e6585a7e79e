"""What is particular to each family: count statistics, smoothing, orderings, states and sizes."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

import armodels
from armodels.models.mixture_of_logistics import discretized_logistic_log_probs
from armodels.sampling import generate
from scaling.flops import transformer_nonembedding_params
from tests.armodels.models.util import all_sequences, decoder_error, make, tiny

# ---- count-based families ----

def test_histogram_is_the_smoothed_frequency_of_each_position():
    model = armodels.build("histogram", vocab_size=3, seq_len=2, pseudocount=0.5)
    model.fit(torch.tensor([[0, 2], [0, 1], [1, 1]]))
    expected = torch.tensor([[2.5, 1.5, 0.5], [0.5, 2.5, 1.5]]) / 4.5
    torch.testing.assert_close(model.conditionals(torch.zeros(1, 2, dtype=torch.long))[0].exp(), expected)
    assert not model.trainable and not list(model.parameters())


def test_ngram_add_k_smoothing():
    model = armodels.build("ngram", vocab_size=3, seq_len=3, order=2, smoothing="add_k", k=0.5)
    model.fit(torch.tensor([[0, 1, 1], [0, 1, 2]]))
    probs = model.conditionals(torch.tensor([[0, 1, 2]]))[0].exp()
    # position 0 follows the start symbol (seen twice, both 0); position 2 follows 1 (seen with 1 and 2)
    torch.testing.assert_close(probs[0], torch.tensor([2.5, 0.5, 0.5]) / 3.5)
    torch.testing.assert_close(probs[2], torch.tensor([0.5, 1.5, 1.5]) / 3.5)


def kneser_ney_reference(data: list[list[int]], vocab_size: int, order: int, discount: float):
    """Interpolated Kneser–Ney, written out with dictionaries: p(w, context) for a context of order-1 tokens."""
    start = vocab_size
    tables = {order: Counter()}
    for seq in data:
        padded = [start] * (order - 1) + seq
        for t in range(len(seq)):
            tables[order][tuple(padded[t:t + order])] += 1
    for m in range(order - 1, 0, -1):  # continuation counts: distinct tokens before each (m)-gram
        tables[m] = Counter(gram[1:] for gram in tables[m + 1])

    def p(w: int, context: tuple[int, ...]) -> float:
        m = len(context) + 1
        lower = p(w, context[1:]) if m > 1 else 1 / vocab_size
        counts = [tables[m][context + (v,)] for v in range(vocab_size)]
        if sum(counts) == 0:
            return lower
        types = sum(c > 0 for c in counts)
        return (max(counts[w] - discount, 0) + discount * types * lower) / sum(counts)

    return p


@pytest.mark.parametrize("order", [1, 2, 3])
def test_ngram_kneser_ney_matches_a_reference(order):
    V, T, D = 4, 7, 0.6
    data = torch.randint(0, V, (12, T), generator=torch.Generator().manual_seed(0))
    model = armodels.build("ngram", vocab_size=V, seq_len=T, order=order, discount=D)
    model.fit(data)
    p = kneser_ney_reference(data.tolist(), V, order, D)
    x = torch.randint(0, V, (3, T), generator=torch.Generator().manual_seed(1))
    probs = model.conditionals(x).exp()
    for b in range(3):
        padded = [V] * (order - 1) + x[b].tolist()
        for t in range(T):
            expected = [p(w, tuple(padded[t:t + order - 1])) for w in range(V)]
            torch.testing.assert_close(probs[b, t], torch.tensor(expected), rtol=0, atol=1e-6)


def test_ngram_counts_survive_a_state_dict_round_trip():
    model = make("ngram")
    fresh = armodels.build("ngram")
    fresh.load_state_dict(model.state_dict())
    x = torch.randint(0, model.vocab_size, (2, model.seq_len))
    assert torch.equal(fresh.conditionals(x), model.conditionals(x))


def test_ngram_refuses_tables_too_large_to_hold():
    with pytest.raises(ValueError, match="dense 3-gram table over 50000 tokens"):
        armodels.build("ngram", vocab_size=50_000)


# ---- MADE ----

def test_made_order_agnostic_training_cycles_through_random_orderings():
    model = make("made", order_agnostic=True, orderings=3, **tiny("made", vocab_size=2))
    x = all_sequences(2, 6)
    seen = []
    for step in range(3):
        seen.append(model.ordering.tolist())
        assert model.log_prob(x).exp().sum().item() == pytest.approx(1.0, abs=1e-5)  # masks follow the ordering
        model.before_train_step(step)
    assert len({tuple(o) for o in seen}) == 3 and model.ordering.tolist() == seen[0]


def test_made_connectivity_agnostic_training_keeps_the_ordering():
    model = make("made", orderings=2)
    masks = model.layers[0].mask.clone()
    model.before_train_step(0)
    assert torch.equal(model.ordering, torch.arange(model.seq_len))
    assert not torch.equal(model.layers[0].mask, masks)


# ---- transformer and linear attention ----

def test_transformer_conditionals_are_forward_on_the_shifted_sequence():
    model = make("transformer", vocab_size=20, seq_len=12)
    x = torch.randint(0, 20, (2, 12))
    logits, _, _ = model(x[:, :-1])
    assert torch.equal(model.conditionals(x)[:, 1:], logits)


@pytest.mark.parametrize("family", ["transformer", "linear_attention"])
def test_cached_decoding_matches_conditionals_over_a_full_context_in_a_random_order(family):
    model = make(family, any_order=True)  # 128 positions
    model.set_ordering(torch.randperm(model.seq_len))
    assert decoder_error(model, torch.randint(0, model.vocab_size, (2, model.seq_len))) <= 1e-5


@pytest.mark.parametrize("family", ["transformer", "linear_attention"])
def test_any_order_adds_only_an_embedding(family):
    plain, ordered = armodels.build(family, n_embd=32), armodels.build(family, n_embd=32, any_order=True)
    c = plain.config
    assert ordered.num_params() == plain.num_params() == transformer_nonembedding_params(c.n_layer, c.n_embd)
    assert ordered.num_params(non_embedding=False) == plain.num_params(non_embedding=False) + c.seq_len * c.n_embd
    with pytest.raises(ValueError, match="raster order only"):
        plain.set_ordering(torch.arange(c.seq_len).flip(0))


def test_linear_attention_decodes_with_a_state_of_constant_size():
    model = make("linear_attention", seq_len=40)
    decoder, token = model.decoder(2), None
    sizes = []
    for _ in range(40):
        token = decoder.step(token).argmax(-1)
        if decoder.cache is not None:
            sizes.append([t.shape for t in decoder.cache[0][:2]])
    assert all(s == sizes[0] for s in sizes)
    # so its cost per token does not grow with the context, unlike softmax attention's
    short, long = ({f: armodels.build(f, seq_len=n).flops_per_token() for f in ("linear_attention", "transformer")}
                   for n in (64, 4096))
    assert short["linear_attention"] == long["linear_attention"] and short["transformer"] < long["transformer"]


def test_linear_attention_continues_prompts_through_its_state_like_the_transformer():
    model = make("linear_attention", vocab_size=20, seq_len=24)
    prompt = torch.randint(0, 20, (2, 3))
    cached = generate(model, prompt, 20, temperature=0)
    assert torch.equal(cached, generate(model, prompt, 20, temperature=0, use_cache=False))


@pytest.mark.parametrize("cell", ["lstm", "gru", "tanh"])
def test_rnn_cells_decode_like_their_conditionals(cell):
    model = make("rnn", cell=cell, vocab_size=3, seq_len=5)
    assert model.log_prob(all_sequences(3, 5)).exp().sum().item() == pytest.approx(1.0, abs=1e-5)
    assert decoder_error(model, all_sequences(3, 5)[::7]) <= 1e-5  # the state carried (h, or (h, c)) is the whole past
    x = model.sample(3, seed=0)
    assert torch.equal(model.sample(3, seed=0), x)


def test_wavenet_sees_no_further_than_its_receptive_field():
    model = make("wavenet", seq_len=24, dilations=(1, 2, 4))  # receptive field 8
    x = torch.randint(0, model.vocab_size, (2, 24))
    y = x.clone()
    y[:, 3] = (y[:, 3] + 1) % model.vocab_size
    changed = (model.conditionals(y) - model.conditionals(x)).abs().amax(dim=(0, 2)) > 0
    assert changed.nonzero().flatten().tolist() == list(range(4, 4 + model.config.receptive_field))


# ---- discretised logistic mixture ----

def test_discretized_logistic_is_the_logistic_mass_of_each_bin():
    mean, log_scale, levels = 0.1, -1.0, 4
    log_probs = discretized_logistic_log_probs(torch.zeros(1), torch.tensor([mean]), torch.tensor([log_scale]), levels)
    edges = torch.tensor([-1 / 3 * 2, 0.0, 2 / 3], dtype=torch.float64)  # between centres -1, -1/3, 1/3, 1
    cdf = torch.sigmoid((edges - mean) / torch.exp(torch.tensor(log_scale, dtype=torch.float64)))
    expected = torch.diff(torch.cat([torch.zeros(1), cdf, torch.ones(1)]).double())
    torch.testing.assert_close(log_probs.exp().double(), expected, rtol=0, atol=1e-6)


def test_mixture_of_logistics_trains_with_finite_gradients():
    model = make("mixture_of_logistics", height=4, width=4)
    model.train()
    loss = model.loss(torch.randint(0, 256, (2, 16)))
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters())


# ---- sizes ----

def test_pixelcnn_counts_only_unmasked_weights_and_flops_of_the_dense_kernels():
    model = armodels.build("pixelcnn", channels=2, n_layers=1, first_kernel=3, kernel=3)
    # mask A 3×3 keeps 4 taps, mask B 5; then two 1×1 convolutions; biases of 2 each
    assert model.num_params() == (2 * 1 * 4 + 2) + (2 * 2 * 5 + 2) + (2 * 2 + 2) + (2 * 2 + 2)
    assert model.flops_per_token() == 3 * 2 * (2 * 1 * 9 + 2 * 2 * 9 + 2 * 2 + 2 * 2)


# ---- MADE ensembles over masks at evaluation ----

def made_mask_log_probs(model, x: torch.Tensor) -> list[torch.Tensor]:
    """log p_m(x) of each mask of the model's training cycle, stepping through it as training does."""
    log_probs = []
    for step in range(model.config.orderings):
        log_probs.append(model.log_prob(x))
        model.before_train_step(step)  # to mask step + 1
    return log_probs


def test_made_ensemble_of_one_mask_is_its_log_prob():
    model = make("made", order_agnostic=True, orderings=4, **tiny("made", vocab_size=2))
    x = all_sequences(2, 6)
    torch.testing.assert_close(model.ensemble_log_prob(x, 1), model.log_prob(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("order_agnostic", [True, False])
def test_made_ensemble_is_the_normalised_mean_probability_of_its_masks(order_agnostic):
    model = make("made", order_agnostic=order_agnostic, orderings=3, **tiny("made", vocab_size=2))
    x = all_sequences(2, 6)
    ordering, log_prob = model.ordering.clone(), model.log_prob(x)
    p = [lp.exp() for lp in made_mask_log_probs(model, x)]
    assert not torch.allclose(p[0], p[1])  # the masks differ, so the ensemble is more than one model
    for k, mean in [(2, (p[0] + p[1]) / 2), (3, (p[0] + p[1] + p[2]) / 3),
                    (5, (2 * p[0] + 2 * p[1] + p[2]) / 5)]:  # beyond 3 the cycle repeats: masks 0, 1, 2, 0, 1
        ensemble = model.ensemble_log_prob(x, k).exp()
        torch.testing.assert_close(ensemble, mean, rtol=1e-5, atol=1e-7)
        assert ensemble.sum().item() == pytest.approx(1.0, abs=1e-5)
    # the model's own mask and ordering are back
    assert torch.equal(model.ordering, ordering) and torch.equal(model.log_prob(x), log_prob)
    with pytest.raises(ValueError, match="ensemble"):
        model.ensemble_log_prob(x, 0)


def bars(n: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Binary images [n, height·width] of one random horizontal or vertical bar, with a pixel in 20 flipped: data
    whose pixels depend strongly on one another."""
    g = torch.Generator().manual_seed(seed)
    images = torch.zeros(n, height, width, dtype=torch.long)
    for i in range(n):
        if torch.rand(1, generator=g) < 0.5:
            images[i, torch.randint(0, height, (1,), generator=g)] = 1
        else:
            images[i, :, torch.randint(0, width, (1,), generator=g)] = 1
    noise = torch.rand(n, height, width, generator=g) < 0.05
    return (images ^ noise).flatten(1)


def test_made_order_agnostic_ensemble_is_no_worse_than_its_masks_after_training():
    from armodels.data import TokenWindows
    from armodels.evaluate import evaluate_loss

    data, held_out = bars(256, 3, 4), bars(64, 3, 4, seed=1)
    model = make("made", height=3, width=4, hidden=(64, 64), order_agnostic=True, orderings=4).train()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(120):
        loss = model.loss(data[torch.randint(0, len(data), (32,), generator=torch.Generator().manual_seed(step))])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        model.before_train_step(step)
    model.eval()
    with torch.no_grad():
        singles = torch.stack([-lp for lp in made_mask_log_probs(model, held_out)])  # [masks, B]
        ensemble = -model.ensemble_log_prob(held_out, 4)
    assert singles.mean().item() < 12 * 0.6  # it learned: well below the 1 bit (0.69 nats) a pixel of chance
    assert (ensemble <= singles.mean(0) + 1e-5).all()  # Jensen, sequence by sequence
    assert ensemble.mean().item() <= singles.mean().item()
    # evaluate_loss scores the same ensemble, and the single model by default
    windows = TokenWindows(held_out.flatten().numpy(), 12)
    assert evaluate_loss(model, windows, ensemble=4).nats_per_token == pytest.approx(ensemble.mean().item() / 12)
    assert evaluate_loss(model, windows).nats_per_token == pytest.approx(singles[0].mean().item() / 12)
    with pytest.raises(ValueError, match="ensemble: the transformer family"):
        evaluate_loss(make("transformer", vocab_size=2, seq_len=12), windows, ensemble=2)
