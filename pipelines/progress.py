"""Progress lines for long steps: rate-limited, one line each, readable in a terminal and in logs."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable


def human(n: float) -> str:
    """12_345_678 -> '12.3M'."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.{1 if abs(n) < 100 * size else 0}f}{unit}"
    return f"{n:.0f}"


def plural(n: int, word: str) -> str:
    """(1, 'document') -> '1 document'; (1902, 'document') -> '1,902 documents'."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"


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


class ThroughputProgress:
    """Progress of a bulk job over a known number of input bytes.

    On a terminal, one bar redrawn in place:  `tokenize [#####.....] 45% 12.3k docs 3.2 MB/s 1.1M tok/s ETA 1m12s`;
    otherwise (a log file, a pipe, a study step's log) the same numbers as a plain line every `every` seconds.
    Rates count only the work of this run, not what an earlier run had finished.
    """

    def __init__(self, label: str, total_bytes: int, *, write: Callable[[str], None] | None = None,
                 every: float = 10.0, tty: bool | None = None):
        self.label, self.total, self.every = label, max(total_bytes, 1), every
        self.tty = sys.stderr.isatty() if tty is None and write is None else bool(tty)
        self.write = write or (lambda line: print(line, file=sys.stderr, flush=True))
        self.start = self._last = time.monotonic()
        self.bytes = self.documents = self.tokens = 0
        self._resumed = (0, 0)  # (bytes, tokens) done before this run
        self._shown: tuple[int, int, int] | None = None  # the counts of the last line written

    def resume(self, n_bytes: int, documents: int, tokens: int) -> None:
        self.bytes, self.documents, self.tokens = n_bytes, documents, tokens
        self._resumed = (n_bytes, tokens)

    def begin(self) -> None:
        """Start the clock (after start-up work that the rates should not count)."""
        self.start = self._last = time.monotonic()

    def update(self, n_bytes: int, documents: int, tokens: int) -> None:
        self.bytes += n_bytes
        self.documents += documents
        self.tokens += tokens
        now = time.monotonic()
        if now - self._last >= (0.2 if self.tty else self.every):
            self._last = now
            self._show()

    def close(self) -> None:
        if self.tty or self._shown != (self.bytes, self.documents, self.tokens):  # no repeat of the last line
            self._show(final=True)

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        byte_rate = (self.bytes - self._resumed[0]) / elapsed
        token_rate = (self.tokens - self._resumed[1]) / elapsed
        left = self.total - self.bytes
        eta = f"ETA {duration(left / byte_rate)}" if byte_rate > 0 and left > 0 else f"in {duration(elapsed)}"
        fraction = min(self.bytes / self.total, 1.0)
        bar = f"[{'#' * int(fraction * 20):.<20}] " if self.tty else ""
        return (f"{self.label} {bar}{fraction:4.0%} {human(self.documents)} docs {human(byte_rate)}B/s "
                f"{human(token_rate)} tok/s {eta}")

    def _show(self, final: bool = False) -> None:
        self._shown = (self.bytes, self.documents, self.tokens)
        if self.tty:
            sys.stderr.write("\r\033[K" + self.line() + ("\n" if final else ""))
            sys.stderr.flush()
        else:
            self.write(self.line())
