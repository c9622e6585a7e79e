"""Admission: which ready steps the Ray cluster has room for now, counted in CPUs and GPUs.

The executor starts a step only when what it declares (pipelines.step.Resources) is free, so that the steps it
starts are the ones it chose (the most expensive first) and none waits inside Ray for room that is not coming.
CPUs are counted as one pool. GPUs are counted one by one, the way Ray packs them: a worker asking for a fraction
of a GPU (0.25: four small grid points on one GPU) takes the first GPU with that much left, and a worker asking for
whole GPUs takes GPUs nobody uses. As runs finish, their GPUs (or shares of one) go to the next runs.

A step that the cluster could never hold (more CPUs or GPUs than it has, or more than its largest node has for one
worker) is refused before anything runs, with one line naming the step and what to change.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipelines.errors import UserError
from pipelines.step import Resources, Step

EPSILON = 1e-9  # GPU shares such as 0.1 do not add up exactly in floating point


@dataclass
class ClusterRoom:
    """What a Ray cluster can hold, and what of it the running steps hold now."""

    total_cpus: float
    gpu_count: int  # whole GPUs in the cluster (a node's GPU count is whole)
    node_cpus: float  # the largest node's CPUs: a worker's CPUs must be on one node
    node_gpus: float  # the largest node's GPUs: so must a worker's GPUs
    free_cpus: float = field(init=False)
    free_gpus: list[float] = field(init=False)  # what is left of each GPU (1.0: unused)

    def __post_init__(self) -> None:
        self.free_cpus = self.total_cpus
        self.free_gpus = [1.0] * self.gpu_count

    @classmethod
    def of_ray_cluster(cls) -> ClusterRoom:
        """The room of the connected Ray cluster (its alive nodes)."""
        import ray

        nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
        return cls(total_cpus=sum(n.get("CPU", 0) for n in nodes), gpu_count=int(sum(n.get("GPU", 0) for n in nodes)),
                   node_cpus=max((n.get("CPU", 0) for n in nodes), default=0),
                   node_gpus=max((n.get("GPU", 0) for n in nodes), default=0))

    def check(self, step: Step) -> None:
        """Raise UserError when the cluster could never hold `step`, even idle (Ray would wait forever)."""
        r = step.resources
        if r.cpus > self.total_cpus:
            raise UserError(f"step {step.name} needs {r.cpus:g} CPUs but the Ray cluster has "
                            f"{self.total_cpus:g}; lower its workers or CPUs per worker, or add nodes")
        if r.on_one_node > self.node_cpus:
            raise UserError(f"step {step.name} needs {r.on_one_node:g} CPUs on one node but the "
                            f"largest node of the Ray cluster has {self.node_cpus:g}; lower its CPUs per worker (and "
                            "use more workers), or add bigger nodes")
        if r.gpus and not self.gpu_count:
            raise UserError(f"step {step.name} needs {r.gpus:g} GPU(s) but the Ray cluster has none; set "
                            "training.device to auto or cpu, or add nodes with GPUs")
        if r.gpus > self.gpu_count + EPSILON:
            raise UserError(f"step {step.name} needs {r.gpus:g} GPUs but the Ray cluster has {self.gpu_count}; "
                            "lower its workers or GPUs per worker, or add GPU nodes")
        if r.gpus_on_one_node > self.node_gpus + EPSILON:
            raise UserError(f"step {step.name} needs {r.gpus_on_one_node:g} GPUs on one node but the largest node "
                            f"of the Ray cluster has {self.node_gpus:g}; lower its GPUs per worker (and use more "
                            "workers), or add bigger GPU nodes")

    def take(self, resources: Resources) -> list[tuple[int, float]] | None:
        """Hold `resources` if they are free now: returns the GPU shares taken ((GPU index, share) per worker;
        empty for a CPU step), or None, holding nothing, when there is no room."""
        if resources.cpus > self.free_cpus + EPSILON:
            return None
        free = list(self.free_gpus)
        taken: list[tuple[int, float]] = []
        for _ in range(resources.gpu_workers):
            share = resources.gpus_per_worker or 0.0
            if share <= 1.0:  # a share of one GPU: the first with that much left
                index = next((i for i, left in enumerate(free) if left >= share - EPSILON), None)
                if index is None:
                    return None
                free[index] -= share
                taken.append((index, share))
            else:  # whole GPUs that nobody uses
                unused = [i for i, left in enumerate(free) if left >= 1.0 - EPSILON][:round(share)]
                if len(unused) < round(share):
                    return None
                for i in unused:
                    free[i] = 0.0
                    taken.append((i, 1.0))
        self.free_cpus -= resources.cpus
        self.free_gpus = free
        return taken

    def release(self, resources: Resources, taken: list[tuple[int, float]]) -> None:
        """Give back what `take` held for a step that has ended."""
        self.free_cpus += resources.cpus
        for index, share in taken:
            self.free_gpus[index] = min(1.0, self.free_gpus[index] + share)
