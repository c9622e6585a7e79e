"""The output folders of the tokenization commands: never a user's folder clobbered, never half an output left looking
complete.

An --out must be new or empty (the bulk tokenizer also takes its own earlier output, and resumes it). The commands
that write their output in one go write it into a temporary folder beside --out and rename that into place at the
end, so a failure leaves no --out at all and the temporary folder is removed.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipelines.errors import UserError


def check_new_output(out: Path, *, or_else: str = "") -> None:
    """Refuse an --out that is a file, or a folder that holds anything (`or_else`: what else it may be)."""
    out = Path(out)
    if out.is_dir() and not any(out.iterdir()):
        return
    if out.exists() or out.is_symlink():
        what = "is a folder that is not empty" if out.is_dir() else "is a file"
        raise UserError(f"--out {out} {what}: name a new or empty folder{or_else} (an output never overwrites "
                        "files)")


@contextmanager
def new_output(out: Path) -> Iterator[Path]:
    """A temporary folder beside `out` to write the output into, renamed to `out` when the block succeeds and
    removed when it fails; `out` must be new or empty (check_new_output)."""
    out = Path(out)
    check_new_output(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.parent / f".{out.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
        tmp.mkdir()
    except OSError as e:
        raise UserError(f"cannot create the output folder {out} ({e.strerror})") from None
    try:
        yield tmp
        try:
            os.rename(tmp, out)  # onto a missing or empty folder only
        except OSError:
            check_new_output(out)  # something was put there meanwhile
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
