"""Token shards: Parquet files of tokenized documents, described by a `manifest.json`.

A shard set is a directory::

    manifest.json          format, split, tokenizer hash, dtype, per-shard rows/tokens/bytes/sha256, totals
    shard-00000.parquet    columns: doc_id (int64), tokens (list<uint16 or uint32>), n_bytes (int64)
    ...

Shards are written to a temporary name and renamed when complete, and the manifest is written last, so a shard
listed in a manifest is always whole; readers verify each shard's sha256 before use.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from armodels.files import file_sha256, write_json_atomic

FORMAT = "arscale-token-shards/1"
MANIFEST = "manifest.json"


@dataclass
class ShardInfo:
    file: str
    rows: int
    tokens: int
    bytes: int
    sha256: str


@dataclass
class Manifest:
    split: str
    tokenizer_sha256: str
    vocab_size: int
    eod_id: int
    dtype: str
    shards: list[ShardInfo] = field(default_factory=list)
    format: str = FORMAT

    @property
    def documents(self) -> int:
        return sum(s.rows for s in self.shards)

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


class ShardWriter:
    """Streams tokenized documents into shards of about `shard_tokens` tokens each."""

    def __init__(self, directory: Path, *, split: str, tokenizer_sha256: str, vocab_size: int, eod_id: int,
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
        name = f"shard-{len(self.manifest.shards):05d}.parquet"
        doc_ids, tokens, n_bytes = zip(*self._rows)
        table = pa.table({
            "doc_id": pa.array(doc_ids, pa.int64()),
            "tokens": pa.array(tokens, pa.list_(pa.from_numpy_dtype(self.dtype))),
            "n_bytes": pa.array(n_bytes, pa.int64()),
        })
        tmp = self.directory / f".{name}.tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, self.directory / name)
        self.manifest.shards.append(ShardInfo(name, len(self._rows), self._pending_tokens, sum(n_bytes),
                                              file_sha256(self.directory / name)))
        self._rows, self._pending_tokens = [], 0


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
        return Manifest(d["split"], d["tokenizer_sha256"], d["vocab_size"], d["eod_id"], d["dtype"], shards,
                        d.get("format", FORMAT))
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a valid shard manifest ({e})") from None


def iter_documents(directory: Path, *, verify: bool = True) -> Iterator[np.ndarray]:
    """Token arrays of the documents in a shard set, in order; checks each shard's checksum first."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    for shard in manifest.shards:
        path = directory / shard.file
        if not path.is_file():
            raise FileNotFoundError(f"{path} is listed in the manifest but missing; re-run the shard step")
        if verify and file_sha256(path) != shard.sha256:
            raise ValueError(f"{path} is corrupt (checksum mismatch); delete the shard directory and re-run")
        column = pq.read_table(path, columns=["tokens"]).column("tokens")
        for chunk in column.chunks:
            offsets = chunk.offsets.to_numpy()
            values = chunk.values.to_numpy(zero_copy_only=False)
            for i in range(len(chunk)):
                yield values[offsets[i]:offsets[i + 1]]


def load_token_stream(directory: Path, *, verify: bool = True) -> np.ndarray:
    """All documents of a shard set concatenated into one stream, each followed by the end-of-document token."""
    manifest = read_manifest(directory)
    eod = np.array([manifest.eod_id], dtype=manifest.dtype)
    parts = []
    for doc in iter_documents(directory, verify=verify):
        parts += [doc, eod]
    if not parts:
        raise ValueError(f"{directory} holds no tokens")
    return np.concatenate(parts)
