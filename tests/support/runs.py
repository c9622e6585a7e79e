"""Comparing training runs by what they wrote: the loss curves (curve.json) of two runs of the same config."""

from __future__ import annotations

import json
from pathlib import Path


def assert_curves_agree(run: Path, reference: Path, kinds: tuple[str, ...] = ("train",), at: str = "tokens",
                        tolerance: float = 2e-3) -> dict:
    """The curves of `kinds` of the run in folder `run` are logged at the same points (`at`: tokens or step) as
    those of `reference`, with losses within `tolerance` (2 workers of the same global batch agree with 1 to
    rounding); returns the run's curves."""
    curves = [json.loads((d / "curve.json").read_text()) for d in (run, reference)]
    for kind in kinds:
        assert [p[at] for p in curves[0][kind]] == [p[at] for p in curves[1][kind]], kind
        diffs = [abs(a["loss"] - b["loss"]) for a, b in zip(curves[0][kind], curves[1][kind])]
        assert max(diffs) < tolerance, (kind, diffs)
    return curves[0]
