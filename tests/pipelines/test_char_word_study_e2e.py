"""A study with a character-level and one with a word-level tokenizer, end to end on real Ray, DeepSpeed and MLflow:
the tokenizer folder is of the kind asked for, and the report's runs have bits per byte over the original text's
bytes, beside the share of them that were unknown tokens."""

import json
import math

import pandas as pd
import pytest

from armodels.char_word import CharWordTokenizer, load_text_tokenizer
from pipelines.cli import main
from pipelines.config import StudyConfig
from pipelines.study import run_study
from tests.support.studies import step_dir

pytestmark = pytest.mark.slow


def study_config(kind: str, vocab_size: int) -> dict:
    """One 1-layer transformer on a slice of the standard library: the smallest study that has a report."""
    return {
        "name": f"{kind}-e2e",
        "corpus": {"source": "python-stdlib", "max_bytes": 300_000, "val_fraction": 0.1},
        "tokenizer": {"kind": kind, "vocab_size": vocab_size, "train_bytes": 100_000},
        "shards": {"shard_tokens": 100_000},
        "models": {"seq_len": 32, "grids": [{"family": "transformer",
                                             "sizes": [{"n_layer": 1, "n_embd": 16, "n_head": 2}]}]},
        "training": {"tokens": 20_000, "batch_size": 16, "lr": 0.005, "eval_points": 1, "eval_windows": 4,
                     "num_workers": 1, "checkpoints": 0},
        "evaluation": {"max_tokens": 2000, "samples": 1},
        "fit": {"bootstrap": 10, "holdout_top": 0},
    }


@pytest.mark.parametrize("kind, vocab_size", [("char", 64), ("word", 2000)])
def test_a_study_reports_bits_per_byte_of_a_char_or_word_tokenizer(tmp_path, ray_local, capsys, kind, vocab_size):
    cfg = StudyConfig.model_validate(study_config(kind, vocab_size))
    outcomes = run_study(cfg, tmp_path / f"{kind}.yaml", tmp_path / "study")
    assert {o.state for o in outcomes.values()} == {"succeeded"}, outcomes
    out = tmp_path / "study"

    tokenizer = load_text_tokenizer(step_dir(out, "tokenizer"))
    assert isinstance(tokenizer, CharWordTokenizer) and tokenizer.level == kind
    assert tokenizer.vocab_size == vocab_size and 0.5 < tokenizer.meta.coverage < 1
    assert outcomes["tokenizer"].summary["coverage"] == tokenizer.meta.coverage

    runs = pd.read_csv(out / "report" / "runs.csv")
    assert len(runs) == 1 and runs["status"].tolist() == ["ok"] and runs["tokenizer"].tolist() == [kind]
    run = runs.iloc[0]
    # coverage of the validation split is below the training sample's (words more so: new identifiers)
    assert 0 < run["bits_per_byte"] < 8 and 0 < run["unknown_byte_share"] < 1
    assert run["tokenizer_coverage"] == pytest.approx(tokenizer.meta.coverage)
    evaluation = next(out.glob("eval-*/eval.json")).parent
    record = json.loads((evaluation / "eval.json").read_text())
    # bits per byte: the model's bits over the bytes of the text the scored tokens stand for, unknown ones included
    bits = record["eval"]["bits_per_token"] * record["eval"]["tokens"]
    assert math.isclose(record["bits_per_byte"], bits / record["eval"]["bytes"], rel_tol=1e-3)
    assert record["eval"]["tokens"] == 2000 // 32 * 32 and record["eval"]["bytes"] > 0
    assert len(json.loads((evaluation / "samples.json").read_text())["samples"]) == 1

    capsys.readouterr()
    train = next(out.glob("train-*/run.json")).parent
    assert main(["sample", str(train), "--prompt", "def ", "--max-tokens", "8", "--seed", "1"]) == 0
    header, text = capsys.readouterr().out.splitlines()[:2]
    assert header.startswith("=== sample 1 of 1") and text.startswith("def ")
