"""Sampling from an autoregressive model: temperature, top-k and top-p (nucleus), with the KV cache."""

from __future__ import annotations

import torch


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Set to -inf every logit outside the `top_k` largest and outside the smallest set whose mass reaches `top_p`."""
    if top_k is not None and 0 < top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0 < top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        mass_before = torch.softmax(sorted_logits, dim=-1).cumsum(-1) - torch.softmax(sorted_logits, dim=-1)
        drop_sorted = mass_before >= top_p  # keep tokens until the mass before them reaches top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(logits: torch.Tensor, *, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row of `logits` [B, V]; temperature 0 means greedy."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(filter_logits(logits.float() / temperature, top_k, top_p), dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(model, prompt: torch.Tensor, max_new_tokens: int, *, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
             use_cache: bool = True) -> torch.Tensor:
    """Extend `prompt` [B, T0] by `max_new_tokens` tokens. Without the cache, every step reruns the whole prefix
    (kept for testing and benchmarking the cache)."""
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    tokens, cache = prompt, None
    next_input = prompt
    for _ in range(max_new_tokens):
        if use_cache:
            logits, _, cache = model(next_input, cache=cache)
        else:
            logits, _, _ = model(tokens)
        nxt = sample_next(logits[:, -1], temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
        next_input = nxt[:, None]
        tokens = torch.cat([tokens, next_input], dim=1)
    return tokens
