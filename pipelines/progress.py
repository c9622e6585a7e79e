"""Progress lines for long steps: rate-limited, one line each, readable in a terminal and in logs."""

from __future__ import annotations

import time


def human(n: float) -> str:
    """12_345_678 -> '12.3M'."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.{1 if abs(n) < 100 * size else 0}f}{unit}"
    return f"{n:.0f}"


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    m, s = divmod(seconds, 60)
    return f"{m}m{s:02d}s" if m < 60 else f"{m // 60}h{m % 60:02d}m"


class TrainingProgress:
    """Prints `[name] 45% 0.9M/2.0M tokens loss 3.21 val 3.30 8.2k tok/s ETA 1m12s` at most every `every` s."""

    def __init__(self, name: str, total_tokens: int, every: float = 15.0):
        self.name, self.total, self.every = name, total_tokens, every
        self._last = 0.0
        self._val = None

    def __call__(self, metrics: dict) -> None:
        if "val_loss" in metrics:
            self._val = metrics["val_loss"]
            return
        now = time.monotonic()
        done = metrics["progress"] >= 1
        if now - self._last < self.every and not done and metrics["step"] > 0:
            return
        self._last = now
        rate = metrics["tokens_per_s"]
        eta = (self.total - metrics["tokens"]) / rate if rate else 0
        val = f" val {self._val:.3f}" if self._val is not None else ""
        print(f"[{self.name}] {metrics['progress']:4.0%} {human(metrics['tokens'])}/{human(self.total)} tokens "
              f"loss {metrics['loss']:.3f}{val} {human(rate)} tok/s ETA {duration(eta)}", flush=True)
