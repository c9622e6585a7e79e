"""The MLflow record of a real study, read back as users read it: the parent run's params, metrics and report; system
tags on every run; trained weights; model shapes on eval runs; and a copied study folder served whole by a real
`mlflow server` started inside the copy (as `mlflow ui` would be), with the original folder out of the way."""

import json
import shutil
import sqlite3
import subprocess
import urllib.parse
import urllib.request

import pytest
from mlflow import MlflowClient
from safetensors.numpy import load as load_safetensors

from pipelines.tracking import headline_metrics
from tests.support.servers import free_port, start_mlflow_server, stop_mlflow_server
from tests.support.studies import step_dir

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tiny_study):
    out, _, _ = tiny_study
    client = MlflowClient(f"sqlite:///{out}/mlflow.db")
    experiment = client.get_experiment_by_name("text-tiny")
    found = client.search_runs([experiment.experiment_id], max_results=1000)
    parent = next(r for r in found if "mlflow.parentRunId" not in r.data.tags)
    children = {r.info.run_name: r for r in found if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    return out, client, parent, children


def test_the_parent_run_holds_the_config_the_fit_and_the_report(runs, monkeypatch):
    out, client, parent, _ = runs
    study = json.loads((out / "study.json").read_text())
    assert parent.data.params["name"] == "text-tiny"
    assert parent.data.params["training.lr"] == str(study["config"]["training"]["lr"])
    assert parent.data.params["tokenizer.vocab_size"] == str(study["config"]["tokenizer"]["vocab_size"])
    fit = json.loads((out / "report" / "fit.json").read_text())
    expected = headline_metrics(fit)
    assert any(k.endswith(".alpha") for k in expected) and any(k.endswith(".backtest_abs_rel_error") for k in expected)
    for key, value in expected.items():
        assert parent.data.metrics[key] == pytest.approx(value)
    monkeypatch.chdir(out)  # relative artifact locations are read from the store's folder
    report = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.md", "report/fit.json", "report/runs.csv", "report/learning_curves.png"} <= report


def test_every_run_carries_the_system_tags(runs):
    _, _, parent, children = runs
    checkout = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
    for run in [parent, *children.values()]:
        tags = run.data.tags
        assert tags["mlflow.user"] and tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.source.name"], run
        if checkout.returncode == 0:  # the tests run from a checkout of arscale
            assert tags["mlflow.source.git.commit"] == checkout.stdout.strip()


def test_training_runs_log_their_weights_and_eval_runs_the_model_shape(runs, monkeypatch):
    out, client, _, children = runs
    train = children["train-transformer-24.9k"]
    monkeypatch.chdir(out)
    folder = client.download_artifacts(train.info.run_id, "model", str(out.parent / "downloaded"))
    train_dir = step_dir(out, "train-transformer-24.9k")
    logged = load_safetensors((out.parent / "downloaded" / "model" / "model.safetensors").read_bytes())
    trained = load_safetensors((train_dir / "model.safetensors").read_bytes())
    assert logged.keys() == trained.keys() and all((logged[k] == trained[k]).all() for k in trained)
    assert json.loads((out.parent / "downloaded" / "model" / "model.json").read_text())["family"] == "transformer"
    shutil.rmtree(folder)
    assert "model" not in {a.path for a in client.list_artifacts(children["train-unstable"].info.run_id)}
    # the train run's periodic loss is on a subset of the validation split; the eval run's on the split
    assert "val_loss_subset" in train.data.metrics and "val_loss" not in train.data.metrics
    evaluation = children["eval-transformer-24.9k"]
    assert evaluation.data.metrics["val_loss"] > 0 and evaluation.data.metrics["val_tokens"] > 0
    model = json.loads((train_dir / "run.json").read_text())["model"]  # n_layer, n_embd, n_head, vocab, seq_len
    assert evaluation.data.params["family"] == "transformer"
    assert {f"model.{k}": str(v) for k, v in model.items()}.items() <= evaluation.data.params.items()


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as response:
        return response.read()


def _walk(server: str, run_id: str, path: str = "") -> list[dict]:
    """Every artifact file of a run, as the MLflow UI lists them (its REST API, folder by folder)."""
    query = urllib.parse.urlencode({"run_id": run_id, **({"path": path} if path else {})})
    files = json.loads(_get(f"{server}/ajax-api/2.0/mlflow/artifacts/list?{query}")).get("files", [])
    found = []
    for f in files:
        found += _walk(server, run_id, f["path"]) if f["is_dir"] else [f]
    return found


def test_a_copied_study_opens_whole_in_a_real_mlflow_server(runs, tmp_path):
    out, _, parent, _ = runs
    copy = tmp_path / "moved-study"
    shutil.copytree(out, copy, symlinks=True, ignore=shutil.ignore_patterns("ray-train", "checkpoint*"))
    with sqlite3.connect(copy / "mlflow.db") as db:  # no location points outside the folder
        locations = [row[0] for row in db.execute("SELECT artifact_uri FROM runs")]
        locations += [row[0] for row in db.execute("SELECT artifact_location FROM experiments WHERE name='text-tiny'")]
    assert locations and all(loc.startswith("mlartifacts") for loc in locations), locations
    hidden = out.with_name(out.name + "-hidden")
    out.rename(hidden)  # the original is out of the way: only the copy can answer
    try:
        proc, server = start_mlflow_server(copy, free_port(), backend_store="sqlite:///mlflow.db")
        try:
            client = MlflowClient(server)
            experiment = client.get_experiment_by_name("text-tiny")
            every = client.search_runs([experiment.experiment_id], max_results=1000)
            files = {}
            for run in every:
                for f in _walk(server, run.info.run_id):
                    query = urllib.parse.urlencode({"path": f["path"], "run_uuid": run.info.run_id})
                    data = _get(f"{server}/get-artifact?{query}")
                    assert len(data) == f["file_size"], (run.info.run_name, f)
                    files[(run.info.run_name, f["path"])] = data
        finally:
            stop_mlflow_server(proc)
    finally:
        hidden.rename(out)
    assert files[("text-tiny", "report/report.md")] == (out / "report" / "report.md").read_bytes()
    names = {name for name, _ in files}
    assert {"tokenizer", "fit", "report", "train-transformer-24.9k", "eval-transformer-24.9k"} <= names
    assert files[("train-transformer-24.9k", "model/model.safetensors")] == (
        step_dir(out, "train-transformer-24.9k") / "model.safetensors").read_bytes()
    assert parent.info.run_name == "text-tiny"
