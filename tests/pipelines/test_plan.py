"""Planning a study from its config alone: no model is built and no data read, so a dry run of models far larger
than this machine's memory answers with their sizes."""

from __future__ import annotations

import pytest
import torch

from armodels.image_tokenizer import KINDS, code_stream_shape, make_config
from pipelines import cli
from pipelines.config import StudyConfig, load_config
from pipelines.errors import UserError
from pipelines.plan import build_steps, train_configs
from pipelines.step import topological_order

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
                                            ("fsq", {"levels": [4, 3], "downsample": 3}), ("fsq", {}),
                                            ("lfq", {"bits": 6, "downsample": 1}), ("lfq", {})])
def test_code_stream_shape_builds_no_autoencoder(monkeypatch, kind, settings):
    model = KINDS[kind][1](make_config(kind, settings))
    expected = model.codebook_size, model.grid_shape(28, 20)

    def no_building(*args, **kwargs):
        raise AssertionError("code_stream_shape built an autoencoder")

    monkeypatch.setattr(torch.nn.Module, "__init__", no_building)
    assert code_stream_shape(kind, settings, (28, 20, 1)) == expected


def test_an_lfq_stream_is_planned_beside_the_others_without_changing_their_hashes():
    """`lfq` as an image tokenizer and a grid's stream: its tokenizer and shard steps, models sized to its codes, and
    the other streams' steps keep their hashes."""
    cfg, _ = load_config("images-tiny")
    data = cfg.model_dump(exclude_unset=True)
    data["images"]["data"] = "digits"
    base = StudyConfig.model_validate(data)
    data["image_tokenizers"]["lfq"] = {"steps": 300, "model": {"bits": 6, "hidden": 32}}
    data["models"]["grids"].append({"family": "transformer", "stream": "lfq",
                                    "sizes": [{"n_layer": 1, "n_embd": 8, "n_head": 2}]})
    with_lfq = StudyConfig.model_validate(data)
    before = {s.name: s.hash for s in topological_order(build_steps(base))}
    after = {s.name: s.hash for s in topological_order(build_steps(with_lfq))}
    assert {"tokenizer-lfq", "shards-lfq"} <= set(after) - set(before)
    assert {n for n in before if before[n] != after[n]} == {"fit", "report"}  # they take the new runs too
    lfq_runs = [tc for tc in train_configs(with_lfq) if tc.name.startswith("lfq-")]
    assert len(lfq_runs) == 1 and lfq_runs[0].model["vocab_size"] == 64
    assert lfq_runs[0].model["seq_len"] == 2 * 2  # 8×8 images halved twice (downsample 2)

    data["image_tokenizers"]["lfq"]["model"]["bits"] = 20
    with pytest.raises(UserError, match=r"^image_tokenizers\.lfq\.model: bits must be an integer from 1 to 19"):
        train_configs(StudyConfig.model_validate(data))
    data["image_tokenizers"].pop("lfq")
    with pytest.raises(ValueError, match="needs image_tokenizers.lfq"):
        StudyConfig.model_validate(data)
