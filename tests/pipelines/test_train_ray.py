"""The training step on Ray Train: DeepSpeed data parallelism matches the single-process loop."""

import json
from pathlib import Path

import pytest

from armodels.train import TrainConfig, train_single_process
from pipelines.step import StepContext
from pipelines.steps.train import TrainStepConfig, train_model
from tests.support.processes import ListeningSockets
from tests.support.runs import assert_curves_agree


@pytest.mark.parametrize("zero_stage", [1])
def test_two_workers_follow_the_single_process_loss_curve(tmp_path, shards, ray_local, zero_stage):
    model = dict(vocab_size=320, seq_len=32, n_layer=1, n_head=2, n_embd=16)
    train = TrainConfig(tokens=16_000, batch_size=16, lr=5e-3, eval_points=1, eval_windows=8, log_every=1,
                        zero_stage=zero_stage)
    step = TrainStepConfig("dp", "transformer", model, train, num_workers=2)
    out = tmp_path / "ray"
    out.mkdir()
    with ListeningSockets() as sockets:  # the rendezvous of the two workers: on 127.0.0.1 only
        summary = train_model(step, StepContext("train-dp", out, {"shards": shards}))
    assert sockets.seen and not sockets.exposed, sockets.exposed
    single = train_single_process(step.run(shards), tmp_path / "single")

    assert summary["status"] == "ok" and single["status"] == "ok"
    ray_result = json.loads((out / "result.json").read_text())
    assert ray_result["workers"] == 2 and ray_result["tokens"] == single["tokens"]
    # Ray Train was told the run's metrics (its dashboard and Result show them): the last report is the run's end
    reported = summary["ray_train_metrics"]
    assert reported["tokens"] == ray_result["tokens"] and reported["status"] == "ok"
    assert reported["final_val_loss"] == pytest.approx(ray_result["final_val_loss"])
    curve = assert_curves_agree(out, tmp_path / "single")["train"]
    assert curve[-1]["loss"] < curve[0]["loss"] - 0.5
    assert (out / "model.safetensors").is_file() and (out / "run.json").is_file()


@pytest.mark.slow
def test_a_stopped_zero_run_resumes_from_the_object_store_on_a_new_machine(tmp_path, shards, ray_local, s3):
    """ZeRO-2 on two workers in a study kept in S3: stopped after a checkpoint, its local folder lost, run again: it
    resumes from the partitions every worker sent to the store, and ends on the single-process curve."""
    import shutil
    import threading

    from pipelines.errors import StepStopped
    from pipelines.storage import StudyStore
    from tests.support.processes import wait_for_checkpoint

    store = StudyStore(s3.uri("zero-ray"))
    model = dict(vocab_size=320, seq_len=32, n_layer=1, n_head=2, n_embd=16)
    train = TrainConfig(tokens=16_000, batch_size=16, lr=5e-3, eval_points=1, eval_windows=8, log_every=1,
                        zero_stage=2, checkpoints=10)
    step = TrainStepConfig("zs", "transformer", model, train, num_workers=2)

    def attempt(machine: str) -> Path:
        out = tmp_path / machine / "train-zs.tmp"
        out.mkdir(parents=True)
        train_model(step, StepContext("train-zs", out, {"shards": shards}, store=store))
        return out

    def stop_after_a_checkpoint() -> None:
        wait_for_checkpoint(tmp_path / "first", "train-zs.tmp/checkpoint/state.json", interval=0.01)
        (tmp_path / "first" / "STOP").write_text("")

    stopper = threading.Thread(target=stop_after_a_checkpoint)
    stopper.start()
    with pytest.raises(StepStopped, match="checkpoint is kept"):
        attempt("first")
    stopper.join()
    assert any(n.endswith("zero_pp_rank_1_mp_rank_00_optim_states.pt") for n in store.files("train-zs.tmp"))
    shutil.rmtree(tmp_path / "first")  # the machine is gone: only the store has the checkpoint

    out = attempt("second")
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "ok" and result["resumed_at_step"] and result["workers"] == 2
    single = train_single_process(step.run(shards), tmp_path / "single")
    assert result["tokens"] == single["tokens"]
    assert_curves_agree(out, tmp_path / "single", kinds=("train", "val"))
    assert not store.exists("train-zs.tmp/checkpoint")
