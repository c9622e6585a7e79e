"""Secrets written into URIs stay out of what arscale prints and records: `arscale submit` refuses a storage URI
with inline credentials (a job's command line, metadata and runtime environment are shown to anyone who reaches
the cluster's dashboard), a fit's source tag in MLflow and MLflow's own error messages have them hidden. Also: a
command that only reads runs does not create an empty SQLite store at a mistyped path.

Everything runs in this process (the CLI's `main`, whose exit code and output are what `arscale` gives) against
real stores: a SQLite MLflow store, pyarrow's S3 filesystem (opened, never reached)."""

from __future__ import annotations

import json

import pytest

from cluster import submit
from pipelines.cli import main
from pipelines.errors import UserError

SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"  # an unencoded '/', as AWS secret keys often have
PLAIN_SECRET = "je7MtGbClwBF2Zp9UtkEXAMPLE"
KEY_ID = "AKIAIOSFODNN7EXAMPLE"
CREDENTIALED = [f"s3://{KEY_ID}:{PLAIN_SECRET}@bucket/studies?region=us-east-1",  # pyarrow's form
                f"s3://{KEY_ID}:{SECRET}@bucket/studies",
                f"s3://bucket/studies?region=us-east-1&access_key={KEY_ID}&secret_key={SECRET.replace('/', '%2F')}",
                "s3://bucket/studies?region=us-east-1&session_token=FwoGZXIvYXdzEXAMPLETOKEN"]
HIDDEN = (SECRET, PLAIN_SECRET, SECRET.replace("/", "%2F"), SECRET.split("/")[1], "FwoGZXIvYXdzEXAMPLETOKEN")


def cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_hidden(*texts: str) -> None:
    for text in texts:
        for secret in HIDDEN:
            assert secret not in text, text


@pytest.mark.parametrize("storage", CREDENTIALED)
def test_submit_dry_run_refuses_a_storage_uri_with_credentials_and_prints_none(capsys, storage):
    code, out, err = cli(capsys, "submit", "text-tiny", "--storage", storage, "--dry-run")
    assert_hidden(out, err)
    assert code == 2 and out == "", out
    [line] = err.strip().splitlines()
    assert line.startswith("error: --storage ") and "AWS_ACCESS_KEY_ID" in line and "s3://bucket/studies" in line


@pytest.mark.parametrize("storage", CREDENTIALED)
def test_no_job_is_built_with_credentials_in_its_entrypoint_or_metadata(storage):
    with pytest.raises(UserError) as refused:
        submit.prepare("text-tiny", storage)  # what `submit` builds the job from, before it reaches any cluster
    assert_hidden(str(refused.value))


def test_a_job_gets_no_credentials_from_the_submitters_environment(tmp_path, monkeypatch):
    """The nodes have their own (instance roles, their environment): the submitter's are not copied into the job,
    whose runtime environment the dashboard shows like its entrypoint."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    cfg, path, out = submit.prepare("text-tiny", "s3://bucket/studies?region=us-east-1&endpoint_override=127.0.0.1:9")
    assert out.startswith("s3://bucket/studies/text-tiny?") and "endpoint_override" in out
    request = submit.job_request(cfg, path, out, tmp_path)
    assert set(request) == {"entrypoint", "runtime_env", "submission_id", "metadata"}
    assert "--out" in request["entrypoint"] and request["metadata"]["arscale.out"] == out
    assert_hidden(json.dumps(request))
    assert KEY_ID not in json.dumps(request)


def _fit():
    import numpy as np
    import pandas as pd

    import scaling

    params = np.geomspace(1e4, 1e7, 6)
    runs = pd.DataFrame({"run_id": [f"r{i}" for i in range(6)], "params": params, "tokens": 20 * params,
                         "loss": 1.8 + 40 * (120 * params ** 2) ** -0.12})
    return scaling.fit_runs(runs, "compute", bootstrap=0, holdout_top=0)


def test_a_fits_source_tag_in_a_sqlite_store_holds_no_password(tmp_path):
    from mlflow import MlflowClient

    from pipelines.mlflow_runs import log_fit

    uri = f"sqlite:///{tmp_path}/mlflow.db"  # one store: making one costs seconds
    for source in ["https://alice:s3cret-pw@mlflow.example.com/?token=tok3n-value",
                   "http://alice:s3cret/pw@mlflow.example.com:5000"]:
        run_id = log_fit(uri, "fits", _fit(), source=source)
        tag = MlflowClient(uri).get_run(run_id).data.tags["arscale.fit_source"]
        assert "s3cret" not in tag and "tok3n" not in tag and "mlflow.example.com" in tag, tag


@pytest.mark.parametrize("args", [["--mlflow", "htps://alice:s3cret@127.0.0.1:9"],  # a typo in the scheme
                                  ["--runs", "RUNS", "--tracking-uri", "htps://alice:s3cret@127.0.0.1:9"],
                                  ["--runs", "RUNS", "--tracking-uri", "htps://alice:s3cret/x@127.0.0.1:9"]])
def test_mlflows_errors_about_a_uri_with_a_password_do_not_print_it(tmp_path, capsys, args):
    csv = tmp_path / "runs.csv"
    csv.write_text("run_id,params,tokens,loss\n" + "\n".join(
        f"r{i},{n:.0f},{20 * n:.0f},{1.8 + 40 * (120 * n * n) ** -0.12:.5f}"
        for i, n in enumerate([1e4, 4e4, 1.6e5, 6.4e5, 2.6e6, 1e7])) + "\n")
    code, out, err = cli(capsys, "fit", *[str(csv) if a == "RUNS" else a for a in args], "--bootstrap", 0)
    assert "s3cret" not in out + err
    assert code == 2
    [line] = err.strip().splitlines()
    assert line.startswith("error: MLflow at htps://") and "unsupported URI" in line, line


def test_fit_does_not_create_a_sqlite_store_that_is_not_there(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(capsys, "fit", "--mlflow", "sqlite:///new.db")
    assert code == 2 and out == ""
    [line] = err.strip().splitlines()
    assert line.startswith("error: ") and "new.db does not exist" in line, line
    assert list(tmp_path.iterdir()) == []  # no database, no artifact folder
    code, _, err = cli(capsys, "fit", "--mlflow", f"sqlite:///{tmp_path}/sub/new.db")
    assert code == 2 and f"{tmp_path}/sub/new.db does not exist" in err and list(tmp_path.iterdir()) == []
