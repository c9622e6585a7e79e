"""Model FLOP utilisation (issue 10, rows 2 and 3): the training loop's achieved FLOP/s against the measured matmul
peak of this machine's CPU, and of its GPU when it has one. Ratios are measured side by side; nothing is asserted.

CPU: the top size of the default grid (configs/text-default.yaml: transformer 4 × 128, seq_len 128, vocab 1,024,
batch 32) trained by arscale's own loop without Ray (armodels.train.train_single_process: DeepSpeed in one process)
on BPE shards of the Python standard library, with one torch thread, as a study's worker has. Achieved FLOP/s = the
model's per-layer training FLOPs per token (attention included; Transformer.flops_per_token) × the tokens/s of the
steps after the first `--warmup` (torch.compile compiles in the first step); the whole-run rate of result.json
(flops_per_layer / train_seconds: DeepSpeed's set-up and the compile included) and the 6ND count are printed beside
it. MFU = achieved / the fp32 matmul peak with the same threads: the best square matmul of 512-2048, timed just
before and just after the run (the better of the two counts; the best seen in the whole benchmark is printed as the
machine's peak). Both are measured on the wall clock and on the process's CPU time (bench/common.py's CLOCKS), and
the goal is checked per CPU-second: on a shared machine a 40-second run loses a share of the wall clock to other
processes that a 0.3-second matmul timed in a quiet moment does not (with one thread on an idle machine the two
agree). One run per setting: eager, torch.compile (TrainConfig.compile), 2 threads (against the 2-thread peak),
unfused attention (SDPA's math kernel, to show what the fused one gives) and bf16 (a few steps: this CPU has no
native bf16). The goal row is the default setting (--default): >= 60%. The runs neither evaluate nor checkpoint (in
a study's top-size run those cost about 1%); sequences are packed already (windows cut from one stream of
documents, no padding).
Then one more eager run with torch.profiler on over its steady-state steps takes a step apart: each kind of op's
share of the step's wall time (self CPU time), how fast the matmuls alone run against the peak, and the page faults
a step (counted in the unprofiled run: the profiler's own records fault pages in).

GPU: the same loop at a size that fills an 80 GB GPU (~1.3B parameters: 24 layers × 2048, 16 heads, seq_len 2048,
vocab 32,768; micro-batch 4 × 16 accumulation steps, so the optimizer step is amortised), bf16 and torch.compile, on
shards of random tokens (the work does not depend on what the tokens say). Steady-state steps only. MFU against the
GPU's bf16 dense peak from its data sheet (GPU_PEAKS; unknown GPUs: the measured one) and against a measured 8192³
bf16 matmul. Goal: >= 45% of the data-sheet peak. This path imports neither Ray nor MLflow (nor pandas or
matplotlib: see `_train_module`).

    .venv/bin/python bench/bench_mfu.py                # the CPU rows (about 5 minutes on 2 busy cores), GPU row if any
    .venv/bin/python bench/bench_mfu.py --smoke        # a tiny model for a few steps; no goal checked
    python3 bench/bench_mfu.py --gpu-only              # on a GPU machine: the GPU row alone (about 4 minutes)
    python3 bench/bench_mfu.py --gpu-only --gpu-micro-batch 8 --gpu-accumulation 8    # tuning it
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import sys
import tempfile
import types
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch

try:
    from common import CLOCKS, CPU, INFO, ROOT, SKIPPED, WALL, Row, check, clock_readings, print_rows, timed
except ImportError:  # imported as bench.bench_mfu from the repository's root
    from bench.common import (CLOCKS, CPU, INFO, ROOT, SKIPPED, WALL, Row, check, clock_readings, print_rows,
                              timed)

CPU_ROW = "MFU on CPU: arscale's loop, top size of the default grid"
CPU_SETTINGS_ROW = "MFU on CPU, each setting"
CPU_PEAK_ROW = "matmul peak on CPU"
BREAKDOWN_ROW = "training step on CPU, where its time goes"
GPU_ROW = "MFU on GPU: arscale's loop, ~1B transformer, bf16"
CPU_GOAL, GPU_GOAL = 0.60, 0.45  # CPU: issue 23's goal (it was 50% in issue 10)
STEPS, WARMUP = 40, 5  # CPU runs: optimizer steps, of which the first WARMUP are not timed
CPU_SIZES = (512, 1024, 2048)  # square matmuls timed for the CPU peak

# bf16 dense (no sparsity) tensor-core peaks from NVIDIA's data sheets, by a fragment of the device name, most specific
# first (torch.cuda.get_device_name: "NVIDIA H100 80GB HBM3" is the SXM part, "NVIDIA H100 PCIe" the PCIe one).
GPU_PEAKS = (("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12), ("B200", 2250e12),
             ("A100", 312e12), ("L40S", 362e12), ("L4", 121e12))


# ---- measuring ----

def best_seconds(fn: Callable[[], object], budget: float, sync: Callable[[], None] = lambda: None) -> dict[str, float]:
    """Fastest per-call time of fn() on each clock, in three rounds of about `budget` seconds each (call it once
    before, to warm up)."""
    def round_seconds(reps: int) -> dict[str, float]:
        sync()
        start = clock_readings()
        for _ in range(reps):
            fn()
        sync()
        return {c: (end - start[c]) / reps for c, end in clock_readings().items()}

    rounds = [round_seconds(1)]
    reps = max(1, int(budget / rounds[0][WALL]))
    rounds += [round_seconds(reps) for _ in range(3)]
    return {c: min(r[c] for r in rounds) for c in CLOCKS}


def matmul_peak(dtype: torch.dtype, sizes: tuple[int, ...] = CPU_SIZES, device: str = "cpu",
                budget: float = 0.3) -> dict[str, float]:
    """Best FLOP/s of square `dtype` matmuls of `sizes` on `device` with torch's current threads, on each clock. A size
    is skipped once one product would take over `budget` seconds (bf16 on a CPU without native bf16 is ~40x slower)."""
    sync = torch.cuda.synchronize if device != "cpu" else (lambda: None)
    best, per_call, last = dict.fromkeys(CLOCKS, 0.0), 0.0, 0
    for n in sizes:
        if last and per_call * (n / last) ** 3 > budget:
            break
        a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
        a @ b  # warm-up: memory, kernel choice, GPU clocks
        seconds, last = best_seconds(lambda: a @ b, budget, sync), n
        per_call = seconds[WALL]
        best = {c: max(best[c], 2 * n**3 / seconds[c]) for c in CLOCKS}
    return best


@dataclass
class Rate:
    """What one run of arscale's loop achieved."""

    result: dict  # its result.json
    flops_per_token: float  # training FLOPs per token, per-layer count (attention included)
    step_seconds: dict[str, float]  # per optimizer step in the steady state, on each clock
    first_step_seconds: float  # the first step (wall): torch.compile compiles in it
    tokens_per_step: int
    faults_per_step: float  # minor page faults of the loop's thread per step in the steady state

    def tokens_per_s(self, clock: str = WALL) -> float:
        return self.tokens_per_step / self.step_seconds[clock]

    def flops(self, clock: str = WALL) -> float:
        """Achieved training FLOP/s in the steady state."""
        return self.flops_per_token * self.tokens_per_s(clock)

    @property
    def whole_run_flops(self) -> float:
        """result.json's own rate (wall clock): every step, DeepSpeed's set-up and the compile included."""
        return self.result["flops_per_layer"] / self.result["train_seconds"]

    @property
    def flops_6nd(self) -> float:
        """The steady-state rate (wall clock) counted as 6 × non-embedding parameters per token: no attention, no
        output layer."""
        return 6 * self.result["params_nonembedding"] * self.tokens_per_s()


def _train_module() -> types.ModuleType:
    """armodels.train, also on a machine without matplotlib or pandas (a GPU box set up only to train): the loop needs
    scaling.flops alone, but `import scaling` runs scaling/__init__.py, which imports the fits and the plots. If that
    fails, an empty package over the same folder stands in for it, so that its submodules still import."""
    try:
        import scaling  # noqa: F401
    except ImportError as e:
        print(f"note: `import scaling` failed ({e}); importing scaling.flops alone", flush=True)
        package = types.ModuleType("scaling")
        package.__path__ = [str(ROOT / "scaling")]
        sys.modules["scaling"] = package
    from armodels import train

    return train


def run_loop(run, out_dir: Path, warmup: int, on_step: Callable[[int], None] = lambda step: None) -> Rate:
    """Train `run` (an armodels.train.TrainRun logging every step) with arscale's loop in this process, without Ray;
    its rate over the steps after the first `warmup` (at least the last step counts). `on_step(step)` is called at
    the end of every step, in the loop's thread, after the clocks are read."""
    train = _train_module()
    marks: dict[int, dict[str, float]] = {}  # step → each clock's reading at the end of that step
    faults: dict[int, int] = {}  # step → the thread's page faults so far
    elapsed: list[float] = []  # the loop's own clock: seconds from its start to the end of each logged step

    def on_metrics(metrics: dict) -> None:
        if "elapsed_s" in metrics:
            marks[metrics["step"]] = clock_readings()
            faults[metrics["step"]] = _faults()
            elapsed.append(metrics["elapsed_s"])
            on_step(metrics["step"])

    result = train.train_single_process(run, out_dir, on_metrics=on_metrics)
    if result["status"] != "ok" or len(marks) < 2:
        raise RuntimeError(f"{run.name}: status {result['status']} ({result['reason']}), {len(marks)} steps logged")
    steps = sorted(marks)
    first, last = steps[min(warmup, len(steps) - 2)], steps[-1]
    per_step = {c: (marks[last][c] - marks[first][c]) / (last - first) for c in CLOCKS}
    return Rate(result, run.costs().flops_per_token, per_step, elapsed[0], run.train.batch_size * run.seq_len,
                (faults[last] - faults[first]) / (last - first))


# ---- CPU ----

@dataclass(frozen=True)
class Setting:
    """One configuration of the CPU runs."""

    label: str
    threads: int = 1
    compile: bool = False
    precision: str = "fp32"
    unfused_attention: bool = False  # SDPA's math kernel instead of the fused (flash) one
    steps: int | None = None  # default: --steps

    def context(self) -> contextlib.AbstractContextManager:
        if not self.unfused_attention:
            return contextlib.nullcontext()
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel(SDPBackend.MATH)


SETTINGS = {
    "eager": Setting("eager (what a study runs today)"),
    "compile": Setting("torch.compile", compile=True),
    "compile-2-threads": Setting("torch.compile, 2 threads", threads=2, compile=True),
    "unfused-attention": Setting("eager, unfused attention (SDPA math kernel)", unfused_attention=True),
    "bf16": Setting("eager, bf16 (DeepSpeed bf16)", precision="bf16", steps=3),
}
DEFAULT_SETTING = "eager"  # what a study runs; torch.compile measured no faster at this size on a 2-core CPU


def cpu_rows(smoke: bool, steps: int, warmup: int, names: list[str], default: str) -> list[Row]:
    """The CPU's matmul peaks, then one run of the loop per setting in `names`; rows for the `default` setting's MFU
    (the goal), every setting's, and the peaks."""
    try:
        from bench_overhead import BYTES_PER_TOKEN, like_a_ray_worker, make_shards, top_size
    except ImportError:
        from bench.bench_overhead import BYTES_PER_TOKEN, like_a_ray_worker, make_shards, top_size

    sizes = CPU_SIZES[:1] if smoke else CPU_SIZES
    peaks: dict[tuple[torch.dtype, int], dict[str, float]] = {}

    def peak(dtype: torch.dtype, threads: int) -> dict[str, float]:
        """The peak measured now, on each clock (`peaks` keeps the best seen)."""
        now = like_a_ray_worker(threads, lambda: matmul_peak(dtype, sizes))
        seen = peaks.setdefault((dtype, threads), now)
        peaks[dtype, threads] = {c: max(now[c], seen[c]) for c in CLOCKS}
        return now

    def gflops(rates: dict[str, float], digits: int = 1) -> str:
        return " / ".join(f"{rates[c] / 1e9:.{digits}f}" for c in CLOCKS)

    print(f"matmul peak, GFLOP/s by the {' / '.join(CLOCKS)} clock:")
    for threads in (1, 2):
        print(f"  {threads} thread(s): fp32 {gflops(peak(torch.float32, threads))}, "
              f"bf16 {gflops(peak(torch.bfloat16, threads), 2)}", flush=True)

    step = top_size(smoke, 1)
    rates: dict[str, Rate] = {}
    around: dict[str, dict[str, float]] = {}  # setting → the fp32 peak measured just before and after its run

    def mfu(name: str, clock: str) -> float:
        return rates[name].flops(clock) / around[name][clock]

    with tempfile.TemporaryDirectory(prefix="bench-mfu-") as tmp:
        tokens_per_step = step.train.batch_size * step.model["seq_len"]
        shards = make_shards(Path(tmp) / "data", step.model["vocab_size"],
                             max(1_000_000, BYTES_PER_TOKEN * steps * tokens_per_step))
        print(f"\n{step.family} {step.model}, batch {step.train.batch_size}; {steps} steps a run, the first "
              f"{warmup} not timed; rates in GFLOP/s; MFU against the fp32 peak with the same threads, the better "
              f"of the measurements just before and after the run (peak: per CPU-second)\n"
              f"{'setting':<46} {'s/step':>6} {'CPU s':>6} {'tokens/s':>8} {'wall':>5} {'CPU':>5} {'whole':>5} "
              f"{'6ND':>5} {'1st step':>8} {'peak':>5} {'MFU wall':>8} {'MFU CPU':>7}", flush=True)
        for name in names:
            s = SETTINGS[name]
            train = replace(step.train, tokens=(s.steps or steps) * tokens_per_step, compile=s.compile,
                            precision=s.precision, eval_points=0, checkpoints=0, log_every=1)
            run = replace(step, name=f"mfu-{name}", train=train).run(shards)
            before = peak(torch.float32, s.threads)
            with s.context():
                rates[name] = r = like_a_ray_worker(s.threads, lambda: run_loop(run, Path(tmp) / name, warmup))
            after = peak(torch.float32, s.threads)
            around[name] = {c: max(before[c], after[c]) for c in CLOCKS}
            print(f"{s.label:<46} {r.step_seconds[WALL]:6.2f} {r.step_seconds[CPU]:6.2f} {r.tokens_per_s():8,.0f} "
                  f"{r.flops(WALL) / 1e9:5.1f} {r.flops(CPU) / 1e9:5.1f} {r.whole_run_flops / 1e9:5.1f} "
                  f"{r.flops_6nd / 1e9:5.1f} {r.first_step_seconds:7.1f}s {around[name][CPU] / 1e9:5.1f} "
                  f"{mfu(name, WALL):8.0%} {mfu(name, CPU):7.0%}", flush=True)
        faults = rates[default].faults_per_step if default in rates else float("nan")
        breakdown = breakdown_row(step, shards, Path(tmp) / "breakdown", steps, warmup, peaks[torch.float32, 1][CPU],
                                  faults, like_a_ray_worker)

    rows = [Row(CPU_PEAK_ROW, f"fp32 {gflops(peaks[torch.float32, 1])}, bf16 {gflops(peaks[torch.bfloat16, 1], 2)} "
                f"GFLOP/s (1 thread, {' / '.join(CLOCKS)} clock)", "", INFO, peaks[torch.float32, 1][WALL],
                f"2 threads: fp32 {gflops(peaks[torch.float32, 2])}, bf16 {gflops(peaks[torch.bfloat16, 2], 2)}; "
                f"best square matmul of {', '.join(map(str, sizes))} seen in this run of the benchmark; a study "
                "trains with 1 thread a run")]
    rows.append(breakdown)
    settings = ", ".join(f"{SETTINGS[n].label} {mfu(n, CPU):.0%} ({mfu(n, WALL):.0%})" for n in names)
    rows.append(Row(CPU_SETTINGS_ROW, settings, "", INFO, None,
                    "MFU per CPU-second (per wall-clock second), each against the fp32 peak with its threads"))
    if default in rates:
        r, threads = rates[default], SETTINGS[default].threads
        value = mfu(default, CPU)
        peak_flops = around[default]
        rows.insert(0, Row(
            CPU_ROW, f"{value:.0%} per CPU-second ({r.flops(CPU) / 1e9:.1f} of {peak_flops[CPU] / 1e9:.1f} GFLOP/s "
                     f"fp32 peak around the run, {SETTINGS[default].label}, {threads} thread"
                     f"{'s' * (threads > 1)}); {mfu(default, WALL):.0%} by the wall clock", f">= {CPU_GOAL:.0%}",
            INFO if smoke else check(value, at_least=CPU_GOAL), value,
            f"steady state after {warmup} steps; whole run (set-up and compile included, wall clock) "
            f"{r.whole_run_flops / peak_flops[WALL]:.0%}; per-layer FLOPs "
            f"{r.flops_per_token / 1e6:.2f} M/token (6ND: {6 * r.result['params_nonembedding'] / 1e6:.2f} M); "
            "CPU time leaves out the time other processes held the core"))
    return rows


# Kinds of op in a training step, by fragments of torch.profiler's op names; the first kind that matches counts
# (so "layer_norm" is LayerNorm before "norm", the gradient clipping, is optimizer work).
STEP_PARTS = (("matmuls", ("aten::mm", "aten::addmm", "aten::bmm")),
              ("attention (fused SDPA)", ("scaled_dot_product",)),
              ("softmax and cross-entropy", ("log_softmax", "nll_loss")),
              ("GELU", ("gelu",)),
              ("LayerNorm", ("layer_norm",)),
              ("optimizer and clipping", ("adamw", "optimizer.", "_foreach", "norm")))


@dataclass
class StepParts:
    """Where the steady-state steps of one run of the loop spent their time (torch.profiler, self CPU time)."""

    step_seconds: float  # wall clock per step, profiled (the profiler slows ops a little)
    seconds: dict[str, float]  # kind of op (STEP_PARTS, "other ops") → seconds per step
    top_other: list[tuple[str, float]]  # the costliest ops of "other ops", seconds per step
    matmul_flops: float  # FLOP/s of the matmuls alone (the profiler counts their FLOPs)

    @property
    def outside_ops(self) -> float:
        """Seconds per step outside torch's ops: Python, DeepSpeed, autograd's own work, the profiler."""
        return max(0.0, self.step_seconds - sum(self.seconds.values()))


def _faults() -> int:
    who = getattr(resource, "RUSAGE_THREAD", resource.RUSAGE_SELF)  # the loop's own thread where Linux can say
    return resource.getrusage(who).ru_minflt


def profile_steps(run, out_dir: Path, warmup: int) -> StepParts:
    """Run the loop once with torch.profiler on over the steps after the first `warmup`, and sort the ops' self CPU
    time into STEP_PARTS."""
    from torch.profiler import ProfilerActivity, profile

    profiler = profile(activities=[ProfilerActivity.CPU], with_flops=True)
    window: dict[str, float] = {}

    def on_step(step: int) -> None:
        if step == warmup - 1:
            window["first"] = step
            profiler.__enter__()
        elif step == run.steps - 1 and "first" in window:
            profiler.__exit__(None, None, None)
            window["last"] = step

    rate = run_loop(run, out_dir, warmup, on_step)
    steps = window["last"] - window["first"]
    seconds: dict[str, float] = {}
    other: dict[str, float] = {}
    matmul_seconds = matmul_flops = 0.0
    for op in profiler.key_averages():
        if op.self_cpu_time_total <= 0:
            continue
        op_seconds = op.self_cpu_time_total / 1e6 / steps
        kind = next((k for k, fragments in STEP_PARTS if any(f in op.key.lower() for f in fragments)), "other ops")
        seconds[kind] = seconds.get(kind, 0.0) + op_seconds
        if kind == "other ops":
            other[op.key] = op_seconds
        if kind == "matmuls":
            matmul_seconds += op_seconds
            matmul_flops += op.flops / steps
    return StepParts(rate.step_seconds[WALL], seconds, sorted(other.items(), key=lambda kv: -kv[1])[:4],
                     matmul_flops / matmul_seconds if matmul_seconds else float("nan"))


def breakdown_row(step, shards: Path, out_dir: Path, steps: int, warmup: int, peak_flops: float,
                  faults_per_step: float, as_worker: Callable) -> Row:
    """The top size's training step taken apart (eager, 1 thread, as a study runs it: `as_worker` is
    bench_overhead.like_a_ray_worker): each kind of op's share of the step, how fast the matmuls themselves run
    against `peak_flops` (the 1-thread matmul peak per CPU-second); `faults_per_step` comes from a run without the
    profiler (whose own records fault pages in)."""
    train = replace(step.train, tokens=steps * step.train.batch_size * step.model["seq_len"], eval_points=0,
                    checkpoints=0, log_every=1)
    run = replace(step, name="mfu-breakdown", train=train).run(shards)
    parts = as_worker(1, lambda: profile_steps(run, out_dir, warmup))
    shares = {kind: s / parts.step_seconds for kind, s in sorted(parts.seconds.items(), key=lambda kv: -kv[1])}
    shares["outside torch's ops"] = parts.outside_ops / parts.step_seconds
    print(f"\nwhere a step's time goes (eager, 1 thread, torch.profiler over {steps - warmup} steps; "
          f"{parts.step_seconds * 1e3:.1f} ms a step):")
    for kind, share in shares.items():
        print(f"  {kind:<28} {share:6.1%}")
    print("  costliest other ops: " + ", ".join(f"{k} {s * 1e3:.2f} ms" for k, s in parts.top_other))
    print(f"  the matmuls alone run at {parts.matmul_flops / 1e9:.1f} GFLOP/s, {parts.matmul_flops / peak_flops:.0%} "
          f"of the 1-thread peak per CPU-second; {faults_per_step:,.0f} page faults a step (unprofiled)", flush=True)
    return Row(BREAKDOWN_ROW, ", ".join(f"{kind} {share:.0%}" for kind, share in shares.items()), "", INFO, None,
               f"eager, 1 thread, self CPU time by torch.profiler; the matmuls alone at "
               f"{parts.matmul_flops / peak_flops:.0%} of the matmul peak (small shapes: K = n_embd); "
               f"{faults_per_step:,.0f} page faults a step")


# ---- GPU ----

@dataclass(frozen=True)
class GpuRun:
    """The GPU run's size and schedule (--gpu-* options)."""

    n_layer: int = 24
    n_embd: int = 2048
    n_head: int = 16
    seq_len: int = 2048
    vocab_size: int = 32768
    micro_batch: int = 4  # sequences per micro-step; ~45 GB in all at the default size
    accumulation: int = 16  # micro-steps per optimizer step
    steps: int = 10
    warmup: int = 3  # steps not timed: the compile, the first optimizer steps
    compile: bool = True


GPU_SMOKE = GpuRun(n_layer=2, n_embd=256, n_head=4, seq_len=256, vocab_size=1024, micro_batch=2, accumulation=2,
                   steps=4, warmup=1, compile=False)


def spec_peak(device_name: str) -> float | None:
    """The bf16 dense data-sheet peak of the GPU called `device_name`, if GPU_PEAKS knows it."""
    return next((flops for fragment, flops in GPU_PEAKS if fragment.lower() in device_name.lower()), None)


def random_shards(root: Path, vocab_size: int, tokens: int, doc_tokens: int = 1 << 16) -> Path:
    """train/ and val/ shard sets of uniformly random tokens (for throughput: the work does not depend on them)."""
    from armodels.shards import ShardWriter

    rng = np.random.default_rng(0)
    for split, count in (("train", tokens), ("val", doc_tokens)):
        writer = ShardWriter(root / split, split=split, tokenizer_sha256="random-tokens", vocab_size=vocab_size,
                             eod_id=vocab_size - 1)
        for doc in range(-(-count // doc_tokens)):
            writer.add(doc, rng.integers(0, vocab_size - 1, doc_tokens), doc_tokens)
        writer.close()
    return root


@dataclass
class GpuMeasurement:
    """One run of arscale's loop at a GpuRun's size, beside the device's matmul peak (what `measure_gpu` found)."""

    device_name: str
    spec: float | None  # the data-sheet bf16 dense peak, if GPU_PEAKS knows the device
    measured: float  # the best square matmul (8192³ bf16 on a GPU), FLOP/s
    model: dict
    costs: object  # armodels.train.ModelCosts
    tokens_per_step: int
    rate: Rate
    seconds: float  # the whole run: model build, DeepSpeed set-up, compile, steps, saving
    peak_memory_gib: float | None  # GPU only

    @property
    def peak(self) -> float:
        """What MFU is measured against: the data sheet's peak, else the measured one."""
        return self.spec or self.measured

    @property
    def mfu(self) -> float:
        return self.rate.flops() / self.peak


def gpu_train_run(g: GpuRun, shards: Path, device: str = "cuda", precision: str = "bf16", name: str = "mfu-gpu"):
    """The armodels.train.TrainRun of a GpuRun on `shards`: a transformer of its size, its micro-batches and steps,
    neither evaluating nor checkpointing, every step logged."""
    train = _train_module()
    model = {"n_layer": g.n_layer, "n_embd": g.n_embd, "n_head": g.n_head, "seq_len": g.seq_len,
             "vocab_size": g.vocab_size}
    tokens_per_step = g.micro_batch * g.accumulation * g.seq_len
    config = train.TrainConfig(tokens=g.steps * tokens_per_step, batch_size=g.micro_batch * g.accumulation,
                               micro_batch_size=g.micro_batch, lr=3e-4, precision=precision, compile=g.compile,
                               device=device, eval_points=0, checkpoints=0, log_every=1)
    return train.TrainRun("transformer", model, config, str(shards / "train"), str(shards / "val"), name)


def measure_gpu(g: GpuRun, device: str = "cuda", precision: str = "bf16") -> GpuMeasurement:
    """The matmul peak of `device` (8192³ in bf16 on a GPU; a small fp32 one on a CPU, for smoke runs), then
    arscale's loop (armodels.train.train_single_process: no Ray) at `g`'s size on shards of random tokens."""
    on_gpu = device == "cuda"
    if on_gpu:
        # before the first CUDA allocation: a nearly full GPU fragments less with expandable segments
        os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    train = _train_module()
    name = torch.cuda.get_device_name(0) if on_gpu else "CPU"
    measured = (matmul_peak(torch.bfloat16, (8192,), "cuda", budget=1.0) if on_gpu
                else matmul_peak(torch.float32, (256,), budget=0.05))[WALL]
    spec = spec_peak(name) if on_gpu else None
    tokens_per_step = g.micro_batch * g.accumulation * g.seq_len
    with tempfile.TemporaryDirectory(prefix="bench-mfu-gpu-") as tmp:
        # the windows cycle through the stream in epochs, so a few million tokens feed any number of steps
        shards = random_shards(Path(tmp) / "data", g.vocab_size, min(g.steps * tokens_per_step, 4_000_000))
        run = gpu_train_run(g, shards, device, precision)
        costs = train.model_costs("transformer", run.model)
        sheet = f"{spec / 1e12:.0f} TFLOP/s (data sheet)" if spec else "not in GPU_PEAKS"
        peaks = (f"GPU: {name}; bf16 dense peak {sheet}, {measured / 1e12:.0f} TFLOP/s measured (8192³ matmul)"
                 if on_gpu else f"device: {name}; fp32 matmul peak {measured / 1e9:.1f} GFLOP/s (256³)")
        print(f"\n{peaks}\n"
              f"transformer {run.model}: {costs.params / 1e9:.2f}B parameters, {costs.flops_per_token / 1e9:.2f} "
              f"GFLOP/token (per-layer); micro-batch {g.micro_batch} × {g.accumulation} = {tokens_per_step:,} tokens "
              f"a step, {g.steps} steps (first {g.warmup} not timed), {precision}, compile {g.compile}", flush=True)
        rate, seconds = timed(lambda: run_loop(run, Path(tmp) / "run", g.warmup))
    memory = torch.cuda.max_memory_allocated() / 2**30 if on_gpu else None
    m = GpuMeasurement(name, spec, measured, run.model, costs, tokens_per_step, rate, seconds, memory)
    achieved = rate.flops()
    print(f"  {rate.step_seconds[WALL]:.2f} s/step, {rate.tokens_per_s():,.0f} tokens/s, {achieved / 1e12:.0f} TFLOP/s "
          f"achieved (6ND: {rate.flops_6nd / 1e12:.0f}); MFU {m.mfu:.1%} of the {'data-sheet' if spec else 'measured'} "
          f"peak, {achieved / measured:.1%} of the measured matmul\n  first step {rate.first_step_seconds:.0f} s "
          f"(compile), whole run {rate.whole_run_flops / 1e12:.0f} TFLOP/s, {seconds:.0f} s in all (model build and "
          f"save included)" + (f"; peak GPU memory {memory:.1f} GiB" if memory is not None else ""), flush=True)
    return m


def gpu_row(g: GpuRun, smoke: bool) -> Row:
    goal = f">= {GPU_GOAL:.0%} of the bf16 dense peak"
    if not torch.cuda.is_available():
        print("\nGPU row skipped: no GPU on this machine")
        return Row(GPU_ROW, "n/a", goal, SKIPPED, None, "no GPU on this machine")
    m = measure_gpu(g)
    rate, achieved, spec = m.rate, m.rate.flops(), m.spec
    return Row(GPU_ROW, f"{m.mfu:.0%} ({achieved / 1e12:.0f} of {m.peak / 1e12:.0f} TFLOP/s, {m.device_name})", goal,
               INFO if smoke or not spec else check(m.mfu, at_least=GPU_GOAL), m.mfu,
               f"{achieved / m.measured:.0%} of a measured 8192³ bf16 matmul ({m.measured / 1e12:.0f} TFLOP/s); "
               f"{m.costs.params / 1e9:.2f}B parameters, seq_len {g.seq_len}, {m.tokens_per_step:,} tokens a step, "
               f"{rate.step_seconds[WALL]:.2f} s a step, {rate.tokens_per_s():,.0f} tokens/s; random tokens"
               + ("" if spec else f"; {m.device_name} is not in GPU_PEAKS: MFU against the measured peak, no goal "
                  "checked"))


# ---- both ----

def measure(smoke: bool = False, steps: int = STEPS, warmup: int = WARMUP, settings: list[str] | None = None,
            default: str = DEFAULT_SETTING, gpu: GpuRun | None = None, cpu: bool = True) -> list[Row]:
    """The CPU rows (unless not `cpu`) and the GPU row (skipped without a GPU). Smoke: a tiny model, 6 steps, eager."""
    if smoke:
        steps, warmup, settings, default, gpu = 6, 2, ["eager"], "eager", gpu or GPU_SMOKE
    rows = cpu_rows(smoke, steps, warmup, settings or list(SETTINGS), default) if cpu else []
    return rows + [gpu_row(gpu or GpuRun(), smoke)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a tiny model for a few steps, eager only")
    parser.add_argument("--steps", type=int, default=STEPS, help="optimizer steps of each CPU run")
    parser.add_argument("--warmup", type=int, default=WARMUP, help="first steps of each CPU run not timed")
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), help="CPU settings to run (default: all)")
    parser.add_argument("--default", choices=list(SETTINGS), default=DEFAULT_SETTING,
                        help="the CPU setting the goal row reports")
    parser.add_argument("--gpu-only", action="store_true", help="only the GPU row")
    sizes = [f.name for f in fields(GpuRun) if f.name != "compile"]  # --gpu-layers, --gpu-embd, ..., --gpu-warmup
    for name in sizes:
        flag = {"n_layer": "layers", "n_embd": "embd", "n_head": "heads"}.get(name, name).replace("_", "-")
        parser.add_argument(f"--gpu-{flag}", dest=f"gpu_{name}", type=int, metavar="N", default=getattr(GpuRun, name),
                            help=f"GPU run: {name} (default %(default)s)")
    parser.add_argument("--gpu-no-compile", action="store_true", help="GPU run: eager instead of torch.compile")
    args = parser.parse_args(argv)
    if args.default not in (args.settings or SETTINGS):
        parser.error(f"--default {args.default} is not among --settings")
    gpu = GpuRun(**{name: getattr(args, f"gpu_{name}") for name in sizes}, compile=not args.gpu_no_compile)
    print_rows(measure(args.smoke, args.steps, args.warmup, args.settings, args.default,
                       None if args.smoke else gpu, cpu=not args.gpu_only))
    return 0


if __name__ == "__main__":
    sys.exit(main())
