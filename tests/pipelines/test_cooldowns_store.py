"""WSD cooldown branches of a study kept in an object store (real S3: moto): on a machine with nothing local, a
longer budget added later extends the trunk from the branch point the store holds, and its cooldown starts from the
new segment's; every earlier segment and branch is skipped, as the store has them."""

from __future__ import annotations

import copy

import pytest

from armodels.train import branch_folder
from pipelines.config import StudyConfig
from pipelines.plan import build_steps
from pipelines.step import topological_order
from pipelines.storage import SCRATCH_ENV, StudyStore
from pipelines.study import run_study
from tests.pipelines.test_cooldowns_e2e import COOLDOWNS

pytestmark = pytest.mark.slow


def one_size(ratios: list[float]) -> StudyConfig:
    raw = copy.deepcopy(COOLDOWNS)
    raw["name"] = "cooldowns-store"
    raw["models"]["grids"] = raw["models"]["grids"][:1]  # the WSD grid
    raw["models"]["grids"][0]["sizes"] = raw["models"]["grids"][0]["sizes"][:1]
    raw["training"]["tokens_per_param"] = ratios
    return StudyConfig.model_validate(raw)


def folders(cfg: StudyConfig) -> dict[str, str]:
    """Each step's folder name in the store."""
    return {step.name: step.dirname for step in topological_order(build_steps(cfg))}


def started_at(store: StudyStore, folder: str) -> tuple[int, int]:
    """(the step a training step's run started from, the step its result says it resumed at), from the store."""
    run, result = store.read_json(f"{folder}/run.json"), store.read_json(f"{folder}/result.json")
    start = int(run["start_from"].rsplit("-", 1)[1]) if run["start_from"] else 0
    return start, result["resumed_at_step"] or 0


def test_a_trunk_in_an_object_store_is_extended_on_a_machine_with_nothing_local(tmp_path, s3, ray_local, monkeypatch):
    uri = s3.uri("cooldowns-store")
    store = StudyStore(uri)
    monkeypatch.setenv(SCRATCH_ENV, str(tmp_path / "machine-a"))
    cfg = one_size([1, 2])
    first, dirs = run_study(cfg, tmp_path / "cooldowns.yaml", uri), folders(cfg)
    assert {o.state for o in first.values()} == {"succeeded"}
    segments = [n for n in first if "-trunk-" in n]
    branches = [n for n in first if n.startswith("train-") and "-cd" in n]
    assert len(segments) == 2 and len(branches) == 2
    for name in branches:  # each cooldown starts from its segment's branch point, which the store keeps
        start, resumed = started_at(store, dirs[name])
        assert start > 0 and resumed == start
        trunk = store.read_json(f"{dirs[name]}/run.json")["start_from"].rsplit("/", 2)[-2]
        assert trunk in {dirs[n] for n in segments}
        assert store.exists(f"{branch_folder(trunk, start).as_posix()}/checkpoint/state.json")

    monkeypatch.setenv(SCRATCH_ENV, str(tmp_path / "machine-b"))  # another machine: no local copy of anything
    cfg = one_size([1, 2, 4])
    second, dirs = run_study(cfg, tmp_path / "cooldowns.yaml", uri), folders(cfg)
    ran = {n for n, o in second.items() if o.state == "succeeded"}
    assert {n for n in first if n.startswith("train-")} <= {n for n, o in second.items() if o.state == "skipped"}
    assert sorted(n for n in ran if n.startswith("train-")) == sorted(
        n for n in dirs if n.startswith("train-") and n not in first)  # one new segment and its branch
    new_segment = next(n for n in ran if "-trunk-" in n)
    new_branch = next(n for n in ran if n.startswith("train-") and "-cd4" in n)
    # the new segment resumes the old trunk's end (the longest old budget's branch point), pulled from the store;
    # the new cooldown starts from the new segment's end
    old_end = max(started_at(store, dirs[n])[0] for n in branches)
    assert started_at(store, dirs[new_segment]) == (old_end, old_end)
    start, resumed = started_at(store, dirs[new_branch])
    assert start == resumed > old_end
