"""Approaches 1 and 2 of Hoffmann et al. 2022: compute-optimal N and D read off the runs themselves.

Both find, at several compute levels C, the (N, D, loss) of the best run or model size, then fit the power laws
N_opt = n_coef·C^a and D_opt = d_coef·C^b (least squares in log-log), and a loss law L_opt(C) = E + A·C^−α
through the optimal losses (the 1-D Huber fit of `laws.PowerLaw`), used for predicted loss and the backtest.

- ``Envelope`` (Approach 1): the runs on the lower envelope of loss against compute, i.e. those that no run of
  lower or equal compute beats. Hoffmann et al. read the envelope off training curves; a table that holds
  intermediate checkpoints as rows gets exactly that.
- ``IsoFLOP`` (Approach 2): runs grouped into budgets of (nearly) equal compute; within each budget a parabola
  of loss in log N (and in log D) whose minimum gives N_opt and D_opt at that budget.

θ = (a, log n_coef, b, log d_coef, e, log A', α), the last three those of the loss law's `PowerLaw`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scaling.laws import HUBER_DELTA, LawFit, PowerLaw


@dataclass
class OptimalPoints:
    """For each weight row, the compute-optimal points the power laws are fitted to."""

    log_c: np.ndarray  # (m,) compute of each point (the same for every row)
    log_n: np.ndarray  # (B, m)
    log_d: np.ndarray  # (B, m)
    log_loss: np.ndarray  # (B, m)
    use: np.ndarray  # (B, m) bool: the point exists in this row


def weighted_line(x: np.ndarray, y: np.ndarray, use: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares slope and intercept of y on x per row, over the points `use` marks (NaN if < 2 distinct x)."""
    w = use.astype(float)
    count = w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mx = (w * x).sum(axis=1) / count
        my = (w * np.where(use, y, 0.0)).sum(axis=1) / count
        dx = np.where(use, x - mx[:, None], 0.0)
        sxx = (dx * dx).sum(axis=1)
        slope = (dx * np.where(use, y - my[:, None], 0.0)).sum(axis=1) / sxx
    slope = np.where(sxx > 1e-12, slope, np.nan)
    return slope, my - slope * mx


class AllocationLaw:
    """Shared part of Approaches 1 and 2: power laws through optimal points, and a loss law through their losses."""

    names = ("a", "b", "n_coef", "d_coef", "E", "A", "alpha")

    def __init__(self, params, tokens, compute, loss, *, delta: float = HUBER_DELTA):
        self.n = np.asarray(params, dtype=float)
        self.d = np.asarray(tokens, dtype=float)
        self.axis = np.asarray(compute, dtype=float)
        self.loss = np.asarray(loss, dtype=float)
        self.n_points = len(self.loss)
        self.delta = delta
        full = self.optimal_points(np.ones((1, self.n_points)))
        # the loss law's x are the optimal points' compute; its starting grid is built from the full-data losses
        typical = np.where(full.use[0], np.exp(full.log_loss[0]), np.nanmin(self.loss))
        self.loss_law = PowerLaw(np.exp(full.log_c), typical, delta=delta)

    def optimal_points(self, weights: np.ndarray) -> OptimalPoints:
        raise NotImplementedError

    def fit(self, weights: np.ndarray, start: np.ndarray | None = None) -> LawFit:
        weights = np.atleast_2d(weights)
        points = self.optimal_points(weights)
        a, log_n_coef = weighted_line(points.log_c[None, :], points.log_n, points.use)
        b, log_d_coef = weighted_line(points.log_c[None, :], points.log_d, points.use)
        loss_fit = self.loss_law.fit(points.use.astype(float), None if start is None else np.atleast_2d(start)[:, 4:],
                                     log_targets=np.where(points.use, points.log_loss, 0.0))
        theta = np.column_stack([a, log_n_coef, b, log_d_coef, loss_fit.theta])
        warnings = [] if np.isfinite(loss_fit.theta).all() else [
            "too few compute-optimal points for the loss law L_opt(C): no loss predictions"]
        return LawFit(theta, warnings + [f"loss law: {w}" for w in loss_fit.warnings])

    def values(self, theta):
        theta = np.atleast_2d(theta)
        return {"a": theta[:, 0], "b": theta[:, 2], "n_coef": np.exp(theta[:, 1]), "d_coef": np.exp(theta[:, 3]),
                **self.loss_law.values(theta[:, 4:])}

    def allocate(self, theta, compute):
        theta = np.atleast_2d(theta)
        log_c = np.log(np.atleast_1d(np.asarray(compute, dtype=float)))[None, :]
        return (np.exp(theta[:, 1:2] + theta[:, 0:1] * log_c), np.exp(theta[:, 3:4] + theta[:, 2:3] * log_c))

    def predict(self, theta, compute):
        return self.loss_law.predict(np.atleast_2d(theta)[:, 4:], compute)

    def predict_points(self, theta, rows):
        # the loss at the run's compute if it had been allocated optimally: a lower bound for the others
        return self.predict(theta, self.axis[rows])


class Envelope(AllocationLaw):
    """Approach 1: the lower envelope of loss against compute. Needs at least 4 runs."""

    min_points = 4

    def __init__(self, params, tokens, compute, loss, *, delta: float = HUBER_DELTA):
        self.order = np.argsort(compute, kind="stable")
        super().__init__(params, tokens, compute, loss, delta=delta)

    def on_envelope(self, weights: np.ndarray) -> np.ndarray:
        """(B, n) bool: runs present in the row whose loss is below every present run of lower or equal compute."""
        present = np.atleast_2d(weights)[:, self.order] > 0
        loss = np.where(present, self.loss[self.order][None, :], np.inf)
        best_before = np.minimum.accumulate(np.concatenate([np.full((len(loss), 1), np.inf), loss[:, :-1]], 1), 1)
        sorted_mask = present & (loss < best_before)
        mask = np.empty_like(sorted_mask)
        mask[:, self.order] = sorted_mask
        return mask

    def optimal_points(self, weights):
        use = self.on_envelope(weights)
        rows = len(use)
        return OptimalPoints(np.log(self.axis), np.broadcast_to(np.log(self.n), (rows, self.n_points)),
                             np.broadcast_to(np.log(self.d), (rows, self.n_points)),
                             np.broadcast_to(np.log(self.loss), (rows, self.n_points)), use)


class IsoFLOP(AllocationLaw):
    """Approach 2: per compute budget, a parabola of loss in log N (and in log D); its minimum is optimal.

    Runs whose compute lies within a factor (1 + budget_rtol) of the smallest run of a budget share it. A budget
    counts in a fit when it has at least 3 distinct sizes and its parabola opens upwards.
    """

    min_points = 6  # two budgets of three runs

    def __init__(self, params, tokens, compute, loss, *, budget_rtol: float = 0.1, delta: float = HUBER_DELTA):
        compute = np.asarray(compute, dtype=float)
        self.budget = group_budgets(compute, budget_rtol)
        self.budget_compute = np.array([np.exp(np.mean(np.log(compute[self.budget == g])))
                                        for g in range(self.budget.max() + 1)])
        super().__init__(params, tokens, compute, loss, delta=delta)

    def parabolas(self, weights: np.ndarray, size: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per budget and weight row, the weighted parabola loss ≈ c0 + c1·s + c2·s² in s = log size:
        coefficients (B, G, 3), the minimising s (B, G) and the loss there (B, G); NaN where not usable."""
        weights = np.atleast_2d(weights)
        n_budgets = len(self.budget_compute)
        coef = np.full((len(weights), n_budgets, 3), np.nan)
        for g in range(n_budgets):
            members = np.flatnonzero(self.budget == g)
            s = np.log(size[members])
            w = weights[:, members]
            if len(np.unique(s)) < 3:
                continue
            powers = np.stack([np.ones_like(s), s, s * s], axis=1)  # (m, 3)
            normal = np.einsum("bm,mi,mj->bij", w, powers, powers)
            rhs = np.einsum("bm,mi,m->bi", w, powers, self.loss[members])
            distinct = np.array([len(np.unique(s[row > 0])) >= 3 for row in w])
            coef[distinct, g] = np.linalg.solve(normal[distinct], rhs[distinct][..., None])[..., 0]
        c0, c1, c2 = coef[..., 0], coef[..., 1], coef[..., 2]
        with np.errstate(invalid="ignore", divide="ignore"):
            s_min = np.where(c2 > 0, -c1 / (2 * c2), np.nan)
        return coef, s_min, c0 + c1 * s_min + c2 * s_min**2

    def optimal_points(self, weights):
        _, log_n, loss_n = self.parabolas(weights, self.n)
        _, log_d, _ = self.parabolas(weights, self.d)
        use = np.isfinite(log_n) & np.isfinite(log_d) & (loss_n > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            log_loss = np.log(np.where(use, loss_n, 1.0))
        return OptimalPoints(np.log(self.budget_compute), log_n, log_d, log_loss, use)


def group_budgets(compute: np.ndarray, rtol: float) -> np.ndarray:
    """Budget index of each run: sorted by compute, a new budget starts where a run exceeds the first run of the
    current budget by more than a factor (1 + rtol)."""
    order = np.argsort(compute, kind="stable")
    labels = np.empty(len(compute), dtype=int)
    group, first = -1, -np.inf
    for i in order:
        if compute[i] > first * (1 + rtol):
            group, first = group + 1, compute[i]
        labels[i] = group
    return labels
