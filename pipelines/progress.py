"""Progress lines for long steps: rate-limited, one line each, readable in a terminal and in logs."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from armodels.files import write_json_atomic

PROGRESS_FILE = "progress.json"  # in a training run's folder: where it is (TrainingProgress)


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
    """Prints `[name] 45% 0.9M/2.0M tokens loss 3.21 val 3.30 8.2k tok/s ETA 1m12s` at most every `every` s,
    and with `record`, keeps the same numbers in that JSON file (PROGRESS_FILE in the run's folder) at most every
    `record_every` s, for `arscale study status` and the study's progress line."""

    def __init__(self, name: str, total_tokens: int, every: float = 15.0, *, record: Path | None = None,
                 record_every: float = 5.0):
        self.name, self.total, self.every = name, total_tokens, every
        self.record, self.record_every = record, record_every
        self._last = self._last_record = 0.0
        self._val = None

    def __call__(self, metrics: dict) -> None:
        if "val_loss" in metrics:
            self._val = metrics["val_loss"]
            return
        now = time.monotonic()
        done = metrics["progress"] >= 1
        rate = metrics["tokens_per_s"]
        eta = (self.total - metrics["tokens"]) / rate if rate else 0
        if self.record and (now - self._last_record >= self.record_every or done):
            self._last_record = now
            write_json_atomic(self.record, {
                "tokens": metrics["tokens"], "total_tokens": self.total, "loss": metrics["loss"],
                "val_loss_subset": self._val, "tokens_per_s": rate, "eta_s": eta, "updated": time.time()})
        if now - self._last < self.every and not done and metrics["step"] > 0:
            return
        self._last = now
        val = f" val {self._val:.3f}" if self._val is not None else ""
        print(f"[{self.name}] {metrics['progress']:4.0%} {human(metrics['tokens'])}/{human(self.total)} tokens "
              f"loss {metrics['loss']:.3f}{val} {human(rate)} tok/s ETA {duration(eta)}", flush=True)


def read_progress(folder: Path) -> dict | None:
    """A training run's last progress record (TrainingProgress), or None if it has none (yet)."""
    try:
        return json.loads((Path(folder) / PROGRESS_FILE).read_text())
    except (OSError, ValueError):
        return None


def describe_run_progress(record: dict, now: float | None = None) -> str:
    """`45% 0.9M/2.0M tokens, loss 3.21, ETA 1m12s (5s ago)`: a progress record as `study status` shows it."""
    now = time.time() if now is None else now
    fraction = record["tokens"] / max(record["total_tokens"], 1)
    age = max(0.0, now - record["updated"])
    return (f"{fraction:.0%} {human(record['tokens'])}/{human(record['total_tokens'])} tokens, "
            f"loss {record['loss']:.3f}, ETA {duration(record['eta_s'])} ({duration(age)} ago)")


class StudyProgress:
    """The study-wide line: `progress: 9/17 steps, 3/6 training runs, 2.1M/4.5M tokens, ETA ~2m10s`.

    Tokens count finished runs whole and running runs by their progress records. The ETA divides the training
    FLOPs left by the rate at which this invocation has trained FLOPs since its first training run started (a
    token of a large model costs more than one of a small model, and the largest runs start first); steps other
    than training are not in it. Shown after each step ends, and at most every `every` s while steps run.
    """

    def __init__(self, steps: int, work: dict[str, tuple[int, float]], every: float = 60.0):
        """`work`: each training step's name and its (tokens, FLOPs)."""
        self.steps, self.work, self.every = steps, work, every
        self.done_steps = 0
        self.done: set[str] = set()  # training runs finished
        self.earlier_flops = 0.0  # trained before this invocation
        self.training_since: float | None = None
        self._last = time.monotonic()

    def started(self, name: str) -> None:
        if name in self.work and self.training_since is None:
            self.training_since = time.monotonic()

    def finished(self, name: str, state: str) -> None:
        """Step `name` ended in `state` (an executor Outcome's: skipped, succeeded, failed, blocked, stopped)."""
        self.done_steps += 1
        if name in self.work and state in ("skipped", "succeeded"):
            self.done.add(name)
            if state == "skipped":
                self.earlier_flops += self.work[name][1]

    def line(self, running: dict[str, Path]) -> str:
        """`running`: each running step's name and the folder it writes (where its progress record is)."""
        fractions = {name: 1.0 for name in self.done}
        for name, folder in running.items():
            if name in self.work and (record := read_progress(folder)):
                fractions[name] = record["tokens"] / max(record["total_tokens"], 1)
        tokens = sum(self.work[n][0] * f for n, f in fractions.items())
        flops = sum(self.work[n][1] * f for n, f in fractions.items())
        total_tokens = sum(t for t, _ in self.work.values())
        total_flops = sum(f for _, f in self.work.values())
        eta = ""
        trained = flops - self.earlier_flops
        if self.training_since is not None and trained > 0 and flops < total_flops:
            rate = trained / (time.monotonic() - self.training_since)
            eta = f", ETA ~{duration((total_flops - flops) / rate)}"
        return (f"progress: {self.done_steps}/{self.steps} steps, {len(self.done)}/{len(self.work)} training runs, "
                f"{human(tokens)}/{human(total_tokens)} tokens{eta}")

    def due(self) -> bool:
        """True at most every `every` seconds (the caller then prints `line`)."""
        if time.monotonic() - self._last < self.every:
            return False
        self._last = time.monotonic()
        return True


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
