"""`arscale tokenizer train bpe` and `arscale detokenize`: the ends of bulk tokenization that need no Ray.

Both read corpora and shards with the same code as `arscale tokenize` (pipelines.bulk_tokenize) and the study.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from armodels.bpe import END_OF_DOCUMENT, BPETokenizer, train_bpe
from armodels.corpus_readers import CorpusPlan, iter_docs
from armodels.shards import iter_documents_with_ids, read_manifest
from pipelines.bulk_tokenize import TOKENIZER_COPY, TokenizeSettings, load_tokenizer, plan_inputs
from pipelines.errors import UserError

SAMPLE_PIECE_BYTES = 1 << 20  # a training sample is made of pieces this large, spread evenly over the corpus
DETOKENIZED_ROWS = 1024  # documents per row group of detokenized Parquet


def train_tokenizer(settings: TokenizeSettings, vocab_size: int, out: Path, *, special_tokens: list[str],
                    sample_bytes: int) -> BPETokenizer:
    """Train byte-level BPE on the inputs, or on an even sample of about `sample_bytes` when they are larger."""
    if sample_bytes < 1:
        raise UserError(f"--sample-bytes must be positive, got {sample_bytes}")
    plan = plan_inputs(None, settings, piece_bytes=SAMPLE_PIECE_BYTES)
    specials = (END_OF_DOCUMENT, *[t for t in special_tokens if t != END_OF_DOCUMENT])
    used = {"documents": 0, "bytes": 0}

    def texts() -> Iterator[str]:
        for piece in _spread(plan, sample_bytes):
            for segment in piece.segments:
                for doc in iter_docs(segment, settings.read):
                    data = doc.data.encode("utf-8") if isinstance(doc.data, str) else doc.data
                    used["documents"] += doc.end
                    used["bytes"] += len(data)
                    yield data.decode("utf-8", "replace")  # training only counts pairs: a stray byte may be replaced

    training = {"inputs": list(settings.inputs), "files": len(plan.files), "input_bytes": plan.bytes,
                "sampled": plan.bytes > sample_bytes, "sample": used, "skipped": plan.skipped}
    try:
        tokenizer = train_bpe(texts(), vocab_size, special_tokens=specials, training_info=training)
    except ValueError as e:
        raise UserError(str(e)) from None
    tokenizer.save(Path(out))
    return tokenizer


def _spread(plan: CorpusPlan, sample_bytes: int) -> list:
    """Pieces spread evenly over the corpus that add up to about `sample_bytes` (all of them if it is smaller)."""
    n = len(plan.pieces)
    if plan.bytes <= sample_bytes:
        return plan.pieces
    k = max(1, min(n, math.ceil(n * sample_bytes / plan.bytes)))
    return [plan.pieces[i * n // k] for i in range(k)]


def detokenize(shards: Path, out: Path, *, tokenizer_dir: Path | None = None, as_files: bool = False) -> int:
    """Decode a shard set back to the exact bytes of its documents; returns how many were written.

    Default: `documents.parquet` (doc_id, text as binary: any bytes, and `arscale tokenize --column text` reads it);
    `as_files`: one file per document, `<doc_id>.txt`.
    """
    try:
        manifest = read_manifest(Path(shards))
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from None
    tokenizer = load_tokenizer(tokenizer_dir or Path(shards) / TOKENIZER_COPY)
    if tokenizer.meta.sha256 != manifest.tokenizer_sha256:
        raise UserError(f"the tokenizer {tokenizer_dir or Path(shards) / TOKENIZER_COPY} is not the one that made "
                        f"{shards}; pass --tokenizer with the right one")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    docs = ((doc_id, tokenizer.decode_bytes(tokens)) for doc_id, tokens in iter_documents_with_ids(Path(shards)))
    try:
        return _write_files(docs, out) if as_files else _write_parquet(docs, out / "documents.parquet")
    except ValueError as e:  # a shard that is corrupt
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
