"""What the training workers report to Ray Train, kept beside the run (imported when a training step runs, as it
imports ray.train).

The workers call `ray.train.report` at each evaluation and at the end (pipelines/steps/train.py); Ray Train passes
reports without a checkpoint only to its callbacks (its Result holds checkpointed ones), so this callback keeps the
last one in the run's folder, where the step puts it in its summary.
"""

from __future__ import annotations

from pathlib import Path

from ray.train import UserCallback

from armodels.files import write_json_atomic

RAY_TRAIN_REPORT = "ray-train-report.json"  # in the run's folder: the last metrics rank 0 reported to Ray Train


class LastReport(UserCallback):
    """Writes rank 0's metrics of each report to `path`. It runs in Ray Train's controller, which Ray Train places
    on the node of the process that called fit() (the step's task), so `path` is in the step's folder."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        if metrics:
            write_json_atomic(self.path, metrics[0])
