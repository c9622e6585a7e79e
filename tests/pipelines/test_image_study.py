"""An image study end to end on real Ray, DeepSpeed, MLflow and Parquet: pixels vs VQ-VAE vs FSQ codes.

Uses scikit-learn's 8×8 digits (real images that ship with a PyPI package) to stay small; the preset's default
data is Fashion-MNIST.
"""

import json

import numpy as np
import pytest
from mlflow import MlflowClient
from PIL import Image

from armodels.shards import load_token_stream
from pipelines.config import StudyConfig, load_config
from pipelines.errors import UserError
from pipelines.plan import train_configs
from pipelines.study import run_study
from tests.support.cli import arscale, one_line_error
from tests.support.studies import step_dir


def tiny_image_config(**changes) -> StudyConfig:
    cfg, _ = load_config("images-tiny")
    data = cfg.model_dump()
    data["images"].update(data="digits", train_images=600, test_images=120)
    for tok in data["image_tokenizers"].values():
        tok["steps"] = 150
    for grid in data["models"]["grids"]:
        grid["sizes"] = grid["sizes"][:1] if grid["stream"] != "pixels" else grid["sizes"]  # pixels: 4, a fit
    data["training"].update(tokens=20_000)
    data["evaluation"].update(samples=4)
    for key, value in changes.items():
        data[key] = value
    return StudyConfig.model_validate(data)


@pytest.fixture(scope="module")
def study(tmp_path_factory, ray_local):
    out = tmp_path_factory.mktemp("image-study")
    outcomes = run_study(tiny_image_config(), load_config("images-tiny")[1], out)
    return out, outcomes


@pytest.mark.slow
def test_every_step_ran_and_each_stream_has_its_shape(study):
    out, outcomes = study
    assert {o.state for o in outcomes.values()} == {"succeeded"}
    pixels = load_token_stream(step_dir(out, "shards-pixels") / "val")
    assert len(pixels) == 120 * 64 and pixels.max() > 200  # digits are 8×8, values scaled to 0..255
    for kind, codes in (("vqvae", 64), ("fsq", 64)):
        stream = load_token_stream(step_dir(out, f"shards-{kind}") / "val")
        assert len(stream) == 120 * 4 and stream.max() < codes  # a 2×2 code grid per image
    runs = {n.removeprefix("eval-"): json.loads((step_dir(out, n) / "eval.json").read_text())
            for n in outcomes if n.startswith("eval-")}
    by_stream = {r["stream"]: r for r in runs.values()}
    assert set(by_stream) == {"pixels", "vqvae", "fsq"}
    for record in runs.values():
        assert 0 < record["bits_per_dim"] < 8 and record["bits_per_image"] > 0
    assert by_stream["pixels"]["mse"] == 0 and by_stream["vqvae"]["mse"] > 0
    assert by_stream["pixels"]["config"]["height"] == 8  # the image family gets the image's grid


@pytest.mark.slow
def test_fits_compare_streams_and_the_report_shows_images(study):
    out, _ = study
    fits = json.loads((step_dir(out, "fit") / "fit.json").read_text())["families"]
    assert set(fits) == {"pixels-gated_pixelcnn", "vqvae-transformer", "fsq-transformer"}
    assert "error" not in fits["pixels-gated_pixelcnn"]["compute"]  # four sizes: a law can be fitted
    assert "at least 4 usable runs, got 1" in fits["fsq-transformer"]["compute"]["error"]
    report_dir = out / "report"
    report = (report_dir / "report.md").read_text()
    assert "## Token streams" in report and "test bits/dim" in report
    for png in ("rate_distortion.png", "reconstructions-vqvae.png", "reconstructions-fsq.png"):
        assert f"]({png})" in report and (report_dir / png).stat().st_size > 1000
    samples = sorted(report_dir.glob("samples-*.png"))
    assert len(samples) == 6 and all(f"]({p.name})" in report for p in samples)


@pytest.mark.slow
def test_runs_are_in_mlflow_by_series(study):
    out, _ = study
    client = MlflowClient(f"sqlite:///{out}/mlflow.db")
    experiment = client.get_experiment_by_name("images-tiny")
    runs = client.search_runs([experiment.experiment_id], "tags.`arscale.step` LIKE 'eval-%'")
    assert {r.data.tags["arscale.series"] for r in runs} == {"pixels-gated_pixelcnn", "vqvae-transformer",
                                                             "fsq-transformer"}
    assert all(r.data.metrics["val_bits_per_dim"] > 0 for r in runs)
    tokenizers = client.search_runs([experiment.experiment_id], "tags.`arscale.step` LIKE 'tokenizer-%'")
    assert {r.data.tags["arscale.step"] for r in tokenizers} == {"tokenizer-vqvae", "tokenizer-fsq"}
    assert all(0 < r.data.metrics["test_usage"] <= 1 for r in tokenizers)



@pytest.mark.slow
def test_arscale_sample_writes_pngs_of_pixel_and_code_models(study, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # tiny models: one thread is fastest
    out, outcomes = study
    pixels, vqvae = (step_dir(out, next(n for n in outcomes if n.startswith(f"train-{stream}-")))
                     for stream in ("pixels", "vqvae"))
    height, width, _ = json.loads((step_dir(out, "images") / "data.json").read_text())["shape"]

    def pngs(*args) -> list:
        result = arscale("sample", *args, "--out", tmp_path / "png")
        assert result.returncode == 0, result.stderr
        paths = [line.split()[0] for line in result.stdout.splitlines()]
        images = [np.asarray(Image.open(path)) for path in paths]
        assert all(image.shape == (height, width) and image.dtype == np.uint8 for image in images)
        return images

    drawn = pngs(pixels, "--num", 3, "--seed", 1)
    assert len(drawn) == 3 and len({image.tobytes() for image in drawn}) == 3
    again = pngs(pixels, "--num", 3, "--seed", 1)  # the same seed: the same images, in new files beside the first
    assert all(np.array_equal(a, b) for a, b in zip(drawn, again))
    assert len(list((tmp_path / "png").glob("*.png"))) == 6
    assert len(pngs(vqvae, "--num", 2, "--seed", 1)) == 2
    assert len(pngs(vqvae, "--beam", 3, "--num", 2)) == 2
    one_line_error(arscale("sample", vqvae, "--prompt", "a cat"), 2, "--prompt is for text models")

def test_code_streams_need_their_tokenizer():
    data = tiny_image_config().model_dump()
    data["image_tokenizers"].pop("fsq")
    with pytest.raises(ValueError, match="needs image_tokenizers.fsq"):
        StudyConfig.model_validate(data)


def test_missing_image_data_is_a_one_line_error(tmp_path):
    cfg = tiny_image_config(images={"data": str(tmp_path / "nowhere"), "train_images": 10, "test_images": 10})
    with pytest.raises(UserError, match="nowhere"):
        train_configs(cfg)
