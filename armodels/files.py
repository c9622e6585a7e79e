"""Small file helpers shared by every package: atomic writes and checksums."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path


def write_json_atomic(path: Path, obj) -> None:
    """Write JSON to a temporary file and rename it into place, so readers never see half a file, and a power loss
    never leaves an empty one (the data reach the disk before the rename). The temporary name is unique, so
    processes writing the same file at once never write into each other's."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "x") as f:
            f.write(json.dumps(obj, indent=2, default=str))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Make the names in `folder` (files created, renamed or removed there) durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> dict[str, int]:
    """Flush every file under `folder` and every folder's entries to disk; returns each file's size by its path
    relative to `folder` (what a commit record lists, so a later reader can check nothing was lost)."""
    folder = Path(folder)
    sizes = {}
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            path = Path(dirpath) / name
            if path.is_symlink():
                continue
            with open(path, "rb") as f:
                os.fsync(f.fileno())
            sizes[path.relative_to(folder).as_posix()] = path.stat().st_size
        fsync_dir(Path(dirpath))
    return sizes


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
