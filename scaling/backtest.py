"""Backtests: refit without the largest compute budgets and see how well the law predicts them.

Runs within a factor 1 + BUDGET_RTOL of compute share a budget (the seeds and learning rates of one size, the
sizes of one isoFLOP budget), and a budget is held out whole: holding out one run of a budget whose other runs stay
in the fit would test interpolation. The allocation forms (envelope, isoflop) predict the loss of the
compute-optimal model, so a held-out budget is compared with its best run.

- `backtest`: the top `holdout_top` budgets held out (the leave-largest-budget-out test);
- `rolling_origin`: fitted only on the runs up to 1/r of the largest budget's compute, for several r, each
  predicting the largest budget: how the error grows with the extrapolation ratio.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from scaling.frontier import group_budgets
from scaling.results import Backtest

BUDGET_RTOL = 0.25
ROLLING_RATIOS = (2.0, 4.0, 8.0)


def budgets_of(law) -> np.ndarray:
    """The budget index of each of the law's runs (by its axis: compute, or N / D for the 1-D forms)."""
    return group_budgets(np.asarray(law.axis, dtype=float), BUDGET_RTOL)


def _predict_held(law, weights: np.ndarray, held: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Refit with `weights` from scratch and predict the `held` runs: (x, actual, predicted), one entry per run,
    or for allocation laws one per held budget (its best run); None if the refit cannot predict them."""
    theta = law.fit(weights).theta
    if hasattr(law, "optimal_points"):  # envelope / isoflop: the best run of each held-out budget
        budgets = budgets_of(law)
        held = np.array([min(np.flatnonzero((budgets == b) & np.isin(np.arange(law.n_points), held)),
                             key=lambda i: law.loss[i]) for b in np.unique(budgets[held])])
    predicted = law.predict_points(theta, held)[0]
    if not np.isfinite(predicted).all():
        return None
    return held, law.loss[held], predicted


def _fittable(law, weights: np.ndarray) -> bool:
    kept = int((weights[0] > 0).sum())
    ok = getattr(law, "identifiable", None)
    return kept >= law.min_points and (ok is None or bool(ok(weights)[0]))


def backtest(law, holdout_top: int, labels: list[dict] | None = None) -> tuple[Backtest | None, str | None]:
    """Refit `law` from scratch without its `holdout_top` largest compute budgets (largest N or D for the 1-D
    params / tokens forms) and predict their loss.

    Returns
    -------
    (Backtest, None), or (None, reason) when a backtest is not possible.
    """
    if holdout_top <= 0:
        return None, "no backtest requested (holdout_top = 0)"
    budgets = budgets_of(law)
    n_budgets = budgets.max() + 1
    if holdout_top >= n_budgets:
        return None, f"the runs form {n_budgets} compute budget(s): none would be left to fit"
    held = np.flatnonzero(budgets >= n_budgets - holdout_top)
    weights = np.ones((1, law.n_points))
    weights[0, held] = 0.0
    if not _fittable(law, weights):
        return None, (f"holding out the top {holdout_top} of {n_budgets} budgets leaves {int(weights.sum())} runs, "
                      f"too few for the fit (it needs {law.min_points} runs of enough distinct sizes)")
    outcome = _predict_held(law, weights, held)
    if outcome is None:
        return None, "the fit without the held-out runs could not predict them (too few usable points)"
    rows, actual, predicted = outcome
    errors = np.abs(predicted - actual) / actual
    kept_max = np.asarray(law.axis, dtype=float)[weights[0] > 0].max()
    return Backtest(holdout_top=holdout_top, x=np.asarray(law.axis, dtype=float)[rows].tolist(),
                    actual=actual.tolist(), predicted=predicted.tolist(), abs_rel_error=errors.tolist(),
                    mean_abs_rel_error=float(errors.mean()), runs=[labels[i] for i in rows] if labels else [],
                    ratio=float(np.asarray(law.axis, dtype=float)[rows].max() / kept_max)), None


def rolling_origin(law, ratios: Sequence[float] = ROLLING_RATIOS) -> list[dict]:
    """For each ratio r: refit on the runs whose compute is at most 1/r of the largest budget's, and predict that
    budget. Each entry: ratio asked, ratio_actual (the budget's compute / the largest compute kept), n_runs fitted,
    abs_rel_error (mean over the budget's runs; its best run for allocation laws), or a note why not possible."""
    axis = np.asarray(law.axis, dtype=float)
    budgets = budgets_of(law)
    top = np.flatnonzero(budgets == budgets.max())
    top_compute = float(np.exp(np.mean(np.log(axis[top]))))
    out = []
    for ratio in ratios:
        weights = (axis <= top_compute / ratio * (1 + 1e-9)).astype(float)[None, :]
        entry = {"ratio": float(ratio), "n_runs": int(weights.sum())}
        if not _fittable(law, weights):
            out.append({**entry, "abs_rel_error": None,
                        "note": f"{int(weights.sum())} runs at or below 1/{ratio:g} of the largest compute: too few"})
            continue
        outcome = _predict_held(law, weights, top)
        if outcome is None:
            out.append({**entry, "abs_rel_error": None, "note": "the fit could not predict the largest budget"})
            continue
        _, actual, predicted = outcome
        out.append({**entry, "ratio_actual": top_compute / axis[weights[0] > 0].max(),
                    "abs_rel_error": float(np.mean(np.abs(predicted - actual) / actual))})
    return out
