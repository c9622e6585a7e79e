"""Planning a study from its config alone: no model is built and no data read, so a dry run of models far larger
than this machine's memory answers with their sizes."""

from __future__ import annotations

import pytest
import torch

from armodels.image_tokenizer import KINDS, code_stream_shape, make_config
from pipelines import cli

HUGE = """name: huge
models:
  seq_len: 2048
  grids:
    - family: transformer
      sizes: [{n_layer: 64, n_embd: 16384, n_head: 128}, {n_layer: 2, n_embd: 64, n_head: 2}]
"""


def test_dry_run_of_a_transformer_too_large_to_build(tmp_path, capsys):
    """64 layers 16,384 wide: 206G parameters, 824 GB in fp32 (building it would exhaust the memory)."""
    config = tmp_path / "huge.yaml"
    config.write_text(HUGE)
    assert cli.main(["study", "run", str(config), "--dry-run", "--out", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "train-transformer-206G-" in out and "transformer, 206G params (non-emb)" in out
    assert "train-transformer-98.9k-" in out
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("kind, settings", [("vqvae", {"codebook_size": 64, "downsample": 1}),
                                            ("fsq", {"levels": [4, 3], "downsample": 3}), ("fsq", {})])
def test_code_stream_shape_builds_no_autoencoder(monkeypatch, kind, settings):
    model = KINDS[kind][1](make_config(kind, settings))
    expected = model.codebook_size, model.grid_shape(28, 20)

    def no_building(*args, **kwargs):
        raise AssertionError("code_stream_shape built an autoencoder")

    monkeypatch.setattr(torch.nn.Module, "__init__", no_building)
    assert code_stream_shape(kind, settings, (28, 20, 1)) == expected
