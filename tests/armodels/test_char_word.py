"""Character-level and word-level tokenizers (armodels.char_word) on real text: the json, email and logging packages of
the standard library (tests/conftest.py's stdlib_texts)."""

import json
from collections import Counter

import numpy as np
import pytest

from armodels.bpe import BPETokenizer
from armodels.char_word import (
    REPLACEMENT,
    UNK_ID,
    CharWordTokenizer,
    load_text_tokenizer,
    text_bytes_of_stream,
    train_char_word,
    units,
)
from armodels.shards import iter_rows_with_bytes, load_token_stream, read_manifest, tokenize_to_shards


@pytest.fixture(scope="module")
def full(stdlib_texts):
    """Every character and every word piece of the texts in the vocabulary (coverage 100%)."""
    return {level: train_char_word(level, stdlib_texts, 100_000) for level in ("char", "word")}


@pytest.fixture(scope="module")
def partial(stdlib_texts):
    """Vocabularies too small for the texts: 40 characters, 500 word pieces."""
    return {"char": train_char_word("char", stdlib_texts, 42), "word": train_char_word("word", stdlib_texts, 502)}


@pytest.mark.parametrize("level", ["char", "word"])
def test_full_coverage_round_trips_exactly(full, stdlib_texts, level):
    tokenizer = full[level]
    assert tokenizer.meta.coverage == tokenizer.meta.byte_coverage == 1.0
    ids = tokenizer.encode_batch(stdlib_texts)
    assert all(UNK_ID not in i for i in ids)
    assert [tokenizer.decode(i) for i in ids] == stdlib_texts
    assert [tokenizer.decode_bytes(i) for i in ids] == [t.encode("utf-8") for t in stdlib_texts]
    if level == "char":
        assert sum(map(len, ids)) == sum(map(len, stdlib_texts))  # a token per character
    else:  # a token per piece; pieces of a text laid end to end are the text
        assert sum(map(len, ids)) < sum(map(len, stdlib_texts)) / 2
        assert all("".join(units("word", t)) == t for t in stdlib_texts)


@pytest.mark.parametrize("level", ["char", "word"])
def test_unknown_units_decode_as_the_replacement_character(partial, stdlib_texts, level):
    tokenizer = partial[level]
    known = set(tokenizer.pieces)
    for text, ids in zip(stdlib_texts, tokenizer.encode_batch(stdlib_texts)):
        expected = [u if u in known else REPLACEMENT for u in units(level, text)]
        assert tokenizer.decode(ids) == "".join(expected)
        assert ids.count(UNK_ID) == expected.count(REPLACEMENT)
    assert UNK_ID in tokenizer.encode_batch(["ĉ日本"])[0]


@pytest.mark.parametrize("level", ["char", "word"])
def test_vocabulary_is_the_most_frequent_units_and_coverage_counts_them(partial, stdlib_texts, level):
    tokenizer = partial[level]
    counts = Counter(u for t in stdlib_texts for u in units(level, t))
    size = 40 if level == "char" else 500
    assert tokenizer.vocab_size == size + 2 and len(counts) > size
    assert tokenizer.pieces == sorted(counts, key=lambda u: (-counts[u], u))[:size]
    kept = set(tokenizer.pieces)
    total_bytes = sum(n * len(u.encode()) for u, n in counts.items())
    assert tokenizer.meta.coverage == pytest.approx(sum(counts[u] for u in kept) / sum(counts.values()))
    assert tokenizer.meta.byte_coverage == pytest.approx(sum(counts[u] * len(u.encode()) for u in kept) / total_bytes)
    assert 0.5 < tokenizer.meta.coverage < 1
    assert tokenizer.meta.training["units"] == sum(counts.values())
    assert tokenizer.meta.training["distinct_units"] == len(counts)


def test_a_vocabulary_is_a_ceiling_and_word_pieces_follow_the_regex(stdlib_texts):
    tokenizer = train_char_word("char", ["abcabca"], 1000)
    assert tokenizer.pieces == ["a", "b", "c"] and tokenizer.vocab_size == 5
    assert units("word", "def f(x):\n    return x_1 + é2") == [
        "def", " ", "f", "(", "x", ")", ":", "\n    ", "return", " ", "x_1", " ", "+", " ", "é2"]


@pytest.mark.parametrize("level", ["char", "word"])
def test_vocab_size_bounds_are_one_line_errors(level):
    with pytest.raises(ValueError, match=f"vocab_size 2 is too small: a {level}-level tokenizer needs at least 3"):
        train_char_word(level, ["abc"], 2)
    with pytest.raises(ValueError, match="is too large: use at most 1,000,000 tokens"):
        train_char_word(level, ["abc"], 10**7)
    with pytest.raises(ValueError, match="hold no text"):
        train_char_word(level, ["", ""], 10)
    assert train_char_word(level, ["abc"], 3).vocab_size == 3


@pytest.mark.parametrize("level", ["char", "word"])
def test_token_bytes_are_the_utf8_length_of_each_token(partial, full, stdlib_texts, level):
    for tokenizer in (partial[level], full[level]):
        lengths = tokenizer.token_bytes()
        assert len(lengths) == tokenizer.vocab_size and lengths[:2] == [0, 0]  # end-of-document and unknown
        assert lengths[2:] == [len(tokenizer.decode_bytes([i])) for i in range(2, tokenizer.vocab_size)]
    lengths = full[level].token_bytes()
    for text, ids in zip(stdlib_texts, full[level].encode_batch(stdlib_texts)):
        assert sum(lengths[i] for i in ids) == len(text.encode("utf-8"))
    multi = train_char_word(level, ["é中😀 x"], 10)
    assert [multi.token_bytes()[i] for i in multi.encode_batch(["é中😀"])[0]] == (
        [2, 3, 4] if level == "char" else [5, 4])


@pytest.mark.parametrize("level", ["char", "word"])
def test_saved_as_json_and_loaded_by_kind(full, tmp_path, tokenizer, stdlib_texts, level):
    full[level].save(tmp_path / level)
    assert sorted(p.name for p in (tmp_path / level).iterdir()) == ["meta.json", "tokenizer.json"]
    saved = json.loads((tmp_path / level / "tokenizer.json").read_text(encoding="utf-8"))
    assert saved["level"] == level and saved["vocab"] == full[level].pieces
    assert json.loads((tmp_path / level / "meta.json").read_text())["sha256"] == full[level].meta.sha256
    loaded = load_text_tokenizer(tmp_path / level)
    assert isinstance(loaded, CharWordTokenizer) and loaded.meta == full[level].meta
    assert loaded.encode_batch(stdlib_texts[:5]) == full[level].encode_batch(stdlib_texts[:5])
    tokenizer.save(tmp_path / "bpe")  # a BPE folder loads as before
    assert isinstance(load_text_tokenizer(tmp_path / "bpe"), BPETokenizer)


def test_a_changed_or_broken_folder_is_a_one_line_error_naming_the_file(full, tmp_path):
    folder = tmp_path / "char"
    full["char"].save(folder)
    description = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    description["vocab"][0], description["vocab"][1] = description["vocab"][1], description["vocab"][0]
    (folder / "tokenizer.json").write_text(json.dumps(description), encoding="utf-8")
    with pytest.raises(ValueError, match=r"tokenizer.json is not the tokenizer its meta.json records"):
        load_text_tokenizer(folder)
    description["pattern"] = "(a+)+$"
    (folder / "tokenizer.json").write_text(json.dumps(description), encoding="utf-8")
    with pytest.raises(ValueError, match="is not a char tokenizer arscale wrote"):
        load_text_tokenizer(folder)
    (folder / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer.json is not valid JSON"):
        load_text_tokenizer(folder)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="tokenizer.json not found"):
        load_text_tokenizer(folder)


@pytest.mark.parametrize("level", ["char", "word"])
def test_bytes_that_are_not_utf8_are_one_unknown_token_each(full, level):
    tokenizer = full[level]
    ids = tokenizer.encode_bytes_batch([b"x = 1\xff\xfe", "x = 1"])
    assert ids[0][:len(ids[1])] == ids[1] and ids[0][len(ids[1]):] == [UNK_ID, UNK_ID]
    assert tokenizer.decode_bytes(ids[0]) == b"x = 1" + REPLACEMENT.encode() * 2


@pytest.mark.parametrize("level", ["char", "word"])
def test_the_stream_counts_the_bytes_unknown_tokens_replaced(partial, full, stdlib_texts, tmp_path, level):
    """Bits per byte is over the original text's bytes: a prefix of the token stream stands for the bytes of its
    documents, unknown tokens included, exactly when it ends at a document's end."""
    tokenizer, texts = partial[level], stdlib_texts[:6]
    manifest = tokenize_to_shards(tokenizer, texts, tmp_path / "val", split="val", shard_tokens=20_000)
    stream = load_token_stream(tmp_path / "val")
    assert len(read_manifest(tmp_path / "val").shards) > 1 and (stream == UNK_ID).any()
    whole, unknown = text_bytes_of_stream(tokenizer, iter_rows_with_bytes(tmp_path / "val"), len(stream))
    assert whole == manifest.bytes == sum(len(t.encode()) for t in texts)
    nominal = np.asarray(tokenizer.token_bytes())[stream].sum()
    assert unknown == pytest.approx(whole - nominal) and unknown > 0
    ends = np.flatnonzero(stream == tokenizer.eod_id) + 1  # after each document's end-of-document token
    for k, end in enumerate(ends[:3]):
        assert text_bytes_of_stream(tokenizer, iter_rows_with_bytes(tmp_path / "val"), int(end))[0] == sum(
            len(t.encode()) for t in texts[:k + 1])
    middle = int(ends[0]) + 1000  # cut inside the second document: between the two documents around it
    part, _ = text_bytes_of_stream(tokenizer, iter_rows_with_bytes(tmp_path / "val"), middle)
    assert len(texts[0].encode()) + np.asarray(tokenizer.token_bytes())[stream[ends[0]:middle]].sum() <= part
    assert part < len(texts[0].encode()) + len(texts[1].encode())
    exact = full[level]  # with every unit known, every prefix is exact
    tokenize_to_shards(exact, texts, tmp_path / "exact", split="val")
    stream = load_token_stream(tmp_path / "exact")
    assert text_bytes_of_stream(exact, iter_rows_with_bytes(tmp_path / "exact"), 777) == (
        np.asarray(exact.token_bytes())[stream[:777]].sum(), 0)
