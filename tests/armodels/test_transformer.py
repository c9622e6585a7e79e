import pytest
import torch

from armodels.models.transformer import Transformer, TransformerConfig
from armodels.sampling import filter_logits, generate
from scaling.flops import transformer_flops_per_token, transformer_nonembedding_params
from tests.armodels.models.util import chunked_forward


@pytest.fixture
def model():
    torch.manual_seed(0)
    return Transformer(TransformerConfig(vocab_size=50, seq_len=24, n_layer=2, n_head=4, n_embd=32)).eval()


def test_param_count_matches_closed_form(model):
    c = model.config
    assert model.num_params() == transformer_nonembedding_params(c.n_layer, c.n_embd)
    assert model.num_params(non_embedding=False) == model.num_params() + c.vocab_size * c.n_embd + c.seq_len * c.n_embd
    assert model.flops_per_token() == transformer_flops_per_token(c.n_layer, c.n_embd, c.seq_len, c.vocab_size)


def test_causal_by_perturbation(model):
    x = torch.randint(0, 50, (3, 24))
    logits, _, _ = model(x)
    for j in (0, 7, 23):
        y = x.clone()
        y[:, j] = (y[:, j] + 1) % 50
        changed, _, _ = model(y)
        assert torch.equal(logits[:, :j], changed[:, :j]), f"position {j} leaked backwards"
        assert not torch.allclose(logits[:, j], changed[:, j])


def test_kv_cache_gives_the_same_logits_as_the_full_forward(model):
    x = torch.randint(0, 50, (2, 24))
    full, _, _ = model(x)
    # prefill 10 tokens, then one at a time, then a chunk of 3 (the explicit-mask path)
    assert (chunked_forward(model, x, 10, 21) - full).abs().max().item() <= 1e-5


def test_context_limit_is_a_clear_error(model):
    with pytest.raises(ValueError, match="exceeds the model's context of 24"):
        model(torch.zeros(1, 25, dtype=torch.long))


def test_config_rejects_heads_that_do_not_divide_width():
    with pytest.raises(ValueError, match="multiple of n_head"):
        TransformerConfig(n_embd=30, n_head=4)


def test_greedy_generation_is_identical_with_and_without_cache(model):
    prompt = torch.randint(0, 50, (2, 3))
    a = generate(model, prompt, 15, temperature=0)
    b = generate(model, prompt, 15, temperature=0, use_cache=False)
    assert torch.equal(a, b) and a.shape == (2, 18)


def test_sampling_respects_top_k_and_top_p():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    assert torch.isinf(filter_logits(logits, top_k=2)[0, 2:]).all()
    assert not torch.isinf(filter_logits(logits, top_k=2)[0, :2]).any()
    probs = torch.softmax(logits, -1)[0]
    kept = ~torch.isinf(filter_logits(logits, top_p=0.8)[0])
    # the smallest prefix of the sorted distribution with mass >= 0.8
    assert kept.tolist() == [True, True, False, False, False] and probs[:2].sum() >= 0.8 > probs[:1].sum()
    seqs = generate(Transformer(TransformerConfig(vocab_size=5, seq_len=8)), torch.zeros(64, 1, dtype=torch.long),
                    1, top_k=1, seed=0)
    assert seqs.shape == (64, 2)
    assert len(set(seqs[:, 1].tolist())) == 1  # top-1 sampling is greedy
