"""Colour images in studies: the RGB pixel stream of colour-patches (scikit-learn's sample photos, nothing
downloaded) sized into the colour families' channels_in, the palette stream, the bad inputs, and one small study end
to end on real Ray."""

import json

import numpy as np
import pytest
from PIL import Image

import armodels
from armodels.shards import iter_rows_with_bytes, load_token_stream
from pipelines.config import StudyConfig, load_config
from pipelines.errors import UserError
from pipelines.plan import stream_shapes, train_configs
from pipelines.study import run_study
from tests.support.cli import arscale, one_line_error
from tests.support.studies import step_dir

TINY = {"name": "colour-tiny", "images": {"data": "colour-patches", "train_images": 200, "test_images": 416},
        "image_tokenizers": {"palette": {"model": {"clusters": 16, "iterations": 10}}},
        "shards": {"shard_tokens": 100_000},
        "models": {"grids": [
            {"family": "pixelcnn", "stream": "pixels", "sizes": [{"channels": 6, "n_layers": 1}]},
            {"family": "transformer", "stream": "palette", "sizes": [{"n_layer": 1, "n_embd": 8, "n_head": 2}]}]},
        "training": {"tokens": 6_000, "batch_size": 4, "lr": 0.005, "eval_points": 1, "eval_windows": 2},
        "evaluation": {"max_tokens": 2_000, "samples": 4, "temperature": 1.0, "top_k": None},
        "fit": {"bootstrap": 10, "holdout_top": 0}}


def colour_config(grids=None, **changes) -> StudyConfig:
    data = json.loads(json.dumps(TINY))
    if grids is not None:
        data["models"]["grids"] = grids
    data.update(changes)
    return StudyConfig.model_validate(data)


def test_the_colour_families_are_told_their_channels():
    """The one place that says what a study sets on a family lists channels_in for the families that take colour."""
    colour = {f for f in armodels.families() if "channels_in" in armodels.fields_set_by_study(f)}
    assert colour == {"pixelcnn", "gated_pixelcnn", "mixture_of_logistics"}
    assert "channels_in" not in armodels.fields_set_by_study("made")


def test_rgb_pixels_size_the_image_families_and_the_sequence_families():
    grids = [{"family": f, "stream": "pixels", "sizes": [{"channels": 6, "n_layers": 1}]}
             for f in ("pixelcnn", "gated_pixelcnn", "mixture_of_logistics")]
    grids.append({"family": "transformer", "stream": "pixels", "sizes": [{"n_layer": 1, "n_embd": 8, "n_head": 2}]})
    grids.append({"family": "transformer", "stream": "palette", "sizes": [{"n_layer": 1, "n_embd": 8, "n_head": 2}]})
    cfg = colour_config(grids)
    shapes = stream_shapes(cfg)
    assert (shapes["pixels"].grid, shapes["pixels"].channels, shapes["pixels"].seq_len) == ((8, 8), 3, 192)
    assert (shapes["palette"].vocab_size, shapes["palette"].grid, shapes["palette"].channels) == (16, (8, 8), 1)
    runs = {tc.name: tc for tc in train_configs(cfg)}
    for family in ("pixelcnn", "gated_pixelcnn", "mixture_of_logistics"):
        tc = next(tc for name, tc in runs.items() if name.startswith(f"pixels-{family}-"))
        assert {k: tc.model[k] for k in ("height", "width", "channels_in", "vocab_size")} == {
            "height": 8, "width": 8, "channels_in": 3, "vocab_size": 256}
        config = armodels.make_config(family, **tc.model)
        assert config.seq_len == 192
        # the planned costs are those of the colour model (the channel masks, the colour mixture), not a grey one
        assert tc.run(".").costs().params == config.num_params(non_embedding=False) != armodels.make_config(
            family, **{**tc.model, "channels_in": 1}).num_params(non_embedding=False)
    transformer = next(tc for name, tc in runs.items() if name.startswith("pixels-transformer"))
    assert transformer.model["seq_len"] == 8 * 8 * 3  # the flattened H·W·C stream
    palette = next(tc for name, tc in runs.items() if name.startswith("palette-transformer"))
    assert (palette.model["seq_len"], palette.model["vocab_size"]) == (64, 16)  # one code per pixel


def test_made_on_rgb_pixels_is_refused_naming_the_grid():
    grids = [{"family": "transformer", "stream": "palette", "sizes": [{"n_layer": 1, "n_embd": 8, "n_head": 2}]},
             {"family": "made", "stream": "pixels", "sizes": [{"hidden": [8]}]}]
    with pytest.raises(UserError, match=r"^models\.grids\.1\.family: made models single-channel images; the "
                                        r"pixels stream of colour-patches has 3 channels \(use mixture_of_logistics, "
                                        r"pixelcnn, gated_pixelcnn or a sequence family"):
        train_configs(colour_config(grids))
    made_on_codes = [{"family": "made", "stream": "palette", "sizes": [{"hidden": [8]}]}]
    assert train_configs(colour_config(made_on_codes))[0].model["height"] == 8  # codes are one channel


@pytest.mark.parametrize("data", ["colour-patches", "digits"])
def test_channels_in_is_the_studys_to_set(data, tmp_path):
    """The data says how many channels there are: a size that sets channels_in (3 on grey digits, or even the 3 the
    data has) is refused, naming the key."""
    study = json.loads(json.dumps(TINY))
    study["images"]["data"] = data
    study["models"]["grids"][0]["sizes"][0]["channels_in"] = 3
    (tmp_path / "colour.yaml").write_text(json.dumps(study))
    with pytest.raises(UserError, match=r": models\.grids\.0\.sizes\.0\.channels_in: set by the study"):
        load_config(str(tmp_path / "colour.yaml"))


def test_cli_refuses_channels_in_and_oversized_palettes_in_one_line(tmp_path):
    config = tmp_path / "colour.yaml"
    config.write_text(json.dumps(TINY))
    one_line_error(arscale("study", "run", config, "--dry-run", "--out", tmp_path / "s",
                           "--set", "models.grids.0.sizes.0.channels_in=3"), 2, "models.grids.0.sizes.0.channels_in")
    one_line_error(arscale("study", "run", config, "--dry-run", "--out", tmp_path / "s",
                           "--set", "image_tokenizers.palette.model.clusters=20000"), 2,
                   "image_tokenizers.palette.model.clusters: 20,000 colours, but the 200 training images of 8×8 have "
                   "at most 12,800 pixels")
    one_line_error(arscale("study", "run", config, "--dry-run", "--out", tmp_path / "s",
                           "--set", "image_tokenizers.palette.steps=100"), 2,
                   "image_tokenizers.palette.steps: a palette is fitted by k-means")
    assert not (tmp_path / "s").exists()


@pytest.fixture(scope="module")
def study(tmp_path_factory, ray_local):
    out = tmp_path_factory.mktemp("colour-study")
    config = out.parent / "colour-tiny.yaml"
    config.write_text(json.dumps(TINY))
    return out, run_study(colour_config(), config, out)


@pytest.mark.slow
def test_a_colour_study_trains_pixelcnn_on_rgb_and_a_transformer_on_palette_codes(study):
    out, outcomes = study
    assert {o.state for o in outcomes.values()} == {"succeeded"}
    pixels = step_dir(out, "shards-pixels") / "val"
    assert len(load_token_stream(pixels)) == 416 * 8 * 8 * 3  # all of the test split: both photos
    assert {n_bytes for _, _, n_bytes in iter_rows_with_bytes(pixels)} == {8 * 8 * 3}  # H·W·C: bits per dimension
    palette = load_token_stream(step_dir(out, "shards-palette") / "val")
    assert len(palette) == 416 * 8 * 8 and palette.max() < 16
    runs = {r["stream"]: r for r in (json.loads((step_dir(out, n) / "eval.json").read_text())
                                     for n in outcomes if n.startswith("eval-"))}
    assert runs["pixels"]["config"]["channels_in"] == 3 and runs["pixels"]["seq_len"] == 192
    assert 0 < runs["pixels"]["bits_per_dim"] < 8 and runs["pixels"]["mse"] == 0
    assert runs["pixels"]["bits_per_image"] == pytest.approx(runs["pixels"]["bits_per_dim"] * 192)
    # a palette code stands for a pixel's three values: bits/dim is per value, as the pixels' is
    assert runs["palette"]["bits_per_image"] == pytest.approx(runs["palette"]["bits_per_dim"] * 192)
    assert 0 < runs["palette"]["mse"] < 0.05 and runs["palette"]["codebook_usage"] > 0.25
    report = (out / "report" / "report.md").read_text()
    assert "| palette | 64 | 16 |" in report and "| pixels | 192 | 256 |" in report
    for png in ("reconstructions-palette.png", *(p.name for p in (out / "report").glob("samples-*.png"))):
        image = np.asarray(Image.open(out / "report" / png))
        assert image.ndim == 3 and image.shape[-1] == 3 and f"]({png})" in report  # RGB, shown in the report
    assert len(list((out / "report").glob("samples-*.png"))) == 2
