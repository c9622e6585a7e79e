"""The training loop in one process (no Ray): real DeepSpeed on real shards."""

import json
import math

import numpy as np
import pytest
import torch

from armodels.data import TokenWindows
from armodels.evaluate import evaluate_loss
from armodels.shards import load_token_stream
from armodels.train import TrainConfig, TrainRun, load_model, lr_multiplier, train_single_process


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
