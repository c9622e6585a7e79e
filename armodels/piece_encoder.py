"""Encoding one planned piece of a corpus into one shard file: the unit of work of bulk tokenization (no Ray here;
`pipelines.tokenization.corpus_to_shards` runs pieces on Ray workers, the study's shard step in its own process).

A piece's shard depends only on the piece, the tokenizer and the options, so shards come out the same whatever worker
encodes them and in whatever order. Documents are read, encoded and written a batch at a time, so memory stays
bounded whatever the size of the piece. A piece that holds a compressed file (which planning cannot cut: it cannot
seek in it) is written as several shards of about `shard_tokens` tokens each, so shards stay small whatever the file.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from armodels.char_word import TextTokenizer
from armodels.corpus_readers import BLOCK_BYTES, BadInput, Doc, Piece, ReadOptions, file_format, iter_docs
from armodels.shards import DOCUMENTS, PACKED, ShardFileWriter, ShardInfo, shard_name, token_dtype


@dataclass(frozen=True)
class EncodeOptions:
    read: ReadOptions = field(default_factory=ReadOptions)
    layout: str = DOCUMENTS
    seq_len: int | None = None  # packed layout: tokens per row
    verify: bool = False  # check that every document decodes back to its exact bytes
    skip_bad: bool = False  # leave out a file that turns out unreadable, instead of failing
    batch_bytes: int = 1 << 20  # text per encode_batch call: enough to amortise the call, little memory
    shard_tokens: int | None = None  # a piece holding a compressed file goes on into a new shard past this


class RoundTripError(ValueError):
    """A document whose tokens do not decode back to its bytes: a tokenizer bug, not bad input."""


@dataclass
class PieceResult:
    shards: list[ShardInfo]  # one, or several for a piece that holds a compressed file
    skipped: list[dict]  # {"file", "bytes" or "rows", "reason", "shard"} of segments left out with skip_bad


class _SegmentFailed(Exception):
    def __init__(self, index: int, error: BadInput):
        super().__init__(str(error))
        self.index, self.error = index, error


def encode_piece(tokenizer: TextTokenizer, piece: Piece, directory: Path, options: EncodeOptions) -> PieceResult:
    """Encode `piece` into `directory`/shard-<index>.parquet (and shard-<index>-001.parquet, ... for a piece that
    holds a compressed file). A file that cannot be read raises BadInput, or with `skip_bad` the piece is encoded
    again without it (so the shards are what they would be had the file not been there)."""
    skipped: dict[int, str] = {}
    while True:
        shards = _ShardSequence(Path(directory), piece, token_dtype(tokenizer.vocab_size), options, skipped)
        try:
            _encode_into(shards, tokenizer, piece, options, skipped)
        except _SegmentFailed as e:
            shards.abort()
            if not options.skip_bad:
                raise e.error from None
            skipped[e.index] = e.error.reason
            continue
        except BaseException:
            shards.abort()
            raise
        infos = shards.close()
        return PieceResult(infos, [{**piece.segments[i].describe(), "reason": why, "shard": infos[0].file}
                                   for i, why in skipped.items()])


def _encode_into(shards: _ShardSequence, tokenizer: TextTokenizer, piece: Piece, options: EncodeOptions,
                 skipped: dict[int, str]) -> None:
    sink = _PackedSink(shards, options.seq_len, tokenizer.eod_id) if options.layout == PACKED else _DocumentSink(shards)
    batch_bytes, block_bytes = options.batch_bytes, BLOCK_BYTES
    if shards.limit:  # a new file starts only between batches: small ones keep each file near the limit
        # (a batch holds at most twice this, and a byte is at most one token)
        batch_bytes = block_bytes = min(batch_bytes, max(1024, shards.limit // 8))
    for batch in _batches(_piece_docs(piece, options.read, skipped, block_bytes), batch_bytes):
        raw = [d.data if isinstance(d.data, bytes) else d.data.encode("utf-8") for d in batch]
        ids = tokenizer.encode_bytes_batch([d.data for d in batch])
        if options.verify:
            check_round_trip(tokenizer, batch, raw, ids)
        shards.next_batch()
        sink.add(batch, ids, [len(r) for r in raw])
        shards.count(batch, raw)
    sink.close()


class _ShardSequence:
    """The shard files of one piece, written one after the other: a piece that holds a compressed file goes on
    into a new file once the current one has `shard_tokens` tokens; any other piece is one file (planning sized it).
    Writes go to the current file; each file's documents, bytes and sources are counted a batch at a time."""

    def __init__(self, directory: Path, piece: Piece, dtype: np.dtype, options: EncodeOptions,
                 skipped: dict[int, str]):
        self.directory, self.piece, self.dtype, self.layout = directory, piece, np.dtype(dtype), options.layout
        self.skipped = skipped
        cut_by_planning = not any(file_format(Path(s.path))[1] for s in piece.segments)
        self.limit = None if cut_by_planning else options.shard_tokens
        self.first_docs = [s.first_doc for s in piece.segments]
        self.done: list[ShardInfo] = []
        self._open()

    def _open(self) -> None:
        self.writer = ShardFileWriter(self.directory / shard_name(self.piece.index, len(self.done)), self.dtype,
                                      self.layout)
        self.documents = self.bytes = 0
        self.doc_ranges: dict[int, list[int]] = {}  # segment index -> [first, last] document id in this file

    def next_batch(self) -> None:
        """Called before each batch: go on into a new file if this one is full."""
        if self.limit and self.writer.tokens >= self.limit:
            self._finish()
            self._open()

    def write_documents(self, *args) -> None:
        self.writer.write_documents(*args)

    def write_packed(self, *args) -> None:
        self.writer.write_packed(*args)

    def count(self, batch: list[Doc], raw: list[bytes]) -> None:
        self.documents += sum(d.end for d in batch)
        self.bytes += sum(map(len, raw))
        for doc in batch:
            segment = bisect.bisect_right(self.first_docs, doc.id) - 1
            ids = self.doc_ranges.setdefault(segment, [doc.id, doc.id])
            ids[1] = doc.id

    def close(self) -> list[ShardInfo]:
        self._finish()
        return self.done

    def abort(self) -> None:
        self.writer.abort()
        for shard in self.done:
            (self.directory / shard.file).unlink(missing_ok=True)

    def _finish(self) -> None:
        sha256 = self.writer.close()
        # a piece written as one file lists all its segments (an empty one too), one written as several what each holds
        segments = range(len(self.piece.segments)) if self.limit is None else sorted(self.doc_ranges)
        sources = [{**self.piece.segments[i].describe(), **({"docs": self.doc_ranges[i]} if i in self.doc_ranges
                                                            else {})} for i in segments if i not in self.skipped]
        self.done.append(ShardInfo(self.writer.path.name, self.writer.rows, self.writer.tokens, self.bytes, sha256,
                                   self.documents, sources))


def _piece_docs(piece: Piece, options: ReadOptions, skipped: dict[int, str], block_bytes: int) -> Iterator[Doc]:
    for i, segment in enumerate(piece.segments):
        if i in skipped:
            continue
        try:
            yield from iter_docs(segment, options, block_bytes=block_bytes)
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


def check_round_trip(tokenizer: TextTokenizer, docs: list[Doc], raw: list[bytes], ids: list[list[int]]) -> None:
    """Raise RoundTripError naming the first document whose tokens do not decode back to its exact bytes."""
    for doc, original, tokens in zip(docs, raw, ids):
        decoded = tokenizer.decode_bytes(tokens)
        if decoded != original:
            at = next((k for k, (a, b) in enumerate(zip(decoded, original)) if a != b), min(len(decoded),
                                                                                                len(original)))
            unknown = sum(t == getattr(tokenizer, "unk_id", None) for t in tokens)  # char and word tokenizers
            why = (f" ({unknown:,} of its units are not in the tokenizer's vocabulary: --verify needs a vocabulary "
                   "that covers the text)" if unknown else "")
            raise RoundTripError(f"document {doc.id} ({doc.path}) does not round-trip: it has {len(original)} bytes, "
                                 f"its tokens decode to {len(decoded)}, first difference at byte {at}{why}")


class _DocumentSink:
    """Layout "documents": a row per document (or per block of a large text document), a row group per batch."""

    def __init__(self, writer: _ShardSequence):
        self.writer = writer

    def add(self, docs: list[Doc], ids: list[list[int]], n_bytes: list[int]) -> None:
        self.writer.write_documents([d.id for d in docs], ids, n_bytes)

    def close(self) -> None:
        pass


class _PackedSink:
    """Layout "packed": documents each followed by end-of-document, laid end to end and cut into rows of seq_len
    tokens; what is left at the end of the piece is its last, shorter row (nothing is dropped)."""

    def __init__(self, writer: _ShardSequence, seq_len: int | None, eod_id: int):
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


def bytes_per_token(tokenizer: TextTokenizer, docs: Iterable[Doc]) -> float:
    """Bytes of text per token on a sample: sizes pieces so that shards hold about the tokens asked for."""
    sample = list(docs)
    tokens = sum(map(len, tokenizer.encode_bytes_batch([d.data for d in sample])))
    n_bytes = sum(len(d.data if isinstance(d.data, bytes) else d.data.encode("utf-8")) for d in sample)
    return n_bytes / tokens if tokens else 4.0
