"""A study designed for the fit, end to end on real Ray, DeepSpeed and MLflow: an lr sweep and extra seeds, the
fit on each size's best lr, the lr law, and a confirmation run trained after the fit at the lr it gives, with the
report showing the prediction beside the actual loss."""

from __future__ import annotations

import csv
import json

import pytest

from pipelines.config import StudyConfig
from pipelines.study import STUDY_FILE, run_study
from tests.support.studies import step_dir

pytestmark = pytest.mark.slow

DESIGN = {
    "name": "design-e2e",
    "corpus": {"source": "python-stdlib", "max_bytes": 600_000, "val_fraction": 0.1},
    "tokenizer": {"vocab_size": 280, "train_bytes": 200_000},
    "shards": {"shard_tokens": 100_000},
    "models": {"seq_len": 32, "grids": [{"family": "transformer", "sizes": [
        {"n_layer": 1, "n_embd": 8, "n_head": 2, "seeds": 2}, {"n_layer": 1, "n_embd": 16, "n_head": 2},
        {"n_layer": 2, "n_embd": 16, "n_head": 2}, {"n_layer": 2, "n_embd": 24, "n_head": 2}]}]},
    "training": {"tokens_per_param": 2, "tokens_per_param_of": "total", "batch_size": 16,
                 "lr_sweep": [0.003, 0.01], "eval_points": 1, "eval_windows": 8, "checkpoints": 0},
    "evaluation": {"max_tokens": 2000, "samples": 1},
    "fit": {"bootstrap": 50, "confirm": 2},
}


@pytest.fixture(scope="module")
def study(tmp_path_factory, ray_local):
    out = tmp_path_factory.mktemp("design")
    cfg = StudyConfig.model_validate(DESIGN)
    outcomes = run_study(cfg, tmp_path_factory.mktemp("cfg") / "design.yaml", out)
    return out, outcomes


def test_every_size_is_swept_and_the_confirmation_run_trains_after_the_fit(study):
    out, outcomes = study
    assert {o.state for o in outcomes.values()} == {"succeeded"}
    trained = [n for n in outcomes if n.startswith("train-")]
    assert len(trained) == 2 * (4 + 1) + 1  # 4 sizes × 2 lrs, one size with 2 seeds, and the confirmation run
    fits = json.loads((step_dir(out, "fit") / "fit.json").read_text())["families"]["transformer"]
    confirm = fits["confirm"]
    result = json.loads((step_dir(out, "train-transformer-confirm-2x") / "run.json").read_text())
    assert result["train"]["lr"] == pytest.approx(confirm["lr"])  # the lr law's, not the config's
    assert fits["lr"]["swept"] and len(fits["lr"]["sizes"]) == 4 and fits["lr"]["law"]["source"] == "lr sweep"
    assert 2 <= confirm["multiplier"] < 2.3 and confirm["predicted"] > 0


def test_the_fit_uses_each_sizes_best_lr_and_lists_which_runs(study):
    out, _ = study
    with open(step_dir(out, "fit") / "runs.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 10  # the confirmation run is not the fit's
    chosen = [r for r in rows if r["in_fit"] == "True"]
    by_size: dict[str, list] = {}
    for r in rows:
        by_size.setdefault(r["params"], []).append(r)
    for size in by_size.values():
        means = {}
        for r in size:
            means.setdefault(r["lr"], []).append(float(r["loss"]))
        best = min(means, key=lambda lr: sum(means[lr]) / len(means[lr]))
        assert {r["lr"] for r in size if r["in_fit"] == "True"} == {best}
    assert len(chosen) == 5  # 4 sizes, the smallest with both its seeds
    fits = json.loads((step_dir(out, "fit") / "fit.json").read_text())["families"]["transformer"]
    assert sorted(fits["compute"]["runs"]) == sorted(r["run_id"] for r in chosen)
    assert fits["noise"]["sizes"][0]["seeds"] == 2


def test_the_report_shows_the_confirmation_noise_lr_and_scale(study):
    out, _ = study
    study_file = json.loads((out / STUDY_FILE).read_text())
    report = (out / study_file["report"]).read_text()
    for section in ("## What these numbers rest on", "## Confirmation run", "## Noise", "## Learning rate",
                    "### Which form extrapolates best", "### FLOPs convention"):
        assert section in report
    assert "![loss vs lr](lr-transformer.png)" in report
    row = next(line for line in report.splitlines() if line.startswith("| transformer | transformer-confirm-2x"))
    assert row.count("|") == 13 and ("| yes |" in row or "| **no** |" in row)
