"""What the training workers report to Ray Train, kept beside the run (imported when a training step runs, as it
imports ray.train).

The workers call `ray.train.report` once, at the end of a run (pipelines/steps/train.py); Ray Train passes
reports without a checkpoint only to its callbacks (its Result holds checkpointed ones), so this callback keeps the
last one in the run's folder, where the step puts it in its summary. One Ray Train run trains many of the study's
runs one after another (pipelines.warm_workers), so each report names its run's folder ("run").
"""

from __future__ import annotations

from pathlib import Path

from ray.train import UserCallback

from armodels.files import write_json_atomic

RAY_TRAIN_REPORT = "ray-train-report.json"  # in the run's folder: the last metrics rank 0 reported to Ray Train


class LastReport(UserCallback):
    """Writes rank 0's metrics of each report to `<study>/<run>/ray-train-report.json`. It runs in Ray Train's
    controller, which Ray Train places on the node of the process that called fit() (a lane on the study driver's
    node), so the study folder is there."""

    def __init__(self, study: Path):
        self.study = Path(study)

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        run = metrics[0].get("run") if metrics else None
        if run and "/" not in run and (self.study / run).is_dir():
            try:
                write_json_atomic(self.study / run / RAY_TRAIN_REPORT, metrics[0])
            except FileNotFoundError:
                # The callback runs after the report, asynchronously: a run's last report can arrive after its step
                # has committed (renamed) the folder. An error here would fail the controller, and with it the next
                # run on the same warm workers; the run's result.json holds these numbers anyway.
                pass
