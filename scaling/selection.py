"""Choosing a form by how well it extrapolates: each candidate refitted without the largest compute budget and
at each rolling-origin cut (scaling.backtest), on the same runs, and compared by its mean out-of-sample error.

A form the design cannot identify is reported as such instead of being fitted: Chinchilla's L(N, D) needs runs
whose tokens per parameter vary (on a tokens-per-parameter design N and D move together, so A/N^α and B/D^β
cannot be told apart).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from scaling.backtest import ROLLING_RATIOS
from scaling.fit import fit_runs
from scaling.results import jsonable
from scaling.runs import FitInputError

SELECTION_BOOTSTRAP = 200  # enough resamples to judge identifiability; the chosen form is refitted in full


@dataclass
class FormComparison:
    forms: list[dict] = field(default_factory=list)  # per form: errors, parameters, identified, or why not fitted
    selected: str | None = None  # the identified form with the lowest mean out-of-sample error

    def to_dict(self) -> dict:
        return jsonable({"forms": self.forms, "selected": self.selected})


def compare_forms(runs: pd.DataFrame, forms: Sequence[str] = ("compute", "compute_pure", "chinchilla"), *,
                  convention: str | None = None, ratios: Sequence[float] = ROLLING_RATIOS,
                  seed: int = 0) -> FormComparison:
    """Each form's out-of-sample errors on `runs` (a run table, as for `fit_runs`).

    Returns
    -------
    FormComparison
        ``forms``: one dict per form with ``form``, ``n_params``, ``backtest_error`` (the largest budget held out),
        ``rolling`` (rolling-origin entries), ``mean_error`` (the mean of those errors), ``identified``, or
        ``error`` (why it was not fitted); ``mean_error`` is over the cuts every fitted form could be refitted at
        (``scored_on``); ``selected``: the lowest ``mean_error`` among the identified forms
        (among all, if none is).
    """
    out = FormComparison()
    for form in forms:
        if form == "chinchilla" and (reason := _collinear(runs)):
            out.forms.append({"form": form, "error": reason})
            continue
        try:
            fit = fit_runs(runs, form, convention=convention if form != "chinchilla" else None,
                           bootstrap=SELECTION_BOOTSTRAP, holdout_top=1, backtest_ratios=ratios, seed=seed)
        except FitInputError as e:
            out.forms.append({"form": form, "error": str(e)})
            continue
        out.forms.append({"form": form, "n_params": len(fit.theta),
                          "backtest_error": fit.backtest.mean_abs_rel_error if fit.backtest else None,
                          "rolling": fit.rolling, "identified": fit.identified, "unidentified": fit.unidentified})
    # every form is scored on the cuts all of them could be refitted at, so that their means compare
    fitted = [f for f in out.forms if "error" not in f]
    shared = [r for r in ratios if all(_error_at(f, r) is not None for f in fitted)]
    for f in fitted:
        errors = ([f["backtest_error"]] if f["backtest_error"] is not None else []) + [_error_at(f, r) for r in shared]
        f["mean_error"] = float(np.mean(errors)) if errors else None
        f["scored_on"] = ["largest budget held out"] * (f["backtest_error"] is not None) + [f"{r:g}×" for r in shared]
    scored = [f for f in out.forms if f.get("mean_error") is not None]
    if scored:  # an identified form first (an unidentified one makes no predictions), then the lowest error
        out.selected = min(scored, key=lambda f: (not f["identified"], f["mean_error"], f["n_params"]))["form"]
    return out


def _error_at(form: dict, ratio: float) -> float | None:
    return next((r["abs_rel_error"] for r in form["rolling"] if r["ratio"] == ratio), None)


def _collinear(runs: pd.DataFrame) -> str | None:
    """Why L(N, D) cannot be identified on these runs, or None: each size has one token budget (D a function of N,
    as in a tokens-per-parameter design), so A/N^α and B/D^β cannot be told apart."""
    n_column = "params_nonembedding" if "params_nonembedding" in runs.columns else "params"  # the N chinchilla fits
    if not {n_column, "tokens"} <= set(runs.columns):
        return None
    ok = runs[(runs["status"] == "ok") & (runs["loss"] > 0)] if "status" in runs else runs
    pairs = ok[[n_column, "tokens"]].drop_duplicates().sort_values(n_column)
    if len(pairs) and pairs[n_column].is_unique and pairs["tokens"].is_monotonic_increasing:
        return ("each size was trained at one token budget that grows with its size, so N and D move together and "
                "L(N, D) = E + A/N^α + B/D^β is not identified; an isoFLOP grid identifies it")
    return None
