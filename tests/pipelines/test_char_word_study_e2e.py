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


def test_one_study_compares_bpe_char_and_word_tokens_in_bits_per_byte(tmp_path, ray_local):
    """BPE (the study's tokenizer), char and word streams (text_tokenizers) in one study: each grid reads its own
    stream's shards, the report's Tokenizers section gives each stream's bits/byte and coverage, and the laws are
    compared at matched compute in bits/byte, each stream's nats/token scaled by its own measured bits/byte ratio."""
    raw = study_config("bpe", 300)
    raw.update(name="tokenizers-e2e", text_tokenizers={"char": {"vocab_size": 64, "train_bytes": 100_000},
                                                       "word": {"vocab_size": 1000, "train_bytes": 100_000}})
    sizes = [{"n_layer": 1, "n_embd": 8, "n_head": 2}, {"n_layer": 1, "n_embd": 16, "n_head": 2},
             {"n_layer": 1, "n_embd": 24, "n_head": 2}]
    raw["models"]["grids"] = [{"family": "transformer", "stream": s, "label": s if s != "text" else "bpe",
                               "sizes": sizes} for s in ("text", "char", "word")]
    raw["training"] = {**raw["training"], "tokens": None, "tokens_per_param": 2}
    raw["fit"] = {"bootstrap": 20, "holdout_top": 0}
    cfg = StudyConfig.model_validate(raw)
    outcomes = run_study(cfg, tmp_path / "tokenizers.yaml", tmp_path / "study")
    assert {o.state for o in outcomes.values()} == {"succeeded"}, outcomes
    out = tmp_path / "study"

    runs = pd.read_csv(out / "report" / "runs.csv")
    assert sorted(runs.groupby("series")["stream"].first().items()) == [("bpe", "text"), ("char", "char"),
                                                                        ("word", "word")]
    assert runs.groupby("series")["tokenizer"].first().to_dict() == {"bpe": "bpe", "char": "char", "word": "word"}
    vocab = runs.groupby("series")["vocab_size"].first().to_dict()
    assert vocab["char"] == 64 and vocab["word"] == 1000 and vocab["bpe"] == 300

    fits = json.loads((out / "report" / "fit.json").read_text())
    comparison = fits["comparison"]
    assert comparison["unit"] == "bits/byte"
    for series, at in comparison["series"].items():  # the law's nats/token, scaled by the stream's bits per nat
        mine = runs[(runs["series"] == series) & (runs["status"] == "ok")]
        ratio = (mine["bits_per_byte"] / mine["loss"]).median()
        assert 0 < at["loss"] < 8 and at["low"] <= at["loss"] <= at["high"] or math.isnan(at["low"])
        assert ratio > 0 and math.isfinite(at["loss"] / ratio)

    report = (out / "report" / "report.md").read_text()
    assert "tokenizer: text: byte-level BPE, vocab 300; char: character-level, vocab 64; word: word-level, " \
           "vocab 1000" in report
    section = report.split("## Tokenizers")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| stream")]
    assert [r.split(" | ")[0] for r in rows] == ["| text", "| char", "| word"]
    for row in rows:  # each stream's best bits/byte, and beside it the price of its unknown bytes at 8 bits each
        cells = row.rstrip(" |").split(" | ")
        best = runs[runs["stream"] == cells[0][2:]].sort_values("bits_per_byte").iloc[0]
        assert float(cells[7]) == pytest.approx(best["bits_per_byte"], abs=1e-4)
        unknown = 0.0 if cells[0] == "| text" else best["unknown_byte_share"]
        assert float(cells[8]) == pytest.approx(best["bits_per_byte"] + 8 * unknown, abs=1e-4)
    per_token = {r.split(" | ")[0][2:]: float(r.split(" | ")[3]) for r in rows}
    assert 0.9 < per_token["char"] < 1.2 < per_token["text"] and per_token["char"] < per_token["word"]
    assert "loss (bits/byte)" in report.split("## Families at matched compute")[1]
