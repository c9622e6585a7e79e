"""Fixtures of the fault tests."""

from __future__ import annotations

import json

import pytest

from armodels.train import TrainConfig
from pipelines.steps.train import TrainStepConfig
from tests.support.cli import ARSCALE


@pytest.fixture
def arscale_train(tmp_path, shards):
    """`arscale train` (one process, no Ray) of a 2-layer transformer on the shared shards: writes its run config
    for a TrainConfig to tmp_path/run.json and returns the command, whose output folder is tmp_path/out."""

    def command(train: TrainConfig) -> list[str]:
        model = dict(vocab_size=320, seq_len=32, n_layer=2, n_head=2, n_embd=32)  # 144 KB of fp32 weights
        (tmp_path / "run.json").write_text(json.dumps(TrainStepConfig("t", "transformer", model, train)
                                                      .run(shards).to_dict()))
        return [*ARSCALE, "train", "--config", str(tmp_path / "run.json"), "--out", str(tmp_path / "out")]

    return command

