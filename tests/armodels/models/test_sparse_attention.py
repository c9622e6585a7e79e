"""The transformer's Sparse Transformer attention patterns (Child et al. 2019): the masks, the model under them, its
cached decoding and the configs it refuses."""

from __future__ import annotations

import pytest
import torch

import armodels
from armodels.models.transformer import attention_mask
from armodels.sampling import generate
from tests.armodels.models.util import all_sequences, chunked_forward, decoder_error, make

SIZES = [(1, 1), (7, 1), (10, 3), (16, 4), (13, 5), (9, 20), (64, 8)]  # (seq_len, stride)


def brute_force_keys(kind: str, i: int, stride: int) -> set[int]:
    """The keys query i attends to, listed from the paper's description rather than from a formula over (i, j)."""
    if kind == "strided":  # the previous `stride` positions, and every stride-th one before the query
        return {j for j in range(i - stride + 1, i + 1) if j >= 0} | set(range(i, -1, -stride))
    # fixed: the query's own block so far, and the summary (last) position of every earlier block
    block = i // stride
    return set(range(block * stride, i + 1)) | {b * stride + stride - 1 for b in range(block)}


@pytest.mark.parametrize("kind", ["strided", "fixed"])
@pytest.mark.parametrize("seq_len, stride", SIZES)
def test_masks_have_exactly_the_pattern(kind, seq_len, stride):
    mask = attention_mask(kind, seq_len, stride)
    assert mask.shape == (seq_len, seq_len) and mask.dtype == torch.bool
    for i in range(seq_len):
        assert set(mask[i].nonzero().flatten().tolist()) == brute_force_keys(kind, i, stride), f"row {i}"
    # causal, and every query sees itself (so no row of the softmax is empty)
    assert not mask.triu(1).any() and mask.diagonal().all()


@pytest.mark.parametrize("seq_len, stride", SIZES)
def test_dense_is_the_causal_mask(seq_len, stride):
    assert torch.equal(attention_mask("dense", seq_len, stride), torch.ones(seq_len, seq_len).tril().bool())


@pytest.mark.parametrize("seq_len, stride", SIZES)
def test_mask_density_is_what_the_pattern_promises(seq_len, stride):
    i = torch.arange(seq_len)
    strided, fixed = (attention_mask(kind, seq_len, stride).sum(1) for kind in ("strided", "fixed"))
    # strided: the window of up to `stride` keys, then one key per stride further back
    assert torch.equal(strided, i.clamp(max=stride - 1) + 1 + i // stride)
    # fixed: the block so far, then one summary per earlier block
    assert torch.equal(fixed, i % stride + 1 + i // stride)
    assert (strided <= stride + i / stride).all() and (fixed <= stride + i / stride).all()
    assert attention_mask("dense", seq_len, stride).sum() == seq_len * (seq_len + 1) // 2


@pytest.mark.parametrize("kind", ["strided", "fixed"])
def test_at_stride_root_t_the_pattern_keeps_order_t_root_t_pairs(kind):
    """Σ_i (stride + i/stride) ≤ 1.5·T·√T at stride √T, against dense causal attention's T(T+1)/2 pairs."""
    T, stride = 1024, 32
    kept, dense = int(attention_mask(kind, T, stride).sum()), T * (T + 1) // 2
    assert kept <= 1.5 * T * stride and 10 * kept < dense


@pytest.mark.parametrize("kind", ["strided", "fixed"])
def test_one_layer_sees_exactly_the_masked_positions(kind):
    """With one layer, the logits of step s (whose input is the token at s - 1) move with the tokens the pattern's
    row s - 1 holds, and with no other."""
    model = make("transformer", vocab_size=5, seq_len=20, n_layer=1, attention=kind, stride=4)
    mask = attention_mask(kind, 20, 4)
    x = torch.randint(0, 5, (2, 20), generator=torch.Generator().manual_seed(0))
    logits = model.conditionals(x)
    for j in range(19):
        y = x.clone()
        y[:, j] = (y[:, j] + 1) % 5
        moved = (model.conditionals(y) - logits).abs().amax(dim=(0, 2)) > 1e-6
        expected = torch.cat([torch.zeros(1, dtype=torch.bool), mask[:-1, j]])  # step 0 sees no token
        assert torch.equal(moved, expected), f"changing position {j}"


@pytest.mark.parametrize("kind", ["strided", "fixed"])
def test_cached_decoding_matches_conditionals(kind):
    model = make("transformer", vocab_size=7, seq_len=30, attention=kind, stride=4)
    x = torch.randint(0, 7, (3, 30), generator=torch.Generator().manual_seed(1))
    assert decoder_error(model, x) <= 1e-5
    # forward's cache, fed in chunks (the explicit-mask path with several new queries) and one token at a time
    full, _, _ = model(x)
    assert (chunked_forward(model, x, 9, 20) - full).abs().max().item() <= 1e-5
    prompt = x[:, :3]
    assert torch.equal(generate(model, prompt, 20, temperature=0), generate(model, prompt, 20, temperature=0,
                                                                            use_cache=False))


@pytest.mark.parametrize("kind", ["strided", "fixed"])
def test_probabilities_of_all_sequences_sum_to_one(kind):
    model = make("transformer", vocab_size=3, seq_len=6, attention=kind, stride=2)
    assert model.log_prob(all_sequences(3, 6)).exp().sum().item() == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("kind", ["strided", "fixed"])
def test_trains_with_finite_gradients(kind):
    model = make("transformer", vocab_size=11, seq_len=24, attention=kind, stride=5).train()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    x = torch.arange(24).repeat(4, 1) % 11  # a pattern to learn
    losses = []
    for _ in range(8):
        loss = model.loss(x)
        optimiser.zero_grad()
        loss.backward()
        assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters())
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_sparse_attention_costs_what_dense_attention_costs():
    """The pattern masks the dense scores, all of which are computed: the FLOPs and parameters do not change."""
    dense = armodels.make_config("transformer", seq_len=64)
    for kind in ("strided", "fixed"):
        sparse = armodels.make_config("transformer", seq_len=64, attention=kind, stride=8)
        assert sparse.flops_per_token() == dense.flops_per_token()
        assert sparse.num_params(non_embedding=False) == dense.num_params(non_embedding=False)


@pytest.mark.parametrize("config, field", [
    ({"attention": "sparse"}, "attention"),
    ({"attention": None}, "attention"),
    ({"stride": 0}, "stride"),
    ({"stride": -3, "attention": "strided"}, "stride"),
    ({"stride": 2.5}, "stride"),
    ({"attention": "fixed", "any_order": True}, "attention"),
])
def test_bad_values_are_one_line_errors_naming_the_field(config, field):
    with pytest.raises(ValueError, match=f"^{field}: ") as error:
        armodels.make_config("transformer", **config)
    assert "\n" not in str(error.value)


def test_attention_mask_names_unknown_patterns():
    with pytest.raises(ValueError, match="^attention: must be one of dense, strided, fixed"):
        attention_mask("local", 8, 2)


def test_linear_attention_refuses_a_sparse_pattern_in_its_config():
    with pytest.raises(ValueError, match=r"^attention: linear attention attends to every earlier token"):
        armodels.make_config("linear_attention", attention="strided")
