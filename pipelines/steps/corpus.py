"""Step `corpus`: gather text documents and split them into train and validation by file.

Default source: the Python standard library of the running interpreter, a corpus every machine with Python has.
Output: train.parquet and val.parquet with columns doc_id, path, text.
"""

from __future__ import annotations

import hashlib
import random
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from armodels.corpus_readers import find_files  # noqa: F401  (also used as corpus.find_files)
from pipelines.step import StepContext

VERSION = "1"
SPLITS = ("train", "val")


@dataclass(frozen=True)
class CorpusStepConfig:
    paths: tuple[str, ...]  # files, directories (recursive) or glob patterns
    extensions: tuple[str, ...]  # which files inside directories are documents
    max_bytes: int
    val_fraction: float
    seed: int
    max_file_bytes: int = 500_000
    source: str = "files"  # "python-stdlib" records the interpreter below, so another Python is another corpus
    python: str = ""


def stdlib_config(max_bytes: int, val_fraction: float, seed: int, max_file_bytes: int) -> CorpusStepConfig:
    return CorpusStepConfig(paths=(sysconfig.get_paths()["stdlib"],), extensions=(".py",), max_bytes=max_bytes,
                            val_fraction=val_fraction, seed=seed, max_file_bytes=max_file_bytes,
                            source="python-stdlib", python=sys.version.split()[0])


def is_validation(relative_path: str, val_fraction: float) -> bool:
    """A file's split depends only on its path, so adding files never moves existing ones between splits."""
    h = int(hashlib.sha256(relative_path.encode()).hexdigest()[:8], 16)
    return h / 16**8 < val_fraction


def build_corpus(config: CorpusStepConfig, ctx: StepContext) -> dict:
    files = find_files(config.paths, config.extensions)
    random.Random(config.seed).shuffle(files)
    roots = [Path(p) for p in config.paths if Path(p).is_dir()]
    docs: dict[str, list[tuple[str, str]]] = {s: [] for s in SPLITS}
    total, skipped = 0, {"not_utf8": 0, "too_large": 0}
    for f in files:
        if total >= config.max_bytes:
            break
        if f.stat().st_size > config.max_file_bytes:
            skipped["too_large"] += 1
            continue
        try:
            text = f.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            skipped["not_utf8"] += 1  # the stdlib has a few deliberately mis-encoded test files
            continue
        if not text:
            continue
        rel = next((str(f.relative_to(r)) for r in roots if f.is_relative_to(r)), f.name)
        docs["val" if is_validation(rel, config.val_fraction) else "train"].append((rel, text))
        total += len(text.encode("utf-8"))
    if not docs["train"] or not docs["val"]:
        raise ValueError(f"the corpus has {len(docs['train'])} training and {len(docs['val'])} validation "
                         "documents; it needs text files in both (add files or raise corpus.max_bytes)")
    summary = {f"skipped_{reason}": n for reason, n in skipped.items()}
    for split, rows in docs.items():
        paths, texts = zip(*rows)
        table = pa.table({"doc_id": list(range(len(rows))), "path": list(paths), "text": list(texts)})
        pq.write_table(table, ctx.output / f"{split}.parquet")
        summary[f"{split}_documents"] = len(rows)
        summary[f"{split}_bytes"] = sum(len(t.encode("utf-8")) for t in texts)
    why = ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in skipped.items() if n)
    ctx.log(f"{summary['train_documents']} train / {summary['val_documents']} val documents, "
            f"{total / 1e6:.1f} MB" + (f" (files skipped: {why})" if why else ""))
    return summary


def read_texts(corpus_dir: Path, split: str) -> list[str]:
    return pq.read_table(Path(corpus_dir) / f"{split}.parquet", columns=["text"]).column("text").to_pylist()
