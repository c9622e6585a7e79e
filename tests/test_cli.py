"""The CLI as a user runs it (a subprocess): one-line errors and exit codes; 2 = bad input, 1 = failure."""

import subprocess
import sys
from pathlib import Path

import pytest

ARSCALE = [sys.executable, "-m", "pipelines.cli"]
ROOT = Path(__file__).resolve().parent.parent


def arscale(*args, cwd=None):
    return subprocess.run([*ARSCALE, *map(str, args)], capture_output=True, text=True, cwd=cwd or ROOT, timeout=120)


def one_line_error(result, code: int, pattern: str):
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert pattern in lines[0], lines[0]
    assert "Traceback" not in result.stderr


def test_dry_run_prints_the_plan_with_sizes_and_flops(tmp_path):
    r = arscale("study", "run", "--dry-run", "--out", tmp_path / "s")
    assert r.returncode == 0, r.stderr
    for step in ("corpus-", "tokenizer-", "shards-", "train-transformer-12.5k-", "train-transformer-789k-",
                 "eval-transformer-789k-", "fit-", "report-"):
        assert step in r.stdout
    assert "transformer, 789k params (non-emb), 2.0M tokens, 9.48e+12 FLOPs (6ND)" in r.stdout
    assert r.stdout.count("run (pending)") == 15
    assert not (tmp_path / "s").exists()  # a dry run writes nothing


@pytest.mark.parametrize("content, pattern", [
    ("name: s\nmodels: {sizes: [}\n", "is not valid YAML at line 2"),
    ("name: s\nmodels:\n  grids: [{sizes: [{n_layer: 1, n_embd: 16, n_head: 2}]}]\ntraining: {lrr: 1}\n",
     "training.lrr: unknown key"),
    ("name: s\nmodels:\n  grids: [{sizes: [{n_layer: one, n_embd: 16, n_head: 2}]}]\n",
     "models.grids.0.sizes.0.n_layer: Input should be a valid integer"),
])
def test_bad_config_exits_2(tmp_path, content, pattern):
    config = tmp_path / "c.yaml"
    config.write_text(content)
    one_line_error(arscale("study", "run", config, "--out", tmp_path / "s"), 2, pattern)


def test_missing_config_exits_2(tmp_path):
    one_line_error(arscale("study", "run", tmp_path / "none.yaml"), 2, "none.yaml not found")


def test_unwritable_output_exits_2(tmp_path):
    (tmp_path / "file").write_text("")
    one_line_error(arscale("study", "run", "text-tiny", "--out", tmp_path / "file" / "s"), 2, "is not writable")


@pytest.mark.parametrize("make_corpus, pattern", [
    (lambda d: d.mkdir(), "the corpus is empty"),
    (lambda d: (d.mkdir(), (d / "a.txt").write_text("")), "the corpus is empty"),
    (lambda d: None, "does not exist"),
])
def test_empty_or_missing_corpus_exits_2(tmp_path, make_corpus, pattern):
    corpus = tmp_path / "corpus"
    make_corpus(corpus)
    config = tmp_path / "c.yaml"
    config.write_text(f"name: s\ncorpus: {{source: files, paths: ['{corpus}'], extensions: ['.txt']}}\n"
                      "models:\n  grids: [{sizes: [{n_layer: 1, n_embd: 16, n_head: 2}]}]\n")
    one_line_error(arscale("study", "run", config, "--out", tmp_path / "s"), 2, pattern)


def test_status_and_report_of_a_folder_that_is_not_a_study(tmp_path):
    one_line_error(arscale("study", "status", tmp_path), 2, "is not a study folder")
    one_line_error(arscale("report", tmp_path), 2, "is not a study folder")


def test_fit_with_missing_csv_exits_2(tmp_path):
    one_line_error(arscale("fit", "--runs", tmp_path / "runs.csv"), 2, "runs.csv")


def test_train_with_bad_run_config_exits_2(tmp_path):
    (tmp_path / "run.json").write_text("{}")
    one_line_error(arscale("train", "--config", tmp_path / "run.json", "--out", tmp_path / "o"), 2,
                   "not a valid training run config")


def test_debug_shows_the_traceback(tmp_path):
    r = arscale("--debug", "study", "status", tmp_path)
    assert r.returncode == 2 and "Traceback" in r.stderr


def test_usage_errors_exit_2():
    assert arscale().returncode == 2
    assert arscale("study", "run", "--no-such-flag").returncode == 2
    assert arscale("tokenize", "--help").returncode == 0
