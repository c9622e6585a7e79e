"""Reading a corpus in bulk: find its files, cut them into pieces of about equal size, stream each piece's documents.

Formats, each optionally compressed (`.gz`, `.zst`, and dictzip's `.dz`, which is gzip; read with pyarrow's codecs):

- plain text (any other name): one document per file, read as raw bytes (not necessarily UTF-8);
- JSON Lines (`.jsonl`): one document per line, its text in a field (`text_field`); a blank line is no document;
- Parquet (`.parquet`): one document per row of a string or binary column (`column`); a null is no document.

A `Piece` is the unit of work of bulk tokenization and becomes one shard: a run of `Segment`s, each a byte range of a
text or JSON Lines file or a range of row groups of a Parquet file. Planning depends only on the files and the piece
size, never on how many workers run, so the shards are the same for any number of workers. Document ids are assigned
while planning (a file's documents are counted, which is cheap next to tokenizing them), so a worker can number its
documents without knowing what the others do. A text file larger than a piece is cut only where byte-level BPE's
pre-tokenizer always ends a token, so the pieces' tokens are those of the whole file (see `safe_cut`).

A file is a local path or the URI of an object in a store that pyarrow.fs opens (`s3://bucket/key?endpoint_override=
...`, gs://, ...; pipelines.storage finds them). A URI keeps its options and keys, so that a worker on any node opens
it; manifests and messages name it by `source_name`, which leaves them out.
"""

from __future__ import annotations

import glob
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

import pyarrow as pa
import pyarrow.parquet as pq

TEXT, JSONL, PARQUET = "text", "jsonl", "parquet"
COMPRESSIONS = {".gz": "gzip", ".zst": "zstd", ".dz": "gzip"}  # .dz: dictzip (dictd's dictionaries), a gzip file
BLOCK_BYTES = 4 << 20  # how much of a file is read at once: memory stays bounded whatever the file's size
SNIFF_BYTES = 8192  # a text file with a NUL byte in its first 8 KiB is binary (git's rule)


class BadInput(ValueError):
    """A file that cannot be read as part of the corpus; the message names the file and the fix."""

    def __init__(self, path: Path | str, reason: str, fix: str = "remove it from the inputs or pass --skip-bad"):
        self.path, self.reason = source_name(path), reason
        super().__init__(f"{self.path} {reason}; {fix}")


@dataclass(frozen=True)
class ReadOptions:
    text_field: str = "text"  # JSON Lines: the field that holds the document
    column: str = "text"  # Parquet: the column that holds the documents


@dataclass(frozen=True)
class Segment:
    """Part of one file: bytes [start, end) of a text or JSON Lines file (of its decompressed stream when compressed),
    or rows [start, end) of a Parquet file (whole row groups)."""

    path: str
    start: int
    end: int
    first_doc: int  # id of the first document (a text file's only document)
    bytes: int  # bytes of input, for sizing pieces and for progress
    final: bool = True  # text: the segment reaches the end of its file, so its document ends here

    def describe(self) -> dict:
        unit = "rows" if file_format(self.path)[0] == PARQUET else "bytes"
        return {"file": source_name(self.path), unit: [self.start, self.end], "first_doc": self.first_doc}


@dataclass(frozen=True)
class Piece:
    index: int
    segments: tuple[Segment, ...]

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.segments)


@dataclass
class CorpusPlan:
    pieces: list[Piece] = field(default_factory=list)
    files: list[str] = field(default_factory=list)  # the files planned, in order
    skipped: list[dict] = field(default_factory=list)  # {"file", "reason"} of files left out (--skip-bad)
    documents: int = 0  # document ids used (blank lines and nulls take one but hold no document)

    @property
    def bytes(self) -> int:
        return sum(p.bytes for p in self.pieces)


@dataclass(frozen=True)
class Doc:
    """A document, or one block of a text document too large to read at once (then `end` is False on all blocks
    but the last, and all of them have the same `id`)."""

    id: int
    data: str | bytes
    path: str
    end: bool = True


def file_format(path: Path | str) -> tuple[str, str | None]:
    """(format, compression codec or None) from a file's name."""
    name = file_name(path).lower()
    compression = None
    for suffix, codec in COMPRESSIONS.items():
        if name.endswith(suffix):
            name, compression = name[: -len(suffix)], codec
    if name.endswith(".jsonl"):
        return JSONL, compression
    if name.endswith(".parquet"):
        return PARQUET, compression
    return TEXT, compression


def is_remote(path: Path | str) -> bool:
    """True for the URI of an object in a store (s3://...), False for a local path."""
    return _URI.match(str(path)) is not None


# a scheme and "://"; also its form after Path() has made one "/" of the two (piece_encoder builds Path(segment.path))
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+:/")


def source_name(path: Path | str) -> str:
    """How manifests and messages name a file: its path, or its URI without keys and options (s3://bucket/key)."""
    if not is_remote(path):
        return str(path)
    parts = urlsplit(str(path))
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}{unquote(parts.path)}"


def file_name(path: Path | str) -> str:
    """The file's name: the last part of its path, or of its URI's path (without the URI's options)."""
    if is_remote(path):
        return unquote(urlsplit(str(path)).path.rsplit("/", 1)[-1])
    return Path(path).name


def _remote(uri: str):
    """(pyarrow filesystem, path in it) of a URI: cheap (no request), so made anew at each open, in any process."""
    from pyarrow import fs

    return fs.FileSystem.from_uri(str(uri))


def file_stat(path: Path | str) -> tuple[int, int]:
    """(size, modification time in ns) of a file."""
    if not is_remote(path):
        st = os.stat(path)
        return st.st_size, st.st_mtime_ns
    filesystem, where = _remote(path)
    info = filesystem.get_file_info(where)
    if info.size is None:
        raise FileNotFoundError(f"{source_name(path)} does not exist")
    return info.size, info.mtime_ns or 0


def open_file(path: Path | str) -> BinaryIO:
    """The file opened for reading with seek(), in binary."""
    if not is_remote(path):
        return open(path, "rb")
    filesystem, where = _remote(path)
    return filesystem.open_input_file(where)


def find_files(paths: tuple[str, ...], extensions: tuple[str, ...], *, compressed: bool = False) -> list[Path]:
    """Every document file, sorted: files as given, and files with `extensions` inside directories (recursively);
    with `compressed`, also those names followed by `.gz`, `.zst` or `.dz`.

    Raises FileNotFoundError naming a path that matches nothing.
    """
    found: set[Path] = set()
    for spec in paths:
        if spec.startswith("file://"):  # file:///data/corpus: the local path it names
            spec = unquote(urlsplit(spec).path)
        matches = [Path(p) for p in glob.glob(spec, recursive=True)] if glob.has_magic(spec) else [Path(spec)]
        matches = [m for m in matches if m.exists()]
        if not matches:
            raise FileNotFoundError(f"{spec} does not exist; check the path")
        for m in matches:
            if m.is_dir():
                found.update(f for f in m.rglob("*") if f.is_file() and is_wanted(f.name, extensions, compressed)
                             and not in_installed_package(f.relative_to(m).as_posix()))
            elif m.is_file():
                found.add(m)
    return sorted(found)


def is_wanted(name: str, extensions: tuple[str, ...], compressed: bool) -> bool:
    """Whether a file found in a folder is read: its extension is one of `extensions` (with `compressed`, also when
    followed by .gz, .zst or .dz)."""
    path = Path(name)
    if compressed and path.suffix in COMPRESSIONS:
        path = path.with_suffix("")
    return path.suffix in extensions


def in_installed_package(relative: str) -> bool:
    """Whether a file's path inside the folder given as input passes through site-packages: the stdlib folder also
    holds them, and third-party code is not part of the corpus."""
    return any(part in ("site-packages", "dist-packages") for part in relative.split("/"))


def open_stream(path: Path | str, compression: str | None) -> BinaryIO:
    """The file's bytes, decompressed; OSError names the file."""
    if not is_remote(path):
        return pa.input_stream(str(path), compression=compression)
    if not compression:
        return open_file(path)
    filesystem, where = _remote(path)
    return pa.CompressedInputStream(filesystem.open_input_stream(where), compression)


def plan_corpus(files: list[Path | str], *, piece_bytes: int, options: ReadOptions, skip_bad: bool) -> CorpusPlan:
    """Cut `files` into pieces of about `piece_bytes` bytes (a piece ends at the first cut at or after that size).

    A file that cannot be read raises BadInput, or with `skip_bad` is left out and listed in `skipped`.
    """
    planner = _Planner(piece_bytes)
    for path in files:
        mark = planner.mark()
        try:
            _plan_file(planner, path, options)
        except BadInput as e:
            if not skip_bad:
                raise
            planner.undo(mark)
            planner.plan.skipped.append({"file": source_name(path), "reason": e.reason})
            continue
        planner.plan.files.append(str(path))
    planner.close_piece()
    return planner.plan


class _Planner:
    """Gathers segments into pieces; `mark`/`undo` take back a file that turned out bad halfway."""

    def __init__(self, piece_bytes: int):
        self.piece_bytes = max(1, piece_bytes)
        self.plan = CorpusPlan()
        self.current: list[Segment] = []

    def room(self) -> int:
        return self.piece_bytes - sum(s.bytes for s in self.current)

    def add(self, segment: Segment) -> None:
        self.current.append(segment)
        if self.room() <= 0:
            self.close_piece()

    def close_piece(self) -> None:
        if self.current:
            self.plan.pieces.append(Piece(len(self.plan.pieces), tuple(self.current)))
            self.current = []

    def mark(self) -> tuple:
        return len(self.plan.pieces), list(self.current), self.plan.documents

    def undo(self, mark: tuple) -> None:
        n_pieces, current, documents = mark
        del self.plan.pieces[n_pieces:]
        self.current, self.plan.documents = current, documents


def _plan_file(planner: _Planner, path: Path | str, options: ReadOptions) -> None:
    fmt, compression = file_format(path)
    try:
        if fmt == PARQUET:
            _plan_parquet(planner, path, options, compression)
        elif fmt == JSONL:
            _plan_jsonl(planner, path, options, compression)
        else:
            _plan_text(planner, path, compression)
    except (OSError, pa.ArrowException) as e:  # unreadable, or a compressed stream that is corrupt
        raise BadInput(path, _os_reason(e, compression)) from None


def _os_reason(e: Exception, compression: str | None) -> str:
    if isinstance(e, PermissionError):
        return "cannot be read (permission denied)"
    detail = getattr(e, "strerror", None) or str(e).splitlines()[0]
    return f"is not valid {compression} data ({detail})" if compression else f"cannot be read ({detail})"


def _plan_text(planner: _Planner, path: Path | str, compression: str | None) -> None:
    doc = planner.plan.documents
    planner.plan.documents += 1
    with open_stream(path, compression) as stream:
        head = stream.read(SNIFF_BYTES)
        if b"\0" in head:
            raise BadInput(path, "looks binary (it has NUL bytes)")
        if compression:  # no seeking in a compressed stream: the file is one segment, read through to check it
            size = len(head) + _drain(stream)
            planner.add(Segment(str(path), 0, size, doc, size))
            return
    pos = 0
    with open_file(path) as f:
        size = f.seek(0, os.SEEK_END)
        while True:
            target = pos + planner.room()
            cut = size if target >= size else _cut_at_or_after(f, target, size)
            planner.add(Segment(str(path), pos, cut, doc, cut - pos, final=cut == size))
            if cut == size:
                return
            pos = cut


def _drain(stream: BinaryIO) -> int:
    n = 0
    while block := stream.read(BLOCK_BYTES):
        n += len(block)
    return n


def _cut_at_or_after(f: BinaryIO, target: int, size: int) -> int:
    """The first place at or after `target` where a text file can be cut without changing its tokens."""
    pos = target - 1
    while pos + 1 < size:
        f.seek(pos)
        window = f.read(1 << 20)
        cut = safe_cut(window, first=True)
        if cut is not None:
            return pos + cut
        pos += len(window) - 1  # the windows overlap by a byte: a cut needs the byte before it
    return size


# Where byte-level BPE's pre-tokenizer (the GPT-2 regex) always ends a token, whatever comes before or after:
# - after a lone ASCII whitespace byte other than a space, between printable ASCII ("x)\n" | "def"): the byte is a
#   token of its own, in the whole text and at the end of the part before the cut;
# - before the last byte of a run of ASCII whitespace followed by printable ASCII ("\n   " | " def", "\n" | "\nclass"):
#   the run but its last byte is one token, and that byte starts the next one.
# (After a longer run, as in "\n\n" | "class", is not such a place: at the end of a text the run is one token.)
_SAFE_CUT = re.compile(rb"(?<=[!-~])[\t\n\x0b\x0c\r](?=[!-~])|[\t\n\x0b\x0c\r ](?=[\t\n\x0b\x0c\r ][!-~])")


def safe_cut(buf: bytes, *, first: bool) -> int | None:
    """The first (or last) place 0 < i < len(buf) where `buf` can be cut without changing its tokens; None if
    there is none."""
    if first:
        match = _SAFE_CUT.search(buf)
        return match.end() if match else None
    for start in (len(buf) - (1 << 16), len(buf) - (1 << 20), 0):  # a short tail nearly always has one
        last = None
        for last in _SAFE_CUT.finditer(buf, max(start, 0)):
            pass
        if last is not None and last.end() < len(buf):
            return last.end()
        if start <= 0:
            return None
    return None


def char_boundary(buf: bytes) -> int:
    """The last index > 0 that starts a UTF-8 character (a fallback cut for a line longer than a block)."""
    i = len(buf) - 1
    while i > 1 and 0x80 <= buf[i] < 0xC0:
        i -= 1
    return max(i, 1)


def _plan_jsonl(planner: _Planner, path: Path | str, options: ReadOptions, compression: str | None) -> None:
    with open_stream(path, compression) as stream:
        _check_first_line(path, stream, options)
    if compression:
        with open_stream(path, compression) as stream:
            lines, size = _count_lines(stream, None)
        doc = planner.plan.documents
        planner.plan.documents += lines
        planner.add(Segment(str(path), 0, size, doc, size))
        return
    pos = 0
    with open_file(path) as f:
        size = f.seek(0, os.SEEK_END)
        while pos < size:
            target = pos + planner.room()
            cut = size if target >= size else _line_start_at_or_after(f, target, size)
            f.seek(pos)
            lines, _ = _count_lines(f, cut - pos)
            doc = planner.plan.documents
            planner.plan.documents += lines
            planner.add(Segment(str(path), pos, cut, doc, cut - pos))
            pos = cut


def _check_first_line(path: Path | str, stream: BinaryIO, options: ReadOptions) -> None:
    """The first document must parse and have the text field: a wrong --text-field is caught before any work."""
    for number, line in enumerate(_lines(stream, None), 1):
        if line.strip():
            _json_text(line, path, number, options.text_field)
            return


def _line_start_at_or_after(f: BinaryIO, target: int, size: int) -> int:
    pos = target - 1
    while pos < size:
        f.seek(pos)
        window = f.read(1 << 20)
        i = window.find(b"\n")
        if i >= 0:
            return min(pos + i + 1, size)
        pos += len(window)
    return size


def _count_lines(stream: BinaryIO, limit: int | None) -> tuple[int, int]:
    """(lines, bytes) in the next `limit` bytes of the stream (all of it if None); a last line without a line break
    counts."""
    lines = size = 0
    last = b"\n"
    while limit is None or size < limit:
        block = stream.read(BLOCK_BYTES if limit is None else min(BLOCK_BYTES, limit - size))
        if not block:
            break
        lines += block.count(b"\n")
        size += len(block)
        last = block[-1:]
    return lines + (last != b"\n"), size


def _lines(stream: BinaryIO, limit: int | None) -> Iterator[bytes]:
    """The lines of the next `limit` bytes of the stream (all of it if None), read a block at a time."""
    rest, read = b"", 0
    while limit is None or read < limit:
        block = stream.read(BLOCK_BYTES if limit is None else min(BLOCK_BYTES, limit - read))
        if not block:
            break
        read += len(block)
        lines = (rest + block).split(b"\n")
        rest = lines.pop()
        yield from lines
    if rest:
        yield rest


def _json_text(line: bytes, path: Path | str, number: int | str, text_field: str) -> str:
    try:
        record = json.loads(line)
    except ValueError as e:
        raise BadInput(path, f"line {number} is not JSON ({e})") from None
    if not isinstance(record, dict) or text_field not in record:
        fields = ", ".join(record) if isinstance(record, dict) else type(record).__name__
        raise BadInput(path, f"line {number} has no field '{text_field}' (it has: {fields})",
                       "pass --text-field with the field that holds the text") from None
    text = record[text_field]
    if not isinstance(text, str):
        raise BadInput(path, f"line {number}: field '{text_field}' is {type(text).__name__}, not text",
                       "pass --text-field with the field that holds the text")
    return text


def _parquet_file(path: Path | str, compression: str | None, options: ReadOptions) -> pq.ParquetFile:
    if compression:
        raise BadInput(path, "is a compressed Parquet file", "decompress it (Parquet compresses its own pages)")
    try:
        if is_remote(path):
            filesystem, where = _remote(path)
            pf = pq.ParquetFile(where, filesystem=filesystem)
        else:
            pf = pq.ParquetFile(str(path))
    except (pa.ArrowException, OSError) as e:
        raise BadInput(path, f"is not a valid Parquet file ({str(e).splitlines()[0]})") from None
    names = pf.schema_arrow.names
    if options.column not in names:
        raise BadInput(path, f"has no column '{options.column}' (it has: {', '.join(names)})",
                       "pass --column with the column that holds the text")
    kind = pf.schema_arrow.field(options.column).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind)
            or pa.types.is_large_binary(kind)):
        raise BadInput(path, f"column '{options.column}' is {kind}, not text or binary",
                       "pass --column with the column that holds the text")
    return pf


def _plan_parquet(planner: _Planner, path: Path | str, options: ReadOptions, compression: str | None) -> None:
    pf = _parquet_file(path, compression, options)
    meta = pf.metadata
    column = pf.schema_arrow.names.index(options.column)
    row = 0
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        size = max(1, group.column(column).total_uncompressed_size)
        planner.add(Segment(str(path), row, row + group.num_rows, planner.plan.documents + row, size))
        row += group.num_rows
    planner.plan.documents += row


def iter_docs(segment: Segment, options: ReadOptions, *, block_bytes: int = BLOCK_BYTES) -> Iterator[Doc]:
    """The documents of a segment, in order. A text document is read in blocks of at most `block_bytes`, cut where
    its tokens do not change. Raises BadInput for content that cannot be read."""
    path = segment.path
    fmt, compression = file_format(path)
    try:
        if fmt == PARQUET:
            yield from _parquet_docs(segment, options, compression)
        elif fmt == JSONL:
            yield from _jsonl_docs(segment, options, compression)
        else:
            yield from _text_docs(segment, compression, block_bytes)
    except (OSError, pa.ArrowException) as e:
        raise BadInput(path, _os_reason(e, compression)) from None


def _open_segment(segment: Segment, compression: str | None) -> BinaryIO:
    stream = open_stream(segment.path, compression)
    if segment.start:
        stream.seek(segment.start)  # only uncompressed files are cut, so only they are seeked
    return stream


def _text_docs(segment: Segment, compression: str | None, block_bytes: int) -> Iterator[Doc]:
    with _open_segment(segment, compression) as stream:
        left = segment.end - segment.start
        buf = b""
        while True:
            block = stream.read(min(block_bytes, left)) if left > 0 else b""
            left -= len(block)
            buf += block
            if not block or left <= 0:
                if buf or segment.start == 0:  # an empty file is one empty document
                    yield Doc(segment.first_doc, buf, source_name(segment.path), end=segment.final)
                return
            cut = safe_cut(buf, first=False) or char_boundary(buf)
            yield Doc(segment.first_doc, buf[:cut], source_name(segment.path), end=False)
            buf = buf[cut:]


def _jsonl_docs(segment: Segment, options: ReadOptions, compression: str | None) -> Iterator[Doc]:
    with _open_segment(segment, compression) as stream:
        limit = None if compression else segment.end - segment.start
        for i, line in enumerate(_lines(stream, limit)):
            if line.strip():
                where = f"{i + 1} after byte {segment.start}" if segment.start else str(i + 1)
                text = _json_text(line, segment.path, where, options.text_field)
                yield Doc(segment.first_doc + i, text, source_name(segment.path))


def _parquet_docs(segment: Segment, options: ReadOptions, compression: str | None) -> Iterator[Doc]:
    pf = _parquet_file(segment.path, compression, options)
    groups, row = [], 0
    for g in range(pf.metadata.num_row_groups):
        if segment.start <= row < segment.end:
            groups.append(g)
        row += pf.metadata.row_group(g).num_rows
    doc = segment.first_doc
    try:
        for batch in pf.iter_batches(batch_size=1024, row_groups=groups, columns=[options.column]):
            for value in batch.column(0).to_pylist():
                if value is not None:
                    yield Doc(doc, value, source_name(segment.path))
                doc += 1
    except pa.ArrowException as e:
        raise BadInput(segment.path, f"is not a valid Parquet file ({str(e).splitlines()[0]})") from None


def sample_docs(files: list[Path | str], options: ReadOptions, max_bytes: int) -> Iterator[Doc]:
    """Documents from the start of the files, about `max_bytes` of them, skipping files that cannot be read: a
    quick sample (to estimate bytes per token before planning)."""
    taken = 0
    for path in files:
        whole = Segment(str(path), 0, 1 << 62, 0, 0)  # read lazily up to the end, whatever the format
        try:
            for doc in iter_docs(whole, options, block_bytes=max_bytes):
                yield doc
                taken += len(doc.data)
                if taken >= max_bytes:
                    return
        except BadInput:
            continue
