"""Image tokenizers: a trained VQ-VAE, FSQ or LFQ autoencoder, or a k-means colour palette (armodels.palette), that
turns images into grids of discrete codes and back, with training, metrics, save/load and code shards.

A tokenizer is a directory holding `model.safetensors` (the weights: plain tensors, loading runs no code) and
`tokenizer.json` (kind, config, image and grid shapes, the weights' sha256, training metadata and metrics). Its
identity, `sha256`, covers the weights and everything in the config that changes the codes; code shards name it.

Code shards are token shards (armodels.shards) with one document per image: its code grid in raster order
(h·w tokens, vocabulary = codebook size), n_bytes = H·W·C (the raw image's size, so bits per byte are bits per
pixel value), no end-of-document token (eod_id None). The shard set keeps a copy of its tokenizer in `tokenizer/`,
so it can be decoded on its own and `read_code_grids` knows the grid shape.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from armodels.autoencoder import QuantizedAutoencoder
from armodels.files import file_sha256, read_json, write_json_atomic
from armodels.fsq import FSQ, FSQConfig
from armodels.images import ImageSet
from armodels.lfq import LFQ, LFQConfig
from armodels.palette import Palette, PaletteConfig, fit_palette
from armodels.shards import TOKENIZER_COPY, Manifest, ShardWriter, iter_documents
from armodels.vqvae import VQVAE, VQVAEConfig

FORMAT = "arscale-image-tokenizer/1"
WEIGHTS, DESCRIPTION = "model.safetensors", "tokenizer.json"
KINDS = {"vqvae": (VQVAEConfig, VQVAE), "fsq": (FSQConfig, FSQ), "lfq": (LFQConfig, LFQ),
         "palette": (PaletteConfig, Palette)}
BATCH = 256  # images per forward pass when encoding, decoding and evaluating


def make_config(kind: str, settings: dict | None = None) -> VQVAEConfig | FSQConfig | LFQConfig | PaletteConfig:
    """The config dataclass of `kind` with `settings` applied; ValueError names an unknown kind or setting."""
    if kind not in KINDS:
        raise ValueError(f"unknown image tokenizer kind {kind!r}; use one of {', '.join(KINDS)}")
    cls = KINDS[kind][0]
    names = [f.name for f in fields(cls)]
    for key in settings or {}:
        if key not in names:
            raise ValueError(f"unknown {kind} setting {key!r} (settings: {', '.join(names)})")
    return cls(**(settings or {}))


class ImageTokenizer:
    """A trained image tokenizer: uint8 images [N, H, W, C] ↔ int64 code grids [N, h, w]."""

    def __init__(self, kind: str, model: QuantizedAutoencoder, image_shape: tuple[int, int, int],
                 meta: dict | None = None):
        self.kind = kind
        self.model = model.eval()
        self.config = model.config
        self.codebook_size = model.codebook_size
        self.image_shape = tuple(int(v) for v in image_shape)
        self.grid_shape = model.grid_shape(*self.image_shape[:2])
        self._weights = save_safetensors({k: v.contiguous() for k, v in model.state_dict().items()})
        self.weights_sha256 = hashlib.sha256(self._weights).hexdigest()
        identity = json.dumps([kind, asdict(self.config), self.image_shape, self.weights_sha256], sort_keys=True)
        self.sha256 = hashlib.sha256(identity.encode()).hexdigest()
        self.meta = {**(meta or {}), "sha256": self.sha256}

    def encode(self, images: np.ndarray) -> np.ndarray:
        """uint8 images [N, H, W, C] → int64 codes [N, h, w] (deterministic: the same images give the same codes)."""
        images = self._check_images(images)
        codes = [self.model.encode(_to_tensor(images[i:i + BATCH])) for i in range(0, len(images), BATCH)]
        return torch.cat(codes).numpy() if codes else np.zeros((0, *self.grid_shape), np.int64)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Codes [N, h, w] → uint8 images [N, H, W, C]."""
        codes = np.asarray(codes)
        if codes.ndim != 3 or codes.shape[1:] != self.grid_shape:
            raise ValueError(f"codes of shape {codes.shape}: this tokenizer decodes grids [N, {self.grid_shape[0]}, "
                             f"{self.grid_shape[1]}]")
        if codes.size and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(f"codes must be in 0..{self.codebook_size - 1}, got {codes.min()}..{codes.max()}")
        out = np.empty((len(codes), *self.image_shape), np.uint8)
        for i in range(0, len(codes), BATCH):
            x = self.model.decode(torch.from_numpy(codes[i:i + BATCH].astype(np.int64)), self.image_shape[:2])
            out[i:i + BATCH] = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        return out

    def evaluate(self, images: np.ndarray) -> dict:
        """How well the tokenizer does on `images`: reconstruction MSE of the decoded uint8 images, on pixels scaled
        to [0, 1]; PSNR in dB from that MSE with peak 1 (the same as peak 255 on 0..255); codebook usage (fraction
        of the codes that occur); perplexity of the code frequencies (exp of their entropy: the number of equally
        used codes that would give the same entropy); bits per image of the code grid, h·w·log2(codebook size)."""
        codes = self.encode(images)
        errors = [((self.decode(codes[i:i + BATCH]) / 255.0 - images[i:i + BATCH] / 255.0) ** 2).sum()
                  for i in range(0, len(images), BATCH)]
        mse = float(np.sum(errors) / images.size)
        freq = np.bincount(codes.ravel(), minlength=self.codebook_size) / codes.size
        p = freq[freq > 0]
        return {"mse": mse, "psnr": 10 * math.log10(1 / max(mse, 1e-12)), "usage": float((freq > 0).mean()),
                "perplexity": float(np.exp(-(p * np.log(p)).sum())),
                "bits_per_image": math.prod(self.grid_shape) * math.log2(self.codebook_size)}

    def save(self, directory: Path) -> None:
        """Write model.safetensors, then tokenizer.json (last: a directory with it is complete)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f".{WEIGHTS}.tmp"
        tmp.write_bytes(self._weights)
        os.replace(tmp, directory / WEIGHTS)
        write_json_atomic(directory / DESCRIPTION, {
            "format": FORMAT, "kind": self.kind, "config": asdict(self.config), "codebook_size": self.codebook_size,
            "image_shape": list(self.image_shape), "grid_shape": list(self.grid_shape),
            "weights_sha256": self.weights_sha256, "sha256": self.sha256, "meta": self.meta})

    @classmethod
    def load(cls, directory: Path) -> ImageTokenizer:
        """Load a saved tokenizer (safetensors and JSON only); FileNotFoundError or ValueError name the bad file."""
        directory = Path(directory)
        d = read_json(directory / DESCRIPTION, "image tokenizer description; train one with "
                                               "`arscale tokenizer train vqvae|fsq|lfq|palette`")
        if d.get("kind") not in KINDS:
            raise ValueError(f"{directory / DESCRIPTION} does not describe an image tokenizer (no kind "
                             f"{' or '.join(KINDS)})")
        weights = directory / WEIGHTS
        if not weights.is_file():
            raise FileNotFoundError(f"{weights} not found: the tokenizer's weights are missing; train it again")
        if file_sha256(weights) != d.get("weights_sha256"):
            raise ValueError(f"{weights} is corrupt (its sha256 differs from {DESCRIPTION}); train or copy it again")
        try:
            state = load_safetensors(weights.read_bytes())
        except SafetensorError as e:  # truncated or garbled, though its checksum was made to match
            raise ValueError(f"{weights} is not a readable safetensors file ({str(e).splitlines()[0]}); train or "
                             "copy the tokenizer again") from None
        try:
            model = KINDS[d["kind"]][1](make_config(d["kind"], d["config"]))
            model.load_state_dict(state)
            tokenizer = cls(d["kind"], model, tuple(d["image_shape"]), d.get("meta", {}))
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise ValueError(f"{directory / DESCRIPTION} does not match its weights or is incomplete "
                             f"({str(e).splitlines()[0]})") from None
        if d.get("sha256", tokenizer.sha256) != tokenizer.sha256:  # code shards name the tokenizer by it
            raise ValueError(f"{directory / DESCRIPTION} records sha256 {str(d['sha256'])[:12]}…, but its config and "
                             f"weights make {tokenizer.sha256[:12]}…: it was edited; train or copy it again")
        return tokenizer

    def _check_images(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[1:] != self.image_shape or images.dtype != np.uint8:
            raise ValueError(f"images are {images.dtype} {list(images.shape)}, but this tokenizer takes uint8 "
                             f"[N, {', '.join(map(str, self.image_shape))}] (H, W, C)")
        return images


def is_image_tokenizer(directory: Path) -> bool:
    """Whether `directory` holds an image tokenizer (its tokenizer.json has an image kind) rather than BPE's."""
    try:
        return read_json(Path(directory) / DESCRIPTION).get("kind") in KINDS
    except (OSError, ValueError, AttributeError):
        return False


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [B, H, W, C] → float [B, C, H, W] in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255)


def train_image_tokenizer(kind: str, train: ImageSet, *, config: dict | None = None, steps: int = 2000,
                          batch_size: int = 64, lr: float = 2e-3, seed: int = 0, log=print,
                          test: ImageSet | None = None) -> ImageTokenizer:
    """Train a `kind` tokenizer on random batches of `train` with Adam (learning rate: 2% linear warm-up, then
    cosine decay to a tenth), seeded; logs about ten progress lines. A palette is fitted by k-means instead (steps,
    batch_size and lr do not apply). Its metrics on `test` (else on `train`) are in `meta["metrics"]`."""
    if steps < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(f"steps and batch size must be positive and lr above 0 (got {steps}, {batch_size}, {lr})")
    channels = train.images.shape[-1]
    settings = dict(config or {})
    if settings.setdefault("in_channels", channels) != channels:
        raise ValueError(f"in_channels is {settings['in_channels']}, but the images have {channels} channels")
    cfg = make_config(kind, settings)
    start = time.time()
    if kind == "palette":
        model, meta = fit_palette(train.images, cfg, seed=seed, log=log)
    else:
        model, meta = _train_autoencoder(kind, cfg, train, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                                         log=log)
    meta = {"data": train.source, "images": len(train.images), **meta, "seed": seed,
            "train_seconds": round(time.time() - start, 1)}
    tokenizer = ImageTokenizer(kind, model, train.shape, meta)
    evaluated = test if test is not None else train
    tokenizer.meta["metrics"] = tokenizer.evaluate(evaluated.images)
    tokenizer.meta["evaluated_on"] = evaluated.source
    return tokenizer


def _train_autoencoder(kind: str, cfg, train: ImageSet, *, steps: int, batch_size: int, lr: float, seed: int,
                       log) -> tuple[QuantizedAutoencoder, dict]:
    """The gradient training of train_image_tokenizer: the model and what the training did."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = KINDS[kind][1](cfg).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    warmup = max(1, steps // 50)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) * (
        0.1 + 0.45 * (1 + math.cos(math.pi * s / steps))))
    every = max(1, steps // 10)
    used = torch.zeros(model.codebook_size, dtype=torch.bool)  # codes seen since the last log line
    start = time.time()
    for step in range(1, steps + 1):
        x = _to_tensor(train.images[rng.integers(len(train.images), size=batch_size)])
        loss, mse, codes = model(x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        used[codes.unique()] = True
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"the {kind} training loss became {loss.item()} at step {step}; lower the lr")
        if step % every == 0 or step == steps:
            log(f"{kind} step {step}/{steps}  loss {loss.item():.4f}  mse {mse.item():.4f}  "
                f"usage {used.float().mean().item():.1%}  {time.time() - start:.0f}s")
            used.zero_()
    meta = {"steps": steps, "batch_size": batch_size, "lr": lr}
    if kind == "vqvae":
        meta["restarts"] = int(model.restarts)
    return model, meta


def write_code_shards(tokenizer: ImageTokenizer, images: ImageSet, directory: Path, *, split: str,
                      shard_tokens: int = 1_000_000) -> Manifest:
    """Encode `images` into a code shard set (one document per image, see the module docstring) with a copy of the
    tokenizer; returns the manifest."""
    directory = Path(directory)
    writer = ShardWriter(directory, split=split, tokenizer_sha256=tokenizer.sha256,
                         vocab_size=tokenizer.codebook_size, eod_id=None, shard_tokens=shard_tokens)
    n_bytes = math.prod(tokenizer.image_shape)
    for start in range(0, len(images.images), BATCH * 16):
        for i, grid in enumerate(tokenizer.encode(images.images[start:start + BATCH * 16])):
            writer.add(start + i, grid.ravel(), n_bytes)
    tokenizer.save(directory / TOKENIZER_COPY)
    return writer.close()  # the manifest last: a shard set with one is complete


def read_code_grids(directory: Path, grid_shape: tuple[int, int] | None = None) -> np.ndarray:
    """The code grids [N, h, w] of a code shard set; (h, w) is `grid_shape`, else the kept tokenizer's."""
    directory = Path(directory)
    if grid_shape is None:
        grid_shape = tuple(read_json(directory / TOKENIZER_COPY / DESCRIPTION, "the shards' tokenizer; pass "
                                                                               "grid_shape")["grid_shape"])
    docs = list(iter_documents(directory))
    h, w = grid_shape
    for i, doc in enumerate(docs):
        if len(doc) != h * w:
            raise ValueError(f"{directory}: document {i} has {len(doc)} tokens, not a {h}×{w} code grid")
    return np.stack(docs).astype(np.int64).reshape(-1, h, w) if docs else np.zeros((0, h, w), np.int64)


def code_stream_shape(kind: str, settings: dict | None,
                      image_shape: tuple[int, int, int]) -> tuple[int, tuple[int, int]]:
    """(codebook size, code grid (h, w)) of a `kind` tokenizer with `settings` on images of `image_shape`, known
    before training, from the config alone (a study plans its models from it). ValueError names a bad setting."""
    config = make_config(kind, settings)
    return config.codebook_size, config.grid_shape(*image_shape[:2])
