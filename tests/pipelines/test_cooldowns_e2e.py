"""WSD cooldown branches end to end on real Ray, DeepSpeed and MLflow: each size trains one trunk at the peak lr,
in segments, and each budget's cooldown starts from the trunk's state at its branch point; a longer budget added
later extends the trunk and keeps every earlier step. Beside them, a cosine grid of the same sizes and budgets (one
run per point) is fitted apart, and the report sets the two side by side."""

from __future__ import annotations

import copy
import csv
import json

import pytest

from armodels.train import branch_folder, lr_multiplier
from pipelines.config import StudyConfig
from pipelines.study import run_study
from tests.support.studies import step_dir

pytestmark = pytest.mark.slow

SIZES = [{"n_layer": 1, "n_embd": 8, "n_head": 2}, {"n_layer": 1, "n_embd": 16, "n_head": 2}]
COOLDOWNS = {
    "name": "cooldowns-e2e",
    "corpus": {"source": "python-stdlib", "max_bytes": 400_000, "val_fraction": 0.1},
    "tokenizer": {"vocab_size": 280, "train_bytes": 200_000},
    "shards": {"shard_tokens": 100_000},
    "models": {"seq_len": 32, "grids": [
        {"family": "transformer", "sizes": SIZES},
        {"family": "transformer", "label": "cosine", "schedule": "cosine", "sizes": SIZES}]},
    # sizes × budgets: the WSD grid plans them as cooldowns off one trunk per size, the cosine grid as a run each
    "training": {"schedule": "wsd", "decay_fraction": 0.25, "tokens_per_param": [1, 2, 4],
                 "tokens_per_param_of": "total", "batch_size": 8, "eval_points": 1, "eval_windows": 4,
                 "checkpoints": 1},
    "evaluation": {"max_tokens": 2000, "samples": 0},
    "fit": {"bootstrap": 20},
}


@pytest.fixture(scope="module")
def study(tmp_path_factory, ray_local):
    out = tmp_path_factory.mktemp("cooldowns")
    cfg = StudyConfig.model_validate(COOLDOWNS)
    return out, run_study(cfg, tmp_path_factory.mktemp("cfg") / "cooldowns.yaml", out)


def test_each_cooldown_starts_from_its_trunks_branch_point(study):
    out, outcomes = study
    assert {o.state for o in outcomes.values()} == {"succeeded"}
    branches = sorted(n for n in outcomes if n.startswith("train-") and "-cd" in n)
    assert len(branches) == 6 and len([n for n in outcomes if "-trunk-" in n]) == 6
    for name in branches:
        folder = step_dir(out, name)
        run = json.loads((folder / "run.json").read_text())
        result = json.loads((folder / "result.json").read_text())
        start = int(run["start_from"].rsplit("-", 1)[1])
        assert result["status"] == "ok" and result["resumed_at_step"] == start and result["steps"] > start
        assert (branch_folder(run["start_from"].rsplit("/", 1)[0], start) / "checkpoint" / "state.json").is_file()
        curve = json.loads((folder / "curve.json").read_text())["train"]
        assert curve[0]["step"] == 0 and curve[-1]["step"] == result["steps"] - 1  # the trunk's part, then its own
        t = run["train"]
        warmup = t["warmup_tokens"] / (result["tokens"] / result["steps"] * result["steps"])
        expected = [t["lr"] * lr_multiplier(p["step"], result["steps"], warmup, t["min_lr_ratio"], "wsd", 0.25)
                    for p in curve]
        assert [p["lr"] for p in curve] == pytest.approx(expected)  # one WSD schedule across trunk and cooldown
        assert (step_dir(out, "eval-" + name[len("train-"):]) / "eval.json").is_file()


def test_the_report_says_what_the_cooldowns_saved_as_the_dry_run_does(study):
    from pipelines.estimate import cooldown_savings
    from pipelines.plan import build_steps
    from pipelines.step import topological_order

    out, _ = study
    plan = [(s, {"state": "succeeded"}) for s in topological_order(build_steps(StudyConfig.model_validate(COOLDOWNS)))]
    share = cooldown_savings(plan).split(" FLOPs of training for 6 (N, D) points off 2 trunks, ")[1].split(" ")[0]
    report = (step_dir(out, "report") / "report.md").read_text()
    assert "## Cooldown branches" in report and f"for 6 points off 2 trunks, {share} of the " in report


def test_the_fit_fits_each_trunks_whole_curves_and_predicts_each_branch_from_the_others(study):
    out, _ = study
    trunks = json.loads((step_dir(out, "fit") / "fit.json").read_text())["families"]["transformer"]["curves"]
    assert len(trunks) == 2
    for trunk in trunks:
        assert set(trunk["law"]["params"]) == {"L0", "A", "alpha", "C"} and trunk["law"]["runs"] == 3
        assert [b["run"].rsplit("-", 1)[1] for b in trunk["backtest"]] == ["cd1", "cd2", "cd4"]
        for b in trunk["backtest"]:
            assert b["error"] == pytest.approx(b["predicted"] / b["actual"] - 1)
        assert trunk["worst_error"] == max(abs(b["error"]) for b in trunk["backtest"]) < 0.25
    report = (step_dir(out, "report") / "report.md").read_text()
    assert "## Whole training curves" in report and all(f"| {t['trunk']} |" in report for t in trunks)


def test_each_branch_is_an_mlflow_run_nested_under_the_trunk_it_continues(study):
    from mlflow.tracking import MlflowClient

    out, outcomes = study
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    for name in [n for n in outcomes if n.startswith("train-") and ("-cd" in n or "-trunk-" in n)]:
        status = json.loads((step_dir(out, name) / "STATUS.json").read_text())
        trunk = status["inputs"].get("trunk")
        parent = client.get_run(status["mlflow_run_id"]).data.tags["mlflow.parentRunId"]
        if trunk:  # a branch, or a segment after the first: under the segment it continues
            assert parent == json.loads((out / trunk / "STATUS.json").read_text())["mlflow_run_id"], name
        else:  # the first segment: under the study's run
            assert client.get_run(parent).data.tags.get("mlflow.parentRunId") is None, name


def test_a_longer_budget_later_extends_the_trunk_and_reruns_nothing_else(study, tmp_path):
    out, _ = study
    longer = copy.deepcopy(COOLDOWNS)
    longer["training"].update(tokens_per_param=[1, 2, 4, 8])
    outcomes = run_study(StudyConfig.model_validate(longer), tmp_path / "longer.yaml", out)
    ran = sorted(n for n, o in outcomes.items() if o.state == "succeeded" and n.startswith("train-"))
    assert sum(n.endswith("-cd8") for n in ran) == 2 and sum("-trunk-" in n for n in ran) == 2, ran
    assert sum(n.endswith("-tpp8") for n in ran) == 2 and len(ran) == 6, ran  # and the cosine grid's new point
    assert all(o.state == "skipped" for n, o in outcomes.items() if n.startswith("train-") and n not in ran)


def test_the_cosine_grid_beside_them_is_fitted_apart_and_set_side_by_side(study):
    out, outcomes = study
    cosine = sorted(n for n in outcomes if n.startswith("train-cosine-"))
    assert [n.rsplit("-", 1)[1] for n in cosine] == ["tpp1", "tpp2", "tpp4"] * 2
    for name in cosine:  # a straight cosine run at the very (N, D) point of a WSD branch
        run = json.loads((step_dir(out, name) / "run.json").read_text())
        twin = json.loads((step_dir(out, name.replace("train-cosine-", "train-transformer-").replace("-tpp", "-cd"))
                           / "run.json").read_text())
        assert run["train"]["schedule"] == "cosine" and not run.get("start_from")
        assert (run["train"]["tokens"], run["model"]) == (twin["train"]["tokens"], twin["model"])
    # the study's latest fit (another test may have added a longer budget since): each series fitted on its own runs
    fit_dir = step_dir(out, "fit")
    fits = json.loads((fit_dir / "fit.json").read_text())["families"]
    runs = {row["run_id"]: row for row in csv.DictReader((fit_dir / "runs.csv").open())}
    assert set(fits) == {"transformer", "cosine"} and "curves" not in fits["cosine"]
    for series, fit in fits.items():  # Approach 3 on each: its (N, D) points, its fit or why not
        own = sorted(r for r, row in runs.items() if row["series"] == series and row["status"] == "ok")
        assert len(own) >= 6 and all(r.startswith("cosine-") == (series == "cosine") for r in own)
        assert "chinchilla" in fit and "isoflop" not in fit
        assert sorted(fit["chinchilla"].get("runs", [])) in ([], own)
    report = (step_dir(out, "report") / "report.md").read_text()
    both = all("E" in fit["chinchilla"] for fit in fits.values())
    assert ("## Side by side: compute, L(N, D) and allocation" in report) == both
