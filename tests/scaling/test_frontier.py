"""Approaches 1 (envelope) and 2 (isoFLOP) recover the known allocation exponents."""

import numpy as np
import pytest

import scaling
from conftest import TRUTH

A_TRUE = TRUTH["beta"] / (TRUTH["alpha"] + TRUTH["beta"])  # N_opt ∝ C^a, a ≈ 0.452


def test_isoflop_recovers_allocation_exponents(isoflop_runs):
    n, d, c, loss = isoflop_runs()
    fit = scaling.fit_isoflop(n, d, c, loss, bootstrap=200, predict_compute=[1e23])
    assert fit.params["a"] == pytest.approx(A_TRUE, abs=0.02)
    assert fit.params["b"] == pytest.approx(1 - A_TRUE, abs=0.02)
    low, high = fit.ci["a"]
    assert low < fit.params["a"] < high
    p = fit.predictions[0]
    assert p.n_opt_interval[0] < p.n_opt < p.n_opt_interval[1] and p.low < p.loss < p.high
    assert len(fit.law.budget_compute) == 5


def test_envelope_recovers_allocation_exponents():
    # many runs spread over (N, D): the loss-compute envelope then follows the compute-optimal line
    rng = np.random.default_rng(0)
    n = 10 ** rng.uniform(6, 10, 3000)
    d = 10 ** rng.uniform(8, 12.5, 3000)
    loss = TRUTH["E"] + TRUTH["A"] / n ** TRUTH["alpha"] + TRUTH["B"] / d ** TRUTH["beta"]
    fit = scaling.fit_envelope(n, d, 6 * n * d, loss, bootstrap=50, holdout_top=0)
    assert fit.params["a"] == pytest.approx(A_TRUE, abs=0.04)
    assert fit.params["a"] + fit.params["b"] == pytest.approx(1.0)


def test_isoflop_needs_two_budgets_of_three_runs():
    with pytest.raises(scaling.FitInputError, match="at least 2 compute budgets of 3 or more runs"):
        scaling.fit_isoflop([1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1], [1, 10, 100, 1e3, 1e4, 1e5], [3, 3, 3, 3, 3, 3])
