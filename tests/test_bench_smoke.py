"""The benchmark suite runs end to end in its smoke version: every benchmark, one table, results.md and an MLflow
run. CI checks that the benchmarks work, not how fast they are: timings belong in bench/."""

import subprocess
import sys
from pathlib import Path

import mlflow

BENCH = Path(__file__).resolve().parent.parent / "bench"


def test_the_smoke_suite_writes_every_row_to_results_and_mlflow(tmp_path):
    r = subprocess.run([sys.executable, str(BENCH / "run_all.py"), "--smoke", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    table = (tmp_path / "results.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| benchmark")]
    for expected in ("orchestration", "MFU", "KV cache", "tokenize", "fits", "cost"):
        assert any(expected.lower() in row.lower() for row in rows), (expected, table)
    assert "crashed" not in table

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("arscale-bench")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.data.metrics
    assert len([t for t in run.data.tags if t.startswith("status.")]) == len(rows)
