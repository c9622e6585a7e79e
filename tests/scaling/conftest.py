"""Synthetic run tables drawn from known scaling laws, shared by the scaling tests."""

from __future__ import annotations

import numpy as np
import pytest

# Hoffmann et al. 2022's fitted law, the truth the synthetic runs are drawn from
TRUTH = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}


def chinchilla_loss(n, d, law=TRUTH):
    return law["E"] + law["A"] / n ** law["alpha"] + law["B"] / d ** law["beta"]


@pytest.fixture
def chinchilla_runs():
    """(N, D, L) of `count` runs with N, D log-uniform over 3 decades, log-normal noise of `noise`."""

    def make(count=40, noise=0.005, seed=0):
        rng = np.random.default_rng(seed)
        n = 10 ** rng.uniform(7, 10, count)
        d = 10 ** rng.uniform(9, 12, count)
        return n, d, chinchilla_loss(n, d) * np.exp(rng.normal(0, noise, count))

    return make


@pytest.fixture
def isoflop_runs():
    """(N, D, C, L) on isoFLOP lines: 5 budgets, 9 sizes each (C = 6ND), noise `noise`."""

    def make(noise=0.002, seed=0):
        rng = np.random.default_rng(seed)
        rows = []
        for c in np.geomspace(1e18, 1e21, 5):
            n_opt = 0.6 * (c / 6) ** (TRUTH["beta"] / (TRUTH["alpha"] + TRUTH["beta"]))
            for n in n_opt * np.geomspace(1 / 8, 8, 9):
                d = c / (6 * n)
                rows.append((n, d, c, chinchilla_loss(n, d) * np.exp(rng.normal(0, noise))))
        return tuple(np.array(column) for column in zip(*rows))

    return make


@pytest.fixture
def power_law_runs():
    """(C, L) from L = 1.8 + 60·C^−0.12 with noise `noise`, `count` runs over 4 decades."""

    def make(count=8, noise=0.003, seed=0):
        rng = np.random.default_rng(seed)
        c = np.geomspace(1e12, 1e16, count)
        return c, (1.8 + 60 * c**-0.12) * np.exp(rng.normal(0, noise, count))

    return make
