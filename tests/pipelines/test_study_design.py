"""A study's design from its config: seeds, learning-rate sweeps, per-size hyperparameters, token budgets without
caps, the confirmation run; and how the fit step picks the runs each law uses. Planning only (no training)."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from armodels.train import TrainConfig, TrainRun
from pipelines.config import load_config
from pipelines.errors import UserError
from pipelines.plan import build_steps, confirm_run, grid_runs, train_configs
from pipelines.step import topological_order
from pipelines.steps.fit import lr_study, matched_ratio, run_table, seed_noise

GRID = """name: s
models:
  seq_len: 32
  grids:
    - family: transformer
      sizes:
        - {n_layer: 1, n_embd: 16, n_head: 2, seeds: 3}
        - {n_layer: 2, n_embd: 32, n_head: 2, batch_size: 8, beta2: 0.99, warmup_tokens: 4096}
training:
  tokens_per_param: 20
  tokens_per_param_of: total
"""


def load(tmp_path, text):
    path = tmp_path / "study.yaml"
    path.write_text(text)
    return load_config(str(path))[0]


def test_seeds_and_per_size_options_reach_the_runs(tmp_path):
    cfg = load(tmp_path, GRID)
    runs = {tc.name: tc for tc in train_configs(cfg)}
    assert list(runs) == ["transformer-3.2k", "transformer-3.2k-s1", "transformer-3.2k-s2", "transformer-24.9k"]
    assert [runs[n].train.seed for n in list(runs)[:3]] == [0, 1, 2]
    big = runs["transformer-24.9k"].train
    assert (big.batch_size, big.beta2, big.warmup_tokens) == (8, 0.99, 4096)
    assert runs["transformer-3.2k"].train.batch_size == TrainConfig(tokens=1).batch_size
    # no caps: each size's tokens follow 20 × all its parameters
    for tc in runs.values():
        run = tc.run(".")
        assert tc.train.tokens == int(20 * run.costs().params)


def test_warmup_tokens_set_the_same_warmup_for_every_size():
    model = {"n_layer": 1, "n_embd": 16, "n_head": 2, "vocab_size": 300, "seq_len": 32}
    short, long = (TrainRun("transformer", model, TrainConfig(tokens=t, batch_size=4, warmup_tokens=1280), "a", "b")
                   for t in (12_800, 128_000))
    assert short.warmup_fraction * short.steps == pytest.approx(10)
    assert long.warmup_fraction * long.steps == pytest.approx(10)
    assert TrainRun("transformer", model, TrainConfig(tokens=1280, batch_size=4, warmup_tokens=10**6), "a",
                    "b").warmup_fraction == 0.5  # capped at half the run


def test_an_lr_sweep_trains_every_size_at_every_lr_and_seed(tmp_path):
    cfg = load(tmp_path, GRID.replace("  tokens_per_param_of: total\n", "  lr_sweep: [0.001, 0.004]\n  seeds: 2\n"))
    names = [tc.name for tc in train_configs(cfg)]
    assert names[:6] == ["transformer-3.2k-lr0.001", "transformer-3.2k-lr0.001-s1", "transformer-3.2k-lr0.001-s2",
                         "transformer-3.2k-lr0.004", "transformer-3.2k-lr0.004-s1", "transformer-3.2k-lr0.004-s2"]
    assert len(names) == 6 + 4  # the second size has the study's 2 seeds
    assert {tc.train.lr for tc in train_configs(cfg)} == {0.001, 0.004}


def test_the_confirmation_run_is_planned_at_r_times_the_largest_compute(tmp_path):
    cfg = load(tmp_path, GRID + "fit:\n  confirm: 4\n")
    planned = grid_runs(cfg)
    tc = confirm_run(cfg, cfg.models.grids[0], [t for _, t in planned])
    largest = max(t.run(".").flops("per_layer") for _, t in planned)
    run = tc.run(".")
    assert tc.name == "transformer-confirm-4x"
    assert 4 <= run.flops("per_layer") / largest < 4 * 1.15
    assert tc.train.tokens == int(20 * run.costs().params)  # the grid's rule, so it lies on the same frontier
    assert tc.model["n_embd"] % tc.model["n_head"] == 0 and tc.model["n_layer"] >= 2
    steps = {s.name: s for s in topological_order(build_steps(cfg))}
    assert "fit" in steps["train-transformer-confirm-4x"].inputs  # trained after the fit, which sets its lr
    assert "eval-transformer-confirm-4x" in steps["report"].inputs
    assert "eval-transformer-confirm-4x" not in steps["fit"].inputs  # the fit never sees it
    assert steps["fit"].config.confirm["transformer"]["compute"] == pytest.approx(run.flops("per_layer"))


@pytest.mark.parametrize("extra, message", [
    ("training:\n  seeds: 0\n", r"training\.seeds: Input should be greater than or equal to 1"),
    ("training:\n  lr_sweep: []\n", r"training\.lr_sweep: must be a non-empty list"),
    ("training:\n  lr_sweep: [0.01, -1]\n", r"training\.lr_sweep: learning rates must be positive"),
    ("fit:\n  confirm: 0.5\n", r"fit\.confirm: Input should be greater than or equal to 1"),
    ("fit:\n  convention: chinchilla\n", r"fit\.convention: chinchilla does not count rnn models' compute"),
    ("fit:\n  convention: flops\n", r"fit\.convention: Input should be"),
    ("training:\n  flops_budgets: [1.0e+9, 3.0e+9]\nfit:\n  confirm: 4\n", r"fit\.confirm: .*tokens_per_param"),
    ("training:\n  schedule: step\n", r"training\.schedule: Input should be 'cosine', 'wsd' or 'constant'"),
    ("training:\n  schedule: wsd\n  decay_fraction: 1.2\n", r"training\.decay_fraction: Input should be less than 1"),
    ("training:\n  schedule: wsd\n  decay_fraction: 0\n", r"training\.decay_fraction: Input should be greater than 0"),
    ("training:\n  decay_fraction: 0.1\n", r"training: decay_fraction shapes the cooldown of schedule: wsd"),
    ("training:\n  schedule: wsd\n  warmup_fraction: 0.5\n  decay_fraction: 0.5\n", r"leave no stable phase"),
    ("training:\n  cooldowns: [5, 10]\n", r"training\.cooldowns: cooldown branches need schedule: wsd"),
    ("training:\n  schedule: wsd\n  cooldowns: [5, 40]\n",
     r"cooldowns: 40 tokens per parameter is longer than the trunk \(tokens_per_param: 20\); raise tokens_per_param"),
    ("training:\n  schedule: wsd\n  cooldowns: []\n", r"cooldowns: must be a non-empty list of positive budgets"),
    ("training:\n  schedule: wsd\n  tokens: 1000\n  cooldowns: [5]\n", r"leave training.tokens and flops_budgets"),
    ("training:\n  schedule: wsd\n  tokens_per_param: [5, 10]\n  cooldowns: [5]\n",
     r"training\.cooldowns: give the budgets once"),
    ("training:\n  tokens: 1000\n  tokens_per_param: [5, 10]\n", r"training\.tokens_per_param: a list of ratios"),
    ("training:\n  tokens: [1000, 2.5]\n", r"training\.tokens: one positive whole number of tokens, or a non-empty"),
    ("training:\n  tokens_per_param: [5, 0]\n",
     r"training\.tokens_per_param: one positive number of tokens per parameter, or a non-empty list"),
])
def test_bad_design_settings_give_one_line_naming_the_key(tmp_path, extra, message):
    text = "name: s\nmodels:\n  grids: [{family: rnn, sizes: [{hidden: 8}]}]\n" + extra
    with pytest.raises(UserError, match=message) as e:
        load(tmp_path, text)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("size, message", [
    ("{n_layer: 1, seeds: 0}", r"sizes\.0\.seeds: must be a whole number of seeds"),
    ("{n_layer: 1, lr_sweep: []}", r"sizes\.0\.lr_sweep: must be a non-empty list"),
    ("{n_layer: 1, batch_size: 2.5}", r"sizes\.0\.batch_size: must be a whole number"),
    ("{n_layer: 1, beta2: 1.5}", r"sizes\.0\.beta2: must be a number in \[0, 1\)"),
])
def test_bad_size_options_give_one_line(tmp_path, size, message):
    with pytest.raises(UserError, match=message):
        load(tmp_path, f"name: s\nmodels:\n  grids: [{{sizes: [{size}]}}]\n")


def test_confirm_needs_a_family_it_can_scale(tmp_path):
    with pytest.raises(UserError, match=r"fit\.confirm: .*wavenet .* has no such fields"):
        load(tmp_path, "name: s\nmodels:\n  grids: [{family: wavenet, sizes: [{channels: 8}]}]\nfit: {confirm: 4}\n")


# ---- which runs the laws use (pipelines/steps/fit.py), on records shaped like eval.json


def record(run_id, n, tokens, lr, seed, loss, family="transformer"):
    return {"run_id": run_id, "family": family, "status": "ok", "params": n, "params_nonembedding": n // 2,
            "tokens": tokens, "flops_per_layer": 6.0 * n * tokens, "flops_6ND": 3.0 * n * tokens, "lr": lr,
            "seed": seed, "loss": loss, "device": "cpu", "config": {"n": n}}


def sweep_records():
    """Two sizes, three lrs, two seeds each: the small size's best lr is the middle one, the big one's the largest."""
    out = []
    for n, losses in ((1000, {1e-3: 4.0, 2e-3: 3.8, 4e-3: 3.9}), (4000, {1e-3: 3.6, 2e-3: 3.5, 4e-3: 3.4})):
        for lr, loss in losses.items():
            for seed in (0, 1):
                out.append(record(f"m{n}-lr{lr:g}-s{seed}", n, 20 * n, lr, seed, loss + 0.01 * seed))
    return out


def test_each_size_enters_at_its_best_lr_with_all_its_seeds():
    runs = run_table(sweep_records(), "per_layer")
    chosen = runs[runs["in_fit"]]
    assert sorted(chosen["run_id"]) == ["m1000-lr0.002-s0", "m1000-lr0.002-s1", "m4000-lr0.004-s0",
                                        "m4000-lr0.004-s1"]
    assert chosen["on_frontier"].all()  # one size per budget: all of them are the frontier
    noise = seed_noise(chosen)
    assert [s["seeds"] for s in noise["sizes"]] == [2, 2]
    assert noise["sizes"][0]["sd"] == pytest.approx(0.01 / math.sqrt(2))
    assert noise["dof"] == 2 and noise["pooled_relative_sd"] > 0


def test_lr_study_refines_inside_the_sweep_and_flags_its_edge():
    study = lr_study(run_table(sweep_records(), "per_layer"))
    small, big = study["sizes"]
    assert 1e-3 < small["best_lr"] < 4e-3 and not small["at_edge"]  # the parabola's vertex, inside
    assert big["best_lr"] == 4e-3 and big["at_edge"]
    assert study["at_edge"] == [big["point"]]
    law = study["law"]
    assert law["source"] == "lr sweep" and law["exponent"] > 0  # the bigger size wants the larger lr here
    assert law["coef"] * 2000 ** law["exponent"] == pytest.approx(big["best_lr"], rel=1e-6)


def test_an_isoflop_budget_puts_only_its_best_size_on_the_frontier():
    records = [record("small", 1000, 40_000, 1e-3, 0, 3.9), record("mid", 2000, 20_000, 1e-3, 0, 3.7),
               record("big", 4000, 10_000, 1e-3, 0, 3.8), record("next", 4000, 100_000, 1e-3, 0, 3.3)]
    runs = run_table(records, "per_layer")
    assert sorted(runs.loc[runs["on_frontier"], "run_id"]) == ["mid", "next"]
    assert runs["in_fit"].all()


def test_l_of_n_uses_the_runs_at_the_designs_tokens_per_parameter():
    records = [record(f"r{n}", n, 20 * n // 2, 1e-3, 0, 4.0 - n / 1e4) for n in (1000, 2000, 4000, 8000)]
    records.append(record("capped", 16000, 20 * 8000 // 2, 1e-3, 0, 3.0))  # a capped run: far fewer tokens
    chosen = run_table(records, "per_layer")
    kept = matched_ratio(chosen)
    assert isinstance(kept, pd.DataFrame) and sorted(kept["run_id"]) == ["r1000", "r2000", "r4000", "r8000"]
    # cooldown branches: every size at 5, 10 and 20 tokens per parameter; L(N) takes the longest budget
    branches = [record(f"r{n}-cd{c}", n, c * n, 1e-3, 0, 4.0 - n / 1e4 - c / 100) for n in (1000, 2000, 4000)
                for c in (5, 10, 20)]
    kept = matched_ratio(run_table(branches, "per_layer"))
    assert sorted(kept["run_id"]) == ["r1000-cd20", "r2000-cd20", "r4000-cd20"]


COOLDOWNS = """name: s
models:
  seq_len: 32
  grids:
    - family: transformer
      sizes:
        - {n_layer: 1, n_embd: 16, n_head: 2}
training:
  schedule: wsd
  decay_fraction: 0.2
  tokens_per_param: 20
  cooldowns: [5, 10, 20]
  batch_size: 8
fit:
  confirm: 2
"""


def test_cooldowns_are_planned_as_one_trunk_in_segments_and_a_branch_per_budget(tmp_path):
    steps = {s.name: s for s in topological_order(build_steps(load(tmp_path, COOLDOWNS)))}
    trunk = [steps[n] for n in steps if "-trunk-" in n]
    branches = {n: steps[n] for n in steps if n.startswith("train-") and "-cd" in n}
    assert len(trunk) == 3 and len(branches) == 3
    for before, segment in zip([None, *trunk], trunk):  # a chain: each segment starts where the one before ended
        assert segment.config.train.schedule == "constant"
        assert (segment.inputs.get("trunk"), segment.config.start_step) == (
            (before, before.config.train.branch_points[0]) if before else (None, 0))
    for name, branch in branches.items():
        run = branch.config.run(tmp_path)
        start = branch.config.start_step
        assert branch.config.train.schedule == "wsd" and start == run.steps - round(0.2 * run.steps)
        assert branch.inputs["trunk"].config.train.branch_points == (start,)  # the segment that ends there
        assert branch.work_tokens == (run.steps - start) * 8 * 32  # its cooldown only
        assert f"eval-{name[len('train-'):]}" in steps
    warmups = {s.config.train.warmup_tokens for s in [*trunk, *branches.values()]}
    assert len(warmups) == 1  # every run of the trunk warms up alike, so a branch is a straight WSD run
    confirm = steps["train-transformer-confirm-2x"].config
    assert (confirm.trunk, confirm.start_step, confirm.train.schedule) == ("", 0, "wsd")  # a straight run


def test_a_longer_cooldown_added_later_extends_the_trunk_and_keeps_every_earlier_step(tmp_path):
    before = {s.name: s.hash for s in topological_order(build_steps(load(tmp_path, COOLDOWNS)))}
    longer = COOLDOWNS.replace("tokens_per_param: 20", "tokens_per_param: 40").replace("[5, 10, 20]", "[5, 10, 20, 40]")
    after = {s.name: s.hash for s in topological_order(build_steps(load(tmp_path, longer)))}
    kept = [n for n in before if n.startswith("train-") and "confirm" not in n]
    assert len(kept) == 6 and all(after[n] == before[n] for n in kept)
    added = sorted(n for n in after if n.startswith("train-") and n not in before and "confirm" not in n)
    assert [n.removeprefix("train-transformer-3.2k-") for n in added] == ["cd40", "trunk-101k"]  # and no more


def test_a_dry_run_prints_what_the_cooldowns_save(tmp_path):
    from pipelines.estimate import cooldown_savings

    plan = [(s, {"state": "pending"}) for s in topological_order(build_steps(load(tmp_path, COOLDOWNS)))]
    line = cooldown_savings(plan)
    trains = [s.config for s, _ in plan if s.name.startswith("train-") and s.config.trunk]
    spent = sum(tc.run(tmp_path).flops("per_layer", tc.own_tokens()) for tc in trains)
    separate = sum(tc.run(tmp_path).flops("per_layer") for tc in trains if tc.train.schedule == "wsd")
    assert line.startswith(f"WSD cooldowns: {spent:.2e} FLOPs of training for 3 (N, D) points off 1 trunks, "
                           f"{spent / separate:.0%} of the {separate:.2e}")
    assert 0.6 < spent / separate < 0.7  # budgets 5, 10 and 20 with 20% cooldowns: the trunk is paid once


BUDGETS = """name: s
models:
  seq_len: 32
  grids:
    - {family: transformer, label: cosine, schedule: cosine, sizes: &sizes [{n_layer: 1, n_embd: 8, n_head: 2},
                                                                           {n_layer: 1, n_embd: 16, n_head: 2}]}
    - {family: transformer, label: wsd, schedule: wsd, sizes: *sizes}
training:
  tokens_per_param: [5, 10, 20]
  tokens_per_param_of: total
  batch_size: 8
"""


def test_sizes_times_token_budgets_are_one_run_each_by_cosine_and_cooldown_branches_by_wsd(tmp_path):
    """A list of tokens_per_param trains every size at each budget; two labelled grids that differ only in their
    schedule become two series: the cosine one one run per point, the WSD one a trunk per size and its branches."""
    cfg = load(tmp_path, BUDGETS)
    steps = {s.name: s for s in topological_order(build_steps(cfg))}
    cosine = {n: s.config for n, s in steps.items() if n.startswith("train-cosine-")}
    branches = {n: s.config for n, s in steps.items() if n.startswith("train-wsd-") and "-cd" in n}
    assert sorted(n.rsplit("-", 1)[1] for n in cosine) == sorted(["tpp5", "tpp10", "tpp20"] * 2)
    assert sorted(n.rsplit("-", 1)[1] for n in branches) == sorted(["cd5", "cd10", "cd20"] * 2)
    assert len([n for n in steps if n.startswith("train-wsd-") and "-trunk-" in n]) == 6
    for name, tc in cosine.items():
        run = tc.run(tmp_path)
        ratio = float(name.rsplit("-tpp", 1)[1])
        assert tc.train.schedule == "cosine" and not tc.trunk
        assert run.tokens_seen == pytest.approx(ratio * run.costs().params, abs=8 * 32)  # whole steps
        twin = branches[name.replace("cosine-", "wsd-").replace("-tpp", "-cd")]
        assert twin.train.schedule == "wsd" and twin.run(tmp_path).tokens_seen == run.tokens_seen  # the same point
    assert steps["fit"].config.chinchilla and not steps["fit"].config.isoflop  # Approach 3 on each series
    series = {s.config.series for n, s in steps.items() if n.startswith("eval-")}
    assert series == {"cosine", "wsd"}  # what the fits group by
    assert cfg.training_for(cfg.models.grids[0]).branch_budgets is None
    assert cfg.training_for(cfg.models.grids[1]).branch_budgets == [5, 10, 20]


def test_token_budgets_in_tokens_are_the_same_for_every_size(tmp_path):
    """training.tokens as a list: every size sees each many tokens (small sizes far past their optimum, large ones
    short of it, as Approach 3 wants), by cosine runs named -d<tokens> and WSD branches named -cd<tokens>."""
    cfg = load(tmp_path, BUDGETS.replace("tokens_per_param: [5, 10, 20]", "tokens: [20000, 40000, 60000.0]"))
    steps = {s.name: s for s in topological_order(build_steps(cfg))}
    trained = {n.removeprefix("train-"): s.config for n, s in steps.items() if n.startswith("train-")
               and "-trunk-" not in n}
    assert sorted(n.split("-", 2)[2] for n in trained) == sorted(
        [f"{kind}{t}" for kind in ("d", "cd") for t in ("20k", "40k", "60k")] * 2)
    for name, tc in trained.items():
        tokens = {"20k": 20_000, "40k": 40_000, "60k": 60_000}[name.rsplit("d", 1)[1]]
        assert abs(tc.run(tmp_path).tokens_seen - tokens) <= 8 * 32  # whole steps
        assert tc.train.schedule == ("wsd" if name.startswith("wsd-") else "cosine")
        assert bool(tc.trunk) == name.startswith("wsd-")
    assert steps["fit"].config.chinchilla


def test_a_study_without_labels_or_budget_lists_records_none_of_them(tmp_path):
    """Labels, grid schedules and budget lists are added settings: a study that sets none of them records none in
    its steps' configs, so the steps it planned before keep their hashes."""
    steps = {s.name: s for s in topological_order(build_steps(load(tmp_path, GRID)))}
    assert not steps["fit"].config.chinchilla and steps["eval-transformer-24.9k"].config.series == ""
    assert "label" not in load(tmp_path, GRID).stable_dump()["models"]["grids"][0]


@pytest.mark.parametrize("grid, message", [
    ("{family: transformer, decay_fraction: 0.1, sizes: [{n_layer: 1}]}",
     r"models\.grids\.0\.decay_fraction: decay_fraction shapes the cooldown of schedule: wsd"),
    ("{family: transformer, schedule: linear, sizes: [{n_layer: 1}]}", r"models\.grids\.0\.schedule: Input should be"),
    ("{family: transformer, label: a/b, sizes: [{n_layer: 1}]}", r"models\.grids\.0\.label: String should match"),
    ("{family: transformer, schedule: cosine, sizes: [{n_layer: 1}]}\ntraining:\n  schedule: wsd\n  cooldowns: [5]",
     r"models\.grids\.0\.schedule: with training\.cooldowns: cooldown branches need schedule: wsd"),
])
def test_bad_grid_overrides_give_one_line_naming_the_grid(tmp_path, grid, message):
    with pytest.raises(UserError, match=message) as e:
        load(tmp_path, f"name: s\nmodels:\n  grids:\n    - {grid}\n")
    assert "\n" not in str(e.value)


def test_a_made_ensemble_is_scored_by_the_made_evaluations_only(tmp_path):
    cfg = load_config("images-families", ["evaluation.ensemble=4"])[0]
    evals = {s.name: s.config for s in topological_order(build_steps(cfg)) if s.name.startswith("eval-")}
    assert evals and {n.split("-")[2] for n in evals} >= {"made", "pixelcnn"}
    for name, config in evals.items():
        assert config.common.ensemble == (4 if "-made-" in name else 1), name
    with pytest.raises(UserError, match=r"evaluation\.ensemble: only made models average their masks"):
        load(tmp_path, GRID + "evaluation:\n  ensemble: 2\n")
