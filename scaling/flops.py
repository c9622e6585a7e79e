"""Training-compute conventions for decoder-only transformers.

Scaling-law papers count compute differently, and fits depend on the choice, so every run record keeps the
convention its FLOPs were counted in. All conventions give training FLOPs (forward + backward) for a run that
saw D tokens; N is the non-embedding parameter count, N_total all parameters, L layers, d the model width,
T the context length, V the vocabulary and h the number of attention heads.

==============  ==========================================================  =====================================
convention      training FLOPs                                              source
==============  ==========================================================  =====================================
``6ND``         6 · N · D                                                   Kaplan et al. 2020, C ≈ 6ND
``6ND_total``   6 · N_total · D                                             the same with embeddings counted,
                                                                            as Hoffmann et al. 2022 count N
``kaplan``      (6 · N + 6 · L · T · d) · D                                 Kaplan et al. 2020, table 1: forward
                                                                            2N + 2·L·T·d_attn per token, d_attn = d
``per_layer``   3 · (L · (24 · d² + 4 · d · T) + 2 · d · V) · D             per-layer count, table below
``chinchilla``  3 · (4 · d · V + L · (24 · d² + 4 · d · T + 3 · h · T)) · D  Hoffmann et al. 2022, appendix F
==============  ==========================================================  =====================================

In every convention the backward pass costs twice the forward pass, so training = 3 × forward.

``per_layer``: forward FLOPs per token, summed over the parts of the network; embedding look-ups are free, and
layer norms, softmax and nonlinearities are neglected:

=====================  ==========================
QKV + output proj.     8 · d² per layer
attention logits+vals  4 · d · T per layer (full T × T square)
MLP (4d hidden)        16 · d² per layer
final logits           2 · d · V
=====================  ==========================

``chinchilla``: Hoffmann et al.'s appendix F count, per sequence of T tokens, divided by T here (key size ×
heads = d, feed-forward width 4d):

=====================  ====================================  ==========================
part                   per sequence                          per token
=====================  ====================================  ==========================
embeddings             2 · T · V · d                         2 · V · d
QKV projections        2 · 3 · T · d · d        per layer    6 · d² per layer
key @ query logits     2 · T · T · d            per layer    2 · T · d per layer
softmax                3 · h · T · T            per layer    3 · h · T per layer
softmax @ values       2 · T · T · d            per layer    2 · T · d per layer
output projection      2 · T · d · d            per layer    2 · d² per layer
dense feed-forward     2 · T · (d · 4d + 4d · d) per layer   16 · d² per layer
final logits           2 · T · d · V                         2 · d · V
=====================  ====================================  ==========================
"""

from __future__ import annotations

CONVENTIONS = ("6ND", "6ND_total", "kaplan", "per_layer", "chinchilla")

# The run-table columns each convention reads (besides `tokens`): `fit_runs` names the missing ones.
CONVENTION_COLUMNS = {
    "6ND": ("params_nonembedding",),
    "6ND_total": ("params",),
    "kaplan": ("params_nonembedding", "n_layer", "seq_len", "d_model"),
    "per_layer": ("n_layer", "d_model", "seq_len", "vocab_size"),
    "chinchilla": ("n_layer", "d_model", "seq_len", "vocab_size", "n_head"),
}


def transformer_nonembedding_params(n_layer: int, d_model: int) -> int:
    """Non-embedding parameters of a GPT block stack without biases: 12·L·d² (4d² attention + 8d² MLP) plus the
    layer norms (2 per block + final, each 2d)."""
    return 12 * n_layer * d_model**2 + (2 * n_layer + 1) * 2 * d_model


def transformer_flops_per_token(n_layer: int, d_model: int, seq_len: int, vocab_size: int) -> float:
    """Training FLOPs (forward + backward) per token, per-layer convention."""
    per_layer = 8 * d_model**2 + 4 * d_model * seq_len + 16 * d_model**2
    forward = n_layer * per_layer + 2 * d_model * vocab_size
    return 3.0 * forward


def chinchilla_flops_per_token(n_layer: int, d_model: int, seq_len: int, vocab_size: int, n_head: int) -> float:
    """Training FLOPs (forward + backward) per token as counted in Hoffmann et al. 2022, appendix F."""
    d, t = d_model, seq_len
    attention = 6 * d * d + 2 * t * d + 3 * n_head * t + 2 * t * d + 2 * d * d
    dense = 2 * (d * 4 * d + 4 * d * d)
    forward = 2 * vocab_size * d + n_layer * (attention + dense) + 2 * d * vocab_size
    return 3.0 * forward


def kaplan_flops_per_token(params_nonembedding: float, n_layer: int, seq_len: int, d_model: int) -> float:
    """Training FLOPs per token of Kaplan et al. 2020: 3 × (2N + 2·n_layer·n_ctx·d_attn), d_attn = d_model."""
    return 3.0 * (2 * params_nonembedding + 2 * n_layer * seq_len * d_model)


def training_flops(
    convention: str,
    tokens: float,
    *,
    params_nonembedding: float | None = None,
    params_total: float | None = None,
    n_layer: int | None = None,
    d_model: int | None = None,
    seq_len: int | None = None,
    vocab_size: int | None = None,
    n_head: int | None = None,
) -> float:
    """Training FLOPs of a run that saw `tokens` tokens, counted in `convention` (one of ``CONVENTIONS``).

    Works elementwise on numpy arrays too. Raises ValueError naming the arguments a convention needs and lacks.
    """
    given = {"params_nonembedding": params_nonembedding, "params": params_total, "n_layer": n_layer,
             "d_model": d_model, "seq_len": seq_len, "vocab_size": vocab_size, "n_head": n_head}
    if convention not in CONVENTION_COLUMNS:
        raise ValueError(f"unknown FLOPs convention {convention!r}; expected one of {', '.join(CONVENTIONS)}")
    missing = [name for name in CONVENTION_COLUMNS[convention] if given[name] is None]
    if missing:
        names = ["params_total" if name == "params" else name for name in missing]
        raise ValueError(f"the {convention} convention needs {', '.join(names)}")
    if convention == "6ND":
        return 6.0 * params_nonembedding * tokens
    if convention == "6ND_total":
        return 6.0 * params_total * tokens
    if convention == "kaplan":
        return kaplan_flops_per_token(params_nonembedding, n_layer, seq_len, d_model) * tokens
    if convention == "per_layer":
        return transformer_flops_per_token(n_layer, d_model, seq_len, vocab_size) * tokens
    return chinchilla_flops_per_token(n_layer, d_model, seq_len, vocab_size, n_head) * tokens
