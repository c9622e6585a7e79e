"""FitResult.to_dict: the keys of `arscale fit --json`, JSON-able with no NaN; plots write PNGs."""

import json

import numpy as np
import pandas as pd
import pytest

import scaling
from scaling import plots

KEYS = {"form", "ci", "backtest", "predictions", "n_points", "excluded", "convention", "warnings"}


@pytest.fixture(scope="module")
def runs():
    """An isoFLOP-style table with one diverged and one failed run."""
    rng = np.random.default_rng(0)
    rows = []
    for c in np.geomspace(1e18, 1e20, 3):
        for n in 1e8 * np.geomspace(0.1, 10, 5) * (c / 1e18) ** 0.45:
            d = c / (6 * n)
            loss = (1.69 + 406.4 / n**0.34 + 410.7 / d**0.28) * np.exp(rng.normal(0, 0.003))
            rows.append({"run_id": f"r{len(rows)}", "params": n, "params_nonembedding": n, "tokens": d,
                         "loss": loss, "flops": c, "initial_loss": 10.0, "status": "ok"})
    rows.append({**rows[0], "run_id": "unstable", "loss": None, "status": "diverged", "reason": "loss became nan"})
    rows.append({**rows[1], "run_id": "worse", "loss": 11.0})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("form, law_keys", [("compute", {"E", "A", "alpha"}), ("params", {"E", "A", "alpha"}),
                                            ("tokens", {"E", "A", "alpha"}),
                                            ("chinchilla", {"E", "A", "B", "alpha", "beta"}),
                                            ("envelope", {"a", "b", "E", "A", "alpha"}),
                                            ("isoflop", {"a", "b", "E", "A", "alpha"})])
def test_to_dict_schema(runs, form, law_keys, tmp_path):
    predict = [1e21] if form not in ("params", "tokens") else []
    fit = scaling.fit_runs(runs, form, bootstrap=50, predict_compute=predict)
    out = fit.to_dict()
    text = json.dumps(out, allow_nan=False)  # raises on NaN or inf
    assert KEYS | law_keys <= set(json.loads(text))
    assert out["form"] == form and out["n_points"] == 15
    assert {row["run_id"] for row in out["excluded"]} == {"unstable", "worse"}
    assert "loss became nan" in json.dumps(out["excluded"])
    assert all(isinstance(v, list) and len(v) == 2 for v in out["ci"].values())
    assert out["backtest"] is None or {"x", "actual", "predicted", "abs_rel_error", "mean_abs_rel_error"} <= set(
        out["backtest"])
    for p in out["predictions"]:
        assert {"compute", "loss", "low", "high"} <= set(p)
        if form in ("chinchilla", "envelope", "isoflop"):
            assert {"n_opt", "d_opt", "tokens_per_param"} <= set(p)
    assert plots.plot_frontier(runs, fit, tmp_path / "f.png", extrapolate_to=1e22).stat().st_size > 10_000


def test_plots_write_pngs(runs, tmp_path):
    iso = scaling.fit_runs(runs, "isoflop", bootstrap=30, predict_compute=[1e21])
    chin = scaling.fit_runs(runs, "chinchilla", bootstrap=30, holdout_top=0, predict_compute=[1e21])
    written = [plots.plot_isoflops(iso, tmp_path / "iso.png"),
               plots.plot_optimal_allocation(iso, tmp_path / "alloc_iso.png"),
               plots.plot_optimal_allocation(chin, tmp_path / "alloc.png", extrapolate_to=1e22),
               plots.plot_backtest(iso, tmp_path / "bt.png"),
               plots.plot_backtest(chin, tmp_path / "no_bt.png"),
               plots.plot_frontier((chin.law.axis, chin.law.loss), chin, tmp_path / "arrays.png"),
               plots.plot_learning_curves({"small": ([1e3, 1e4, 1e5], [6.0, 5.0, 4.5]),
                                           "large": ([1e3, 1e4, 1e5], [6.0, 4.6, 3.9])}, tmp_path / "lc.png")]
    for path in written:
        assert path.stat().st_size > 10_000, path


def test_no_heavy_imports():
    import subprocess
    import sys

    code = ("import scaling, sys; heavy = [m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'ray', 'mlflow', 'armodels', 'pipelines')]; assert not heavy, heavy")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0
