"""A text study of several tokenizers: losses are compared per byte of text, each stream's nats/token scaled by its
own measured ratio, and a stream whose bits/byte leave out many unknown bytes is not compared."""

import math

import pandas as pd
import pytest

from pipelines.steps.fit import per_byte_scales
from pipelines.steps.report import _families_section, _tokenizers_section, _unknown_shares


def run(series, stream, loss, bits_per_byte, **more):
    return {"series": series, "stream": stream, "status": "ok", "loss": loss, "bits_per_byte": bits_per_byte,
            "tokenizer": stream if stream != "text" else "bpe", **more}


def test_per_byte_scales_are_each_streams_own_ratio_and_only_where_tokenizers_differ():
    runs = pd.DataFrame([run("bpe", "text", 4.0, 2.8), run("bpe", "text", 3.0, 2.1),
                         run("char", "char", 2.0, 2.9), run("char", "char", 1.5, 2.2)])
    scales = per_byte_scales(runs)
    assert scales == {"bpe": pytest.approx(0.7), "char": pytest.approx((2.9 / 2.0 + 2.2 / 1.5) / 2)}
    assert per_byte_scales(runs[runs["stream"] == "text"]) is None  # one tokenizer: nats/token compare as they are
    assert per_byte_scales(runs.drop(columns=["tokenizer", "stream"])) is None  # text records before streams


def test_a_stream_with_many_unknown_bytes_is_listed_but_not_compared():
    runs = {"bpe-1": {**run("bpe", "text", 3.0, 2.2), "eval": {"tokens": 100, "bytes": 205}},
            "word-1": {**run("word", "word", 2.0, 0.9), "vocab_size": 2048, "tokenizer_coverage": 0.926,
                       "unknown_byte_share": 0.3, "eval": {"tokens": 100, "bytes": 313}},
            "char-1": {**run("char", "char", 1.7, 2.4), "unknown_byte_share": 0.001,
                       "eval": {"tokens": 10, "bytes": 10}}}
    ok = list(runs)
    assert _unknown_shares(runs, ok) == {"word": 0.3}  # a share under 1% is noted in the table only
    comparison = {"compute": 1e12, "unit": "bits/byte", "series": {
        "word": {"loss": 1.0, "low": 0.9, "high": 1.1}, "bpe": {"loss": 2.3, "low": 2.2, "high": 2.4},
        "char": {"loss": 2.5, "low": 2.45, "high": 2.6}},
        "pairs": [{"better": "word", "worse": "bpe", "difference": 1.3, "beyond_noise": True},
                  {"better": "bpe", "worse": "char", "difference": 0.2, "beyond_noise": True}]}
    text = "\n".join(_families_section(comparison, set(), False, _unknown_shares(runs, ok)))
    assert "| family | loss (bits/byte) | interval |" in text and "nats/token ×" in text
    assert "- word and bpe: not compared; word's bits/byte leave out the 30.0% of the bytes" in text
    assert "word is lower" not in text and "- bpe is lower than char by 0.200 bits/byte" in text

    rows = [line.split(" | ") for line in _tokenizers_section(runs, ok) if line.startswith("| ")][1:]
    by_stream = {r[0].removeprefix("| "): r for r in rows}
    assert by_stream["word"][3] == "3.13" and by_stream["word"][5] == "30.0%" and by_stream["word"][7] == "0.9000"
    assert math.isclose(float(by_stream["word"][8].rstrip(" |")), 0.9 + 8 * 0.3)  # unknown bytes at 8 bits each
    assert by_stream["text"][1] == "byte-level BPE" and by_stream["text"][4] == "—"


def test_image_streams_compare_in_bits_per_dim():
    """Pixels and a pyramid (a low-resolution image, then the image) read different tokens per image: their laws
    compare per pixel of the full image, each scaled by its own stream's ratio."""
    runs = pd.DataFrame([{"series": "one-scale", "stream": "pixels", "status": "ok", "loss": 0.15,
                          "bits_per_byte": 0.2164, "bits_per_dim": 0.2164},
                         {"series": "two-scales", "stream": "pyramid", "status": "ok", "loss": 0.13,
                          "bits_per_byte": 0.2345, "bits_per_dim": 0.2345}])
    scales = per_byte_scales(runs)
    assert scales["two-scales"] == pytest.approx(0.2345 / 0.13) and scales["one-scale"] == pytest.approx(0.2164 / 0.15)
    comparison = {"compute": 1e11, "unit": "bits/dim", "series": {
        "one-scale": {"loss": 0.2164, "low": 0.2, "high": 0.23}, "two-scales": {"loss": 0.2345, "low": 0.22,
                                                                                 "high": 0.25}},
        "pairs": [{"better": "one-scale", "worse": "two-scales", "difference": 0.018, "beyond_noise": False}]}
    text = "\n".join(_families_section(comparison, set(), True))
    assert "| family | loss (bits/dim) | interval |" in text and "so each law's loss is given in bits/dim" in text
    assert "- one-scale and two-scales: within noise (0.018 bits/dim apart)" in text
