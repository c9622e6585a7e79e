"""Shared fixtures: real text (the Python standard library), a real tokenizer and shards, a real local Ray, a real
S3-compatible server. Shared helpers that are not fixtures are in tests/support/: cli.py (running `arscale`),
local_cluster.py, processes.py (waiting for a checkpoint, killing processes), runs.py (comparing loss curves),
servers.py, s3.py, studies.py (the micro study).

The tests are laid out like the packages they test (tests/armodels, tests/scaling, tests/pipelines,
tests/cluster); tests/faults injects faults into whole studies; tests/test_layers.py checks the imports."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from armodels.packaged_text import STDLIB
from tests.support.exclusive import MARKER, machine_lock, slow_modules_first
from tests.support.s3 import S3Server

_machine_lock = machine_lock()
# The local Rays the tests start (here and in the `arscale` they run) leave out the dashboard: nothing in a study
# needs it, and its processes take CPU from the tests (tests/faults/test_security.py checks a Ray with one).
os.environ.setdefault("ARSCALE_RAY_DASHBOARD", "0")


def pytest_collection_modifyitems(config, items):
    """Under `pytest -n`, the modules with slow tests are handed out first (tests/support/exclusive.py)."""
    if _machine_lock is not None:
        items[:] = slow_modules_first(items)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Under `pytest -n`, a test marked `exclusive` runs with no other test beside it (tests/support/exclusive.py)."""
    if _machine_lock is None:
        return (yield)
    with _machine_lock.hold(exclusive=item.get_closest_marker(MARKER) is not None):
        return (yield)


@pytest.fixture(scope="session")
def stdlib_texts() -> list[str]:
    """About 600 kB of real Python source: the json, email and logging packages of the standard library."""
    files = sorted(p for pkg in ("json", "email", "logging") for p in (STDLIB / pkg).glob("*.py"))
    return [f.read_text(encoding="utf-8") for f in files]


@pytest.fixture(scope="session")
def tokenizer(stdlib_texts):
    from armodels.bpe import train_bpe

    return train_bpe(stdlib_texts, 320)


@pytest.fixture(scope="session")
def shards(tmp_path_factory, stdlib_texts, tokenizer) -> Path:
    """A shard directory with train/ and val/ splits, as the study's shard step writes it."""
    from armodels.shards import tokenize_to_shards

    root = tmp_path_factory.mktemp("shards")
    tokenize_to_shards(tokenizer, stdlib_texts[:-4], root / "train", split="train", shard_tokens=40_000)
    tokenize_to_shards(tokenizer, stdlib_texts[-4:], root / "val", split="val")
    return root


@pytest.fixture(scope="session")
def ray_local():
    """A real Ray cluster on 127.0.0.1 with 2 CPUs, shared by the tests of a session."""
    import ray

    from pipelines.ray_connect import connect

    connect(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_study_config():
    """The text-tiny preset plus one size whose learning rate makes it diverge (it must be reported and left out
    of the fit)."""
    from pipelines.config import StudyConfig, load_config

    cfg, path = load_config("text-tiny")
    data = cfg.model_dump()
    data["models"]["grids"][0]["sizes"].append({"n_layer": 1, "n_embd": 8, "n_head": 2, "name": "unstable",
                                                "lr": 1e4})
    return StudyConfig.model_validate(data), path


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory, tiny_study_config, ray_local):
    """(study folder, outcomes, seconds) of the tiny study run once per session on real Ray, DeepSpeed, MLflow
    and Parquet. Shared: tests/pipelines/test_study_e2e.py re-runs it and adds an isoFLOP study to its folder, so
    a test that needs it unchanged copies the folder first."""
    import time

    from pipelines.study import run_study

    cfg, path = tiny_study_config
    out = tmp_path_factory.mktemp("study")
    started = time.time()
    outcomes = run_study(cfg, path, out)
    return out, outcomes, time.time() - started


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A real S3-compatible server (moto) on 127.0.0.1 with one bucket, shared by the tests of a module."""
    server = S3Server(tmp_path_factory.mktemp("s3") / "moto.log")
    yield server
    server.stop()
