"""What a fit returns: `FitResult`, its `Backtest` and its `Prediction`s, and their JSON form."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass
class Backtest:
    """The fit repeated without the `holdout_top` largest-compute runs, predicting them."""

    holdout_top: int
    x: list[float]  # the held-out runs' compute (their N or D for the params / tokens forms)
    actual: list[float]
    predicted: list[float]
    abs_rel_error: list[float]  # |predicted − actual| / actual
    mean_abs_rel_error: float
    runs: list[dict] = field(default_factory=list)  # labels of the held-out runs


@dataclass
class Prediction:
    """Predicted loss at a compute budget, with its bootstrap interval, and for the forms that allocate
    compute, the optimal parameters and tokens (with intervals)."""

    compute: float
    loss: float | None
    low: float | None
    high: float | None
    n_opt: float | None = None
    d_opt: float | None = None
    tokens_per_param: float | None = None
    n_opt_interval: tuple[float, float] | None = None
    d_opt_interval: tuple[float, float] | None = None


@dataclass
class FitResult:
    """A fitted scaling law with its bootstrap intervals, backtest and predictions.

    ``params`` holds the reported parameters (E, A, alpha, ...; the keys depend on the form) and ``ci`` their
    intervals at ``ci_level``, plus ``loss@C``, ``n_opt@C``, ``d_opt@C`` for each prediction's compute C.
    ``law``, ``theta`` and ``samples`` (the bootstrap's parameter vectors) are what `predict`, the plots and
    `compute_optimal` work from.
    """

    form: str
    params: dict[str, float]
    ci: dict[str, tuple[float, float]]
    backtest: Backtest | None
    predictions: list[Prediction]
    n_points: int
    excluded: list[dict]
    convention: str | None
    warnings: list[str]
    ci_level: float
    bootstrap_requested: int
    bootstrap_used: int
    backtest_note: str | None = None  # why there is no backtest
    x_label: str = "compute"
    excluded_points: list[tuple[float, float]] = field(default_factory=list, repr=False)  # (x, loss), for plots
    law: Any = field(default=None, repr=False)
    theta: np.ndarray | None = field(default=None, repr=False)
    samples: np.ndarray | None = field(default=None, repr=False)

    def predict(self, x) -> np.ndarray:
        """Loss along the fit's axis: at compute x (at N or D for the params and tokens forms); for
        chinchilla, envelope and isoflop fits, the loss of the compute-optimal model."""
        return self.law.predict(self.theta, np.atleast_1d(np.asarray(x, dtype=float)))[0]

    def predict_interval(self, x) -> tuple[np.ndarray, np.ndarray]:
        """The bootstrap interval of `predict(x)` at ``ci_level``: (low, high) arrays, NaN without samples."""
        x = np.atleast_1d(np.asarray(x, dtype=float))
        if self.samples is None or len(self.samples) < 2:
            return np.full(len(x), np.nan), np.full(len(x), np.nan)
        return quantile_band(self.law.predict(self.samples, x), self.ci_level)

    def to_dict(self) -> dict:
        """A JSON-ready dict (no NaN: missing numbers are None) with the keys of `arscale fit --json`."""
        out = {"form": self.form, **self.params, "ci": self.ci,
               "backtest": asdict(self.backtest) if self.backtest else None,
               "predictions": [asdict(p) for p in self.predictions], "n_points": self.n_points,
               "excluded": self.excluded, "convention": self.convention, "warnings": self.warnings,
               "ci_level": self.ci_level, "bootstrap": {"requested": self.bootstrap_requested,
                                                        "used": self.bootstrap_used},
               "backtest_note": self.backtest_note}
        return jsonable(out)


def quantile_band(samples: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval at `level` over axis 0, ignoring NaN (resamples where a value was not defined)."""
    tail = (1 - level) / 2
    with np.errstate(invalid="ignore"):
        if samples.ndim == 1:
            samples = samples[:, None]
        finite = np.isfinite(samples)
        low = np.full(samples.shape[1], np.nan)
        high = np.full(samples.shape[1], np.nan)
        enough = finite.sum(axis=0) >= 2
        if enough.any():
            q = np.nanquantile(np.where(finite, samples, np.nan)[:, enough], [tail, 1 - tail], axis=0)
            low[enough], high[enough] = q
    return low, high


def jsonable(value):
    """Plain Python values for json.dumps: numpy scalars to Python, NaN and inf to None, tuples to lists."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value
