"""A run's last report to Ray Train reaches the controller's callback asynchronously, and can arrive after the run's
step has committed its folder (renamed `<step>.tmp` to `<step>`). The callback must then let it go: an error there
fails Ray Train's controller, and with it the next run on the same warm workers (seen under load in the cooldown
study: `ControllerError: Training failed due to controller error`)."""

import os

from pipelines.steps import train_reports
from pipelines.steps.train_reports import RAY_TRAIN_REPORT, LastReport


def test_a_report_that_arrives_after_its_run_committed_is_dropped(tmp_path, monkeypatch):
    study, run = tmp_path / "study", "train-a-1k-0123456789.tmp"
    (study / run).mkdir(parents=True)
    write = train_reports.write_json_atomic

    def commit_then_write(path, obj):  # the step commits between the callback's check and its write
        os.rename(study / run, study / run.removesuffix(".tmp"))
        write(path, obj)

    monkeypatch.setattr(train_reports, "write_json_atomic", commit_then_write)
    LastReport(study).after_report(None, [{"run": run, "loss": 1.0}], None)  # no error reaches the controller
    committed = study / run.removesuffix(".tmp")
    assert committed.is_dir() and not (committed / RAY_TRAIN_REPORT).exists()
    assert not [p for p in committed.iterdir() if p.name.startswith(f".{RAY_TRAIN_REPORT}")]  # no stray half-file

    monkeypatch.setattr(train_reports, "write_json_atomic", write)
    (study / "train-b").mkdir()
    LastReport(study).after_report(None, [{"run": "train-b", "loss": 2.0}], None)  # an ordinary report is kept
    assert (study / "train-b" / RAY_TRAIN_REPORT).is_file()
