"""Scaling of cost (issue 10, row 7): how the time of one training step grows with model size and with sequence
length, beside what the FLOPs predict. Nothing is asserted and no goal is checked: the rows inform.

A step is what the training loop pays per optimizer step: forward, backward, gradient clipping and an AdamW step
(`model.loss(x).backward()`, in plain PyTorch) on a batch of 32 sequences, the default study's batch, with one torch
thread, as a study's worker has. Two sweeps of the transformer: widths 64-256 at 4 layers and seq_len 128 (time
against N, the non-embedding parameters), and seq_len 64-1024 at the default grid's top size, 4 × 128 (time
against T). Each point's time is its fastest of `--rounds` steps, taken in turn with the other points' (a load that
comes and goes weighs on all alike), in CPU time: with one thread, what an idle machine's wall clock shows, less
what other processes take on a shared one (bench/common.py's CLOCKS; the wall clock's exponent is printed beside).
The exponents are least-squares slopes on log-log axes, time ∝ N^a and time ∝ T^b; beside each, the slope the
model's training FLOPs per step take on the same points (flops_per_token × tokens, attention included), so a
measured exponent below the FLOPs' says fixed costs weigh on the small points, one above says the large ones run
less efficiently.

    .venv/bin/python bench/bench_cost_scaling.py            # both sweeps (a few minutes on 2 busy cores)
    .venv/bin/python bench/bench_cost_scaling.py --smoke    # 2 small points each, seconds
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field

import numpy as np
import torch

try:
    from common import CLOCKS, CPU, INFO, WALL, Row, clock_readings, print_rows
except ImportError:  # imported as bench.bench_cost_scaling from the repository's root
    from bench.common import CLOCKS, CPU, INFO, WALL, Row, clock_readings, print_rows
import armodels  # noqa: E402  (common put the project on sys.path)

BATCH, THREADS, ROUNDS = 32, 1, 3
WIDTHS, SEQ_LENS = (64, 96, 128, 192, 256), (64, 128, 256, 512, 1024)
SMOKE_WIDTHS, SMOKE_SEQ_LENS = (32, 64), (32, 64)


@dataclass
class Point:
    """One model of a sweep and what a training step of it costs."""

    config: dict
    params: int  # non-embedding
    flops: float  # training FLOPs of one step (per-layer count)
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(CLOCKS, float("inf")))  # fastest step


class Stepper:
    """One training step of a model, as the loop takes it, on a fixed random batch."""

    def __init__(self, config: dict, batch: int):
        torch.manual_seed(0)
        self.model = armodels.build("transformer", **config)
        self.x = torch.randint(0, config["vocab_size"], (batch, config["seq_len"]))
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3)

    def __call__(self) -> dict[str, float]:
        """Seconds one step took, on each clock."""
        start = clock_readings()
        loss = self.model.loss(self.x)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        return {c: end - start[c] for c, end in clock_readings().items()}


def sweep(configs: list[dict], batch: int, rounds: int) -> list[Point]:
    """Each config's fastest step over `rounds` rounds, every round stepping every config once (after a warm-up)."""
    steppers = [Stepper(c, batch) for c in configs]
    points = [Point(c, s.model.num_params(), s.model.flops_per_token() * batch * c["seq_len"])
              for c, s in zip(configs, steppers)]
    for step in steppers:
        step()  # warm-up: allocations, kernel choice
    for _ in range(rounds):
        for point, step in zip(points, steppers):
            now = step()
            point.seconds = {c: min(point.seconds[c], now[c]) for c in CLOCKS}
    return points


def exponent(x: list[float], y: list[float]) -> float:
    """Least-squares slope of log y on log x: the k of y ∝ x^k."""
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def report(points: list[Point], axis: str, x: list[float]) -> dict[str, float]:
    """Prints a sweep's table; returns the exponents of time (on each clock) and of FLOPs per step against `x`."""
    print(f"\n{'width':>6} {'seq_len':>7} {'params':>10} {'GFLOP/step':>10} {'s/step':>7} {'CPU s':>7} "
          f"{'GFLOP/CPU-s':>11}")
    for p in points:
        print(f"{p.config['n_embd']:>6} {p.config['seq_len']:>7} {p.params:>10,} {p.flops / 1e9:>10.2f} "
              f"{p.seconds[WALL]:>7.3f} {p.seconds[CPU]:>7.3f} {p.flops / p.seconds[CPU] / 1e9:>11.1f}")
    fits = {c: exponent(x, [p.seconds[c] for p in points]) for c in CLOCKS}
    fits["FLOPs"] = exponent(x, [p.flops for p in points])
    print(f"time ∝ {axis}^{fits[CPU]:.2f} (CPU time; wall clock {axis}^{fits[WALL]:.2f}); "
          f"FLOPs per step ∝ {axis}^{fits['FLOPs']:.2f}", flush=True)
    return fits


def measure(smoke: bool = False, batch: int = BATCH, rounds: int = ROUNDS, threads: int = THREADS) -> list[Row]:
    """Both sweeps; a row for each, with the exponent of step time (CPU time) as its value."""
    try:
        from bench_overhead import like_a_ray_worker, top_size
    except ImportError:
        from bench.bench_overhead import like_a_ray_worker, top_size

    widths, seq_lens = (SMOKE_WIDTHS, SMOKE_SEQ_LENS) if smoke else (WIDTHS, SEQ_LENS)
    top = top_size(False, 1).model  # the default grid's largest size: 4 layers × 128, seq_len 128
    base = {**top, "n_layer": 2, "n_embd": 32, "seq_len": 32} if smoke else top
    print(f"one training step (forward, backward, clipping, AdamW) on {batch} sequences, {threads} thread(s); "
          f"fastest of {rounds} rounds")
    by_size = like_a_ray_worker(threads, lambda: sweep([{**base, "n_embd": w} for w in widths], batch, rounds))
    by_length = like_a_ray_worker(threads, lambda: sweep([{**base, "seq_len": t} for t in seq_lens], batch, rounds))
    fixed = f"{base['n_layer']} layers, batch {batch}, {threads} thread(s)"

    def row(name: str, axis: str, points: list[Point], x: list[float], swept: str) -> Row:
        fits = report(points, axis, x)
        small, large = points[0], points[-1]
        return Row(name, f"time ∝ {axis}^{fits[CPU]:.2f} (FLOPs per step ∝ {axis}^{fits['FLOPs']:.2f})", "", INFO,
                   fits[CPU], f"{swept}; {small.seconds[CPU] * 1e3:,.0f} to {large.seconds[CPU] * 1e3:,.0f} ms a step, "
                   f"{small.flops / small.seconds[CPU] / 1e9:.1f} to {large.flops / large.seconds[CPU] / 1e9:.1f} "
                   f"GFLOP/s (CPU time; by the wall clock time ∝ {axis}^{fits[WALL]:.2f})")

    return [row("cost scaling: step time vs model size", "N", by_size, [p.params for p in by_size],
                f"widths {widths[0]}-{widths[-1]} at {fixed}, seq_len {base['seq_len']}"),
            row("cost scaling: step time vs sequence length", "T", by_length, list(seq_lens),
                f"seq_len {seq_lens[0]}-{seq_lens[-1]} at width {base['n_embd']}, {fixed}")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="2 small points a sweep, in seconds")
    parser.add_argument("--batch", type=int, default=BATCH, help="sequences a step (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="timed steps a point (default %(default)s)")
    parser.add_argument("--threads", type=int, default=THREADS, help="torch CPU threads (default %(default)s)")
    args = parser.parse_args(argv)
    print_rows(measure(args.smoke, args.batch, args.rounds, args.threads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
