"""A dry run's cost: the FLOPs of the training and evaluation that would run, and a rough wall time on this machine
from a throughput measured in the dry run itself, without starting Ray."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.cli import main
from pipelines.config import load_config
from pipelines.estimate import Job, Throughput, critical_path, describe_cost, machine_capacity, wall_time
from pipelines.plan import build_steps
from pipelines.step import topological_order
from tests.support.cli import ROOT, subprocess_env

# The real CLI in a fresh process, which then says whether Ray was started.
DRY_RUN = ("import sys, ray; from pipelines.cli import main; code = main(sys.argv[1:]); "
           "print('ray started' if ray.is_initialized() else 'ray not started'); sys.exit(code)")


def training_flops(overrides: list[str]) -> float:
    """The training runs' FLOPs in the per_layer count, from the plan."""
    steps = topological_order(build_steps(load_config("text-tiny", overrides)[0]))
    return sum(s.config.run(Path(".")).flops("per_layer") for s in steps if s.name.startswith("train-"))


@pytest.mark.parametrize("overrides", [[], ["training.tokens_per_param=40"]])
def test_dry_run_prints_the_flops_and_a_rough_wall_time(tmp_path, overrides):
    sets = [a for o in overrides for a in ("--set", o)]
    r = subprocess.run([sys.executable, "-c", DRY_RUN, "study", "run", "text-tiny", *sets, "--dry-run", "--out",
                        str(tmp_path / "s")], capture_output=True, text=True, cwd=ROOT, timeout=300,
                       env=subprocess_env())
    assert r.returncode == 0, r.stderr
    runs = len([s for s in topological_order(build_steps(load_config("text-tiny")[0])) if s.name.startswith("train-")])
    compute = re.search(r"^compute: (\S+) FLOPs training \((\d+) runs\) \+ (\S+) evaluation \(per_layer count",
                        r.stdout, re.M)
    assert compute, r.stdout
    spent = training_flops(overrides)
    # the runs' own FLOPs, plus the validation during training (a forward pass over a few windows per run)
    assert spent <= float(compute[1]) < 1.5 * spent and int(compute[2]) == runs and float(compute[3]) > 0
    eta = re.search(r"^estimated wall time on this machine: ~(\S+) for training and evaluation \(rough: (\S+)FLOP/s "
                    r"per worker from \d+ timed training steps .* of (\S+)'s model", r.stdout, re.M)
    assert eta, r.stdout
    assert eta[3] == max((s for s in topological_order(build_steps(load_config("text-tiny", overrides)[0]))
                          if s.name.startswith("train-")),
                         key=lambda s: s.config.run(Path(".")).flops("per_layer")).config.name
    path = re.search(r"^critical path: ~\S+, the longest chain of steps .*: (.*)$", r.stdout, re.M)
    assert path and path[1].split(" ~")[0] == f"train-{eta[3]}", r.stdout  # text-tiny has no confirmation run
    assert "ray not started" in r.stdout and not (tmp_path / "s").exists()


def test_the_critical_path_is_the_longest_chain_of_steps_that_wait_on_each_other():
    """The default study: the largest run, its evaluation, the fit, then the confirmation run the fit plans."""
    steps = topological_order(build_steps(load_config("text-default")[0]))
    seconds = {s.name: s.config.run(Path(".")).flops("per_layer") / 1e11 for s in steps if s.name.startswith("train-")}
    largest = max((name for name in seconds if "confirm" not in name), key=seconds.get)
    confirm = next(name for name in seconds if "confirm" in name)
    path, total = critical_path([(s, {"state": "pending"}) for s in steps], seconds)
    assert path == ["corpus", "tokenizer", "shards", largest, largest.replace("train-", "eval-"), "fit", confirm,
                    "report"], path  # (the report reads the confirmation run's own result)
    assert total == pytest.approx(seconds[largest] + seconds[confirm])
    # finished steps cost nothing: with the largest run done, the chain goes through the next largest
    after = critical_path([(s, {"state": "succeeded" if s.name == largest else "pending"}) for s in steps], seconds)
    second = max((n for n in seconds if n not in (largest, confirm)), key=seconds.get)
    assert second in after[0] and after[1] == pytest.approx(seconds[second] + seconds[confirm])


def test_wall_time_shares_the_work_over_this_machines_cpus():
    cpus = machine_capacity("cpu")
    per_second = Throughput(1e9, "test")
    four = [Job(4e9, "cpu", workers=1, held=1, startup_s=0.0) for _ in range(4)]
    assert wall_time(four, per_second)[0] == pytest.approx(max(16 / cpus, 4))  # never below the longest run
    wide = [Job(8e9, "cpu", workers=2, held=2, startup_s=10.0)]  # two data-parallel workers halve a run's time
    assert wall_time(wide, per_second)[0] == pytest.approx(max(14 * 2 / max(cpus, 2), 14))
    assert wall_time(four, per_second)[1] == cpus and wall_time(wide, per_second)[1] == max(1, cpus // 2)


def test_nothing_to_run_costs_nothing():
    steps = topological_order(build_steps(load_config("text-tiny")[0]))
    assert describe_cost([(s, {"state": "succeeded"}) for s in steps]).startswith("compute: nothing to train")


def test_a_model_too_large_to_time_is_estimated_from_a_matmul(tmp_path, capsys):
    """A 50M-parameter model is not built: a timed matmul stands in, and the output says so."""
    config = tmp_path / "big.yaml"
    config.write_text("name: big\nmodels:\n  grids: [{sizes: [{n_layer: 4, n_embd: 1024, n_head: 8}]}]\n")
    assert main(["study", "run", str(config), "--dry-run", "--out", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "from a timed fp32 matmul on 1 CPU thread (a peak" in out and "estimated wall time" in out
