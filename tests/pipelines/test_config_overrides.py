"""`arscale study run --set KEY=VALUE`: overrides applied before validation, shown in the plan, recorded in the
study; and a config's every problem listed at once by the real CLI."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from pipelines.config import apply_overrides, load_config
from pipelines.errors import UserError
from pipelines.plan import train_configs
from pipelines.study import STUDY_FILE, rerun_command
from tests.support.cli import ARSCALE, ROOT, arscale, one_line_error, subprocess_env
from tests.support.studies import micro_study_yaml, step_dir

CONFIG = {"name": "s", "models": {"seq_len": 32, "grids": [{"family": "transformer", "sizes": [
    {"n_layer": 1, "n_embd": 16, "n_head": 2}, {"n_layer": 2, "n_embd": 32, "n_head": 2}]}]}}


def test_overrides_set_keys_list_entries_and_new_sections():
    data, set_by = apply_overrides(CONFIG, ["training.lr=1e-3", "models.seq_len=64",
                                            "models.grids.0.sizes.1.n_embd=48", "training.lr_sweep=[0.002, 5e-3]",
                                            "fit.confirm=null", "name='007'"])
    assert data["training"] == {"lr": 0.001, "lr_sweep": [0.002, 0.005]}  # 1e-3 a number, not PyYAML's string
    assert data["models"]["seq_len"] == 64 and data["models"]["grids"][0]["sizes"][1]["n_embd"] == 48
    assert data["fit"] == {"confirm": None} and data["name"] == "007"
    assert CONFIG["models"]["seq_len"] == 32 and "training" not in CONFIG  # the file's data is left as it was
    assert set_by["models.grids.0.sizes.1.n_embd"] == "models.grids.0.sizes.1.n_embd=48"


@pytest.mark.parametrize("item, message", [
    ("training.lr", r"--set training\.lr: give KEY=VALUE"),
    ("training..lr=1", r"--set training\.\.lr=1: give KEY=VALUE"),
    ("models.grids.1.family=rnn", r"models\.grids is a list of 1; give an index from 0 to 0 \(got '1'\)"),
    ("models.grids.first.family=rnn", r"models\.grids is a list of 1; .*\(got 'first'\)"),
    ("models.seq_len.x=1", r"models\.seq_len is 32, not a section"),
    ("training.lr=[1, 2", r"--set training\.lr=\[1, 2: the value is not valid YAML"),
])
def test_bad_overrides_are_one_line(item, message):
    with pytest.raises(UserError, match=message) as e:
        apply_overrides(CONFIG, [item])
    assert "\n" not in str(e.value)


def test_an_override_changes_the_planned_runs_and_names_itself_in_errors(tmp_path):
    config = tmp_path / "s.yaml"
    config.write_text(json.dumps(CONFIG))
    before = train_configs(load_config(str(config))[0])
    after = train_configs(load_config(str(config), ["training.lr=1e-3", "models.grids.0.sizes.0.n_embd=8"])[0])
    assert [r.train.lr for r in after] == [0.001, 0.001] != [r.train.lr for r in before]
    assert after[0].model["n_embd"] == 8 and after[1].model == before[1].model
    with pytest.raises(UserError, match=r": training\.lrr: unknown key \(did you mean lr\?\).* \(from --set "
                                        r"training\.lrr=1e-3\)$"):
        load_config(str(config), ["training.lrr=1e-3"])
    with pytest.raises(UserError, match=r"models\.grids\.0\.sizes\.1\.n_embed: transformer has no such field "
                                        r"\(did you mean n_embd\?\).*\(from --set models\.grids\.0\.sizes\.1"):
        load_config(str(config), ["models.grids.0.sizes.1.n_embed=48"])


def test_bad_set_on_the_command_line_exits_2_with_one_line(tmp_path):
    one_line_error(arscale("study", "run", "text-tiny", "--set", "training.lr=fast", "--dry-run"), 2,
                   "training.lr: Input should be a valid number, unable to parse string as a number (got 'fast') "
                   "(from --set training.lr=fast)")
    one_line_error(arscale("study", "run", "text-tiny", "--set", "trainig.lr=1e-3", "--dry-run"), 2,
                   "trainig: unknown key (did you mean training?)")


def test_several_problems_are_listed_by_the_cli_one_per_line(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("name: s\nmodels:\n  grids: [{sizes: [{n_layer: 1, n_embed: 16, n_head: 2}]}]\n"
                      "training: {lrr: 1}\n")
    r = arscale("study", "run", config, "--set", "evaluation.samples=-1", "--dry-run", "--out", tmp_path / "s")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.splitlines() == [
        f"error: config {config}: 3 problems:",
        "  models.grids.0.sizes.0.n_embed: transformer has no such field (did you mean n_embd?); its fields: "
        + r.stderr.split("its fields: ")[1].splitlines()[0],
        f"  training.lrr: {r.stderr.split('training.lrr: ')[1].splitlines()[0]}",
        "  evaluation.samples: Input should be greater than or equal to 0 (got -1) (from --set evaluation.samples=-1)",
    ]
    assert "training.lrr: unknown key (did you mean lr?)" in r.stderr
    assert not (tmp_path / "s").exists()


def test_dry_run_plans_with_the_overrides(tmp_path):
    def steps(*args) -> tuple[str, dict[str, str]]:
        """The dry run's output, and each step's name and hash."""
        r = arscale("study", "run", "text-tiny", "--dry-run", "--out", tmp_path / "s", *args)
        assert r.returncode == 0, r.stderr
        return r.stdout, dict(re.findall(r"^(\S+)-([0-9a-f]{10})\s", r.stdout, re.M))

    plain_out, plain = steps()
    out, changed = steps("--set", "training.lr=1e-3")
    assert "with --set training.lr=1e-3" in out and "with --set" not in plain_out
    assert plain.keys() == changed.keys()
    differ = {name for name in plain if plain[name] != changed[name]}
    assert differ == {name for name in plain if name.startswith(("train-", "eval-", "fit", "report"))}


def test_a_run_records_its_overrides(tmp_path):
    """A real one-run study: study.json lists the --set items and the config they made, and the training run used
    the overridden learning rate."""
    config = tmp_path / "micro.yaml"
    config.write_text(micro_study_yaml("micro", max_bytes=200_000, train_bytes=60_000, tokens=16_000, checkpoints=0,
                                       num_workers=1))
    command = [*ARSCALE, "study", "run", str(config), "--set", "training.lr=3e-3", "--set", "evaluation.samples=0",
               "--out", str(tmp_path / "s")]
    r = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600, env=subprocess_env())
    assert r.returncode == 0, r.stderr[-3000:]
    study = json.loads((tmp_path / "s" / STUDY_FILE).read_text())
    assert study["overrides"] == ["training.lr=3e-3", "evaluation.samples=0"]
    assert study["config"]["training"]["lr"] == 0.003 and study["config"]["evaluation"]["samples"] == 0
    run = json.loads((step_dir(tmp_path / "s", "train-transformer-3.2k") / "run.json").read_text())
    assert run["train"]["lr"] == 0.003


def test_the_command_that_resumes_a_study_repeats_its_overrides():
    """What an interrupted study (or one whose cluster died) tells the user to run: the same config and --set."""
    assert rerun_command(Path("c.yaml"), "s3://b/s", ["training.lr=1e-3", "training.lr_sweep=[1, 2]"]) == (
        "arscale study run c.yaml --set training.lr=1e-3 --set 'training.lr_sweep=[1, 2]' --out s3://b/s")
    assert rerun_command(Path("c.yaml"), Path("/s"), []) == "arscale study run c.yaml --out /s"
