"""The training loop in one process (no Ray): real DeepSpeed on real shards."""

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from armodels.data import TokenWindows
from armodels.evaluate import evaluate_loss
from armodels.shards import load_token_stream
from armodels.train import TrainConfig, TrainRun, branch_folder, load_model, lr_multiplier, train_single_process


def make_run(shards, family="transformer", model=None, **train) -> TrainRun:
    options = dict(tokens=24_000, batch_size=16, lr=5e-3, eval_points=2, eval_windows=8, log_every=5)
    model = dict(n_layer=1, n_head=2, n_embd=16) if model is None else model
    return TrainRun(family, {"vocab_size": 320, "seq_len": 32, **model}, TrainConfig(**{**options, **train}),
                    str(shards / "train"), str(shards / "val"), name="t")


def test_training_lowers_loss_and_saves_a_loadable_model(tmp_path, shards, tokenizer):
    run = make_run(shards)
    seen = []
    result = train_single_process(run, tmp_path, on_metrics=seen.append)
    assert result["status"] == "ok" and result["tokens"] == run.tokens_seen == 47 * 16 * 32
    assert result["final_train_loss"] < result["initial_loss"] - 1.0
    assert math.log(320) - 0.3 < result["initial_loss"] < math.log(320) + 0.3  # starts near uniform
    curve = json.loads((tmp_path / "curve.json").read_text())
    assert [p["tokens"] for p in curve["train"]] == sorted(p["tokens"] for p in curve["train"])
    assert len(curve["val"]) == 2 and any("val_loss" in m for m in seen)

    model = load_model(tmp_path)
    val = TokenWindows(load_token_stream(shards / "val"), 32)
    ev = evaluate_loss(model, val, token_bytes=tokenizer.token_bytes(), max_windows=8)
    assert ev.nats_per_token == pytest.approx(curve["val"][-1]["loss"], rel=1e-4)
    assert ev.bits_per_byte == pytest.approx(ev.nats_per_token / math.log(2) * ev.tokens / ev.bytes)


def test_a_diverging_run_stops_and_says_why(tmp_path, shards):
    result = train_single_process(make_run(shards, lr=1e4), tmp_path)
    assert result["status"] == "diverged"
    assert "loss became nan" in result["reason"] and result["steps"] < 10
    assert not (tmp_path / "model.safetensors").exists()
    assert json.loads((tmp_path / "result.json").read_text())["status"] == "diverged"


def test_weights_are_loaded_without_pickle(tmp_path):
    (tmp_path / "model.json").write_text(json.dumps({"family": "transformer",
                                                     "config": {"vocab_size": 8, "seq_len": 4}}))
    torch.save({"evil": 1}, tmp_path / "model.safetensors")  # a pickle where safetensors belongs
    with pytest.raises(ValueError, match="not a valid weights file"):
        load_model(tmp_path)


def test_learning_rate_schedule_warms_up_then_decays():
    lrs = [lr_multiplier(s, 100, 0.1, 0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lrs[-1] == pytest.approx(0.1, abs=1e-3)


@pytest.mark.parametrize("shape, at_half", [("linear", 0.55), ("cosine", 0.55), ("1-sqrt", 1 - math.sqrt(0.5) * 0.9)])
def test_wsd_holds_the_peak_then_cools_down_over_its_last_steps(shape, at_half):
    """100 steps, 10 of warmup, the last 20 decay to 0.1 of the peak along `shape` (half-way: step 89)."""
    lrs = [lr_multiplier(s, 100, 0.1, 0.1, "wsd", 0.2, shape) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10:80] == [1.0] * 70  # the stable phase
    assert all(a > b for a, b in zip(lrs[79:], lrs[80:]))  # the cooldown falls at every step
    assert lrs[89] == pytest.approx(0.1 + 0.9 * {"linear": 0.5, "cosine": 0.5}.get(shape, 1 - math.sqrt(0.5)))
    assert lrs[89] == pytest.approx(at_half) and lrs[-1] == pytest.approx(0.1)  # the minimum at the last step
    assert [lr_multiplier(s, 100, 0.1, 0.1, "constant") for s in range(9, 100)] == [1.0] * 91


@pytest.mark.parametrize("bad, message", [
    (dict(schedule="step"), "schedule must be one of cosine, wsd, constant"),
    (dict(schedule="wsd", decay_fraction=1.0), "decay_fraction must be between 0 and 1"),
    (dict(schedule="wsd", decay_shape="sqrt"), "decay_shape must be one of linear, cosine, 1-sqrt"),
])
def test_a_bad_schedule_is_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(tokens=100, **bad)


def test_a_wsd_run_follows_its_schedule_and_logs_it(tmp_path, shards):
    run = make_run(shards, schedule="wsd", decay_fraction=0.25, decay_shape="linear", log_every=1)
    result = train_single_process(run, tmp_path)
    assert result["status"] == "ok"
    logged = [p["lr"] for p in json.loads((tmp_path / "curve.json").read_text())["train"]]
    planned = [run.train.lr * lr_multiplier(s, run.steps, run.warmup_fraction, 0.1, "wsd", 0.25, "linear")
               for s in range(run.steps)]
    assert logged == pytest.approx(planned) and len(logged) == run.steps == 47
    assert logged.count(run.train.lr) == 47 - 1 - 12  # the peak but at the first step (a 2-step warmup) and the last 12
    # logged every 5 steps, each point also holds the mean loss of the steps since the point before
    every_step = [p["loss"] for p in json.loads((tmp_path / "curve.json").read_text())["train"]]
    assert train_single_process(replace(run, train=replace(run.train, log_every=5)), tmp_path / "b")["status"] == "ok"
    points = json.loads((tmp_path / "b" / "curve.json").read_text())["train"]
    assert [(p["mean_from"], p["step"]) for p in points[:3]] == [(0, 0), (1, 5), (6, 10)] and points[-1]["step"] == 46
    for p in points:
        assert p["loss_mean"] == pytest.approx(np.mean(every_step[p["mean_from"]:p["step"] + 1]), rel=1e-5)


def test_a_cooldown_branch_off_a_trunk_equals_a_straight_wsd_run(tmp_path, shards):
    """The trunk trains at the peak lr and keeps its state after step 35; the branch starts there and cools down
    over its last 12 steps: the same data, lr curve and losses as one WSD run of the branch's 47 steps."""
    wsd = dict(schedule="wsd", decay_fraction=0.25, warmup_tokens=2 * 16 * 32, checkpoints=0, log_every=1)
    straight = make_run(shards, **wsd)
    trunk = make_run(shards, tokens=35 * 16 * 32, schedule="constant", warmup_tokens=2 * 16 * 32, checkpoints=0,
                     branch_points=(35,), log_every=1)
    assert straight.steps == 47 and trunk.steps == 35
    assert train_single_process(trunk, tmp_path / "trunk")["status"] == "ok"
    assert (branch_folder(tmp_path / "trunk", 35) / "checkpoint" / "state.json").is_file()  # kept after the end
    branch = replace(straight, start_from=str(branch_folder(tmp_path / "trunk", 35)))
    branched = train_single_process(branch, tmp_path / "branch")
    whole = train_single_process(straight, tmp_path / "straight")
    assert branched["resumed_at_step"] == 35 and branched["steps"] == whole["steps"] == 47
    curves = [json.loads((tmp_path / d / "curve.json").read_text())["train"] for d in ("branch", "straight")]
    assert [p["step"] for p in curves[0]] == list(range(47)) == [p["step"] for p in curves[1]]
    assert [p["lr"] for p in curves[0]] == pytest.approx([p["lr"] for p in curves[1]], rel=1e-12)
    assert [p["loss"] for p in curves[0]] == pytest.approx([p["loss"] for p in curves[1]], rel=1e-5)
    assert branched["final_val_loss"] == pytest.approx(whole["final_val_loss"], rel=1e-5)


def test_a_branch_stopped_mid_cooldown_resumes_from_its_own_checkpoint(tmp_path, shards):
    wsd = dict(schedule="wsd", decay_fraction=0.25, warmup_tokens=2 * 16 * 32, log_every=1)
    trunk = make_run(shards, tokens=35 * 16 * 32, schedule="constant", warmup_tokens=2 * 16 * 32, checkpoints=0,
                     branch_points=(35,), log_every=1)
    train_single_process(trunk, tmp_path / "trunk")
    branch = replace(make_run(shards, checkpoints=0, **wsd), start_from=str(branch_folder(tmp_path / "trunk", 35)))
    calls = iter(range(1000))
    stopped = train_single_process(branch, tmp_path / "branch", should_stop=lambda: next(calls) >= 4)
    assert stopped["status"] == "interrupted" and stopped["steps"] == 40  # 5 steps into its cooldown
    resumed = train_single_process(branch, tmp_path / "branch")
    assert resumed["resumed_at_step"] == 40 and resumed["status"] == "ok"  # its own checkpoint, not the trunk's
    whole = train_single_process(make_run(shards, checkpoints=0, **wsd), tmp_path / "straight")
    assert resumed["final_val_loss"] == pytest.approx(whole["final_val_loss"], rel=1e-5)


def test_a_branch_must_match_its_trunk(tmp_path, shards):
    trunk = make_run(shards, tokens=10 * 16 * 32, schedule="constant", branch_points=(5,), checkpoints=0)
    train_single_process(trunk, tmp_path / "trunk")
    start = str(branch_folder(tmp_path / "trunk", 5))
    other_lr = replace(make_run(shards, lr=1e-3, schedule="wsd"), start_from=start)
    with pytest.raises(ValueError, match=r"differs from the trunk it starts from .* in train\.lr"):
        train_single_process(other_lr, tmp_path / "other")
    with pytest.raises(ValueError, match="holds no checkpoint to start the branch"):
        train_single_process(replace(make_run(shards, schedule="wsd"), start_from=str(tmp_path)), tmp_path / "none")
    with pytest.raises(ValueError, match="branch_points must be steps ≥ 1"):
        TrainConfig(tokens=100, branch_points=(0, 3))


def test_batches_depend_only_on_the_step_not_the_worker_split():
    windows = TokenWindows(np.arange(10_000), seq_len=16, seed=3)
    x = windows.train_batch(5, 8)
    halves = [windows.train_batch(5, 8, offset=o, size=4) for o in (0, 4)]
    assert torch.equal(x, torch.cat(halves)) and x.shape == (8, 16)
    assert torch.equal(x[:, 1:], x[:, :-1] + 1)  # whole consecutive windows of the stream
    assert not torch.equal(x, windows.train_batch(6, 8))
    assert torch.equal(x, TokenWindows(np.arange(10_000), seq_len=16, seed=3).train_batch(5, 8))
    # every window is visited once per epoch
    seen = torch.cat([windows.train_batch(s, 8)[:, 0] for s in range(windows.n_windows // 8)])
    assert len(set(seen.tolist())) == len(seen)


@pytest.mark.parametrize("family, model", [
    ("rnn", dict(n_layer=1, n_embd=16, hidden=32)),
    ("wavenet", dict(channels=16, skip_channels=16, dilations=(1, 2, 4))),
    ("linear_attention", dict(n_layer=1, n_head=2, n_embd=16)),
])
def test_other_families_train_through_the_same_loop(tmp_path, shards, family, model):
    result = train_single_process(make_run(shards, family, model), tmp_path)
    assert result["status"] == "ok" and result["family"] == family
    assert result["final_train_loss"] < result["initial_loss"] - 0.5
    assert load_model(tmp_path).family == family


@pytest.mark.parametrize("family, model", [("histogram", {}), ("ngram", {"order": 2})])
def test_count_based_families_count_the_same_budget(tmp_path, shards, tokenizer, family, model):
    result = train_single_process(make_run(shards, family, model), tmp_path)
    assert result["status"] == "ok" and result["initial_loss"] == pytest.approx(math.log(320))
    loaded = load_model(tmp_path)
    assert loaded.counts.sum().item() == result["tokens"]  # every token of the budget counted once
    val = TokenWindows(load_token_stream(shards / "val"), 32)
    ev = evaluate_loss(loaded, val, max_windows=8)
    assert ev.nats_per_token == pytest.approx(result["final_val_loss"], rel=1e-4)
    assert ev.nats_per_token < math.log(320) - 1.0


def test_a_stopped_run_resumes_from_its_checkpoint_exactly(tmp_path, shards):
    """Stop after step 20 of 47, start again in the same folder: same tokens, same curve as one unbroken run."""
    run = make_run(shards, checkpoints=3)
    whole = train_single_process(run, tmp_path / "whole")
    assert not (tmp_path / "whole" / "checkpoint").exists()  # a finished run keeps no optimizer state

    calls = iter(range(1000))
    stopped = train_single_process(run, tmp_path / "split", should_stop=lambda: next(calls) >= 19)
    assert stopped["status"] == "interrupted" and stopped["steps"] == 20
    assert (tmp_path / "split" / "checkpoint" / "state.json").is_file()
    assert not (tmp_path / "split" / "model.safetensors").exists()

    resumed = train_single_process(run, tmp_path / "split")
    assert resumed["status"] == "ok" and resumed["resumed_at_step"] == 20
    assert resumed["tokens"] == whole["tokens"] and resumed["steps"] == whole["steps"]
    curves = [json.loads((tmp_path / d / "curve.json").read_text()) for d in ("whole", "split")]
    assert [p["step"] for p in curves[1]["train"]] == [p["step"] for p in curves[0]["train"]]  # none repeated
    for a, b in zip(curves[0]["train"] + curves[0]["val"], curves[1]["train"] + curves[1]["val"]):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
    assert resumed["final_val_loss"] == pytest.approx(whole["final_val_loss"], rel=1e-5)


def test_a_run_that_finished_is_not_trained_again_in_its_folder(tmp_path, shards):
    """Its worker died after the result was saved, or its step failed afterwards: the next attempt finds the result
    (finished work is kept); another run's result in the folder does not count."""
    run = make_run(shards, tokens=8_000)
    first = train_single_process(run, tmp_path)
    seen = []
    again = train_single_process(run, tmp_path, on_metrics=seen.append)
    assert again == first and seen == []  # not one step trained
    other = train_single_process(make_run(shards, tokens=8_000, lr=1e-3), tmp_path, on_metrics=seen.append)
    assert other["status"] == "ok" and other["run"] != first["run"] and seen


def test_a_damaged_checkpoint_is_refused_with_its_name(tmp_path, shards):
    run = make_run(shards, tokens=8_000)
    calls = iter(range(1000))
    train_single_process(run, tmp_path, should_stop=lambda: next(calls) >= 3)
    (tmp_path / "checkpoint" / "optimizer.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="optimizer.pt .*checksum"):
        train_single_process(run, tmp_path)


def test_a_pickled_payload_in_a_checkpoint_is_not_executed(tmp_path, shards):
    """A checkpoint whose optimizer file (checksum updated to match) holds a pickle that would run code."""
    from armodels.checkpoint import load_checkpoint
    from armodels.files import file_sha256

    run = make_run(shards, tokens=8_000)
    calls = iter(range(1000))
    train_single_process(run, tmp_path, should_stop=lambda: next(calls) >= 3)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    folder = tmp_path / "checkpoint"
    torch.save({"optimizer": Payload()}, folder / "optimizer.pt")
    state = json.loads((folder / "state.json").read_text())
    state["files"]["optimizer.pt"] = file_sha256(folder / "optimizer.pt")
    (folder / "state.json").write_text(json.dumps(state))
    with pytest.raises(ValueError, match="cannot be loaded safely"):
        load_checkpoint(tmp_path)
    assert not marker.exists()
