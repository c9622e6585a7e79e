"""Small file helpers shared by every package: atomic writes and checksums."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def write_json_atomic(path: Path, obj) -> None:
    """Write JSON to a temporary file and rename it into place, so readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


def read_json(path: Path, what: str = "file") -> dict:
    """Parse a JSON file; ValueError/FileNotFoundError name the file on failure."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found ({what})")
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
