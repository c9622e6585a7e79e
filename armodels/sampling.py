"""Sampling from an autoregressive model: greedy, temperature, top-k, top-p (nucleus) and beam search.

`sample` and `beam_search` work for every family through its decoder (`model.decoder(batch)`), which yields the
logits of the next position in `model.ordering` given the token just placed at the previous one. The transformer
and linear attention decode from a cache or recurrent state, the RNN from its hidden state; every other family
uses `RecomputeDecoder`, which reruns `conditionals` on the partly filled sequence.

`generate` is the transformer's next-token continuation of a prompt through `forward(idx, cache=...)`.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F


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



class Decoder(Protocol):
    def step(self, token: torch.Tensor | None) -> torch.Tensor:
        """Logits [B, V] of the next position in the ordering; `token` [B] is the one just placed at the previous
        position (None at the first step)."""

    def reorder(self, index: torch.Tensor) -> None:
        """Keep the rows `index` of the batch, in that order (beam search moves and copies hypotheses)."""


class RecomputeDecoder:
    """Decodes any model by rerunning `conditionals` on the partly filled sequence at every step. Positions not
    decoded yet hold 0; causality guarantees they cannot change the logits read."""

    def __init__(self, model, batch_size: int):
        self.model = model
        self.order = model.ordering.tolist()
        self.x = torch.zeros(batch_size, model.seq_len, dtype=torch.long, device=model.ordering.device)
        self.steps = 0

    def step(self, token: torch.Tensor | None) -> torch.Tensor:
        if token is not None:
            self.x[:, self.order[self.steps - 1]] = token
        logits = self.model.conditionals(self.x)[:, self.order[self.steps]]
        self.steps += 1
        return logits

    def reorder(self, index: torch.Tensor) -> None:
        self.x = self.x[index]


@torch.no_grad()
def sample(model, n: int, *, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
           seed: int | None = None, prompt: torch.Tensor | None = None, use_cache: bool = True) -> torch.Tensor:
    """`n` sequences [n, T] decoded in `model.ordering`; temperature 0 is greedy. `prompt` [n, P] fixes the tokens
    of the first P positions of the ordering. Without `use_cache`, every family reruns `conditionals` each step."""
    device = model.ordering.device
    generator = None if seed is None else torch.Generator(device=device).manual_seed(seed)
    decoder = model.decoder(n) if use_cache else RecomputeDecoder(model, n)
    x = torch.zeros(n, model.seq_len, dtype=torch.long, device=device)
    token = None
    for s, position in enumerate(model.ordering.tolist()):
        logits = decoder.step(token)
        if prompt is not None and s < prompt.size(1):
            token = prompt[:, s].to(device)
        else:
            token = sample_next(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
        x[:, position] = token
    return x


@torch.no_grad()
def beam_search(model, beam_width: int, *, use_cache: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The `beam_width` most likely sequences found by beam search, best first: (sequences [K, T], their
    log-probabilities [K]). Exact when `beam_width` is at least V^(T-1)."""
    device = model.ordering.device
    decoder = model.decoder(1) if use_cache else RecomputeDecoder(model, 1)
    sequences = torch.zeros(1, model.seq_len, dtype=torch.long, device=device)
    scores = torch.zeros(1, device=device)
    token = None
    for position in model.ordering.tolist():
        logp = F.log_softmax(decoder.step(token).float(), dim=-1)  # [beams, V]
        scores, flat = (scores[:, None] + logp).flatten().topk(min(beam_width, logp.numel()))
        beam, token = flat // logp.size(1), flat % logp.size(1)
        decoder.reorder(beam)
        sequences = sequences[beam]
        sequences[:, position] = token
    return sequences, scores
