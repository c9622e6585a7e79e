"""`arscale tokenizer train char|word` as a user runs it: a tokenizer folder of the kind asked for, and its coverage
printed (its bad inputs are in test_cli_bad_input.py)."""

import json

import pytest

from armodels.char_word import CharWordTokenizer, load_text_tokenizer
from armodels.packaged_text import STDLIB
from tests.support.cli import arscale


@pytest.mark.parametrize("level, vocab, unit", [("char", 40, "characters"), ("word", 3000, "word pieces")])
def test_train_prints_the_coverage_and_writes_a_tokenizer_of_that_kind(tmp_path, level, vocab, unit):
    r = arscale("tokenizer", "train", level, "--input", STDLIB / "json", STDLIB / "email", "--vocab-size", vocab,
                "--out", tmp_path / "tok")
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "tok" / "meta.json").read_text())
    assert meta["level"] == level and meta["vocab_size"] == vocab and 0.5 < meta["coverage"] < 1
    assert meta["training"]["inputs"] == [str(STDLIB / "json"), str(STDLIB / "email")]
    first, coverage = r.stdout.splitlines()
    assert first.startswith(f"{level}-level tokenizer with {vocab} tokens, trained on ")
    assert coverage.startswith(f"coverage: {meta['coverage']:.2%} of its {meta['training']['units']:,} {unit} "
                               f"({meta['byte_coverage']:.2%} of bytes); ")
    tokenizer = load_text_tokenizer(tmp_path / "tok")
    assert isinstance(tokenizer, CharWordTokenizer) and tokenizer.level == level
    assert sorted(p.name for p in (tmp_path / "tok").iterdir()) == ["meta.json", "tokenizer.json"]


def test_shards_of_a_char_tokenizer_detokenize_and_verify_says_what_is_unknown(tmp_path, capsys):
    """The bulk tokenizer and `detokenize` load a char or word folder as they load BPE's (in this process: no Ray)."""
    from pipelines.cli import main
    from pipelines.errors import RunFailure
    from pipelines.tokenization.bpe_training import train_char_word_on_corpus
    from pipelines.tokenization.corpus_to_shards import TokenizeSettings, tokenize_corpus

    settings = TokenizeSettings((str(STDLIB / "json"),), shard_tokens=20_000)
    train_char_word_on_corpus("char", settings, 1000, tmp_path / "full", sample_bytes=10**8)
    manifest = tokenize_corpus(tmp_path / "full", tmp_path / "shards", settings, use_ray=False, verify=True,
                               log=lambda line: None)
    assert manifest.tokens == sum(len(p.read_text(encoding="utf-8")) for p in (STDLIB / "json").glob("*.py"))
    assert main(["detokenize", str(tmp_path / "shards"), "--out", str(tmp_path / "docs"), "--files"]) == 0
    assert sorted(p.read_bytes() for p in (tmp_path / "docs").iterdir()) == sorted(
        p.read_bytes() for p in (STDLIB / "json").glob("*.py"))
    train_char_word_on_corpus("char", settings, 20, tmp_path / "small", sample_bytes=10**8)
    with pytest.raises(RunFailure, match="not in the tokenizer's vocabulary: --verify needs a vocabulary"):
        tokenize_corpus(tmp_path / "small", tmp_path / "lossy", settings, use_ray=False, verify=True,
                        log=lambda line: None)
