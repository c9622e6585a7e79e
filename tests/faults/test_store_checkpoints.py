"""Checkpoints of a study kept in an object store (real S3: moto): each checkpoint is a generation of its own and
the pointer moves only when one is whole, so a node that dies mid-push leaves the previous generation to resume
from; a damaged generation falls back to the one before; and a store outage during a push is retried and never
fails a run that can keep training."""

from functools import partial

import pytest

from armodels.checkpoint import NAME as CHECKPOINT
from armodels.checkpoint import load_checkpoint
from armodels.train import TrainConfig, TrainRun, train, train_single_process
from pipelines.steps import train as train_step
from pipelines.steps.train import _pull_checkpoint, _push_checkpoint_files, _push_checkpoint_state
from pipelines.storage import StudyStore

MODEL = {"vocab_size": 320, "seq_len": 32, "n_layer": 1, "n_head": 2, "n_embd": 16}


class Died(Exception):
    """The node's death, mid-push."""


def make_run(shards) -> TrainRun:
    return TrainRun("transformer", MODEL, TrainConfig(tokens=6_000, batch_size=8, checkpoints=4, eval_points=1,
                                                      eval_windows=2), str(shards / "train"), str(shards / "val"),
                    name="run")


def test_a_node_dying_mid_push_leaves_the_previous_generation_to_resume_from(tmp_path, shards, s3, capsys):
    run = make_run(shards)
    whole = train_single_process(run, tmp_path / "whole")  # an unbroken run (and the process group of one)
    store = StudyStore(s3.uri("generations"))
    first = tmp_path / "node-a" / "run"
    pushed = []

    def push_then_die_on_the_third(folder, names, step):
        pushed.append(step)
        if len(pushed) == 3:  # half of the third checkpoint reaches the store, then the node dies
            store.push(folder / names[0], f"run/{CHECKPOINT}/gen-{step:09d}/{names[0]}")
            raise Died
        _push_checkpoint_files(store, first, folder, names, step)

    with pytest.raises(Died):
        train(run, first, on_checkpoint=partial(_push_checkpoint_state, store, first),
              on_checkpoint_files=push_then_die_on_the_third)
    assert store.read_json(f"run/{CHECKPOINT}/state.json")["step"] == pushed[1]  # the pointer stayed on a whole one

    # the newest whole generation is damaged too (a torn file): a new node falls back to the one before
    second = tmp_path / "node-b" / "run"
    second.mkdir(parents=True)
    damaged = f"run/{CHECKPOINT}/gen-{pushed[1]:09d}/model.safetensors"
    store.write_text(damaged, "torn")
    _pull_checkpoint(store, second)
    assert f"warning: the checkpoint run/{CHECKPOINT}/gen-{pushed[1]:09d} in {store.shown} is damaged " \
           "(model.safetensors); trying the one before" in capsys.readouterr().out
    assert load_checkpoint(second).step == pushed[0]

    # and resumes from it to where the unbroken run ends
    resumed = train(run, second, on_checkpoint=partial(_push_checkpoint_state, store, second),
                    on_checkpoint_files=partial(_push_checkpoint_files, store, second))
    assert resumed["resumed_at_step"] == pushed[0] and resumed["tokens"] == whole["tokens"]
    assert resumed["final_val_loss"] == pytest.approx(whole["final_val_loss"], rel=1e-6)


def test_a_store_outage_during_pushes_never_fails_the_run(tmp_path, shards, s3, capsys, monkeypatch):
    """The store fails every push at first (its bucket is not there: the requests fail at once), then comes back:
    each failed push is retried with backoff, the run goes on, and the first checkpoint after the outage is
    whole in the store."""
    from pyarrow import fs

    monkeypatch.setattr(train_step, "STORE_RETRY_WAITS_S", (0.01, 0.02))
    run = make_run(shards)
    train_single_process(make_run(shards), tmp_path / "group")  # the process group of one
    store = StudyStore(s3.uri("run").replace("arscale-test", "outage"))
    out, pushed = tmp_path / "run", []

    def push_files(folder, names, step):
        pushed.append(step)
        if len(pushed) == 3:  # the store is back
            fs.S3FileSystem(endpoint_override=s3.url, allow_bucket_creation=True).create_dir("outage")
        _push_checkpoint_files(store, out, folder, names, step)

    result = train(run, out, on_checkpoint=partial(_push_checkpoint_state, store, out), on_checkpoint_files=push_files)
    assert result["status"] == "ok" and result["tokens"] == run.tokens_seen
    assert "training goes on, and the store keeps its last whole checkpoint" in capsys.readouterr().out
    assert store.read_json(f"run/{CHECKPOINT}/state.json")["step"] == pushed[-1]
