"""Studies on GPUs, checked on this CPU machine: planning resolves training.device against the cluster's GPUs,
admission packs grid points onto GPUs (fractions of one GPU, or whole GPUs) as they free up, and requests the
cluster cannot hold are refused up front. Placement runs on a real local Ray that declares logical GPUs."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import pytest
import yaml

from armodels.config_fields import added_field
from pipelines.admission import ClusterRoom
from pipelines.cli import main
from pipelines.config import StudyConfig, load_config
from pipelines.errors import UserError
from pipelines.executor import Executor
from pipelines.plan import build_steps
from pipelines.ray_connect import connect
from pipelines.step import Resources, Step, config_dict, topological_order
from pipelines.steps.train import TrainStepConfig

STUDY = {
    "name": "gpus",
    "corpus": {"source": "python-stdlib", "max_bytes": 300_000},
    "tokenizer": {"vocab_size": 280, "train_bytes": 100_000},
    "models": {"seq_len": 32, "grids": [{"family": "transformer", "sizes": [
        {"n_layer": 1, "n_embd": 16, "n_head": 2},
        {"n_layer": 2, "n_embd": 32, "n_head": 2, "gpus_per_worker": 1, "num_workers": 2},
        {"n_layer": 1, "n_embd": 24, "n_head": 2, "device": "cpu"},
    ]}]},
    "training": {"tokens": 64_000, "gpus_per_worker": 0.25},
}


def study(**training) -> StudyConfig:
    data = json.loads(json.dumps(STUDY))
    data["training"].update(training)
    return StudyConfig.model_validate(data)


def runs(targets) -> dict[str, Step]:
    return {s.name.split("-", 1)[1]: s for s in topological_order(targets) if s.name.startswith("train-")}


def evals(targets) -> dict[str, Step]:
    return {s.name.split("-", 1)[1]: s for s in topological_order(targets) if s.name.startswith("eval-")}


def test_auto_trains_on_gpus_when_the_cluster_has_them_and_packs_small_runs():
    small, big, cpu = runs(build_steps(study(), gpus=4)).values()
    assert small.config.train.device == big.config.train.device == "cuda" and cpu.config.train.device == "cpu"
    assert small.resources.gpus == 0.25 and small.resources.gpus_per_worker == 0.25  # four such share a GPU
    assert big.resources.gpus == 2 and big.resources.gpus_per_worker == 1  # the size's own request, 2 workers
    assert cpu.resources.gpus == 0
    assert small.config.worker_resources == {"CPU": 1, "GPU": 0.25}
    assert small.config.train.precision == "auto"  # bf16 where the GPU has it, decided on the worker
    assert "1 worker, 1 CPU + 0.25 GPU" in small.describe and "2 workers, 1 CPU + 1 GPU each" in big.describe
    small_eval, _, cpu_eval = evals(build_steps(study(), gpus=4)).values()  # evaluated where they trained
    assert small_eval.config.device == "cuda" and small_eval.resources.gpus == 0.25
    assert cpu_eval.config.device == "cpu" and cpu_eval.resources.gpus == 0


def test_without_gpus_auto_plans_exactly_what_it_planned_before():
    """CPU runs keep their step hashes: the new fields are left out of the hash at their defaults."""
    targets = build_steps(study(), gpus=0)
    for step in runs(targets).values():
        assert step.config.train.device == "cpu" and step.resources.gpus == 0
        assert "device" not in config_dict(step.config)["train"] and "gpus_per_worker" not in config_dict(step.config)
    on_gpus = runs(build_steps(study(), gpus=4))
    assert {s.hash for s in runs(targets).values()} != {s.hash for s in on_gpus.values()}  # a GPU run is another run


def test_fields_added_later_leave_old_hashes_alone():
    @dataclass(frozen=True)
    class Before:
        a: int

    @dataclass(frozen=True)
    class After:
        a: int
        b: str = added_field("x")

    assert config_dict(After(1)) == config_dict(Before(1)) == {"a": 1}
    assert config_dict(After(1, "y")) == {"a": 1, "b": "y"}
    report_config = load_config("text-tiny")[0].stable_dump()
    assert "device" not in report_config["training"] and "gpus_per_worker" not in report_config["training"]


def test_cuda_without_gpus_is_refused_up_front_naming_the_size(tmp_path, capsys):
    with pytest.raises(UserError, match=r"^models: size transformer-3.2k: training.device is cuda but no GPU"):
        build_steps(study(device="cuda"), gpus=0)
    config = tmp_path / "gpu.yaml"
    config.write_text(yaml.safe_dump({**STUDY, "training": {"tokens": 64_000, "device": "cuda"}}))
    assert main(["study", "run", str(config), "--dry-run", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: models: size transformer-3.2k: training.device is cuda but no GPU was found")
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize("training, size, message", [
    ({"gpus_per_worker": 1.5}, {}, "training.gpus_per_worker: 1.5 GPUs cannot be placed"),
    ({"gpus_per_worker": 0}, {}, "training.gpus_per_worker: must be a positive number of GPUs"),
    ({"device": "tpu"}, {}, "training.device: Input should be 'auto', 'cpu' or 'cuda'"),
    ({}, {"gpus_per_worker": 2.5}, "models.grids.0.sizes.0.gpus_per_worker: 2.5 GPUs cannot be placed"),
    ({}, {"device": "gpu"}, "models.grids.0.sizes.0.device: one of auto, cpu, cuda"),
])
def test_bad_gpu_settings_are_one_line_errors(tmp_path, capsys, training, size, message):
    data = json.loads(json.dumps(STUDY))
    data["training"].update(training)
    data["models"]["grids"][0]["sizes"][0].update(size)
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(data))
    assert main(["study", "run", str(config), "--dry-run", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def step_needing(cpus=1.0, gpus=0.0, per_worker=None, workers=1, name="s") -> Step:
    return Step(name, record_gpus, Sleep(0), resources=Resources(cpus=cpus, held_by_workers=workers > 1,
                                                                  cpus_per_worker=cpus / workers, gpus=gpus,
                                                                  gpus_per_worker=per_worker or gpus / workers))


def test_room_packs_fractions_onto_one_gpu_and_whole_gpus_onto_unused_ones():
    room = ClusterRoom(total_cpus=16, gpu_count=2, node_cpus=8, node_gpus=1)
    quarter = Resources(cpus=1, gpus=0.25, gpus_per_worker=0.25)
    held = [room.take(quarter) for _ in range(4)]
    assert [h[0][0] for h in held] == [0, 0, 0, 0]  # four quarters share GPU 0
    whole = Resources(cpus=1, gpus=1, gpus_per_worker=1)
    assert room.take(whole) == [(1, 1.0)]  # GPU 1 was unused
    assert room.take(quarter) is None and room.take(whole) is None  # both GPUs are taken
    room.release(quarter, held[0])
    assert room.take(whole) is None  # three quarters still hold GPU 0
    assert room.take(quarter) == [(0, 0.25)]  # a freed quarter goes to the next small run
    cpu_only = Resources(cpus=9)
    assert room.take(cpu_only) == [] and room.free_cpus == 16 - 9 - 5


def test_room_refuses_what_the_cluster_could_never_hold():
    room = ClusterRoom(total_cpus=4, gpu_count=2, node_cpus=2, node_gpus=1)
    with pytest.raises(UserError, match="step s needs 3 GPUs but the Ray cluster has 2"):
        room.check(step_needing(gpus=3, per_worker=1, workers=3, cpus=3))
    with pytest.raises(UserError, match="step s needs 2 GPUs on one node but the largest node of the Ray cluster "
                                        "has 1; lower its GPUs per worker"):
        room.check(step_needing(gpus=2, per_worker=2))
    none = ClusterRoom(total_cpus=4, gpu_count=0, node_cpus=4, node_gpus=0)
    with pytest.raises(UserError, match="step s needs 0.25 GPU\\(s\\) but the Ray cluster has none"):
        none.check(step_needing(gpus=0.25))
    room.check(step_needing(gpus=2, per_worker=1, workers=2, cpus=2))  # fits: no error


@dataclass(frozen=True)
class Sleep:
    seconds: float


def record_gpus(config: Sleep, ctx) -> dict:
    """A step that holds its GPUs for a while and writes down which Ray gave it and when."""
    import ray

    started = time.time()
    time.sleep(config.seconds)
    record = {"gpus": [str(g) for g in ray.get_gpu_ids()], "start": started, "end": time.time()}
    (ctx.output / "gpus.json").write_text(json.dumps(record))
    return record


@pytest.fixture(scope="module")
def ray_with_gpus(ray_local):
    """The tests' local Ray, started again with two logical GPUs (no CUDA needed: Ray only counts them)."""
    ray_local.shutdown()
    connect(num_cpus=2, num_gpus=2)
    yield ray_local
    ray_local.shutdown()
    connect(num_cpus=2)


def test_grid_points_are_packed_onto_logical_gpus_as_they_free_up(tmp_path, ray_with_gpus):
    # 2 CPUs, 2 GPUs: five quarter-GPU points (0.25 CPU each) and one whole-GPU point. Four quarters fit on one
    # GPU and the whole one takes the other; the fifth quarter waits for a quarter to free up.
    quarters = [Step(f"q{i}", record_gpus, Sleep(6.0 + 0.01 * i),
                     resources=Resources(cpus=0.25, gpus=0.25, gpus_per_worker=0.25)) for i in range(5)]
    whole = Step("whole", record_gpus, Sleep(12.0), resources=Resources(cpus=0.25, gpus=1, gpus_per_worker=1),
                 priority=1.0)  # the most compute first, as for training runs
    final = Step("final", record_gpus, Sleep(0), inputs={s.name: s for s in [*quarters, whole]},
                 resources=Resources(cpus=0.25))
    outcomes = Executor(tmp_path, log=lambda m: None).run([final])
    assert all(o.state == "succeeded" for o in outcomes.values()), outcomes
    record = {s.name: outcomes[s.name].summary for s in [*quarters, whole]}
    first_four = [record[f"q{i}"] for i in range(4)]
    assert len({tuple(r["gpus"]) for r in first_four}) == 1  # one GPU, shared by four runs at once
    assert max(r["start"] for r in first_four) < min(r["end"] for r in first_four)
    assert record["whole"]["gpus"] != first_four[0]["gpus"] and len(record["whole"]["gpus"]) == 1
    assert record["q4"]["start"] >= min(r["end"] for r in first_four) - 0.05  # it waited for a free quarter
    assert record["q4"]["start"] < record["whole"]["end"] and record["q4"]["gpus"] == first_four[0]["gpus"]
    assert outcomes["final"].summary["gpus"] == []


def test_a_step_needing_more_gpus_than_the_cluster_has_stops_before_anything_runs(tmp_path, ray_with_gpus):
    big = Step("big", record_gpus, Sleep(0), resources=Resources(cpus=0.5, gpus=3, gpus_per_worker=1,
                                                                  held_by_workers=True, cpus_per_worker=0.25))
    with pytest.raises(UserError, match="step big needs 3 GPUs but the Ray cluster has 2"):
        Executor(tmp_path, log=lambda m: None).run([big])
    assert not list(tmp_path.iterdir())


def test_a_training_step_asks_ray_train_for_its_gpus():
    step = runs(build_steps(study(), gpus=4))
    small, big, cpu = step.values()
    assert isinstance(small.config, TrainStepConfig)
    assert big.config.worker_resources == {"CPU": 1, "GPU": 1} and big.config.num_workers == 2
    assert cpu.config.worker_resources == {"CPU": 1}
