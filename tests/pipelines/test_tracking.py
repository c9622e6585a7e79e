"""MLflow tracking against a real `mlflow server` on 127.0.0.1, and what happens when it is unreachable."""

import json
import sqlite3
import time
from dataclasses import dataclass

import pytest
from mlflow import MlflowClient

from pipelines.step import config_dict
from pipelines.tracking import (NullRunLogger, NullStudyTracking, RunLogger, StudyTracking, flatten,
                                 resolve_tracking_uri, run_logger, seed_sqlite_store)
from tests.support.servers import free_port, start_mlflow_server, stop_mlflow_server


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    proc, uri = start_mlflow_server(tmp_path_factory.mktemp("mlflow-server"), free_port())
    yield uri
    stop_mlflow_server(proc)


@dataclass
class Cfg:
    lr: float = 0.1
    sizes: tuple = (1, 2)


def test_tracking_uri_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(None, tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert resolve_tracking_uri(None, tmp_path) == "http://127.0.0.1:5000"
    assert resolve_tracking_uri("http://x:1", tmp_path) == "http://x:1"


def test_a_new_sqlite_store_is_a_copy_of_one_mlflow_made_with_the_studys_own_artifact_folder(tmp_path, monkeypatch):
    """seed_sqlite_store copies an empty store MLflow made once (its migrations take seconds a study): the same
    schema as MLflow's own store; the template is made once; a store that exists is left alone."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    own = tmp_path / "own" / "mlflow.db"
    own.parent.mkdir()
    SqlAlchemyStore(f"sqlite:///{own}", str(tmp_path / "own" / "mlruns")).engine.dispose()
    seeded = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        seed_sqlite_store(f"sqlite:///{tmp_path / name / 'mlflow.db'}")
        seeded.append(tmp_path / name / "mlflow.db")
    [template] = (tmp_path / "cache" / "arscale").iterdir()
    made = template.stat().st_mtime_ns

    def schema(db):  # each statement's lines as a set: MLflow's migrations order a table's constraints at random
        with sqlite3.connect(db) as con:
            return ({(kind, name, frozenset(line.strip(" ,") for line in (sql or "").splitlines()))
                     for kind, name, sql in con.execute("SELECT type, name, sql FROM sqlite_master")},
                    con.execute("SELECT version_num FROM alembic_version").fetchall())

    assert schema(seeded[0]) == schema(seeded[1]) == schema(own)
    with sqlite3.connect(seeded[1]) as con:
        assert con.execute("SELECT experiment_id, name, artifact_location FROM experiments").fetchall() == \
            [(0, "Default", "mlartifacts/0")]
    seed_sqlite_store(f"sqlite:///{seeded[0]}")  # exists: untouched, and the template not made again
    assert template.stat().st_mtime_ns == made and seeded[0].stat().st_size == template.stat().st_size
    tracking = StudyTracking(f"sqlite:///{seeded[0]}", "s", tmp_path / "a", config={"lr": 0.1})
    assert MlflowClient(f"sqlite:///{seeded[0]}").get_run(tracking.parent_run_id).data.params == {"lr": "0.1"}


def test_flatten_nested_config():
    assert flatten({"a": config_dict(Cfg()), "b": {"c": None}}) == {"a.lr": "0.1", "a.sizes": "(1, 2)", "b.c": "None"}


def test_an_untracked_study_gets_trackers_that_do_nothing(tmp_path):
    assert isinstance(run_logger(None, None, tmp_path), NullRunLogger)
    assert isinstance(run_logger("http://127.0.0.1:9", "0" * 32, tmp_path), RunLogger)

    def methods(cls):
        return {name for name, value in vars(cls).items() if callable(value) and not name.startswith("_")}

    assert methods(NullRunLogger) == methods(RunLogger)
    assert methods(NullStudyTracking) == methods(StudyTracking) and NullStudyTracking.uri is None
    tracker = run_logger(None, None, tmp_path)
    tracker.log_metrics({"loss": 1.0}, step=1)
    tracker.flush()
    assert NullStudyTracking().start_step_run("a", "a-0123456789", {}, {}) is None and not list(tmp_path.iterdir())


def test_parent_and_nested_runs_on_a_real_server(tmp_path, mlflow_server):
    tracking = StudyTracking(mlflow_server, "server-study", tmp_path)
    run_id = tracking.start_step_run("train-a", "train-a-0123456789", config_dict(Cfg()), {"shards": "shards-abc"})
    logger = RunLogger(mlflow_server, run_id, tmp_path / "unsent.jsonl", flush_every=3600)
    for tokens in (100, 200, 300):
        logger.log_metrics({"train_loss": 5.0 - tokens / 100}, step=tokens)
    logger.flush()
    tracking.finish_run(run_id, ok=True)
    # the same study again reuses its parent run
    again = StudyTracking(mlflow_server, "server-study", tmp_path, tracking.parent_run_id)
    assert again.parent_run_id == tracking.parent_run_id

    client = MlflowClient(mlflow_server)
    run = client.get_run(run_id)
    assert run.data.tags["mlflow.parentRunId"] == tracking.parent_run_id
    assert run.data.tags["arscale.input.shards"] == "shards-abc" and run.data.params["lr"] == "0.1"
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "train_loss")] == [
        (100, 4.0), (200, 3.0), (300, 2.0)]
    assert run.info.status == "FINISHED" and not (tmp_path / "unsent.jsonl").exists()


def test_unreachable_server_never_stops_the_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    logger = RunLogger(f"http://127.0.0.1:{free_port()}", "0" * 32, tmp_path / "unsent.jsonl", flush_every=0)
    logger.log_metrics({"train_loss": 1.5}, step=10)
    logger.log_metrics({"train_loss": 1.4}, step=20)
    lines = [json.loads(x) for x in (tmp_path / "unsent.jsonl").read_text().splitlines()]
    kept = [m for line in lines for m in line["metrics"]]  # key, value, step, time logged (ms)
    assert [m[:3] for m in kept] == [["train_loss", 1.5, 10], ["train_loss", 1.4, 20]]
    assert kept[0][3] <= kept[1][3] and abs(kept[1][3] / 1000 - time.time()) < 60
    assert capsys.readouterr().err.count("MLflow is unreachable") == 1


def test_secrets_in_tracking_uris_are_redacted():
    from pipelines.tracking import redact_uri

    assert redact_uri("https://alice:s3cret@mlflow.example.com/") == "https://alice:***@mlflow.example.com/"
    assert redact_uri("https://host/x?token=abc&run=1") == "https://host/x?token=***&run=1"
    assert redact_uri("sqlite:////tmp/study/mlflow.db") == "sqlite:////tmp/study/mlflow.db"


def test_a_study_with_an_unreachable_server_fails_at_once_naming_it(tmp_path):
    from tests.support.cli import arscale, one_line_error

    uri = f"http://user:pw@127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = arscale("study", "run", "text-tiny", "--out", tmp_path / "s", "--tracking-uri", uri)
    one_line_error(result, 2, "is unreachable")
    assert "user:***@127.0.0.1" in result.stderr and "pw" not in result.stderr
    assert time.monotonic() - started < 60
