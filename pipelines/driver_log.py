"""The study driver's log, kept in the study folder: `<study>/logs/driver.log`.

Everything the driver prints while a study runs (its own lines, and what Ray forwards from steps and training
workers) also goes to the log, with a time stamp on each line and without terminal colour codes, appended run
after run. The terminal sees the same lines as before.
"""

from __future__ import annotations

import contextlib
import re
import sys
import threading
import time
from pathlib import Path

DRIVER_LOG = Path("logs") / "driver.log"  # in the study folder
ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")  # colour codes and cursor moves


def plain(text: str) -> str:
    """`text` without terminal control sequences (colours, `\\r` redraws)."""
    return ANSI.sub("", text).replace("\r", "")


class _Tee:
    """A text stream that writes to `stream` and, line by line, to `log`."""

    def __init__(self, stream, log, lock: threading.Lock):
        self.stream, self.log, self.lock = stream, log, lock
        self._partial = ""

    def write(self, text: str) -> int:
        self.stream.write(text)
        with self.lock:  # Ray forwards the workers' lines from a thread of its own
            self._partial += text
            *lines, self._partial = self._partial.split("\n")
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            for line in lines:
                if (line := plain(line)).strip():
                    self.log.write(f"{stamp} {line}\n")
            self.log.flush()
        return len(text)

    def flush(self) -> None:
        self.stream.flush()
        self.log.flush()

    def __getattr__(self, name):  # isatty, fileno, encoding, ...: the terminal's
        return getattr(self.stream, name)


@contextlib.contextmanager
def driver_log(study_dir: Path, command: str):
    """Copy what this process prints to the study's driver log while the block runs."""
    path = Path(study_dir) / DRIVER_LOG
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as log:
        log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} ---- {command}\n")
        stdout, stderr = sys.stdout, sys.stderr
        lock = threading.Lock()
        sys.stdout, sys.stderr = _Tee(stdout, log, lock), _Tee(stderr, log, lock)
        try:
            yield path
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            sys.stdout, sys.stderr = stdout, stderr
