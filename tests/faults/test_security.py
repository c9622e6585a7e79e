"""Security: what arscale starts listens on loopback only. Elsewhere: crafted pickles in checkpoints are refused
(test_train_loop, test_zero_checkpoints), names from configs cannot leave the study folder (test_config), secrets
in tracking URIs are redacted (test_tracking), a Ray Train run's rendezvous listens on loopback only
(test_train_ray)."""

import ast
import subprocess
import sys

import pytest

from armodels.train import TrainConfig, TrainRun, train_single_process
from pipelines.ray_connect import DASHBOARD_ENV
from tests.support.cli import ROOT, subprocess_env
from tests.support.processes import listening_sockets

# Starts a local Ray as a study does, prints its dashboard URL, and keeps it up until its stdin closes.
LOCAL_RAY = """
import sys
from pipelines.ray_connect import connect
print(repr(connect(num_cpus=1)), flush=True)  # its URL, or "" when it has none
sys.stdin.read()
"""


def test_the_local_ray_it_starts_listens_on_loopback_only(ray_local):
    listening, exposed = listening_sockets()
    assert listening, "found no listening socket of the local Ray"
    assert not exposed


@pytest.mark.parametrize("dashboard", ["1", "0"])
def test_a_local_rays_dashboard_listens_on_loopback_only_and_can_be_left_out(dashboard):
    """The tests' own Ray runs without a dashboard ($ARSCALE_RAY_DASHBOARD=0, tests/conftest.py); a user's has one,
    on 127.0.0.1 like the rest."""
    ray = subprocess.Popen([sys.executable, "-c", LOCAL_RAY], cwd=ROOT, text=True, stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, env={**subprocess_env(), DASHBOARD_ENV: dashboard})
    try:
        url = ast.literal_eval(ray.stdout.readline())
        listening, exposed = listening_sockets(ray.pid)
        ports = {c.laddr.port for c in listening}
        assert listening and not exposed, exposed
        if dashboard == "1":
            assert url.startswith("http://127.0.0.1:") and int(url.rsplit(":", 1)[1]) in ports, (url, ports)
        else:
            assert url == "" and 8265 not in ports
    finally:
        ray.communicate("", timeout=60)


def test_training_in_one_process_opens_no_port_to_the_network(tmp_path, shards):
    """`arscale train` (and the GPU check) form a process group of one: it must not listen on every interface, as
    torch's TCP rendezvous store does."""
    run = TrainRun("transformer", {"vocab_size": 320, "seq_len": 32, "n_layer": 1, "n_head": 2, "n_embd": 16},
                   TrainConfig(tokens=2_000, batch_size=8, eval_points=1, eval_windows=2), str(shards / "train"),
                   str(shards / "val"), name="t")
    assert train_single_process(run, tmp_path)["status"] == "ok"
    assert not listening_sockets()[1]


def test_the_auth_token_file_is_made_private_wherever_it_is_used(tmp_path, monkeypatch, capsys, ray_local):
    """Ray writes a token it generates with mode 0644; every command that connects, and `cluster up` reusing a
    token, make it 0600 and say so."""
    from pipelines import ray_auth
    from pipelines.ray_connect import connect

    token = tmp_path / "auth_token"
    monkeypatch.setenv(ray_auth.PATH_ENV, str(token))
    monkeypatch.delenv(ray_auth.TOKEN_ENV, raising=False)
    for use in (connect, ray_auth.ensure_token):
        token.write_text("t" * 64)
        token.chmod(0o644)
        use()
        assert token.stat().st_mode & 0o777 == 0o600, use
        assert f"note: {token} (Ray's auth token) was readable by other users (mode 644); made it 0600" in \
            capsys.readouterr().err
    ray_auth.ensure_token()  # private already: nothing to say
    assert capsys.readouterr().err == ""


def _leak(config, ctx):
    raise ConnectionError("cannot reach https://bob:hunter2@mlflow.example.com/api?token=abc123")


def test_secrets_in_a_steps_error_reach_no_record_or_log(tmp_path, ray_local):
    """A step's error names a URI with a password: the log, STATUS.json, error.log and the tracker's warning show
    it redacted."""
    import json

    from pipelines.executor import Executor
    from pipelines.step import Step

    lines = []
    executor = Executor(tmp_path, log=lines.append)
    step = Step("leak", _leak, {"n": 1})
    assert executor.run([step])["leak"].state == "failed"
    executor._track(_leak, None, None)  # a tracking call failing with the same message
    folder = tmp_path / f"{step.dirname}.tmp"
    records = "\n".join([*lines, (folder / "STATUS.json").read_text(), (folder / "error.log").read_text()])
    assert "hunter2" not in records and "abc123" not in records
    assert "https://bob:***@mlflow.example.com/api?token=***" in json.loads((folder / "STATUS.json").read_text())["error"]


def test_a_storage_uri_that_cannot_be_opened_is_named_without_its_secret():
    """pyarrow quotes the whole URI in its error, an AWS secret key with its unencoded '/' included."""
    import pytest

    from pipelines.errors import UserError
    from pipelines.storage import StudyStore

    with pytest.raises(UserError) as e:
        StudyStore("s3://AKIDEXAMPLE:wJalr/K7MDENG@bucket/studies?bogus=1")
    assert "K7MDENG" not in str(e.value) and "wJalr" not in str(e.value) and "s3://***@bucket/studies" in str(e.value)
