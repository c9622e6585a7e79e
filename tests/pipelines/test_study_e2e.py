"""The tiny study end to end on real Ray, DeepSpeed, MLflow (SQLite) and Parquet, then re-runs."""

import json
import time

import pytest
from mlflow import MlflowClient

from pipelines.config import StudyConfig
from pipelines.study import STUDY_FILE, run_study
from tests.support.studies import step_dir

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_config(tiny_study_config):
    return tiny_study_config


@pytest.fixture(scope="module")
def study(tiny_study):
    return tiny_study  # tests/conftest.py: the text-tiny preset plus a size that diverges


def test_every_step_ran(study):
    out, outcomes, _ = study
    assert len(outcomes) == 3 + 2 * 6 + 2
    assert {o.state for o in outcomes.values()} == {"succeeded"}
    assert outcomes["train-unstable"].summary["status"] == "diverged"


def test_fit_has_a_backtest_and_predictions(study):
    out, _, _ = study
    fit = json.loads((step_dir(out, "fit") / "fit.json").read_text())["families"]["transformer"]
    compute = fit["compute"]
    assert compute["n_points"] == 5 and compute["alpha"] > 0
    assert {"E", "alpha"} <= set(compute["ci"]) and ("A" in compute["ci"] or not compute["identified"])
    assert len(compute["backtest"]["abs_rel_error"]) == 1
    assert len(compute["predictions"]) == 3
    assert any("unstable" in json.dumps(row) for row in compute["excluded"])
    assert fit["params"]["n_points"] == 5


def test_report_has_plots_and_names_the_diverged_run(study):
    out, _, _ = study
    report = (out / "report" / "report.md").read_text()
    for section in ("## What these numbers rest on", "## Runs", "## Noise", "## Loss vs tokens", "## Loss vs compute",
                    "#### Backtests", "#### Predictions", "### Which form extrapolates best", "### FLOPs convention",
                    "## Samples", "## Fit data", "## Provenance"):
        assert section in report
    for png in ("learning_curves.png", "frontier-transformer.png", "backtest-transformer.png"):
        assert f"]({png})" in report and (out / "report" / png).stat().st_size > 10_000
    assert "**unstable**: diverged — loss became nan" in report
    assert (out / "report" / "fit.json").is_file() and (out / "report" / "runs.csv").is_file()  # the fit data


def test_every_run_is_in_mlflow(study, monkeypatch):
    out, _, _ = study
    monkeypatch.chdir(out)  # artifact locations are relative to the study folder, as `mlflow ui` there reads them
    client = MlflowClient(f"sqlite:///{out}/mlflow.db")
    experiment = client.get_experiment_by_name("text-tiny")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(parents) == 1 and len(children) == 17
    by_name = {r.info.run_name: r for r in children}
    train = by_name["train-transformer-24.9k"]
    history = client.get_metric_history(train.info.run_id, "train_loss")
    steps = [m.step for m in history]
    assert len(history) >= 3 and steps == sorted(steps) and steps[-1] == json.loads(
        (step_dir(out, "train-transformer-24.9k") / "result.json").read_text())["tokens"]  # step = tokens seen
    assert train.data.params["train.lr"] == "0.005" and train.data.params["model.n_embd"] == "32"
    assert train.data.tags["arscale.input.shards"] == step_dir(out, "shards").name
    assert {"val_loss_subset", "flops_6ND", "tokens_per_s"} <= set(train.data.metrics)
    assert "val_loss" not in train.data.metrics  # the eval run's val_loss is on the whole split: one name, one meaning
    assert by_name["train-unstable"].info.status == "FAILED"
    assert "loss became nan" in by_name["train-unstable"].data.tags["arscale.error"]
    assert by_name["eval-transformer-24.9k"].data.metrics["val_bits_per_byte"] > 0
    fit = by_name["fit"]
    assert fit.data.tags["arscale.input.transformer-24.9k"] == step_dir(out, "eval-transformer-24.9k").name
    artifacts = {a.path for a in client.list_artifacts(fit.info.run_id)}
    assert {"fit.json", "runs.csv"} <= artifacts
    assert any(a.path == "report" for a in client.list_artifacts(by_name["report"].info.run_id))


def test_rerun_trains_nothing(study, tiny_config):
    out, _, _ = study
    cfg, path = tiny_config
    started = time.time()
    outcomes = run_study(cfg, path, out)
    assert {o.state for o in outcomes.values()} == {"skipped"}
    assert time.time() - started < 60


def test_config_change_reruns_only_downstream_steps(study, tiny_config):
    out, _, _ = study
    cfg, path = tiny_config
    changed = cfg.model_copy(update={"evaluation": cfg.evaluation.model_copy(update={"samples": 2})})
    outcomes = run_study(changed, path, out)
    ran = {n for n, o in outcomes.items() if o.state == "succeeded"}
    assert ran == {n for n in outcomes if n.startswith("eval-")} | {"fit", "report"}


def test_the_fit_can_be_rebuilt_from_mlflow_alone(study):
    import scaling
    from pipelines.mlflow_runs import runs_from_mlflow

    out, _, _ = study
    runs, experiment = runs_from_mlflow(f"sqlite:///{out}/mlflow.db")
    assert experiment == "text-tiny" and len(runs) == 6
    refit = scaling.fit_runs(runs, "compute", convention="per_layer", bootstrap=0, holdout_top=0)
    saved = json.loads((step_dir(out, "fit") / "fit.json").read_text())["families"]["transformer"]["compute"]
    assert refit.n_points == 5 and any("unstable" in json.dumps(row) for row in refit.excluded)
    for key in ("E", "A", "alpha"):
        assert refit.params[key] == pytest.approx(saved[key], rel=1e-6)


# ---- Every fit form on the MLflow runs of a real study: a small isoFLOP grid in the same study folder, so its
# corpus, tokenizer and shards steps are the ones above (skipped) and only its six runs train. Runs last in this
# module: the store then holds two studies, and the tests above read it as holding one.

ISOFLOP_SIZES = [{"n_layer": 1, "n_embd": 8, "n_head": 2}, {"n_layer": 1, "n_embd": 16, "n_head": 2},
                 {"n_layer": 2, "n_embd": 16, "n_head": 2}]


@pytest.fixture(scope="module")
def isoflop_study(study, tiny_config):
    out, _, _ = study
    cfg, path = tiny_config
    data = cfg.model_dump()
    data["name"] = "text-isoflop-e2e"
    data["models"]["grids"] = [{"family": "transformer", "sizes": ISOFLOP_SIZES}]
    data["training"].update(tokens=None, flops_budgets=[2e8, 6e8])
    data["fit"]["convention"] = "6ND"  # the budgets are in 6ND
    outcomes = run_study(StudyConfig.model_validate(data), path, out)
    return out, outcomes


def test_an_isoflop_study_skips_the_shared_steps_and_fits_all_three_approaches(isoflop_study):
    out, outcomes = isoflop_study
    assert {outcomes[n].state for n in ("corpus", "tokenizer", "shards")} == {"skipped"}
    assert sum(n.startswith("train-") and o.state == "succeeded" for n, o in outcomes.items()) == 6
    study = json.loads((out / STUDY_FILE).read_text())
    fit_dir = step_dir(out, "fit")
    fits = json.loads((fit_dir / "fit.json").read_text())["families"]["transformer"]
    for form in ("isoflop", "envelope", "chinchilla"):
        assert "error" not in fits[form], (form, fits[form])
    # L(C) is fitted on the frontier: two budgets give two points, too few for a law, and the fit says so
    assert "at least 4 usable runs, got 2" in fits["compute"]["error"]
    assert fits["isoflop"]["n_points"] == 6 and fits["isoflop"]["predictions"]
    report = (out / study["report"]).read_text()
    assert "## Compute-optimal allocation" in report and "![isoFLOP curves](isoflops-transformer.png)" in report


@pytest.mark.parametrize("form", ["compute", "params", "tokens", "chinchilla", "envelope", "isoflop"])
def test_every_form_fits_the_study_runs_from_mlflow(isoflop_study, form, monkeypatch):
    """The CLI reads the runs back from the study's MLflow store, fits, prints JSON and logs the fit there."""
    import math

    from mlflow import MlflowClient

    from tests.support.cli import arscale

    out, _ = isoflop_study
    uri = f"sqlite:///{out}/mlflow.db"
    result = arscale("fit", "--mlflow", uri, "--experiment", "text-isoflop-e2e", "--form", form, "--bootstrap", "20",
                     "--holdout-top", "0", "--json", *(["--predict-compute", "1e10"] if form != "params" and
                                                       form != "tokens" else []))
    assert result.returncode == 0, result.stderr
    fit = json.loads(result.stdout)
    assert fit["form"] == form and fit["n_points"] == 6
    if form in ("envelope", "isoflop"):
        # allocation exponents from two budgets; the loss law L_opt(C) needs a third, and the fit says so
        assert math.isfinite(fit["a"]) and math.isfinite(fit["b"]) and fit["predictions"][0]["n_opt"] > 0
        assert fit["E"] is None and any("too few compute-optimal points" in w for w in fit["warnings"])
    else:
        assert all(math.isfinite(fit[k]) for k in ("E", "A", "alpha", "B", "beta") if k in fit)
        assert set(fit["ci"]) >= {k for k in ("E", "A", "alpha") if k in fit}
    if form in ("compute", "chinchilla"):
        p = fit["predictions"][0]
        # an end is None (unbounded) where too many resamples could not be refitted: 6 runs, 5 parameters
        assert p["compute"] == 1e10 and (p["low"] or 0) <= p["loss"] <= (p["high"] or float("inf"))
    client = MlflowClient(uri)
    monkeypatch.chdir(out)
    experiment = client.get_experiment_by_name("text-isoflop-e2e")
    logged = client.search_runs([experiment.experiment_id], f"attributes.run_name = 'fit-{form}'")
    assert logged and "fit.json" in {a.path for a in client.list_artifacts(logged[0].info.run_id)}
