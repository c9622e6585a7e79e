"""The benchmark suite (`make bench`): every benchmark, one table, written to bench/results.md and logged to MLflow.

Each row compares two things measured side by side in this run (the machines are shared and noisy, so goals are
ratios, not absolute times). A missed goal is reported, not raised: bench/README.md says why each one misses.

    .venv/bin/python bench/run_all.py                    # everything (over an hour on 2 cores: see README.md)
    .venv/bin/python bench/run_all.py --only fits kv_cache
    .venv/bin/python bench/run_all.py --smoke --out /tmp/bench   # seconds to minutes: checks that each one runs
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import platform
import sys
import time
import traceback
from pathlib import Path

import common  # noqa: F401  (puts the project's packages on sys.path)
from common import MISSED, Row

# Module bench_<name>.py for each name, in the order of the table.
BENCHMARKS = ("overhead", "mfu", "kv_cache", "tokenize", "fits", "cost_scaling")
HERE = Path(__file__).resolve().parent


def run(names: list[str], smoke: bool, options: dict[str, dict] | None = None) -> tuple[list[Row], list[str]]:
    """The rows of every named benchmark, and the names of those that crashed: each of those gives a MISSED row
    saying so, and the rest still run. `options[name]` are keyword arguments for that benchmark's measure()."""
    rows: list[Row] = []
    crashed: list[str] = []
    for name in names:
        module = importlib.import_module(f"bench_{name}")
        print(f"== {name}", flush=True)
        start = time.perf_counter()
        try:
            rows += module.measure(smoke=smoke, **(options or {}).get(name, {}))
        except Exception as e:  # a benchmark's failure is a result of the suite, not the end of it
            traceback.print_exc()
            rows.append(Row(name, f"crashed: {type(e).__name__}: {e}", "", MISSED))
            crashed.append(name)
        print(f"== {name}: {time.perf_counter() - start:.0f} s", flush=True)
    return rows, crashed


def table(rows: list[Row]) -> str:
    """The rows as a Markdown table."""
    lines = ["| benchmark | measured | goal | status | note |", "|---|---|---|---|---|"]
    lines += [f"| {r.name} | {r.measured} | {r.goal} | {r.status} | {r.note} |" for r in rows]
    return "\n".join(lines)


def machine() -> str:
    import os

    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, {gpu}; "
            f"Python {platform.python_version()}, torch {torch.__version__}")


def log_to_mlflow(uri: str, rows: list[Row], results: Path, smoke: bool) -> str:
    """One MLflow run per suite run: each row's value as a metric, its status as a tag, the table as artifact."""
    from mlflow.entities import Metric, RunTag
    from mlflow.tracking import MlflowClient

    from pipelines.tracking import create_experiment, log_artifact_files, system_tags

    client = MlflowClient(uri)
    found = client.get_experiment_by_name("arscale-bench")
    experiment_id = found.experiment_id if found else create_experiment(client, uri, "arscale-bench")
    run = client.create_run(experiment_id, run_name="smoke" if smoke else "bench",
                            tags={"arscale.bench.smoke": str(smoke), **system_tags()})
    now = int(time.time() * 1000)
    metrics = [Metric(_key(r.name), r.value, now, 0) for r in rows if r.value is not None]
    tags = [RunTag(f"status.{_key(r.name)}", r.status) for r in rows]
    client.log_batch(run.info.run_id, metrics=metrics, tags=tags)
    log_artifact_files(client, uri, run.info.run_id, results)
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def _key(name: str) -> str:
    """A row name as an MLflow metric key (letters, digits, _ - . / and spaces only)."""
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in name).strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny versions of every benchmark; no goal checked")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, metavar="NAME",
                        help=f"run only these, of: {' '.join(BENCHMARKS)}")
    parser.add_argument("--tokenize-size", default="1G",
                        help="corpus of the tokenization rows: 1G (the memory goal's size; ~50 min here), 200M, ...")
    parser.add_argument("--out", type=Path, default=HERE,
                        help="folder for results.md and the MLflow store (default: bench/)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: a SQLite store in --out)")
    args = parser.parse_args(argv)

    started = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    rows, crashed = run(list(args.only or BENCHMARKS), args.smoke, {"tokenize": {"corpus_size": args.tokenize_size}})
    body = table(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "results.md"
    kind = "smoke run (tiny sizes; goals not checked)" if args.smoke else "full run"
    results.write_text(f"# Benchmark results\n\n{kind}, started {started} on {machine()}.\n"
                       f"Made by `make bench` (bench/run_all.py); bench/README.md explains each row.\n\n{body}\n")
    print(f"\n{body}\n\nwritten to {results}")
    uri = args.tracking_uri or f"sqlite:///{args.out.resolve()}/mlflow.db"
    try:
        print(f"logged to MLflow ({uri}) as run {log_to_mlflow(uri, rows, results, args.smoke)}")
    except Exception as e:  # the numbers are on screen and in results.md already
        print(f"warning: not logged to MLflow at {uri}: {type(e).__name__}: {e}", file=sys.stderr)
    if crashed:
        print(f"error: {', '.join(crashed)} crashed (traceback above)", file=sys.stderr)
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
