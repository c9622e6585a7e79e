"""Character-level recurrent network (char-RNN style): an LSTM or GRU over the sequence shifted right behind a start
token, predicting the next token from its hidden state. Decoding carries the hidden state: O(1) per token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from armodels.models.base import ARModel, check_positive

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}


@dataclass(frozen=True)
class RNNConfig:
    vocab_size: int = 16
    seq_len: int = 32
    cell: str = "lstm"  # or "gru"
    n_layer: int = 2
    n_embd: int = 32  # token embedding width
    hidden: int = 64
    dropout: float = 0.0  # between layers

    def __post_init__(self) -> None:
        check_positive(self, "vocab_size", "seq_len", "n_layer", "n_embd", "hidden")
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {sorted(CELLS)}, got {self.cell!r}")


class RNN(ARModel):
    family = "rnn"

    def __init__(self, cfg: RNNConfig):
        super().__init__(cfg)
        self.embed = nn.Embedding(cfg.vocab_size + 1, cfg.n_embd)  # the last row is the start token
        self.rnn = CELLS[cfg.cell](cfg.n_embd, cfg.hidden, cfg.n_layer, batch_first=True,
                                   dropout=cfg.dropout if cfg.n_layer > 1 else 0.0)
        self.head = nn.Linear(cfg.hidden, cfg.vocab_size)

    def conditionals(self, x: torch.Tensor) -> torch.Tensor:
        shifted = F.pad(x[:, :-1], (1, 0), value=self.vocab_size)
        out, _ = self.rnn(self.embed(shifted))
        return self.head(out)

    def decoder(self, batch_size: int) -> "RNNDecoder":
        return RNNDecoder(self, batch_size)

    def embedding_parameters(self) -> list[nn.Parameter]:
        return [self.embed.weight]

    def flops_per_token(self) -> float:
        """Training FLOPs per token: each step applies every recurrent weight and the head once, 3 × 2 · weights
        (for an LSTM layer 4 gates · (input + hidden) · hidden weights, for a GRU 3 gates)."""
        return 3.0 * self.weight_flops()


class RNNDecoder:
    """Decodes one step at a time from the hidden state (for an LSTM, the pair (h, c))."""

    def __init__(self, model: RNN, batch_size: int):
        self.model = model
        self.start = torch.full((batch_size,), model.vocab_size, dtype=torch.long, device=model.ordering.device)
        self.state = None

    def step(self, token: torch.Tensor | None) -> torch.Tensor:
        inputs = self.model.embed(self.start if token is None else token)[:, None]
        out, self.state = self.model.rnn(inputs, self.state)
        return self.model.head(out[:, -1])

    def reorder(self, index: torch.Tensor) -> None:
        self.start = self.start[index]
        if isinstance(self.state, tuple):
            self.state = tuple(s[:, index] for s in self.state)
        elif self.state is not None:
            self.state = self.state[:, index]
