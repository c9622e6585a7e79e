"""GPU acceptance check (issue 19): arscale's own training loop on one GPU, without Ray or MLflow, in one command that
a bare GPU machine runs in under 8 minutes. It writes bench/results-gpu.md with four checks, each run in its own
process (so a crash, an out-of-memory or a hang in one is reported and the others still run):

(a) MFU: arscale's loop (armodels.train.train_single_process: DeepSpeed in one process, as bench_mfu.py's GPU row
    runs it, whose code this reuses) on a ~1.3B transformer (24 layers x 2048, 16 heads, seq_len 2048, vocab 32,768;
    micro-batch 4 x 8 accumulation steps), bf16, torch.compile, on random tokens; steady-state steps only. Achieved
    FLOP/s (per-layer count, attention included) against the GPU's bf16 dense data-sheet peak (bench_mfu.GPU_PEAKS;
    H100 SXM: 989 TFLOP/s) and against a measured 8192³ bf16 matmul. Goal: >= 45% of the data sheet.
(b) arscale vs plain PyTorch: the same model, batches, micro-batches, schedule and seed trained by a plain loop
    (torch.autocast bf16 over fp32 weights, torch.compile of the same loss, fused AdamW, gradient clipping), timed the
    same way. Goal: arscale's tokens/s >= 0.95x the plain loop's.
(c) a grid: three transformers (0.4M, 3.2M, 11M non-embedding parameters) trained through the same loop on the GPU,
    on BPE tokens of this Python's standard library (made here: nothing is downloaded), 8M tokens each, bf16; their
    losses, and whether validation loss falls with size.
(d) ZeRO resume: for ZeRO stages 1, 2 and 3 (and 0 for reference), a run stopped after 17 of 40 steps (the
    `should_stop` callback: it saves a checkpoint and returns) and started again in the same folder, against an
    unbroken run: the two curve.json files must agree (max |difference| of the losses <= 1e-3 nats; on a CPU they
    are identical). Where the loop cannot yet checkpoint a stage (it runs through the stop), the row says "pending".

Needs python3 with torch (a CUDA build), numpy, pyarrow, tokenizers, safetensors (and pandas, scipy, matplotlib,
psutil); no Ray, MLflow or network. If DeepSpeed (or what it imports: pydantic, hjson, ...) cannot be imported, the
wheels in build/gpu-wheels/ are installed into a temporary folder for this run (pip --no-index, no network); make
them with `make gpu-wheels` (bench/gpu_wheels.sh) on a machine with PyPI and copy the folder along.

    make gpu-check                                       # python3 bench/gpu_check.py: all of it (~6 minutes on an H100)
    python3 bench/gpu_check.py --only mfu plain          # some checks
    python3 bench/gpu_check.py --mfu-accumulation 16     # tuning (a) and (b)
    .venv/bin/python bench/gpu_check.py --smoke --out /tmp/gpu-check   # everything tiny, on the CPU: that it runs
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import itertools
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import zipfile
from collections import deque
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WHEELS = ROOT / "build" / "gpu-wheels"
RESULTS = "results-gpu.md"

# check → the rows it reports, in the table's order
CHECKS = {
    "mfu": ["(a) MFU: arscale's loop, ~1B transformer, bf16, compile"],
    "plain": ["(b) arscale's loop vs a plain PyTorch loop, same model and batch"],
    "grid": ["(c) three-size grid trained on the GPU"],
    "zero": [f"(d) ZeRO {stage} checkpoint and resume" for stage in (1, 2, 3)] + ["(d) ZeRO 0 resume (reference)"],
}
# seconds each check may take at most (its process is ended after that), on a GPU and in --smoke
LIMITS = {"mfu": 240, "plain": 180, "grid": 150, "zero": 150}
SMOKE_LIMITS = {"mfu": 60, "plain": 60, "grid": 60, "zero": 90}
BUDGET = 440  # seconds for all checks together; with the start (probe, wheels: ~30 s) the script stays under 8 min
MFU_GOAL, PLAIN_GOAL, RESUME_TOLERANCE = 0.45, 0.95, 1e-3
MET, MISSED, SKIPPED, INFO, PENDING, CRASHED = "met", "MISSED", "skipped", "info", "pending", "crashed"
ZERO_STAGES = (1, 2, 3, 0)  # 0 last: a reference, run after the stages under test
ZERO_STEPS, ZERO_STOP = 40, 17  # --smoke: 16, 7


# ======================================================================================================================
# The driver: installs the wheels if need be, runs each check in its own process, writes the results.
# ======================================================================================================================

def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.row:
        return run_check(args)
    started, t0 = datetime.datetime.now(), time.perf_counter()
    out = args.out or (ROOT / "build" / "gpu-check-smoke" if args.smoke else HERE)
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.pop("PYTHONSAFEPATH", None)
    env.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")  # DeepSpeed's ZeRO calls deprecated collectives
    env.setdefault("PYTHONUNBUFFERED", "1")  # the checks' output shows as it comes
    # before a check's first CUDA allocation: a nearly full GPU fragments less with expandable segments
    env.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    work = Path(tempfile.mkdtemp(prefix="arscale-gpu-check-"))
    try:
        machine, problem = ensure_deepspeed(env, work, args.wheels)
        if problem:
            print(f"error: {problem}", file=sys.stderr, flush=True)
        results: dict[str, dict] = {}
        deadline = time.perf_counter() + (args.budget or BUDGET)
        for check in [c for c in CHECKS if c in (args.only or CHECKS)]:
            limit = min((SMOKE_LIMITS if args.smoke else LIMITS)[check], deadline - time.perf_counter())
            if limit < 20:
                spent = f"the {args.budget or BUDGET:g} s budget of the checks was spent before it"
                results[check] = {"error": spent}
                continue
            results[check] = run_in_process(check, argv or sys.argv[1:], work, env, limit, problem)
        rows = rows_of(results, args.smoke)
        minutes = (time.perf_counter() - t0) / 60
        text = results_markdown(rows, results, machine, started, minutes, args.smoke)
        (out / RESULTS).write_text(text)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\n" + "\n".join(f"{r['name']}: {r['measured']}  goal {r['goal'] or '-'}  [{r['status']}]  {r['note']}"
                           for r in rows))
    print(f"\nwritten to {out / RESULTS} ({minutes:.1f} minutes)")
    crashed = [r["name"] for r in rows if r["status"] == CRASHED]
    if crashed:
        print(f"error: {len(crashed)} check(s) did not finish: {'; '.join(crashed)} (their output is above)",
              file=sys.stderr)
    return 1 if crashed else 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="every check tiny, on the CPU (gloo): that the script runs")
    p.add_argument("--out", type=Path,
                   help="folder for results-gpu.md (default: bench/; --smoke: build/gpu-check-smoke)")
    p.add_argument("--only", nargs="+", choices=list(CHECKS), metavar="CHECK", help=f"of: {' '.join(CHECKS)}")
    p.add_argument("--wheels", type=Path, default=WHEELS, help="wheels for a machine without DeepSpeed (%(default)s)")
    p.add_argument("--budget", type=float, help=f"seconds for all checks (default {BUDGET})")
    for name, default, what in (("layers", 24, "layers"), ("embd", 2048, "width"), ("heads", 16, "heads"),
                                ("seq-len", 2048, "sequence length"), ("micro-batch", 4, "sequences a micro-step"),
                                ("accumulation", 8, "micro-steps a step"), ("steps", 10, "optimizer steps"),
                                ("warmup", 3, "first steps not timed")):
        p.add_argument(f"--mfu-{name}", type=int, default=default, metavar="N", help=f"(a), (b): {what} (%(default)s)")
    p.add_argument("--row", choices=list(CHECKS), help=argparse.SUPPRESS)  # inside a check's own process
    p.add_argument("--row-out", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    return p


def run_in_process(check: str, argv: list[str], work: Path, env: dict, limit: float, problem: str | None) -> dict:
    """Run one check in a fresh interpreter, its output shown as it comes; what it wrote, or why it wrote nothing."""
    out = work / f"{check}.json"
    command = [sys.executable, str(Path(__file__).resolve()), *argv, "--row", check, "--row-out", str(out),
               "--work", str(work)]
    print(f"\n== {check} (at most {limit:.0f} s)", flush=True)
    start = time.perf_counter()
    tail: deque[str] = deque(maxlen=40)
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            cwd=ROOT, start_new_session=True)  # its own group: torch.compile's workers end with it

    def pump() -> None:
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            tail.append(line.rstrip())

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        code = proc.wait(timeout=limit)
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        code, timed_out = proc.wait(), True
    reader.join(timeout=10)
    seconds = time.perf_counter() - start
    print(f"== {check}: {seconds:.0f} s", flush=True)
    record = json.loads(out.read_text()) if out.is_file() else {}
    record["seconds"] = seconds
    if timed_out:
        record.setdefault("error", f"timed out after {limit:.0f} s")
    elif code != 0 and "error" not in record:
        last = next((line for line in reversed(tail) if line.strip()), "")
        record["error"] = f"exit code {code}" + (f": {last[-300:]}" if last else "")
    if "error" in record and problem and re.search(r"deepspeed|pydantic|No module named", record["error"], re.I):
        record["error"] += f" ({problem})"
    return record


# ---- DeepSpeed and its dependencies on a machine that lacks them ----

PROBE = """
import json, sys, platform
out = {"python": platform.python_version()}
try:
    import torch
    out.update(torch=torch.__version__, cuda=torch.version.cuda, gpu=torch.cuda.is_available())
    if torch.cuda.is_available():
        out.update(device=torch.cuda.get_device_name(0), gpus=torch.cuda.device_count())
    import deepspeed
    out["deepspeed"] = deepspeed.__version__
except Exception as e:
    out["error"] = f"{type(e).__name__}: {e}"
print("PROBE " + json.dumps(out))
"""


def probe(env: dict) -> dict:
    """What a fresh interpreter with `env` imports: torch's version and device, DeepSpeed's version, or the error."""
    r = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    found = [line for line in r.stdout.splitlines() if line.startswith("PROBE ")]
    if not found:
        return {"error": f"python exited {r.returncode}: {(r.stderr.strip().splitlines() or [''])[-1]}"}
    return json.loads(found[-1].removeprefix("PROBE "))


def ensure_deepspeed(env: dict, work: Path, wheels: Path) -> tuple[dict, str | None]:
    """Make DeepSpeed importable by the checks' processes: as it is, or from `wheels` installed into a folder under
    `work` that goes first on their PYTHONPATH. Returns what the probe found, and a one-line problem if it failed."""
    machine = probe(env)
    if "deepspeed" in machine or "torch" not in machine:
        return machine, machine.get("error")
    files = sorted(wheels.glob("*.whl"))
    if not files:
        return machine, (f"DeepSpeed cannot be imported ({machine['error']}) and {wheels} holds no wheels: run "
                         "`make gpu-wheels` (bench/gpu_wheels.sh) where PyPI is reachable, and copy build/gpu-wheels/ "
                         "here")
    target = work / "site"
    chosen = [f for f in files if needs_install(f)]
    print(f"DeepSpeed cannot be imported ({machine['error']}); installing {len(chosen)} of the {len(files)} wheels "
          f"in {wheels} into {target} (no network): {', '.join(wheel_name(f)[0] for f in chosen)}", flush=True)
    install_wheels(chosen, wheels, target)
    env["PYTHONPATH"] = os.pathsep.join([str(target), *filter(None, [env.get("PYTHONPATH")])])
    machine = probe(env)
    if "deepspeed" not in machine:
        return machine, (f"DeepSpeed still cannot be imported after installing {wheels}: {machine.get('error')}; "
                         f"make the wheels again for this Python ({platform.python_version()}): GPU_PYTHON_VERSION="
                         f"{'.'.join(platform.python_version_tuple()[:2])} bench/gpu_wheels.sh")
    return machine, None


def wheel_name(path: Path) -> tuple[str, str]:
    """(distribution, version) from a wheel's file name."""
    dist, version = path.name.split("-")[:2]
    return dist, version


def _version_key(version: str) -> tuple:
    return tuple(int(p) if p.isdigit() else -1 for p in re.split(r"[.+-]", version)[:4])


def needs_install(path: Path) -> bool:
    """A wheel whose distribution this interpreter lacks, or has in an older version (typing_extensions, packaging:
    pydantic needs recent ones); those it has at the same or a newer version stay as they are."""
    dist, version = wheel_name(path)
    try:
        have = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return True
    return _version_key(have) < _version_key(version)


def install_wheels(files: list[Path], wheels: Path, target: Path) -> None:
    """pip install --no-index --no-deps --target (no network); where this Python has no pip, the wheels are unpacked,
    which is what installing a wheel into a folder amounts to (less its scripts)."""
    target.mkdir(parents=True, exist_ok=True)
    if not files:
        return
    has_pip = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode == 0
    if has_pip:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-index",
                        "--no-deps", "--no-cache-dir", "--find-links", str(wheels), "--target", str(target),
                        *map(str, files)], check=True)
        return
    unpack_wheels(files, target)


def unpack_wheels(files: list[Path], target: Path) -> None:
    """Wheels unpacked into `target`: their packages and their .data/purelib and platlib parts; no scripts."""
    target.mkdir(parents=True, exist_ok=True)
    for f in files:
        with zipfile.ZipFile(f) as z:
            for member in z.namelist():
                parts = member.split("/")
                if parts[0].endswith(".data"):  # purelib/platlib go in the folder too; scripts and headers do not
                    if len(parts) < 3 or parts[1] not in ("purelib", "platlib") or not parts[-1]:
                        continue
                    dest = target.joinpath(*parts[2:])
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_bytes(z.read(member))
                else:
                    z.extract(member, target)


# ---- the results ----

def row(name: str, measured: str, goal: str = "", status: str = INFO, value: float | None = None,
        note: str = "") -> dict:
    return {"name": name, "measured": measured, "goal": goal, "status": status, "value": value, "note": note}


def rows_of(results: dict[str, dict], smoke: bool) -> list[dict]:
    """Every row of every check that ran, in order; a check that failed gives its rows with the reason. Row (b)
    is computed here, from (a)'s rate and the plain loop's."""
    rows = []
    for check, record in results.items():
        if check == "plain":
            rows.append(plain_row(record, results.get("mfu", {}), smoke))
            continue
        got = {r["name"]: r for r in record.get("rows", [])}
        for name in CHECKS[check]:
            if name in got:
                rows.append(got[name])
            else:
                why = record.get("error") or "the check ended before this row"
                last = (record.get("trace") or "").strip().splitlines()[-1:]
                rows.append(row(name, f"did not run: {why}", "", CRASHED, note=last[0] if last else ""))
    return rows


def plain_row(plain: dict, mfu: dict, smoke: bool) -> dict:
    [name] = CHECKS["plain"]
    goal = f">= {PLAIN_GOAL}x"
    if "error" in plain:
        return row(name, f"did not run: {plain['error']}", goal, CRASHED)
    ours = mfu.get("data", {}).get("tokens_per_s")
    theirs = plain["data"]["tokens_per_s"]
    if not mfu:
        return row(name, f"plain loop {theirs:,.0f} tokens/s; no ratio: check (a) was not run", goal, SKIPPED,
                   note="the ratio needs (a): run `--only mfu plain`")
    if not ours:
        return row(name, f"plain loop {theirs:,.0f} tokens/s; no ratio: check (a) did not finish "
                         f"({mfu.get('error', 'no rate')})", goal, CRASHED)
    ratio = ours / theirs
    data = plain["data"]
    return row(name, f"{ratio:.2f}x ({ours:,.0f} vs {theirs:,.0f} tokens/s)", goal,
               INFO if smoke else (MET if ratio >= PLAIN_GOAL else MISSED), ratio,
               f"steady state after {data['warmup']} steps, {data['steps']} steps each; the plain loop: {data['how']}, "
               f"clipping, the same schedule; its first step (compile) {data['first_step_s']:.0f} s"
               + (f"; peak GPU memory {data['peak_memory_gib']:.1f} GiB" if data.get("peak_memory_gib") else ""))


def cell(value) -> str:
    """Text for a Markdown table cell: on one line, its pipes escaped."""
    return " ".join(str(value).split()).replace("|", "\\|")


def results_markdown(rows: list[dict], results: dict, machine: dict, started: datetime.datetime, minutes: float,
                     smoke: bool) -> str:
    kind = ("smoke run (every check tiny, on the CPU with gloo; no performance goal checked)" if smoke
            else "full run")
    device = machine.get("device") or ("no GPU" if "torch" in machine else "?")
    where = (f"{device}; Python {machine.get('python', '?')}, torch {machine.get('torch', '?')} (CUDA "
             f"{machine.get('cuda') or 'none'}), DeepSpeed {machine.get('deepspeed', 'not importable')}")
    lines = ["# GPU acceptance check", "",
             f"{kind}, started {started:%Y-%m-%d %H:%M} on {where}; {minutes:.1f} minutes in all.",
             "Made by `make gpu-check` (bench/gpu_check.py); bench/README.md explains each row.", "",
             "| check | measured | goal | status | note |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(cell(r[k]) for k in ("name", "measured", "goal", "status", "note")) + " |"
              for r in rows]
    for check in ("grid", "zero"):
        detail = results.get(check, {}).get("details")
        if detail:
            lines += ["", detail]
    return "\n".join(lines) + "\n"


# ======================================================================================================================
# The checks, each in its own process (--row): the heavy imports are here.
# ======================================================================================================================

def run_check(args) -> int:
    """Run check `args.row`, writing {"rows", "data", "details"} (or {"error", "trace"}) to args.row_out."""
    import common  # noqa: F401  (puts the project's packages on sys.path)

    record: dict = {}
    try:
        record = {"mfu": check_mfu, "plain": check_plain, "grid": check_grid, "zero": check_zero}[args.row](
            args, lambda partial: args.row_out.write_text(json.dumps(partial)))
        code = 0
    except Exception as e:  # the driver reports it; the other checks still run
        traceback.print_exc()
        record = {**record, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()}
        code = 1
    args.row_out.write_text(json.dumps(record))
    return code


def device_settings(smoke: bool) -> tuple[str, str]:
    """(device, precision) of the checks' runs: a GPU in bf16; --smoke: the CPU in fp32."""
    if smoke:
        return "cpu", "fp32"
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("no GPU visible to torch (torch.cuda.is_available() is False; CUDA build: "
                           f"{torch.version.cuda or 'no, a CPU build'}); use --smoke to check the script on a CPU")
    return "cuda", "bf16" if torch.cuda.is_bf16_supported() else "fp32"


def mfu_run(args):
    """(a)'s and (b)'s size and schedule (bench_mfu.GpuRun); --smoke: a tiny eager one."""
    from bench_mfu import GpuRun

    if args.smoke:
        return GpuRun(n_layer=1, n_embd=32, n_head=2, seq_len=32, vocab_size=256, micro_batch=4, accumulation=2,
                      steps=5, warmup=2, compile=False)
    return GpuRun(n_layer=args.mfu_layers, n_embd=args.mfu_embd, n_head=args.mfu_heads, seq_len=args.mfu_seq_len,
                  micro_batch=args.mfu_micro_batch, accumulation=args.mfu_accumulation, steps=args.mfu_steps,
                  warmup=args.mfu_warmup)


def check_mfu(args, save) -> dict:
    from bench_mfu import measure_gpu

    device, precision = device_settings(args.smoke)
    g = mfu_run(args)
    m = measure_gpu(g, device, precision)
    achieved, rate = m.rate.flops(), m.rate
    goal = f">= {MFU_GOAL:.0%} of the bf16 dense data-sheet peak"
    status = INFO if args.smoke or not m.spec else (MET if m.mfu >= MFU_GOAL else MISSED)
    unit, scale = ("TFLOP/s", 1e12) if device == "cuda" else ("GFLOP/s", 1e9)
    peak_kind = ("data sheet" if m.spec else "measured: not in GPU_PEAKS, no goal checked" if device == "cuda"
                 else "measured")
    measured = (f"{m.mfu:.1%} ({achieved / scale:.1f} of {m.peak / scale:.0f} {unit}, {peak_kind}, {m.device_name}); "
                f"{achieved / m.measured:.1%} of a measured {'8192³ bf16' if device == 'cuda' else '256³ fp32'} "
                f"matmul ({m.measured / scale:.0f} {unit})")
    note = (f"{m.costs.params / 1e9:.2f}B parameters ({m.costs.params_nonembedding / 1e9:.2f}B non-embedding), "
            f"seq_len {g.seq_len}, {g.micro_batch} x {g.accumulation} x {g.seq_len} = {m.tokens_per_step:,} tokens a "
            f"step, {rate.step_seconds['wall']:.2f} s a step, {rate.tokens_per_s():,.0f} tokens/s after {g.warmup} "
            f"of {g.steps} steps; 6ND count {rate.flops_6nd / scale:.1f} {unit}; first step (compile) "
            f"{rate.first_step_seconds:.0f} s; whole run {m.seconds:.0f} s; {precision}, compile {g.compile}"
            + (f"; peak GPU memory {m.peak_memory_gib:.1f} GiB" if m.peak_memory_gib is not None else ""))
    [name] = CHECKS["mfu"]
    return {"rows": [row(name, measured, goal, status, m.mfu, note)],
            "data": {"tokens_per_s": rate.tokens_per_s(), "device": m.device_name}}


def check_plain(args, save) -> dict:
    """(b)'s plain loop; the ratio to (a) is computed by the driver."""
    import torch

    from bench_mfu import _train_module, gpu_train_run, random_shards
    from common import clock_readings

    train = _train_module()  # before armodels' other modules: it makes `scaling` importable on a bare machine
    from armodels.data import TokenWindows
    from armodels.shards import load_token_stream

    device, precision = device_settings(args.smoke)
    g = mfu_run(args)
    dev = torch.device(device)
    if device == "cuda":
        os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
        torch.backends.cuda.matmul.allow_tf32 = True  # as armodels.device does for a run on a GPU
        torch.backends.cudnn.allow_tf32 = True
    with tempfile.TemporaryDirectory(prefix="gpu-check-plain-") as tmp:
        tokens_per_step = g.micro_batch * g.accumulation * g.seq_len
        shards = random_shards(Path(tmp) / "data", g.vocab_size, min(g.steps * tokens_per_step, 4_000_000))
        run = gpu_train_run(g, shards, device, precision, name="plain")
        cfg = run.train
        torch.manual_seed(cfg.seed)
        model = run.build().to(dev)
        windows = TokenWindows(load_token_stream(run.train_shards), model.seq_len, seed=cfg.seed)
        params = list(model.parameters())
        optimizer = torch.optim.AdamW(
            [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
             {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
            lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=device == "cuda" or None)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, train.lr_schedule(run))
        loss_fn = train.Objective(model)
        if cfg.compile:
            loss_fn = torch.compile(loss_fn)
        micro, accum = g.micro_batch, g.accumulation

        def batches(step: int) -> list[torch.Tensor]:
            return [train.to_device(windows.train_batch(step, cfg.batch_size, offset=m * micro, size=micro), dev)
                    for m in range(accum)]

        marks, losses, start = {}, [], time.perf_counter()
        first_step_s = None
        current = batches(0)
        for step in range(run.steps):
            total = torch.zeros((), device=dev)
            for x in current:
                with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=precision == "bf16"):
                    loss = loss_fn(x)
                (loss / accum).backward()
                total += loss.detach().float() / accum
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            schedule.step()
            if step + 1 < run.steps:  # the next step's data while the device computes, as arscale's loop does
                current = batches(step + 1)
            losses.append(total.item())  # a plain loop logs its loss: one sync a step, as in arscale's loop
            marks[step] = clock_readings()
            if first_step_s is None:
                first_step_s = time.perf_counter() - start
        first = min(g.warmup, run.steps - 2)
        seconds = (marks[run.steps - 1]["wall"] - marks[first]["wall"]) / (run.steps - 1 - first)
        memory = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    tokens_per_s = tokens_per_step / seconds
    print(f"plain loop: {seconds:.3f} s a step, {tokens_per_s:,.0f} tokens/s (first step {first_step_s:.0f} s); "
          f"losses {losses[0]:.3f} ... {losses[-1]:.3f}", flush=True)
    if not all(math.isfinite(v) for v in losses):
        raise RuntimeError(f"the plain loop's loss is not finite: {losses}")
    how = ", ".join([f"autocast {precision} over fp32 weights" if precision == "bf16" else f"{precision} weights",
                     "torch.compile" if cfg.compile else "eager", "fused AdamW" if device == "cuda" else "AdamW"])
    return {"data": {"tokens_per_s": tokens_per_s, "step_s": seconds, "first_step_s": first_step_s, "how": how,
                     "steps": run.steps, "warmup": first, "peak_memory_gib": memory, "losses": losses}}


# ---- text: the stdlib's sources as BPE shards, shared by (c) and (d) ----

def text_shards(work: Path, smoke: bool) -> Path:
    """train/ and val/ shard sets of BPE tokens of this Python's standard library (every 20th file held out), made
    once per run of the script (the first check that needs them makes them)."""
    from armodels.bpe import train_bpe
    from armodels.packaged_text import STDLIB
    from armodels.shards import tokenize_to_shards

    root = work / "text"
    if (root / "val" / "manifest.json").is_file():
        return root
    max_bytes, vocab = (300_000, 320) if smoke else (16_000_000, 4096)
    texts, size = [], 0
    for path in sorted(STDLIB.rglob("*.py")):
        if "site-packages" in path.parts or "test" in path.parts or "tests" in path.parts:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if 0 < len(text) <= 500_000:
            texts.append(text)
            size += len(text)
        if size >= max_bytes:
            break
    if size < max_bytes // 4:
        raise RuntimeError(f"only {size:,} bytes of Python sources under {STDLIB}")
    start = time.perf_counter()
    tokenizer = train_bpe(texts[: max(1, len(texts) // 2)], vocab)
    tmp = work / "text.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    train_m = tokenize_to_shards(tokenizer, [t for i, t in enumerate(texts) if i % 20], tmp / "train", split="train")
    val_m = tokenize_to_shards(tokenizer, texts[::20], tmp / "val", split="val")
    tmp.rename(root)
    print(f"text: {len(texts):,} stdlib files, {size / 1e6:.1f} MB, BPE {tokenizer.vocab_size} tokens; "
          f"{train_m.tokens:,} training and {val_m.tokens:,} validation tokens ({time.perf_counter() - start:.0f} s)",
          flush=True)
    return root


GRID = ({"n_layer": 2, "n_embd": 128, "n_head": 2}, {"n_layer": 4, "n_embd": 256, "n_head": 4},
        {"n_layer": 6, "n_embd": 384, "n_head": 6})
GRID_LR = (2e-3, 1.5e-3, 1e-3)
GRID_SMOKE = ({"n_layer": 1, "n_embd": 16, "n_head": 2}, {"n_layer": 1, "n_embd": 32, "n_head": 2},
              {"n_layer": 2, "n_embd": 32, "n_head": 2})


def check_grid(args, save) -> dict:
    from bench_mfu import _train_module

    train = _train_module()
    device, precision = device_settings(args.smoke)
    shards = text_shards(args.work, args.smoke)
    vocab = json.loads((shards / "train" / "manifest.json").read_text())["vocab_size"]
    seq_len, batch, tokens = (32, 16, 20 * 16 * 32) if args.smoke else (256, 64, 8_000_000)
    runs = []
    for size, lr in zip(GRID_SMOKE if args.smoke else GRID, GRID_LR):
        model = {**size, "seq_len": seq_len, "vocab_size": vocab}
        config = train.TrainConfig(tokens=tokens, batch_size=batch, lr=lr, precision=precision, device=device,
                                   eval_points=4, eval_windows=64, log_every=10, checkpoints=0)
        run = train.TrainRun("transformer", model, config, str(shards / "train"), str(shards / "val"),
                             f"grid-{size['n_layer']}x{size['n_embd']}")
        out = args.work / run.name
        start = time.perf_counter()
        result = train.train_single_process(run, out)
        curve = json.loads((out / "curve.json").read_text())
        runs.append({"name": run.name, "params": result["params_nonembedding"], "tokens": result["tokens"],
                     "status": result["status"], "first": curve["train"][0]["loss"] if curve["train"] else None,
                     "train": result["final_train_loss"], "val": result["final_val_loss"],
                     "tokens_per_s": result["tokens_per_s"], "seconds": time.perf_counter() - start,
                     "val_curve": [(p["tokens"], p["loss"]) for p in curve["val"]]})
        print(f"{run.name}: {result['status']}, val loss {result['final_val_loss']}", flush=True)
    ok = all(r["status"] == "ok" and r["val"] is not None and math.isfinite(r["val"]) for r in runs)
    falls = ok and all(a["val"] > b["val"] for a, b in itertools.pairwise(runs))
    losses = ", ".join(f"{r['params'] / 1e6:.2f}M: {r['val']:.3f}" if r["val"] is not None else
                       f"{r['params'] / 1e6:.2f}M: {r['status']}" for r in runs)
    [name] = CHECKS["grid"]
    goal = "every run ok; validation loss falls with size"
    status = (INFO if args.smoke and ok else MET if falls else MISSED)
    note = (f"{tokens:,} tokens each of BPE-{vocab} stdlib text, seq_len {seq_len}, batch {batch}, {precision}, "
            f"eager, on the {'GPU' if device == 'cuda' else 'CPU'}; "
            f"{sum(r['seconds'] for r in runs):.0f} s for the three (set-up included); details below")
    detail = ["## (c) The grid", "",
              ("| run | non-embedding params | tokens | first train loss | final train loss | val loss | tokens/s | "
               "seconds | status |"), "|---|---|---|---|---|---|---|---|---|"]
    detail += [f"| {r['name']} | {r['params']:,} | {r['tokens']:,} | {_num(r['first'])} | {_num(r['train'])} | "
               f"{_num(r['val'])} | {r['tokens_per_s']:,.0f} | {r['seconds']:.0f} | {r['status']} |" for r in runs]
    detail += ["", "Validation loss (nats/token) at each evaluation point, by tokens seen:", ""]
    detail += [f"- {r['name']}: " + ", ".join(f"{t:,}: {v:.3f}" for t, v in r["val_curve"]) for r in runs]
    return {"rows": [row(name, f"validation loss (nats/token) by non-embedding size: {losses}", goal, status,
                         runs[-1]["val"], note)],
            "details": "\n".join(detail), "data": {"runs": runs}}


def _num(value) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "-"


# ---- (d) ZeRO resume ----

def check_zero(args, save) -> dict:
    """For each stage: an unbroken run; a run stopped after ZERO_STOP steps; the same run started again in its folder.
    The rows are saved after each stage, so a crash in one keeps the stages before it."""
    from bench_mfu import _train_module

    train = _train_module()
    device, precision = device_settings(args.smoke)
    shards = text_shards(args.work, args.smoke)
    vocab = json.loads((shards / "train" / "manifest.json").read_text())["vocab_size"]
    model, seq_len, batch = (({"n_layer": 1, "n_embd": 16, "n_head": 2}, 32, 8) if args.smoke else
                             ({"n_layer": 4, "n_embd": 256, "n_head": 4}, 256, 32))
    model = {**model, "seq_len": seq_len, "vocab_size": vocab}
    steps, stop = (16, 7) if args.smoke else (ZERO_STEPS, ZERO_STOP)
    record: dict = {"rows": []}
    for stage in ZERO_STAGES:
        name = CHECKS["zero"][ZERO_STAGES.index(stage)]
        config = train.TrainConfig(tokens=steps * batch * seq_len, batch_size=batch, lr=1e-3, zero_stage=stage,
                                   precision=precision, device=device, eval_points=4, eval_windows=16, log_every=1,
                                   checkpoints=2)
        run = train.TrainRun("transformer", model, config, str(shards / "train"), str(shards / "val"),
                             f"zero{stage}")
        try:
            result = zero_stage_resume(train, run, args.work / f"zero{stage}", stage, stop)
        except Exception as e:  # this stage's row says why; the next stage still runs
            traceback.print_exc()
            result = row(name, f"failed: {type(e).__name__}: {str(e)[:300]}", f"curves equal (max |Δ| <= "
                         f"{RESUME_TOLERANCE:g})", MISSED, note="traceback above, in the check's output")
        result["name"] = name
        if stage == 0 and result["status"] in (MET, MISSED):
            result["goal"], result["status"] = "", INFO  # the reference: what resuming gives on this device
        record["rows"].append(result)
        save(record)
    stages = "\n".join(f"- ZeRO {r['name'].split()[2]}: {r['measured']}. {r['note']}" for r in record["rows"])
    record["details"] = ("## (d) ZeRO checkpoint and resume\n\n"
                         f"A {model['n_layer']} x {model['n_embd']} transformer, {steps} steps of {batch} x "
                         f"{seq_len} tokens, {precision}, one process on the {'GPU' if device == 'cuda' else 'CPU'}: "
                         f"stopped after step {stop} (a checkpoint is saved and the run returns "
                         f"\"interrupted\"), started again in the same folder, and compared with an unbroken run "
                         f"(curve.json: the train loss of every step, the validation loss at 4 points).\n\n{stages}")
    return record


def zero_stage_resume(train, run, folder: Path, stage: int, stop: int = ZERO_STOP) -> dict:
    goal = f"curves equal (max |Δ| <= {RESUME_TOLERANCE:g} nats)"
    shutil.rmtree(folder, ignore_errors=True)
    unbroken = train.train_single_process(run, folder / "unbroken")
    if unbroken["status"] != "ok":
        raise RuntimeError(f"the unbroken run ended {unbroken['status']}: {unbroken['reason']}")
    calls = iter(range(10**6))
    stopped = train.train_single_process(run, folder / "resumed", should_stop=lambda: next(calls) >= stop - 1)
    if stopped["status"] == "ok" and stopped["steps"] == run.steps:
        return row("", "pending: ZeRO checkpoints not implemented", goal, PENDING,
                   note=f"the loop ran through the stop request (zero_stage {stage}: no mid-run checkpoint)")
    if stopped["status"] != "interrupted" or stopped["steps"] != stop:
        raise RuntimeError(f"the stopped run ended {stopped['status']} after {stopped['steps']} steps "
                           f"({stopped['reason']}); expected interrupted after {stop}")
    resumed = train.train_single_process(run, folder / "resumed")
    if resumed["status"] != "ok" or resumed.get("resumed_at_step") != stop:
        raise RuntimeError(f"the resumed run ended {resumed['status']} ({resumed['reason']}), resumed at step "
                           f"{resumed.get('resumed_at_step')}; expected ok, resumed at {stop}")
    a = json.loads((folder / "unbroken" / "curve.json").read_text())
    b = json.loads((folder / "resumed" / "curve.json").read_text())
    diffs = {}
    for part in ("train", "val"):
        x = {p["step"]: p["loss"] for p in a[part]}
        y = {p["step"]: p["loss"] for p in b[part]}
        if x.keys() != y.keys():
            raise RuntimeError(f"the {part} curves have different steps: {sorted(x)} vs {sorted(y)}")
        diffs[part] = max(abs(x[s] - y[s]) for s in x)
    worst = max(diffs.values())
    same = "identical" if worst == 0 else f"max |Δ| {worst:.1e} nats"
    return row("", f"{same} (train {diffs['train']:.1e}, val {diffs['val']:.1e} over {len(a['train'])} steps)",
               goal, MET if worst <= RESUME_TOLERANCE else MISSED, worst,
               f"stopped after step {stop} of {run.steps}, resumed at {resumed['resumed_at_step']}; final val "
               f"loss {unbroken['final_val_loss']:.4f} unbroken, {resumed['final_val_loss']:.4f} resumed")


if __name__ == "__main__":
    sys.exit(main())
