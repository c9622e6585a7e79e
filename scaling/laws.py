"""The fitted forms, as "laws": what each form computes, independent of bootstrap, backtest and reporting.

Every law holds the points of one fit and answers, for a batch of parameter vectors θ (shape ``(B, p)``):

- ``fit(weights, start)``: θ for each row of run weights (1 = use once, 0 = leave out, k = bootstrap count);
- ``values(θ)``: the parameters as reported (E, A, alpha, ...);
- ``predict(θ, x)``: the loss along the law's axis (compute, or N / D for the 1-D forms);
- ``predict_points(θ, rows)``: the loss of some of its own runs (for the backtest);
- ``allocate(θ, C)``: compute-optimal N and D, for the forms that have them.

`fit.py` runs the shared machinery (full fit, backtest, bootstrap, predictions) on any of them.

The parametric laws here, the 1-D power law E + A·x^−α and Approach 3's E + A/N^α + B/D^β, are both sums of
exponentials of terms linear in θ, log L̂ = logsumexp_k(θ · X_k), and both minimise, as in Hoffmann et al.
2022 with Besiroglu et al. 2024's corrections, the *sum* over runs of Huber(log L̂ − log L) with δ = 1e-3,
started from every point of a grid, keeping the best.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from scaling.optimize import minimize_batch, polish

HUBER_DELTA = 1e-3
# Stopping tests for the runs from the grid. scipy's default ftol = 2.2e-9 is relative to max(|f|, 1), which for
# a sum of Huber losses of ~1e-3 is a loose absolute test (Besiroglu et al. found the original fit stopped early);
# here it is relative to |f| itself. The grid only has to find the best basin: its POLISHED best runs are then
# each taken to tight tolerances by scipy's L-BFGS-B, and the best of those kept. Starts still running after 200 iterations are crawling along a
# flat direction (a term vanishing).
GRID_TOLERANCES = {"ftol": 1e-6, "gtol": 1e-6, "maxiter": 200}
POLISHED = 3


@dataclass
class LawFit:
    theta: np.ndarray  # (B, p); rows of NaN where a fit was not possible
    warnings: list[str] = field(default_factory=list)


def huber(r: np.ndarray, delta: float) -> np.ndarray:
    """Huber loss: r²/2 within ±delta, delta·(|r| − delta/2) outside; delta = inf gives least squares.

    Written as c·(r − c/2) with c = clip(r, −delta, delta), which is also its derivative.
    """
    c = np.clip(r, -delta, delta)
    return c * (r - 0.5 * c)


class LogSumExpLaw:
    """Base of the parametric laws: log L̂ = logsumexp_k(X_k · θ), fitted by Huber loss on log L.

    Subclasses pass the design (K, n, p) of their terms, may set ``lower``/``upper`` bounds, and implement
    ``starts``, ``identifiable``, ``values``, ``predict`` and ``predict_points``.
    """

    names: tuple[str, ...]
    theta_names: tuple[str, ...]  # the fitted coordinates, for warnings
    min_points: int
    lower: np.ndarray | float = -np.inf
    upper: np.ndarray | float = np.inf

    def __init__(self, design: np.ndarray, loss: np.ndarray, *, delta: float = HUBER_DELTA):
        self.design = design
        self.flat_design = design.reshape(-1, design.shape[-1])  # (K·n, p): z = flat_design @ θ is one matmul
        self.loss = np.asarray(loss, dtype=float)
        self.log_loss = np.log(self.loss)
        self.delta = delta
        self.n_points = len(self.loss)

    # -- to be provided by subclasses --
    def starts(self) -> tuple[np.ndarray, list[np.ndarray]]:
        """The initialisation grid: starts (G, p) and, per coordinate, the grid values along that axis."""
        raise NotImplementedError

    def identifiable(self, weights: np.ndarray) -> np.ndarray:
        """Which rows of weights leave enough distinct points to determine θ."""
        raise NotImplementedError

    # -- shared --
    def objective(self, weights: np.ndarray, log_targets: np.ndarray):
        """The batched objective Σ_i w_i · Huber(log L̂_i − log L_i) and its gradient, for `minimize_batch`."""
        k, n, p = self.design.shape
        delta = self.delta

        def fun(theta: np.ndarray, rows: np.ndarray):
            z = (theta @ self.flat_design.T).reshape(len(rows), k, n)
            top = z.max(axis=1, keepdims=True)
            parts = np.exp(np.subtract(z, top, out=z), out=z)  # in place: these arrays are (B, K, n)
            total = parts.sum(axis=1)
            # one row of weights and targets is shared by all problems (the grid), else one per problem
            residual = top[:, 0] + np.log(total) - (log_targets if len(log_targets) == 1 else log_targets[rows])
            slope = np.minimum(np.maximum(residual, -delta), delta)  # Huber'(r) (np.clip, without its overhead)
            w = weights if len(weights) == 1 else weights[rows]
            value = (w * slope * (residual - 0.5 * slope)).sum(axis=1)  # Σ w·huber(r), sharing the clip
            # ∂ log L̂ / ∂ z_k is the softmax share of term k
            parts *= (w * slope / total)[:, None, :]
            return value, parts.reshape(len(rows), k * n) @ self.flat_design

        return fun

    def fit(self, weights: np.ndarray, start: np.ndarray | None = None,
            log_targets: np.ndarray | None = None) -> LawFit:
        """θ for each row of `weights` (B, n): from `start` (B, p) if given, else from every grid point.

        `log_targets` (B, n) replaces log L per row (the isoFLOP law fits per-resample minima this way).
        """
        weights = np.atleast_2d(np.asarray(weights, dtype=float))
        targets = np.broadcast_to(self.log_loss if log_targets is None else log_targets, weights.shape)
        ok = self.identifiable(weights)
        theta = np.full((len(weights), self.design.shape[-1]), np.nan)
        warnings: list[str] = []
        if not ok.any():
            return LawFit(theta, ["too few distinct points to fit"])
        rows = np.flatnonzero(ok)
        if start is not None:
            start = np.broadcast_to(start, theta.shape)[rows]
            fun = self.objective(weights[rows], targets[rows])
            result = minimize_batch(fun, start, lower=self.lower, upper=self.upper)
            theta[rows] = result.x
            return LawFit(theta)
        # every grid start for every row, then the best per row, polished with scipy's L-BFGS-B
        grid, axes = self.starts()
        g = len(grid)
        if len(rows) == 1:
            fun = self.objective(weights[rows], targets[rows])
        else:
            fun = self.objective(np.repeat(weights[rows], g, axis=0), np.repeat(targets[rows], g, axis=0))
        result = minimize_batch(fun, np.tile(grid, (len(rows), 1)), lower=self.lower, upper=self.upper,
                                **GRID_TOLERANCES)
        values = np.where(np.isfinite(result.fun), result.fun, np.inf).reshape(len(rows), g)
        for i, row in enumerate(rows):
            candidates = [i * g + j for j in np.argsort(values[i])[:POLISHED]]
            polished = [polish(fun, c, result.x[c], lower=self.lower, upper=self.upper) for c in candidates]
            best_polished = int(np.argmin([f for _, f in polished]))
            theta[row] = polished[best_polished][0]
            best = candidates[best_polished] - i * g
            # many starts reach the same minimum: the start is on the edge only if all of those are
            reached = np.flatnonzero(values[i] <= values[i, best] + 1e-4 * abs(values[i, best]))
            interior = [j for j in reached if not self._on_edge(grid[j], axes)]
            warnings += self._edge_warnings(grid[interior[0] if interior else best], theta[row], axes)
        return LawFit(theta, warnings)

    @staticmethod
    def _on_edge(start: np.ndarray, axes: list[np.ndarray]) -> bool:
        return any(axis is not None and s in (axis.min(), axis.max()) for s, axis in zip(start, axes))

    def _edge_warnings(self, best_start: np.ndarray, optimum: np.ndarray, axes: list[np.ndarray]) -> list[str]:
        """Warn when the winning start sits on the grid's edge, or the optimum on or beyond it: a wider grid
        might find a better minimum."""
        out = []
        for name, s, o, axis in zip(self.theta_names, best_start, optimum, axes):
            if axis is None or len(axis) < 2:
                continue
            lo, hi = axis.min(), axis.max()
            if s in (lo, hi):
                out.append(f"the best start has {name} = {s:.3g}, on the edge of its grid [{lo:.3g}, {hi:.3g}]")
            if not lo < o < hi:
                out.append(f"the optimum has {name} = {o:.3g}, on or outside the edge of its initialisation grid "
                           f"[{lo:.3g}, {hi:.3g}]")
        return out

    def log_predict(self, theta: np.ndarray, design: np.ndarray) -> np.ndarray:
        """log L̂ at new points with design (K, m, p), for every θ row: (B, m)."""
        z = np.einsum("kmp,bp->bkm", design, np.atleast_2d(theta))
        top = z.max(axis=1)
        return top + np.log(np.exp(z - top[:, None, :]).sum(axis=1))

    def allocate(self, theta: np.ndarray, compute: np.ndarray):
        return None


class PowerLaw(LogSumExpLaw):
    """L(x) = E + A·x^−α, for x = compute, parameters or tokens.

    Fitted in normalised units, x̃ = x / x_ref with x_ref the geometric mean of x, so that the grid and the
    optimiser see A̓ = A·x_ref^−α of order one; θ = (e, a, α) with E = exp(e), A = exp(a)·x_ref^α, so E ≥ 0 and
    A > 0 by construction, and α ≥ 0 is a bound. E has a floor of 1e-6 × the lowest loss (zero, in effect), so
    that a resample whose best E is 0 stops there instead of walking log E towards −∞.
    Reported A is in the original units of x.
    """

    names = ("E", "A", "alpha")
    theta_names = ("log E", "log A (normalised x)", "alpha")
    min_points = 4  # three parameters, plus one

    def __init__(self, x: np.ndarray, loss: np.ndarray, *, x_ref: float | None = None, delta: float = HUBER_DELTA):
        self.x = np.asarray(x, dtype=float)
        self.x_ref = float(np.exp(np.mean(np.log(self.x)))) if x_ref is None else x_ref
        super().__init__(self._design(self.x), loss, delta=delta)
        self.axis = self.x
        self.lower = np.array([np.log(1e-6 * self.loss.min()), -np.inf, 0.0])

    def _design(self, x: np.ndarray) -> np.ndarray:
        lx = np.log(np.asarray(x, dtype=float) / self.x_ref)
        one, zero = np.ones_like(lx), np.zeros_like(lx)
        return np.stack([np.stack([one, zero, zero], -1),  # e
                         np.stack([zero, one, -lx], -1)])  # a − α·log x̃

    def starts(self):
        # E from near 0 up to just below the lowest loss; the power term then makes up the rest at x_ref
        lowest = float(self.loss.min())
        e_axis = np.log(lowest * np.array([1e-3, 0.25, 0.5, 0.75, 0.9, 0.97]))
        alpha_axis = np.array([0.01, 0.03, 0.1, 0.3, 1.0, 3.0])
        typical = float(np.median(self.loss))
        grid = np.array([(e, np.log(max(typical - np.exp(e), 1e-3 * typical)), alpha)
                         for e, alpha in itertools.product(e_axis, alpha_axis)])
        return grid, [e_axis, None, alpha_axis]

    def identifiable(self, weights):
        # three parameters need three distinct x values
        return np.array([len(np.unique(self.x[w > 0])) >= 3 for w in weights])

    def values(self, theta):
        theta = np.atleast_2d(theta)
        e, a, alpha = theta.T
        with np.errstate(over="ignore"):  # a wild bootstrap refit may overflow A; it then counts as inf
            return {"E": np.exp(e), "A": np.exp(a) * self.x_ref**alpha, "alpha": alpha}

    def predict(self, theta, x):
        return np.exp(self.log_predict(theta, self._design(np.atleast_1d(x))))

    def predict_points(self, theta, rows):
        return self.predict(theta, self.x[rows])


class PurePowerLaw(PowerLaw):
    """L(x) = A·x^−α: no irreducible loss (Kaplan et al. 2020's L(C_min) and L(N) forms), for runs far above
    their E, where E + A·x^−α cannot tell E from zero. θ = (a, α), A = exp(a)·x_ref^α as in `PowerLaw`."""

    names = ("A", "alpha")
    theta_names = ("log A (normalised x)", "alpha")
    min_points = 3  # two parameters, plus one

    def __init__(self, x: np.ndarray, loss: np.ndarray, *, x_ref: float | None = None, delta: float = HUBER_DELTA):
        super().__init__(x, loss, x_ref=x_ref, delta=delta)
        self.lower = np.array([-np.inf, 0.0])

    def _design(self, x: np.ndarray) -> np.ndarray:
        lx = np.log(np.asarray(x, dtype=float) / self.x_ref)
        return np.stack([np.ones_like(lx), -lx], -1)[None]  # one term: a − α·log x̃

    def starts(self):
        alpha_axis = np.array([0.01, 0.03, 0.1, 0.3, 1.0, 3.0])
        a = np.log(float(np.median(self.loss)))
        return np.array([(a, alpha) for alpha in alpha_axis]), [None, alpha_axis]

    def identifiable(self, weights):
        return np.array([len(np.unique(self.x[w > 0])) >= 2 for w in weights])

    def values(self, theta):
        a, alpha = np.atleast_2d(theta).T
        with np.errstate(over="ignore"):
            return {"A": np.exp(a) * self.x_ref**alpha, "alpha": alpha}


class Chinchilla(LogSumExpLaw):
    """Approach 3 of Hoffmann et al. 2022: L(N, D) = E + A/N^α + B/D^β.

    θ = (a, b, e, α, β) with A = exp(a), B = exp(b), E = exp(e), in the raw units of N and D as in the paper, so
    that the paper's initialisation grid applies: here α, β ∈ {0, 0.5, …, 2}, e ∈ {−1, −0.5, …, 2} (the paper
    stops at 1; small models on small vocabularies have larger E), a, b ∈ {0, 5, …, 25}: 6,300 starts.

    Compute-optimal allocation assumes C = k·N·D (k = 6, the 6ND rule the paper uses): minimising L under that
    constraint gives N_opt = G·(C/k)^a, D_opt = G^−1·(C/k)^b with G = (αA/(βB))^(1/(α+β)), a = β/(α+β),
    b = α/(α+β).
    """

    names = ("E", "A", "B", "alpha", "beta", "a", "b")
    theta_names = ("a = log A", "b = log B", "e = log E", "alpha", "beta")
    min_points = 6  # five parameters, plus one
    grid_axes = (np.arange(0, 26, 5.0), np.arange(0, 26, 5.0), np.arange(-1, 2.01, 0.5),
                 np.arange(0, 2.01, 0.5), np.arange(0, 2.01, 0.5))

    def __init__(self, params: np.ndarray, tokens: np.ndarray, loss: np.ndarray, *, compute: np.ndarray | None = None,
                 flops_per_param_token: float = 6.0, delta: float = HUBER_DELTA):
        self.n = np.asarray(params, dtype=float)
        self.d = np.asarray(tokens, dtype=float)
        self.k = flops_per_param_token
        super().__init__(self._design(self.n, self.d), loss, delta=delta)
        self.axis = self.k * self.n * self.d if compute is None else np.asarray(compute, dtype=float)

    @staticmethod
    def _design(n, d):
        ln, ld = np.log(n), np.log(d)
        one, zero = np.ones_like(ln), np.zeros_like(ln)
        return np.stack([np.stack([one, zero, zero, -ln, zero], -1),  # a − α·log N
                         np.stack([zero, one, zero, zero, -ld], -1),  # b − β·log D
                         np.stack([zero, zero, one, zero, zero], -1)])  # e

    def starts(self):
        return np.array(list(itertools.product(*self.grid_axes))), list(self.grid_axes)

    def identifiable(self, weights):
        pairs = np.stack([self.n, self.d], axis=1)
        return np.array([len(np.unique(pairs[w > 0], axis=0)) >= 5 for w in weights])

    def values(self, theta):
        a, b, e, alpha, beta = np.atleast_2d(theta).T
        with np.errstate(divide="ignore", invalid="ignore"):
            return {"E": np.exp(e), "A": np.exp(a), "B": np.exp(b), "alpha": alpha, "beta": beta,
                    "a": beta / (alpha + beta), "b": alpha / (alpha + beta)}

    def allocate(self, theta, compute):
        v = self.values(theta)
        c = np.atleast_1d(np.asarray(compute, dtype=float))[None, :] / self.k
        alpha, beta = v["alpha"][:, None], v["beta"][:, None]
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            g = (alpha * v["A"][:, None] / (beta * v["B"][:, None])) ** (1 / (alpha + beta))
            return g * c ** v["a"][:, None], c ** v["b"][:, None] / g

    def loss_at(self, theta, n, d):
        """L(N, D) for every θ row; n and d broadcast against (B, m)."""
        v = self.values(theta)
        col = {key: value[:, None] for key, value in v.items()}
        return col["E"] + col["A"] / n ** col["alpha"] + col["B"] / d ** col["beta"]

    def predict(self, theta, compute):
        n_opt, d_opt = self.allocate(theta, compute)
        return self.loss_at(theta, n_opt, d_opt)

    def predict_points(self, theta, rows):
        return self.loss_at(theta, self.n[rows][None, :], self.d[rows][None, :])
