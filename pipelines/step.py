"""What a step is: a function, a config, named input steps and a code version, writing one versioned directory.

A step's output directory is `<name>-<hash>`, where the hash covers the name, version, config and the hashes of
its inputs: changing one config field changes that step's hash and the hashes of the steps downstream of it, and
nothing else. A study is a DAG of steps (pipelines.executor runs it; pipelines.step_runner runs one step).
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from armodels.config_fields import OMITTED_AT_DEFAULT
from pipelines.step_status import STOP_FILE
from pipelines.storage import StudyStore
from pipelines.tracking import NullRunLogger, RunLogger, run_logger


@dataclass(frozen=True)
class Resources:
    """What a step holds of the Ray cluster while it runs (pipelines.admission counts it)."""

    cpus: float = 1.0
    # True for steps that start their own Ray workers (Ray Train): the workers hold the CPUs, the task holds none.
    held_by_workers: bool = False
    cpus_per_worker: float | None = None  # with held_by_workers: what each worker holds, on one node
    gpus: float = 0.0  # in all: workers × gpus_per_worker
    gpus_per_worker: float | None = None  # a share of one GPU (≤ 1: several steps pack onto a GPU) or whole GPUs

    @property
    def on_one_node(self) -> float:
        """The CPUs that must be free on a single node: a worker's share, or the whole task's."""
        return (self.cpus_per_worker or 0.0) if self.held_by_workers else self.cpus

    @property
    def gpus_on_one_node(self) -> float:
        """The GPUs that must be on a single node: a worker's."""
        return self.gpus_per_worker or self.gpus

    @property
    def gpu_workers(self) -> int:
        """How many holders of GPUs the step has: its workers, or the task itself."""
        return round(self.gpus / self.gpus_per_worker) if self.gpus and self.gpus_per_worker else int(self.gpus > 0)

    def describe(self) -> str:
        """"2 CPUs", "1 CPU, 0.25 GPU"."""
        gpus = f", {self.gpus:g} GPU{'s' if self.gpus > 1 else ''}" if self.gpus else ""
        return f"{self.cpus:g} CPU{'s' if self.cpus != 1 else ''}{gpus}"


@dataclass
class StepContext:
    """What a step function sees: where to write, where its inputs are, its MLflow run and the object store."""

    name: str
    output: Path
    inputs: dict[str, Path]
    tracking_uri: str | None = None  # with run_id: the step's MLflow run (Ray Train workers log into it too)
    run_id: str | None = None
    store: StudyStore | None = None  # the object store that keeps the study, when it is kept in one

    def log(self, message: str) -> None:
        print(message, flush=True)  # Ray prefixes it with the task name, step:<name>

    @property
    def stop_file(self) -> Path:
        """Exists when the study was asked to stop (the step's .tmp dir sits in the study folder)."""
        return self.output.parent / STOP_FILE

    @cached_property
    def tracker(self) -> RunLogger | NullRunLogger:
        """Logs into this step's MLflow run; when the study is not tracked, it does nothing."""
        return run_logger(self.tracking_uri, self.run_id, self.output)


StepFn = Callable[[Any, StepContext], "dict | None"]


@dataclass(frozen=True, eq=False)
class Step:
    name: str
    fn: StepFn
    config: Any
    inputs: Mapping[str, Step] = field(default_factory=dict)
    version: str = "1"  # bump when the function's output changes for the same config
    resources: Resources = Resources()
    priority: float = 0.0  # its own weight (training steps: their FLOPs); ready steps start by chain_priorities
    describe: str = ""  # one line shown by --dry-run
    work_tokens: int = 0  # a training step's tokens and FLOPs: the study's progress line and ETA count them
    work_flops: float = 0.0
    # a LaneSpec (pipelines.warm_workers): the whole step runs as one job on the study's warm workers of that shape,
    # not in a Ray task of its own (an evaluation: torch work that would otherwise start a fresh process)
    warm_lane: Any = None
    # a training step's LaneSpec: the warm workers its run trains on (the executor may start them before the step)
    trains_on: Any = None
    nested_under: str | None = None  # the input whose MLflow run this step's run nests under (a branch: its trunk)

    @property
    def hash(self) -> str:
        payload = {"name": self.name, "version": self.version, "config": config_dict(self.config),
                   "inputs": {k: s.hash for k, s in sorted(self.inputs.items())}}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:10]

    @property
    def dirname(self) -> str:
        return f"{self.name}-{self.hash}"


def config_dict(config: Any) -> Any:
    """A step's config as JSON-able data: what its hash covers, and its MLflow params. Changing this changes the
    hash of every step, so every finished step would run again. Dataclass fields declared with
    armodels.config_fields.added_field are left out while they hold their default."""
    if is_dataclass(config) and not isinstance(config, type):
        return {f.name: config_dict(getattr(config, f.name)) for f in fields(config)
                if not (f.metadata.get(OMITTED_AT_DEFAULT) and getattr(config, f.name) == f.default)}
    if hasattr(config, "model_dump"):  # a pydantic model
        return config.model_dump(mode="json")
    if isinstance(config, (list, tuple)):
        return type(config)(config_dict(v) for v in config)
    if isinstance(config, dict):
        return {k: config_dict(v) for k, v in config.items()}
    return copy.deepcopy(config)


def chain_priorities(steps: list[Step]) -> dict[str, float]:
    """Each step's priority plus the largest such sum among the steps that read it: a ready step that a long chain
    waits on (the evaluation and fit before a confirmation run) starts before one nothing much waits on.
    `steps` holds every step with its inputs (topological_order's output)."""
    readers: dict[str, list[str]] = {s.name: [] for s in steps}
    for step in steps:
        for dep in step.inputs.values():
            readers[dep.name].append(step.name)
    chain: dict[str, float] = {}
    for step in reversed(topological_order(steps)):  # readers before the steps they read
        chain[step.name] = step.priority + max((chain[r] for r in readers[step.name]), default=0.0)
    return chain


def topological_order(targets: list[Step]) -> list[Step]:
    """Every step reachable from `targets`, inputs before the steps that read them."""
    order: list[Step] = []
    seen: dict[str, Step] = {}

    def visit(step: Step) -> None:
        if step.name in seen:
            if seen[step.name] is not step and seen[step.name].hash != step.hash:
                raise ValueError(f"two different steps are both named {step.name!r}")
            return
        seen[step.name] = step
        for dep in step.inputs.values():
            visit(dep)
        order.append(step)

    for t in targets:
        visit(t)
    return order
