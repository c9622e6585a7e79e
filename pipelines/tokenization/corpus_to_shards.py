"""Bulk tokenization: a corpus of any size into Parquet token shards, on a pool of Ray actors, resumable.

The corpus is planned into pieces (armodels.corpus_readers) and each piece is encoded into its own shard
(armodels.piece_encoder.encode_piece) by one of `workers` actors, each of which loads the tokenizer once and runs
single-threaded, so N actors use N cores. The plan does not depend on the number of workers, so neither do the
shards. Only small descriptions travel through Ray (pieces out, shard summaries back): the actors read the inputs and
write the shards themselves.

Resuming: each finished piece's shards are renamed into place first and then appended to `.progress.jsonl` in the
output folder, and `manifest.json` is written only when every shard is done. A run that is killed and started again with
the same inputs and settings keeps the shards in the journal whose checksums still match and encodes only the rest.
The output folder must be new or empty, or hold one of those two files (an earlier run's): a folder of other files is
refused before anything in it is touched.

Inputs may be URIs of object stores (s3://bucket/corpus/, gs://..., with the endpoint and keys in the URI's options or
the store's usual variables): pipelines.storage lists them (in seconds, or one line saying why not), the actors read
the objects themselves, and the manifest names them without keys or options.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from armodels.char_word import TextTokenizer, load_text_tokenizer
from armodels.corpus_readers import (
    BadInput,
    CorpusPlan,
    Piece,
    ReadOptions,
    file_stat,
    find_files,
    in_installed_package,
    is_wanted,
    plan_corpus,
    sample_docs,
    source_name,
)
from armodels.files import file_sha256, write_json_atomic
from armodels.piece_encoder import EncodeOptions, PieceResult, RoundTripError, bytes_per_token, encode_piece
from armodels.shards import (
    FORMAT,
    MANIFEST,
    TOKENIZER_COPY,
    Manifest,
    ShardInfo,
    read_manifest,
    shard_index,
    token_dtype,
)
from pipelines.errors import RunFailure, UserError
from pipelines.progress import ThroughputProgress
from pipelines.ray_connect import connect
from pipelines.storage import find_uri_files, is_uri
from pipelines.tokenization.outputs import check_new_output
from pipelines.tracking import redact_text, redact_uri

JOURNAL = ".progress.jsonl"
DEFAULT_EXTENSIONS = (".txt", ".jsonl", ".parquet", ".py", ".md")


@dataclass(frozen=True)
class TokenizeSettings:
    """Everything that decides the shards (the number of workers does not)."""

    inputs: tuple[str, ...]
    shard_tokens: int = 1_000_000
    seq_len: int | None = None  # None: one row per document; else packed rows of seq_len tokens
    read: ReadOptions = field(default_factory=ReadOptions)
    extensions: tuple[str, ...] = DEFAULT_EXTENSIONS
    skip_bad: bool = False
    split: str = "all"


def tokenize_corpus(tokenizer_dir: Path, out: Path, settings: TokenizeSettings, *, workers: int | None = None,
                    verify: bool = False, use_ray: bool = True, address: str | None = None,
                    log: Callable[[str], None] | None = None) -> Manifest:
    """Tokenize `settings.inputs` into shards in `out`; returns the manifest. Raises UserError for bad arguments
    or input, RunFailure for a failure while running (finished shards are kept for the next run).

    Messages and progress go to `log` as plain lines, or by default to stderr (a progress bar on a terminal).
    """
    _check_settings(settings, workers)
    tokenizer = load_tokenizer(tokenizer_dir)
    plan = plan_inputs(tokenizer, settings, exclude=Path(out))
    options = EncodeOptions(settings.read, "packed" if settings.seq_len else "documents", settings.seq_len,
                            verify, settings.skip_bad, shard_tokens=settings.shard_tokens)
    journal = Journal(Path(out), plan_fingerprint(tokenizer, plan, options))
    done = journal.resume(len(plan.pieces))
    pending = [p for p in plan.pieces if p.index not in done]
    say = log or (lambda line: print(line, file=sys.stderr, flush=True))
    for entry in plan.skipped:
        say(f"skipped {entry['file']}: {entry['reason']}")
    if done:
        say(f"all {len(done)} shards are already done (checksums verified)" if not pending else
            f"resuming: {len(done)} of {len(plan.pieces)} shards already done (checksums verified)")
    progress = ThroughputProgress(f"tokenize {settings.split}" if log else "tokenize", plan.bytes, write=log)
    progress.resume(sum(plan.pieces[i].bytes for i in done), *_counts(done.values()))

    def finished(piece: Piece, result: PieceResult) -> None:
        journal.record(piece.index, result)
        done[piece.index] = result
        progress.update(piece.bytes, *_counts([result]))

    if use_ray:
        _run_on_ray(tokenizer_dir, pending, journal.directory, options, workers, address, progress, finished)
    else:
        progress.begin()
        for piece in pending:
            finished(piece, _encode_here(tokenizer, piece, journal.directory, options))
    if pending:
        progress.close()
    tokenizer.save(journal.directory / TOKENIZER_COPY)
    results = [done[p.index] for p in plan.pieces]
    shards = [s for r in results for s in r.shards]
    manifest = Manifest(settings.split, tokenizer.meta.sha256, tokenizer.vocab_size, tokenizer.eod_id,
                        token_dtype(tokenizer.vocab_size).name, shards, FORMAT, options.layout,
                        settings.seq_len, plan.skipped + [s for r in results for s in r.skipped], journal.fingerprint)
    journal.finish(manifest)
    return manifest


def _check_settings(settings: TokenizeSettings, workers: int | None) -> None:
    if settings.shard_tokens < 1:
        raise UserError(f"--shard-tokens must be positive, got {settings.shard_tokens}")
    if settings.seq_len is not None and settings.seq_len < 1:
        raise UserError(f"--seq-len must be positive, got {settings.seq_len}")
    if workers is not None and workers < 1:
        raise UserError(f"--workers must be positive, got {workers}")


def load_tokenizer(directory: Path) -> TextTokenizer:
    try:
        return load_text_tokenizer(Path(directory))
    except FileNotFoundError as e:
        raise UserError(f"{e} (train one with `arscale tokenizer train bpe|char|word`)") from None
    except ValueError as e:  # says what to do
        raise UserError(str(e)) from None


def find_inputs(settings: TokenizeSettings, exclude: Path | None = None) -> list[Path | str]:
    """The input files, less those inside `exclude` (the output folder: shards are no input): local paths, then the
    objects of the inputs that are URIs (as URIs), each input's in order."""
    local = tuple(spec for spec in settings.inputs if not is_uri(spec))
    try:
        files: list[Path | str] = find_files(local, settings.extensions, compressed=True) if local else []
    except FileNotFoundError as e:
        raise UserError(str(e)) from None
    if exclude is not None:
        files = [f for f in files if not f.resolve().is_relative_to(exclude.resolve())]

    def wanted(relative: str) -> bool:  # what a folder's walk takes, as for local folders
        return is_wanted(relative.rsplit("/", 1)[-1], settings.extensions, True) and not in_installed_package(relative)

    for spec in settings.inputs:
        if is_uri(spec):
            files += find_uri_files(spec, wanted)
    if not files:
        raise UserError(f"no input files in {' '.join(shown_inputs(settings))} (looked for "
                        f"{' '.join(settings.extensions)}, optionally .gz, .zst or .dz); pass files, or --extensions "
                        "for other file types")
    return files


def shown_inputs(settings: TokenizeSettings) -> list[str]:
    """The inputs as messages and records show them: URIs with their secrets hidden."""
    return [redact_uri(spec) if "://" in spec else spec for spec in settings.inputs]


def plan_inputs(tokenizer: TextTokenizer | None, settings: TokenizeSettings, piece_bytes: int | None = None,
                exclude: Path | None = None) -> CorpusPlan:
    """The pieces of the corpus. Unless given, a piece's size is what holds about `shard_tokens` tokens of
    `tokenizer`."""
    files = find_inputs(settings, exclude)
    if piece_bytes is None:
        ratio = bytes_per_token(tokenizer, sample_docs(files, settings.read, 256 << 10))
        piece_bytes = max(1 << 16, int(settings.shard_tokens * ratio))
    try:
        plan = plan_corpus(files, piece_bytes=piece_bytes, options=settings.read, skip_bad=settings.skip_bad)
    except BadInput as e:
        raise UserError(str(e)) from None
    if plan.bytes == 0:
        n = len(plan.files)
        what = {0: "every input file was skipped", 1: "the input file is empty"}.get(
            n, f"all {n} input files are empty")
        raise UserError(f"the inputs hold no text ({what}): {' '.join(shown_inputs(settings))}")
    return plan


def plan_fingerprint(tokenizer: TextTokenizer, plan: CorpusPlan, options: EncodeOptions) -> str:
    """Identifies what the shards will hold: tokenizer, the files as they are now, the plan and the layout."""
    # files by the names the manifest gives them: the keys in an input's URI are not what the shards hold
    files = {source_name(f): list(file_stat(f)) for f in plan.files}
    payload = {"format": FORMAT, "tokenizer": tokenizer.meta.sha256, "files": files, "skipped": plan.skipped,
               "pieces": [[{**asdict(s), "path": source_name(s.path)} for s in p.segments] for p in plan.pieces],
               "read": asdict(options.read), "layout": options.layout, "seq_len": options.seq_len,
               "skip_bad": options.skip_bad, "shard_tokens": options.shard_tokens}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _counts(results: Iterable[PieceResult]) -> tuple[int, int]:
    shards = [s for r in results for s in r.shards]
    return sum(s.documents or 0 for s in shards), sum(s.tokens for s in shards)


def _encode_here(tokenizer: TextTokenizer, piece: Piece, out: Path, options: EncodeOptions) -> PieceResult:
    try:
        return encode_piece(tokenizer, piece, out, options)
    except BadInput as e:
        raise UserError(str(e)) from None
    except RoundTripError as e:
        raise RunFailure(str(e)) from None


class Journal:
    """The record of finished shards that makes a run resumable (see the module's docstring)."""

    def __init__(self, directory: Path, fingerprint: str):
        self.directory, self.fingerprint = directory, fingerprint
        self.path = directory / JOURNAL

    def resume(self, n_pieces: int) -> dict[int, PieceResult]:
        """Shards of an earlier run of the same plan that are still intact, by piece index."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create the output folder {self.directory} ({e.strerror})") from None
        if not os.access(self.directory, os.W_OK):
            raise UserError(f"the output folder {self.directory} is not writable")
        if not (self.directory / MANIFEST).exists() and not self.path.exists():
            # not an earlier run's output (it would hold one of them): the files there are someone else's
            check_new_output(self.directory, or_else=", or the output of a run of this command to resume")
        earlier = self._from_manifest() if (self.directory / MANIFEST).exists() else self._from_journal()
        kept = {i: r for i, r in earlier.items() if i < n_pieces and all(map(self._intact, r.shards))}
        for stray in self.directory.glob(".shard-*.tmp"):  # half-written by a killed worker
            stray.unlink()
        (self.directory / MANIFEST).unlink(missing_ok=True)  # listed again only when every shard is done
        self._write([{"fingerprint": self.fingerprint}] + [self._entry(i, r) for i, r in sorted(kept.items())])
        return kept

    def record(self, index: int, result: PieceResult) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(self._entry(index, result)) + "\n")

    def finish(self, manifest: Manifest) -> None:
        write_json_atomic(self.directory / MANIFEST, manifest.to_dict())
        self.path.unlink(missing_ok=True)

    def _from_manifest(self) -> dict[int, PieceResult]:
        try:
            manifest = read_manifest(self.directory)
        except ValueError as e:
            raise UserError(f"{e}; use another --out or delete the folder") from None
        self._check_fingerprint(manifest.plan_sha256)
        results: dict[int, PieceResult] = {}
        for shard in manifest.shards:
            result = results.setdefault(shard_index(shard.file), PieceResult([], []))
            result.shards.append(shard)
            result.skipped += [s for s in manifest.skipped if s.get("shard") == shard.file]
        return results

    def _from_journal(self) -> dict[int, PieceResult]:
        if not self.path.exists():
            return {}
        results = {}
        with open(self.path) as f:
            lines = f.read().splitlines()
        for n, line in enumerate(lines):
            try:
                entry = json.loads(line)
            except ValueError:  # the last line of a run killed while writing it
                continue
            if n == 0:
                self._check_fingerprint(entry.get("fingerprint"))
            elif "piece" in entry:
                shards = entry["shards"] if "shards" in entry else [entry["shard"]]  # "shard": before 2026-11
                results[entry["piece"]] = PieceResult([ShardInfo(**s) for s in shards], entry["skipped"])
        return results

    def _check_fingerprint(self, fingerprint: str | None) -> None:
        if fingerprint != self.fingerprint:
            raise UserError(f"{self.directory} holds shards made from other inputs or settings (or by another "
                            "tokenizer); use another --out, or delete it to start over")

    def _intact(self, shard: ShardInfo) -> bool:
        path = self.directory / shard.file
        mine = path.parent == self.directory and not path.is_symlink()  # a shard this command wrote, in its folder
        return mine and path.is_file() and file_sha256(path) == shard.sha256

    @staticmethod
    def _entry(index: int, result: PieceResult) -> dict:
        return {"piece": index, "shards": [asdict(s) for s in result.shards], "skipped": result.skipped}

    def _write(self, entries: list[dict]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(json.dumps(e) + "\n" for e in entries))
        os.replace(tmp, self.path)


def _run_on_ray(tokenizer_dir: Path, pieces: list[Piece], out: Path, options: EncodeOptions, workers: int | None,
                address: str | None, progress: ThroughputProgress,
                finished: Callable[[Piece, PieceResult], None]) -> None:
    """Encode `pieces` on a pool of actors, calling `finished` as each shard is done (in any order)."""
    if not pieces:
        return
    import ray

    connect(address)
    cpus = ray.cluster_resources().get("CPU", 1)
    n = min(workers or max(1, int(cpus)), len(pieces))
    # One CPU each; more workers than CPUs share them rather than wait for CPUs that never come free.
    actor = ray.remote(_Encoder).options(num_cpus=min(1.0, cpus / n), max_restarts=1, max_task_retries=1)
    pool = [actor.remote(str(tokenizer_dir), str(out), options) for _ in range(n)]
    queue = deque(pieces)
    running: dict = {}

    def submit(worker) -> None:
        if queue:
            piece = queue.popleft()
            running[worker.encode.remote(piece)] = (worker, piece)

    try:
        ray.get([worker.__ray_ready__.remote() for worker in pool])
        progress.begin()  # rates count encoding, not starting Ray
        # One piece at a time per worker: the next goes to whichever worker is free first, so at the end no worker
        # waits while another still has a piece queued (a round trip costs milliseconds, a piece seconds).
        for worker in pool:
            submit(worker)
        while running:
            ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
            for ref in ready:
                worker, piece = running.pop(ref)
                finished(piece, _result(ray, ref, piece))
                submit(worker)
    finally:
        for worker in pool:
            ray.kill(worker)


def _result(ray, ref, piece: Piece) -> PieceResult:
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        cause = e.cause
        if isinstance(cause, BadInput):
            raise UserError(str(cause)) from None
        if isinstance(cause, RoundTripError):
            raise RunFailure(str(cause)) from None
        raise RunFailure(f"encoding shard {piece.index} failed: {type(cause).__name__}: {redact_text(str(cause))}; "
                         "run the same command again to resume") from None
    except ray.exceptions.RayActorError as e:
        raise RunFailure(f"a tokenizer worker died while encoding shard {piece.index} ({str(e).splitlines()[0]}); "
                         "run the same command again to resume: finished shards are kept") from None


class _Encoder:
    """A Ray actor: loads the tokenizer once, then encodes piece after piece."""

    def __init__(self, tokenizer_dir: str, out: str, options: EncodeOptions):
        # One thread per worker: the workers are the parallelism. (Set here rather than in a runtime_env, which
        # would make Ray start the worker processes anew; tokenizers reads it when it encodes.)
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        self.tokenizer = load_text_tokenizer(Path(tokenizer_dir))
        self.out, self.options = Path(out), options

    def encode(self, piece: Piece) -> PieceResult:
        return encode_piece(self.tokenizer, piece, self.out, self.options)
