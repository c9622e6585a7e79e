"""Token shards: Parquet files of tokenized documents, described by a `manifest.json`.

A shard set is a directory::

    manifest.json          format, split, tokenizer hash, dtype, layout, per-shard rows/tokens/bytes/sha256 (and,
                           from bulk tokenization, documents and source byte ranges), skipped files, totals
    shard-00000.parquet    layout "documents": doc_id (int64), tokens (list<uint16 or uint32>), n_bytes (int64)
    ...                    layout "packed": tokens (list, seq_len long; the last row of a shard may be shorter),
                           doc_ids (list<int64>: the documents whose tokens the row holds)
    labels.npy             optional (labelled images): int64 [documents], each document's class, in document order

In the documents layout a document larger than a read block is stored as consecutive rows with the same doc_id, and
readers join them. In the packed layout every document is followed by the end-of-document token, so the rows laid end
to end are the token stream itself. Shards are written to a temporary name and renamed when complete, and the
manifest is written last, so a shard listed in a manifest is always whole; readers verify each shard's sha256 before
use. Format 1 (no layout: documents, one row per document) is read as well.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from armodels.files import file_sha256, write_json_atomic

FORMAT = "arscale-token-shards/2"
FORMATS = ("arscale-token-shards/1", FORMAT)  # what the readers understand
MANIFEST = "manifest.json"
TOKENIZER_COPY = "tokenizer"  # a shard set keeps a copy of its tokenizer here, so it can be decoded on its own
DOCUMENTS, PACKED = "documents", "packed"
LABELS = "labels.npy"


@dataclass
class ShardInfo:
    file: str
    rows: int
    tokens: int
    bytes: int
    sha256: str
    documents: int | None = None  # documents that end in this shard (None: one per row)
    sources: list[dict] = field(default_factory=list)  # the input: {"file", "bytes" or "rows": [start, end], ...}


@dataclass
class Manifest:
    split: str
    tokenizer_sha256: str
    vocab_size: int
    eod_id: int | None  # None: documents of fixed length (images), laid end to end with no separator
    dtype: str
    shards: list[ShardInfo] = field(default_factory=list)
    format: str = FORMAT
    layout: str = DOCUMENTS
    seq_len: int | None = None  # packed layout: tokens per row
    skipped: list[dict] = field(default_factory=list)  # input files left out, with the reason
    plan_sha256: str = ""  # identifies the inputs and settings that made these shards (resuming checks it)

    @property
    def documents(self) -> int:
        return sum(s.rows if s.documents is None else s.documents for s in self.shards)

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.shards)

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.shards)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["totals"] = {"documents": self.documents, "tokens": self.tokens, "bytes": self.bytes,
                       "tokens_per_byte": self.tokens / self.bytes if self.bytes else None}
        return d


def token_dtype(vocab_size: int) -> np.dtype:
    """The narrowest unsigned type that holds every token id."""
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


class ShardFileWriter:
    """One shard file, written a batch of rows at a time (memory stays bounded), under a temporary name until
    `close` renames it into place."""

    def __init__(self, path: Path, dtype: np.dtype, layout: str = DOCUMENTS):
        self.path, self.dtype = Path(path), np.dtype(dtype)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp")
        tokens = pa.list_(pa.from_numpy_dtype(self.dtype))
        fields = ([("doc_id", pa.int64()), ("tokens", tokens), ("n_bytes", pa.int64())] if layout == DOCUMENTS
                  else [("tokens", tokens), ("doc_ids", pa.list_(pa.int64()))])
        self.schema = pa.schema(fields)
        self._writer = pq.ParquetWriter(self.tmp, self.schema)
        self.rows = self.tokens = 0

    def write_documents(self, doc_ids: Sequence[int], tokens: Sequence[Sequence[int]], n_bytes: Sequence[int]) -> None:
        self._write([pa.array(doc_ids, pa.int64()), self._lists(tokens), pa.array(n_bytes, pa.int64())])

    def write_packed(self, rows: Sequence[np.ndarray], doc_ids: Sequence[Sequence[int]]) -> None:
        self._write([self._lists(rows), pa.array(doc_ids, pa.list_(pa.int64()))])

    def close(self) -> str:
        """Finish the file and rename it into place; returns its sha256."""
        self._writer.close()
        os.replace(self.tmp, self.path)
        return file_sha256(self.path)

    def abort(self) -> None:
        self._writer.close()
        self.tmp.unlink(missing_ok=True)

    def _write(self, columns: list[pa.Array]) -> None:
        if len(columns[0]):
            self._writer.write_table(pa.Table.from_arrays(columns, schema=self.schema))
            self.rows += len(columns[0])

    def _lists(self, lists: Sequence[Sequence[int]]) -> pa.ListArray:
        """A list array built from one flat buffer: far faster than pa.array on nested Python lists."""
        lengths = np.fromiter(map(len, lists), np.int64, len(lists))
        offsets = np.zeros(len(lists) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        total = int(offsets[-1])
        values = np.fromiter(itertools.chain.from_iterable(lists), self.dtype, total)
        self.tokens += total
        return pa.LargeListArray.from_arrays(offsets, values).cast(pa.list_(pa.from_numpy_dtype(self.dtype)))


class ShardWriter:
    """Streams tokenized documents into shards of about `shard_tokens` tokens each (held in memory per shard; bulk
    tokenization writes its shards with ShardFileWriter directly)."""

    def __init__(self, directory: Path, *, split: str, tokenizer_sha256: str, vocab_size: int, eod_id: int | None,
                 shard_tokens: int = 1_000_000):
        if shard_tokens < 1:
            raise ValueError(f"shard_tokens must be positive, got {shard_tokens}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.shard_tokens = shard_tokens
        self.dtype = token_dtype(vocab_size)
        self.manifest = Manifest(split, tokenizer_sha256, vocab_size, eod_id, self.dtype.name)
        self._rows: list[tuple[int, np.ndarray, int]] = []
        self._pending_tokens = 0

    def add(self, doc_id: int, tokens: list[int], n_bytes: int) -> None:
        self._rows.append((doc_id, np.asarray(tokens, dtype=self.dtype), n_bytes))
        self._pending_tokens += len(tokens)
        if self._pending_tokens >= self.shard_tokens:
            self._flush()

    def close(self) -> Manifest:
        """Write the last shard and the manifest; returns the manifest."""
        self._flush()
        write_json_atomic(self.directory / MANIFEST, self.manifest.to_dict())
        return self.manifest

    def _flush(self) -> None:
        if not self._rows:
            return
        name = shard_name(len(self.manifest.shards))
        doc_ids, tokens, n_bytes = zip(*self._rows)
        writer = ShardFileWriter(self.directory / name, self.dtype)
        writer.write_documents(doc_ids, tokens, n_bytes)
        sha256 = writer.close()
        self.manifest.shards.append(ShardInfo(name, len(self._rows), self._pending_tokens, sum(n_bytes), sha256))
        self._rows, self._pending_tokens = [], 0


def shard_name(index: int, part: int = 0) -> str:
    """shard-00012.parquet; a piece of bulk tokenization written as several files goes on with shard-00012-001..."""
    return f"shard-{index:05d}.parquet" if part == 0 else f"shard-{index:05d}-{part:03d}.parquet"


def shard_index(name: str) -> int:
    """The index in a shard's file name (the piece it came from)."""
    return int(name.removeprefix("shard-").removesuffix(".parquet").split("-")[0])


def tokenize_to_shards(tokenizer, texts: Iterable[str], directory: Path, *, split: str,
                       shard_tokens: int = 1_000_000, batch_size: int = 256) -> Manifest:
    """Encode `texts` in batches with `tokenizer` (an armodels.bpe.BPETokenizer) into a shard set."""
    writer = ShardWriter(directory, split=split, tokenizer_sha256=tokenizer.meta.sha256,
                         vocab_size=tokenizer.vocab_size, eod_id=tokenizer.eod_id, shard_tokens=shard_tokens)
    batch: list[str] = []
    doc_id = 0

    def flush() -> None:
        nonlocal doc_id
        for text, ids in zip(batch, tokenizer.encode_batch(batch)):
            writer.add(doc_id, ids, len(text.encode("utf-8")))
            doc_id += 1
        batch.clear()

    for text in texts:
        batch.append(text)
        if len(batch) == batch_size:
            flush()
    flush()
    return writer.close()


def read_manifest(directory: Path) -> Manifest:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not a token shard directory (make one with the study's shard "
                                "step or `arscale tokenize`)")
    try:
        d = json.loads(path.read_text())
        shards = [ShardInfo(**s) for s in d["shards"]]
        manifest = Manifest(d["split"], d["tokenizer_sha256"], d["vocab_size"], d["eod_id"], d["dtype"], shards,
                            d.get("format", FORMAT), d.get("layout", DOCUMENTS), d.get("seq_len"),
                            d.get("skipped", []), d.get("plan_sha256", ""))
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a valid shard manifest ({e})") from None
    if manifest.format not in FORMATS or manifest.layout not in (DOCUMENTS, PACKED):
        raise ValueError(f"{path} has format {manifest.format!r}, layout {manifest.layout!r}: this version of "
                         f"arscale reads {', '.join(FORMATS)} with layout {DOCUMENTS} or {PACKED}")
    for shard in manifest.shards:
        name = shard.file
        if not isinstance(name, str) or not name or Path(name).is_absolute() or ".." in Path(name).parts:
            raise ValueError(f"{path} names a shard file {name!r} outside its folder: a manifest may name only files "
                             "in its own folder; re-make the shards")
    return manifest


def verified_shard(directory: Path, shard: ShardInfo, verify: bool = True) -> Path:
    """The path of a shard listed in a manifest, after checking that it is there, inside the shard folder (a
    symlink may not lead out of it) and (with `verify`) intact."""
    path = Path(directory) / shard.file
    if not path.resolve().is_relative_to(Path(directory).resolve()):
        raise ValueError(f"{path} leads outside {directory} (a symlink): a manifest may name only files in its own "
                         "folder; re-make the shards")
    if not path.is_file():
        raise FileNotFoundError(f"{path} is listed in the manifest but missing; re-run the shard step")
    if verify and file_sha256(path) != shard.sha256:
        raise ValueError(f"{path} is corrupt (checksum mismatch); delete the shard directory and re-run")
    return path


def _rows(path: Path, *columns: str) -> Iterator[tuple]:
    """(tokens, value of each of `columns`) of every row of a shard file, a row group at a time."""
    table_file = pq.ParquetFile(path)
    for batch in table_file.iter_batches(columns=["tokens", *columns]):
        tokens, others = batch.column(0), [batch.column(k + 1).to_pylist() for k in range(len(columns))]
        offsets = tokens.offsets.to_numpy()
        values = tokens.values.to_numpy(zero_copy_only=False)
        for i in range(len(tokens)):
            yield values[offsets[i]:offsets[i + 1]], *(other[i] for other in others)


def iter_rows_with_bytes(directory: Path, *, verify: bool = True) -> Iterator[tuple[int, np.ndarray, int]]:
    """(doc_id, tokens, bytes of the text they encode) of every row of a shard set of layout documents, in order
    (load_token_stream lays them end to end, an end-of-document after each document's last row); ValueError for
    the packed layout, whose rows do not record bytes."""
    manifest = read_manifest(directory)
    if manifest.layout != DOCUMENTS:
        raise ValueError(f"{directory} has layout {manifest.layout}: only layout {DOCUMENTS} records each row's bytes")
    for shard in manifest.shards:
        for tokens, doc_id, n_bytes in _rows(verified_shard(directory, shard, verify), "doc_id", "n_bytes"):
            yield doc_id, tokens, n_bytes


def iter_documents_with_ids(directory: Path, *, verify: bool = True) -> Iterator[tuple[int, np.ndarray]]:
    """(doc_id, token array) of the documents in a shard set, in order; checks each shard's checksum first."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    paths = (verified_shard(directory, shard, verify) for shard in manifest.shards)
    if manifest.layout == PACKED:
        yield from _unpack(paths, manifest.eod_id)
        return
    current, parts = None, []
    for path in paths:
        for tokens, doc_id in _rows(path, "doc_id"):
            if doc_id != current and current is not None:
                yield current, _join(parts)
                parts = []
            current = doc_id
            parts.append(tokens)
    if current is not None:
        yield current, _join(parts)


def _unpack(paths: Iterable[Path], eod_id: int) -> Iterator[tuple[int, np.ndarray]]:
    """Documents of packed rows: the stream cut at each end-of-document token, named by the rows' doc_ids."""
    ids: list[int] = []
    parts: list[np.ndarray] = []
    for path in paths:
        for tokens, row_ids in _rows(path, "doc_ids"):
            ids += [i for i in row_ids if not ids or i != ids[-1]]
            ends = np.flatnonzero(tokens == eod_id)
            start = 0
            for end in ends:
                parts.append(tokens[start:end])
                yield ids.pop(0), _join(parts)
                parts, start = [], end + 1
            parts.append(tokens[start:])
    if any(len(p) for p in parts):  # a stream that does not end with end-of-document: its last document
        yield (ids[0] if ids else -1), _join(parts)


def _join(parts: list[np.ndarray]) -> np.ndarray:
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def iter_documents(directory: Path, *, verify: bool = True) -> Iterator[np.ndarray]:
    """Token arrays of the documents in a shard set, in order; checks each shard's checksum first."""
    for _, tokens in iter_documents_with_ids(directory, verify=verify):
        yield tokens


def load_token_stream(directory: Path, *, verify: bool = True) -> np.ndarray:
    """All documents of a shard set concatenated into one stream, each followed by the end-of-document token (or,
    for shard sets without one, such as images, by nothing: the next document starts where one ends)."""
    manifest = read_manifest(directory)
    if manifest.layout == PACKED:  # the rows laid end to end are the stream
        parts = [tokens for shard in manifest.shards
                 for tokens, _ in _rows(verified_shard(directory, shard, verify), "doc_ids")]
    else:
        eod = [] if manifest.eod_id is None else [np.array([manifest.eod_id], dtype=manifest.dtype)]
        parts = []
        for doc in iter_documents(directory, verify=verify):
            parts += [doc, *eod]
    if not parts:
        raise ValueError(f"{directory} holds no tokens")
    return np.concatenate(parts)


def save_document_labels(directory: Path, labels: np.ndarray) -> None:
    """Each document's class label (int64 [documents], in document order) beside the shards, for class-conditioned
    models; written whole under a temporary name, as the shards are."""
    tmp = Path(directory) / f".{LABELS}.tmp"
    with open(tmp, "wb") as f:
        np.save(f, np.asarray(labels, dtype=np.int64), allow_pickle=False)
    os.replace(tmp, Path(directory) / LABELS)


def load_document_labels(directory: Path) -> np.ndarray:
    """The class label of each document of a shard set (save_document_labels); ValueError when it has none."""
    path = Path(directory) / LABELS
    if not path.is_file():
        raise ValueError(f"{directory} has no class labels ({LABELS}): its documents are not labelled images")
    return np.load(path, allow_pickle=False)
