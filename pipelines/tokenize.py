"""`arscale tokenize`: text files → Parquet token shards, with the same code as the study's shard step."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from armodels.bpe import BPETokenizer
from armodels.shards import Manifest, tokenize_to_shards
from pipelines.errors import UserError
from pipelines.steps.corpus import find_files


def tokenize_files(tokenizer_dir: Path, inputs: list[str], out: Path, *, shard_tokens: int,
                   extensions: tuple[str, ...]) -> Manifest:
    if shard_tokens < 1:
        raise UserError(f"--shard-tokens must be positive, got {shard_tokens}")
    try:
        tokenizer = BPETokenizer.load(tokenizer_dir)
        files = find_files(tuple(inputs), extensions)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from None
    if not files:
        raise UserError(f"no input files with extensions {list(extensions)} in {' '.join(inputs)}")

    def texts() -> Iterator[str]:
        for f in files:
            try:
                yield f.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                raise UserError(f"{f} is not UTF-8 text; remove it from the inputs") from None

    return tokenize_to_shards(tokenizer, texts(), out, split="all", shard_tokens=shard_tokens)
