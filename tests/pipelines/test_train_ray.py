"""The training step on Ray Train: DeepSpeed data parallelism matches the single-process loop."""

import json

import pytest

from armodels.train import TrainConfig, train_single_process
from pipelines.step import StepContext
from pipelines.steps.train import TrainStepConfig, train_model
from tests.support.runs import assert_curves_agree


@pytest.mark.parametrize("zero_stage", [1])
def test_two_workers_follow_the_single_process_loss_curve(tmp_path, shards, ray_local, zero_stage):
    model = dict(vocab_size=320, seq_len=32, n_layer=1, n_head=2, n_embd=16)
    train = TrainConfig(tokens=16_000, batch_size=16, lr=5e-3, eval_points=1, eval_windows=8, log_every=1,
                        zero_stage=zero_stage)
    step = TrainStepConfig("dp", "transformer", model, train, num_workers=2)
    out = tmp_path / "ray"
    out.mkdir()
    summary = train_model(step, StepContext("train-dp", out, {"shards": shards}))
    single = train_single_process(step.run(shards), tmp_path / "single")

    assert summary["status"] == "ok" and single["status"] == "ok"
    ray_result = json.loads((out / "result.json").read_text())
    assert ray_result["workers"] == 2 and ray_result["tokens"] == single["tokens"]
    curve = assert_curves_agree(out, tmp_path / "single")["train"]
    assert curve[-1]["loss"] < curve[0]["loss"] - 0.5
    assert (out / "model.safetensors").is_file() and (out / "run.json").is_file()
