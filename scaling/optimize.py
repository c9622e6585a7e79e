"""Many small, independent minimisations at once: a batched L-BFGS in numpy.

Approach 3 starts L-BFGS from every point of a grid of several thousand starts, and the bootstrap refits a
thousand resamples. Run one `scipy.optimize.minimize` at a time, each costs ~10 ms of Python overhead for a few
microseconds of arithmetic, so the grid alone would take a minute. Here every problem keeps its own iterate,
L-BFGS history, step length and stopping test, but each iteration evaluates the objective of all problems
still running in one vectorised call.

Box bounds are handled by projection (a variable at a bound whose gradient points outward is held there),
which is enough for the simple bounds the scaling forms use (α ≥ 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy.optimize import minimize

# fun(x, rows) -> (f, g): objective values (len(rows),) and gradients (len(rows), p) of problems `rows` at x.
BatchObjective = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass
class BatchResult:
    x: np.ndarray  # (B, p) solutions
    fun: np.ndarray  # (B,) objective values there
    converged: np.ndarray  # (B,) True where a stopping test held before maxiter
    nit: np.ndarray  # (B,) iterations used


# trial steps far from the minimum may overflow to inf; the line search rejects those
@np.errstate(over="ignore", invalid="ignore", divide="ignore")
def minimize_batch(
    fun: BatchObjective,
    x0: np.ndarray,
    *,
    lower: np.ndarray | float = -np.inf,
    upper: np.ndarray | float = np.inf,
    memory: int = 10,
    maxiter: int = 2000,
    ftol: float = 1e-13,
    gtol: float = 1e-12,
) -> BatchResult:
    """Minimise B independent objectives with projected L-BFGS and a backtracking (Armijo) line search.

    Parameters
    ----------
    fun
        ``fun(x, rows)`` returns the objective values and gradients of problems ``rows`` at ``x`` (shape
        ``(len(rows), p)``).
    x0
        Starting points, shape ``(B, p)``.
    lower, upper
        Box bounds, scalars or shape ``(p,)``.
    memory
        Number of (step, gradient change) pairs kept per problem.
    maxiter
        Iteration limit per problem.
    ftol, gtol
        A problem stops when its objective decreases by less than ``ftol · |f|`` in an iteration, or when the
        largest component of its projected gradient is below ``gtol``.
    """
    lower = np.broadcast_to(np.asarray(lower, dtype=float), x0.shape[1:])
    upper = np.broadcast_to(np.asarray(upper, dtype=float), x0.shape[1:])
    x = np.clip(np.array(x0, dtype=float), lower, upper)
    n_problems, p = x.shape
    f, g = fun(x, np.arange(n_problems))
    steps = np.zeros((memory, n_problems, p))  # s_k = x_{k+1} - x_k
    changes = np.zeros((memory, n_problems, p))  # y_k = g_{k+1} - g_k
    rho = np.zeros((memory, n_problems))  # 1 / (s_k · y_k), 0 marks an unusable pair
    scale = np.zeros(n_problems)  # initial inverse-Hessian scale s·y / y·y; 0 until the first usable pair
    converged = np.zeros(n_problems, dtype=bool)
    nit = np.zeros(n_problems, dtype=int)
    running = np.flatnonzero(np.isfinite(f))

    for it in range(maxiter):
        if running.size == 0:
            break
        xr, fr, gr = x[running], f[running], g[running]
        held = ((xr <= lower) & (gr > 0)) | ((xr >= upper) & (gr < 0))
        newest = [(it - 1 - j) % memory for j in range(min(it, memory))]
        direction = -_two_loop(np.where(held, 0.0, gr), steps[:, running], changes[:, running],
                               rho[:, running], scale[running], newest)
        direction[held] = 0.0
        # no usable curvature yet, or not a descent direction: a steepest-descent step of unit length
        slope = (gr * direction).sum(axis=1)
        fallback = ~(slope < 0)
        if fallback.any():
            pg = np.where(held[fallback], 0.0, gr[fallback])
            direction[fallback] = -pg / np.maximum(np.linalg.norm(pg, axis=1, keepdims=True), 1e-300)
            rho[:, running[fallback]] = 0.0
            scale[running[fallback]] = 0.0

        x_new, f_new, g_new, stalled = _backtrack(fun, running, xr, fr, gr, direction, lower, upper)
        s, y = x_new - xr, g_new - gr
        sy, yy = (s * y).sum(axis=1), (y * y).sum(axis=1)
        usable = sy > 1e-10 * np.sqrt((s * s).sum(axis=1) * yy)
        slot = it % memory
        steps[slot, running], changes[slot, running] = s, y
        rho[slot, running] = np.where(usable, 1.0 / np.where(usable, sy, 1.0), 0.0)
        scale[running] = np.where(usable, sy / np.where(usable, yy, 1.0), scale[running])

        x[running], f[running], g[running] = x_new, f_new, g_new
        nit[running] += 1
        held_new = ((x_new <= lower) & (g_new > 0)) | ((x_new >= upper) & (g_new < 0))
        small_gradient = np.abs(np.where(held_new, 0.0, g_new)).max(axis=1) <= gtol
        small_decrease = (fr - f_new) <= ftol * np.maximum(np.abs(f_new), 1e-300)
        done = small_gradient | small_decrease | stalled
        converged[running[done]] = True
        running = running[~done]
    return BatchResult(x=x, fun=f, converged=converged, nit=nit)


def _two_loop(g, steps, changes, rho, scale, newest):
    """The L-BFGS two-loop recursion, H·g, for every problem at once (newest: history slots, newest first)."""
    q = g.copy()
    alphas = {}
    for k in newest:
        alphas[k] = rho[k] * (steps[k] * q).sum(axis=1)
        q -= alphas[k][:, None] * changes[k]
    r = np.where(scale > 0, scale, 1.0)[:, None] * q
    for k in reversed(newest):
        beta = rho[k] * (changes[k] * r).sum(axis=1)
        r += steps[k] * (alphas[k] - beta)[:, None]
    return r


def _backtrack(fun, rows, x, f, g, direction, lower, upper, *, c1=1e-4, shrink=0.5, tries=50):
    """Armijo backtracking along the projected path, for each problem its own step length.

    Returns the accepted points, their values and gradients, and which problems found no decrease (these
    keep their point: a minimum to numerical precision, or a kink the direction cannot see past).
    """
    x_new, f_new, g_new = x.copy(), f.copy(), g.copy()
    searching = np.arange(len(rows))
    t = np.ones(len(rows))
    for _ in range(tries):
        trial = np.minimum(np.maximum(x[searching] + t[searching, None] * direction[searching], lower), upper)
        ft, gt = fun(trial, rows[searching])
        decrease = (g[searching] * (trial - x[searching])).sum(axis=1)
        accept = np.isfinite(ft) & (ft <= f[searching] + c1 * decrease)
        done = searching[accept]
        x_new[done], f_new[done], g_new[done] = trial[accept], ft[accept], gt[accept]
        searching = searching[~accept]
        if searching.size == 0:
            break
        t[searching] *= shrink
    stalled = np.zeros(len(rows), dtype=bool)
    stalled[searching] = True
    return x_new, f_new, g_new, stalled


def polish(fun: BatchObjective, row: int, x0: np.ndarray, *, lower=None, upper=None) -> tuple[np.ndarray, float]:
    """One scipy L-BFGS-B run from `x0` on problem `row`, with tolerances tight enough for objectives whose
    values are small (a sum of Huber losses with δ = 1e-3 is ~1e-3: scipy's default gtol would stop at once)."""
    rows = np.array([row])

    def single(x):
        f, g = fun(x[None, :], rows)
        return float(f[0]), g[0]

    bounds = None if lower is None else list(zip(np.broadcast_to(lower, x0.shape), np.broadcast_to(upper, x0.shape)))
    result = minimize(single, x0, jac=True, method="L-BFGS-B", bounds=bounds,
                      options={"ftol": 1e-15, "gtol": 1e-14, "maxiter": 10_000, "maxcor": 20})
    return result.x, float(result.fun)
