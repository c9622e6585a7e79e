"""The CLI as a user runs it (a subprocess): one-line errors and exit codes; 2 = bad input, 1 = failure."""

import argparse
import subprocess
import sys

import pytest

from pipelines.cli import COMMANDS, build_parser
from tests.support.cli import ROOT, arscale, one_line_error, subprocess_env


def test_dry_run_prints_the_plan_with_sizes_and_flops(tmp_path):
    r = arscale("study", "run", "--dry-run", "--out", tmp_path / "s")
    assert r.returncode == 0, r.stderr
    for step in ("corpus-", "tokenizer-", "shards-", "train-transformer-6.3k-", "train-transformer-6.3k-s2-",
                 "train-transformer-98.9k-", "eval-transformer-98.9k-", "fit-", "train-transformer-confirm-4x-",
                 "eval-transformer-confirm-4x-", "report-"):
        assert step in r.stdout
    assert "transformer, 98.9k params (non-emb), 3.5M tokens, 4.08e+12 FLOPs (per_layer)" in r.stdout
    assert "confirmation run, lr from the fit's lr law" in r.stdout
    assert r.stdout.count("run (pending)") == 3 + 2 * 12 + 1 + 2 + 1
    assert not (tmp_path / "s").exists()  # a dry run writes nothing


@pytest.mark.parametrize("content, pattern", [
    ("name: s\nmodels: {sizes: [}\n", "is not valid YAML at line 2"),
    ("name: s\nmodels:\n  grids: [{sizes: [{n_layer: 1, n_embd: 16, n_head: 2}]}]\ntraining: {lrr: 1}\n",
     "training.lrr: unknown key"),
    ("name: s\nmodels:\n  grids: [{sizes: [{n_layer: one, n_embd: 16, n_head: 2}]}]\n",
     "models.grids.0.sizes.0.n_layer: must be a whole number"),
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


IMPORTED = """
import sys
from pipelines.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as e:  # --help
    code = e.code
heavy = sorted(m for m in ("torch", "ray", "mlflow", "scipy", "matplotlib", "deepspeed") if m in sys.modules)
print("imported:", " ".join(heavy), file=sys.stderr)
sys.exit(code)
"""


@pytest.mark.parametrize("args, needs_torch", [
    (["--help"], False),
    (["jobs", "list"], False),  # no cluster: exit 2
    (["cluster", "status"], False),  # none up: exit 1
    (["fit", "--help"], False),
    (["advise", "--help"], False),
    (["study", "status", "."], True),  # not a study: exit 2
])
def test_a_command_imports_only_what_it_needs(tmp_path, args, needs_torch):
    """Each command's module is imported only when it runs: `arscale --help` or `jobs list` need not import torch,
    Ray and scipy (~3 s); `study` does."""
    env = {**subprocess_env(), "ARSCALE_HOME": str(tmp_path), "HOME": str(tmp_path)}
    env.pop("RAY_ADDRESS", None)
    r = subprocess.run([sys.executable, "-c", IMPORTED, *args], capture_output=True, text=True, cwd=ROOT, env=env,
                       timeout=120)
    assert r.returncode in (0, 1, 2) and "Traceback" not in r.stderr, r.stderr
    imported = r.stderr.strip().splitlines()[-1].removeprefix("imported:").split()
    assert "torch" in imported if needs_torch else imported == [], r.stderr


def test_an_evaluation_imports_none_of_the_fits_libraries():
    """An evaluation step runs on a warm training worker, which has torch but not the fit's pandas, scipy and
    matplotlib (~2 s to import in each worker)."""
    r = subprocess.run([sys.executable, "-c", "import sys, pipelines.steps.evaluate; print(sorted(m for m in "
                        "('pandas', 'scipy.optimize', 'matplotlib', 'pipelines.steps.fit') if m in sys.modules))"],
                       capture_output=True, text=True, cwd=ROOT, env=subprocess_env(), timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_every_listed_command_is_added_by_its_module():
    """Each entry of COMMANDS names the module that adds the command complete: a handler, or actions of its own
    (a stub from the list has neither)."""
    for name in COMMANDS:
        sub = next(a for a in build_parser([name])._actions if isinstance(a, argparse._SubParsersAction))
        command = sub.choices[name]
        actions = [a for a in command._actions if isinstance(a, argparse._SubParsersAction)]
        assert command.get_default("handler") or actions, name


def synthetic_runs(path, *, rows=8, seed=0):
    """A run table drawn from L(C) = 1.8 + 40·C^-0.12 with 1% noise."""
    import numpy as np

    rng = np.random.default_rng(seed)
    params = np.geomspace(1e4, 1e7, rows)
    tokens = 20 * params
    loss = (1.8 + 40 * (6 * params * tokens) ** -0.12) * np.exp(rng.normal(0, 0.01, rows))
    lines = ["run_id,params,tokens,loss"] + [f"r{i},{n:.0f},{d:.0f},{y:.5f}"
                                               for i, (n, d, y) in enumerate(zip(params, tokens, loss))]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_fit_prints_json_plots_and_logs_to_mlflow(tmp_path, monkeypatch):
    import json

    csv = synthetic_runs(tmp_path / "runs.csv")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    r = arscale("fit", "--runs", csv, "--bootstrap", 100, "--predict-compute", 1e16, "--json",
                "--plot", tmp_path / "fit.png", "--tracking-uri", uri)
    assert r.returncode == 0, r.stderr
    fit = json.loads(r.stdout)  # stdout holds only the JSON object
    assert fit["form"] == "compute" and fit["n_points"] == 8 and fit["convention"] == "6ND_total"
    assert 0.08 < fit["alpha"] < 0.16 and len(fit["predictions"]) == 1 and fit["backtest"]
    assert (tmp_path / "fit.png").stat().st_size > 10_000
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    logged = client.search_runs([client.get_experiment_by_name("arscale-fits").experiment_id])
    assert len(logged) == 1 and logged[0].data.metrics["alpha"] == pytest.approx(fit["alpha"])
    monkeypatch.chdir(tmp_path)  # artifact locations are relative to the store's folder, as `mlflow ui` reads them
    assert {a.path for a in client.list_artifacts(logged[0].info.run_id)} == {"fit.json", "fit.png"}
    assert list((tmp_path / "mlartifacts").rglob("fit.json")), "artifacts belong beside the SQLite store"


def test_fit_with_a_bad_csv_names_the_problem(tmp_path):
    (tmp_path / "runs.csv").write_text("params,tokens\n1,2\n")
    one_line_error(arscale("fit", "--runs", tmp_path / "runs.csv"), 2, "loss")
    (tmp_path / "runs.csv").write_text("params,tokens,loss\n1,2,abc\n")
    one_line_error(arscale("fit", "--runs", tmp_path / "runs.csv"), 2, "loss")
    one_line_error(arscale("fit", "--mlflow", f"sqlite:///{tmp_path}/empty.db"), 2, "empty.db does not exist")


def test_advise_ranks_candidates_within_the_budget(tmp_path):
    csv = synthetic_runs(tmp_path / "runs.csv")
    r = arscale("advise", "--runs", csv, "--target-compute", 1e17, "--budget", 1e15, "--form", "compute",
                "--bootstrap", 50, "--top", 3)
    assert r.returncode == 0, r.stderr
    ranks = [line.split() for line in r.stdout.splitlines()[2:]]
    assert [row[0] for row in ranks] == ["1", "2", "3"]
    assert all(float(row[3]) <= 1e15 for row in ranks)
