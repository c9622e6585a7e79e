"""Run tables from MLflow, and fits logged back to it: what `arscale fit --mlflow` and `--tracking-uri` use.

A study's evaluation steps log each run's whole record (sizes, tokens, FLOPs, losses, status) to their MLflow
runs, so the table a study's fit used can be rebuilt from the tracking store alone.

A URI may hold secrets (`https://user:password@host`, `?token=...`): what is printed or recorded shows it through
`redact_uri`, and MLflow's own errors, which quote the URI whole, through `hide_secrets` (pipelines.tracking).
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from pipelines.errors import RunFailure, UserError
from pipelines.tracking import create_experiment, hide_secrets, log_artifact_files, redact_uri, system_tags

EVAL_FILTER = "tags.`arscale.step` LIKE 'eval-%'"


@contextmanager
def _mlflow_errors(uri: str):
    """MLflow's errors as one line with the URI's secrets hidden: MLflow quotes the URI whole in its messages
    (an unsupported scheme, a failed request). A URI MLflow rejects is the user's to fix (exit 2)."""
    try:
        yield
    except (UserError, RunFailure):
        raise
    except Exception as e:
        message = hide_secrets((str(e).strip().splitlines() or [""])[0].strip(), uri)
        kind = UserError if getattr(e, "error_code", None) == "INVALID_PARAMETER_VALUE" else RunFailure
        raise kind(f"MLflow at {redact_uri(uri)}: {type(e).__name__}: {message}") from None


def _existing_store(uri: str) -> None:
    """Commands that only read runs need a store that is there: MLflow would make an empty SQLite database (and a
    folder for it) at a mistyped path, and the command would then report no runs."""
    if not uri.startswith("sqlite://"):
        return
    path = uri.removeprefix("sqlite://").split("?", 1)[0]
    path = path[1:] if path.startswith("/") else path  # sqlite:///rel.db, sqlite:////abs.db
    if path and path != ":memory:" and not Path(path).is_file():
        raise UserError(f"MLflow store {path} does not exist (from {redact_uri(uri)}); give the mlflow.db of a study, "
                        "e.g. --mlflow sqlite:///studies/NAME/mlflow.db")


def _client(uri: str):
    # Fail within seconds, not minutes, when a server is down: MLflow retries HTTP calls 7 times by default.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def runs_from_mlflow(uri: str, experiment: str | None = None):
    """One row per run of a study (the newest evaluation of each), as `scaling.fit_runs` expects, and the name of
    the experiment they came from."""
    _existing_store(uri)
    with _mlflow_errors(uri):
        return _runs_from_mlflow(uri, experiment)


def _runs_from_mlflow(uri: str, experiment: str | None):
    import pandas as pd

    client = _client(uri)
    try:
        experiments = client.search_experiments()
    except Exception as e:
        raise UserError(f"MLflow at {redact_uri(uri)} is unreachable ({type(e).__name__}); check the URI or start the "
                        "server") from None
    if experiment:
        chosen = [x for x in experiments if x.name == experiment]
        if not chosen:
            names = ", ".join(sorted(x.name for x in experiments)) or "none"
            raise UserError(f"MLflow at {redact_uri(uri)} has no experiment {experiment!r} (experiments: {names})")
    else:
        chosen = [x for x in experiments if client.search_runs([x.experiment_id], EVAL_FILTER, max_results=1)]
        if len(chosen) != 1:
            names = ", ".join(x.name for x in chosen) or "none"
            raise UserError(f"MLflow at {redact_uri(uri)} has {len(chosen)} experiments with study runs ({names}); "
                            "choose one with --experiment")
    newest: dict[str, object] = {}
    for run in client.search_runs([chosen[0].experiment_id], EVAL_FILTER, max_results=10_000,
                                  order_by=["attributes.start_time DESC"]):
        newest.setdefault(run.data.tags.get("arscale.run", run.info.run_name), run)
    if not newest:
        raise UserError(f"experiment {chosen[0].name!r} at {redact_uri(uri)} has no evaluated runs to fit")
    rows = []
    for name, run in newest.items():
        row = {"run_id": name, "family": run.data.tags.get("arscale.family"),
               "series": run.data.tags.get("arscale.series", run.data.tags.get("arscale.family")),
               "status": run.data.tags.get("arscale.status", "ok"), "mlflow_run_id": run.info.run_id}
        row.update(run.data.metrics)
        rows.append(row)
    return pd.DataFrame(rows), chosen[0].name


def log_fit(uri: str, experiment: str, result, *, source: str, plot: Path | None = None) -> str:
    """Log a fit as its own MLflow run: its settings as params, its numbers as metrics, fit.json as artifact.
    `source` (a file, or the URI the runs came from) is recorded in the tag arscale.fit_source, its secrets hidden."""
    with _mlflow_errors(uri):
        return _log_fit(uri, experiment, result, source=redact_uri(source) if "://" in source else source, plot=plot)


def _log_fit(uri: str, experiment: str, result, *, source: str, plot: Path | None) -> str:
    from mlflow.entities import Metric, Param, RunTag

    client = _client(uri)
    try:
        found = client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else create_experiment(client, uri, experiment)
    except Exception as e:
        raise UserError(f"MLflow at {redact_uri(uri)} is unreachable ({type(e).__name__}); the fit was not logged"
                        ) from None
    fit = result.to_dict()
    run = client.create_run(experiment_id, run_name=f"fit-{result.form}",
                            tags={"arscale.fit_source": source, "arscale.form": result.form, **system_tags()})
    params = {"form": result.form, "convention": fit.get("convention"), "n_points": fit["n_points"],
              "bootstrap": fit.get("bootstrap"), "ci_level": fit.get("ci_level")}
    metrics = {k: v for k, v in result.params.items() if isinstance(v, (int, float))}
    if result.backtest:
        metrics["backtest_abs_rel_error"] = result.backtest.mean_abs_rel_error
    client.log_batch(run.info.run_id, metrics=[Metric(k, float(v), 0, 0) for k, v in metrics.items()],
                     params=[Param(k, str(v)) for k, v in params.items()],
                     tags=[RunTag("arscale.excluded", str(len(fit.get("excluded", []))))])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fit.json"
        path.write_text(json.dumps(fit, indent=2))
        log_artifact_files(client, uri, run.info.run_id, path)
    if plot:
        log_artifact_files(client, uri, run.info.run_id, plot)
    client.set_terminated(run.info.run_id)
    return run.info.run_id
