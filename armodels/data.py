"""Training and evaluation batches cut from a token stream.

The stream is split into non-overlapping windows of `seq_len` tokens; a model predicts every token of a window
from the ones before it (`model.conditionals`). Training visits the windows in a seeded permutation per epoch,
and which windows a batch holds depends only on the step number, so the same global batches are seen whatever
the number of workers, and a resumed run continues at the same data position.

Labelled windows (`labels`: one class per window, as for an image stream whose windows are its images) give
batches (tokens [B, seq_len], labels [B]) instead of tokens alone, for class-conditioned models.
"""

from __future__ import annotations

import numpy as np
import torch

Batch = torch.Tensor | tuple[torch.Tensor, torch.Tensor]  # tokens, or (tokens, labels) from labelled windows


class TokenWindows:
    def __init__(self, tokens: np.ndarray, seq_len: int, seed: int = 0, labels: np.ndarray | None = None):
        self.tokens = np.asarray(tokens)
        self.seq_len = seq_len
        self.seed = seed
        self.n_windows = len(self.tokens) // seq_len
        if self.n_windows < 1:
            raise ValueError(f"{len(self.tokens)} tokens cannot fill one window of {seq_len} tokens")
        self._perms: dict[int, np.ndarray] = {}
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        if self.labels is not None and (self.labels.shape != (self.n_windows,) or len(self.tokens) % seq_len):
            raise ValueError(f"{len(self.labels)} labels for {len(self.tokens)} tokens: labelled windows need one "
                             f"label per window of {seq_len} tokens, and no tokens left over")

    def window(self, i: int) -> np.ndarray:
        return self.tokens[i * self.seq_len:(i + 1) * self.seq_len]

    def _sample(self, index: int) -> int:
        """The window of the `index`-th training sample overall: epoch-wise permutation of the windows."""
        epoch, pos = divmod(index, self.n_windows)
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.n_windows)}
        return int(self._perms[epoch][pos])

    def train_batch(self, step: int, global_batch: int, *, offset: int = 0, size: int | None = None) -> Batch:
        """Token windows [size, seq_len] (with their labels [size], if labelled): samples `offset : offset + size`
        of global batch `step`.

        A worker takes the slice of the global batch that belongs to its rank and micro-step.
        """
        size = global_batch if size is None else size
        first = step * global_batch + offset
        return self._batch([self._sample(first + k) for k in range(size)])

    def eval_batches(self, batch_size: int, *, max_windows: int | None = None, rank: int = 0, world_size: int = 1):
        """Consecutive windows in order (no shuffling), split evenly across ranks, in batches [B, seq_len]."""
        n = self.n_windows if max_windows is None else min(max_windows, self.n_windows)
        per_rank = n // world_size  # equal counts keep every rank in the same number of forward passes
        if per_rank == 0:
            raise ValueError(f"{n} evaluation windows cannot be split across {world_size} workers")
        mine = range(rank * per_rank, (rank + 1) * per_rank)
        for start in range(0, per_rank, batch_size):
            yield self._batch(mine[start:start + batch_size])

    def _batch(self, windows) -> Batch:
        tokens = torch.from_numpy(np.stack([self.window(i) for i in windows]).astype(np.int64))
        return tokens if self.labels is None else (tokens, torch.from_numpy(self.labels[list(windows)]))


def batch_args(batch: Batch) -> tuple[torch.Tensor, ...]:
    """A batch as the arguments of a model's `loss` or `log_prob`: (tokens,) or (tokens, classes)."""
    return batch if isinstance(batch, tuple) else (batch,)
