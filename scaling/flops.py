"""Training-compute conventions for decoder-only transformers.

Scaling-law papers count compute differently, and fits depend on the choice, so every run record keeps the
convention its FLOPs were counted in. Two conventions are implemented:

``6ND`` (Kaplan et al. 2020)
    C = 6 · N · D with N the non-embedding parameter count and D the training tokens: 2 FLOPs per parameter per
    token forward, twice that backward. Ignores attention over the context and the output logits.

``per_layer`` (Hoffmann et al. 2022, appendix F style)
    Forward FLOPs per token, summed over the parts of the network, then × 3 for forward + backward:

    =====================  ==========================
    QKV + output proj.     8 · d² per layer
    attention logits+vals  4 · d · T per layer (T = context length, full square as in the paper)
    MLP (4d hidden)        16 · d² per layer
    final logits           2 · d · V
    =====================  ==========================

    Embedding look-ups are free; layer norms, softmax and nonlinearities are neglected, as in the paper.
"""

from __future__ import annotations

CONVENTIONS = ("6ND", "per_layer")


def transformer_nonembedding_params(n_layer: int, d_model: int) -> int:
    """Non-embedding parameters of a GPT block stack without biases: 12·L·d² (4d² attention + 8d² MLP) plus the
    layer norms (2 per block + final, each 2d)."""
    return 12 * n_layer * d_model**2 + (2 * n_layer + 1) * 2 * d_model


def transformer_flops_per_token(n_layer: int, d_model: int, seq_len: int, vocab_size: int) -> float:
    """Training FLOPs (forward + backward) per token, per-layer convention."""
    per_layer = 8 * d_model**2 + 4 * d_model * seq_len + 16 * d_model**2
    forward = n_layer * per_layer + 2 * d_model * vocab_size
    return 3.0 * forward


def training_flops(
    convention: str,
    tokens: float,
    *,
    params_nonembedding: float,
    n_layer: int | None = None,
    d_model: int | None = None,
    seq_len: int | None = None,
    vocab_size: int | None = None,
) -> float:
    """Training FLOPs of a run that saw `tokens` tokens, counted in `convention` (one of ``CONVENTIONS``)."""
    if convention == "6ND":
        return 6.0 * params_nonembedding * tokens
    if convention == "per_layer":
        if None in (n_layer, d_model, seq_len, vocab_size):
            raise ValueError("the per_layer convention needs n_layer, d_model, seq_len and vocab_size")
        return transformer_flops_per_token(n_layer, d_model, seq_len, vocab_size) * tokens
    raise ValueError(f"unknown FLOPs convention {convention!r}; expected one of {', '.join(CONVENTIONS)}")
