"""Plots of fits, for the study report: each function writes one PNG and returns its path.

matplotlib's Agg backend is used (no display needed).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from scaling.results import FitResult  # noqa: E402

BAND_ALPHA = 0.25


def _save(fig, path) -> Path:
    path = Path(path)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_frontier(runs, fit: FitResult, path, *, extrapolate_to: float | None = None, title: str | None = None) -> Path:
    """Loss against the fit's axis (compute; N or D for the params / tokens forms): the runs, the fitted curve
    with its bootstrap band extended to the largest prediction or `extrapolate_to`, the predictions with their
    intervals, and the runs left out of the fit as crosses.

    `runs` may be the run table (the fit already holds the points it used, so it is not read) or a pair of
    arrays (x, loss) to draw instead of the fit's points.
    """
    if isinstance(runs, tuple):
        x, loss = (np.asarray(v, dtype=float) for v in runs)
    else:
        x, loss = fit.law.axis, fit.law.loss
    targets = [p.compute for p in fit.predictions] + ([extrapolate_to] if extrapolate_to else [])
    grid = np.geomspace(x.min(), max([x.max(), *targets]), 200)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter(x, loss, color="C0", zorder=3, label=f"runs ({len(x)})")
    if fit.excluded_points:
        ex, el = np.array(fit.excluded_points).T
        ax.scatter(ex, el, marker="x", color="C3", zorder=3, label=f"left out ({len(ex)})")
    curve = fit.predict(grid)
    low, high = (np.where(np.isfinite(v), v, np.nan) for v in fit.predict_interval(grid))  # unbounded: not drawn
    ax.plot(grid, curve, color="C1", label=_law_label(fit))
    if np.isfinite(low).any():
        ax.fill_between(grid, low, high, color="C1", alpha=BAND_ALPHA, lw=0,
                        label=f"{fit.ci_level:.0%} bootstrap band")
    if x.max() < grid[-1]:
        ax.axvline(x.max(), color="gray", ls=":", lw=1)
    for p in fit.predictions:
        if p.low is not None and np.isfinite(p.low):
            ax.errorbar([p.compute], [p.loss], yerr=[[p.loss - p.low], [p.high - p.loss]], fmt="D", color="C2",
                        capsize=4, zorder=4)
        else:
            ax.scatter([p.compute], [p.loss], marker="D", color="C2", zorder=4)
    if fit.predictions:
        ax.plot([], [], "D", color="C2", label="predictions")
    # Where runs are few the band can span orders of magnitude: frame the plot on the runs, the fitted curve and
    # the predictions, and let the band run off the edge.
    shown = np.concatenate([loss, curve[np.isfinite(curve)], [p.loss for p in fit.predictions if p.loss is not None]])
    lo, hi = shown.min(), shown.max()
    pad = 0.15 * (hi - lo or abs(hi))
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_xscale("log")
    ax.set_xlabel(fit.x_label)
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title or f"{fit.form} fit on {fit.n_points} runs")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _law_label(fit: FitResult) -> str:
    p = fit.params
    if fit.form == "chinchilla":
        return (f"L = {p['E']:.3g} + {p['A']:.3g}/N^{p['alpha']:.3f} + {p['B']:.3g}/D^{p['beta']:.3f}"
                " (compute-optimal)")
    if "E" in p and np.isfinite(p["E"]):
        return f"L = {p['E']:.3g} + {p['A']:.3g}·x^−{p['alpha']:.3f}"
    if fit.form in ("compute_pure", "params_pure"):
        return f"L = {p['A']:.3g}·x^−{p['alpha']:.3f}"
    return "fit"


def plot_backtest(fit: FitResult, path, *, title: str | None = None) -> Path:
    """Predicted against actual loss: the runs the fit used (full fit) and the held-out runs (backtest fit)."""
    law = fit.law
    fitted = law.predict_points(fit.theta[None, :], np.arange(law.n_points))[0]
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(law.loss, fitted, color="C0", alpha=0.6, label="runs, full fit")
    values = [*law.loss, *fitted]
    if fit.backtest:
        bt = fit.backtest
        ax.scatter(bt.actual, bt.predicted, color="C3", marker="D", zorder=3,
                   label=f"held out (top {bt.holdout_top}), error {bt.mean_abs_rel_error:.1%}")
        values += [*bt.actual, *bt.predicted]
    else:
        ax.text(0.05, 0.95, f"no backtest: {fit.backtest_note}", transform=ax.transAxes, va="top", fontsize=8,
                wrap=True)
    values = np.array([v for v in values if np.isfinite(v)])
    lo, hi = values.min(), values.max()
    pad = 0.05 * (hi - lo or hi)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="gray", ls="--", lw=1, label="predicted = actual")
    ax.set_xlabel("actual loss (nats/token)")
    ax.set_ylabel("predicted loss (nats/token)")
    ax.set_title(title or f"backtest of the {fit.form} fit")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_isoflops(fit: FitResult, path, *, title: str | None = None) -> Path:
    """For an isoflop fit: loss against N per compute budget, each budget's parabola and its minimum."""
    law = fit.law
    if fit.form != "isoflop":
        raise ValueError(f"plot_isoflops needs an isoflop fit, not {fit.form!r}")
    coef, log_n_min, loss_min = law.parabolas(np.ones((1, law.n_points)), law.n)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(law.budget_compute)))
    for g, (budget, color) in enumerate(zip(law.budget_compute, colors)):
        members = law.budget == g
        ax.scatter(law.n[members], law.loss[members], color=color, label=f"C = {budget:.2g}")
        if np.isfinite(coef[0, g]).all():
            s = np.linspace(np.log(law.n[members].min()), np.log(law.n[members].max()), 100)
            ax.plot(np.exp(s), coef[0, g, 0] + coef[0, g, 1] * s + coef[0, g, 2] * s**2, color=color, lw=1)
        if np.isfinite(log_n_min[0, g]):
            ax.scatter([np.exp(log_n_min[0, g])], [loss_min[0, g]], marker="*", s=150, color=color,
                       edgecolor="black", zorder=4)
    ax.plot([], [], "*", color="gray", markeredgecolor="black", markersize=12, label="minimum")
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title or "isoFLOP profiles")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_optimal_allocation(fit: FitResult, path, *, extrapolate_to: float | None = None,
                            title: str | None = None) -> Path:
    """N*(C) and D*(C) with bootstrap bands, for a chinchilla, envelope or isoflop fit, with the optimal points
    the envelope and isoflop fits were read from."""
    if fit.form not in ("chinchilla", "envelope", "isoflop"):
        raise ValueError(f"plot_optimal_allocation needs a chinchilla, envelope or isoflop fit, not {fit.form!r}")
    law = fit.law
    top = max([law.axis.max(), *(p.compute for p in fit.predictions), *([extrapolate_to] if extrapolate_to else [])])
    grid = np.geomspace(law.axis.min(), top, 100)
    n_opt, d_opt = (v[0] for v in law.allocate(fit.theta[None, :], grid))
    bands = law.allocate(fit.samples, grid) if fit.samples is not None and len(fit.samples) >= 2 else None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (curve, name, color) in enumerate(((n_opt, "N*(C) parameters", "C0"), (d_opt, "D*(C) tokens", "C1"))):
        ax.plot(grid, curve, color=color, label=name)
        if bands is not None:
            tail = (1 - fit.ci_level) / 2
            low, high = np.nanquantile(bands[i], [tail, 1 - tail], axis=0)
            ax.fill_between(grid, low, high, color=color, alpha=BAND_ALPHA, lw=0)
    if fit.form != "chinchilla":
        points = law.optimal_points(np.ones((1, law.n_points)))
        use = points.use[0]
        c = np.exp(np.broadcast_to(points.log_c, use.shape))[use]
        ax.scatter(c, np.exp(points.log_n[0][use]), color="C0", edgecolor="black", zorder=3, label="optimal N")
        ax.scatter(c, np.exp(points.log_d[0][use]), color="C1", edgecolor="black", zorder=3, label="optimal D")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(fit.x_label)
    ax.set_ylabel("parameters / tokens")
    p = fit.params
    ax.set_title(title or f"compute-optimal allocation ({fit.form}): N ∝ C^{p['a']:.2f}, D ∝ C^{p['b']:.2f}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_learning_curves(curves: dict[str, tuple[np.ndarray, np.ndarray]], path, *, xlabel: str = "tokens",
                         ylabel: str = "validation loss (nats/token)", title: str | None = None) -> Path:
    """One line per run: loss against tokens seen (log x)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = plt.cm.viridis(np.linspace(0, 0.9, max(len(curves), 1)))
    for (name, (tokens, loss)), color in zip(curves.items(), colors):
        tokens, loss = np.asarray(tokens, dtype=float), np.asarray(loss, dtype=float)
        keep = (tokens > 0) & np.isfinite(loss)
        ax.plot(tokens[keep], loss[keep], marker="o", ms=3, color=color, label=name)
    if not curves:
        ax.text(0.5, 0.5, "no learning curves", transform=ax.transAxes, ha="center")
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title or "learning curves")
    ax.grid(True, which="both", alpha=0.3)
    if curves:
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_families(fits: dict[str, FitResult], path, *, extrapolate_to: float | None = None,
                  title: str | None = None, scales: dict[str, float] | None = None,
                  unit: str = "nats/token") -> Path:
    """Compute fits of several model families side by side: each family's runs and fitted L(C), on one axis, so
    they compare at matched compute. `scales`: each family's factor from its loss to `unit` (families whose
    tokens differ compare per byte, not per token)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = np.concatenate([fit.law.axis for fit in fits.values()])
    shown = []
    for i, (family, fit) in enumerate(fits.items()):
        color, scale = f"C{i % 10}", (scales or {}).get(family, 1.0)
        ax.scatter(fit.law.axis, scale * fit.law.loss, color=color, zorder=3)
        # each law from its own smallest run on: a steep law extrapolated backwards would dwarf the others
        grid = np.geomspace(fit.law.axis.min(), max(xs.max(), extrapolate_to or 0), 200)
        curve = scale * fit.predict(grid)
        ax.plot(grid, curve, color=color, label=f"{family}: α = {fit.params['alpha']:.3f}")
        shown += [*(scale * fit.law.loss), *curve[np.isfinite(curve)]]
    lo, hi = min(shown), max(shown)
    pad = 0.1 * (hi - lo or abs(hi))
    ax.set_ylim(lo - pad, hi + pad)
    if extrapolate_to and extrapolate_to > xs.max():
        ax.axvline(xs.max(), color="gray", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel(next(iter(fits.values())).x_label)
    ax.set_ylabel(f"loss ({unit})")
    ax.set_title(title or "families at matched compute")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_rate_distortion(points: dict[str, tuple[list[float], list[float]]], path, *, title: str | None = None) -> Path:
    """Each series' models as (rate: bits per image under the model, distortion: reconstruction MSE of its token
    stream): lossless streams sit on the x axis, lossy codes trade bits for error."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (label, (bits, mse)) in enumerate(points.items()):
        ax.scatter(bits, mse, color=f"C{i % 10}", label=label, zorder=3)
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # minor labels overlap on a short decade
    ax.set_xlabel("rate: bits per image (test split, under each model)")
    ax.set_ylabel("distortion: reconstruction MSE (pixels in [0, 1])")
    ax.set_title(title or "rate and distortion of each token stream")
    ax.grid(True, which="both", alpha=0.3)
    if points:
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_lr_sweep(curves: dict[str, tuple[list[float], list[float]]], best: dict[str, float], path, *,
                  title: str | None = None) -> Path:
    """Loss against learning rate (log x), one line per model size, its best learning rate marked: a best lr at
    either end of a line means the sweep should be wider."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = plt.cm.viridis(np.linspace(0, 0.9, max(len(curves), 1)))
    for (label, (lrs, losses)), color in zip(curves.items(), colors):
        ax.plot(lrs, losses, marker="o", ms=4, color=color, label=label)
        if label in best:
            ax.axvline(best[label], color=color, ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("peak learning rate")
    ax.set_ylabel("validation loss (nats/token), mean over seeds")
    ax.set_title(title or "loss vs learning rate")
    ax.grid(True, which="both", alpha=0.3)
    if curves:
        ax.legend(fontsize=8)
    return _save(fig, path)
