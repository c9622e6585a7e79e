"""What a fit returns: `FitResult`, its `Backtest` and its `Prediction`s, and their JSON form."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass
class Backtest:
    """The fit repeated without its `holdout_top` largest compute budgets (every run in them: seeds, other sizes
    of an isoFLOP budget), predicting them. For the allocation forms (envelope, isoflop), which predict the loss
    of the compute-optimal model, each held-out budget is compared with its best run."""

    holdout_top: int  # budgets held out
    x: list[float]  # the held-out runs' compute (their N or D for the params / tokens forms)
    actual: list[float]
    predicted: list[float]
    abs_rel_error: list[float]  # |predicted − actual| / actual
    mean_abs_rel_error: float
    runs: list[dict] = field(default_factory=list)  # labels of the held-out runs
    ratio: float | None = None  # extrapolation: the held-out budget's compute / the largest compute kept


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
    # the interval for the loss of ONE new run at this compute: the law's uncertainty and the run-to-run noise
    run_low: float | None = None
    run_high: float | None = None


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
    interval_method: str = "residual"  # "residual" (parametric bootstrap) or "runs" (bootstrap over runs)
    noise_sd: float | None = None  # σ of log loss around the fit (seed noise and misfit), from its residuals
    noise_dof: int | None = None
    bootstrap_failed: int = 0  # resamples whose refit failed: counted as unknown on both sides of every interval
    unidentified: list[str] = field(default_factory=list)  # why a parameter is not determined (empty: identified)
    rolling: list[dict] = field(default_factory=list)  # rolling-origin backtests (scaling.backtest.rolling_origin)
    excluded_points: list[tuple[float, float]] = field(default_factory=list, repr=False)  # (x, loss), for plots
    law: Any = field(default=None, repr=False)
    theta: np.ndarray | None = field(default=None, repr=False)
    samples: np.ndarray | None = field(default=None, repr=False)

    @property
    def identified(self) -> bool:
        """Whether every parameter is determined by the runs (see `scaling.fit.unidentified_reasons`)."""
        return not self.unidentified

    def predict(self, x) -> np.ndarray:
        """Loss along the fit's axis: at compute x (at N or D for the params and tokens forms); for
        chinchilla, envelope and isoflop fits, the loss of the compute-optimal model."""
        return self.law.predict(self.theta, np.atleast_1d(np.asarray(x, dtype=float)))[0]

    def predict_interval(self, x) -> tuple[np.ndarray, np.ndarray]:
        """The bootstrap interval of `predict(x)` at ``ci_level``: (low, high) arrays, NaN without samples, ±inf
        where too many resamples failed (they count as unknown, see `honest_band`)."""
        x = np.atleast_1d(np.asarray(x, dtype=float))
        if self.samples is None or len(self.samples) < 2:
            return np.full(len(x), np.nan), np.full(len(x), np.nan)
        requested = max(self.bootstrap_requested, len(self.samples))
        return honest_band(self.law.predict(self.samples, x), self.ci_level, requested)

    def to_dict(self) -> dict:
        """A JSON-ready dict (no NaN: missing numbers are None) with the keys of `arscale fit --json`."""
        out = {"form": self.form, **self.params, "ci": self.ci,
               "backtest": asdict(self.backtest) if self.backtest else None,
               "predictions": [asdict(p) for p in self.predictions], "n_points": self.n_points,
               "excluded": self.excluded, "convention": self.convention, "warnings": self.warnings,
               "ci_level": self.ci_level, "bootstrap": {"requested": self.bootstrap_requested,
                                                        "used": self.bootstrap_used, "failed": self.bootstrap_failed},
               "backtest_note": self.backtest_note, "interval_method": self.interval_method,
               "noise_sd": self.noise_sd, "noise_dof": self.noise_dof, "unidentified": self.unidentified,
               "identified": self.identified, "rolling": self.rolling}
        return jsonable(out)


def honest_band(samples: np.ndarray, level: float, requested: int) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval at `level` over axis 0 of `requested` resamples of which `samples` holds those that
    succeeded: each missing resample (and each NaN) counts as −∞ for the lower end and +∞ for the upper, so failed
    refits widen the interval instead of silently narrowing it; past the tail share the end is infinite."""
    samples = np.asarray(samples, dtype=float)
    if samples.ndim == 1:
        samples = samples[:, None]
    tail = (1 - level) / 2
    low_index = int(np.floor(tail * (requested - 1)))
    high_index = int(np.ceil((1 - tail) * (requested - 1)))
    low, high = np.full(samples.shape[1], -np.inf), np.full(samples.shape[1], np.inf)
    for j in range(samples.shape[1]):
        values = np.sort(samples[np.isfinite(samples[:, j]), j])
        failed = requested - len(values)
        if 0 <= low_index - failed < len(values):
            low[j] = values[low_index - failed]
        if high_index < len(values):
            high[j] = values[high_index]
    return low, high


def quantile_band(samples: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval at `level` over axis 0, ignoring NaN (resamples where a value was not defined): for
    plots' bands; reported intervals use `honest_band`."""
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
