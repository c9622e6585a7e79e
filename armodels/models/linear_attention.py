"""Causal linear attention (Katharopoulos et al. 2020, "Transformers are RNNs"), decoding in O(1) per token.

Softmax attention's exp(q·k) is replaced by φ(q)·φ(k) with φ(u) = elu(u) + 1 > 0, so the output at step t,

    y_t = φ(q_t)ᵀ S_t / φ(q_t)ᵀ z_t,   S_t = Σ_{i≤t} φ(k_i) v_iᵀ,   z_t = Σ_{i≤t} φ(k_i),

needs only the running state (S, z) of fixed size: decoding is a recurrence, not a growing cache. The model is
the transformer of transformer.py (embeddings, orderings, blocks, head) with this attention in every block.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from armodels.models.transformer import Transformer, TransformerConfig

# The running state of one layer: S [B, heads, head_dim, head_dim], z [B, heads, head_dim] and the tokens seen.
LinearState = tuple[torch.Tensor, torch.Tensor, int]


@dataclass(frozen=True)
class LinearAttentionConfig(TransformerConfig):
    """The transformer's fields and parameters; only the attention, and so the FLOPs, differ."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.attention != "dense":  # the running state sums over every earlier token: it has no sparse patterns
            raise ValueError(f"attention: linear attention attends to every earlier token; only 'dense' applies "
                             f"(got {self.attention!r})")

    def flops_per_token(self) -> float:
        """Training FLOPs per token (3 × forward) of the recurrent form, per layer: 24·d² for the projections and
        MLP, as in the transformer, plus 4·d·d_head + 4·d to update (S, z) and read them out, instead of the
        transformer's 4·d·T; head 2·d·V. (The training path evaluates the same sums in the masked T × T form.)"""
        d, head_dim = self.n_embd, self.n_embd // self.n_head
        per_layer = 24 * d**2 + 4 * d * head_dim + 4 * d
        return 3.0 * (self.n_layer * per_layer + 2 * d * self.vocab_size)


class LinearSelfAttention(nn.Module):
    def __init__(self, cfg: LinearAttentionConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=False)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)

    def forward(self, x: torch.Tensor, past: LinearState | None = None) -> tuple[torch.Tensor, LinearState]:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        q, k = F.elu(q) + 1, F.elu(k) + 1
        # Within the new tokens, the sums over i ≤ t in their parallel form: a lower-triangular T × T matrix
        # (matmuls beat a sequential scan at training lengths); earlier tokens enter through the state.
        weights = (q @ k.transpose(-2, -1)).tril()
        numerator, denominator = weights @ v, weights.sum(-1)
        S, z = k.transpose(-2, -1) @ v, k.sum(2)
        seen = T
        if past is not None:
            S0, z0, seen0 = past
            numerator = numerator + q @ S0
            denominator = denominator + (q @ z0.unsqueeze(-1)).squeeze(-1)
            S, z, seen = S + S0, z + z0, seen + seen0
        y = (numerator / denominator.unsqueeze(-1)).transpose(1, 2).contiguous().view(B, T, C)
        return self.proj(y), (S, z, seen)

    @staticmethod
    def cached_tokens(past: LinearState) -> int:
        return past[2]


class LinearAttention(Transformer):
    family = "linear_attention"
    attention = LinearSelfAttention

