"""Orchestration overhead: what arscale's machinery (Ray Train, DeepSpeed, MLflow, the study's steps) costs on top
of the training itself, measured side by side in one run (issue 10). Two rows:

1. The top size of the default grid (configs/text-default.yaml) on the same shards, seed, batches and learning-rate
   schedule, trained (a) by a plain PyTorch loop in this process and (b) through arscale's training step: a Ray
   Train worker running DeepSpeed, logging to an MLflow run in a SQLite store. Goal: (b) ≥ 0.95× the tokens/s of
   (a), both timed from their first step to their last (result.json's train_started_at/finished_at for (b):
   evaluations, checkpoints, all-reduces and MLflow logging included). What each run pays once before its first
   step is reported beside it: (b)'s rate with DeepSpeed's import and set-up, and end to end (Ray Train's worker
   start-up too); row 2 counts those costs in a whole study. Both sides run the same validation evaluations: they
   are the study's work, not orchestration. (c), arscale's loop in this process without Ray, tells DeepSpeed's share
   from Ray's. (a) runs first and last (with --repeats, (b) and (a) alternate), and each side's rate pools its runs,
   so a drifting load weighs on both sides alike; (a) and (c) run at the niceness Ray gives its workers, so that
   other processes pre-empt them alike; tokens per CPU-second, which load stretches less, are reported as a
   cross-check. The loss curves of (a) and (b) are compared as a sanity check. The default budget is 100 steps, a
   minute a side (the top size's real run has 489 steps: --tokens 2002944, about 25 minutes).
2. A whole default study (`arscale study run text-default` in a subprocess, or a finished study folder with
   --study): the fraction of its wall time outside training steps, i.e. outside the union of its runs'
   [train_started_at, train_finished_at] (two runs train side by side). Goal ≤ 20%. Prints where the rest goes.

Ray's own start is not timed in row 1 (a study pays it once); in row 2 it is part of the study's start-up.
Asserts nothing.

    .venv/bin/python bench/bench_overhead.py                          # both rows (15-20 minutes on 2 busy cores)
    .venv/bin/python bench/bench_overhead.py --only loop --repeats 3   # (b), (a) three times: less noise
    .venv/bin/python bench/bench_overhead.py --only study --study studies/text-default   # a finished study
    .venv/bin/python bench/bench_overhead.py --smoke                  # under a minute; row 2 from row 1's step
"""

from __future__ import annotations

import argparse
import functools
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

import torch

try:
    from common import INFO, SKIPPED, Row, check, timed
except ImportError:  # imported as bench.bench_overhead from the repository's root
    from bench.common import INFO, SKIPPED, Row, check, timed
from armodels.data import TokenWindows
from armodels.files import read_json
from armodels.shards import load_token_stream
from armodels.train import lr_schedule, model_costs, train_single_process
from pipelines.config import load_config
from pipelines.plan import train_configs
from pipelines.step import StepContext, config_dict
from pipelines.step_runner import StepLaunch, execute_step
from pipelines.step_status import STATUS
from pipelines.steps.corpus import build_corpus, stdlib_config
from pipelines.steps.text_shards import TextShardStepConfig, shard_corpus
from pipelines.steps.text_tokenizer import TextTokenizerStepConfig, train_text_tokenizer
from pipelines.steps.train import TrainStepConfig, train_model

T = TypeVar("T")

LOOP_ROW = "orchestration: arscale vs plain PyTorch loop"
STUDY_ROW = "orchestration: study wall time outside training steps"
BOUND_ROW = "study wall time ÷ compute bound"
STARTUP_ROW = "start-up before a run's first step"
GRID_ROW = "study wall time vs grid size"
LOOP_GOAL, STUDY_GOAL, BOUND_GOAL, STARTUP_GOAL = 0.95, 0.08, 2.5, 3.0
GRID_PRESET, GRID_SEEDS = "text-tiny", (1, 2, 4)  # its 5 sizes × seeds: grids of 5, 10 and 20 runs
PRESET = "text-default"
TOKENS = 100 * 32 * 128  # 100 steps of the top size: about a minute a side on 2 busy cores
SMOKE_MODEL = {"n_layer": 1, "n_embd": 32, "n_head": 2, "seq_len": 32}
SMOKE_TOKENS = 10 * 32 * 32  # 10 steps
WORKER_NICENESS = int(os.environ.get("RAY_worker_niceness", 15))  # Ray starts its workers at this niceness
BYTES_PER_TOKEN = 4  # corpus bytes per training token wanted (BPE with 1,024 tokens gives ~3.3 bytes a token)


# ---- row 1: the same training, plain and through arscale ----

def top_size(smoke: bool, tokens: int | None) -> TrainStepConfig:
    """The default grid's largest size with the study's own training settings, on a `tokens` budget."""
    cfg, _ = load_config(PRESET)
    top = max(train_configs(cfg), key=lambda c: model_costs(c.family, c.model).params_nonembedding)
    model = {**top.model, **SMOKE_MODEL} if smoke else top.model
    return replace(top, name=f"{top.name}-bench", model=model,
                   train=replace(top.train, tokens=tokens or (SMOKE_TOKENS if smoke else TOKENS)))


def make_shards(root: Path, vocab_size: int, max_bytes: int) -> Path:
    """corpus → tokenizer → shards by the study's own step functions, on `max_bytes` of the stdlib's sources."""
    steps = [("corpus", build_corpus, stdlib_config(max_bytes, 0.05, 0, 500_000), ()),
             ("tokenizer", train_text_tokenizer, TextTokenizerStepConfig(vocab_size, max_bytes), ("corpus",)),
             ("shards", shard_corpus, TextShardStepConfig(1_000_000), ("corpus", "tokenizer"))]
    for name, fn, config, inputs in steps:
        (root / name).mkdir(parents=True)
        fn(config, StepContext(name, root / name, {k: root / k for k in inputs}))
    return root / "shards"


def plain_loop(step: TrainStepConfig, shards: Path) -> dict:
    """(a): the same training by hand in plain PyTorch, in this process: no DeepSpeed, no Ray, no logging.
    Timed over the steps and evaluations (the first AdamW of a process imports torch._dynamo: seconds, not loop)."""
    run, cfg = step.run(shards), step.train
    torch.manual_seed(cfg.seed)
    model = run.build()
    windows = TokenWindows(load_token_stream(run.train_shards), model.seq_len, seed=cfg.seed)
    val = TokenWindows(load_token_stream(run.val_shards), model.seq_len)
    eval_steps = {round(run.steps * (i + 1) / cfg.eval_points) - 1 for i in range(cfg.eval_points)}
    params = list(model.parameters())
    optimizer = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
                                   {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                                  lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule(run))
    losses, eval_seconds = [], 0.0
    start, cpu_start = time.perf_counter(), time.thread_time()  # torch computes in this thread alone (1 thread)
    for s in range(run.steps):
        loss = model.loss(windows.train_batch(s, cfg.batch_size))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if s in eval_steps:
            _, seconds = timed(lambda: validate(model, val, cfg.batch_size, cfg.eval_windows))
            eval_seconds += seconds
    seconds = time.perf_counter() - start
    return {"tokens": run.tokens_seen, "seconds": seconds, "cpu_seconds": time.thread_time() - cpu_start,
            "losses": dict(enumerate(losses)), "eval_seconds": eval_seconds}


def validate(model, val: TokenWindows, batch_size: int, max_windows: int) -> float:
    """Mean nats/token on the first `max_windows` validation windows (what arscale's evaluation points score)."""
    model.eval()
    with torch.no_grad():
        nats = [(model.loss(x).item() * x.numel(), x.numel()) for x in val.eval_batches(batch_size,
                                                                                        max_windows=max_windows)]
    model.train()
    return sum(n for n, _ in nats) / sum(t for _, t in nats)


def single_process(step: TrainStepConfig, shards: Path, out: Path) -> dict:
    """(c): arscale's loop (DeepSpeed, evaluations, checkpoints) in this process, without Ray or MLflow."""
    result = train_single_process(step.run(shards), out)
    return {**result, "losses": curve_losses(out)}


def through_arscale(step: TrainStepConfig, shards: Path, study: Path, tracking, index: int) -> dict:
    """(b): the study's training step as its executor runs it (STATUS.json, .tmp folder, its own MLflow run), on
    the Ray this process is connected to; result.json plus the step's wall time (Ray Train's worker start-up
    included) and its steps' (from the loop's wall-clock stamps)."""
    name = f"train-{step.name}-{index}"
    run_id = tracking.start_step_run(name, name, config_dict(step), {"shards": shards.name})
    launch = StepLaunch(train_model, step, name, name, study, {"shards": str(shards)}, tracking.uri, run_id)
    _, seconds = timed(lambda: execute_step(launch))
    tracking.finish_run(run_id, ok=True)
    r = read_json(study / name / "result.json")
    return {**r, "step_seconds": seconds, "steps_seconds": r["train_finished_at"] - r["train_started_at"],
            "losses": curve_losses(study / name)}


def curve_losses(out: Path) -> dict[int, float]:
    """Train loss by step, from a run's curve.json."""
    return {p["step"]: p["loss"] for p in read_json(out / "curve.json")["train"]}


def compare_loops(root: Path, smoke: bool, tokens: int | None, repeats: int = 1) -> dict:
    """Runs (a), (c) (not in smoke), then (b) and (a) `repeats` times, one after the other on the same shards. Each
    side's rate is that of all its runs together, and (a) runs first and last, so a load that drifts during the
    run weighs on both sides alike. Prints each; returns the runs of each side, and the folder of (b)'s steps."""
    import ray

    from pipelines.ray_connect import connect
    from pipelines.tracking import StudyTracking

    step = top_size(smoke, tokens)
    shards, data_seconds = timed(lambda: make_shards(root / "data", step.model["vocab_size"],
                                                     max(500_000, BYTES_PER_TOKEN * step.train.tokens)))
    run = step.run(shards)
    print(f"\n{step.family} {step.model}: {run.steps} steps × {step.train.batch_size} × {run.seq_len} tokens, "
          f"{step.num_workers} worker × {step.cpus_per_worker} CPU; shards made in {data_seconds:.0f} s", flush=True)
    here = functools.partial(like_a_ray_worker, step.cpus_per_worker)
    plain = [here(lambda: plain_loop(step, shards))]
    single = None if smoke else here(lambda: single_process(step, shards, root / "single"))  # smoke: seconds saved
    study = root / "study"
    study.mkdir()
    tracking = StudyTracking(f"sqlite:///{study.resolve()}/mlflow.db", "bench-overhead", study)
    ours = not ray.is_initialized()
    _, ray_seconds = timed(lambda: connect(num_cpus=2))
    arscale = []
    try:
        for i in range(repeats):
            arscale.append(through_arscale(step, shards, study, tracking, i))
            plain.append(here(lambda: plain_loop(step, shards)))
    finally:
        if ours:
            ray.shutdown()
    lines = [("(a) plain PyTorch loop", plain, "seconds", f"evaluations {plain[0]['eval_seconds']:.1f} s a run"),
             ("(c) arscale loop, no Ray", [single] if single else [], "train_seconds",
              "DeepSpeed's import and set-up, evaluations, checkpoints"),
             ("(b) arscale on Ray, its loop", arscale, "train_seconds", "the same, and MLflow logging"),
             ("(b) arscale on Ray, its steps", arscale, "steps_seconds", "after DeepSpeed's set-up"),
             ("(b) arscale on Ray, end to end", arscale, "step_seconds",
              f"Ray Train's worker start-up included; Ray's start ({ray_seconds:.0f} s) not"),
             ("(a) plain, per CPU-second", plain, "cpu_seconds", "the loop thread's CPU time"),
             ("(c) no Ray, per CPU-second", [single] if single else [], "train_cpu_seconds",
              "this process's CPU time, all its threads"),
             ("(b) its loop, per CPU-second", arscale, "train_cpu_seconds", "the worker's CPU time, all its threads")]
    for label, runs, seconds, what in lines:
        if runs:
            times = ", ".join(f"{r[seconds]:.1f}" for r in runs)
            print(f"  {label:<32} {pooled(runs, seconds):9,.0f} tokens/s   runs of {times} s ({what})", flush=True)
    return {"plain": plain, "single": single, "arscale": arscale, "study": study}


def pooled(runs: list[dict], seconds: str) -> float:
    """Tokens per second of all `runs` together, timed by their `seconds` key."""
    return sum(r["tokens"] for r in runs) / sum(r[seconds] for r in runs)


def spread(runs: list[dict], seconds: str) -> float:
    """How far apart the runs' times are (max / min - 1): the noise of this machine."""
    times = [r[seconds] for r in runs]
    return max(times) / min(times) - 1


def like_a_ray_worker(threads: int, fn: Callable[[], T]) -> T:
    """fn() under the conditions of a Ray Train worker: `threads` torch threads (pipelines/steps/train.py) and Ray's
    worker niceness (on a shared machine every nice-0 process pre-empts a Ray worker, so the loops compared must be
    pre-empted alike). It runs in a thread of its own, whose niceness ends with it; torch's thread count is restored
    after: the suite runs other benchmarks in this process."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    nice = functools.partial(os.setpriority, os.PRIO_PROCESS, 0, WORKER_NICENESS)  # Linux: of the calling thread
    try:
        with ThreadPoolExecutor(1, initializer=nice) as pool:
            return pool.submit(fn).result()
    finally:
        torch.set_num_threads(before)


def loop_rows(r: dict, smoke: bool) -> list[Row]:
    plain, single, arscale = r["plain"], r["single"], r["arscale"]
    base = pooled(plain, "seconds")
    ratio = pooled(arscale, "steps_seconds") / base
    common_steps = plain[0]["losses"].keys() & arscale[0]["losses"].keys()
    drift = max(abs(plain[0]["losses"][s] - arscale[0]["losses"][s]) for s in common_steps)
    without_ray = f"arscale's loop without Ray {pooled([single], 'train_seconds') / base:.2f}×; " if single else ""
    noise = f"{len(plain)} runs of (a) differ by {spread(plain, 'seconds'):.0%}"
    if len(arscale) > 1:
        noise += f", {len(arscale)} of (b) by {spread(arscale, 'steps_seconds'):.0%}"
    cpu_ratio = pooled(arscale, "train_cpu_seconds") / pooled(plain, "cpu_seconds")
    note = (f"per CPU-second (less stretched by load) {cpu_ratio:.2f}×; "
            f"end to end (Ray Train's worker start-up included) {pooled(arscale, 'step_seconds') / base:.2f}×; "
            f"with DeepSpeed's import and set-up {pooled(arscale, 'train_seconds') / base:.2f}×; {without_ray}"
            f"{max(common_steps) + 1} steps; "
            f"{noise} (noise); loss curves (a) vs (b) differ by ≤ {drift:.1e} nats")
    return [Row(LOOP_ROW, f"{ratio:.2f}× ({pooled(arscale, 'steps_seconds'):,.0f} vs {base:,.0f} tokens/s)",
                f"≥ {LOOP_GOAL:g}×", INFO if smoke else check(ratio, at_least=LOOP_GOAL), ratio, note)]


# ---- row 2: a whole study's wall time, training and the rest ----

TRAIN_SETUP = "train steps outside their loops (Ray Train workers, DeepSpeed set-up, data, saving)"


@dataclass
class Timeline:
    """Where a study's wall time went: training (some run's loop running) or, outside it, what else was."""

    start: float
    end: float
    training: float = 0.0
    outside: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    runs: list[tuple[str, float, float, float, float]] = field(default_factory=list)  # name, before, in, after its
    # loop, and when its step started
    unstamped: list[str] = field(default_factory=list)  # runs whose result.json predates train_started_at

    @property
    def wall(self) -> float:
        return self.end - self.start

    @property
    def fraction_outside(self) -> float:
        return 1 - self.training / self.wall


def study_timeline(study: Path, start: float | None = None, end: float | None = None) -> Timeline:
    """Splits [start, end] (default: from the first step's start to the last one's end) into training, i.e. the
    union of the train steps' loops, and the rest, shared evenly among whatever steps ran at the time."""
    records = [(p.parent, read_json(p)) for p in sorted(study.glob(f"*/{STATUS}")) if not p.parent.is_symlink()]
    records = [(d, s) for d, s in records if s.get("finished") and (start is None or s["started"] >= start)]
    if not records:
        raise ValueError(f"{study} has no finished steps")
    first, last = min(s["started"] for _, s in records), max(s["finished"] for _, s in records)
    t = Timeline(first if start is None else start, last if end is None else end)
    spans, loops = [], []
    for d, s in records:
        kind = s["step"].split("-")[0]
        spans.append((TRAIN_SETUP if kind == "train" else kind, s["started"], s["finished"]))
        if kind == "train":
            result = read_json(d / "result.json")
            if "train_started_at" not in result:
                t.unstamped.append(s["step"])
                continue
            loop = result["train_started_at"], result["train_finished_at"]
            loops.append(loop)
            t.runs.append((s["step"], loop[0] - s["started"], loop[1] - loop[0], s["finished"] - loop[1],
                           s["started"]))
    cuts = sorted({t.start, t.end, *(x for _, a, b in spans for x in (a, b)), *(x for loop in loops for x in loop)})
    for a, b in zip(cuts, cuts[1:]):
        if not t.start <= a < t.end:
            continue
        mid = (a + b) / 2
        if any(lo <= mid < hi for lo, hi in loops):
            t.training += b - a
            continue
        kinds = {kind for kind, lo, hi in spans if lo <= mid < hi} or {
            "start-up before the first step (process, Ray, MLflow)" if mid < first else
            "after the last step (MLflow, Ray shut-down)" if mid > last else "idle between steps"}
        for kind in kinds:
            t.outside[kind] += (b - a) / len(kinds)
    return t


def print_timeline(t: Timeline) -> None:
    if t.unstamped:
        print(f"\nno timeline: {', '.join(t.unstamped)} trained before result.json recorded train_started_at")
        return
    print(f"\nstudy wall time {t.wall:.0f} s: training {t.training:.0f} s, outside {t.wall - t.training:.0f} s "
          f"({t.fraction_outside:.0%})")
    for kind, seconds in sorted(t.outside.items(), key=lambda kv: -kv[1]):
        print(f"  {seconds:7.1f} s  {seconds / t.wall:5.1%}  {kind}")
    print(f"\n  {'train step':<32} {'before loop':>11} {'loop':>8} {'after':>7}   (seconds)")
    for name, before, inside, after, _ in t.runs:
        print(f"  {name:<32} {before:11.1f} {inside:8.1f} {after:7.1f}")
    if t.runs:
        print(f"  {'sum':<32} {sum(r[1] for r in t.runs):11.1f} {sum(r[2] for r in t.runs):8.1f} "
              f"{sum(r[3] for r in t.runs):7.1f}", flush=True)


def run_study(out: Path, preset: str = PRESET, overrides: tuple[str, ...] = ()) -> tuple[float, float]:
    """`arscale study run PRESET [--set OVERRIDE ...] --out OUT` in a subprocess; returns its start and end (unix
    times)."""
    log = out.with_name(f"{out.name}.log")
    sets = [a for o in overrides for a in ("--set", o)]
    print(f"\nrunning `arscale study run {preset} {' '.join(sets)} --out {out}` (log: {log})", flush=True)
    start = time.time()
    with open(log, "w") as f:
        code = subprocess.run([sys.executable, "-m", "pipelines.cli", "study", "run", preset, *sets, "--out", str(out)],
                              stdout=f, stderr=subprocess.STDOUT).returncode
    end = time.time()
    if code:
        tail = "".join(log.read_text().splitlines(keepends=True)[-20:])
        raise RuntimeError(f"the study failed (exit {code}); the end of its log:\n{tail}")
    return start, end


def compute_bound(config, cores: int) -> tuple[float, float, float]:
    """(seconds, FLOPs, FLOP/s): the study's training and evaluation FLOPs (per-layer count, validation during
    training included, as a dry run counts them) ÷ the fp32 matmul peak of one thread measured now × `cores`."""
    from bench_mfu import matmul_peak

    from pipelines.estimate import pending_jobs
    from pipelines.plan import build_steps
    from pipelines.step import topological_order

    steps = topological_order(build_steps(config))
    flops = sum(job.flops for job in pending_jobs([(s, {"state": "pending"}) for s in steps])[0])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        peak = max(matmul_peak(torch.float32).values()) * cores  # the best clock: a busy machine's wall clock lags
    finally:
        torch.set_num_threads(threads)
    return flops / peak, flops, peak


def bound_row(t: Timeline, study: Path) -> Row:
    from pipelines.config import StudyConfig

    config = StudyConfig.model_validate(read_json(study / "study.json")["config"])
    cores = os.cpu_count() or 1
    seconds, flops, peak = compute_bound(config, cores)
    ratio = t.wall / seconds
    return Row(BOUND_ROW, f"{ratio:.1f}× ({t.wall:.0f} s vs {seconds:.0f} s)", f"≤ {BOUND_GOAL:g}×",
               check(ratio, at_most=BOUND_GOAL), ratio,
               f"{config.name}: {flops:.2e} FLOPs of training and evaluation (per-layer count) at the fp32 matmul "
               f"peak of {cores} core(s) measured beside it ({peak / 1e9:.0f} GFLOP/s in all, 1 thread each)")


def startup_row(t: Timeline, smoke: bool) -> Row:
    """Before each run's loop: the first runs start the warm worker groups (one per core), later runs reuse them."""
    runs = sorted(t.runs, key=lambda r: r[4])
    cores = os.cpu_count() or 1
    first, later = runs[:cores], runs[cores:]
    if not later:
        return Row(STARTUP_ROW, f"first run {max(r[1] for r in first):.1f} s", f"≤ {STARTUP_GOAL:g} s", INFO, None,
                   "one run only: no later run to measure")
    worst = max(later, key=lambda r: r[1])
    later_s = sorted(r[1] for r in later)
    return Row(STARTUP_ROW, f"later runs: median {later_s[len(later_s) // 2]:.1f} s, max {worst[1]:.1f} s; "
               f"first runs {', '.join(f'{r[1]:.1f}' for r in first)} s", f"≤ {STARTUP_GOAL:g} s (later runs)",
               INFO if smoke else check(worst[1], at_most=STARTUP_GOAL), worst[1],
               f"from the step's start to its loop's first step; {len(later)} later runs, the slowest "
               f"{worst[0]}")


def grid_row(root: Path) -> Row:
    """The same study with 5, 10 and 20 runs (more seeds of each size): wall time ∝ runs^b."""
    import numpy as np

    runs, walls = [], []
    for seeds in GRID_SEEDS:
        out = root / f"grid-{seeds}"
        start, end = run_study(out, GRID_PRESET, [f"training.seeds={seeds}"])
        runs.append(len(list(out.glob("train-*/result.json"))))
        walls.append(end - start)
    b = float(np.polyfit(np.log(runs), np.log(walls), 1)[0])
    return Row(GRID_ROW, f"wall ∝ runs^{b:.2f} ({', '.join(f'{n} runs {w:.0f} s' for n, w in zip(runs, walls))})",
               "", INFO, b, f"{GRID_PRESET} with {', '.join(map(str, GRID_SEEDS))} seed(s) of each of its sizes, "
               "each a new study (Ray's and the process's start-up included)")


def study_row(t: Timeline, smoke: bool, source: str) -> Row:
    if t.unstamped:
        return Row(STUDY_ROW, "n/a", f"≤ {STUDY_GOAL:.0%}", SKIPPED, None,
                   f"{source}: {len(t.unstamped)} run(s) have no train_started_at in result.json (trained before "
                   "it was recorded); run the study again in a new folder")
    top = sorted(t.outside.items(), key=lambda kv: -kv[1])[:3]
    note = f"{source}; wall {t.wall:.0f} s, of which outside training: " + ", ".join(
        f"{kind} {seconds:.0f} s" for kind, seconds in top)
    return Row(STUDY_ROW, f"{t.fraction_outside:.0%} of {t.wall:.0f} s", f"≤ {STUDY_GOAL:.0%}",
               INFO if smoke else check(t.fraction_outside, at_most=STUDY_GOAL), t.fraction_outside, note)


# ---- both ----

def measure(smoke: bool = False, tokens: int | None = None, study: Path | None = None,
            only: tuple[str, ...] = ("loop", "study", "grid"), repeats: int = 1) -> list[Row]:
    """Row 1 (loop) and row 2 (study). The smoke version takes row 2 from row 1's own training step: the code
    path, not a study."""
    rows = []
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (the ratios assume a steady load)")
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        root = Path(tmp)
        if "loop" in only or smoke:
            loops = compare_loops(root, smoke, tokens, repeats)
            rows += loop_rows(loops, smoke)
        if "study" in only:
            if smoke:
                timeline, source = study_timeline(loops["study"]), "smoke: row 1's training step alone"
            elif study:  # no recorded start: the process's and Ray's start before its first step are not seen
                timeline = study_timeline(study)
                source = f"{study}, from its first step's start to its last step's end"
            else:
                timeline, source = study_timeline(root / PRESET, *run_study(root / PRESET)), f"{PRESET}, run now"
            print_timeline(timeline)
            rows.append(study_row(timeline, smoke, source))
            if smoke:
                rows.append(Row(BOUND_ROW, "n/a", f"≤ {BOUND_GOAL:g}×", SKIPPED, None, "smoke: no whole study"))
            elif not timeline.unstamped:
                rows.append(bound_row(timeline, study or root / PRESET))
            rows.append(startup_row(timeline, smoke))
        if "grid" in only:
            rows.append(grid_row(root) if not smoke else
                        Row(GRID_ROW, "n/a", "", SKIPPED, None, "smoke: three studies take minutes"))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a tiny model for 10 steps; row 2 from its step")
    parser.add_argument("--tokens", type=int, help=f"row 1's training budget (default {TOKENS:,}: 100 steps)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="row 1: run (b) and (a) this many times each after the first (a), on a noisy machine")
    parser.add_argument("--study", type=Path, help="row 2 from this finished study folder instead of a new study")
    parser.add_argument("--only", nargs="+", choices=("loop", "study", "grid"), default=("loop", "study", "grid"),
                        help="run only these rows")
    args = parser.parse_args(argv)
    rows = measure(args.smoke, args.tokens, args.study, tuple(args.only), args.repeats)
    print()
    for r in rows:
        print(f"{r.name}: {r.measured}  goal {r.goal}  [{r.status}]  {r.note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
