"""`arscale detokenize`: a text shard set decoded back to the exact bytes of its documents (no Ray).

It reads shards with the same code as the study and checks that the tokenizer is the one that made them.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from armodels.shards import TOKENIZER_COPY, iter_documents_with_ids, read_manifest
from pipelines.errors import UserError
from pipelines.tokenization.corpus_to_shards import load_tokenizer
from pipelines.tokenization.outputs import new_output

DETOKENIZED_ROWS = 1024  # documents per row group of detokenized Parquet


def detokenize(shards: Path, out: Path, *, tokenizer_dir: Path | None = None, as_files: bool = False) -> int:
    """Decode a shard set back to the exact bytes of its documents; returns how many were written.

    Default: `documents.parquet` (doc_id, text as binary: any bytes, and `arscale tokenize --column text` reads it);
    `as_files`: one file per document, `<doc_id>.txt`. `out` must be new or empty; it appears only when complete.
    """
    try:
        manifest = read_manifest(Path(shards))
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from None
    tokenizer = load_tokenizer(tokenizer_dir or Path(shards) / TOKENIZER_COPY)
    if tokenizer.meta.sha256 != manifest.tokenizer_sha256:
        raise UserError(f"the tokenizer {tokenizer_dir or Path(shards) / TOKENIZER_COPY} is not the one that made "
                        f"{shards}; pass --tokenizer with the right one")
    docs = ((doc_id, tokenizer.decode_bytes(tokens)) for doc_id, tokens in iter_documents_with_ids(Path(shards)))
    with new_output(Path(out)) as tmp:  # a shard found corrupt half-way leaves no output
        try:
            return _write_files(docs, tmp) if as_files else _write_parquet(docs, tmp / "documents.parquet")
        except ValueError as e:  # a shard that is corrupt, or a manifest that names a file outside its folder
            raise UserError(str(e)) from None


def _write_files(docs: Iterator[tuple[int, bytes]], out: Path) -> int:
    n = 0
    for doc_id, data in docs:
        (out / f"{doc_id:09d}.txt").write_bytes(data)
        n += 1
    return n


def _write_parquet(docs: Iterator[tuple[int, bytes]], path: Path) -> int:
    schema = pa.schema([("doc_id", pa.int64()), ("text", pa.binary())])
    n = 0
    with pq.ParquetWriter(path, schema) as writer:
        while rows := list(itertools.islice(docs, DETOKENIZED_ROWS)):
            ids, texts = zip(*rows)
            writer.write_table(pa.table([list(ids), list(texts)], schema=schema))
            n += len(rows)
    return n
