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
STUDY_FILES = ("study.json", "mlflow.db", "mlartifacts", "logs")  # the study's own files, beside its step folders
STUDY_FOLDERS = ("mlartifacts", "logs")
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
            if name in STUDY_FOLDERS:
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


# Reading inputs from an object store (`arscale tokenize --input s3://bucket/corpus/`): finding the files a URI names,
# failing in seconds, with one line, when the store cannot answer.

def open_uri(uri: str, *, quick: bool = False):
    """(pyarrow filesystem, path in it) for `uri`; UserError (secrets hidden) when pyarrow cannot open such a URI.

    `quick`: each request is tried once, for a first look that must fail in seconds when the store is unreachable
    (pyarrow's S3 client retries a refused connection for 6 s, a GCS client for 15 minutes)."""
    from datetime import timedelta

    from pyarrow import fs

    try:
        filesystem, path = fs.FileSystem.from_uri(uri)
    except Exception as e:  # ArrowInvalid, OSError or ValueError for an unknown scheme or option
        why = hide_secrets(str(e).strip(), uri)  # pyarrow quotes the URI whole
        raise UserError(f"{redact_uri(uri)}: not a storage URI pyarrow can open ({why}); use a path, or "
                        "s3://bucket/prefix, gs://bucket/prefix, ...") from None
    if quick and filesystem.type_name in ("s3", "gcs"):
        # the same settings (keys, endpoint, region) that pyarrow read from the URI, with retries bounded
        settings = filesystem.__reduce__()[1][0]
        if filesystem.type_name == "s3":
            filesystem = fs.S3FileSystem(**settings, retry_strategy=fs.AwsStandardS3RetryStrategy(max_attempts=1))
        else:
            filesystem = fs.GcsFileSystem(**{**settings, "retry_time_limit": timedelta(seconds=5)})
    return filesystem, path


def find_uri_files(uri: str, wanted=lambda relative: True) -> list[str]:
    """The files `uri` names, as URIs, sorted: the object itself; every object under it (a folder, or any prefix
    ending in '/') whose path below it `wanted` takes; or, for a glob, the objects whose paths match it (`*` and
    `[...]` within a folder, `**` across folders; a '?' starts the URI's options). Each keeps `uri`'s options and
    keys, so that it opens in any process.

    UserError, in seconds, naming `uri` with its secrets hidden and what to do: the store is unreachable or refuses
    (credentials), the bucket does not exist, or nothing is there."""
    from urllib.parse import quote, unquote

    from pyarrow import fs

    shown = redact_uri(uri)
    base_uri, pattern = _split_glob(uri)
    filesystem, base = open_uri(base_uri, quick=True)
    base = base.rstrip("/")
    try:
        kind = filesystem.get_file_info(base).type
        if kind == fs.FileType.File and not pattern:
            return [uri]
        infos = [] if kind == fs.FileType.NotFound else \
            filesystem.get_file_info(fs.FileSelector(base, recursive=True, allow_not_found=True))
        bucket = base.split("/", 1)[0]
        no_bucket = (kind == fs.FileType.NotFound and filesystem.type_name in ("s3", "gcs")
                     and filesystem.get_file_info(bucket).type == fs.FileType.NotFound)
    except Exception as e:  # OSError from the store: unreachable, refused, no such bucket
        why = hide_secrets((str(e).strip().splitlines() or [type(e).__name__])[0], uri)
        raise UserError(f"input {shown} cannot be read ({why}); check the endpoint, that the bucket exists and the "
                        "credentials") from None
    if no_bucket:
        raise UserError(f"input {shown}: the bucket '{bucket}' does not exist; check the URI")
    matches = _glob_regex(unquote(pattern)) if pattern else None  # the URI's %20 is the key's space
    found = sorted(info.path[len(base) + 1:].split("/") for info in infos if info.type == fs.FileType.File)
    found = [relative for relative in map("/".join, found)  # in the order of sorted local paths (by folder)
             if (matches.fullmatch(relative) if matches else wanted(relative))]
    if not found and (pattern or not infos):
        what = "no object matches it" if pattern else "no file or folder of that name is there"
        raise UserError(f"input {shown}: {what}; check the URI (a prefix with no files is an empty folder)")
    return [join_uri(base_uri, quote(relative)) for relative in found]


def _split_glob(uri: str) -> tuple[str, str]:
    """(the URI of the folder above the first wildcard of `uri`'s path, the rest of its path); ('uri', '') for none."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    names = parts.path.split("/")
    first = next((i for i, name in enumerate(names) if any(c in name for c in "*[")), None)
    if first is None:
        return uri, ""
    return urlunsplit(parts._replace(path="/".join(names[:first]))), "/".join(names[first:])


def _glob_regex(pattern: str):
    """A regex matching the paths that the glob `pattern` matches, as Python's glob(recursive=True) would."""
    import fnmatch
    import re

    parts = []
    names = pattern.split("/")
    for i, name in enumerate(names):
        if name == "**":
            parts.append(".*/" if i == len(names) - 1 else "(?:[^/]+/)*")  # any number of folders, none too
        else:  # fnmatch's pattern for one name, its '*' kept inside the name
            parts.append(fnmatch.translate(name).removeprefix("(?s:").removesuffix(")\\Z").replace(".*", "[^/]*")
                         + "/")
    return re.compile("".join(parts).removesuffix("/"))
