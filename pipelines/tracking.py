"""MLflow tracking: one parent run per study, one nested run per executed step (a training run is a step).

By default a study tracks into a SQLite store inside its own folder (`sqlite:///<study>/mlflow.db`, artifacts in
`<study>/mlartifacts`); `MLFLOW_TRACKING_URI` or `--tracking-uri` point it elsewhere, e.g. a `mlflow server`.
A SQLite store's artifact locations are kept relative to the database's folder (MLflow itself stores absolute
paths), so a study folder that is copied or moved opens whole in `mlflow ui` started inside it.
Every run carries MLflow's system tags (user, source, the git commit of arscale's checkout); the study's parent run
carries its resolved config as params, the headline fit numbers as metrics and the report as artifacts.
Logging never stops a study: a tracking call that keeps failing is written to `<step dir>/mlflow-unsent.jsonl`
with a warning instead, and the work goes on. An untracked study gets trackers that do nothing (NullStudyTracking,
NullRunLogger), so the executor and the steps never ask whether there is one.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from pipelines.errors import UserError

STUDY_TAG = "arscale.study"
ARTIFACTS_DIR = "mlartifacts"  # beside a SQLite store's database file
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


def sqlite_folder(uri: str) -> Path | None:
    """The folder of a SQLite store's database file; None for any other store."""
    return Path(uri.removeprefix("sqlite:///")).resolve().parent if uri.startswith("sqlite:///") else None


def create_experiment(client, uri: str, name: str) -> str:
    """A new experiment; in a SQLite store its artifacts go to `mlartifacts/` beside the database (MLflow's own
    default is ./mlruns under whatever directory the process happens to run in), recorded as a relative path."""
    folder = sqlite_folder(uri)
    experiment_id = client.create_experiment(
        name, artifact_location=(folder / ARTIFACTS_DIR).as_uri() if folder else None)
    if folder:
        anchor_artifacts(uri)
    return experiment_id


def seed_sqlite_store(uri: str) -> None:
    """Start a new SQLite store as a copy of an empty one made once per MLflow version (in ~/.cache/arscale):
    MLflow builds a store by running its schema migrations, ~2 s of every new study. The copy's Default experiment
    keeps its artifacts in the study's `mlartifacts/0`. Any failure here leaves the store to MLflow to make."""
    db = Path(uri.removeprefix("sqlite:///"))
    if not uri.startswith("sqlite:///") or db.exists():
        return
    tmp = db.with_name(f".{db.name}.{os.getpid()}.tmp")
    try:
        shutil.copyfile(_empty_store_template(), tmp)
        now = int(time.time() * 1000)
        with contextlib.closing(sqlite3.connect(tmp)) as copy, copy:
            copy.execute("UPDATE experiments SET artifact_location = ?, creation_time = ?, last_update_time = ? "
                         "WHERE experiment_id = 0", (f"{ARTIFACTS_DIR}/0", now, now))
        os.replace(tmp, db)
    except (OSError, sqlite3.Error):
        tmp.unlink(missing_ok=True)


def _empty_store_template() -> Path:
    """An empty SQLite store of this MLflow version, made on first use."""
    import mlflow
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "arscale"
    template = cache / f"mlflow-{mlflow.__version__}-empty.db"
    if not template.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = cache / f".{template.name}.{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
        SqlAlchemyStore(f"sqlite:///{tmp}", (cache / ARTIFACTS_DIR).as_uri()).engine.dispose()
        os.replace(tmp, template)  # whole, or not there: another process may be making it too
    return template


def anchor_artifacts(uri: str) -> None:
    """Rewrites a SQLite store's absolute artifact locations inside an `mlartifacts` folder (MLflow stores every
    location absolute) as paths relative to the database's folder: `mlflow ui` started in that folder, and
    arscale's loggers (`local_artifact_folder`), then find the artifacts wherever the folder was copied or moved.
    MLflow offers no setting for this, so the two columns are updated in place."""
    import sqlite3

    tables = (("experiments", "experiment_id", "artifact_location"), ("runs", "run_uuid", "artifact_uri"))
    with contextlib.closing(sqlite3.connect(uri.removeprefix("sqlite:///"), timeout=60)) as db, db:
        for table, key, column in tables:
            for row_key, location in db.execute(f"SELECT {key}, {column} FROM {table}").fetchall():
                relative = _relative_artifact_location(location)
                if relative != location:
                    db.execute(f"UPDATE {table} SET {column} = ? WHERE {key} = ?", (relative, row_key))


def _relative_artifact_location(location: str | None) -> str | None:
    """`file:///old/study/mlartifacts/<run>/artifacts` → `mlartifacts/<run>/artifacts`; anything else unchanged."""
    if not location or not (location.startswith("file:") or location.startswith("/")):
        return location
    parts = Path(unquote(urlsplit(location).path) if location.startswith("file:") else location).parts
    if ARTIFACTS_DIR not in parts:
        return location
    start = len(parts) - 1 - parts[::-1].index(ARTIFACTS_DIR)
    return "/".join(parts[start:])


def local_artifact_folder(client, uri: str, run_id: str) -> Path | None:
    """The folder of run `run_id`'s artifacts when its location is relative (a SQLite store's, see
    `anchor_artifacts`): taken relative to the database's folder, not to this process's working directory."""
    folder = sqlite_folder(uri)
    if folder is None:
        return None
    location = client.get_run(run_id).info.artifact_uri
    if location.startswith("/") or ":" in location.split("/", 1)[0]:
        return None  # absolute, or another scheme: MLflow finds it itself
    return folder / location


def log_artifact_files(client, uri: str, run_id: str, path: Path, artifact_path: str | None = None) -> None:
    """Logs a file, or a folder's files, as artifacts of run `run_id` (see `local_artifact_folder`)."""
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

    folder = local_artifact_folder(client, uri, run_id)
    if folder is not None:
        repository = LocalArtifactRepository(str(folder))
        log_file, log_folder = repository.log_artifact, repository.log_artifacts
    else:
        log_file, log_folder = partial(client.log_artifact, run_id), partial(client.log_artifacts, run_id)
    (log_folder if Path(path).is_dir() else log_file)(str(path), artifact_path)


def system_tags() -> dict[str, str]:
    """MLflow's standard system tags, as `mlflow.start_run` sets them (user, source name and type), and the git
    commit and branch of arscale's own checkout when it runs from one (MLflow would look at the command's file,
    which for the `arscale` script is a virtual environment's)."""
    from mlflow.tracking.context.registry import resolve_tags

    tags = {k: v for k, v in resolve_tags().items() if k.startswith("mlflow.")}
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / ".git").exists():
        def git(*args: str) -> str:
            try:
                done = subprocess.run(["git", "-C", str(checkout), *args], capture_output=True, text=True, timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                return ""
            return done.stdout.strip() if done.returncode == 0 else ""

        if commit := git("rev-parse", "HEAD"):
            tags["mlflow.source.git.commit"] = commit
            tags["arscale.git_dirty"] = str(bool(git("status", "--porcelain", "--untracked-files=no")))
        if (branch := git("rev-parse", "--abbrev-ref", "HEAD")) and branch != "HEAD":
            tags["mlflow.source.git.branch"] = branch
    return tags


def headline_metrics(fit: dict) -> dict[str, float]:
    """The numbers of a study's fit.json worth a glance in MLflow, per series: the selected form's parameters,
    whether it is identified, its backtest error, its first prediction, and the confirmation run's prediction."""
    metrics: dict[str, float] = {}
    for series, fits in fit.get("families", {}).items():
        form = fits.get("selected") or "compute"
        law = fits.get(form) or {}
        if "error" in law or not law:
            continue
        numbers = {k: law.get(k) for k in ("alpha", "A", "E", "n_points", "noise_sd")}
        numbers["identified"] = float(bool(law.get("identified")))
        numbers["backtest_abs_rel_error"] = (law.get("backtest") or {}).get("mean_abs_rel_error")
        if law.get("identified") and law.get("predictions"):
            first = law["predictions"][0]
            numbers.update(predicted_loss=first.get("loss"), predicted_at_flops=first.get("compute"))
        confirm = fits.get("confirm") or {}
        numbers["confirm_predicted_loss"] = confirm.get("predicted")
        metrics.update({f"{series}.{form}.{k}": float(v) for k, v in numbers.items()
                        if isinstance(v, (int, float)) and v is not None})
    return metrics


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


def _log_params(client, run_id: str, params: dict[str, str]) -> None:
    from mlflow.entities import Param

    batch = [Param(k, str(v)) for k, v in params.items()]
    for i in range(0, len(batch), 100):  # MLflow caps params per batch at 100
        client.log_batch(run_id, params=batch[i:i + 100])


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
    """Creates the study's parent run and the nested runs of its steps (called from the study driver).

    The parent run of an earlier `study run` of the same folder is reused while the study's config is the same;
    a changed config gets a new parent run (MLflow params cannot change), tagged with the one before it."""

    def __init__(self, uri: str, study_name: str, study_dir: Path, parent_run_id: str | None = None,
                 config: dict | None = None):
        import mlflow
        from mlflow import MlflowClient

        self.uri = uri
        _check_reachable(uri)
        seed_sqlite_store(uri)
        self.client = MlflowClient(tracking_uri=uri)
        experiment = self.client.get_experiment_by_name(study_name)
        if experiment is None:
            self.experiment_id = create_experiment(self.client, uri, study_name)
        else:
            self.experiment_id = experiment.experiment_id
            if sqlite_folder(uri):
                anchor_artifacts(uri)  # a store made before locations were relative, or one moved since
        self.system_tags = system_tags()
        params = flatten(config) if config is not None else {}
        run = None
        if parent_run_id:
            try:
                run = self.client.get_run(parent_run_id)
            except mlflow.exceptions.MlflowException:
                run = None  # the store was replaced; start a new parent run
        if run is not None and run.data.params and run.data.params != params:
            previous, run = run.info.run_id, None  # the config changed
        else:
            previous = None
        if run is None:
            tags = {STUDY_TAG: str(Path(study_dir).resolve()), **self.system_tags}
            if previous:
                tags["arscale.previous_parent_run_id"] = previous
            run = self.client.create_run(self.experiment_id, run_name=study_name, tags=tags)
            _with_retries(_log_params, self.client, run.info.run_id, params)
        else:
            self.client.update_run(run.info.run_id, status="RUNNING")
        self.parent_run_id = run.info.run_id

    def start_step_run(self, name: str, dirname: str, config: dict, inputs: dict[str, str],
                       parent_run_id: str | None = None) -> str:
        """A nested run for one execution of a step, with its `config` (pipelines.step.config_dict) as params; tags
        trace it to its inputs' versioned directories. It nests under the study's run, or under `parent_run_id`
        (a cooldown branch under the trunk it continues)."""
        tags = {"mlflow.parentRunId": parent_run_id or self.parent_run_id, "arscale.step": name,
                "arscale.step_dir": dirname,
                "arscale.step_hash": dirname.rsplit("-", 1)[-1], **self.system_tags}
        tags.update({f"arscale.input.{k}": v for k, v in inputs.items()})
        run = _with_retries(self.client.create_run, self.experiment_id, run_name=name, tags=tags)
        _with_retries(_log_params, self.client, run.info.run_id, flatten(config))
        return run.info.run_id

    def finish_run(self, run_id: str, ok: bool, error: str | None = None) -> None:
        if error:
            _with_retries(self.client.set_tag, run_id, "arscale.error", error[:5000])
        _with_retries(self.client.set_terminated, run_id, "FINISHED" if ok else "FAILED")

    def log_study_results(self, report_dir: Path) -> None:
        """The finished study's headline fit numbers (fit.json) as the parent run's metrics, and its report folder
        (report.md, report.html, plots, fit.json, runs.csv) as the parent run's artifacts under `report/`."""
        from mlflow.entities import Metric

        fit = json.loads((Path(report_dir) / "fit.json").read_text())
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, 0) for k, v in headline_metrics(fit).items()]
        if metrics:
            _with_retries(self.client.log_batch, self.parent_run_id, metrics=metrics)
        _with_retries(log_artifact_files, self.client, self.uri, self.parent_run_id, Path(report_dir), "report")

    def finish_study(self, ok: bool) -> None:
        self.finish_run(self.parent_run_id, ok)


class NullStudyTracking:
    """The tracking of a study that is not tracked: it starts no runs (a step's run id is None)."""

    uri = None

    def start_step_run(self, name: str, dirname: str, config: dict, inputs: dict[str, str],
                       parent_run_id: str | None = None) -> None:
        return None

    def finish_run(self, run_id: str, ok: bool, error: str | None = None) -> None:
        pass

    def log_study_results(self, report_dir: Path) -> None:
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
        self.uri = uri
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

    def log_params(self, params: dict[str, Any]) -> None:
        """Params beyond the step config's (which the study driver logs when it starts the run)."""
        self._call(_log_params, self.client, self.run_id, params, what={"params": params})

    def log_artifacts(self, directory: Path, artifact_path: str | None = None) -> None:
        self._call(log_artifact_files, self.client, self.uri, self.run_id, Path(directory), artifact_path,
                   what={"artifacts": str(directory), "artifact_path": artifact_path})

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self._call(log_artifact_files, self.client, self.uri, self.run_id, Path(path), artifact_path,
                   what={"artifact": str(path), "artifact_path": artifact_path})

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
        if "params" in r:
            _log_params(self.client, r["run_id"], r["params"])
        for kind in ("artifacts", "artifact"):
            if kind in r and Path(r[kind]).exists():
                log_artifact_files(self.client, self.uri, r["run_id"], Path(r[kind]), r.get("artifact_path"))


class NullRunLogger:
    """A RunLogger for a step without an MLflow run: it logs nothing."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def set_tags(self, tags: dict[str, str]) -> None:
        pass

    def log_params(self, params: dict[str, Any]) -> None:
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
