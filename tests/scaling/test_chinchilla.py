"""Approach 3: L(N, D) = E + A/N^α + B/D^β, fitted as in Hoffmann et al. with Besiroglu et al.'s corrections."""

import numpy as np
import pytest

import scaling
from conftest import TRUTH


def test_recovers_known_parameters_within_2_percent(chinchilla_runs):
    n, d, loss = chinchilla_runs(count=40, noise=0.0005)
    fit = scaling.fit_chinchilla(n, d, loss, bootstrap=0, holdout_top=0)
    for name, truth in TRUTH.items():
        assert fit.params[name] == pytest.approx(truth, rel=0.02), name
    assert fit.params["a"] == pytest.approx(0.28 / 0.62, rel=0.02)


def test_huber_is_robust_to_outliers_where_least_squares_is_not(chinchilla_runs):
    n, d, loss = chinchilla_runs(count=40, noise=0.002, seed=1)
    spoiled = loss.copy()
    spoiled[np.argsort(n)[:3]] *= 1.4  # three of the smallest runs badly off (e.g. a data bug)
    huber = scaling.fit_chinchilla(n, d, spoiled, bootstrap=0, holdout_top=0)
    squares = scaling.fit_chinchilla(n, d, spoiled, bootstrap=0, holdout_top=0, delta=np.inf)
    for name in ("alpha", "beta", "E"):
        assert huber.params[name] == pytest.approx(TRUTH[name], rel=0.05), name
    assert max(abs(squares.params[k] / TRUTH[k] - 1) for k in ("alpha", "beta", "E")) > 0.1


def test_bootstrap_backtest_and_compute_optimal(chinchilla_runs):
    n, d, loss = chinchilla_runs(count=30, noise=0.003)
    fit = scaling.fit_chinchilla(n, d, loss, bootstrap=200, holdout_top=2, predict_compute=[1e23])
    assert fit.bootstrap_used == 200 and set(fit.ci) >= {"E", "A", "B", "alpha", "beta", "loss@1e+23"}
    assert fit.backtest.mean_abs_rel_error < 0.02
    optimum = scaling.compute_optimal(fit, 1e23)
    p = fit.predictions[0]
    assert optimum.loss == pytest.approx(p.loss) and p.low <= p.loss <= p.high
    assert 6 * optimum.n_opt * optimum.d_opt == pytest.approx(1e23)
    assert optimum.tokens_per_param == pytest.approx(optimum.d_opt / optimum.n_opt)
    # at the optimum, moving along the isoFLOP line only raises the loss
    law = fit.law
    for factor in (0.8, 1.25):
        assert law.loss_at(fit.theta[None], optimum.n_opt * factor, optimum.d_opt / factor)[0, 0] > optimum.loss


@pytest.mark.slow
def test_warns_when_the_optimum_is_outside_the_grid():
    rng = np.random.default_rng(0)
    n, d = 10 ** rng.uniform(7, 10, 30), 10 ** rng.uniform(9, 12, 30)
    loss = 12.0 + 406.4 / n**0.34 + 410.7 / d**0.28  # E = 12: e = 2.5, beyond the grid's 2
    fit = scaling.fit_chinchilla(n, d, loss, bootstrap=0, holdout_top=0)
    assert any("e = log E" in w and "edge" in w for w in fit.warnings)


def test_compute_optimal_refuses_a_1d_fit(power_law_runs):
    fit = scaling.fit_compute(*power_law_runs(), bootstrap=0)
    with pytest.raises(ValueError, match="does not model how compute splits"):
        scaling.compute_optimal(fit, 1e20)
