"""The data steps of an image study: the images, the image tokenizers (VQ-VAE, FSQ, LFQ, palette), and one shard
set per stream.

    images ─► shards-pixels                          8-bit pixel values in raster order, 256 tokens
       └────► tokenizer-vqvae   ─► shards-vqvae      the code grid of each image in raster order
       └────► tokenizer-fsq     ─► shards-fsq
       └────► tokenizer-lfq     ─► shards-lfq
       └────► tokenizer-palette ─► shards-palette    each pixel's palette colour in raster order

Every stream's shards hold one document per image with no separator between documents, so a training window of
one image's length (`seq_len`) is exactly one image. Each document's `n_bytes` is the image's number of values,
H·W·C (an RGB pixel is three dimensions), so the evaluation's bits per byte is bits per dimension, comparable across
streams and with the literature's bits/dim on colour images.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from armodels.config_fields import added_field
from armodels.files import write_json_atomic
from armodels.image_tokenizer import ImageTokenizer, train_image_tokenizer, write_code_shards
from armodels.images import ImageSet, downsample, image_grid, load_images, save_png
from armodels.shards import ShardWriter, save_document_labels
from pipelines.step import StepContext

VERSION = "1"
SHARD_TO_DATA_SPLIT = {"train": "train", "val": "test"}  # the test split is the held-out one
PIXELS_SHA256 = "raw-pixels"  # stands in for a tokenizer hash in the pixel stream's manifests


def pixel_levels(binarize: bool) -> int:
    return 2 if binarize else 256


@dataclass(frozen=True)
class ImagesStepConfig:
    data: str  # a spec for armodels.images.load_images
    train_images: int
    test_images: int
    binarize: bool = False
    labels: bool = added_field(False)  # keep each image's class (train_labels.npy, ...), for class conditioning


def gather_images(config: ImagesStepConfig, ctx: StepContext) -> dict:
    """train.npy and test.npy (uint8 [N, H, W, C]) and data.json saying which data they are; with `labels`,
    train_labels.npy and test_labels.npy (int64 [N]) too."""
    summary, sources = {}, {}
    for split, limit in (("train", config.train_images), ("test", config.test_images)):
        data = load_images(config.data, split=split, limit=limit)
        if config.binarize:
            data.images = np.where(data.images >= 128, 255, 0).astype(np.uint8)
        if config.labels:
            if data.labels is None:  # the plan checks this first (pipelines.plan.study_classes)
                raise ValueError(f"models.condition: class needs labelled images; {data.source} has no labels")
            np.save(ctx.output / f"{split}_labels.npy", data.labels)
        np.save(ctx.output / f"{split}.npy", data.images)
        summary[f"{split}_images"] = len(data.images)
        sources[split] = data.source
        ctx.log(f"{split}: {len(data.images):,} images of {data.images.shape[1:]} from {data.source}")
    write_json_atomic(ctx.output / "data.json", {"sources": sources, "shape": list(data.images.shape[1:]), **summary})
    return summary


def load_split(images_dir, split: str) -> np.ndarray:
    return np.load(images_dir / f"{split}.npy", allow_pickle=False)


def write_split_labels(images_dir, split: str, shards_dir) -> None:
    """The images' labels of `split` (gathered with `labels`) beside the shards made from them: one per document."""
    save_document_labels(shards_dir, np.load(images_dir / f"{split}_labels.npy", allow_pickle=False))


@dataclass(frozen=True)
class ImageShardStepConfig:
    shard_tokens: int
    levels: int = 256  # the pixel stream's: 256 (8-bit values) or 2 (binarized images)
    labels: bool = added_field(False)  # write each image's class beside the shards (the images gathered labels)
    pyramid_factor: int = added_field(0)  # > 0: each document is the image at 1/factor resolution, then in full


def shard_pixels(config: ImageShardStepConfig, ctx: StepContext) -> dict:
    """The pixel stream: each image's values in raster order (row by row, channels innermost), 8-bit or binary;
    n_bytes = H·W·C. The pyramid stream (pyramid_factor > 0): each image's low-resolution version (armodels.images
    .downsample), then the image; n_bytes is still the image's H·W·C, so bits per byte are bits per full pixel."""
    summary = {}
    for shard_split, split in SHARD_TO_DATA_SPLIT.items():
        images = load_split(ctx.inputs["images"], split)
        if config.levels == 2:
            images = images >= 128
        writer = ShardWriter(ctx.output / shard_split, split=shard_split, tokenizer_sha256=PIXELS_SHA256,
                             vocab_size=config.levels, eod_id=None, shard_tokens=config.shard_tokens)
        images = images.astype(np.uint8)  # the tokens: binary levels or 8-bit values
        low = downsample(images, config.pyramid_factor) if config.pyramid_factor else images[:, :0]
        for i, (image, small) in enumerate(zip(images, low)):
            writer.add(i, small.reshape(-1).tolist() + image.reshape(-1).tolist(), image.size)
        summary[f"{shard_split}_tokens"] = writer.close().tokens
        if config.labels:
            write_split_labels(ctx.inputs["images"], split, ctx.output / shard_split)
    ctx.log(f"pixels: {summary['train_tokens']:,} train and {summary['val_tokens']:,} val tokens")
    return summary


@dataclass(frozen=True)
class ImageTokenizerStepConfig:
    kind: str  # "vqvae", "fsq", "lfq" or "palette" (which k-means fits: steps, batch_size and lr do not apply)
    steps: int
    batch_size: int
    lr: float
    seed: int
    model: dict = field(default_factory=dict)


def train_study_image_tokenizer(config: ImageTokenizerStepConfig, ctx: StepContext) -> dict:
    """Train the autoencoder (or fit the palette) on the training images; its test-split metrics and
    reconstructions.png."""
    train_set = ImageSet(load_split(ctx.inputs["images"], "train"), None, "study images (train)")
    test = load_split(ctx.inputs["images"], "test")
    tokenizer = train_image_tokenizer(config.kind, train_set, config=dict(config.model), steps=config.steps,
                                      batch_size=config.batch_size, lr=config.lr, seed=config.seed, log=ctx.log,
                                      test=ImageSet(test, None, "study images (test)"))
    tokenizer.save(ctx.output)
    metrics = tokenizer.meta["metrics"]  # on `test`
    write_json_atomic(ctx.output / "metrics.json", metrics)
    originals = test[np.linspace(0, len(test) - 1, min(16, len(test))).astype(int)]  # from all over the split
    save_image_grid(np.concatenate([originals, tokenizer.decode(tokenizer.encode(originals))]),
                    ctx.output / "reconstructions.png", columns=16)
    ctx.log(f"{config.kind}: {tokenizer.codebook_size} codes on a {tokenizer.grid_shape} grid; test "
            + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
    ctx.tracker.log_metrics({f"test_{k}": v for k, v in metrics.items()}, step=config.steps)
    ctx.tracker.log_artifact(ctx.output / "reconstructions.png")
    ctx.tracker.flush()
    return metrics


def shard_codes(config: ImageShardStepConfig, ctx: StepContext) -> dict:
    """A code stream: each image's code grid in raster order."""
    tokenizer = ImageTokenizer.load(ctx.inputs["tokenizer"])
    summary = {}
    for shard_split, split in SHARD_TO_DATA_SPLIT.items():
        images = ImageSet(load_split(ctx.inputs["images"], split), None, f"study images ({split})")
        manifest = write_code_shards(tokenizer, images, ctx.output / shard_split, split=shard_split,
                                     shard_tokens=config.shard_tokens)
        summary[f"{shard_split}_tokens"] = manifest.tokens
        if config.labels:
            write_split_labels(ctx.inputs["images"], split, ctx.output / shard_split)
    ctx.log(f"{tokenizer.kind}: {summary['train_tokens']:,} train and {summary['val_tokens']:,} val tokens")
    return summary


def save_image_grid(images: np.ndarray, path, columns: int = 8, scale: int = 2) -> None:
    """uint8 images [N, H, W, C] tiled in rows of `columns` and enlarged `scale` times (small images stay legible
    in a report), as a PNG."""
    save_png(path, image_grid(images, columns).repeat(scale, axis=0).repeat(scale, axis=1))
