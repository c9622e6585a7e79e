"""Scaling-law fits for autoregressive models: numpy, scipy, pandas and matplotlib only.

    runs = scaling.load_runs_csv("runs.csv")
    fit = scaling.fit_runs(runs, "compute", predict_compute=[1e18])
    fit.params, fit.ci, fit.backtest, fit.predictions, fit.to_dict()

Modules: `runs` (loading, hygiene), `flops` (compute conventions), `laws` and `frontier` (the forms),
`fit` (per-form functions, `fit_runs`), `bootstrap`, `backtest`, `optimal` (compute-optimal allocation),
`advise` (next run to train), `plots`, `optimize` (the batched L-BFGS under the fits).
"""

from scaling import plots
from scaling.advise import Advice, advise
from scaling.fit import (FORMS, fit_chinchilla, fit_compute, fit_envelope, fit_isoflop, fit_law, fit_params,
                         fit_runs, fit_tokens)
from scaling.optimal import compute_optimal
from scaling.results import Backtest, FitResult, Prediction
from scaling.runs import FitInputError, load_runs_csv

__all__ = [
    "Advice", "Backtest", "FORMS", "FitInputError", "FitResult", "Prediction", "advise", "compute_optimal",
    "fit_chinchilla", "fit_compute", "fit_envelope", "fit_isoflop", "fit_law", "fit_params", "fit_runs",
    "fit_tokens", "load_runs_csv", "plots",
]
