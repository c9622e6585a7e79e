"""The pyramid stream of an image study (each image at 1/pyramid_factor resolution, then in full) and the
hierarchical family that models it: planning and its bad inputs, the real images and shard steps, and a small study
end to end on real Ray and DeepSpeed whose bits/dim are per full-resolution pixel."""

import json

import numpy as np
import pytest
import yaml
from PIL import Image

from armodels.images import downsample, load_images
from armodels.shards import iter_rows_with_bytes, load_token_stream
from pipelines.config import StudyConfig
from pipelines.plan import grid_runs, stream_shapes
from pipelines.step import StepContext
from pipelines.steps.images import ImageShardStepConfig, ImagesStepConfig, gather_images, shard_pixels
from pipelines.study import run_study
from tests.support.cli import arscale, one_line_error
from tests.support.studies import step_dir

HIERARCHICAL = {"channels": 4, "n_layers": 1, "kernel": 3}


def pyramid_config(**grids) -> dict:
    """A hierarchical PixelCNN over binarized 8×8 digits' pyramid, and a Gated PixelCNN over their pixels."""
    return {
        "name": "pyramid",
        "images": {"data": "digits", "train_images": 400, "test_images": 80, "binarize": True},
        "models": {"grids": [
            {"family": "hierarchical_pixelcnn", "stream": "pyramid", "sizes": [HIERARCHICAL], **grids},
            {"family": "gated_pixelcnn", "stream": "pixels", "sizes": [HIERARCHICAL]}]},
        "training": {"tokens": 8_000, "batch_size": 8, "lr": 0.003, "eval_points": 1},
        "evaluation": {"max_tokens": 80 * 80, "samples": 2, "temperature": 1.0, "top_k": None},
        "fit": {"bootstrap": 10},
    }


def test_the_pyramid_stream_is_the_low_image_then_the_full_one():
    cfg = StudyConfig.model_validate(pyramid_config())
    shape = stream_shapes(cfg)["pyramid"]
    assert (shape.seq_len, shape.grid, shape.factor) == (16 + 64, (8, 8), 2)
    (_, hierarchical), (_, gated) = grid_runs(cfg)
    assert hierarchical.model == {**HIERARCHICAL, "vocab_size": 2, "height": 8, "width": 8, "factor": 2}
    assert "factor" not in gated.model  # the one-image families are told nothing of the pyramid


@pytest.mark.parametrize("change, message", [
    ({"stream": "pixels"}, "models.grids.0.family: hierarchical_pixelcnn models the pyramid stream only "
                           "(stream: pyramid), not pixels"),
    ({"family": "made"}, "models.grids.0.family: made models one image, not the pyramid stream's two; use "
                         "hierarchical_pixelcnn or a sequence family"),
    ({"images": {"pyramid_factor": 3}}, "images.pyramid_factor: 3 must divide the images' height and width (8 × 8)"),
])
def test_a_family_on_the_wrong_stream_or_a_factor_that_does_not_divide_is_one_line(tmp_path, change, message):
    config = pyramid_config()
    if "images" in change:
        config["images"].update(change["images"])
    else:
        config["models"]["grids"][0].update(change)
        if change.get("family") == "made":
            config["models"]["grids"][0]["sizes"] = [{"hidden": [8]}]
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    one_line_error(arscale("study", "run", path, "--dry-run", "--out", tmp_path / "out"), 2, message)


def test_pyramid_shards_hold_each_images_low_version_then_the_image(tmp_path):
    images_dir, shards = tmp_path / "images", tmp_path / "shards"
    images_dir.mkdir(), shards.mkdir()
    gather_images(ImagesStepConfig("digits", 100, 20, binarize=True), StepContext("images", images_dir, {}))
    shard_pixels(ImageShardStepConfig(shard_tokens=4_000, levels=2, pyramid_factor=2),
                 StepContext("shards-pyramid", shards, {"images": images_dir}))
    truth = (load_images("digits", split="test", limit=20).images >= 128).astype(np.uint8)
    rows = list(iter_rows_with_bytes(shards / "val"))
    assert len(rows) == 20 and all(n_bytes == 64 for _, _, n_bytes in rows)  # bits per byte: per full pixel
    for (_, tokens, _), image in zip(rows, truth):
        assert np.array_equal(tokens[:16], downsample(image[None], 2).reshape(-1))
        assert np.array_equal(tokens[16:], image.reshape(-1))
    assert len(load_token_stream(shards / "val")) == 20 * 80


@pytest.mark.slow
def test_a_hierarchical_study_scores_bits_per_full_pixel_and_samples_full_images(tmp_path, ray_local):
    config = pyramid_config()
    path = tmp_path / "pyramid.yaml"
    path.write_text(yaml.safe_dump(config))
    outcomes = run_study(StudyConfig.model_validate(config), path, tmp_path / "out")
    assert {o.state for o in outcomes.values()} == {"succeeded"}
    records = {r["stream"]: r for r in (json.loads((step_dir(tmp_path / "out", n) / "eval.json").read_text())
                                         for n in outcomes if n.startswith("eval-"))}
    pyramid, pixels = records["pyramid"], records["pixels"]
    # bits/dim: the sequence's bits (low image and full image) over the full image's 64 pixels
    assert pyramid["seq_len"] == 80 and pyramid["bits_per_image"] == pytest.approx(
        pyramid["eval"]["bits_per_token"] * 80)
    assert pyramid["bits_per_dim"] == pytest.approx(pyramid["bits_per_image"] / 64)
    assert 0 < pyramid["bits_per_dim"] < 2 and 0 < pixels["bits_per_dim"] < 2  # a few steps: near uniform guesses
    report = (step_dir(tmp_path / "out", "report") / "report.md").read_text()
    assert "| pyramid | 80 | 2 |" in report and "∞ (lossless)" in report.split("| pyramid |")[1].split("\n")[0]
    samples = next((step_dir(tmp_path / "out", "report")).glob("samples-pyramid-*.png"))
    assert Image.open(samples).size == (2 * (2 * 9 + 1), 2 * (9 + 1))  # two full 8×8 images, padded, at 2×
