"""Sampling from an autoregressive model: greedy, temperature, top-k, top-p (nucleus) and beam search.

`sample` and `beam_search` work for every family through its decoder (`model.decoder(batch)`), which yields the
logits of the next position in `model.ordering` given the token just placed at the previous one. The transformer
and linear attention decode from a cache or recurrent state, the RNN from its hidden state; every other family
uses `RecomputeDecoder`, which reruns `conditionals` on the partly filled sequence.

`generate` is the transformer's next-token continuation of a prompt through `forward(idx, cache=...)`.

`continue_sequences` and `beam_continue` extend a context past the model's `seq_len`, for text: `SlidingDecoder` uses
the family's own decoder for the first window and the last `seq_len - 1` tokens as context after it.
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

    def __init__(self, model, batch_size: int, classes: torch.Tensor | None = None):
        self.model, self.classes = model, classes
        self.order = model.ordering.tolist()
        self.x = torch.zeros(batch_size, model.seq_len, dtype=torch.long, device=model.ordering.device)
        self.steps = 0

    def step(self, token: torch.Tensor | None) -> torch.Tensor:
        if token is not None:
            self.x[:, self.order[self.steps - 1]] = token
        logits = self.model.logits(self.x, self.classes)[:, self.order[self.steps]]
        self.steps += 1
        return logits

    def reorder(self, index: torch.Tensor) -> None:
        self.x = self.x[index]
        self.classes = None if self.classes is None else self.classes[index]


@torch.no_grad()
def sample(model, n: int, *, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
           seed: int | None = None, prompt: torch.Tensor | None = None, use_cache: bool = True,
           generator: torch.Generator | None = None, classes: torch.Tensor | None = None) -> torch.Tensor:
    """`n` sequences [n, T] decoded in `model.ordering`; temperature 0 is greedy. `prompt` [n, P] fixes the tokens
    of the first P positions of the ordering. `classes` [n]: each sequence's class, for a class-conditioned model.
    Without `use_cache`, every family reruns `conditionals` each step. The draws come from `generator` when given,
    else from one seeded with `seed`."""
    device = model.ordering.device
    if generator is None and seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    decoder = class_decoder(model, n, classes, use_cache)
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


def class_decoder(model, batch_size: int, classes: torch.Tensor | None, use_cache: bool = True) -> Decoder:
    """The model's decoder (or, without `use_cache`, a RecomputeDecoder) of `batch_size` sequences of `classes`
    (None: an unconditioned model), after checking the classes fit the model."""
    if classes is not None:
        classes = torch.as_tensor(classes, dtype=torch.long, device=model.ordering.device)
    model.check_classes(classes, batch_size)
    if not use_cache:
        return RecomputeDecoder(model, batch_size, classes)
    return model.decoder(batch_size) if classes is None else model.decoder(batch_size, classes)


@torch.no_grad()
def beam_search(model, beam_width: int, *, use_cache: bool = True,
                cls: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The `beam_width` most likely sequences found by beam search, best first: (sequences [K, T], their
    log-probabilities [K]); `cls`: their class, for a class-conditioned model. Exact when `beam_width` is at least
    V^(T-1)."""
    device = model.ordering.device
    decoder = class_decoder(model, 1, None if cls is None else [cls], use_cache)
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


class SlidingDecoder:
    """Decodes a model in raster order past its `seq_len` (text): the family's own decoder (cache or recurrent
    state) for the first `seq_len` positions; after them, each next token's logits from `conditionals` over the last
    `seq_len - 1` tokens, the most context a window of training held before its last position."""

    def __init__(self, model, batch_size: int):
        if not torch.equal(model.ordering.cpu(), torch.arange(model.seq_len)):
            raise ValueError("continuing a sequence needs a model that decodes left to right (raster ordering)")
        self.model = model
        self.window = model.decoder(batch_size)
        self.tokens = torch.zeros(batch_size, 0, dtype=torch.long, device=model.ordering.device)

    def step(self, token: torch.Tensor | None) -> torch.Tensor:
        if token is not None:
            self.tokens = torch.cat([self.tokens, token[:, None]], dim=1)
        if self.tokens.size(1) < self.model.seq_len:
            return self.window.step(token)
        context = self.tokens[:, -(self.model.seq_len - 1):] if self.model.seq_len > 1 else self.tokens[:, :0]
        x = torch.cat([context, torch.zeros_like(self.tokens[:, :1])], dim=1)  # the last slot is being predicted
        return self.model.conditionals(x)[:, -1]

    def reorder(self, index: torch.Tensor) -> None:
        self.tokens = self.tokens[index]
        self.window.reorder(index)


@torch.no_grad()
def continue_sequences(model, context: torch.Tensor, new_tokens: int, *, temperature: float = 1.0,
                       top_k: int | None = None, top_p: float | None = None, generator: torch.Generator | None = None,
                       stop_token: int | None = None) -> torch.Tensor:
    """Draw `new_tokens` tokens after each row of `context` [B, P] (P >= 1), with no limit from `seq_len`; returns
    only the new tokens [B, <= new_tokens]. With `stop_token`, drawing ends once every row has drawn it (what a row
    draws after it is meaningless: cut each row there)."""
    decoder = SlidingDecoder(model, context.size(0))
    token = None
    for t in range(context.size(1)):  # feed the context; the logits of the next position come with the last token
        decoder.step(token)
        token = context[:, t].to(model.ordering.device)
    drawn: list[torch.Tensor] = []
    stopped = torch.zeros(context.size(0), dtype=torch.bool, device=model.ordering.device)
    for _ in range(new_tokens):
        logits = decoder.step(token)
        token = sample_next(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
        drawn.append(token)
        if stop_token is not None:
            stopped |= token == stop_token
            if stopped.all():
                break
    return torch.stack(drawn, dim=1) if drawn else context[:, :0]


@torch.no_grad()
def beam_continue(model, context: torch.Tensor, new_tokens: int, beam_width: int, *,
                  stop_token: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The `beam_width` most likely continuations of `context` [P] found by beam search, best first: (new tokens
    [K, <= new_tokens], their log-probabilities [K]). A hypothesis that reaches `stop_token` is finished: it keeps its
    score (and repeats `stop_token`: cut it there), so a continuation that ends is weighed as a whole document."""
    device = model.ordering.device
    decoder = SlidingDecoder(model, 1)
    token = None
    for t in context.tolist():
        decoder.step(token)
        token = torch.tensor([t], device=device)
    drawn = torch.zeros(1, 0, dtype=torch.long, device=device)
    scores = torch.zeros(1, device=device)
    finished = torch.zeros(1, dtype=torch.bool, device=device)
    for _ in range(new_tokens):
        logp = F.log_softmax(decoder.step(token).float(), dim=-1)  # [beams, V]
        if stop_token is not None and finished.any():  # a finished hypothesis can only repeat the stop, at no cost
            logp[finished] = float("-inf")
            logp[finished, stop_token] = 0.0
        scores, flat = (scores[:, None] + logp).flatten().topk(min(beam_width, logp.numel()))
        keep = torch.isfinite(scores)  # fewer live hypotheses than beams: drop the impossible ones
        scores, flat = scores[keep], flat[keep]
        beam, token = flat // logp.size(1), flat % logp.size(1)
        decoder.reorder(beam)
        drawn = torch.cat([drawn[beam], token[:, None]], dim=1)
        finished = finished[beam] | (token == stop_token if stop_token is not None else False)
        if finished.all():
            break
    return drawn, scores

