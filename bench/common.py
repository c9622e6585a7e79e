"""What every benchmark shares: the result row the suite prints, and small measuring helpers.

Each bench_*.py module exposes `measure(smoke: bool) -> list[Row]` (used by bench/run_all.py, `make bench`)
and a `main()` that prints its own detail when run alone. Goals are checked on ratios measured side by side in
one run, never on absolute times: this machine is shared and noisy.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere: import the project's packages
    sys.path.insert(0, str(ROOT))

T = TypeVar("T")

MET, MISSED, SKIPPED, INFO = "met", "MISSED", "skipped", "info"


@dataclass(frozen=True)
class Row:
    """One line of the suite's table."""

    name: str  # what is measured, e.g. "orchestration: arscale vs plain PyTorch"
    measured: str  # the measurement as a person reads it, e.g. "0.97× (6,950 vs 7,160 tokens/s)"
    goal: str  # e.g. "≥ 0.95×"; "" for rows that only inform
    status: str  # MET, MISSED, SKIPPED or INFO
    value: float | None = None  # the number compared with the goal (logged to MLflow)
    note: str = ""  # why a goal was missed or a row skipped, or what the number depends on


def check(value: float, at_least: float | None = None, at_most: float | None = None) -> str:
    """MET if `value` is within the given bound(s), else MISSED."""
    ok = (at_least is None or value >= at_least) and (at_most is None or value <= at_most)
    return MET if ok else MISSED


# CPU benchmarks read two clocks: the wall clock, and this process's CPU time, which leaves out the time other
# processes held its cores. On a shared machine a long run loses a share of the wall clock to them that a short one,
# timed in a quiet moment, does not; CPU time puts the two side by side again (with one thread it is the wall time
# an idle machine would show).
WALL, CPU = "wall", "CPU"
CLOCKS = {WALL: time.perf_counter, CPU: time.process_time}


def clock_readings() -> dict[str, float]:
    """Every clock's reading now."""
    return {name: clock() for name, clock in CLOCKS.items()}


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    """(fn(), seconds it took)."""
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def peak_rss_mb(children: bool = False) -> float:
    """Peak resident memory of this process (or of its finished, waited-for children), in MiB."""
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss / 1024


def print_rows(rows: list[Row]) -> None:
    """The rows of one benchmark, as its main() ends with them."""
    print()
    for r in rows:
        print(f"{r.name}: {r.measured}  goal {r.goal or '-'}  [{r.status}]  {r.note}")
