"""Fault 6: the MLflow server goes away mid-run and comes back. Logging never raises, a warning says where the
records went, and once the server answers again everything kept locally is sent: no metric is lost."""

from mlflow import MlflowClient

from pipelines.tracking import RunLogger
from tests.support.servers import free_port, start_mlflow_server, stop_mlflow_server


def test_metrics_logged_while_the_server_is_down_arrive_after_it_restarts(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")  # a down server refuses at once; a slow one must not time out
    port = free_port()
    server, uri = start_mlflow_server(tmp_path, port)
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("restart")).info.run_id
    logger = RunLogger(uri, run_id, tmp_path / "unsent.jsonl", flush_every=0)
    logger.log_metrics({"train_loss": 3.0}, step=1)

    stop_mlflow_server(server)
    logger.log_metrics({"train_loss": 2.0}, step=2)
    logger.set_tags({"arscale.status": "ok"})
    assert (tmp_path / "unsent.jsonl").is_file()
    assert "MLflow is unreachable" in capsys.readouterr().err

    server, _ = start_mlflow_server(tmp_path, port)  # the same store, back on the same address
    try:
        logger.log_metrics({"train_loss": 1.0}, step=3)
        history = MlflowClient(uri).get_metric_history(run_id, "train_loss")
        assert [(m.step, m.value) for m in history] == [(1, 3.0), (2, 2.0), (3, 1.0)]
        assert MlflowClient(uri).get_run(run_id).data.tags["arscale.status"] == "ok"
        assert not (tmp_path / "unsent.jsonl").exists()
        assert "reachable again: sent 2 record(s)" in capsys.readouterr().err
    finally:
        stop_mlflow_server(server)
