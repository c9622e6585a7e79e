"""A colour palette, the image tokenizer of iGPT (Chen et al. 2020, "Generative Pretraining from Pixels"): k-means
clusters of the training images' pixel colours. A pixel's code is its nearest cluster and decodes to that cluster's
centre, so an H×W×C image becomes an H×W grid of codes (C times shorter than its pixel values) that loses only the
colours between the centres.

k-means runs on the distinct colours weighted by their counts (its cost grows with the distinct colours, not the
pixels), from a seeded k-means++ start, in float64: the same images and seed give the same palette. The centres are
then rounded to whole 8-bit colours (distinct ones), so decoding gives exact uint8 colours and encoding a decoded
image gives its codes back. Grey images (C = 1) work too: the palette is then a set of grey levels.

A palette has the interface of the autoencoders of armodels.autoencoder (`encode`, `decode`, `codebook_size`,
`grid_shape`, `config`), so armodels.image_tokenizer saves, loads, evaluates and shards it as it does them; only how
it is made differs (`fit_palette`, not gradient steps).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from armodels.bpe import MAX_VOCAB_SIZE

CHUNK = 8192  # colours per block of the distance matrix (blocks × clusters float64s stay small)


@dataclass
class PaletteConfig:
    in_channels: int = 3  # image channels: 3 RGB, 1 grey
    clusters: int = 512  # colours in the palette, the codebook size (iGPT's)
    iterations: int = 30  # k-means (Lloyd) iterations at most; it stops earlier when no colour changes cluster

    def __post_init__(self):
        for name, low, high in (("in_channels", 1, 4), ("clusters", 2, MAX_VOCAB_SIZE), ("iterations", 1, 10_000)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"{name} must be a whole number from {low} to {high:,}, got {value!r}")

    @property
    def codebook_size(self) -> int:
        return self.clusters

    def grid_shape(self, height: int, width: int) -> tuple[int, int]:
        """One code per pixel."""
        return height, width


class Palette(nn.Module):
    def __init__(self, cfg: PaletteConfig):
        super().__init__()
        self.config = cfg
        self.codebook_size = cfg.clusters
        self.register_buffer("centres", torch.zeros(cfg.clusters, cfg.in_channels))  # 8-bit colours, 0..255

    def grid_shape(self, height: int, width: int) -> tuple[int, int]:
        return self.config.grid_shape(height, width)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, C, H, W] in [0, 1] → codes int64 [B, H, W]: each pixel's nearest centre."""
        pixels = (x * 255).round().permute(0, 2, 3, 1)
        codes = nearest(pixels.reshape(-1, pixels.shape[-1]).double().numpy(), self.centres.double().numpy())
        return torch.from_numpy(codes).view(pixels.shape[:-1])

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Codes [B, H, W] → images [B, C, H, W] in [0, 1] (`size` is the code grid's: one code per pixel)."""
        return (self.centres[codes] / 255).permute(0, 3, 1, 2)


def nearest(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """The index of each point's nearest centre (squared Euclidean distance; ties to the lower index), int64."""
    out = np.empty(len(points), np.int64)
    squared = (centres ** 2).sum(1)
    for i in range(0, len(points), CHUNK):  # ‖p‖² is the same for every centre: left out
        out[i:i + CHUNK] = (squared - 2 * points[i:i + CHUNK] @ centres.T).argmin(1)
    return out


def fit_palette(images: np.ndarray, config: PaletteConfig, *, seed: int = 0, log=print) -> tuple[Palette, dict]:
    """k-means (k-means++ start, then Lloyd iterations) of the colours of uint8 `images` [N, H, W, C], seeded;
    returns the palette and what the fit did. ValueError when there are fewer distinct colours than clusters."""
    channels = images.shape[-1]
    if channels != config.in_channels:
        raise ValueError(f"in_channels is {config.in_channels}, but the images have {channels} channels")
    colours, counts = np.unique(images.reshape(-1, channels), axis=0, return_counts=True)  # sorted: deterministic
    k = config.clusters
    if k > len(colours):
        raise ValueError(f"clusters is {k:,}, but the {len(images):,} images have only {len(colours):,} distinct "
                         f"colours; use at most {len(colours):,}")
    colours, weights = colours.astype(np.float64), counts.astype(np.float64)
    rng = np.random.default_rng(seed)
    centres = np.empty((k, channels))
    centres[0] = colours[rng.choice(len(colours), p=weights / weights.sum())]
    gap = ((colours - centres[0]) ** 2).sum(1)  # each colour's squared distance to its nearest centre so far
    for j in range(1, k):  # k-means++: the next centre with probability ∝ pixels × squared distance
        p = weights * gap
        centres[j] = colours[rng.choice(len(colours), p=p / p.sum())]
        gap = np.minimum(gap, ((colours - centres[j]) ** 2).sum(1))
    assign = None
    for iteration in range(1, config.iterations + 1):
        new = nearest(colours, centres)
        if assign is not None and np.array_equal(new, assign):
            break
        assign = new
        mass = np.bincount(assign, weights, minlength=k)
        sums = np.stack([np.bincount(assign, weights * colours[:, c], minlength=k) for c in range(channels)], 1)
        filled = mass > 0  # an emptied cluster keeps its centre
        centres[filled] = sums[filled] / mass[filled, None]
    centres = _distinct_colours(np.clip(np.rint(centres), 0, 255), colours)
    assign = nearest(colours, centres)
    mse = float((weights * ((colours - centres[assign]) ** 2).sum(1)).sum() / (weights.sum() * channels) / 255 ** 2)
    fit = {"distinct_colours": len(colours), "pixels": int(weights.sum()), "iterations": iteration,
           "train_mse": mse}
    log(f"palette: {k:,} colours from {len(colours):,} distinct of {fit['pixels']:,} pixels, {iteration} k-means "
        f"iterations, train mse {mse:.5f}")
    palette = Palette(config)
    palette.centres.copy_(torch.from_numpy(centres))
    return palette.eval(), fit


def _distinct_colours(centres: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """`centres` with each repeat of an earlier centre (rounding can merge two) replaced by the data colour farthest
    from every centre, so each code decodes to its own colour."""
    centres = centres.copy()
    _, first = np.unique(centres, axis=0, return_index=True)
    for j in sorted(set(range(len(centres))) - set(first.tolist())):
        others = np.delete(centres, j, axis=0)
        gap = np.min([((colours - c) ** 2).sum(1) for c in others], axis=0)
        centres[j] = colours[gap.argmax()]
    return centres
