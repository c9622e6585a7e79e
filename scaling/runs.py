"""Run tables: loading, validating, and keeping only the runs a fit can use (data hygiene).

A run table has one row per training run with at least ``params``, ``tokens`` and ``loss``; optional columns
``flops``, ``params_nonembedding``, ``run_id``, ``initial_loss``, ``status`` and the shape columns the FLOPs
conventions read (``n_layer``, ``d_model``, ``seq_len``, ``vocab_size``, ``n_head``). Other columns are kept.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd


class FitInputError(ValueError):
    """Input a fit cannot use: a missing file or column, a non-numeric value, too few usable runs. One line."""


REQUIRED_COLUMNS = ("params", "tokens", "loss")
NUMERIC_COLUMNS = REQUIRED_COLUMNS + ("flops", "params_nonembedding", "initial_loss", "n_layer", "d_model",
                                      "seq_len", "vocab_size", "n_head")


def load_runs_csv(path: str | Path) -> pd.DataFrame:
    """Read a run table from CSV, checking that the required columns exist and that numeric columns hold numbers.

    Empty cells become NaN (a failed run has no loss); `fit_runs` then leaves those rows out and lists them.

    Raises
    ------
    FitInputError
        One line naming the file and the problem.
    """
    path = Path(path)
    if not path.is_file():
        raise FitInputError(f"{path}: no such file")
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise FitInputError(f"{path}: not a readable CSV table ({str(e).splitlines()[0]})") from None
    require_columns(table, REQUIRED_COLUMNS, f"{path}")
    for column in NUMERIC_COLUMNS:
        if column in table.columns:
            table[column] = _numeric(table[column], f"{path}: column {column!r}")
    return table


def require_columns(runs: pd.DataFrame, columns, where: str = "run table") -> None:
    missing = [c for c in columns if c not in runs.columns]
    if missing:
        raise FitInputError(f"{where}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                            f"(has: {', '.join(map(str, runs.columns)) or 'none'})")


def _numeric(values: pd.Series, where: str) -> pd.Series:
    """The column as floats; raises FitInputError naming the first row (1-based, after the header) that is
    not a number. Empty cells are NaN."""
    numbers = pd.to_numeric(values, errors="coerce")
    bad = numbers.isna() & values.notna() & (values.astype(str).str.strip() != "")
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise FitInputError(f"{where}, row {row + 1}: {values.iloc[row]!r} is not a number")
    return numbers.astype(float)


def run_labels(runs: pd.DataFrame) -> list[dict]:
    """How each row is named in lists of excluded runs: its run_id if the table has one, else its row number."""
    if "run_id" in runs.columns:
        return [{"run_id": str(r)} for r in runs["run_id"]]
    return [{"row": i + 1} for i in range(len(runs))]


def usable_rows(runs: pd.DataFrame, values: dict[str, np.ndarray]) -> tuple[np.ndarray, list[dict]]:
    """Which rows a fit can use, given the values it needs (name → array over all rows), and why the others not.

    A row is left out when its ``status`` is not "ok", when a needed value is missing, infinite or not positive,
    or when it diverged (final loss above its initial loss).

    Returns
    -------
    keep : (n,) bool array
    excluded : list of dicts, the row's label (``run_id`` or ``row``) and ``reason``
    """
    reasons: list[list[str]] = [[] for _ in range(len(runs))]
    if "status" in runs.columns:
        why = runs["reason"] if "reason" in runs.columns else pd.Series([None] * len(runs))
        for i, (status, detail) in enumerate(zip(runs["status"], why)):
            if status != "ok":
                reasons[i].append(f"status {status}" + (f": {detail}" if _present(detail) else ""))
    for name, column in values.items():
        for i, v in enumerate(np.asarray(column, dtype=float)):
            if math.isnan(v):
                reasons[i].append(f"{name} is missing")
            elif math.isinf(v):
                reasons[i].append(f"{name} is infinite")
            elif v <= 0:
                reasons[i].append(f"{name} is not positive ({v:g})")
    if "initial_loss" in runs.columns:
        for i, (initial, final) in enumerate(zip(runs["initial_loss"], values.get("loss", runs["loss"]))):
            if np.isfinite(initial) and np.isfinite(final) and final > initial:
                reasons[i].append(f"diverged: final loss {final:.4g} above initial loss {initial:.4g}")
    keep = np.array([not r for r in reasons], dtype=bool)
    labels = run_labels(runs)
    excluded = [{**labels[i], "reason": "; ".join(r)} for i, r in enumerate(reasons) if r]
    return keep, excluded


def _present(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value)) and str(value) != ""
