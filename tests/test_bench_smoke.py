"""The benchmarks run (their --smoke versions; CI checks they work, not how fast: timings belong in bench/)."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.mark.parametrize("script", sorted(p.name for p in BENCH.glob("bench_*.py")))
def test_bench_smoke(script):
    r = subprocess.run([sys.executable, str(BENCH / script), "--smoke"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip()
