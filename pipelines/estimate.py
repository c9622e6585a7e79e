"""A dry run's cost estimate: the FLOPs the study's pending training and evaluation steps will spend, and a rough
wall time on this machine, from a throughput measured in about a second: a few training steps, in this process
(no Ray, no data), of the model of the run that spends the most compute.

The wall time is rough on purpose and says so: the measured steps leave out DeepSpeed, data loading and checkpoints,
smaller models use the hardware worse than the measured one (their share of the time is underestimated), and the
first runs pay a fixed start-up for their Ray Train workers (later runs reuse them warm: pipelines.warm_workers).
The critical path is the chain of dependent steps that takes longest: what no number of cores shortens.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import armodels
from armodels.device import local_gpus
from armodels.train import flops_per_token
from pipelines.progress import duration, human
from pipelines.step import Step
from pipelines.steps import train

CONVENTION = "per_layer"  # each family's own count of what it computes: the count that tracks time
FORWARD_SHARE = 1 / 3  # a forward pass is about a third of a training step (the backward pass costs about 2×)
STARTUP_S = 20.0  # a Ray Train worker group's start-up (about 20–25 s on CPUs), paid once: the groups start at once
WARM_START_S = 1.0  # a training run's start on warm workers (its model, DeepSpeed's set-up, its data)
MEASURE_S = 1.0  # how long the throughput is measured for
MAX_MEASURED_PARAMS = 20_000_000  # a model larger than this is not built: a timed matmul stands in
MAX_STEP_FLOPS = {"cpu": 2e10, "cuda": 2e13}  # a timed step's batch is cut to stay within about a second


@dataclass
class Job:
    """One pending step's work: its FLOPs, and what it holds while it runs (CPUs or GPUs, and its workers)."""

    flops: float
    device: str  # "cpu" or "cuda"
    workers: int
    held: float  # CPUs (or GPUs) the step holds, all workers together
    startup_s: float  # its own, before its work
    training: bool = False  # a training run (the first ones wait for their worker groups: STARTUP_S)
    step: str = ""  # the step's name

    def seconds(self, throughput: Throughput) -> float:
        return self.flops / (throughput.flops_per_s * self.workers) + self.startup_s


@dataclass
class Throughput:
    flops_per_s: float  # per worker
    basis: str  # what it was measured on, for the output


def pending_jobs(plan: list[tuple[Step, dict]]) -> tuple[list[Job], train.TrainStepConfig | None]:
    """The training and evaluation steps of `plan` (Executor.plan) that would run, and the training run among
    them that spends the most compute (None when no training step would run)."""
    jobs, largest = [], None
    for step, state in plan:
        if state["state"] == "succeeded" or not step.name.startswith(("train-", "eval-")):
            continue
        tc = step.config if step.name.startswith("train-") else step.inputs["train"].config
        run = tc.run(Path("."))
        forward = FORWARD_SHARE * flops_per_token(tc.family, tc.model, CONVENTION)
        gpu = tc.train.device == "cuda"
        if step.name.startswith("train-"):
            validation = tc.train.eval_points * tc.train.eval_windows * run.seq_len  # tokens scored while training
            own = run.flops(CONVENTION, tc.own_tokens())  # a cooldown branch: its cooldown, not its trunk's steps
            jobs.append(Job(own + forward * validation, tc.train.device, tc.num_workers,
                            tc.num_workers * (tc.gpus_per_worker if gpu else tc.cpus_per_worker), WARM_START_S,
                            training=True, step=step.name))
            if largest is None or jobs[-1].flops > largest[0]:
                largest = jobs[-1].flops, tc
        else:
            e = getattr(step.config, "common", step.config)  # an image eval step wraps the common settings
            jobs.append(Job(forward * (e.max_tokens + e.samples * run.seq_len), tc.train.device, 1,
                            min(tc.gpus_per_worker, 1.0) if gpu else 1, 0.0, step=step.name))
    return jobs, largest and largest[1]


def measure_throughput(tc: train.TrainStepConfig, seconds: float = MEASURE_S) -> Throughput:
    """FLOP/s (in CONVENTION) of one worker of run `tc`: timed training steps of its model on random tokens, with
    its batch per worker and its threads, on its device; a timed fp32 matmul where the model is too large."""
    device = torch.device("cuda" if tc.train.device == "cuda" and torch.cuda.is_available() else "cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(tc.cpus_per_worker)
    try:
        if tc.run(Path(".")).costs().params > MAX_MEASURED_PARAMS:
            return _matmul_throughput(device, seconds)
        return _training_throughput(tc, device, seconds)
    finally:
        torch.set_num_threads(threads)


def _training_throughput(tc: train.TrainStepConfig, device: torch.device, seconds: float) -> Throughput:
    torch.manual_seed(0)
    model = armodels.build(tc.family, **tc.model).to(device)
    config = armodels.make_config(tc.family, **tc.model)
    batch = tc.train.micro_batch_size or max(1, tc.train.batch_size // tc.num_workers)
    per_sequence = flops_per_token(tc.family, tc.model, CONVENTION) * config.seq_len
    batch = max(1, min(batch, int(MAX_STEP_FLOPS[device.type] // per_sequence)))
    x = torch.randint(0, config.vocab_size, (batch, config.seq_len), device=device)
    classes = torch.randint(0, model.n_classes, (batch,), device=device) if model.n_classes else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(i: int) -> None:
        model.before_train_step(i)
        model.loss(x, classes).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(0)  # the first step allocates; it is not timed
    _sync(device)
    start, steps = time.perf_counter(), 0
    while steps < 3 or (time.perf_counter() - start < seconds and steps < 50):
        step(steps + 1)
        steps += 1
    _sync(device)
    elapsed = time.perf_counter() - start
    return Throughput(per_sequence * batch * steps / elapsed,
                      f"{steps} timed training steps ({batch} sequences each) of {tc.name}'s model in this process "
                      f"on {_where(device, tc.cpus_per_worker)}")


def _matmul_throughput(device: torch.device, seconds: float) -> Throughput:
    n = 2048 if device.type == "cuda" else 512
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    _sync(device)
    start, count = time.perf_counter(), 0
    while count < 3 or time.perf_counter() - start < seconds:
        a @ b
        count += 1
    _sync(device)
    return Throughput(2 * n ** 3 * count / (time.perf_counter() - start),
                      f"a timed fp32 matmul on {_where(device, torch.get_num_threads())} (a peak: real training is "
                      "several times slower; the model is too large to time here)")


def _where(device: torch.device, threads: int) -> str:
    return "a GPU" if device.type == "cuda" else f"{threads} CPU thread{'s' if threads > 1 else ''}"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def machine_capacity(device: str) -> float:
    """What this machine offers steps on `device`: its CPUs (those this process may use) or its GPUs."""
    if device == "cuda":
        return float(local_gpus())
    return float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def wall_time(jobs: list[Job], throughput: Throughput) -> tuple[float, float]:
    """(seconds, how many runs side by side): the steps' device-seconds shared out over this machine's CPUs or
    GPUs, and never less than the longest step; plus, with training runs, one start-up of their worker groups.
    Data-parallel workers split a run's FLOPs between them."""
    seconds = longest = 0.0
    for device in {j.device for j in jobs}:
        mine = [j for j in jobs if j.device == device]
        times = [j.seconds(throughput) for j in mine]
        capacity = max(machine_capacity(device), max(j.held for j in mine))
        seconds += sum(t * j.held for t, j in zip(times, mine)) / capacity
        longest = max(longest, *times)
    trains = [j for j in jobs if j.training] or jobs
    side_by_side = max(1.0, machine_capacity(trains[0].device) // max(j.held for j in trains))
    startup = STARTUP_S if any(j.training for j in jobs) else 0.0
    return max(seconds, longest) + startup, side_by_side


def critical_path(plan: list[tuple[Step, dict]], seconds: dict[str, float]) -> tuple[list[str], float]:
    """The chain of dependent pending steps of `plan` whose `seconds` (by step name; 0 for those not in it) add up
    the most: its step names, first to last, and its total."""
    finish, before = {}, {}  # by step name: when it ends at the earliest, and the input it waits for last
    for step, state in plan:  # in the plan's (topological) order
        waits = [(finish[d.name], d.name) for d in step.inputs.values() if d.name in finish]
        start, before[step.name] = max(waits) if waits else (0.0, None)
        finish[step.name] = start + (0.0 if state["state"] == "succeeded" else seconds.get(step.name, 0.0))
    name = max(reversed(finish), key=finish.get, default=None)  # of equal chains, the one that goes furthest
    total, path = finish.get(name, 0.0), []
    while name is not None:
        path.append(name)
        name = before[name]
    return path[::-1], total


def rough_duration(seconds: float) -> str:
    """'9m30s', '5h10m', '12 days', '3.4e+03 years'."""
    if seconds < 2 * 86400:
        return duration(seconds)
    return f"{seconds / 86400:,.0f} days" if seconds < 365 * 86400 else f"{seconds / (365 * 86400):.2g} years"


def cooldown_savings(plan: list[tuple[Step, dict]]) -> str | None:
    """For a design with WSD cooldown branches: its training FLOPs (trunks and cooldowns, done or not) against the
    same (N, D) points trained as one run each, as a cosine grid must; None without branches."""
    trains = [step.config for step, _ in plan if step.name.startswith("train-") and step.config.trunk]
    points = [tc for tc in trains if tc.train.schedule == "wsd"]  # the branches; the rest are trunk segments
    if not points:
        return None
    spent = sum(tc.run(Path(".")).flops(CONVENTION, tc.own_tokens()) for tc in trains)
    separate = sum(tc.run(Path(".")).flops(CONVENTION) for tc in points)
    return (f"WSD cooldowns: {spent:.2e} FLOPs of training for {len(points)} (N, D) points off "
            f"{len({tc.trunk for tc in points})} trunks, {spent / separate:.0%} of the {separate:.2e} that one run "
            "per point would take (a cosine grid)")


def describe_cost(plan: list[tuple[Step, dict]]) -> str:
    """Two lines for a dry run: the FLOPs of what would run, and a rough wall time on this machine."""
    jobs, largest = pending_jobs(plan)
    if not jobs:
        return "compute: nothing to train or evaluate (those steps are done)"
    training = sum(j.flops for j in jobs if j.training)
    evaluation = sum(j.flops for j in jobs if not j.training)
    runs = sum(1 for j in jobs if j.training)
    lines = [f"compute: {training:.2e} FLOPs training ({runs} runs) + {evaluation:.2e} evaluation "
             f"({CONVENTION} count, validation during training included)"]
    if savings := cooldown_savings(plan):
        lines.append(savings)
    if largest is None:  # only evaluation steps are pending: time one of their models
        largest = next(s.inputs["train"].config for s, st in plan
                       if s.name.startswith("eval-") and st["state"] != "succeeded")
    throughput = measure_throughput(largest)
    seconds, side_by_side = wall_time(jobs, throughput)
    times = {j.step: j.seconds(throughput) for j in jobs}
    path, path_s = critical_path(plan, times)
    seconds = max(seconds, path_s + STARTUP_S)  # the work shared out over the cores, or the chain, whichever is longer
    lines.append(f"estimated wall time on this machine: ~{rough_duration(seconds)} for training and evaluation (rough: "
                 f"{human(throughput.flops_per_s)}FLOP/s per worker from {throughput.basis}, without DeepSpeed "
                 f"or data loading, for every run (smaller models run slower per FLOP); up to {side_by_side:g} "
                 f"runs side by side; {STARTUP_S:.0f} s to start their workers, reused warm by the runs after them; "
                 "corpus, tokenizer, shards and fit steps not counted)")
    timed = [f"{name} ~{rough_duration(times[name])}" for name in path if times.get(name, 0) >= 1]
    if timed:
        lines.append(f"critical path: ~{rough_duration(path_s + STARTUP_S)}, the longest chain of steps that wait on "
                     f"each other (more runs side by side do not shorten it): {' → '.join(timed)}")
    return "\n".join(lines)
