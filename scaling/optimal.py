"""Compute-optimal allocation and predicted loss at a compute budget, with bootstrap intervals."""

from __future__ import annotations

import numpy as np

from scaling.results import FitResult, Prediction, honest_band

ALLOCATING_FORMS = ("chinchilla", "envelope", "isoflop")


def predict_at(law, theta: np.ndarray, samples: np.ndarray, compute: float, level: float,
               requested: int | None = None, sigma: np.ndarray | None = None, seed: int = 0) -> Prediction:
    """Loss (and, where the law allocates compute, N_opt, D_opt) at `compute`, intervals from the bootstrap
    `samples` out of `requested` resamples (failed ones widen them). With `sigma` (each resample's noise on log
    loss) also the interval for the loss of one new run: the law's sample times exp(σ*·z)."""
    c = np.array([float(compute)])
    loss = float(law.predict(theta, c)[0, 0])
    have_samples = samples is not None and len(samples) >= 2
    requested = requested or (len(samples) if samples is not None else 0)

    def band(values):
        return honest_band(values, level, requested) if have_samples else ([np.nan], [np.nan])

    law_samples = law.predict(samples, c)[:, 0] if have_samples else None
    low, high = band(law_samples)
    prediction = Prediction(compute=float(compute), loss=loss, low=float(low[0]), high=float(high[0]))
    if have_samples and sigma is not None and np.isfinite(sigma).all():
        noise = np.random.default_rng(seed).standard_normal(len(law_samples))
        run_low, run_high = band(law_samples * np.exp(sigma * noise))
        prediction.run_low, prediction.run_high = float(run_low[0]), float(run_high[0])
    allocation = law.allocate(theta, c)
    if allocation is not None:
        n_opt, d_opt = float(allocation[0][0, 0]), float(allocation[1][0, 0])
        prediction.n_opt, prediction.d_opt, prediction.tokens_per_param = n_opt, d_opt, d_opt / n_opt
        if have_samples:
            n_samples, d_samples = law.allocate(samples, c)
            prediction.n_opt_interval = tuple(float(v[0]) for v in band(n_samples[:, 0]))
            prediction.d_opt_interval = tuple(float(v[0]) for v in band(d_samples[:, 0]))
    return prediction


def compute_optimal(fit: FitResult, compute: float) -> Prediction:
    """N*(C), D*(C), tokens per parameter and predicted loss with its interval, for a chinchilla, envelope or
    isoflop fit.

    Parameters
    ----------
    fit
        A result of `fit_chinchilla`, `fit_envelope`, `fit_isoflop` (or `fit_runs` with those forms).
    compute
        Training FLOPs, in the convention of the fit.
    """
    if fit.form not in ALLOCATING_FORMS:
        raise ValueError(f"compute_optimal needs a {', '.join(ALLOCATING_FORMS)} fit; this one is {fit.form!r}, "
                         "which does not model how compute splits between parameters and tokens")
    if not compute > 0:
        raise ValueError(f"compute must be positive, got {compute!r}")
    return predict_at(fit.law, fit.theta, fit.samples, compute, fit.ci_level, fit.bootstrap_requested)
