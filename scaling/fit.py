"""Fitting scaling laws: one function per form, and `fit_runs` for a run table.

=============  ==========================================  =================================================
form           law                                         method
=============  ==========================================  =================================================
``compute``    L(C) = E + A·C^−α                           Huber (δ = 1e-3) on log L, grid of starts
``params``     L(N) = E + A·N^−α                           same
``tokens``     L(D) = E + A·D^−α                           same
``chinchilla`` L(N, D) = E + A/N^α + B/D^β                 Hoffmann et al. 2022 Approach 3, with Besiroglu
                                                           et al. 2024's corrections (`laws.Chinchilla`)
``envelope``   N_opt ∝ C^a, D_opt ∝ C^b from the envelope  Approach 1 (`frontier.Envelope`)
``isoflop``    the same from isoFLOP parabola minima       Approach 2 (`frontier.IsoFLOP`)
=============  ==========================================  =================================================

The 1-D forms use the same objective as Approach 3 (the sum of Huber losses between log L̂ and log L), so that
all forms weigh runs alike and a few outlying runs pull none of them far.

Every form then goes through the same steps (`fit_law`): the full fit, a backtest without the largest runs,
a bootstrap over runs, and predictions at the requested compute budgets.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from scaling.backtest import ROLLING_RATIOS, rolling_origin
from scaling.backtest import backtest as run_backtest
from scaling.bootstrap import METHODS as BOOTSTRAP_METHODS
from scaling.bootstrap import bootstrap as run_bootstrap
from scaling.bootstrap import intervals
from scaling.flops import CONVENTION_COLUMNS, CONVENTIONS, training_flops
from scaling.forms import COMPUTE_FORMS, FORMS, PURE_FORMS
from scaling.frontier import Envelope, IsoFLOP
from scaling.laws import HUBER_DELTA, Chinchilla, LogSumExpLaw, PowerLaw, PurePowerLaw
from scaling.optimal import predict_at
from scaling.results import FitResult
from scaling.runs import FitInputError, require_columns, run_labels, usable_rows


def fit_law(law, form: str, *, bootstrap: int = 1000, holdout_top: int = 1, predict_compute: Sequence[float] = (),
            ci_level: float = 0.9, seed: int = 0, excluded: list[dict] | None = None, convention: str | None = None,
            labels: list[dict] | None = None, x_label: str = "compute", start: np.ndarray | None = None,
            interval: str = "residual", backtest_ratios: Sequence[float] = ROLLING_RATIOS) -> FitResult:
    """The steps every form shares: full fit, backtests, bootstrap, intervals, identifiability and predictions.

    `law` is one of `laws.PowerLaw`, `laws.PurePowerLaw`, `laws.Chinchilla`, `frontier.Envelope`,
    `frontier.IsoFLOP`. `start` warm-starts the full fit from a parameter vector instead of the grid (the advisor
    refits this way). `interval`: "residual" (parametric bootstrap with the runs' noise; the allocation laws,
    which have no residuals, fall back to "runs") or "runs" (see scaling.bootstrap). `holdout_top`: compute
    budgets held out by the backtest; `backtest_ratios`: the rolling-origin extrapolation ratios.
    """
    if law.n_points < law.min_points:
        raise FitInputError(f"the {form} fit needs at least {law.min_points} usable runs, got {law.n_points}"
                            + (f" ({len(excluded)} excluded)" if excluded else ""))
    if not 0 < ci_level < 1:
        raise ValueError(f"ci_level must be between 0 and 1, got {ci_level}")
    if interval not in BOOTSTRAP_METHODS:
        raise FitInputError(f"unknown interval method {interval!r}; one of {', '.join(BOOTSTRAP_METHODS)}")
    if predict_compute and form not in COMPUTE_FORMS:
        raise FitInputError(f"predictions at a compute budget need a compute-based form "
                            f"({', '.join(COMPUTE_FORMS)}), not {form!r}")
    full = law.fit(np.ones((1, law.n_points)), start=start)
    theta = full.theta[0]
    if not np.isfinite(theta[:4] if form in ("envelope", "isoflop") else theta).all():
        raise FitInputError(f"the {form} fit is not possible on these {law.n_points} runs: "
                            f"{'; '.join(full.warnings) or 'too few distinct points'}")
    warnings = list(full.warnings)
    backtest, backtest_note = run_backtest(law, holdout_top, labels)
    rolling = rolling_origin(law, backtest_ratios) if backtest_ratios else []
    method = interval if isinstance(law, LogSumExpLaw) else "runs"
    samples = run_bootstrap(law, theta, bootstrap, seed, method)
    if samples.note:
        warnings.append(samples.note)
    if method != interval:
        warnings.append(f"intervals by the bootstrap over runs: the {form} form has no residuals for the residual "
                        "bootstrap (a resample that leaves a budget too few sizes fails and widens them)")
    if bootstrap and samples.failed:
        warnings.append(f"bootstrap: {samples.failed} of {bootstrap} resamples could not be refitted; they count as "
                        "unknown on both sides of every interval")
    params = {name: float(v[0]) for name, v in law.values(theta).items()}
    ci = intervals(law.values(samples.theta), ci_level, bootstrap) if samples.used >= 2 else {}
    predictions = [predict_at(law, theta, samples.theta, c, ci_level, bootstrap, samples.sigma, seed)
                   for c in predict_compute]
    for p in predictions:
        for key, value, interval_ in (("loss", p.loss, (p.low, p.high)), ("n_opt", p.n_opt, p.n_opt_interval),
                                      ("d_opt", p.d_opt, p.d_opt_interval)):
            if value is not None and interval_ is not None and not np.isnan(interval_[0]):
                ci[f"{key}@{p.compute:.4g}"] = tuple(interval_)
    result = FitResult(form=form, params=params, ci=ci, backtest=backtest, predictions=predictions,
                       n_points=law.n_points, excluded=list(excluded or []), convention=convention,
                       warnings=warnings, ci_level=ci_level, bootstrap_requested=bootstrap,
                       bootstrap_used=samples.used, backtest_note=backtest_note, x_label=x_label, law=law,
                       theta=theta, samples=samples.theta, interval_method=method, noise_sd=samples.noise_sd,
                       noise_dof=samples.noise_dof, bootstrap_failed=samples.failed, rolling=rolling)
    result.unidentified = unidentified_reasons(result)
    return result


EXPONENTS = ("alpha", "beta", "a", "b")
MAX_EXPONENT_SPAN = 3.0  # an exponent whose interval spans more than 3× is not determined by the runs
# A fitted exponent above this is a step inside the runs' range (the loss flat on one side of it), not a power law
# they show: published scaling exponents are below 1 (allocation exponents below 1 by construction).
MAX_EXPONENT = 2.0


def unidentified_reasons(fit: FitResult) -> list[str]:
    """Why the runs do not determine the fit's parameters (empty: they do): an exponent whose interval spans more
    than 3× or reaches 0, or that is above MAX_EXPONENT (a step, not a power law), an E whose interval reaches 0
    (below 1e-3 × the fitted E or × the lowest loss: the runs cannot tell it from no floor at all; use the form
    without E), a parameter without a finite interval, or no bootstrap to tell."""
    if fit.bootstrap_requested == 0 or fit.bootstrap_used < 2:
        return ["no bootstrap intervals, so identifiability is not assessed"]
    reasons = []
    floor = float(np.min(fit.law.loss)) if fit.law is not None else 0.0  # E far below every loss is E = 0
    for name, value in fit.params.items():
        if not np.isfinite(value):
            continue  # a part the law leaves undefined (e.g. an envelope's loss law): its warnings say so
        low, high = fit.ci.get(name, (-np.inf, np.inf))
        if not (np.isfinite(low) and np.isfinite(high)):
            reasons.append(f"{name} has no finite {fit.ci_level:.0%} interval")
        elif name in EXPONENTS and (low <= 0 or high / low > MAX_EXPONENT_SPAN):
            reasons.append(f"{name}'s interval [{low:.3g}, {high:.3g}] spans more than {MAX_EXPONENT_SPAN:g}×")
        elif name in EXPONENTS and value > MAX_EXPONENT:
            reasons.append(f"{name} = {value:.3g} is above {MAX_EXPONENT:g}: the loss drops as a step inside the "
                           "runs' range, not as a power law")
        elif name == "E" and (low < 1e-3 * value or low < 1e-3 * floor):
            reasons.append(f"E's interval [{low:.3g}, {high:.3g}] reaches 0")
    return reasons


def _arrays(**arrays) -> dict[str, np.ndarray]:
    """The inputs as float arrays of one length, all finite and positive, else FitInputError naming the first
    offending input."""
    out = {name: np.asarray(values, dtype=float).ravel() for name, values in arrays.items()}
    lengths = {len(v) for v in out.values()}
    if len(lengths) > 1:
        raise FitInputError("inputs differ in length: " + ", ".join(f"{k} {len(v)}" for k, v in out.items()))
    for name, values in out.items():
        bad = ~(np.isfinite(values) & (values > 0))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise FitInputError(f"{name}[{i}] = {values[i]:g}: values must be finite and positive "
                                "(fit_runs leaves such runs out and lists them)")
    return out


def fit_compute(C, L, *, delta: float = HUBER_DELTA, **options) -> FitResult:
    """Fit L(C) = E + A·C^−α to training compute C and final loss L.

    Parameters
    ----------
    C, L : array_like
        Training FLOPs and loss (nats/token) per run.
    delta : float
        Huber δ on log L (``np.inf`` gives least squares).
    **options
        bootstrap (1000), holdout_top (1), predict_compute (()), ci_level (0.9), seed (0); see `fit_law`.
    """
    a = _arrays(C=C, L=L)
    return fit_law(PowerLaw(a["C"], a["L"], delta=delta), "compute", x_label="training FLOPs", **options)


def fit_params(N, L, *, delta: float = HUBER_DELTA, **options) -> FitResult:
    """Fit L(N) = E + A·N^−α to parameter counts N and loss L; options as `fit_compute`."""
    a = _arrays(N=N, L=L)
    return fit_law(PowerLaw(a["N"], a["L"], delta=delta), "params", x_label="parameters", **options)


def fit_tokens(D, L, *, delta: float = HUBER_DELTA, **options) -> FitResult:
    """Fit L(D) = E + A·D^−α to training tokens D and loss L; options as `fit_compute`."""
    a = _arrays(D=D, L=L)
    return fit_law(PowerLaw(a["D"], a["L"], delta=delta), "tokens", x_label="training tokens", **options)


def fit_chinchilla(N, D, L, *, flops_per_param_token: float = 6.0, delta: float = HUBER_DELTA,
                   **options) -> FitResult:
    """Fit L(N, D) = E + A/N^α + B/D^β (Approach 3) to parameters N, tokens D and loss L.

    Compute-optimal allocations and predictions take C = flops_per_param_token · N · D. Options as
    `fit_compute`.
    """
    a = _arrays(N=N, D=D, L=L)
    law = Chinchilla(a["N"], a["D"], a["L"], flops_per_param_token=flops_per_param_token, delta=delta)
    return fit_law(law, "chinchilla", x_label="training FLOPs", **options)


def fit_envelope(N, D, C, L, *, delta: float = HUBER_DELTA, **options) -> FitResult:
    """Approach 1: N_opt(C), D_opt(C) power laws through the runs on the loss-compute envelope; options as
    `fit_compute`."""
    a = _arrays(N=N, D=D, C=C, L=L)
    law = Envelope(a["N"], a["D"], a["C"], a["L"], delta=delta)
    return fit_law(law, "envelope", x_label="training FLOPs", **options)


def fit_isoflop(N, D, C, L, *, budget_rtol: float = 0.1, delta: float = HUBER_DELTA, **options) -> FitResult:
    """Approach 2: N_opt(C), D_opt(C) power laws through the minima of per-budget parabolas of loss in log N.

    Runs within a factor (1 + budget_rtol) in compute share a budget. Options as `fit_compute`.
    """
    a = _arrays(N=N, D=D, C=C, L=L)
    law = IsoFLOP(a["N"], a["D"], a["C"], a["L"], budget_rtol=budget_rtol, delta=delta)
    _require_budgets(law)
    return fit_law(law, "isoflop", x_label="training FLOPs", **options)


def _require_budgets(law: IsoFLOP) -> None:
    sizes = np.bincount(law.budget)
    if (sizes >= 3).sum() < 2:
        raise FitInputError(f"the isoflop fit needs at least 2 compute budgets of 3 or more runs; these "
                            f"{law.n_points} runs form {len(sizes)} budgets of sizes {', '.join(map(str, sizes))}")


def fit_runs(runs: pd.DataFrame, form: str, *, convention: str | None = None, bootstrap: int = 1000,
             holdout_top: int = 1, predict_compute: Sequence[float] = (), ci_level: float = 0.9,
             seed: int = 0, interval: str = "residual", backtest_ratios: Sequence[float] = ROLLING_RATIOS) -> FitResult:
    """Fit `form` to a run table (see `scaling.runs`), leaving out and listing the runs it cannot use.

    Parameters
    ----------
    runs
        One row per run: ``params``, ``tokens``, ``loss``, and as available ``flops``,
        ``params_nonembedding``, ``run_id``, ``initial_loss``, ``status`` and shape columns.
    form
        One of ``FORMS``.
    convention
        How compute is counted (one of ``flops.CONVENTIONS``): from the ``flops_<convention>`` column if the
        table has one, else computed from its columns. None: the ``flops`` column if there is one, else
        6ND (6ND_total without a ``params_nonembedding`` column). For chinchilla it chooses N (6ND: non-embedding, 6ND_total: all parameters) since that form
        allocates compute as C = 6·N·D.
    bootstrap, holdout_top, predict_compute, ci_level, seed, interval, backtest_ratios
        As in `fit_law` (holdout_top counts compute budgets).

    N is ``params_nonembedding`` where the table has it (Kaplan et al.'s choice: laws in non-embedding
    parameters are cleaner for small models), else ``params``.

    Raises
    ------
    FitInputError
        Unknown form or convention, missing columns, or too few usable runs.
    """
    if form not in FORMS:
        raise FitInputError(f"unknown form {form!r}; expected one of {', '.join(FORMS)}")
    if convention is not None and convention not in CONVENTIONS:
        raise FitInputError(f"unknown FLOPs convention {convention!r}; expected one of {', '.join(CONVENTIONS)}")
    require_columns(runs, ("loss",))
    # a canonical row order, so that the same runs give the same fit (bit for bit) from any source
    order = [c for c in ("params", "tokens", "loss", "run_id") if c in runs]
    runs = runs.sort_values(order, kind="stable", na_position="last").reset_index(drop=True)
    base = PURE_FORMS.get(form, form)  # compute_pure reads what compute reads, params_pure what params reads
    values, convention = _fit_inputs(runs, base, convention)
    keep, excluded = usable_rows(runs, values)
    kept = {name: v[keep] for name, v in values.items()}
    labels = [label for label, k in zip(run_labels(runs), keep) if k]
    options = dict(bootstrap=bootstrap, holdout_top=holdout_top, predict_compute=predict_compute,
                   ci_level=ci_level, seed=seed, interval=interval, backtest_ratios=backtest_ratios)
    if keep.sum() == 0:
        raise FitInputError(f"the {form} fit has no usable runs ({len(excluded)} excluded: "
                            + "; ".join(f"{next(iter(e.values()))}: {e['reason']}" for e in excluded[:3])
                            + ("; …" if len(excluded) > 3 else "") + ")")
    if base in ("compute", "params", "tokens"):
        x_name = {"compute": "flops", "params": "params", "tokens": "tokens"}[base]
        law = (PurePowerLaw if form in PURE_FORMS else PowerLaw)(kept[x_name], kept["loss"])
        x_label = {"compute": f"training FLOPs ({convention or 'flops column'})",
                   "params": f"parameters ({'non-embedding' if 'params_nonembedding' in runs else 'total'})",
                   "tokens": "training tokens"}[base]
    elif form == "chinchilla":
        law = Chinchilla(kept["params"], kept["tokens"], kept["loss"])
        x_label = f"training FLOPs ({convention})"
    else:
        law_class = Envelope if form == "envelope" else IsoFLOP
        law = law_class(kept["params"], kept["tokens"], kept["flops"], kept["loss"])
        x_label = f"training FLOPs ({convention or 'flops column'})"
        if form == "isoflop":
            _require_budgets(law)
    result = fit_law(law, form, excluded=excluded, convention=convention if form in COMPUTE_FORMS else None,
                     labels=labels, x_label=x_label, **options)
    # where the left-out runs would sit on the fit's axis, so that plots can show them apart
    x_all = law.k * values["params"] * values["tokens"] if form == "chinchilla" else values[
        {"params": "params", "tokens": "tokens"}.get(base, "flops")]
    result.excluded_points = [(float(x), float(y)) for x, y in zip(x_all[~keep], values["loss"][~keep])
                              if np.isfinite(x) and np.isfinite(y) and x > 0 and y > 0]
    return result


def _fit_inputs(runs: pd.DataFrame, form: str, convention: str | None) -> tuple[dict[str, np.ndarray], str | None]:
    """The arrays a form needs, over all rows (hygiene comes after), and the convention compute is counted in."""
    column = lambda name: runs[name].to_numpy(dtype=float)  # noqa: E731
    params_column = "params_nonembedding" if "params_nonembedding" in runs.columns else "params"
    values = {"loss": column("loss")}
    if form == "chinchilla":
        if convention not in (None, "6ND", "6ND_total"):
            raise FitInputError(f"the chinchilla form allocates compute as C = 6·N·D, so its convention is 6ND "
                                f"(N non-embedding) or 6ND_total (N all parameters), not {convention!r}")
        if convention is not None:
            params_column = "params_nonembedding" if convention == "6ND" else "params"
        require_columns(runs, (params_column, "tokens"))
        convention = "6ND" if params_column == "params_nonembedding" else "6ND_total"
    if form in ("params", "chinchilla", "envelope", "isoflop"):
        require_columns(runs, (params_column,))
        values["params"] = column(params_column)
    if form in ("tokens", "chinchilla", "envelope", "isoflop"):
        require_columns(runs, ("tokens",))
        values["tokens"] = column("tokens")
    if form in ("compute", "envelope", "isoflop"):
        if convention is None and "flops" in runs.columns:
            values["flops"] = column("flops")
        elif convention is not None and f"flops_{convention}" in runs.columns:
            values["flops"] = column(f"flops_{convention}")  # counted by whoever made the table, e.g. a study
        else:
            # the CSV may hold only total parameters; count with what is there
            convention = convention or ("6ND" if "params_nonembedding" in runs.columns else "6ND_total")
            needed = ("tokens",) + CONVENTION_COLUMNS[convention]
            missing = [c for c in needed if c not in runs.columns]
            if missing:
                raise FitInputError(f"no flops column, and the {convention} FLOPs convention needs column"
                                    f"{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
            shape = {name: column(name) for name in CONVENTION_COLUMNS[convention] if name != "params"}
            if "params" in CONVENTION_COLUMNS[convention]:
                shape["params_total"] = column("params")
            values["flops"] = training_flops(convention, column("tokens"), **shape)
    return values, convention
