"""Bad inputs that once got through or crashed: each is now one line on stderr naming the key, file or row and what
to do, exit code 2, and nothing written. Real files throughout (shards, tokenizers, safetensors, CSV, YAML); the
commands run in this process through `pipelines.cli.main` (the same exit-code plumbing as the console script), but
for the one input that used to abort the interpreter, which runs as a subprocess."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

import scaling
from armodels.bpe import BPETokenizer, train_bpe
from armodels.files import file_sha256
from armodels.fsq import FSQ, FSQConfig
from armodels.image_tokenizer import ImageTokenizer
from armodels.shards import iter_documents, tokenize_to_shards
from pipelines.cli import main
from scaling import FitInputError
from tests.support.cli import arscale, one_line_error


def run_cli(capsys, *args) -> SimpleNamespace:
    """`arscale ARGS` in this process, as tests.support.cli.one_line_error reads a finished process."""
    code = main([str(a) for a in args])
    return SimpleNamespace(returncode=code, stderr=capsys.readouterr().err)


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory, tokenizer, stdlib_texts) -> Path:
    """A small text shard set with the copy of its tokenizer that detokenize decodes with (tests copy it first)."""
    root = tmp_path_factory.mktemp("shard-set") / "shards"
    tokenize_to_shards(tokenizer, stdlib_texts[:4], root, split="train", shard_tokens=5_000)
    tokenizer.save(root / "tokenizer")
    return root


def copy_of(shard_set: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(shard_set, tmp_path / "shards"))


def edit_manifest(shards: Path, edit) -> None:
    manifest = json.loads((shards / "manifest.json").read_text())
    edit(manifest["shards"][0])
    (shards / "manifest.json").write_text(json.dumps(manifest))


# A manifest entry that names a file outside its folder: an intact copy of the real shard is put there, so that
# only the rule refuses it.
def up_and_out(shards: Path, outside: Path) -> str:
    return "../" + outside.name


def absolute(shards: Path, outside: Path) -> str:
    return str(outside)


def symlink_out(shards: Path, outside: Path) -> str:
    (shards / "shard-link.parquet").symlink_to(outside)
    return "shard-link.parquet"


@pytest.mark.parametrize("escape", [up_and_out, absolute, symlink_out])
def test_a_manifest_cannot_name_a_file_outside_its_folder(escape, shard_set, tmp_path, capsys):
    shards = copy_of(shard_set, tmp_path)
    outside = tmp_path / "elsewhere.parquet"
    shutil.copy(shards / "shard-00000.parquet", outside)
    name = escape(shards, outside)
    edit_manifest(shards, lambda entry: entry.update(file=name))
    with pytest.raises(ValueError, match="outside"):
        list(iter_documents(shards))
    one_line_error(run_cli(capsys, "detokenize", shards, "--out", tmp_path / "out"), 2, "outside")
    assert not (tmp_path / "out").exists()


def test_a_tokenizer_swapped_under_its_meta_json_is_refused(shard_set, stdlib_texts, tmp_path, capsys):
    shards = copy_of(shard_set, tmp_path)
    other = train_bpe(stdlib_texts[4:8], 300)  # another tokenizer, its tokenizer.json put under the old meta.json
    other.hf.save(str(shards / "tokenizer" / "tokenizer.json"))
    with pytest.raises(ValueError, match="tokenizer.json.*sha256"):
        BPETokenizer.load(shards / "tokenizer")
    one_line_error(run_cli(capsys, "detokenize", shards, "--out", tmp_path / "out"), 2, "tokenizer.json")
    assert not (tmp_path / "out").exists()


def test_a_huge_bpe_vocabulary_is_refused_before_the_trainer_aborts(tmp_path):
    """The HF trainer allocates for the vocabulary first: at 10^12 it aborted the interpreter (exit 134)."""
    r = arscale("tokenizer", "train", "bpe", "--input", Path(json.__file__).parent, "--vocab-size", 10**12,
                "--out", tmp_path / "tok")
    one_line_error(r, 2, "--vocab-size")
    assert "1,000,000" in r.stderr and not (tmp_path / "tok").exists()


SIZE = {"n_layer": 1, "n_embd": 8, "n_head": 2}


def study(grid: dict | None = None, size: dict | None = None, **sections) -> dict:
    grid = {"family": "transformer", "sizes": [{**SIZE, **(size or {})}], **(grid or {})}
    return {"name": "x", "models": {"seq_len": 16, "grids": [grid]}, **sections}


# name: (study config, what the one line must name)
BAD_CONFIGS = {
    "huge width": (study(size={"n_embd": 100_000_000}), "models.grids.0.sizes.0.n_embd: must be"),
    "huge depth": (study(size={"n_layer": 1_000_000}), "models.grids.0.sizes.0.n_layer: must be"),
    "huge rnn": (study({"family": "rnn", "sizes": [{"n_layer": 1_000_000, "hidden": 8}]}),
                 "models.grids.0.sizes.0.n_layer: must be"),
    "huge vocabulary": (study(tokenizer={"vocab_size": 2_000_000}), "tokenizer.vocab_size"),
    "negative tokens": (study(size={"tokens": -5}), "models.grids.0.sizes.0.tokens: must be a whole number"),
    "fractional tokens": (study(size={"tokens": 1.5}), "models.grids.0.sizes.0.tokens: must be a whole number"),
    "negative lr": (study(size={"lr": -1}), "models.grids.0.sizes.0.lr: must be a positive number"),
    "boolean depth": (study(size={"n_layer": True}), "models.grids.0.sizes.0.n_layer: must be a whole number"),
    "boolean width list": (study({"family": "wavenet", "sizes": [{"dilations": [1, True]}]}),
                           "models.grids.0.sizes.0.dilations: must be a list of whole numbers"),
    "negative multiplier": (study(fit={"predict_multipliers": [10, -1]}), "fit.predict_multipliers"),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_study_configs_name_the_key(case, tmp_path, capsys):
    config, words = BAD_CONFIGS[case]
    (tmp_path / "study.yaml").write_text(json.dumps(config))  # JSON is YAML
    r = run_cli(capsys, "study", "run", tmp_path / "study.yaml", "--dry-run", "--out", tmp_path / "out")
    one_line_error(r, 2, words)
    assert "Config(" not in r.stderr  # no dataclass repr
    assert not (tmp_path / "out").exists()


RUNS_CSV = """params,tokens,loss,status
8e6,1.6e8,2.8,failed
1e6,2e7,3.1,ok
4e6,8e7,2.9,ok
2e6,4e7,3.0,ok
1.6e7,3.2e8,2.7,ok
3.2e7,6.4e8,2.6,ok
"""


def test_a_bad_csv_row_is_named_by_its_line_in_the_file(tmp_path):
    (tmp_path / "runs.csv").write_text(RUNS_CSV)
    fit = scaling.fit_runs(scaling.load_runs_csv(tmp_path / "runs.csv"), "compute", bootstrap=0)
    assert [(e["line"], e["reason"]) for e in fit.excluded] == [(2, "status failed")]  # 4th when sorted
    (tmp_path / "typo.csv").write_text(RUNS_CSV.replace("failed\n", "failed\n\n").replace("2e7,3.1", "2e7,3.l"))
    with pytest.raises(FitInputError, match="typo.csv: column 'loss', row 2 \\(line 4\\): '3.l' is not a number"):
        scaling.load_runs_csv(tmp_path / "typo.csv")


def bad_fit_inputs(tmp_path: Path) -> dict:
    """name -> (arguments of `arscale fit`, what the one line must say)."""
    (tmp_path / "runs.csv").write_text(RUNS_CSV)
    lines = RUNS_CSV.splitlines()
    (tmp_path / "twice.csv").write_text("\n".join(lines + [lines[2]]) + "\n")  # line 3 again, as line 8
    (tmp_path / "seeds.csv").write_text(RUNS_CSV + "1e6,2e7,3.12,ok\n")  # another seed: not a duplicate
    return {
        "negative compute": (["--runs", tmp_path / "runs.csv", "--predict-compute", "-1", "0"],
                             "--predict-compute"),
        "infinite compute": (["--runs", tmp_path / "runs.csv", "--predict-compute", "inf"], "--predict-compute"),
        "duplicate row": (["--runs", tmp_path / "twice.csv"], "lines 3 and 8"),
    }


def test_bad_fit_inputs_are_one_line(tmp_path, capsys):
    for name, (args, words) in bad_fit_inputs(tmp_path).items():
        one_line_error(run_cli(capsys, "fit", *args, "--bootstrap", "0"), 2, words)
    assert run_cli(capsys, "fit", "--runs", tmp_path / "seeds.csv", "--bootstrap", "0").returncode == 0


def test_an_extra_key_in_meta_json_is_one_line(shard_set, tmp_path, capsys):
    shards = copy_of(shard_set, tmp_path)
    meta = json.loads((shards / "tokenizer" / "meta.json").read_text())
    (shards / "tokenizer" / "meta.json").write_text(json.dumps({**meta, "colour": "blue"}))
    one_line_error(run_cli(capsys, "detokenize", shards, "--out", tmp_path / "out"), 2, "meta.json")
    (shards / "tokenizer" / "meta.json").write_text("[1, 2]")
    one_line_error(run_cli(capsys, "detokenize", shards, "--out", tmp_path / "out"), 2, "meta.json")


def test_truncated_safetensors_with_a_matching_checksum_is_one_line(shard_set, tmp_path, capsys):
    """The checksum in tokenizer.json was updated to the truncated file's: the weights themselves are unreadable."""
    tok = tmp_path / "image-tok"
    ImageTokenizer("fsq", FSQ(FSQConfig(hidden=8, downsample=1, levels=(4, 4))), (8, 8, 1)).save(tok)
    weights = tok / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    description = json.loads((tok / "tokenizer.json").read_text())
    (tok / "tokenizer.json").write_text(json.dumps({**description, "weights_sha256": file_sha256(weights)}))
    with pytest.raises(ValueError, match="model.safetensors"):
        ImageTokenizer.load(tok)
    r = run_cli(capsys, "detokenize", shard_set, "--tokenizer", tok, "--out", tmp_path / "out")
    one_line_error(r, 2, "model.safetensors")


def test_a_cluster_address_where_nothing_answers_is_one_line_not_an_endless_retry():
    from pipelines.errors import UserError
    from pipelines.ray_connect import _check_answers

    with pytest.raises(UserError, match=r"no Ray cluster answers at 127.0.0.1:1 \(Connection refused\); start one"):
        _check_answers("127.0.0.1:1")
