"""Every command, given bad input, exits 2 with one line naming the thing and what to do, and no traceback.

Run in-process through `pipelines.cli.main` (each case takes milliseconds); tests/pipelines/test_cli.py runs the real
console script for the exit-code plumbing itself.
"""

import json

import numpy as np
import pytest

from pipelines.cli import main


def corrupt_shards(tmp_path, tokenizer, texts):
    from armodels.shards import tokenize_to_shards

    tokenize_to_shards(tokenizer, texts[:3], tmp_path / "shards", split="train")
    tokenizer.save(tmp_path / "shards" / "tokenizer")  # detokenize decodes with the copy a shard set keeps
    shard = next((tmp_path / "shards").glob("*.parquet"))
    shard.write_bytes(shard.read_bytes()[:-20] + b"\0" * 20)


def mixed_size_images(tmp_path):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "a.png")
    Image.fromarray(np.zeros((9, 8), np.uint8)).save(folder / "b.png")
    return folder


CASES = {
    # name: (argv with {tmp} for the test folder, what the line must say)
    "study: missing config": (["study", "run", "{tmp}/none.yaml"], "not found"),
    "study: unknown key": (["study", "run", "{tmp}/unknown.yaml"], "unknown key"),
    "study: image data missing": (["study", "run", "{tmp}/images.yaml", "--dry-run"], "images.data"),
    "study: dry run, corpus missing": (["study", "run", "{tmp}/corpus.yaml", "--dry-run"],
                                       "{tmp}/none does not exist; check the path; fix corpus.paths in the config"),
    "study: --set unknown key": (["study", "run", "text-tiny", "--set", "training.lrr=1e-3", "--dry-run"],
                                 "training.lrr: unknown key (did you mean lr?)"),
    "study: --set wrong type": (["study", "run", "text-tiny", "--set", "models.seq_len=[64]", "--dry-run"],
                                "models.seq_len: Input should be a valid integer"),
    "study: --set without =": (["study", "run", "text-tiny", "--set", "training.lr"], "give KEY=VALUE"),
    "study: --set past a list": (["study", "run", "text-tiny", "--set", "models.grids.5.family=rnn"],
                                 "models.grids is a list of 1"),
    "config schema: unwritable --out": (["config", "schema", "--out", "{tmp}/none/schema.json"],
                                        "cannot write the schema"),
    "study status: not a study": (["study", "status", "{tmp}"], "not a study folder"),
    "report: not a study": (["report", "{tmp}"], "not a study folder"),
    "fit: missing CSV": (["fit", "--runs", "{tmp}/none.csv"], "no such file"),
    "fit: CSV without columns": (["fit", "--runs", "{tmp}/unknown.yaml"], "missing columns"),
    "fit: negative bootstrap": (["fit", "--runs", "{tmp}/none.csv", "--bootstrap", "-1"], "must be 0 or more"),
    "advise: missing CSV": (["advise", "--runs", "{tmp}/none.csv", "--target-compute", "1e12", "--budget", "1e10"],
                            "no such file"),
    "train: missing run config": (["train", "--config", "{tmp}/none.json", "--out", "{tmp}/o"], "not found"),
    "train: malformed run config": (["train", "--config", "{tmp}/bad.json", "--out", "{tmp}/o"], "bad.json"),
    "tokenizer train bpe: missing input": (["tokenizer", "train", "bpe", "--input", "{tmp}/none", "--vocab-size",
                                            "300", "--out", "{tmp}/t"], "does not exist"),
    "tokenizer train char: vocab too small": (["tokenizer", "train", "char", "--input", "{tmp}/unknown.yaml",
                                               "--extensions", ".yaml", "--vocab-size", "2", "--out", "{tmp}/t"],
                                              "--vocab-size 2 is too small: a char-level tokenizer needs at least 3"),
    "tokenizer train word: empty input": (["tokenizer", "train", "word", "--input", "{tmp}/empty.txt", "--vocab-size",
                                           "100", "--out", "{tmp}/t"], "the inputs hold no text"),
    "tokenizer train vqvae: missing data": (["tokenizer", "train", "vqvae", "--data", "{tmp}/none", "--out",
                                             "{tmp}/t"], "no such file"),
    "tokenizer train fsq: mixed image sizes": (["tokenizer", "train", "fsq", "--data", "{tmp}/imgs", "--out",
                                                "{tmp}/t"], "b.png"),
    "tokenize: no tokenizer": (["tokenize", "--tokenizer", "{tmp}", "--input", "{tmp}", "--out", "{tmp}/o"],
                               "tokenizer.json not found"),
    "detokenize: not shards": (["detokenize", "{tmp}", "--out", "{tmp}/o"], "manifest.json not found"),
    "detokenize: corrupt shard": (["detokenize", "{tmp}/shards", "--out", "{tmp}/o"], "corrupt"),
    "jobs: unreachable cluster": (["jobs", "list", "--address", "http://127.0.0.1:9"], "cannot reach"),
    "submit: unreachable cluster": (["submit", "text-tiny", "--address", "http://127.0.0.1:9"], "cannot reach"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_exits_2_with_one_line(case, tmp_path, capsys, request):
    (tmp_path / "unknown.yaml").write_text("name: x\nmodels: {grids: [{sizes: [{}]}]}\ncolour: blue\n")
    (tmp_path / "images.yaml").write_text(json.dumps({
        "name": "x", "images": {"data": str(tmp_path / "none")},
        "models": {"grids": [{"family": "pixelcnn", "stream": "pixels", "sizes": [{}]}]}}))
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "corpus.yaml").write_text(json.dumps({
        "name": "x", "corpus": {"source": "files", "paths": [str(tmp_path / "none")]},
        "models": {"grids": [{"sizes": [{"n_layer": 1, "n_embd": 16, "n_head": 2}]}]}}))
    if "corrupt" in case:
        corrupt_shards(tmp_path, request.getfixturevalue("tokenizer"), request.getfixturevalue("stdlib_texts"))
    if "mixed" in case:
        mixed_size_images(tmp_path)
    argv, expected = CASES[case]
    code = main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    expected = expected.replace("{tmp}", str(tmp_path))
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert expected in err and len(err.splitlines()) == 1 and "Traceback" not in err, err
