"""Scaling-law fits for autoregressive models: numpy, scipy, pandas and matplotlib only.

    runs = scaling.load_runs_csv("runs.csv")
    fit = scaling.fit_runs(runs, "compute", predict_compute=[1e18])
    fit.params, fit.ci, fit.backtest, fit.predictions, fit.to_dict()

Modules: `runs` (loading, hygiene), `flops` (compute conventions), `forms` (their names), `laws` and `frontier`
(the forms), `fit` (per-form functions, `fit_runs`), `bootstrap`, `backtest`, `optimal` (compute-optimal allocation),
`advise` (next run to train), `selection` (forms compared by out-of-sample error), `annealing` (whole loss curves
from the learning-rate schedule), `plots`, `optimize` (the batched L-BFGS under the fits).
"""

import importlib

# name -> the module that holds it; imported on first use, so `import scaling.flops` (which training needs)
# does not pull in pandas, scipy or matplotlib
_EXPORTS = {
    "Advice": "advise", "advise": "advise", "compute_optimal": "optimal",
    "Backtest": "results", "FitResult": "results", "Prediction": "results",
    "FitInputError": "runs", "load_runs_csv": "runs", "FORMS": "forms",
    "FormComparison": "selection", "compare_forms": "selection",
    **{name: "annealing" for name in ("AnnealingCurve", "backtest_annealing", "fit_annealing", "select_annealing")},
    **{name: "fit" for name in ("fit_chinchilla", "fit_compute", "fit_envelope", "fit_isoflop", "fit_law",
                                "fit_params", "fit_runs", "fit_tokens")},
}
__all__ = sorted([*_EXPORTS, "plots"])


def __getattr__(name: str):
    if name == "plots":
        return importlib.import_module("scaling.plots")
    if name in _EXPORTS:
        module = importlib.import_module(f"scaling.{_EXPORTS[name]}")
        # bind every name of that module here now: importing scaling.advise just bound `advise` to the module
        globals().update({n: getattr(module, n) for n, where in _EXPORTS.items() if where == _EXPORTS[name]})
        return globals()[name]
    raise AttributeError(f"module 'scaling' has no attribute {name!r}")
