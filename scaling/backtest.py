"""Backtest: refit without the largest-compute runs and see how well the law predicts them."""

from __future__ import annotations

import numpy as np

from scaling.results import Backtest


def backtest(law, holdout_top: int, labels: list[dict] | None = None) -> tuple[Backtest | None, str | None]:
    """Refit `law` from scratch without its `holdout_top` runs of largest compute (largest N or D for the 1-D
    params / tokens forms) and predict their loss.

    Returns
    -------
    (Backtest, None), or (None, reason) when a backtest is not possible.
    """
    if holdout_top <= 0:
        return None, "no backtest requested (holdout_top = 0)"
    kept = law.n_points - holdout_top
    if kept < law.min_points:
        return None, (f"holding out {holdout_top} of {law.n_points} runs leaves {kept}, fewer than the "
                      f"{law.min_points} the fit needs")
    held = np.argsort(law.axis, kind="stable")[-holdout_top:]
    weights = np.ones((1, law.n_points))
    weights[0, held] = 0.0
    theta = law.fit(weights).theta
    predicted = law.predict_points(theta, held)[0]
    if not np.isfinite(predicted).all():
        return None, "the fit without the held-out runs could not predict them (too few usable points)"
    actual = law.loss[held]
    errors = np.abs(predicted - actual) / actual
    return Backtest(holdout_top=holdout_top, x=law.axis[held].tolist(), actual=actual.tolist(),
                    predicted=predicted.tolist(), abs_rel_error=errors.tolist(),
                    mean_abs_rel_error=float(errors.mean()),
                    runs=[labels[i] for i in held] if labels else []), None
