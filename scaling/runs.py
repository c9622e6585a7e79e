"""Run tables: loading, validating, and keeping only the runs a fit can use (data hygiene).

A run table has one row per training run with at least ``params``, ``tokens`` and ``loss``; optional columns
``flops``, ``params_nonembedding``, ``run_id``, ``initial_loss``, ``status`` and the shape columns the FLOPs
conventions read (``n_layer``, ``d_model``, ``seq_len``, ``vocab_size``, ``n_head``). Other columns are kept. A table
read from a CSV file also has ``csv_line``, each row's line in the file, by which errors and excluded runs name it
(a fit sorts the rows, so their positions would not say which row is meant).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pandas as pd


class FitInputError(ValueError):
    """Input a fit cannot use: a missing file or column, a non-numeric value, too few usable runs. One line."""


REQUIRED_COLUMNS = ("params", "tokens", "loss")
NUMERIC_COLUMNS = REQUIRED_COLUMNS + ("flops", "params_nonembedding", "initial_loss", "n_layer", "d_model",
                                      "seq_len", "vocab_size", "n_head")
LINE_COLUMN = "csv_line"


def load_runs_csv(path: str | Path) -> pd.DataFrame:
    """Read a run table from CSV, checking that the required columns exist and that numeric columns hold numbers.

    Empty cells become NaN (a failed run has no loss); `fit_runs` then leaves those rows out and lists them. A row
    that repeats another in every column is refused: a fit would weight that run twice (seeds of one size differ in
    their loss, so they are no such repeat).

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
    lines = _record_lines(path, len(table))
    for column in NUMERIC_COLUMNS:
        if column in table.columns:
            table[column] = _numeric(table[column], f"{path}: column {column!r}", lines)
    _refuse_repeated_rows(table, lines, path)
    if lines is not None:
        table[LINE_COLUMN] = lines
    return table


def _record_lines(path: Path, rows: int) -> list[int] | None:
    """The line in the file where each data row starts (a quoted cell may span lines; blank lines are no rows, as for
    pandas), or None if the file cannot be read that way, or disagrees with pandas on the number of rows."""
    starts = []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            end = 0
            for record in reader:
                if record and not (len(record) == 1 and not record[0].strip()):
                    starts.append(end + 1)
                end = reader.line_num
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    return starts[1:] if len(starts) == rows + 1 else None  # the first record is the header


def _where(row: int, lines: list[int] | None) -> str:
    return f"row {row + 1}" + (f" (line {lines[row]})" if lines else "")


def _refuse_repeated_rows(table: pd.DataFrame, lines: list[int] | None, path: Path) -> None:
    first: dict[tuple, int] = {}
    for row, values in enumerate(table.itertuples(index=False, name=None)):
        key = tuple(None if _missing(v) else v for v in values)
        if key in first:
            a, b = first[key], row
            where = f"lines {lines[a]} and {lines[b]}" if lines else f"rows {a + 1} and {b + 1}"
            raise FitInputError(f"{path}: {where} are the same run twice (equal in every column), which a fit would "
                                "weight double; remove one")
        first[key] = row


def require_columns(runs: pd.DataFrame, columns, where: str = "run table") -> None:
    missing = [c for c in columns if c not in runs.columns]
    if missing:
        raise FitInputError(f"{where}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                            f"(has: {', '.join(map(str, runs.columns)) or 'none'})")


def _numeric(values: pd.Series, where: str, lines: list[int] | None = None) -> pd.Series:
    """The column as floats; raises FitInputError naming the first row (1-based, after the header, and its line in
    the file when `lines` are known) that is not a number. Empty cells are NaN."""
    numbers = pd.to_numeric(values, errors="coerce")
    bad = numbers.isna() & values.notna() & (values.astype(str).str.strip() != "")
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise FitInputError(f"{where}, {_where(row, lines)}: {values.iloc[row]!r} is not a number")
    return numbers.astype(float)


def run_labels(runs: pd.DataFrame) -> list[dict]:
    """How each row is named in lists of excluded runs: its run_id if the table has one, else its line in the CSV
    file it was read from, else its row number."""
    if "run_id" in runs.columns:
        return [{"run_id": str(r)} for r in runs["run_id"]]
    if LINE_COLUMN in runs.columns:  # (a row added to the table since has none)
        return [{"line": int(n)} if n == n else {"row": i + 1} for i, n in enumerate(runs[LINE_COLUMN])]
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


def _missing(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _present(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value)) and str(value) != ""
