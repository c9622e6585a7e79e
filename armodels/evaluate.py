"""Evaluation of a trained model of any family on held-out tokens: nats/token, bits/token (= bits/dim for
images), bits/byte, perplexity."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from armodels.data import TokenWindows, batch_args


@dataclass(frozen=True)
class EvalResult:
    nats_per_token: float
    bits_per_token: float  # bits per dimension when each token is a pixel
    bits_per_byte: float | None  # None when the byte length of tokens is unknown
    perplexity: float
    tokens: int
    bytes: int | None


@torch.no_grad()
def evaluate_loss(model, windows: TokenWindows, *, token_bytes: np.ndarray | None = None, batch_size: int = 32,
                  max_windows: int | None = None, ensemble: int = 1) -> EvalResult:
    """Negative log-likelihood of every token of the (first `max_windows`) windows, in order.

    `token_bytes[id]` is the number of bytes token `id` stands for; with it, bits/byte is exact: total bits over
    the bytes of exactly the tokens that were scored. `ensemble` > 1 scores the mean probability of that many of
    the model's masks (MADE's `ensemble_log_prob`; other families have one network, so only MADE takes it).
    Labelled windows score a class-conditioned model given each window's class: conditional bits/token.
    """
    if ensemble != 1 and not hasattr(model, "ensemble_log_prob"):
        raise ValueError(f"ensemble: the {model.family} family has no masks to average; only made takes ensemble > 1 "
                         f"(got {ensemble!r})")
    model.eval()
    nats, n_tokens, n_bytes = 0.0, 0, 0
    lengths = None if token_bytes is None else torch.as_tensor(np.asarray(token_bytes), dtype=torch.int64)
    for batch in windows.eval_batches(batch_size, max_windows=max_windows):
        # on the model's device (every family keeps its ordering as a buffer); x, or x and its classes
        x, *classes = (t.to(model.ordering.device) for t in batch_args(batch))
        nats -= (model.log_prob(x, *classes) if ensemble == 1 else model.ensemble_log_prob(x, ensemble, *classes)
                 ).sum().item()
        n_tokens += x.numel()
        if lengths is not None:
            n_bytes += int(lengths[x.cpu()].sum())
    per_token = nats / n_tokens
    return EvalResult(
        nats_per_token=per_token,
        bits_per_token=per_token / math.log(2),
        bits_per_byte=nats / math.log(2) / n_bytes if n_bytes else None,
        perplexity=math.exp(per_token),
        tokens=n_tokens,
        bytes=n_bytes if lengths is not None else None,
    )
