"""The GPU acceptance check (bench/gpu_check.py) runs end to end in its smoke version, on this CPU: every check tiny,
each in its own process, DeepSpeed on gloo, and bench/results-gpu.md's table with every row. The figures themselves
need a GPU (`make gpu-check`). Also: a check that fails is reported while the others still run, a ZeRO stage the loop
cannot checkpoint is reported as pending, and the wheels a bare GPU machine lacks are installed from files alone."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import gpu_check


def table_rows(text: str) -> dict[str, list[str]]:
    """The results table: row name → its cells."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("| (") and not line.startswith("| check"):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            rows[cells[0]] = cells
    return rows


def test_the_smoke_check_writes_every_row(tmp_path):
    r = subprocess.run([sys.executable, str(BENCH / "gpu_check.py"), "--smoke", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    text = (tmp_path / "results-gpu.md").read_text()
    assert text.startswith("# GPU acceptance check") and "smoke run" in text
    rows = table_rows(text)
    expected = [name for names in gpu_check.CHECKS.values() for name in names]
    assert list(rows) == expected, text
    for cells in rows.values():
        assert len(cells) == 5 and cells[3] in ("info", "met", "pending"), cells  # nothing crashed or missed
        assert not cells[1].startswith("did not run"), cells
    # (b) is a ratio of (a)'s rate and the plain loop's; (c) reports three losses; (d) one row per ZeRO stage
    assert rows[gpu_check.CHECKS["plain"][0]][1].split("x")[0].replace(".", "").isdigit()
    assert rows[gpu_check.CHECKS["grid"][0]][1].count("M:") == 3
    assert "## (c) The grid" in text and "## (d) ZeRO checkpoint and resume" in text
    for stage in (1, 2, 3):
        cells = rows[f"(d) ZeRO {stage} checkpoint and resume"]
        assert cells[3] == "pending" or cells[1].startswith("identical"), cells  # on gloo: exactly equal curves


def test_a_check_that_fails_is_reported_and_the_others_are_kept():
    results = {
        "mfu": {"error": "timed out after 240 s", "seconds": 240},
        "plain": {"data": {"tokens_per_s": 1000.0, "step_s": 1.0, "first_step_s": 5.0, "steps": 10, "warmup": 3,
                           "how": "eager"}},
        "grid": {"rows": [gpu_check.row(gpu_check.CHECKS["grid"][0], "losses", "", "met")]},
        "zero": {"rows": [gpu_check.row(gpu_check.CHECKS["zero"][0], "identical", "", "met")],
                 "error": "exit code -9", "trace": "Traceback ...\nRuntimeError: boom\n"},
    }
    rows = {r["name"]: r for r in gpu_check.rows_of(results, smoke=False)}
    assert rows[gpu_check.CHECKS["mfu"][0]]["status"] == "crashed"
    assert "timed out" in rows[gpu_check.CHECKS["mfu"][0]]["measured"]
    plain = rows[gpu_check.CHECKS["plain"][0]]
    assert plain["status"] == "crashed" and "1,000 tokens/s" in plain["measured"]  # no ratio without (a)
    assert rows[gpu_check.CHECKS["grid"][0]]["status"] == "met"
    zero = [rows[name] for name in gpu_check.CHECKS["zero"]]
    assert zero[0]["status"] == "met"  # saved before the process died
    assert all(r["status"] == "crashed" and "exit code -9" in r["measured"] and r["note"] == "RuntimeError: boom"
               for r in zero[1:])
    text = gpu_check.results_markdown(list(rows.values()), results, {"python": "3.12"}, __import__("datetime")
                                      .datetime(2026, 1, 1), 1.0, smoke=False)
    assert len(table_rows(text)) == len(rows)  # one line each, whatever the messages hold


def test_a_zero_stage_the_loop_cannot_checkpoint_is_pending(tmp_path):
    """A loop that runs through the stop request (no mid-run checkpoint at that stage) is reported, not failed."""
    def train_single_process(run, out, should_stop=None):
        if should_stop:
            for _ in range(run.steps):
                should_stop()
        return {"status": "ok", "steps": run.steps, "reason": None}

    train = SimpleNamespace(train_single_process=train_single_process)
    result = gpu_check.zero_stage_resume(train, SimpleNamespace(steps=40), tmp_path / "zero2", 2)
    assert result["status"] == "pending" and result["measured"] == "pending: ZeRO checkpoints not implemented"


def test_without_deepspeed_or_wheels_the_check_says_how_to_make_them(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "probe", lambda env: {"python": "3.12", "torch": "2.11.0",
                                                         "error": "ModuleNotFoundError: No module named 'deepspeed'"})
    _, problem = gpu_check.ensure_deepspeed({}, tmp_path, tmp_path / "no-wheels")
    assert "make gpu-wheels" in problem and "no-wheels" in problem and "\n" not in problem


def _wheel(path: Path, files: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return path


def test_wheels_are_chosen_by_what_is_installed_and_unpack_without_pip(tmp_path):
    import numpy

    assert gpu_check.needs_install(tmp_path / "not_a_package_here-1.0-py3-none-any.whl")
    assert not gpu_check.needs_install(tmp_path / f"numpy-{numpy.__version__}-cp312-cp312-manylinux_2_28_x86_64.whl")
    assert not gpu_check.needs_install(tmp_path / "numpy-0.1.0-cp312-cp312-manylinux_2_28_x86_64.whl")
    assert gpu_check.needs_install(tmp_path / "numpy-999.0.0-cp312-cp312-manylinux_2_28_x86_64.whl")
    wheel = _wheel(tmp_path / "demo_pkg-1.0-py3-none-any.whl", {
        "demo_pkg/__init__.py": "VALUE = 42\n", "demo_pkg-1.0.dist-info/METADATA": "Name: demo-pkg\nVersion: 1.0\n",
        "demo_pkg-1.0.data/purelib/demo_extra.py": "EXTRA = 1\n", "demo_pkg-1.0.data/scripts/demo": "#!/bin/sh\n"})
    target = tmp_path / "site"
    gpu_check.unpack_wheels([wheel], target)
    assert (target / "demo_pkg" / "__init__.py").is_file() and (target / "demo_extra.py").is_file()
    assert not any(p.name == "demo" for p in target.rglob("*"))  # scripts stay out
    code = f"import sys; sys.path.insert(0, {str(target)!r}); import demo_pkg, demo_extra; " \
           "print(demo_pkg.VALUE + demo_extra.EXTRA)"
    r = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True)
    assert r.stdout.strip() == "43", r.stderr


@pytest.mark.skipif(not any(gpu_check.WHEELS.glob("deepspeed-*.whl")),
                    reason="build/gpu-wheels/ not made (make gpu-wheels: needs PyPI)")
def test_the_made_wheels_install_with_pip_and_no_network(tmp_path):
    """The wheels `make gpu-wheels` made: every one DeepSpeed needs, under 50 MB, pure ones installable here by
    pip --no-index --target (the compiled ones are for CPython 3.12)."""
    files = sorted(gpu_check.WHEELS.glob("*.whl"))
    names = {gpu_check.wheel_name(f)[0].lower() for f in files}
    assert {"deepspeed", "pydantic", "pydantic_core", "hjson", "py_cpuinfo", "msgpack", "einops"} <= names
    assert sum(f.stat().st_size for f in files) < 50e6
    pure = [f for f in files if f.name.endswith("-none-any.whl") and gpu_check.wheel_name(f)[0] == "hjson"]
    gpu_check.install_wheels(pure, gpu_check.WHEELS, tmp_path / "site")
    code = f"import sys; sys.path.insert(0, {str(tmp_path / 'site')!r}); import hjson; print(hjson.__file__)"
    r = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True)
    assert r.stdout.startswith(str(tmp_path / "site")), r.stderr
