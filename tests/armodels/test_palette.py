"""The k-means colour palette (iGPT's image tokenizer) on real RGB images, scikit-learn's sample photos cut into
colour-patches: deterministic fits, codes that round-trip through the cluster centres, metrics, save/load, code
shards, the CLI and its bad inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from armodels.image_tokenizer import (
    ImageTokenizer,
    make_config,
    read_code_grids,
    train_image_tokenizer,
    write_code_shards,
)
from armodels.images import ImageSet, load_images
from armodels.palette import PaletteConfig, fit_palette, nearest
from tests.armodels.test_image_tokenizers import cli, one_line_error

torch.set_num_threads(1)
QUIET = {"log": lambda line: None}


@pytest.fixture(scope="module")
def patches():
    return load_images("colour-patches", limit=100), load_images("colour-patches", split="test", limit=100)


@pytest.fixture(scope="module")
def palette(patches):
    train, test = patches
    return train_image_tokenizer("palette", train, config={"clusters": 32}, test=test, **QUIET)


def test_the_same_images_and_seed_give_the_same_palette(patches, palette):
    again = train_image_tokenizer("palette", patches[0], config={"clusters": 32}, test=patches[1], **QUIET)
    assert again.sha256 == palette.sha256 and torch.equal(again.model.centres, palette.model.centres)
    other = train_image_tokenizer("palette", patches[0], config={"clusters": 32}, seed=1, **QUIET)
    assert other.sha256 != palette.sha256  # the seed picks the k-means++ start


def test_codes_round_trip_through_the_cluster_centres(palette):
    centres = palette.model.centres
    assert palette.kind == "palette" and palette.codebook_size == 32 and palette.grid_shape == (8, 8)
    assert torch.equal(centres, centres.round()) and 0 <= centres.min() and centres.max() <= 255  # 8-bit colours
    assert len(torch.unique(centres, dim=0)) == 32  # each code its own colour
    codes = np.random.default_rng(0).integers(32, size=(10, 8, 8))
    images = palette.decode(codes)
    assert images.dtype == np.uint8 and images.shape == (10, 8, 8, 3)
    assert np.array_equal(images, centres.numpy().astype(np.uint8)[codes])  # decoding paints the centres
    assert np.array_equal(palette.encode(images), codes)  # and a centre's colour is its own code


def test_each_pixel_gets_its_nearest_centre(patches, palette):
    images = patches[1].images[:20]
    codes = palette.encode(images)
    centres = palette.model.centres.numpy().astype(np.float64)
    pixels = images.reshape(-1, 1, 3).astype(np.float64)
    assert np.array_equal(codes.ravel(), ((pixels - centres) ** 2).sum(-1).argmin(1))
    assert np.array_equal(nearest(pixels[:, 0], centres), codes.ravel())


def test_metrics_are_those_of_the_other_image_tokenizers(patches, palette):
    test = patches[1].images
    m = palette.meta["metrics"]
    assert set(m) == {"mse", "psnr", "usage", "perplexity", "bits_per_image"}
    mse = ((palette.decode(palette.encode(test)) / 255.0 - test / 255.0) ** 2).mean()
    assert m["mse"] == pytest.approx(mse) and m["psnr"] == pytest.approx(10 * math.log10(1 / mse))
    assert m["bits_per_image"] == 64 * 5  # a 5-bit code per pixel
    assert 0.5 < m["usage"] <= 1 and 1 < m["perplexity"] <= 32
    assert palette.meta["evaluated_on"] == patches[1].source and palette.meta["iterations"] >= 1
    # more colours, less error; k-means beats the palette it starts from
    finer = train_image_tokenizer("palette", patches[0], config={"clusters": 128}, test=patches[1], **QUIET)
    assert finer.meta["metrics"]["mse"] < m["mse"] < 0.01
    start = train_image_tokenizer("palette", patches[0], config={"clusters": 32, "iterations": 1}, test=patches[1],
                                  **QUIET)
    assert start.meta["train_mse"] > palette.meta["train_mse"]


def test_save_load_and_code_shards(tmp_path, patches, palette):
    palette.save(tmp_path / "tok")
    loaded = ImageTokenizer.load(tmp_path / "tok")
    assert loaded.sha256 == palette.sha256 and loaded.kind == "palette"
    images = patches[1]
    assert np.array_equal(loaded.encode(images.images), palette.encode(images.images))
    manifest = write_code_shards(loaded, images, tmp_path / "shards", split="val")
    assert manifest.tokens == len(images) * 64 and manifest.vocab_size == 32
    assert np.array_equal(read_code_grids(tmp_path / "shards"), palette.encode(images.images))


def test_grey_images_get_a_palette_of_grey_levels():
    digits = load_images("digits", limit=200)
    grey = train_image_tokenizer("palette", digits, config={"clusters": 4}, **QUIET)
    assert grey.model.centres.shape == (4, 1) and grey.image_shape == (8, 8, 1)
    assert np.array_equal(grey.encode(grey.decode(np.arange(4).reshape(1, 2, 2).repeat(4, 1).repeat(4, 2))),
                          np.arange(4).reshape(1, 2, 2).repeat(4, 1).repeat(4, 2))


def test_bad_palettes_name_the_key():
    few = ImageSet(np.zeros((3, 2, 2, 3), np.uint8), None, "three black images")
    few.images[0, 0, 0] = 255
    with pytest.raises(ValueError, match=r"^clusters is 3, but the 3 images have only 2 distinct colours; use at most "
                                         r"2$"):
        fit_palette(few.images, PaletteConfig(clusters=3), **QUIET)
    for key, value in (("clusters", 1), ("clusters", 2_000_000), ("iterations", 0), ("clusters", 2.5)):
        with pytest.raises(ValueError, match=f"^{key} must be a whole number"):
            make_config("palette", {key: value})
    with pytest.raises(ValueError, match="unknown palette setting 'bits'"):
        make_config("palette", {"bits": 9})


def test_cli_fits_a_palette_and_refuses_one_larger_than_the_colours(tmp_path, capsys):
    code, out, err = cli(capsys, "tokenizer", "train", "palette", "--data", "colour-patches", "--limit", "50",
                         "--clusters", "16", "--iterations", "5", "--out", tmp_path / "tok")
    assert code == 0, err
    assert "palette tokenizer: 16 codes, 8×8 grid per image (256 bits/image)" in out and "k-means iterations" in out
    assert "test metrics: mse" in out and ImageTokenizer.load(tmp_path / "tok").config.clusters == 16
    code, _, err = cli(capsys, "tokenizer", "train", "palette", "--data", "digits", "--limit", "2", "--clusters",
                       "100", "--out", tmp_path / "t")
    one_line_error(code, err, "clusters is 100, but the 2 images have only ")
    code, _, err = cli(capsys, "tokenizer", "train", "palette", "--clusters", "1", "--out", tmp_path / "t")
    one_line_error(code, err, "clusters must be a whole number from 2 to 1,000,000, got 1")
    assert not (tmp_path / "t").exists()
