"""`arscale sample` on the runs of a real finished study: the session's tiny text study (tests/conftest.py), whose
runs have a window of 32 tokens and whose `unstable` run diverged. Image runs: tests/pipelines/test_image_study.py."""

import json
import re
import shutil
from types import SimpleNamespace

import pytest
import torch

from armodels.bpe import BPETokenizer
from armodels.train import load_model
from pipelines.cli import main
from tests.support.cli import arscale, one_line_error
from tests.support.studies import step_dir

PROMPT = "def __init__(self"
HEADER = re.compile(r"^=== (.+) ===\n", re.M)


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """These models are tiny: one thread each is fastest, and much faster than several on a busy machine."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture
def run(tiny_study):
    return step_dir(tiny_study[0], "train-transformer-24.9k")


def samples(stdout: str) -> list[tuple[str, str]]:
    """(header, text) of each sample printed."""
    parts = HEADER.split(stdout)
    assert parts[0] == "", stdout
    return [(header, text.removesuffix("\n")) for header, text in zip(parts[1::2], parts[2::2])]


def run_cli(capsys, *args) -> SimpleNamespace:
    """`arscale ARGS` in this process (quicker than a new interpreter, for the checks of bad input)."""
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout=captured.out, stderr=captured.err)


@pytest.mark.slow
def test_text_samples_continue_the_prompt_and_repeat_with_their_seed(run):
    args = ("sample", run, "--prompt", PROMPT, "--num", 2, "--max-tokens", 80)  # 80: past the 32-token window
    first, again, other = (arscale(*args, "--seed", seed) for seed in (3, 3, 4))
    assert first.returncode == 0, first.stderr
    drawn = samples(first.stdout)
    assert [h.split(",")[0] for h, _ in drawn] == ["sample 1 of 2", "sample 2 of 2"]
    assert all(text.startswith(PROMPT) for _, text in drawn)
    assert max(len(text) for _, text in drawn) > len(PROMPT) + 20 and drawn[0][1] != drawn[1][1]
    assert "seed 3" in first.stderr
    assert again.stdout == first.stdout
    assert other.returncode == 0 and other.stdout != first.stdout


@pytest.mark.slow
def test_greedy_and_beam_of_one_are_what_the_models_own_sampler_draws(run):
    """With no prompt, a sample starts a new document after end-of-document, as the evaluation's samples do: the
    greedy text must be what the family's sampler (armodels.sampling.sample) draws from the weights and decodes."""
    tokenizer = BPETokenizer.load(step_dir(run.parent, "tokenizer"))
    model = load_model(run)
    row = model.sample(1, temperature=0, prompt=torch.tensor([[tokenizer.eod_id]]))[0, 1:].tolist()
    expected = tokenizer.decode(row[:row.index(tokenizer.eod_id)] if tokenizer.eod_id in row else row)

    greedy = arscale("sample", run, "--temperature", 0, "--max-tokens", model.seq_len - 1)
    beam = arscale("sample", run, "--beam", 1, "--max-tokens", model.seq_len - 1)
    assert greedy.returncode == 0 and beam.returncode == 0, greedy.stderr + beam.stderr
    assert [text for _, text in samples(greedy.stdout)] == [expected]
    assert [text for _, text in samples(beam.stdout)] == [expected]


@pytest.mark.slow
def test_beam_search_prints_the_most_likely_continuations_best_first(run):
    result = arscale("sample", run, "--prompt", PROMPT, "--beam", 4, "--num", 3, "--max-tokens", 40)
    assert result.returncode == 0, result.stderr
    found = samples(result.stdout)
    assert [h.split(",")[0] for h, _ in found] == ["beam 1 of 3", "beam 2 of 3", "beam 3 of 3"]
    scores = [float(re.search(r"log-prob (-?[\d.]+)", h).group(1)) for h, _ in found]
    assert scores == sorted(scores, reverse=True) and scores[0] < 0
    assert all(text.startswith(PROMPT) for _, text in found) and len({text for _, text in found}) == 3


@pytest.mark.slow
def test_runs_that_cannot_be_sampled_are_one_line_errors(tiny_study, run, tmp_path, capsys):
    out = tiny_study[0]
    one_line_error(arscale("sample", step_dir(out, "train-unstable")), 2, "diverged")
    one_line_error(arscale("sample", step_dir(out, "tokenizer")), 2, "not of a training step")
    one_line_error(run_cli(capsys, "sample", tmp_path / "nowhere"), 2, "is not a folder")
    one_line_error(run_cli(capsys, "sample", tmp_path), 2, "not a training run folder")
    for bad, message in ((("--top-p", 1.5), "--top-p must be in (0, 1]"), (("--top-p", 0), "--top-p must be in"),
                         (("--temperature", -1), "--temperature must be 0"), (("--beam", 0), "--beam must be"),
                         (("--beam", 2, "--num", 3), "--num 3 is more than --beam 2"),
                         (("--beam", 2, "--top-k", 5), "--beam searches"), (("--out", tmp_path), "--out is for image")):
        one_line_error(run_cli(capsys, "sample", run, *bad), 2, message)

    failed = tmp_path / "study" / f"{run.name}.tmp"  # a run whose step failed
    shutil.copytree(run, failed)
    status = json.loads((failed / "STATUS.json").read_text())
    (failed / "STATUS.json").write_text(json.dumps({**status, "state": "failed", "error": "worker died"}))
    one_line_error(run_cli(capsys, "sample", failed), 2, "did not finish (its step is failed: worker died)")


@pytest.mark.slow
def test_a_moved_study_still_samples_and_a_missing_tokenizer_is_named(run, tmp_path, capsys):
    shards = step_dir(run.parent, "shards")
    moved = tmp_path / "moved"
    shutil.copytree(run, moved / run.name)
    shutil.copytree(shards, moved / shards.name)
    record = json.loads((moved / run.name / "run.json").read_text())  # the old place is gone
    record["train_shards"] = f"/gone/{shards.name}/train"
    (moved / run.name / "run.json").write_text(json.dumps(record))

    result = run_cli(capsys, "sample", moved / run.name, "--prompt", PROMPT, "--seed", 3, "--max-tokens", 10)
    assert result.returncode == 0, result.stderr
    assert samples(result.stdout)[0][1].startswith(PROMPT)
    shutil.rmtree(moved / shards.name / "train" / "tokenizer")
    one_line_error(run_cli(capsys, "sample", moved / run.name), 2, "tokenizer")
