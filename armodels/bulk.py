"""Encoding one planned piece of a corpus into one shard file: the unit of work of bulk tokenization (no Ray here;
`pipelines.bulk_tokenize` runs pieces on Ray workers, the study's shard step in its own process).

A piece's shard depends only on the piece, the tokenizer and the options, so shards come out the same whatever worker
encodes them and in whatever order. Documents are read, encoded and written a batch at a time, so memory stays
bounded whatever the size of the piece.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from armodels.bpe import BPETokenizer
from armodels.corpus_readers import BadInput, Doc, Piece, ReadOptions, iter_docs
from armodels.shards import DOCUMENTS, PACKED, ShardFileWriter, ShardInfo, shard_name, token_dtype


@dataclass(frozen=True)
class EncodeOptions:
    read: ReadOptions = field(default_factory=ReadOptions)
    layout: str = DOCUMENTS
    seq_len: int | None = None  # packed layout: tokens per row
    verify: bool = False  # check that every document decodes back to its exact bytes
    skip_bad: bool = False  # leave out a file that turns out unreadable, instead of failing
    batch_bytes: int = 1 << 20  # text per encode_batch call: enough to amortise the call, little memory


class RoundTripError(ValueError):
    """A document whose tokens do not decode back to its bytes: a tokenizer bug, not bad input."""


@dataclass
class PieceResult:
    shard: ShardInfo
    skipped: list[dict]  # {"file", "bytes" or "rows", "reason"} of segments left out with skip_bad


class _SegmentFailed(Exception):
    def __init__(self, index: int, error: BadInput):
        super().__init__(str(error))
        self.index, self.error = index, error


def encode_piece(tokenizer: BPETokenizer, piece: Piece, directory: Path, options: EncodeOptions) -> PieceResult:
    """Encode `piece` into `directory`/shard-<index>.parquet. A file that cannot be read raises BadInput, or with
    `skip_bad` the piece is encoded again without it (so the shard is what it would be had the file not been there)."""
    skipped: dict[int, str] = {}
    while True:
        writer = ShardFileWriter(Path(directory) / shard_name(piece.index), token_dtype(tokenizer.vocab_size),
                                 options.layout)
        try:
            documents, n_bytes = _encode_into(writer, tokenizer, piece, options, skipped)
        except _SegmentFailed as e:
            writer.abort()
            if not options.skip_bad:
                raise e.error from None
            skipped[e.index] = e.error.reason
            continue
        except BaseException:
            writer.abort()
            raise
        sha256 = writer.close()
        used = [s.describe() for i, s in enumerate(piece.segments) if i not in skipped]
        shard = ShardInfo(writer.path.name, writer.rows, writer.tokens, n_bytes, sha256, documents, used)
        return PieceResult(shard, [{**piece.segments[i].describe(), "reason": why, "shard": shard.file}
                                   for i, why in skipped.items()])


def _encode_into(writer: ShardFileWriter, tokenizer: BPETokenizer, piece: Piece, options: EncodeOptions,
                 skipped: dict[int, str]) -> tuple[int, int]:
    """Write the piece's documents; returns (documents that end in it, bytes of text)."""
    sink = _PackedSink(writer, options.seq_len, tokenizer.eod_id) if options.layout == PACKED else _DocumentSink(writer)
    documents = n_bytes = 0
    for batch in _batches(_piece_docs(piece, options.read, skipped), options.batch_bytes):
        raw = [d.data if isinstance(d.data, bytes) else d.data.encode("utf-8") for d in batch]
        ids = tokenizer.encode_bytes_batch([d.data for d in batch])
        if options.verify:
            check_round_trip(tokenizer, batch, raw, ids)
        sink.add(batch, ids, [len(r) for r in raw])
        documents += sum(d.end for d in batch)
        n_bytes += sum(map(len, raw))
    sink.close()
    return documents, n_bytes


def _piece_docs(piece: Piece, options: ReadOptions, skipped: dict[int, str]) -> Iterator[Doc]:
    for i, segment in enumerate(piece.segments):
        if i in skipped:
            continue
        try:
            yield from iter_docs(segment, options)
        except BadInput as e:
            raise _SegmentFailed(i, e) from None


def _batches(docs: Iterable[Doc], batch_bytes: int, max_docs: int = 4096) -> Iterator[list[Doc]]:
    batch: list[Doc] = []
    size = 0
    for doc in docs:
        batch.append(doc)
        size += len(doc.data)
        if size >= batch_bytes or len(batch) >= max_docs:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def check_round_trip(tokenizer: BPETokenizer, docs: list[Doc], raw: list[bytes], ids: list[list[int]]) -> None:
    """Raise RoundTripError naming the first document whose tokens do not decode back to its exact bytes."""
    for doc, original, tokens in zip(docs, raw, ids):
        decoded = tokenizer.decode_bytes(tokens)
        if decoded != original:
            at = next((k for k, (a, b) in enumerate(zip(decoded, original)) if a != b), min(len(decoded),
                                                                                                len(original)))
            raise RoundTripError(f"document {doc.id} ({doc.path}) does not round-trip: it has {len(original)} bytes, "
                                 f"its tokens decode to {len(decoded)}, first difference at byte {at}")


class _DocumentSink:
    """Layout "documents": a row per document (or per block of a large text document), a row group per batch."""

    def __init__(self, writer: ShardFileWriter):
        self.writer = writer

    def add(self, docs: list[Doc], ids: list[list[int]], n_bytes: list[int]) -> None:
        self.writer.write_documents([d.id for d in docs], ids, n_bytes)

    def close(self) -> None:
        pass


class _PackedSink:
    """Layout "packed": documents each followed by end-of-document, laid end to end and cut into rows of seq_len
    tokens; what is left at the end of the piece is its last, shorter row (nothing is dropped)."""

    def __init__(self, writer: ShardFileWriter, seq_len: int | None, eod_id: int):
        if not seq_len or seq_len < 1:
            raise ValueError(f"the packed layout needs a positive seq_len, got {seq_len}")
        self.writer, self.seq_len = writer, seq_len
        self.eod = np.array([eod_id], dtype=writer.dtype)
        self.parts: list[np.ndarray] = []
        self.spans: list[tuple[int, int]] = []  # (doc id, tokens) of what the buffer holds, in order

    def add(self, docs: list[Doc], ids: list[list[int]], n_bytes: list[int]) -> None:
        for doc, tokens in zip(docs, ids):
            arr = np.asarray(tokens, dtype=self.writer.dtype)
            self.parts += [arr, self.eod] if doc.end else [arr]
            self.spans.append((doc.id, len(arr) + doc.end))
        self._emit(final=False)

    def close(self) -> None:
        self._emit(final=True)

    def _emit(self, final: bool) -> None:
        if not self.parts:
            return
        buffer = np.concatenate(self.parts)
        n_rows = len(buffer) // self.seq_len + (final and len(buffer) % self.seq_len > 0)
        if n_rows == 0:
            self.parts = [buffer]
            return
        span_ids = np.array([i for i, _ in self.spans], dtype=np.int64)
        span_ends = np.cumsum([n for _, n in self.spans])
        rows, row_ids = [], []
        for r in range(n_rows):
            start, stop = r * self.seq_len, min((r + 1) * self.seq_len, len(buffer))
            first, last = np.searchsorted(span_ends, [start, stop - 1], side="right")
            rows.append(buffer[start:stop])
            row_ids.append(_dedupe(span_ids[first:last + 1].tolist()))
        self.writer.write_packed(rows, row_ids)
        used = min(n_rows * self.seq_len, len(buffer))
        self.parts = [buffer[used:]]
        keep = np.searchsorted(span_ends, used, side="right")  # spans that end after the rows written
        self.spans = [(i, n) for i, n in self.spans[keep:]]
        if self.spans:  # the first kept span lost its written tokens
            self.spans[0] = (self.spans[0][0], int(span_ends[keep] - used))


def _dedupe(ids: list[int]) -> list[int]:
    """Consecutive repeats removed: blocks of one large document are separate spans with the same id."""
    return [i for k, i in enumerate(ids) if k == 0 or ids[k - 1] != i]


def bytes_per_token(tokenizer: BPETokenizer, docs: Iterable[Doc]) -> float:
    """Bytes of text per token on a sample: sizes pieces so that shards hold about the tokens asked for."""
    sample = list(docs)
    tokens = sum(map(len, tokenizer.encode_bytes_batch([d.data for d in sample])))
    n_bytes = sum(len(d.data if isinstance(d.data, bytes) else d.data.encode("utf-8")) for d in sample)
    return n_bytes / tokens if tokens else 4.0
