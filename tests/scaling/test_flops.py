"""FLOPs conventions against hand computations for one small transformer."""

import numpy as np
import pytest

from scaling.flops import (CONVENTIONS, training_flops, transformer_flops_per_token,
                           transformer_nonembedding_params)

# L = 2 layers, d = 64, T = 128 context, V = 1000 vocabulary, h = 4 heads, D = 1e6 tokens
SHAPE = {"n_layer": 2, "d_model": 64, "seq_len": 128, "vocab_size": 1000, "n_head": 4}
TOKENS = 1e6
N_NONEMB = 12 * 2 * 64**2 + (2 * 2 + 1) * 2 * 64  # 98,304 + 640 = 98,944
N_TOTAL = N_NONEMB + 1000 * 64 + 128 * 64


def test_existing_helpers_are_unchanged():
    assert transformer_nonembedding_params(2, 64) == 98_944 == N_NONEMB
    # 3 × (2 × (8·64² + 4·64·128 + 16·64²) + 2·64·1000) = 3 × (2 × (32768 + 32768 + 65536) + 128000)
    assert transformer_flops_per_token(2, 64, 128, 1000) == 3 * (2 * 131_072 + 128_000) == 1_170_432


def test_6nd_and_6nd_total():
    assert training_flops("6ND", TOKENS, params_nonembedding=N_NONEMB) == 6 * 98_944 * 1e6
    assert training_flops("6ND_total", TOKENS, params_total=N_TOTAL) == 6 * N_TOTAL * 1e6


def test_kaplan_adds_the_attention_context_term():
    # forward 2N + 2·n_layer·n_ctx·d_attn = 2·98,944 + 2·2·128·64 = 197,888 + 32,768; training × 3
    expected = 3 * (197_888 + 32_768) * 1e6
    assert training_flops("kaplan", TOKENS, params_nonembedding=N_NONEMB, **SHAPE) == expected


def test_per_layer_keeps_its_formula():
    assert training_flops("per_layer", TOKENS, params_nonembedding=N_NONEMB, **SHAPE) == 1_170_432 * 1e6


def test_chinchilla_appendix_f_count():
    d, t, v, h = 64, 128, 1000, 4
    embeddings = 2 * v * d  # 128,000
    attention = 6 * d * d + 2 * t * d + 3 * h * t + 2 * t * d + 2 * d * d  # 24,576+16,384+1,536+16,384+8,192
    assert attention == 67_072
    dense = 2 * (d * 4 * d + 4 * d * d)  # 65,536
    logits = 2 * d * v  # 128,000
    forward = embeddings + 2 * (attention + dense) + logits  # 128,000 + 265,216 + 128,000 = 521,216
    assert forward == 521_216
    assert training_flops("chinchilla", TOKENS, **SHAPE) == 3 * 521_216 * 1e6


def test_conventions_listed_and_elementwise():
    assert CONVENTIONS == ("6ND", "6ND_total", "kaplan", "per_layer", "chinchilla")
    tokens = np.array([1e6, 2e6])
    assert np.allclose(training_flops("6ND", tokens, params_nonembedding=np.array([1.0, 2.0])), [6e6, 24e6])


@pytest.mark.parametrize("convention, message", [("per_layer", "per_layer convention needs vocab_size$"),
                                                 ("chinchilla", "n_head"), ("6ND_total", "params_total"),
                                                 ("nope", "unknown FLOPs convention")])
def test_missing_arguments_are_named(convention, message):
    with pytest.raises(ValueError, match=message):
        training_flops(convention, TOKENS, params_nonembedding=N_NONEMB, n_layer=2, d_model=64, seq_len=128,
                       vocab_size=None if convention == "per_layer" else 1000)
