"""MLflow tracking: one parent run per study, one nested run per executed step (a training run is a step).

By default a study tracks into a SQLite store inside its own folder (`sqlite:///<study>/mlflow.db`, artifacts in
`<study>/mlartifacts`); `MLFLOW_TRACKING_URI` or `--tracking-uri` point it elsewhere, e.g. a `mlflow server`.
Logging never stops a study: a tracking call that keeps failing is written to `<step dir>/mlflow-unsent.jsonl`
with a warning instead, and the work goes on. An untracked study gets trackers that do nothing (NullStudyTracking,
NullRunLogger), so the executor and the steps never ask whether there is one.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from pipelines.errors import UserError

STUDY_TAG = "arscale.study"
UNSENT_FILE = "mlflow-unsent.jsonl"  # in the step's folder: what could not be sent


def resolve_tracking_uri(cli_uri: str | None, study_dir: Path) -> str:
    """--tracking-uri, else $MLFLOW_TRACKING_URI, else a SQLite store inside the study folder."""
    return cli_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(study_dir).resolve()}/mlflow.db"


def _redact_parsed(uri: str) -> str:
    """`uri` with the password of its user info and the values of its secret options (token=...) as ***."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    parts = urlsplit(uri)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = netloc.replace(f":{parts.password}@", ":***@", 1)
    secret = ("token", "secret", "password", "key", "credential", "signature")
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    hidden = [(k, "***" if any(w in k.lower() for w in secret) else v) for k, v in pairs]
    if netloc == parts.netloc and hidden == pairs:
        return uri  # nothing to hide (and sqlite:////abs/path must keep its slashes)
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(hidden, safe="*"), parts.fragment))


def _userinfo(uri: str) -> str | None:
    """The `user:password` before the '@' of `uri`, or None. Also where an unencoded '/' in the password (AWS secret
    keys have them) makes URL parsers take it for the start of the path, and so miss it: `s3://KEY:abc/def@bucket`."""
    _, sep, rest = uri.partition("://")
    rest = re.split(r"[?#]", rest, maxsplit=1)[0]
    if not sep or "@" not in rest:
        return None
    authority = rest.split("/", 1)[0]
    if "@" in authority:
        return authority.rsplit("@", 1)[0]
    _, colon, after = authority.partition(":")
    return rest.split("@", 1)[0] if colon and not after.isdigit() else None  # digits: a port, the '@' in the path


def _options(uri: str) -> list[tuple[str, bool]]:
    """The options of `uri` as written (`key=value`), each with whether redact_uri hides its value."""
    query = urlsplit(uri).query
    pairs = [pair for pair in query.split("&") if pair]
    return [(pair, _redact_parsed(f"x://h/?{pair}") != f"x://h/?{pair}") for pair in pairs]


def uri_secrets(uri: str) -> list[str]:
    """The secrets written into `uri`, as written and decoded: the password of its user info (the whole user info
    when it has no password: a token as user name) and the values of the options redact_uri hides (token=...)."""
    info = _userinfo(uri)
    found = [info.partition(":")[2] or info] if info else []
    found += [pair.partition("=")[2] for pair, secret in _options(uri) if secret]
    return [s for s in {*found, *(unquote(s.replace("+", " ")) for s in found)} if s]


def hide_secrets(text: str, uri: str) -> str:
    """`text` (an error message quoting `uri`, say) with the secrets of `uri` replaced by ***."""
    text = text.replace(uri, redact_uri(uri))
    for secret in sorted(uri_secrets(uri), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def redact_uri(uri: str) -> str:
    """`uri` fit for logs, messages and records (study.json, tags, job metadata): the password of its user info, the
    whole user info when URL parsers miss the password (an unencoded '/' in it) or it has none (a token as user
    name), and the values of its secret options (token=..., secret_key=...) replaced by ***."""
    info = _userinfo(uri)
    if info and urlsplit(uri).password is None:
        uri = uri.replace(f"{info}@", "***@", 1)
    return _redact_parsed(uri)


def without_credentials(uri: str) -> str:
    """`uri` with its user info and the options redact_uri hides left out."""
    info = _userinfo(uri)
    if info:
        uri = uri.replace(f"{info}@", "", 1)
    base, fragment = uri.split("#", 1)[0].split("?", 1)[0], urlsplit(uri).fragment
    kept = [pair for pair, secret in _options(uri) if not secret]
    return base + (f"?{'&'.join(kept)}" if kept else "") + (f"#{fragment}" if fragment else "")


_URI_IN_TEXT = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def redact_text(text: str) -> str:
    """`text` (an error message, a log line, a command) with every URI in it redacted (redact_uri)."""
    def redact(match: re.Match) -> str:
        uri = match.group(0)
        uri, tail = uri.rstrip(".,;:)]}"), uri[len(uri.rstrip(".,;:)]}")):]  # punctuation after a URI ends it
        return redact_uri(uri) + tail

    return _URI_IN_TEXT.sub(redact, text)


def artifact_location(uri: str, folder: Path) -> str | None:
    """Where a new experiment keeps its artifacts: `folder/mlartifacts` for a SQLite store (MLflow's own
    default is ./mlruns under whatever directory the process happens to run in); the server's choice otherwise."""
    return (Path(folder).resolve() / "mlartifacts").as_uri() if uri.startswith("sqlite:") else None


def flatten(data: Any, prefix: str = "") -> dict[str, str]:
    """A config's data (pipelines.step.config_dict) as flat `a.b.c -> value` strings, as MLflow params want them."""
    if isinstance(data, dict):
        out: dict[str, str] = {}
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): str(data)[:6000]}


def _with_retries(fn, *args, attempts: int = 4, **kwargs):
    """SQLite stores lock briefly under concurrent writers and servers restart: retry with backoff."""
    for i in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception:
            if i == attempts - 1:
                raise
            time.sleep(0.25 * 2**i)


def _check_reachable(uri: str) -> None:
    """Fail in seconds, not after MLflow's minutes of retries, when a tracking server does not answer."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https"):
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=5).close()
    except OSError as e:
        raise UserError(f"MLflow at {redact_uri(uri)} is unreachable ({e.strerror or e}); start the server, or "
                        "leave out --tracking-uri and $MLFLOW_TRACKING_URI to use the study's own SQLite store"
                        ) from None


class StudyTracking:
    """Creates the study's parent run and the nested runs of its steps (called from the study driver)."""

    def __init__(self, uri: str, study_name: str, study_dir: Path, parent_run_id: str | None = None):
        import mlflow
        from mlflow import MlflowClient

        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        _check_reachable(uri)
        experiment = self.client.get_experiment_by_name(study_name)
        if experiment is None:
            self.experiment_id = self.client.create_experiment(
                study_name, artifact_location=artifact_location(uri, study_dir))
        else:
            self.experiment_id = experiment.experiment_id
        run = None
        if parent_run_id:
            try:
                run = self.client.get_run(parent_run_id)
            except mlflow.exceptions.MlflowException:
                run = None  # the store was replaced; start a new parent run
        if run is None:
            run = self.client.create_run(self.experiment_id, run_name=study_name,
                                         tags={STUDY_TAG: str(Path(study_dir).resolve())})
        else:
            self.client.update_run(run.info.run_id, status="RUNNING")
        self.parent_run_id = run.info.run_id

    def start_step_run(self, name: str, dirname: str, config: dict, inputs: dict[str, str]) -> str:
        """A nested run for one execution of a step, with its `config` (pipelines.step.config_dict) as params; tags
        trace it to its inputs' versioned directories."""
        from mlflow.entities import Param

        tags = {"mlflow.parentRunId": self.parent_run_id, "arscale.step": name, "arscale.step_dir": dirname,
                "arscale.step_hash": dirname.rsplit("-", 1)[-1]}
        tags.update({f"arscale.input.{k}": v for k, v in inputs.items()})
        run = _with_retries(self.client.create_run, self.experiment_id, run_name=name, tags=tags)
        params = [Param(k, v) for k, v in flatten(config).items()]
        for i in range(0, len(params), 100):  # MLflow caps params per batch at 100
            _with_retries(self.client.log_batch, run.info.run_id, params=params[i:i + 100])
        return run.info.run_id

    def finish_run(self, run_id: str, ok: bool, error: str | None = None) -> None:
        if error:
            _with_retries(self.client.set_tag, run_id, "arscale.error", error[:5000])
        _with_retries(self.client.set_terminated, run_id, "FINISHED" if ok else "FAILED")

    def finish_study(self, ok: bool) -> None:
        self.finish_run(self.parent_run_id, ok)


class NullStudyTracking:
    """The tracking of a study that is not tracked: it starts no runs (a step's run id is None)."""

    uri = None

    def start_step_run(self, name: str, dirname: str, config: dict, inputs: dict[str, str]) -> None:
        return None

    def finish_run(self, run_id: str, ok: bool, error: str | None = None) -> None:
        pass

    def finish_study(self, ok: bool) -> None:
        pass


class RunLogger:
    """Logs metrics, tags and artifacts into one existing run, from any process (the step's Ray worker).

    Metrics are buffered and sent in batches; if the store stays unreachable they go to a local JSONL file
    (`fallback`) with one warning, so training never waits on tracking. The next call that reaches the store
    first sends what the file holds (the file may also hold records of an earlier attempt of the same step),
    so a server restart loses nothing.
    """

    def __init__(self, uri: str, run_id: str, fallback: Path, flush_every: float = 5.0):
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        self.run_id = run_id
        self.fallback = Path(fallback)
        self.flush_every = flush_every
        self._buffer: list = []
        self._last_flush = time.monotonic()
        self._warned = False

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._buffer += [Metric(k, float(v), now, int(step)) for k, v in metrics.items() if v is not None]
        if time.monotonic() - self._last_flush > self.flush_every:
            self.flush()

    def set_tags(self, tags: dict[str, str]) -> None:
        self._call(self._set_tags, tags, what={"tags": tags})

    def log_artifacts(self, directory: Path, artifact_path: str | None = None) -> None:
        self._call(self.client.log_artifacts, self.run_id, str(directory), artifact_path,
                   what={"artifacts": str(directory)})

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self._call(self.client.log_artifact, self.run_id, str(path), artifact_path, what={"artifact": str(path)})

    def flush(self) -> None:
        batch, self._buffer = self._buffer, []
        self._last_flush = time.monotonic()
        for i in range(0, len(batch), 1000):  # MLflow caps metrics per batch at 1000
            chunk = batch[i:i + 1000]
            self._call(self.client.log_batch, self.run_id, metrics=chunk,
                       what={"metrics": [[m.key, m.value, m.step, m.timestamp] for m in chunk]})

    def _set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def _call(self, fn, *args, what: dict, **kwargs) -> None:
        try:
            if self.fallback.is_file():
                self._send_unsent()
            _with_retries(fn, *args, **kwargs)
        except Exception as e:
            if not self._warned:
                print(f"warning: MLflow is unreachable ({type(e).__name__}); writing to {self.fallback} instead",
                      file=sys.stderr, flush=True)
                self._warned = True
            with open(self.fallback, "a") as f:
                f.write(json.dumps({"run_id": self.run_id, **what}, default=str) + "\n")

    def _send_unsent(self) -> None:
        """Send the records of the fallback file, then remove it; raises (keeping the file) if the store is down."""
        records = [json.loads(line) for line in self.fallback.read_text().splitlines() if line.strip()]
        for i, r in enumerate(records):
            try:
                self._send_record(r)
            except Exception:  # keep what is still unsent, so nothing is sent twice
                self.fallback.write_text("".join(json.dumps(x) + "\n" for x in records[i:]))
                raise
        self.fallback.unlink()
        print(f"MLflow is reachable again: sent {len(records)} record(s) kept in {self.fallback}",
              file=sys.stderr, flush=True)

    def _send_record(self, r: dict) -> None:
        from mlflow.entities import Metric, RunTag

        now = int(time.time() * 1000)
        if "metrics" in r:  # with the time they were logged (older files lack it), so histories stay in order
            metrics = [Metric(k, float(v), int(logged[0]) if logged else now, int(step))
                       for k, v, step, *logged in r["metrics"]]
            self.client.log_batch(r["run_id"], metrics=metrics)
        if "tags" in r:
            self.client.log_batch(r["run_id"], tags=[RunTag(k, str(v)) for k, v in r["tags"].items()])
        if "artifacts" in r and Path(r["artifacts"]).is_dir():
            self.client.log_artifacts(r["run_id"], r["artifacts"])
        if "artifact" in r and Path(r["artifact"]).is_file():
            self.client.log_artifact(r["run_id"], r["artifact"])


class NullRunLogger:
    """A RunLogger for a step without an MLflow run: it logs nothing."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def set_tags(self, tags: dict[str, str]) -> None:
        pass

    def log_artifacts(self, directory: Path, artifact_path: str | None = None) -> None:
        pass

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        pass

    def flush(self) -> None:
        pass


def run_logger(uri: str | None, run_id: str | None, folder: Path) -> RunLogger | NullRunLogger:
    """The logger of MLflow run `run_id`, keeping what it cannot send in `folder`; without a run, one that does
    nothing."""
    return RunLogger(uri, run_id, Path(folder) / UNSENT_FILE) if run_id else NullRunLogger()
