"""Study configs and folders shared by the tests: the micro study of the cluster tests, and finding a step's folder."""

from __future__ import annotations

import json
from pathlib import Path

from pipelines.study import STUDY_FILE

# The micro study's steps: one training run of a 3.2k-parameter transformer.
MICRO_STUDY_STEPS = ("corpus", "tokenizer", "shards", "train-transformer-3.2k", "eval-transformer-3.2k", "fit",
                     "report")


def micro_study_yaml(name: str, *, max_bytes: int, train_bytes: int, tokens: int, checkpoints: int,
                     num_workers: int = 2, cpus_per_worker: int | None = None) -> str:
    """A study of one training run (a 1-layer transformer of 16 wide) on a slice of the standard library, small
    enough for a cluster of 1-CPU nodes: with 2 workers of 1 CPU, on two 1-CPU nodes, one worker per node."""
    cpus = f", cpus_per_worker: {cpus_per_worker}" if cpus_per_worker is not None else ""
    return f"""\
name: {name}
corpus: {{source: python-stdlib, max_bytes: {max_bytes}, val_fraction: 0.1}}
tokenizer: {{vocab_size: 280, train_bytes: {train_bytes}}}
shards: {{shard_tokens: 100000}}
models:
  seq_len: 32
  grids:
    - family: transformer
      sizes: [{{n_layer: 1, n_embd: 16, n_head: 2, num_workers: {num_workers}}}]
training: {{tokens: {tokens}, batch_size: 16, lr: 0.005, eval_points: 1, eval_windows: 4, log_every: 1{cpus}, \
checkpoints: {checkpoints}}}
evaluation: {{max_tokens: 1000, samples: 1}}
fit: {{bootstrap: 10, holdout_top: 0}}
"""


def step_dir(out: Path, name: str) -> Path:
    """The folder of the step `name` in the study folder `out`, as study.json lists it."""
    study = json.loads((out / STUDY_FILE).read_text())
    return out / next(s["dir"] for s in study["steps"] if s["name"] == name)
