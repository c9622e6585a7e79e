"""The next-run advisor ranks affordable runs by how much they narrow the prediction at the target."""

import numpy as np
import pandas as pd

import scaling


def table(n, d, loss):
    return pd.DataFrame({"run_id": [f"r{i}" for i in range(len(n))], "params": n, "tokens": d, "loss": loss,
                         "flops": 6 * n * d})


def test_advise_compute_form(power_law_runs):
    c, loss = power_law_runs(count=6, noise=0.005)
    runs = table(c / 6e4, np.full(6, 1e4), loss)
    advice = scaling.advise(runs, target_compute=1e18, budget=1e17, form="compute", n_candidates=4, top=2,
                            bootstrap=100)
    assert len(advice) == 2 and advice[0].expected_width <= advice[1].expected_width
    assert all(a.compute <= 1e17 for a in advice)


def test_advise_chinchilla_within_budget(chinchilla_runs):
    n, d, loss = chinchilla_runs(count=12, noise=0.005)
    advice = scaling.advise(table(n, d, loss), target_compute=1e24, budget=1e21, n_candidates=4, top=3,
                            bootstrap=60, draws=1)
    assert len(advice) == 3
    for a in advice:
        assert a.compute <= 1e21 * (1 + 1e-9) and 6 * a.params * a.tokens <= 1e21 * (1 + 1e-9)
        assert np.isfinite(a.expected_width) and a.width_now > 0
