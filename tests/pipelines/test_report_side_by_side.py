"""The report's side-by-side section for two series fitted by Approach 3 (a cosine grid and a WSD grid of the same
sizes and budgets), on real L(N, D) fits of runs drawn from known laws."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import scaling
from pipelines.steps.report import _side_by_side_section

LAW = {"E": 1.2, "A": 40.0, "B": 60.0, "alpha": 0.35, "beta": 0.3}


def fitted(law: dict, seed: int) -> dict:
    """fit.json's chinchilla entry for 4 sizes × 5 budgets drawn from `law` with 0.3% noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for n in (6e3, 14e3, 25e3, 39e3):
        for ratio in (4, 8, 12, 16, 20):
            d = ratio * n
            loss = law["E"] + law["A"] / n ** law["alpha"] + law["B"] / d ** law["beta"]
            loss *= np.exp(rng.normal(0, 0.003))
            rows.append({"run_id": f"{n:g}-{ratio}", "params": n, "params_nonembedding": n, "tokens": d,
                         "loss": loss, "flops_6ND": 6 * n * d, "status": "ok"})
    runs = pd.DataFrame(rows)
    result = scaling.fit_runs(runs, "chinchilla", convention="6ND", bootstrap=200,
                              predict_compute=[10 * runs["flops_6ND"].max()], seed=0)
    return {"chinchilla": result.to_dict()}


@pytest.fixture(scope="module")
def cosine():
    return fitted(LAW, seed=1)


def test_two_series_of_one_law_predict_inside_each_others_interval(cosine):
    fits = {"cosine": cosine, "wsd": fitted(LAW, seed=2)}
    lines = _side_by_side_section(["cosine", "wsd"], fits, {"cosine": 2.0e12, "wsd": 0.9e12}, "6ND")
    text = "\n".join(lines)
    assert lines[0] == "## Side by side: compute, L(N, D) and allocation"
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in lines if line.startswith("| cosine")
            or line.startswith("| wsd")}
    assert rows["cosine"][1:3] == ["2.00e+12", "100.0%"] and rows["wsd"][1:3] == ["9.00e+11", "45.0%"]
    e = fits["wsd"]["chinchilla"]
    assert rows["wsd"][3] == f"{e['E']:.3g} [{e['ci']['E'][0]:.3g}, {e['ci']['E'][1]:.3g}]"
    assert "wsd's prediction" in text and "lies inside cosine's 90% interval" in text


def test_a_series_off_the_others_law_is_said_to_be_outside(cosine):
    shifted = fitted({**LAW, "E": LAW["E"] + 0.3}, seed=3)
    text = "\n".join(_side_by_side_section(["cosine", "wsd"], {"cosine": cosine, "wsd": shifted}, {}, "6ND"))
    assert "lies **outside** cosine's 90% interval" in text and "lies **outside** wsd's 90% interval" in text


def test_one_series_or_a_failed_fit_gives_no_section(cosine):
    assert _side_by_side_section(["cosine"], {"cosine": cosine}, {}, "6ND") == []
    failed = {"chinchilla": {"form": "chinchilla", "error": "too few runs"}}
    assert _side_by_side_section(["cosine", "wsd"], {"cosine": cosine, "wsd": failed}, {}, "6ND") == []


def test_a_law_not_identified_gives_no_point_prediction_to_compare(cosine):
    unidentified = {"chinchilla": {**cosine["chinchilla"], "identified": False, "unidentified": ["E reaches 0"]}}
    text = "\n".join(_side_by_side_section(["cosine", "wsd"], {"cosine": unidentified, "wsd": fitted(LAW, seed=2)},
                                           {}, "6ND"))
    assert "cosine's prediction" not in text and "| cosine |" in text and "not identified |" in text
    assert "wsd's prediction" in text and "cosine (E reaches 0)" in text  # the identified one is still compared
