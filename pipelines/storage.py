"""Study folders in an object store: `--out s3://bucket/studies/x` (or gs://, abfs://, hdfs://: what pyarrow.fs opens).

Steps read and write local files, so a study kept in an object store runs in a local scratch folder that has the
same path on every node ($ARSCALE_SCRATCH, else <tmp>/arscale-scratch, then the study's name and a hash of its
URI), and the store holds the lasting copy:

- a finished step's folder is pushed by the node that ran it, STATUS.json last, so the store holds a step as
  finished only once all its files are there. A finished folder never changes (its name holds the hash of all
  that made it), so any node may pull one as an input and keep it;
- an unfinished step's `.tmp` folder (a training run's checkpoint) is pushed after each checkpoint and when the
  step fails or stops, and pulled by the node that runs the step next, so a rerun resumes;
- the study's own files (study.json, the SQLite MLflow store and its artifacts) are pulled when the study starts
  and pushed when it ends.

So the scratch folder is only a cache: delete it, or run the study on another cluster, and the next run resumes
from the store. Credentials and endpoints come from the usual places of each store (for S3: AWS_* variables,
~/.aws, instance roles; AWS_ENDPOINT_URL for S3-compatible servers).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from pipelines.errors import UserError
from pipelines.tracking import hide_secrets, redact_uri

SCRATCH_ENV = "ARSCALE_SCRATCH"
COMMIT_MARKERS = ("state.json", "STATUS.json")  # each vouches for the files beside it, so it is copied after them
STUDY_FILES = ("study.json", "mlflow.db", "mlartifacts")  # the study's own files, beside its step folders
NOT_PUSHED = ("ray-train",)  # Ray Train's own run records: not needed to resume


def is_uri(location: str | os.PathLike) -> bool:
    """True for an object-store URI (s3://...); False for a local or shared-filesystem path."""
    text = str(location)
    return "://" in text and not text.startswith("file://")


def join_uri(uri: str, name: str) -> str:
    """`uri` with `name` appended to its path; its options (?endpoint_override=...) are kept."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    return urlunsplit(parts._replace(path=f"{parts.path.rstrip('/')}/{name}"))


class StudyStore:
    """A study folder in an object store, seen through pyarrow.fs; paths given to its methods are relative."""

    def __init__(self, uri: str):
        from pyarrow import fs

        self.uri = uri.rstrip("/")
        try:
            self.fs, self.base = fs.FileSystem.from_uri(self.uri)
        except Exception as e:  # pyarrow raises ArrowInvalid, OSError or ValueError for an unknown scheme
            why = hide_secrets(str(e).strip(), self.uri)  # pyarrow quotes the URI whole
            raise UserError(f"{self.shown}: not a storage URI pyarrow can open ({why}); use a path, or "
                            "s3://bucket/prefix, gs://bucket/prefix, ...") from None
        self.base = self.base.rstrip("/")

    @property
    def shown(self) -> str:
        """The URI fit for logs and records: keys and tokens in its options hidden."""
        return redact_uri(self.uri)

    @property
    def scratch(self) -> Path:
        """The local folder the study runs in: the same path on every node (the cache of this store)."""
        root = Path(os.environ.get(SCRATCH_ENV) or Path(tempfile.gettempdir()) / "arscale-scratch")
        name = self.base.rsplit("/", 1)[-1] or "study"
        return root / f"{name}-{hashlib.sha256(self.uri.encode()).hexdigest()[:8]}"

    def _path(self, rel: str) -> str:
        return f"{self.base}/{rel}" if rel else self.base

    def check(self) -> None:
        """Fail in seconds, with one line, when the store cannot be written (unreachable, no bucket, no rights)."""
        probe = self._path(f".write-test-{os.getpid()}")
        try:
            with self.fs.open_output_stream(probe) as f:
                f.write(b"")
            self.fs.delete_file(probe)
        except Exception as e:
            raise UserError(f"storage {self.shown} cannot be written "
                            f"({hide_secrets(str(e).strip().splitlines()[0], self.uri)}); check the "
                            "URI, that the bucket exists and the credentials") from None

    def exists(self, rel: str) -> bool:
        from pyarrow import fs

        return self.fs.get_file_info(self._path(rel)).type != fs.FileType.NotFound

    def read_json(self, rel: str) -> dict | None:
        """The JSON object stored at `rel`, or None when there is none (or it is not JSON)."""
        try:
            with self.fs.open_input_stream(self._path(rel)) as f:
                return json.loads(f.read())
        except (FileNotFoundError, ValueError):
            return None
        except OSError as e:
            if "not found" in str(e).lower() or "NoSuchKey" in str(e):
                return None
            raise

    def write_text(self, rel: str, text: str) -> None:
        with self.fs.open_output_stream(self._path(rel)) as f:
            f.write(text.encode())

    def delete(self, rel: str) -> None:
        """Remove the file or folder `rel` if the store has it."""
        from pyarrow import fs

        kind = self.fs.get_file_info(self._path(rel)).type
        if kind == fs.FileType.Directory:
            self.fs.delete_dir(self._path(rel))
        elif kind == fs.FileType.File:
            self.fs.delete_file(self._path(rel))

    def files(self, rel: str) -> list[str]:
        """The files under the store's folder `rel`, as paths relative to it."""
        from pyarrow import fs

        prefix = self._path(rel) + "/"
        infos = self.fs.get_file_info(fs.FileSelector(self._path(rel), recursive=True, allow_not_found=True))
        return [i.path[len(prefix):] for i in infos if i.type == fs.FileType.File]

    def push(self, local: Path, rel: str, mirror: bool = True, exclude: tuple[str, ...] = ()) -> None:
        """Copy the local folder (or file) `local` to `rel`, commit markers last. With `mirror`, files the store has
        there and `local` lacks are removed; without, they are kept (another node may have pushed them). Top-level
        entries named in `exclude` are neither copied nor removed."""
        local = Path(local)
        if local.is_file():
            self._upload(local, rel)
            return
        # markers after the files they vouch for, and the folder's own STATUS.json after everything
        files = sorted((p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()),
                       key=lambda name: (name == COMMIT_MARKERS[-1], name.rsplit("/", 1)[-1] in COMMIT_MARKERS, name))
        files = [f for f in files if f.split("/", 1)[0] not in (*NOT_PUSHED, *exclude)]
        stale = {f for f in self.files(rel) if f.split("/", 1)[0] not in exclude} - set(files) if mirror else set()
        for name in sorted(stale, key=lambda n: n.rsplit("/", 1)[-1] not in COMMIT_MARKERS):
            self.fs.delete_file(self._path(f"{rel}/{name}"))  # markers first: never vouching for removed files
        for name in files:
            self._upload(local / name, f"{rel}/{name}")

    def _upload(self, path: Path, rel: str) -> None:
        with path.open("rb") as src, self.fs.open_output_stream(self._path(rel)) as dst:
            shutil.copyfileobj(src, dst, length=8 << 20)

    def pull(self, rel: str, local: Path) -> bool:
        """Copy the store's folder `rel` to the local folder `local`, which must not exist yet; False if the store
        has no such folder. It is copied beside `local` and renamed, so `local` is never seen half-copied, and when
        another process pulls the same folder at the same time, one copy wins and the other is dropped."""
        local = Path(local)
        if local.exists():
            return True
        files = self.files(rel)
        if not files:
            return False
        partial = local.with_name(f"{local.name}.pull-{os.getpid()}-{time.monotonic_ns()}")
        try:
            self.pull_into(rel, partial, files)
            try:
                os.rename(partial, local)
            except OSError:  # another process got there first with the same contents
                pass
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        return True

    def pull_into(self, rel: str, local: Path, files: list[str] | None = None) -> None:
        """Copy every file of the store's folder `rel` into the local folder `local`, replacing files there."""
        for name in files if files is not None else self.files(rel):
            target = Path(local) / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with self.fs.open_input_stream(self._path(f"{rel}/{name}" if rel else name)) as src, \
                    target.open("wb") as dst:
                shutil.copyfileobj(src, dst, length=8 << 20)

    def pull_study_files(self, root: Path) -> None:
        """The study's own files (study.json, MLflow's SQLite store and artifacts), where scratch lacks them."""
        for name in STUDY_FILES:
            if (root / name).exists():
                continue
            if name == "mlartifacts":
                self.pull(name, root / name)
            elif self.exists(name):
                self.pull_into("", root, [name])

    def push_study_files(self, root: Path) -> None:
        for name in STUDY_FILES:
            if (root / name).exists():
                self.push(root / name, name)


class StopSignal:
    """Asks whether the study was told to stop: its STOP file in the local folder, or (checked at most every
    `every` seconds, as it costs a request) in the store, for processes on nodes that do not see the driver's
    folder."""

    def __init__(self, stop_file: Path, store: StudyStore | None = None, every: float = 10.0):
        self.stop_file = Path(stop_file)
        self.store = store
        self.every, self._next = every, 0.0

    def __call__(self) -> bool:
        if self.stop_file.exists():
            return True
        if self.store and time.monotonic() >= self._next:
            self._next = time.monotonic() + self.every
            try:
                return self.store.exists(self.stop_file.name)
            except OSError:
                return False  # an unreachable store must not stop training
        return False
