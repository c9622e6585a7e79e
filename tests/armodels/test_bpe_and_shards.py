import json
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from armodels.bpe import BPETokenizer, train_bpe
from armodels.shards import iter_documents, load_token_stream, read_manifest, tokenize_to_shards


def test_bpe_round_trips_real_text_and_arbitrary_unicode(tokenizer, stdlib_texts):
    rng = random.Random(0)
    odd = ["", "\x00\x01\xff", "é" * 50, "中文 日本語 😀\r\n\t", "".join(chr(rng.randrange(1, 0x2FFFF))
                                                               for _ in range(500)).encode("utf-8", "ignore")
           .decode("utf-8", "ignore")]
    texts = stdlib_texts[:20] + odd
    for text, ids in zip(texts, tokenizer.encode_batch(texts)):
        assert tokenizer.decode(ids) == text


def test_token_bytes_count_every_byte(tokenizer, stdlib_texts):
    lengths = tokenizer.token_bytes()
    for text, ids in zip(stdlib_texts[:10], tokenizer.encode_batch(stdlib_texts[:10])):
        assert sum(lengths[i] for i in ids) == len(text.encode("utf-8"))
    assert lengths[tokenizer.eod_id] == 0


def test_bpe_learns_merges_and_keeps_all_bytes(tokenizer):
    assert tokenizer.vocab_size == 320  # 256 bytes + <|endoftext|> + 63 merges
    assert np.mean([len(ids) for ids in tokenizer.encode_batch(["def __init__(self):\n        return"])]) < 20


def test_vocab_size_too_small_is_rejected():
    with pytest.raises(ValueError, match="too small"):
        train_bpe(["abc"], 200)


def test_tokenizer_save_load_and_bad_files(tmp_path, tokenizer):
    tokenizer.save(tmp_path / "tok")
    loaded = BPETokenizer.load(tmp_path / "tok")
    assert loaded.meta.sha256 == tokenizer.meta.sha256
    assert loaded.encode_batch(["x = 1"]) == tokenizer.encode_batch(["x = 1"])
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        BPETokenizer.load(tmp_path)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a valid tokenizer file"):
        BPETokenizer.load(tmp_path / "bad")


def test_shards_round_trip_with_manifest(tmp_path, tokenizer, stdlib_texts):
    manifest = tokenize_to_shards(tokenizer, stdlib_texts, tmp_path / "s", split="train", shard_tokens=30_000)
    assert len(manifest.shards) > 1 and manifest.dtype == "uint16"
    on_disk = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert on_disk["totals"]["tokens"] == manifest.tokens == sum(s.tokens for s in read_manifest(tmp_path / "s").shards)
    assert on_disk["totals"]["bytes"] == sum(len(t.encode()) for t in stdlib_texts)
    docs = list(iter_documents(tmp_path / "s"))
    assert [tokenizer.decode(d.tolist()) for d in docs] == stdlib_texts
    table = pq.read_table(tmp_path / "s" / manifest.shards[0].file)
    assert table.schema.field("tokens").type.value_type == pa.uint16()
    stream = load_token_stream(tmp_path / "s")
    assert len(stream) == manifest.tokens + manifest.documents  # one end-of-document token per document
    assert (stream == tokenizer.eod_id).sum() == manifest.documents


def test_corrupt_or_missing_shards_are_named(tmp_path, tokenizer, stdlib_texts):
    manifest = tokenize_to_shards(tokenizer, stdlib_texts[:5], tmp_path / "s", split="val")
    shard = tmp_path / "s" / manifest.shards[0].file
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"{shard.name} is corrupt"):
        load_token_stream(tmp_path / "s")
    shard.unlink()
    with pytest.raises(FileNotFoundError, match="missing"):
        load_token_stream(tmp_path / "s")
    with pytest.raises(FileNotFoundError, match="not a token shard directory"):
        read_manifest(tmp_path)
