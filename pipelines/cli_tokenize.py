"""The tokenization commands of `arscale`: `tokenizer train bpe`, `tokenize` and `detokenize` (parsers and handlers,
kept here so that pipelines/cli.py only hooks them in)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parsers(sub, common: argparse.ArgumentParser) -> None:
    tokenizer = sub.add_parser("tokenizer", parents=[common], help="train tokenizers").add_subparsers(metavar="ACTION")
    train = tokenizer.add_parser("train", parents=[common], help="train a tokenizer").add_subparsers(metavar="KIND")
    p = train.add_parser("bpe", parents=[common], help="byte-level BPE, lossless on any bytes",
                         description="Train a byte-level BPE tokenizer (HF tokenizers; all 256 bytes in the alphabet, "
                                     "<|endoftext|> as end-of-document) on a corpus, or on an even sample of it when "
                                     "it is larger than --sample-bytes. Writes tokenizer.json and meta.json.")
    _add_inputs(p)
    p.add_argument("--vocab-size", type=int, required=True, help="at most this many tokens (bytes and specials count)")
    p.add_argument("--out", type=Path, required=True, help="tokenizer directory to write")
    p.add_argument("--special-tokens", nargs="*", default=[], metavar="TOKEN",
                   help="more special tokens (after <|endoftext|>, which is always the first)")
    p.add_argument("--sample-bytes", type=int, default=100_000_000,
                   help="train on an even sample this large when the input is larger (default 100 MB)")
    p.set_defaults(handler=cmd_train_bpe)

    p = sub.add_parser("tokenize", parents=[common], help="tokenize a corpus into Parquet token shards (on Ray)",
                       description="Tokenize a corpus with a trained tokenizer into Parquet shards with a manifest, "
                                   "on a pool of Ray workers; a killed run resumes where it stopped when run again. "
                                   "The study's shard step writes the same format.")
    p.add_argument("--tokenizer", type=Path, required=True, help="tokenizer directory (holds tokenizer.json)")
    _add_inputs(p)
    p.add_argument("--out", type=Path, required=True, help="shard directory (also where a killed run resumes)")
    p.add_argument("--workers", type=int, help="Ray workers, one core each (default: every CPU of the cluster)")
    p.add_argument("--shard-tokens", type=int, default=1_000_000, help="about this many tokens per shard")
    p.add_argument("--seq-len", type=int, help="write packed rows of this many tokens instead of one per document")
    p.add_argument("--verify", action="store_true",
                   help="check that every document decodes back to its exact bytes; fail naming the first that does "
                        "not")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray on 127.0.0.1)")
    p.set_defaults(handler=cmd_tokenize)

    p = sub.add_parser("detokenize", parents=[common], help="decode token shards back to documents",
                       description="Decode a shard set back to the exact bytes of its documents: documents.parquet "
                                   "(doc_id, text as binary), or with --files one <doc_id>.txt per document.")
    p.add_argument("shards", type=Path, help="shard directory (holds manifest.json)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--tokenizer", type=Path, help="tokenizer directory (default: the copy kept with the shards)")
    p.add_argument("--files", action="store_true", help="one file per document instead of documents.parquet")
    p.set_defaults(handler=cmd_detokenize)


def _add_inputs(p: argparse.ArgumentParser) -> None:
    from pipelines.bulk_tokenize import DEFAULT_EXTENSIONS

    p.add_argument("--input", nargs="+", required=True, metavar="PATH",
                   help="files, directories (read recursively) or globs: text, .jsonl, .parquet, each optionally "
                        ".gz or .zst")
    p.add_argument("--text-field", default="text", help="JSON Lines: the field that holds the text (default: text)")
    p.add_argument("--column", default="text", help="Parquet: the column that holds the text (default: text)")
    p.add_argument("--extensions", nargs="*", default=list(DEFAULT_EXTENSIONS),
                   help="file types read from directories (default: %(default)s)")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave out files that cannot be read (listed in the manifest with the reason) instead of "
                        "stopping")


def _settings(args, **more):
    from armodels.corpus_readers import ReadOptions
    from pipelines.bulk_tokenize import TokenizeSettings

    return TokenizeSettings(tuple(args.input), read=ReadOptions(args.text_field, args.column),
                            extensions=tuple(args.extensions), skip_bad=args.skip_bad, **more)


def cmd_train_bpe(args) -> int:
    from pipelines.tokenize import train_tokenizer

    tokenizer = train_tokenizer(_settings(args), args.vocab_size, args.out, special_tokens=args.special_tokens,
                                sample_bytes=args.sample_bytes)
    sample = tokenizer.meta.training["sample"]
    print(f"byte-level BPE with {tokenizer.vocab_size} tokens, trained on {sample['bytes'] / 1e6:.1f} MB "
          f"({sample['documents']} documents) → {args.out}  sha256 {tokenizer.meta.sha256[:12]}")
    return 0


def cmd_tokenize(args) -> int:
    from pipelines.bulk_tokenize import tokenize_corpus

    settings = _settings(args, shard_tokens=args.shard_tokens, seq_len=args.seq_len)
    manifest = tokenize_corpus(args.tokenizer, args.out, settings, workers=args.workers, verify=args.verify,
                               address=args.address)
    d = manifest.to_dict()["totals"]
    skipped = f", {len(manifest.skipped)} skipped (see the manifest)" if manifest.skipped else ""
    print(f"{d['documents']:,} documents, {d['bytes'] / 1e6:.1f} MB, {d['tokens']:,} tokens "
          f"({d['tokens_per_byte']:.3f} tokens/byte) in {len(manifest.shards)} shards{skipped} → {args.out}")
    return 0


def cmd_detokenize(args) -> int:
    from pipelines.tokenize import detokenize

    n = detokenize(args.shards, args.out, tokenizer_dir=args.tokenizer, as_files=args.files)
    print(f"{n:,} documents → {args.out}")
    return 0
