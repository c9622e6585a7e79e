"""Bootstrap intervals for every parameter and prediction of a fit: two ways to resample.

``residual`` (the default): a parametric bootstrap around the full fit. The runs' noise σ (the spread of log L
around the fitted law: seed-to-seed noise and misfit; several seeds of one size are separate rows) is estimated
from the residuals with n − p degrees of freedom; each resample first draws its own σ* from that estimate's
sampling distribution (σ*² = σ̂²·dof / χ²_dof, so that intervals from a handful of runs are t-like rather than
too narrow), then new losses log L* = log L̂ + σ*·z at the same compute, and refits. The design (which sizes were
trained) stays fixed, so no resample is degenerate, however few the runs.

``runs``: resample the runs with replacement (n draws; integer weights, so one batched call refits every
resample). With few runs many resamples hold too few distinct runs to fit; they are counted as failed.

Failed refits are never dropped silently: intervals count them as unknown on both sides (results.honest_band), so
when more than the tail share fail, the interval is unbounded. Every refit is warm-started from the full fit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scaling.results import honest_band

METHODS = ("residual", "runs")


@dataclass
class BootstrapSamples:
    theta: np.ndarray  # (used, p): the refits that succeeded
    requested: int
    used: int
    sigma: np.ndarray  # (used,): each resample's noise σ* on log loss (for intervals of one new run)
    noise_sd: float | None = None  # σ̂ from the full fit's residuals
    noise_dof: int | None = None
    note: str | None = None  # why there are no resamples

    @property
    def failed(self) -> int:
        return self.requested - self.used


def residual_noise(law, theta: np.ndarray) -> tuple[float | None, int]:
    """σ̂ of log loss around the fit (root mean square residual with n − p degrees of freedom) and the dof."""
    log_fit = np.log(law.predict_points(theta[None, :], np.arange(law.n_points))[0])
    dof = law.n_points - len(theta)
    if dof < 1 or not np.isfinite(log_fit).all():
        return None, max(dof, 0)
    residuals = np.log(law.loss) - log_fit
    return float(np.sqrt(np.sum(residuals**2) / dof)), dof


def resample_weights(n_points: int, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(n_resamples, n_points) counts: how often each run is drawn in each resample."""
    return rng.multinomial(n_points, np.full(n_points, 1.0 / n_points), size=n_resamples).astype(float)


def bootstrap(law, theta: np.ndarray, n_resamples: int, seed: int = 0, method: str = "residual") -> BootstrapSamples:
    """Refit `law` on `n_resamples` resamples (`method` "residual" or "runs"), warm-started from the full fit
    `theta`. A resample counts as used when its refit is finite wherever the full fit is (a law may leave parts
    undefined, e.g. an envelope with too few points for its loss law)."""
    if method not in METHODS:
        raise ValueError(f"unknown bootstrap method {method!r}; one of {', '.join(METHODS)}")
    noise_sd, dof = residual_noise(law, theta) if hasattr(law, "log_predict") else (None, 0)
    empty = BootstrapSamples(np.empty((0, len(theta))), n_resamples, 0, np.empty(0), noise_sd, dof)
    if n_resamples <= 0:
        return BootstrapSamples(np.empty((0, len(theta))), 0, 0, np.empty(0), noise_sd, dof)
    rng = np.random.default_rng(seed)
    if method == "residual":
        if noise_sd is None:
            empty.note = (f"the residual bootstrap needs more runs than the law's {len(theta)} parameters "
                          f"({law.n_points} runs): no intervals")
            return empty
        sigma = noise_sd * np.sqrt(dof / rng.chisquare(dof, size=n_resamples))
        log_fit = np.log(law.predict_points(theta[None, :], np.arange(law.n_points))[0])
        targets = log_fit[None, :] + sigma[:, None] * rng.standard_normal((n_resamples, law.n_points))
        refits = law.fit(np.ones((n_resamples, law.n_points)), start=theta[None, :], log_targets=targets).theta
    else:
        weights = resample_weights(law.n_points, n_resamples, rng)
        refits = law.fit(weights, start=theta[None, :]).theta
        sigma = np.full(n_resamples, noise_sd if noise_sd is not None else np.nan)
    defined = np.isfinite(theta)
    ok = np.isfinite(refits[:, defined]).all(axis=1)
    return BootstrapSamples(refits[ok], n_resamples, int(ok.sum()), sigma[ok], noise_sd, dof)


def intervals(values: dict[str, np.ndarray], level: float, requested: int) -> dict[str, tuple[float, float]]:
    """Percentile intervals of each named sample array over `requested` resamples (failed ones count as unknown
    on both sides); names whose interval is unbounded at both ends are left out."""
    out = {}
    for name, samples in values.items():
        low, high = honest_band(np.asarray(samples, dtype=float), level, requested)
        if np.isfinite(low[0]) or np.isfinite(high[0]):
            out[name] = (float(low[0]), float(high[0]))
    return out
