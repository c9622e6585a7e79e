"""Benchmark of the fits: Approach 3 on 250 points with 1,000 bootstrap resamples (target: under 60 s on 2
cores), plus the 1-D compute form on a 5-run tiny study.

    python bench/bench_fits.py            # the full benchmark, prints a table
    python bench/bench_fits.py --smoke    # a tiny version for CI (seconds; no timing target)
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from common import INFO, Row, check
import scaling

TRUTH = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
TARGET_SECONDS = 60.0


def chinchilla_data(count: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    n, d = 10 ** rng.uniform(7, 10, count), 10 ** rng.uniform(9, 12, count)
    loss = TRUTH["E"] + TRUTH["A"] / n ** TRUTH["alpha"] + TRUTH["B"] / d ** TRUTH["beta"]
    return n, d, loss * np.exp(rng.normal(0, 0.01, count))


def timed(label: str, points: int, resamples: int, fit):
    started = time.perf_counter()
    result = fit()
    seconds = time.perf_counter() - started
    fits = 1 + resamples + (1 if result.backtest else 0)
    print(f"{label:<32} {points:>6} {resamples:>10} {seconds:>9.2f} {points * fits / seconds:>14,.0f}")
    return result, seconds


def run(smoke: bool) -> float:
    """Print the fits' table; returns the seconds of the Approach-3 fit (with its bootstrap and backtest)."""
    # the smoke run skips the backtest: it would be a second full grid fit
    points, resamples, holdout = (20, 20, 0) if smoke else (250, 1000, 1)

    print(f"{'fit':<32} {'points':>6} {'resamples':>10} {'seconds':>9} {'points fitted/s':>14}")
    n, d, loss = chinchilla_data(points)
    chinchilla, seconds = timed("chinchilla (Approach 3)", points, resamples,
                                lambda: scaling.fit_chinchilla(n, d, loss, bootstrap=resamples, holdout_top=holdout,
                                                               predict_compute=[1e24]))
    c = np.geomspace(1e12, 1e16, 5)
    tiny = (1.8 + 60 * c**-0.12) * np.exp(np.random.default_rng(0).normal(0, 0.01, 5))
    timed("compute, tiny study", 5, resamples, lambda: scaling.fit_compute(c, tiny, bootstrap=resamples))

    p = chinchilla.params
    print(f"\nchinchilla fit: E={p['E']:.3f} A={p['A']:.1f} B={p['B']:.1f} alpha={p['alpha']:.3f} "
          f"beta={p['beta']:.3f} (truth E=1.69 A=406.4 B=410.7 alpha=0.34 beta=0.28); "
          f"{chinchilla.bootstrap_used} resamples used")
    return seconds


def measure(smoke: bool = False) -> list[Row]:
    seconds = run(smoke)
    size = "20 points, 20 resamples" if smoke else "250 points, 1,000 resamples + backtest"
    return [Row(f"fits: Approach 3, {size}", f"{seconds:.1f} s", f"< {TARGET_SECONDS:.0f} s",
                INFO if smoke else check(seconds, at_most=TARGET_SECONDS), seconds)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for CI")
    args = parser.parse_args(argv)
    for row in measure(args.smoke):
        print(f"{row.name}: {row.measured} (goal {row.goal}): {row.status}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
