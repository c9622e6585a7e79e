"""The learning-rate annealing law (Tissue et al. 2024, "Scaling Law with Learning Rate Annealing"): the whole loss
curve of a run from its learning-rate schedule, for one model size and data set.

    L(s) = L0 + A · S1(s)^−α − C · S2(s)

    S1(s) = Σ_{i≤s} η_i                      the forward area: how far the lr has carried the weights
    S2(s) = Σ_{i≤s} m_i,  m_i = λ·m_{i−1} + max(η_{i−1} − η_i, 0)    the annealing area: the lr's fall so
                                                                      far, with momentum λ (Tissue et al.: 0.999)

The first term is the power law in "distance travelled" that a constant learning rate gives; the second is what a
cooldown adds on top (the sharp drop of a WSD decay, the slow gain of a cosine). Fitted on the logged curves of a
few runs of one size (any schedules: cosine runs, a WSD trunk and its cooldown branches), it predicts the loss of a
schedule or length that was not trained; `backtest_annealing` measures that on the runs themselves (each run's final
loss predicted from the others' curves).

Two settings are not parameters of the law: the momentum λ, and how much of the start of the curves to leave out
(where the loss falls faster than the law describes). Tissue et al.'s λ = 0.999 was set on runs of tens of thousands
of steps; on short runs (a cooldown of a few hundred steps) it leaves most of a decay's effect still to come.
`select_annealing` picks both among candidates by how well each predicts the final loss of one curve from the
others (leave-one-curve-out), and `backtest_annealing(..., select=True)` repeats that choice without the run it
predicts (nested), so a backtest never sees the run it scores.

    curves = [AnnealingCurve(lrs, steps, losses), ...]
    fit = select_annealing(curves, min_step=warmup)
    fit.predict(lrs_of_another_schedule, [last_step])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares
from scipy.signal import lfilter

MOMENTUM = 0.999  # λ of the annealing area (Tissue et al.'s choice; 0.99-0.999 fit alike in their paper)
HUBER_SCALE = 0.01  # residuals (in log loss) beyond ~1% count linearly: a noisy minibatch loss does not steer the fit
ALPHA_STARTS = (0.1, 0.3, 0.6, 1.0)  # starting exponents: the fit is not convex in α
BOUND_SHARE = 1e-3  # a parameter within this share of its bound (a term worth less of the loss) is not identified
FINAL_POINTS = 5  # a run's final loss: the mean of its last logged losses (one is as noisy as a minibatch)
MOMENTA = (0.98, 0.99, 0.995, 0.999)  # λ candidates of select_annealing
SKIPS = (0.0, 0.1, 0.2)  # candidate shares of the shortest fitted curve's steps left out at its start


@dataclass(frozen=True)
class AnnealingCurve:
    """One run's curve: the learning rate of every optimizer step from the first (absolute, not a multiplier),
    and the loss measured after some of those steps (`steps` index into `lrs`)."""

    lrs: np.ndarray
    steps: np.ndarray
    losses: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "lrs", np.asarray(self.lrs, dtype=float))
        object.__setattr__(self, "steps", np.asarray(self.steps, dtype=int))
        object.__setattr__(self, "losses", np.asarray(self.losses, dtype=float))
        if self.steps.shape != self.losses.shape or self.steps.ndim != 1:
            raise ValueError("steps and losses must be 1-D arrays of the same length")
        if len(self.steps) and (self.steps.min() < 0 or self.steps.max() >= len(self.lrs)):
            raise ValueError(f"steps must lie within the {len(self.lrs)} steps of the schedule")
        if np.any(self.lrs < 0) or not np.all(np.isfinite(self.losses)) or np.any(self.losses <= 0):
            raise ValueError("learning rates must be non-negative and losses positive and finite")

    @property
    def final_steps(self) -> np.ndarray:
        """The steps whose mean loss is the run's final loss (its last FINAL_POINTS logged points)."""
        return np.sort(self.steps)[-FINAL_POINTS:]

    @property
    def final_loss(self) -> float:
        return float(np.mean(self.losses[np.argsort(self.steps)][-FINAL_POINTS:]))


def areas(lrs: Sequence[float], momentum: float = MOMENTUM) -> tuple[np.ndarray, np.ndarray]:
    """(S1, S2) after each step of a schedule `lrs`: the forward area and the annealing area (module docstring).
    Only falls of the lr anneal: a rise (the warmup) adds no annealing area."""
    lrs = np.asarray(lrs, dtype=float)
    falls = np.maximum(-np.diff(lrs, prepend=lrs[:1]), 0.0)  # η_{i−1} − η_i where the lr falls
    momenta = lfilter([1.0], [1.0, -momentum], falls)  # m_i = λ·m_{i−1} + fall_i
    return np.cumsum(lrs), np.cumsum(momenta)


@dataclass(frozen=True)
class AnnealingFit:
    """L(s) = L0 + A·S1^−α − C·S2 fitted on `points` logged losses of `runs` curves."""

    L0: float
    A: float
    alpha: float
    C: float
    momentum: float
    rmse: float  # root mean square relative error of the fitted points (log loss)
    points: int
    runs: int
    at_bound: tuple[str, ...] = ()  # parameters the fit left at a bound: the curves do not identify them
    min_step: int = 0  # the first step fitted

    def predict(self, lrs: Sequence[float], steps: Sequence[int] | None = None) -> np.ndarray:
        """The loss after each of `steps` (default: the last step) of a run with schedule `lrs`."""
        s1, s2 = areas(lrs, self.momentum)
        at = np.asarray([len(s1) - 1] if steps is None else steps, dtype=int)
        return _law(np.array([self.L0, self.A, self.alpha, self.C]), s1[at], s2[at])

    def predict_final(self, curve: AnnealingCurve) -> float:
        """The law's final loss of `curve`'s run, over the same steps as `curve.final_loss`."""
        return float(np.mean(self.predict(curve.lrs, curve.final_steps)))

    def to_dict(self) -> dict:
        return {"form": "lr_annealing", "params": {"L0": self.L0, "A": self.A, "alpha": self.alpha, "C": self.C},
                "momentum": self.momentum, "min_step": self.min_step, "rmse": self.rmse, "points": self.points,
                "runs": self.runs, "at_bound": list(self.at_bound)}


def _law(x: np.ndarray, s1: np.ndarray, s2: np.ndarray) -> np.ndarray:
    L0, A, alpha, C = x
    return L0 + A * s1 ** -alpha - C * s2


def fit_annealing(curves: Sequence[AnnealingCurve], *, momentum: float = MOMENTUM,
                  min_step: int = 0) -> AnnealingFit:
    """Fit the annealing law on every logged point of `curves` from step `min_step` on (leave out the warmup,
    whose losses fall faster than any law of the lr's area describes).

    Least squares on log losses with a Huber loss (HUBER_SCALE), from several starting exponents; L0 ≥ 0, A > 0,
    0 < α ≤ 3, C ≥ 0. Raises ValueError when fewer than 4 points remain or none of the fits converge."""
    s1, s2, losses = [], [], []
    for curve in curves:
        a1, a2 = areas(curve.lrs, momentum)
        keep = curve.steps >= min_step
        s1.append(a1[curve.steps[keep]])
        s2.append(a2[curve.steps[keep]])
        losses.append(curve.losses[keep])
    s1, s2, losses = map(np.concatenate, (s1, s2, losses))
    if len(losses) < 4:
        raise ValueError(f"the annealing law has 4 parameters and needs more points than that ({len(losses)} given)")
    if np.any(s1 <= 0):
        raise ValueError("every fitted point needs a positive learning-rate area (a step with lr > 0 before it)")

    def residuals(x: np.ndarray) -> np.ndarray:
        predicted = _law(x, s1, s2)
        return np.log(np.maximum(predicted, 1e-12)) - np.log(losses)

    lower, upper = [0.0, 1e-12, 1e-3, 0.0], [float(losses.min()), np.inf, 3.0, np.inf]
    best = None
    for alpha in ALPHA_STARTS:
        # L0 half the lowest loss; A so that the law meets the first point; no annealing term to begin with
        first = np.argmin(s1)
        L0 = 0.5 * losses.min()
        A = max((losses[first] - L0) * s1[first] ** alpha, 1e-9)
        x0 = np.clip([L0, A, alpha, 0.0], lower, [u if np.isfinite(u) else 1e300 for u in upper])
        try:
            result = least_squares(residuals, x0, bounds=(lower, upper), loss="huber", f_scale=HUBER_SCALE,
                                   x_scale="jac", max_nfev=5000)
        except ValueError:
            continue
        if result.success and (best is None or result.cost < best.cost):
            best = result
    if best is None:
        raise ValueError("the annealing law did not converge from any start")
    rmse = float(np.sqrt(np.mean(residuals(best.x) ** 2)))
    L0, A, alpha, C = map(float, best.x)
    # a term worth under BOUND_SHARE of the loss, or an exponent at its limit, is one the curves did not pin down
    at_bound = tuple(name for name, stuck in (
        ("L0", L0 <= BOUND_SHARE * losses.min() or L0 >= (1 - BOUND_SHARE) * upper[0]),
        ("alpha", alpha <= lower[2] * (1 + BOUND_SHARE) or alpha >= upper[2] * (1 - BOUND_SHARE)),
        ("C", C * s2.max() <= BOUND_SHARE * losses.min())) if stuck)
    return AnnealingFit(L0, A, alpha, C, momentum, rmse, len(losses), len(curves), at_bound, min_step)


def select_annealing(curves: Sequence[AnnealingCurve], *, min_step: int = 0, momenta: Sequence[float] = MOMENTA,
                     skips: Sequence[float] = SKIPS) -> AnnealingFit:
    """`fit_annealing` on `curves` with the momentum λ in `momenta` and the first fitted step that predict final
    losses best: each pair is scored by the mean squared relative error of every curve's final loss predicted from
    the other curves (leave-one-curve-out). The first fitted step is `min_step` (the warmup) or a share in `skips` of
    the shortest curve's steps, whichever is later. With fewer than 3 curves there is nothing to score on, and the
    first candidates are used. Raises ValueError as fit_annealing does."""
    def first_step(skip: float, fitted: Sequence[AnnealingCurve]) -> int:
        return max(min_step, int(skip * min(len(c.lrs) for c in fitted)))

    if len(curves) < 3:
        return fit_annealing(curves, momentum=momenta[0], min_step=first_step(skips[0], curves))
    best = None
    for momentum in momenta:
        for skip in skips:
            try:
                errors = []
                for i, held_out in enumerate(curves):
                    others = [c for j, c in enumerate(curves) if j != i]
                    fit = fit_annealing(others, momentum=momentum, min_step=first_step(skip, others))
                    errors.append(fit.predict_final(held_out) / held_out.final_loss - 1)
            except ValueError:  # too few points left, or no convergence: not a candidate
                continue
            score = float(np.mean(np.square(errors)))
            if best is None or score < best[0]:
                best = (score, momentum, skip)
    if best is None:
        raise ValueError("the annealing law did not converge for any momentum and start")
    _, momentum, skip = best
    return fit_annealing(curves, momentum=momentum, min_step=first_step(skip, curves))


@dataclass(frozen=True)
class AnnealingBacktest:
    """Each run's final loss predicted by the law fitted on the other runs' curves."""

    predicted: np.ndarray
    actual: np.ndarray
    fits: tuple[AnnealingFit, ...] = ()  # the law each prediction came from (its momentum and first step)

    @property
    def relative_errors(self) -> np.ndarray:
        return (self.predicted - self.actual) / self.actual

    @property
    def worst(self) -> float:
        """The largest relative error, in absolute value."""
        return float(np.max(np.abs(self.relative_errors)))


def backtest_annealing(curves: Sequence[AnnealingCurve], *, select: bool = False, **options) -> AnnealingBacktest:
    """Leave each curve out in turn: fit the others (`fit_annealing` with `options`, or `select_annealing` with
    them if `select`, which then chooses among the others alone) and predict its final loss (the mean of its last
    FINAL_POINTS logged losses) from its schedule. Needs at least 2 curves."""
    if len(curves) < 2:
        raise ValueError("a backtest needs at least 2 curves: one to predict, the others to fit")
    fitter = select_annealing if select else fit_annealing
    fits = [fitter([c for j, c in enumerate(curves) if j != i], **options) for i in range(len(curves))]
    return AnnealingBacktest(np.array([fit.predict_final(c) for fit, c in zip(fits, curves)]),
                             np.array([c.final_loss for c in curves]), tuple(fits))
