"""Training and evaluation batches cut from a token stream.

The stream is split into non-overlapping windows of `seq_len` tokens; a model predicts every token of a window
from the ones before it (`model.conditionals`). Training visits the windows in a seeded permutation per epoch,
and which windows a batch holds depends only on the step number, so the same global batches are seen whatever
the number of workers, and a resumed run continues at the same data position.
"""

from __future__ import annotations

import numpy as np
import torch


class TokenWindows:
    def __init__(self, tokens: np.ndarray, seq_len: int, seed: int = 0):
        self.tokens = np.asarray(tokens)
        self.seq_len = seq_len
        self.seed = seed
        self.n_windows = len(self.tokens) // seq_len
        if self.n_windows < 1:
            raise ValueError(f"{len(self.tokens)} tokens cannot fill one window of {seq_len} tokens")
        self._perms: dict[int, np.ndarray] = {}

    def window(self, i: int) -> np.ndarray:
        return self.tokens[i * self.seq_len:(i + 1) * self.seq_len]

    def _sample(self, index: int) -> np.ndarray:
        """The `index`-th training sample overall: epoch-wise permutation of the windows."""
        epoch, pos = divmod(index, self.n_windows)
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.n_windows)}
        return self.window(int(self._perms[epoch][pos]))

    def train_batch(self, step: int, global_batch: int, *, offset: int = 0, size: int | None = None) -> torch.Tensor:
        """Token windows [size, seq_len]: samples `offset : offset + size` of global batch `step`.

        A worker takes the slice of the global batch that belongs to its rank and micro-step.
        """
        size = global_batch if size is None else size
        first = step * global_batch + offset
        return _stack([self._sample(first + k) for k in range(size)])

    def eval_batches(self, batch_size: int, *, max_windows: int | None = None, rank: int = 0, world_size: int = 1):
        """Consecutive windows in order (no shuffling), split evenly across ranks, in batches [B, seq_len]."""
        n = self.n_windows if max_windows is None else min(max_windows, self.n_windows)
        per_rank = n // world_size  # equal counts keep every rank in the same number of forward passes
        if per_rank == 0:
            raise ValueError(f"{n} evaluation windows cannot be split across {world_size} workers")
        mine = range(rank * per_rank, (rank + 1) * per_rank)
        for start in range(0, per_rank, batch_size):
            yield _stack([self.window(i) for i in mine[start:start + batch_size]])


def _stack(rows: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(rows).astype(np.int64))
