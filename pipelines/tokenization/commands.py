"""The tokenization commands of `arscale`: `tokenizer train bpe|char|word|vqvae|fsq|lfq|palette`, `tokenize` and
`detokenize` (parsers and handlers, kept here so that pipelines/cli.py only hooks them in)."""

from __future__ import annotations

import argparse
from pathlib import Path

from armodels.corpus_readers import ReadOptions, is_remote
from armodels.files import read_json
from armodels.image_tokenizer import (
    ImageTokenizer,
    make_config,
    read_code_grids,
    train_image_tokenizer,
    write_code_shards,
)
from armodels.images import NAMED, ImageDataError, image_grid, load_images, save_png
from armodels.lfq import MAX_BITS
from armodels.shards import TOKENIZER_COPY, read_manifest
from pipelines.errors import UserError
from pipelines.progress import plural
from pipelines.tokenization.bpe_training import train_bpe_on_corpus, train_char_word_on_corpus
from pipelines.tokenization.corpus_to_shards import DEFAULT_EXTENSIONS, TokenizeSettings, tokenize_corpus
from pipelines.tokenization.outputs import check_new_output, new_output
from pipelines.tokenization.shards_to_documents import detokenize


def add_parsers(sub, common: argparse.ArgumentParser) -> None:
    tokenizer = sub.add_parser("tokenizer", parents=[common]).add_subparsers(metavar="ACTION")
    train = tokenizer.add_parser("train", parents=[common], help="train a tokenizer").add_subparsers(metavar="KIND")
    p = train.add_parser("bpe", parents=[common], help="byte-level BPE, lossless on any bytes",
                         description="Train a byte-level BPE tokenizer (HF tokenizers; all 256 bytes in the alphabet, "
                                     "<|endoftext|> as end-of-document) on a corpus, or on an even sample of it when "
                                     "it is larger than --sample-bytes. Writes tokenizer.json and meta.json, and "
                                     "tokenizer_config.json and special_tokens_map.json for Hugging Face "
                                     "transformers.")
    _add_training_options(p, "bytes and specials count")
    p.add_argument("--special-tokens", nargs="*", default=[], metavar="TOKEN",
                   help="more special tokens (after <|endoftext|>, which is always the first)")
    p.set_defaults(handler=cmd_train_bpe)
    for level, unit in (("char", "characters"), ("word", r"word pieces (regex \w+|\s+|[^\w\s])")):
        p = train.add_parser(level, parents=[common], help=f"{level}-level: the most frequent {unit.split(' (')[0]}",
                             description=f"Train a {level}-level tokenizer: <|endoftext|>, <|unk|> for what is not in "
                                         f"the vocabulary, and the most frequent {unit} of a corpus (or of an even "
                                         "sample of it when it is larger than --sample-bytes). Prints its coverage: "
                                         "the share of the text's units (and bytes) in the vocabulary. Writes "
                                         "tokenizer.json and meta.json.")
        _add_training_options(p, "<|endoftext|> and <|unk|> count")
        p.set_defaults(handler=cmd_train_char_word, level=level)
    _add_image_trainers(train, common)

    p = sub.add_parser("tokenize", parents=[common],
                       description="Tokenize a corpus with a trained tokenizer into Parquet shards with a manifest, "
                                   "on a pool of Ray workers; a killed run resumes where it stopped when run again. "
                                   "The study's shard step writes the same format. With an image tokenizer (VQ-VAE, "
                                   "FSQ), --input is one image data set, encoded in this process into code shards: "
                                   "one document of h·w codes per image.")
    p.add_argument("--tokenizer", type=Path, required=True, help="tokenizer directory (holds tokenizer.json)")
    _add_inputs(p)
    p.add_argument("--split", help="the split named in the manifest (default: all); image data sets: the split to "
                                   "read (default: train)")
    p.add_argument("--limit", type=int, help="image tokenizers: encode only the first N images")
    p.add_argument("--out", type=Path, required=True, help="shard directory, new or empty (or where a killed run "
                                                           "resumes)")
    p.add_argument("--workers", type=int, help="Ray workers, one core each (default: every CPU of the cluster)")
    p.add_argument("--shard-tokens", type=int, default=1_000_000, help="about this many tokens per shard")
    p.add_argument("--seq-len", type=int, help="write packed rows of this many tokens instead of one per document")
    p.add_argument("--verify", action="store_true",
                   help="check that every document decodes back to its exact bytes; fail naming the first that does "
                        "not")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray on 127.0.0.1)")
    p.set_defaults(handler=cmd_tokenize)

    p = sub.add_parser("detokenize", parents=[common],
                       description="Decode a shard set back to the exact bytes of its documents: documents.parquet "
                                   "(doc_id, text as binary), or with --files one <doc_id>.txt per document. Code "
                                   "shards of an image tokenizer decode to <doc_id>.png files and grid.png (the "
                                   "first 64 images).")
    p.add_argument("shards", type=Path, help="shard directory (holds manifest.json)")
    p.add_argument("--out", type=Path, required=True, help="folder to write, new or empty")
    p.add_argument("--tokenizer", type=Path, help="tokenizer directory (default: the copy kept with the shards)")
    p.add_argument("--files", action="store_true", help="one file per document instead of documents.parquet")
    p.set_defaults(handler=cmd_detokenize)


def _add_inputs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", nargs="+", required=True, metavar="PATH",
                   help="files, directories (read recursively) or globs, local or in an object store (s3://bucket/"
                        "prefix/, gs://..., file://...: any URI pyarrow.fs opens; endpoint and keys in the URI's "
                        "options, e.g. ?endpoint_override=host:port&scheme=http, or the store's usual variables): "
                        "text, .jsonl, .parquet, each optionally .gz, .zst or .dz")
    p.add_argument("--text-field", default="text", help="JSON Lines: the field that holds the text (default: text)")
    p.add_argument("--column", help="Parquet: the column that holds the text (default: text; for an image tokenizer "
                                    "the encoded images, default: image)")
    p.add_argument("--extensions", nargs="*", default=list(DEFAULT_EXTENSIONS),
                   help="file types read from directories (default: %(default)s)")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave out files that cannot be read (listed in the manifest with the reason) instead of "
                        "stopping")


def _add_training_options(p: argparse.ArgumentParser, counted: str) -> None:
    _add_inputs(p)
    p.add_argument("--vocab-size", type=int, required=True, help=f"at most this many tokens ({counted})")
    p.add_argument("--out", type=Path, required=True, help="tokenizer directory to write (new or empty)")
    p.add_argument("--sample-bytes", type=int, default=100_000_000,
                   help="train on an even sample this large when the input is larger (default 100 MB)")


def _settings(args, **more):
    return TokenizeSettings(tuple(args.input), read=ReadOptions(args.text_field, args.column or "text"),
                            extensions=tuple(args.extensions), skip_bad=args.skip_bad, **more)


def _local_out(out: Path) -> None:
    """Refuse an --out in an object store (not written there yet), without echoing it: it may hold keys."""
    if is_remote(out):
        raise UserError("--out names an object store: these commands write a local folder (or one the cluster's "
                        "nodes share); write there, then copy it up (e.g. `aws s3 sync OUT s3://bucket/prefix`)")


def cmd_train_bpe(args) -> int:
    _local_out(args.out)
    tokenizer = train_bpe_on_corpus(_settings(args), args.vocab_size, args.out, special_tokens=args.special_tokens,
                                    sample_bytes=args.sample_bytes)
    sample = tokenizer.meta.training["sample"]
    print(f"byte-level BPE with {tokenizer.vocab_size} tokens, trained on {sample['bytes'] / 1e6:.1f} MB "
          f"({plural(sample['documents'], 'document')}) → {args.out}  sha256 {tokenizer.meta.sha256[:12]}")
    return 0


def cmd_train_char_word(args) -> int:
    _local_out(args.out)
    tokenizer = train_char_word_on_corpus(args.level, _settings(args), args.vocab_size, args.out,
                                          sample_bytes=args.sample_bytes)
    meta, sample = tokenizer.meta, tokenizer.meta.training["sample"]
    unit = "characters" if args.level == "char" else "word pieces"
    print(f"{args.level}-level tokenizer with {tokenizer.vocab_size} tokens, trained on {sample['bytes'] / 1e6:.1f} MB "
          f"({plural(sample['documents'], 'document')}) → {args.out}  sha256 {meta.sha256[:12]}")
    print(f"coverage: {meta.coverage:.2%} of its {meta.training['units']:,} {unit} ({meta.byte_coverage:.2%} of "
          f"bytes); {meta.training['distinct_units'] - len(tokenizer.pieces):,} of "
          f"{meta.training['distinct_units']:,} distinct {unit} are left to <|unk|>")
    return 0


def cmd_tokenize(args) -> int:
    _local_out(args.out)
    if _is_image_tokenizer(args.tokenizer):
        return _tokenize_images(args)
    more = {"split": args.split} if args.split else {}
    settings = _settings(args, shard_tokens=args.shard_tokens, seq_len=args.seq_len, **more)
    manifest = tokenize_corpus(args.tokenizer, args.out, settings, workers=args.workers, verify=args.verify,
                               address=args.address)
    d = manifest.to_dict()["totals"]
    skipped = f", {len(manifest.skipped)} skipped (see the manifest)" if manifest.skipped else ""
    print(f"{plural(d['documents'], 'document')}, {d['bytes'] / 1e6:.1f} MB, {d['tokens']:,} tokens "
          f"({d['tokens_per_byte']:.3f} tokens/byte) in {len(manifest.shards)} shards{skipped} → {args.out}")
    return 0


def cmd_detokenize(args) -> int:
    _local_out(args.out)
    if _is_image_tokenizer(args.tokenizer or args.shards / TOKENIZER_COPY):
        return _detokenize_images(args)

    n = detokenize(args.shards, args.out, tokenizer_dir=args.tokenizer, as_files=args.files)
    print(f"{n:,} documents → {args.out}")
    return 0


# Image tokenizers (VQ-VAE, FSQ, LFQ): trained, applied and inverted in this process (no Ray: they are small).

def _add_image_trainers(train, common: argparse.ArgumentParser) -> None:
    kinds = {"vqvae": "VQ-VAE with an EMA codebook (k-means initialised, dead codes restarted)",
             "fsq": "finite scalar quantization: no codebook to learn, codes = a grid of per-channel levels",
             "lfq": "lookup-free quantization: codes = the signs of `bits` latent channels, with an entropy penalty",
             "palette": "a k-means colour palette (iGPT): one code per pixel, its nearest palette colour"}
    for kind, about in kinds.items():
        p = train.add_parser(kind, parents=[common], help=about,
                             description=f"Train an image tokenizer, {about}, on an image data set; prints its metrics "
                                         "on the test split (when the data set has one) and writes model.safetensors "
                                         "and tokenizer.json.")
        p.add_argument("--data", default="default", metavar="SPEC",
                       help="fashion-mnist, digits, default (fashion-mnist if installed, else digits), or a path: an "
                            "IDX file (.idx3-ubyte[.gz]), a .npy array, a .parquet file of PNG/JPEG bytes (--column), "
                            "a folder of PNG/JPEG files (default: default)")
        p.add_argument("--split", default="train", help="split of a named data set to train on (default: train)")
        p.add_argument("--limit", type=int, help="train on the first N images only")
        p.add_argument("--column", default="image", help="Parquet: the column of encoded images (default: image)")
        p.add_argument("--out", type=Path, required=True, help="tokenizer directory to write (new or empty)")
        p.add_argument("--seed", type=int, default=0)
        p.set_defaults(handler=cmd_train_image, kind=kind)
        if kind == "palette":  # fitted by k-means: no gradient steps, no convolutions
            p.add_argument("--clusters", type=int, help="colours in the palette, the number of codes (default: 512; "
                                                        "at most the distinct colours of the images)")
            p.add_argument("--iterations", type=int, help="k-means iterations at most (default: 30)")
            p.set_defaults(steps=1, batch_size=1, lr=1.0)  # unused
            continue
        p.add_argument("--steps", type=int, default=2000, help="training steps (default: 2000)")
        p.add_argument("--batch-size", type=int, default=64, help="images per step (default: 64)")
        p.add_argument("--lr", type=float, default=2e-3, help="peak Adam learning rate (default: 0.002)")
        p.add_argument("--hidden", type=int, help="channels of the convolutions (default: 64)")
        p.add_argument("--downsample", type=int, help="times H and W are halved: the code grid is H/2^n × W/2^n "
                                                      "(default: 2)")
        if kind == "vqvae":
            p.add_argument("--codebook-size", type=int, help="number of codes (default: 256)")
        elif kind == "fsq":
            p.add_argument("--levels", type=_levels, help="values per latent channel, comma-separated; the codebook "
                                                          "size is their product (default: 8,5,5,5 = 1,000 codes)")
        else:
            p.add_argument("--bits", type=int, help=f"latent channels per code, each quantized to its sign: 2^bits "
                                                    f"codes (1 to {MAX_BITS}; default: 10 = 1,024 codes)")
            p.add_argument("--entropy-weight", type=float, help="weight of the entropy penalty (default: 0.1)")


def _levels(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers, e.g. 8,5,5,5") from None


def cmd_train_image(args) -> int:
    _local_out(args.out)

    settings = {name: value for name in ("hidden", "downsample", "codebook_size", "levels", "bits", "entropy_weight",
                                         "clusters", "iterations")
                if (value := getattr(args, name, None)) is not None}
    try:
        make_config(args.kind, settings)  # bad settings and outputs fail now, not after loading the data
        if args.steps < 1 or args.batch_size < 1 or args.lr <= 0:
            raise ValueError("--steps and --batch-size must be positive and --lr above 0")
        check_new_output(args.out)
        train = load_images(args.data, split=args.split, limit=args.limit, column=args.column)
        has_test = args.data in NAMED and args.split != "test"
        test = load_images(args.data, split="test") if has_test else None
    except (ImageDataError, ValueError) as e:
        raise UserError(str(e)) from None
    try:
        tokenizer = train_image_tokenizer(args.kind, train, config=settings, steps=args.steps,
                                          batch_size=args.batch_size, lr=args.lr, seed=args.seed, test=test)
    except ValueError as e:  # a palette with more colours than the images have
        raise UserError(str(e)) from None
    with new_output(args.out) as tmp:
        tokenizer.save(tmp)
    m, h, w = tokenizer.meta["metrics"], *tokenizer.grid_shape
    work = f"{tokenizer.meta['iterations']} k-means iterations" if args.kind == "palette" else f"{args.steps} steps"
    print(f"{args.kind} tokenizer: {tokenizer.codebook_size:,} codes, {h}×{w} grid per image "
          f"({m['bits_per_image']:.0f} bits/image), trained on {train.source} ({work}, "
          f"{tokenizer.meta['train_seconds']:.0f} s)")
    print(f"{'test' if has_test else 'train'} metrics: mse {m['mse']:.5f}  psnr {m['psnr']:.2f} dB  "
          f"usage {m['usage']:.1%}  perplexity {m['perplexity']:.1f}  ({tokenizer.meta['evaluated_on']})")
    print(f"→ {args.out}  sha256 {tokenizer.sha256[:12]}")
    return 0


def _is_image_tokenizer(directory: Path) -> bool:
    """An image tokenizer's tokenizer.json has a "kind" (HF's has none); one of an unknown kind is then refused by
    ImageTokenizer.load, naming it (armodels.image_tokenizer.is_image_tokenizer would take it for BPE)."""
    try:
        return "kind" in read_json(Path(directory) / "tokenizer.json")
    except (OSError, ValueError, TypeError):
        return False


def _load_image_tokenizer(directory: Path):

    try:
        return ImageTokenizer.load(directory)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from None


def _tokenize_images(args) -> int:

    if len(args.input) != 1 or args.seq_len:
        raise UserError("an image tokenizer takes one --input (a data set name or a path) and no --seq-len")
    check_new_output(args.out)  # before the encoding
    tokenizer = _load_image_tokenizer(args.tokenizer)
    try:
        images = load_images(args.input[0], split=args.split or "train", limit=args.limit,
                             column=args.column or "image")
    except ImageDataError as e:
        raise UserError(str(e)) from None
    if images.shape != tokenizer.image_shape:
        raise UserError(f"{images.source}: images are {'×'.join(map(str, images.shape))} but the tokenizer "
                        f"{args.tokenizer} takes {'×'.join(map(str, tokenizer.image_shape))} (H×W×C)")
    with new_output(args.out) as tmp:
        manifest = write_code_shards(tokenizer, images, tmp, split=args.split or "train",
                                     shard_tokens=args.shard_tokens)
    h, w = tokenizer.grid_shape
    print(f"{manifest.documents:,} images of {images.source} → {manifest.tokens:,} codes ({h}×{w} per image, "
          f"{tokenizer.codebook_size:,} symbols) in {len(manifest.shards)} shards → {args.out}")
    return 0


def _detokenize_images(args) -> int:

    tokenizer_dir = args.tokenizer or args.shards / TOKENIZER_COPY
    tokenizer = _load_image_tokenizer(tokenizer_dir)
    check_new_output(args.out)  # before the decoding
    try:
        if read_manifest(args.shards).tokenizer_sha256 != tokenizer.sha256:
            raise UserError(f"the tokenizer {tokenizer_dir} is not the one that made {args.shards}; pass --tokenizer "
                            "with the right one")
        images = tokenizer.decode(read_code_grids(args.shards, tokenizer.grid_shape))
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from None
    with new_output(args.out) as tmp:
        for i, image in enumerate(images):
            save_png(tmp / f"{i:06d}.png", image)
        if len(images):
            save_png(tmp / "grid.png", image_grid(images[:64]))
    print(f"{len(images):,} images → {args.out} (PNG files, and grid.png of the first {min(64, len(images))})")
    return 0
