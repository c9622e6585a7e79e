"""Character-level recurrent network (char-RNN style): an LSTM, a GRU or a plain Elman RNN (tanh) over the sequence
shifted right behind a start token, predicting the next token from its hidden state. Decoding carries the hidden
state: O(1) per token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from armodels.models.base import MAX_DEPTH, ARModel, check_sizes

# "tanh" is the Elman RNN, h' = tanh(W x + U h + b): nn.RNN's default nonlinearity, one "gate" of weights.
CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "tanh": nn.RNN}
GATES = {"lstm": 4, "gru": 3, "tanh": 1}  # weight matrices per layer and direction


@dataclass(frozen=True)
class RNNConfig:
    vocab_size: int = 16
    seq_len: int = 32
    cell: str = "lstm"  # or "gru", "tanh"
    n_layer: int = 2
    n_embd: int = 32  # token embedding width
    hidden: int = 64
    dropout: float = 0.0  # between layers

    def __post_init__(self) -> None:
        check_sizes(self, "vocab_size", "seq_len", "n_embd", "hidden")
        check_sizes(self, "n_layer", high=MAX_DEPTH)  # the count loops over layers
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {sorted(CELLS)}, got {self.cell!r}")

    # ---- size and cost ----

    def _weights(self) -> tuple[int, int]:
        """(recurrent weights, their biases): per layer, each gate (4 in an LSTM, 3 in a GRU, 1 in a tanh RNN) has
        input-to-hidden and hidden-to-hidden matrices and a bias for each."""
        gates, H = GATES[self.cell], self.hidden
        inputs = [self.n_embd] + [H] * (self.n_layer - 1)
        return sum(gates * H * (i + H) for i in inputs), self.n_layer * 2 * gates * H

    def num_params(self, non_embedding: bool = True) -> int:
        """The recurrent layers and the head; the embedding table has a row per token and one for the start."""
        weights, biases = self._weights()
        head = self.hidden * self.vocab_size + self.vocab_size
        return weights + biases + head + (0 if non_embedding else (self.vocab_size + 1) * self.n_embd)

    def flops_per_token(self) -> float:
        """Training FLOPs per token: each step applies every recurrent weight and the head once, 3 × 2 · weights."""
        return 3.0 * (2 * (self._weights()[0] + self.hidden * self.vocab_size))


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


class RNNDecoder:
    """Decodes one step at a time from the hidden state (for an LSTM, the pair (h, c); for a GRU or tanh RNN, h)."""

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
