"""Outputs never clobber: a command's --out must be new or empty, or hold that command's own earlier output (the
bulk tokenizer then resumes); anything else is one line, exit 2, and not a byte of the folder changed. A command
that fails part-way leaves nothing that looks complete. Real shards, tokenizers and Parquet files throughout; the
commands run in this process through `pipelines.cli.main`."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from armodels.fsq import FSQ, FSQConfig
from armodels.image_tokenizer import ImageTokenizer, write_code_shards
from armodels.images import load_images
from armodels.packaged_text import STDLIB
from armodels.shards import tokenize_to_shards
from pipelines.cli import main
from pipelines.errors import UserError
from pipelines.tokenization.corpus_to_shards import TokenizeSettings, tokenize_corpus
from tests.support.cli import one_line_error


def run_cli(capsys, *args) -> SimpleNamespace:
    code = main([str(a) for a in args])
    return SimpleNamespace(returncode=code, stderr=capsys.readouterr().err)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (symlinks and folders too), by its path relative to it: what must not change."""
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"<dir>"
            for p in sorted(folder.rglob("*"))}


def users_folder(path: Path, *names: str) -> Path:
    """A folder of the user's, holding files with the names a command writes."""
    for name in ("notes.txt", *names):
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(f"the user's own {name}".encode())
    return path


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory, tokenizer) -> Path:
    path = tmp_path_factory.mktemp("tok")
    tokenizer.save(path)
    return path


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory, tokenizer, stdlib_texts) -> Path:
    root = tmp_path_factory.mktemp("shard-set") / "shards"
    tokenize_to_shards(tokenizer, stdlib_texts[:3], root, split="train", shard_tokens=5_000)
    tokenizer.save(root / "tokenizer")
    return root


def test_tokenize_refuses_a_folder_of_other_files_and_resumes_its_own(tok_dir, tmp_path):
    settings = TokenizeSettings((str(STDLIB / "json" / "decoder.py"),))
    out = users_folder(tmp_path / "out", "shard-00000.parquet", "tokenizer/tokenizer.json", ".shard-00000.parquet.tmp")
    before = snapshot(out)
    with pytest.raises(UserError, match=f"{out} is a folder that is not empty"):
        tokenize_corpus(tok_dir, out, settings, use_ray=False, log=lambda line: None)
    assert snapshot(out) == before
    mine = tmp_path / "mine"
    tokenize_corpus(tok_dir, mine, settings, use_ray=False, log=lambda line: None)
    messages = []
    tokenize_corpus(tok_dir, mine, settings, use_ray=False, log=messages.append)  # its own output: resumed
    assert messages == ["all 1 shards are already done (checksums verified)"]


@pytest.mark.parametrize("as_files", [False, True], ids=["parquet", "files"])
def test_detokenize_refuses_a_folder_of_other_files(as_files, shard_set, tmp_path, capsys):
    out = users_folder(tmp_path / "out", "000000000.txt" if as_files else "documents.parquet")
    before = snapshot(out)
    r = run_cli(capsys, "detokenize", shard_set, "--out", out, *(["--files"] if as_files else []))
    one_line_error(r, 2, str(out))
    assert snapshot(out) == before


def test_detokenize_writes_into_a_new_or_empty_folder_and_nothing_beside_it(shard_set, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for out in (tmp_path / "empty", tmp_path / "new" / "deeper"):
        assert run_cli(capsys, "detokenize", shard_set, "--out", out).returncode == 0
        assert pq.read_table(out / "documents.parquet").num_rows == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "new"]


def test_a_corrupt_shard_leaves_no_output_that_looks_complete(shard_set, tmp_path, capsys):
    shards = Path(shutil.copytree(shard_set, tmp_path / "shards"))
    last = sorted(shards.glob("shard-*.parquet"))[-1]  # the first shards decode before the bad one is reached
    last.write_bytes(last.read_bytes()[:-20] + b"\0" * 20)
    for as_files in ([], ["--files"]):
        one_line_error(run_cli(capsys, "detokenize", shards, "--out", tmp_path / "out", *as_files), 2, "corrupt")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["shards"]  # no out, and no temporary folder left


@pytest.fixture(scope="module")
def image_tok(tmp_path_factory) -> Path:
    """An untrained FSQ tokenizer: its codes are as real as a trained one's for what is tested here."""
    path = tmp_path_factory.mktemp("image-tok")
    ImageTokenizer("fsq", FSQ(FSQConfig(hidden=8, downsample=1, levels=(4, 4))), (8, 8, 1)).save(path)
    return path


def test_image_commands_refuse_a_folder_of_other_files(image_tok, tmp_path, capsys):
    out = users_folder(tmp_path / "out", "manifest.json", "shard-00000.parquet", "000000.png", "grid.png")
    before = snapshot(out)
    r = run_cli(capsys, "tokenize", "--tokenizer", image_tok, "--input", "digits", "--limit", "5", "--out", out)
    one_line_error(r, 2, str(out))
    write_code_shards(ImageTokenizer.load(image_tok), load_images("digits", limit=5), tmp_path / "codes",
                      split="train")
    one_line_error(run_cli(capsys, "detokenize", tmp_path / "codes", "--out", out), 2, str(out))
    assert snapshot(out) == before
    assert run_cli(capsys, "detokenize", tmp_path / "codes", "--out", tmp_path / "images").returncode == 0
    assert len(list((tmp_path / "images").glob("*.png"))) == 6  # five images and grid.png


def test_tokenizer_training_refuses_a_folder_of_other_files(tmp_path, capsys):
    data = tmp_path / "data.parquet"
    pq.write_table(pa.table({"text": [f"def f{i}(x):\n    return x * {i}\n" for i in range(200)]}), data)
    out = users_folder(tmp_path / "out", "tokenizer.json", "meta.json", "model.safetensors")
    before = snapshot(out)
    r = run_cli(capsys, "tokenizer", "train", "bpe", "--input", data, "--vocab-size", 300, "--out", out)
    one_line_error(r, 2, str(out))
    r = run_cli(capsys, "tokenizer", "train", "fsq", "--data", "digits", "--limit", "20", "--steps", "1",
                "--hidden", "8", "--downsample", "1", "--levels", "4,4", "--out", out)
    one_line_error(r, 2, str(out))
    assert snapshot(out) == before
    assert run_cli(capsys, "tokenizer", "train", "bpe", "--input", data, "--vocab-size", 300,
                   "--out", tmp_path / "tok").returncode == 0
    assert sorted(p.name for p in (tmp_path / "tok").iterdir()) == [
        "meta.json", "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.parquet", "out", "tok"]
