"""Class conditioning in a study (`models.condition: class`): its bad inputs, and a small conditioned image study end
to end on real Ray, DeepSpeed and Parquet, with `arscale sample --class`.

Uses scikit-learn's 8×8 digits (ten classes, labels that ship with a PyPI package) to stay small.
"""

import json

import numpy as np
import pytest
import yaml
from PIL import Image

from armodels.data import TokenWindows
from armodels.images import image_grid, load_images
from armodels.shards import load_document_labels, load_token_stream
from pipelines.config import StudyConfig
from pipelines.errors import UserError
from pipelines.plan import train_configs
from pipelines.step import StepContext
from pipelines.steps.images import ImageShardStepConfig, ImagesStepConfig, gather_images, shard_pixels
from pipelines.study import run_study
from tests.support.cli import arscale, one_line_error
from tests.support.studies import step_dir

GATED = {"channels": 8, "n_layers": 2}


def conditioned_config(data: str = "digits", **models) -> dict:
    """Gated PixelCNNs of one size over binarized digits, with the class and without: a twin each."""
    return {
        "name": "classes",
        "images": {"data": data, "train_images": 600, "test_images": 120, "binarize": True},
        "models": {"grids": [
            {"family": "gated_pixelcnn", "stream": "pixels", "label": "plain", "sizes": [GATED]},
            {"family": "gated_pixelcnn", "stream": "pixels", "label": "class", "condition": "class", "sizes": [GATED]},
        ], **models},
        "training": {"tokens": 12_000, "batch_size": 8, "lr": 0.003, "eval_points": 1},
        "evaluation": {"max_tokens": 64 * 60, "samples": 2, "temperature": 1.0, "top_k": None},
        "fit": {"bootstrap": 10},
    }


def dry_run(tmp_path, config: dict):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    return arscale("study", "run", path, "--dry-run", "--out", tmp_path / "out")


def test_the_study_sets_n_classes_on_conditioned_runs_only():
    runs = {tc.name: tc for tc in train_configs(StudyConfig.model_validate(conditioned_config()))}
    assert {name: tc.model.get("n_classes") for name, tc in runs.items()} == {"plain-3.4k": None, "class-3.4k": 10}
    # an unconditioned run's config is as it was before conditioning existed, so its step keeps its hash
    assert "n_classes" not in runs["plain-3.4k"].model


def test_condition_on_text_or_on_a_family_without_classes_is_named_at_its_key(tmp_path):
    text = {"name": "t", "models": {"condition": "class", "grids": [
        {"family": "transformer", "sizes": [{"n_layer": 1, "n_embd": 16, "n_head": 2}]}]}}
    one_line_error(dry_run(tmp_path, text), 2, "models.condition: class conditioning needs labelled images")
    config = conditioned_config()
    config["models"]["grids"][1].update(family="rnn", sizes=[{"hidden": 8}])
    with pytest.raises(ValueError, match="models.grids.1.condition: the rnn family takes no class; class "
                                         "conditioning works with mixture_of_logistics, made, pixelcnn"):
        StudyConfig.model_validate(config)
    config = conditioned_config()
    config["models"]["grids"][1]["sizes"] = [{**GATED, "n_classes": 3}]
    with pytest.raises(ValueError, match="sizes.0.n_classes: set by the study"):
        StudyConfig.model_validate(config)


def test_condition_on_images_without_labels_is_a_one_line_error(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (40, 8, 8, 1), dtype=np.uint8)
    np.save(tmp_path / "unlabelled.npy", images)
    config = conditioned_config(data=str(tmp_path / "unlabelled.npy"))
    config["images"].update(train_images=20, test_images=20)
    with pytest.raises(UserError, match="models.condition: class needs labelled images"):
        train_configs(StudyConfig.model_validate(config))
    one_line_error(dry_run(tmp_path, config), 2, "models.condition: class needs labelled images")
    del config["models"]["grids"][1]  # without a conditioned grid, the same images are fine
    assert dry_run(tmp_path, config).returncode == 0


def test_the_images_and_pixel_steps_keep_one_label_per_window(tmp_path):
    """The real steps on the digits: labels gathered beside the images, then beside the pixel shards, and windows
    that pair each image with its own label; the same steps without `labels` write none."""
    images_dir, shards = tmp_path / "images", tmp_path / "shards"
    images_dir.mkdir()
    gather_images(ImagesStepConfig("digits", 300, 60, binarize=True, labels=True),
                  StepContext("images", images_dir, {}))
    shard_pixels(ImageShardStepConfig(shard_tokens=4_000, levels=2, labels=True),
                 StepContext("shards-pixels", shards, {"images": images_dir}))
    truth = load_images("digits", split="test", limit=60)
    labels = load_document_labels(shards / "val")
    assert np.array_equal(labels, truth.labels) and len(load_token_stream(shards / "val")) == 60 * 64
    windows = TokenWindows(load_token_stream(shards / "val"), 64, labels=labels)
    for start, (tokens, classes) in zip(range(0, 60, 16), windows.eval_batches(16)):
        assert np.array_equal(tokens.numpy(), (truth.images[start:start + 16] >= 128).reshape(len(tokens), -1))
        assert np.array_equal(classes.numpy(), truth.labels[start:start + 16])
    with pytest.raises(ValueError, match="one label per window"):
        TokenWindows(load_token_stream(shards / "val"), 64, labels=labels[:-1])
    plain = tmp_path / "plain"
    shard_pixels(ImageShardStepConfig(shard_tokens=4_000, levels=2), StepContext("shards-pixels", plain,
                                                                               {"images": images_dir}))
    with pytest.raises(ValueError, match="has no class labels"):
        load_document_labels(plain / "val")


@pytest.fixture(scope="module")
def study(tmp_path_factory, ray_local):
    out = tmp_path_factory.mktemp("classes-study")
    path = tmp_path_factory.mktemp("config") / "classes.yaml"
    path.write_text(yaml.safe_dump(conditioned_config()))
    outcomes = run_study(StudyConfig.model_validate(conditioned_config()), path, out)
    return out, outcomes


@pytest.mark.slow
def test_labels_travel_with_the_images_into_the_shards_one_per_window(study):
    out, outcomes = study
    assert {o.state for o in outcomes.values()} == {"succeeded"}
    images_dir, shards = step_dir(out, "images"), step_dir(out, "shards-pixels")
    for split, shard_split in (("train", "train"), ("test", "val")):
        images = np.load(images_dir / f"{split}.npy") >= 128
        labels = np.load(images_dir / f"{split}_labels.npy")
        assert np.array_equal(load_document_labels(shards / shard_split), labels) and set(labels) == set(range(10))
        windows = TokenWindows(load_token_stream(shards / shard_split), 64, seed=3, labels=labels)
        # every batch pairs each window (one image) with that image's own label, shuffled or in order
        tokens, classes = windows.train_batch(5, 16)
        for row, label in zip(tokens.numpy(), classes.numpy()):
            index = next(i for i, image in enumerate(images) if np.array_equal(image.reshape(-1), row))
            assert labels[index] == label
        tokens, classes = next(windows.eval_batches(8))
        assert np.array_equal(tokens.numpy(), images[:8].reshape(8, -1)) and np.array_equal(classes, labels[:8])


@pytest.mark.slow
def test_conditioned_runs_report_conditional_bits_and_a_row_of_samples_per_class(study):
    out, outcomes = study
    records = {json.loads((step_dir(out, n) / "eval.json").read_text())["run_id"]: json.loads(
        (step_dir(out, n) / "eval.json").read_text()) for n in outcomes if n.startswith("eval-")}
    assert records["class-3.4k"]["config"]["n_classes"] == 10 and "n_classes" not in records["plain-3.4k"]["config"]
    assert all(0 < r["bits_per_dim"] < 1 for r in records.values())  # binary pixels: at most 1 bit each
    grid = np.asarray(Image.open(step_dir(out, "eval-class-3.4k") / "samples.png"))
    rows_of_two = image_grid(np.zeros((20, 8, 8, 1), np.uint8), 2)  # 10 classes × 2 samples, enlarged twice
    assert grid.shape[:2] == (2 * rows_of_two.shape[0], 2 * rows_of_two.shape[1])
    report = (out / "report" / "report.md").read_text()
    assert "## Class conditioning" in report and "| plain-3.4k | class-3.4k |" in report
    assert "bits/dim given the class; one row per class, 0 to 9 from the top" in report


@pytest.mark.slow
def test_arscale_sample_draws_a_class_and_refuses_classes_that_do_not_fit(study, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out, outcomes = study
    conditioned, plain = step_dir(out, "train-class-3.4k"), step_dir(out, "train-plain-3.4k")
    result = arscale("sample", conditioned, "--class", 7, "--num", 2, "--seed", 1, "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    paths = [line.split()[0] for line in result.stdout.splitlines()]
    assert len(paths) == 2 and all("-class7" in p and np.asarray(Image.open(p)).shape == (8, 8) for p in paths)
    one_line_error(arscale("sample", conditioned, "--class", 10), 2, "give --class K with K from 0 to 9, got 10")
    one_line_error(arscale("sample", conditioned, "--class", -1), 2, "with K from 0 to 9, got -1")
    one_line_error(arscale("sample", conditioned), 2, "is conditioned on 10 classes: give --class K")
    one_line_error(arscale("sample", plain, "--class", 3), 2, "--class: the model in")
