"""Bootstrap over runs: refit on resamples of the runs, for intervals on every parameter and prediction.

A resample draws n runs with replacement; it is given to a law as integer weights (how often each run was
drawn), so that one batched call refits every resample, each warm-started from the full fit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scaling.results import quantile_band


@dataclass
class BootstrapSamples:
    theta: np.ndarray  # (used, p): the refits that succeeded
    requested: int
    used: int  # resamples too degenerate to fit (e.g. too few distinct runs) are skipped


def resample_weights(n_points: int, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(n_resamples, n_points) counts: how often each run is drawn in each resample."""
    return rng.multinomial(n_points, np.full(n_points, 1.0 / n_points), size=n_resamples).astype(float)


def bootstrap(law, theta: np.ndarray, n_resamples: int, seed: int = 0) -> BootstrapSamples:
    """Refit `law` on `n_resamples` resamples of its runs, warm-started from the full fit `theta`.

    A resample counts as used when its refit is finite wherever the full fit is (a law may leave parts
    undefined, e.g. an envelope with too few points for its loss law).
    """
    if n_resamples <= 0:
        return BootstrapSamples(np.empty((0, len(theta))), 0, 0)
    weights = resample_weights(law.n_points, n_resamples, np.random.default_rng(seed))
    refits = law.fit(weights, start=theta[None, :]).theta
    defined = np.isfinite(theta)
    ok = np.isfinite(refits[:, defined]).all(axis=1)
    return BootstrapSamples(refits[ok], n_resamples, int(ok.sum()))


def intervals(values: dict[str, np.ndarray], level: float) -> dict[str, tuple[float, float]]:
    """Percentile intervals of each named sample array; names with fewer than two finite samples are left out."""
    out = {}
    for name, samples in values.items():
        low, high = quantile_band(np.asarray(samples, dtype=float), level)
        if np.isfinite(low[0]):
            out[name] = (float(low[0]), float(high[0]))
    return out
