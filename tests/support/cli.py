"""Running `arscale` as a user runs it (a subprocess), and checking its one-line errors: 2 = bad input, 1 = failure."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ARSCALE = [sys.executable, "-m", "pipelines.cli"]
ROOT = Path(__file__).resolve().parents[2]


def subprocess_env() -> dict[str, str]:
    """This environment without the torch.distributed settings an earlier in-process training run left in it."""
    return {k: v for k, v in os.environ.items()
            if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE")}


def arscale(*args, cwd=None):
    return subprocess.run([*ARSCALE, *map(str, args)], capture_output=True, text=True, cwd=cwd or ROOT, timeout=120)


def one_line_error(result, code: int, pattern: str):
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert pattern in lines[0], lines[0]
    assert "Traceback" not in result.stderr
