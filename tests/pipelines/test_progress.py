"""Following a study: a run's progress record as its workers write it, `study status`'s reading of it, and the
study-wide line with its ETA (the study-level behaviour is in tests/faults/test_study_interrupted.py)."""

import re
import time

from pipelines.progress import StudyProgress, TrainingProgress, describe_run_progress, read_progress


def _train_metrics(tokens: int, total: int, rate: float) -> dict:
    return {"step": tokens // 512, "tokens": tokens, "loss": 3.5, "lr": 1e-3, "tokens_per_s": rate,
            "elapsed_s": tokens / rate, "progress": tokens / total}


def test_a_runs_record_is_what_status_shows(tmp_path, capsys):
    progress = TrainingProgress("transformer-1k", 2_000_000, record=tmp_path / "progress.json", record_every=0)
    progress({"step": 10, "tokens": 5120, "val_loss": 3.9})
    progress(_train_metrics(900_000, 2_000_000, 10_000))
    record = read_progress(tmp_path)
    assert record["tokens"] == 900_000 and record["total_tokens"] == 2_000_000 and record["val_loss_subset"] == 3.9
    assert record["eta_s"] == (2_000_000 - 900_000) / 10_000
    shown = describe_run_progress(record, now=record["updated"] + 5)
    assert shown == "45% 900k/2.0M tokens, loss 3.500, ETA 1m50s (5s ago)", shown
    assert "[transformer-1k]  45% 900k/2.0M tokens" in capsys.readouterr().out
    assert read_progress(tmp_path / "nowhere") is None


def test_the_study_line_counts_finished_and_running_runs_and_weighs_the_eta_by_flops(tmp_path):
    # three runs: a small one done before this invocation, a large one running, a middle one waiting
    work = {"train-s": (100_000, 1e12), "train-l": (400_000, 8e12), "train-m": (200_000, 3e12)}
    study = StudyProgress(steps=9, work=work, every=3600)
    for name in ("corpus", "tokenizer", "shards"):
        study.finished(name, "skipped")
    study.finished("train-s", "skipped")
    assert study.line({}) == "progress: 4/9 steps, 1/3 training runs, 100k/700k tokens"  # nothing trained yet
    study.started("train-l")
    running = tmp_path / "train-l.tmp"
    running.mkdir()
    TrainingProgress("l", 400_000, record=running / "progress.json")(_train_metrics(100_000, 400_000, 1e4))
    study.training_since = time.monotonic() - 10  # training started 10 s ago
    line = study.line({"train-l": running})
    assert line.startswith("progress: 4/9 steps, 1/3 training runs, 200k/700k tokens, ETA ~"), line
    # a quarter of train-l (2e12 FLOPs) in 10 s; 1e12 + 2e12 done of 12e12: 9e12 left at 2e11/s is 45 s (by tokens,
    # 500k left at 10k/s, it would be 50 s; the FLOPs say the large run's tokens cost more)
    eta = re.search(r"ETA ~(\d+)s", line)
    assert eta and 44 <= int(eta.group(1)) <= 46, line
    study.finished("train-l", "succeeded")
    study.finished("train-m", "failed")
    assert study.line({}).startswith("progress: 6/9 steps, 2/3 training runs, 500k/700k tokens, ETA ~")
    assert not study.due()  # every hour: not yet
