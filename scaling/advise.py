"""Next-run advisor: which run, within a budget, would most narrow the prediction at a target compute.

For each candidate run, its loss is drawn from the current fit's posterior predictive (a bootstrap refit's
prediction times log-normal noise at the fit's residual scale), the fit is bootstrapped again with that run
added, and the width of the predicted loss's interval at the target is compared with today's. Candidates are
ranked by the expected width after adding them, averaged over a few draws.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from scaling.fit import fit_law, fit_runs
from scaling.forms import ADVISED_FORMS
from scaling.laws import Chinchilla, PowerLaw


@dataclass
class Advice:
    params: float | None  # N of the candidate (None for the compute form, which only knows C)
    tokens: float | None
    compute: float  # its cost in training FLOPs
    width_now: float  # the interval width at the target today
    expected_width: float  # the expected width with this run added
    relative_reduction: float  # 1 − expected_width / width_now


def advise(runs: pd.DataFrame, target_compute: float, budget: float, *, form: str = "chinchilla",
           n_candidates: int = 12, top: int = 5, bootstrap: int = 200, draws: int = 2, convention: str | None = None,
           ci_level: float = 0.9, seed: int = 0) -> list[Advice]:
    """Rank candidate runs costing at most `budget` FLOPs by how much each is expected to shrink the bootstrap
    interval of the predicted loss at `target_compute`.

    Parameters
    ----------
    runs
        The run table, as for `fit_runs`.
    target_compute
        The compute at which the prediction matters.
    budget
        The most FLOPs the next run may cost.
    form
        ``chinchilla``: candidates are (N, D) pairs on the budget's isoFLOP line and on a quarter of it, N from a
        tenth to ten times today's N_opt there. ``compute``: candidates are compute levels up to the budget.
    n_candidates, top, bootstrap, draws
        Candidates tried, how many to return, resamples per refit, loss draws per candidate.
    """
    if form not in ADVISED_FORMS:
        raise ValueError(f"advise supports the forms {', '.join(ADVISED_FORMS)}, not {form!r}")
    if not (budget > 0 and target_compute > 0):
        raise ValueError("budget and target_compute must be positive")
    rng = np.random.default_rng(seed)
    current = fit_runs(runs, form, convention=convention, bootstrap=bootstrap, holdout_top=0,
                       predict_compute=[target_compute], ci_level=ci_level, seed=seed)
    width_now = current.predictions[0].high - current.predictions[0].low
    law, theta, samples = current.law, current.theta, current.samples
    noise = _residual_scale(law, theta)

    advice = []
    for n, d, cost in _candidates(law, theta, budget, n_candidates):
        widths = []
        for _ in range(draws):
            sample = samples[rng.integers(len(samples))][None, :]
            predicted = (law.loss_at(sample, n, d) if n is not None else law.predict(sample, [cost]))[0, 0]
            loss = float(predicted * np.exp(rng.normal(0.0, noise)))
            refit = fit_law(_with_run(law, n, d, cost, loss), form, bootstrap=bootstrap, holdout_top=0,
                            predict_compute=[target_compute], ci_level=ci_level, seed=seed, start=theta)
            widths.append(refit.predictions[0].high - refit.predictions[0].low)
        expected = float(np.nanmean(widths))
        advice.append(Advice(params=n, tokens=d, compute=float(cost), width_now=float(width_now),
                             expected_width=expected, relative_reduction=1 - expected / width_now))
    advice.sort(key=lambda a: a.expected_width)
    return advice[:top]


def _residual_scale(law, theta) -> float:
    """Robust standard deviation of the fit's log residuals (1.4826 × MAD); a floor keeps draws from being exact."""
    residual = np.log(law.predict_points(theta[None, :], np.arange(law.n_points))[0]) - np.log(law.loss)
    return max(1.4826 * float(np.median(np.abs(residual - np.median(residual)))), 1e-4)


def _candidates(law, theta, budget, count):
    """(N, D, cost) triples within the budget: N and D for chinchilla, cost alone for the compute form."""
    if isinstance(law, Chinchilla):
        per_line = max(count // 2, 1)
        out = []
        for cost in (budget, budget / 4):
            n_opt = float(law.allocate(theta[None, :], [cost])[0][0, 0])
            for n in np.geomspace(n_opt / 10, n_opt * 10, per_line):
                out.append((float(n), float(cost / (law.k * n)), float(cost)))
        return out
    return [(None, None, float(c)) for c in np.geomspace(budget / 10, budget, count)]


def _with_run(law, n, d, cost, loss):
    """The same law with one more run."""
    if isinstance(law, Chinchilla):
        return Chinchilla(np.append(law.n, n), np.append(law.d, d), np.append(law.loss, loss),
                          flops_per_param_token=law.k, delta=law.delta)
    # the same x_ref keeps the current θ (in normalised units) a valid warm start
    return PowerLaw(np.append(law.x, cost), np.append(law.loss, loss), x_ref=law.x_ref, delta=law.delta)
