"""`arscale study status` and `arscale report`: read a study folder, start nothing."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from armodels.files import read_json
from pipelines.errors import UserError
from pipelines.progress import describe_run_progress, duration, read_progress
from pipelines.step_status import STATUS, SUCCEEDED, step_state
from pipelines.storage import StudyStore, is_uri
from pipelines.study import STUDY_FILE


def load_study(directory: Path) -> dict:
    path = Path(directory) / STUDY_FILE
    if not path.is_file():
        raise UserError(f"{directory} is not a study folder (no {STUDY_FILE}); "
                        "start one with `arscale study run CONFIG --out DIR`")
    try:
        return read_json(path)
    except ValueError as e:
        raise UserError(str(e)) from None


def study_status(directory: Path | str) -> str:
    """One line per step (state, time taken, error), then totals. `directory` may be an object-store URI."""
    if is_uri(directory):
        return _stored_study_status(StudyStore(str(directory)))
    directory = Path(directory)
    study = load_study(directory)
    rows, counts = [], {}
    for step in study["steps"]:
        state = step_state(directory, step["dir"])
        name = state["state"]
        counts[name] = counts.get(name, 0) + 1
        if "finished" in state and "started" in state:
            took = duration(state["finished"] - state["started"])
        elif "started" in state:
            took = f"for {duration(time.time() - state['started'])}"
        else:
            took = ""
        note = state.get("error") or _note(state.get("summary", {}))
        if name == "running" and (record := read_progress(directory / f"{step['dir']}.tmp")):
            note = describe_run_progress(record)
        rows.append((step["dir"], name, took, note))
    width = max(len(r[0]) for r in rows)
    lines = [f"study {study['name']} in {directory}"]
    lines += [f"  {d:<{width}}  {s:<11}  {t:>7}  {n}".rstrip() for d, s, t, n in rows]
    lines.append("  " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    report = directory / study["report"]
    lines.append(f"  report: {report}" if report.is_file() else "  report: not written yet")
    return "\n".join(lines)


def _stored_study_status(store: StudyStore) -> str:
    """The status of a study in an object store, read from a local copy of its records (no step's data)."""
    with tempfile.TemporaryDirectory(prefix="arscale-status-") as view:
        view = Path(view)
        if not store.exists(STUDY_FILE):
            raise UserError(f"{store.shown} is not a study folder (no {STUDY_FILE}); start one with `arscale study "
                            f"run CONFIG --out {store.shown}`")
        store.pull_into("", view, [STUDY_FILE])
        study = load_study(view)
        for step in study["steps"]:
            for folder in (step["dir"], f"{step['dir']}.tmp"):
                if store.exists(f"{folder}/{STATUS}"):
                    store.pull_into(folder, view / folder, [STATUS])
        if store.exists(study["report"]):
            store.pull_into("", view, [study["report"]])
        return study_status(view).replace(str(view), store.shown)


def _note(summary: dict) -> str:
    if summary.get("status", "ok") != "ok":
        return f"{summary['status']}: {summary.get('reason')}"
    if "loss" in summary:
        return f"val loss {summary['loss']:.4f} nats/token, {summary['bits_per_byte']:.4f} bits/byte"
    return ""


def report_summary(directory: Path) -> str:
    directory = Path(directory)
    study = load_study(directory)
    report = directory / study["report"]
    if not report.is_file():
        done = sum(step_state(directory, s["dir"])["state"] == SUCCEEDED for s in study["steps"])
        raise UserError(f"study {study['name']} has no report yet ({done} of {len(study['steps'])} steps done); "
                        f"finish it with `arscale study run {study['config_path']} --out {directory}`")
    headline = next((line for line in report.read_text().splitlines() if line.startswith("**Fit")), "")
    return f"{report}\n{headline}".rstrip()
