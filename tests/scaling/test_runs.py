"""Loading and validating run tables, and the data hygiene of fit_runs."""

import numpy as np
import pandas as pd
import pytest

import scaling
from scaling import FitInputError


def write(tmp_path, text, name="runs.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def one_line(error) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_missing_file_names_it(tmp_path):
    with pytest.raises(FitInputError) as e:
        scaling.load_runs_csv(tmp_path / "nowhere.csv")
    assert "nowhere.csv" in one_line(e) and "no such file" in one_line(e)


def test_missing_columns_are_named(tmp_path):
    path = write(tmp_path, "params,flops\n1,2\n")
    with pytest.raises(FitInputError) as e:
        scaling.load_runs_csv(path)
    assert "runs.csv" in one_line(e) and "missing columns tokens, loss" in one_line(e)


def test_non_numeric_value_names_column_and_row(tmp_path):
    path = write(tmp_path, "params,tokens,loss\n1e6,2e7,3.1\n2e6,4e7,oops\n")
    with pytest.raises(FitInputError) as e:
        scaling.load_runs_csv(path)
    assert "column 'loss', row 2" in one_line(e) and "'oops'" in one_line(e)


def test_extra_columns_kept_and_empty_cells_are_nan(tmp_path):
    path = write(tmp_path, "run_id,family,params,tokens,loss,status\na,t,1e6,2e7,3.1,ok\nb,t,2e6,4e7,,failed\n")
    runs = scaling.load_runs_csv(path)
    assert list(runs["family"]) == ["t", "t"] and np.isnan(runs["loss"][1])


def table(count=8):
    c = np.geomspace(1e12, 1e16, count)
    return pd.DataFrame({"run_id": [f"r{i}" for i in range(count)], "params": c / 6e3, "tokens": 1e3 * np.ones(count),
                         "params_nonembedding": c / 6e3, "loss": 1.8 + 60 * c**-0.12, "flops": c,
                         "initial_loss": 8.0, "status": "ok"})


def test_hygiene_excludes_and_lists_each_bad_row():
    runs = table()
    runs.loc[len(runs)] = ["nan", 1, 1, 1, np.nan, 1e15, 8.0, "ok"]
    runs.loc[len(runs)] = ["inf", 1, 1, 1, np.inf, 1e15, 8.0, "ok"]
    runs.loc[len(runs)] = ["neg", 1, 1, 1, 2.0, -1e15, 8.0, "ok"]
    runs.loc[len(runs)] = ["div", 1, 1, 1, 9.0, 1e15, 8.0, "ok"]
    runs.loc[len(runs)] = ["failed", 1, 1, 1, 2.0, 1e15, 8.0, "diverged"]
    fit = scaling.fit_runs(runs, "compute", bootstrap=20)
    reasons = {row["run_id"]: row["reason"] for row in fit.excluded}
    assert fit.n_points == 8
    assert reasons == {"nan": "loss is missing", "inf": "loss is infinite", "neg": "flops is not positive (-1e+15)",
                       "div": "diverged: final loss 9 above initial loss 8", "failed": "status diverged"}


def test_too_few_points_is_a_clear_error():
    with pytest.raises(FitInputError) as e:
        scaling.fit_runs(table(3), "compute", bootstrap=10)
    assert one_line(e) == "the compute fit needs at least 4 usable runs, got 3"


def test_missing_columns_for_a_convention_are_named():
    runs = table().drop(columns=["flops"])
    with pytest.raises(FitInputError) as e:
        scaling.fit_runs(runs, "compute", convention="per_layer")
    assert "per_layer FLOPs convention needs columns n_layer, d_model, seq_len, vocab_size" in one_line(e)


def test_convention_computes_flops_from_columns():
    runs = table().drop(columns=["flops"])
    fit = scaling.fit_runs(runs, "compute", convention="6ND", bootstrap=0, holdout_top=0)
    assert fit.convention == "6ND" and np.allclose(fit.law.axis, 6 * runs["params_nonembedding"] * runs["tokens"])


@pytest.mark.parametrize("form, message", [("nope", "unknown form 'nope'"),
                                           ("params", "compute-based form")])
def test_bad_form_or_prediction_request(form, message):
    with pytest.raises(FitInputError, match=message):
        scaling.fit_runs(table(), form, bootstrap=0, predict_compute=[1e20])


def test_missing_loss_column_is_named():
    with pytest.raises(FitInputError, match="missing column loss"):
        scaling.fit_runs(table().drop(columns=["loss"]), "compute")
