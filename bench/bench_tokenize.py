"""Bulk tokenization against a plain `encode_batch` loop, side by side in one run, on real text.

The corpus is the Python standard library's sources repeated into JSON Lines files up to `--size` bytes. Three runs
on the same files and cores:

- plain loop: read the lines, json.loads, the same tokenizer's HF `encode_batch` (all cores), keep the ids;
- `arscale tokenize` (pipelines.bulk_tokenize.tokenize_corpus) with 1 Ray worker, then with 2, writing shards;

and prints MB/s, tokens/s, the ratios (goals: bulk with all cores ≥ 0.8× the plain loop, 2 workers ≥ 1.6×
1 worker) and the peak memory (PSS) of the driver and workers, and of every process of the run with Ray's own
(goal for 1 GB: < 2 GB). Ray's start-up is not timed; planning, actor start-up, Parquet writing and checksums are. Asserts nothing.

    .venv/bin/python bench/bench_tokenize.py               # 1 GB (about an hour on 2 busy cores)
    .venv/bin/python bench/bench_tokenize.py --size 200M   # quicker
    .venv/bin/python bench/bench_tokenize.py --smoke       # seconds: checks that it runs
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sysconfig
import tempfile
import threading
import time
from pathlib import Path

import psutil

from common import INFO, MISSED, Row, check
from armodels.bpe import BPETokenizer, train_bpe
from pipelines.bulk_tokenize import TokenizeSettings, tokenize_corpus

FILE_BYTES = 64 << 20  # size of one corpus file
BATCH_BYTES = 1 << 20  # text per encode_batch call, as bulk tokenization uses


def size(text: str) -> int:
    units = {"K": 1e3, "M": 1e6, "G": 1e9}
    return int(float(text[:-1]) * units[text[-1].upper()]) if text[-1].upper() in units else int(text)


def stdlib_texts() -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    texts = []
    for path in sorted(root.rglob("*.py")):
        if "site-packages" in path.parts:
            continue
        try:
            texts.append(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, OSError):
            continue
    return texts


def build_corpus(directory: Path, texts: list[str], total: int) -> int:
    """JSON Lines files of stdlib sources, repeated until `total` bytes; returns the bytes of text written."""
    lines = [json.dumps({"text": t}) + "\n" for t in texts]
    written = text_bytes = n_file = 0
    while written < total:
        with open(directory / f"corpus-{n_file:04d}.jsonl", "w") as f:
            file_bytes = 0
            while file_bytes < FILE_BYTES and written < total:
                for line, text in zip(lines, texts):
                    f.write(line)
                    file_bytes += len(line)
                    written += len(line)
                    text_bytes += len(text.encode())
                    if file_bytes >= FILE_BYTES or written >= total:
                        break
        n_file += 1
    return text_bytes


class PeakMemory:
    """Samples the memory of this process and all its descendants (Ray's processes and workers), as PSS: shared
    pages split between the processes that share them, so the sum is the memory really in use."""

    def __init__(self, every: float = 0.5):
        self.every, self.peak_total, self.peak_ours = every, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = ours = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    pss = p.memory_full_info().pss
                    total += pss
                    if p.pid == me.pid or "Encoder" in " ".join(p.cmdline()):
                        ours += pss
                except psutil.Error:
                    continue
            self.peak_total, self.peak_ours = max(self.peak_total, total), max(self.peak_ours, ours)
            self._stop.wait(self.every)


def plain_loop(tokenizer: BPETokenizer, files: list[Path]) -> tuple[float, int]:
    """(seconds, tokens) of the baseline: read, parse, encode_batch, keep the ids."""
    start, tokens = time.perf_counter(), 0
    for path in files:
        with open(path) as f:
            batch, n = [], 0
            for line in f:
                text = json.loads(line)["text"]
                batch.append(text)
                n += len(text)
                if n >= BATCH_BYTES:
                    tokens += sum(len(e.ids) for e in tokenizer.hf.encode_batch(batch, add_special_tokens=False))
                    batch, n = [], 0
            if batch:
                tokens += sum(len(e.ids) for e in tokenizer.hf.encode_batch(batch, add_special_tokens=False))
    return time.perf_counter() - start, tokens


def run(corpus_size: int, vocab_size: int = 4096, shard_tokens: int = 4_000_000,
        workdir: Path | None = None) -> dict:
    """Build the corpus, time the three runs, print their table; returns the ratios and peak memory."""
    import ray

    from cluster.local import connect

    # Ray starts its workers at niceness 15; the plain loop runs at 0. On a machine shared with other work that would
    # give the workers less of the same cores than the baseline gets: run them at the baseline's priority.
    os.environ.setdefault("RAY_worker_niceness", "0")
    work = Path(tempfile.mkdtemp(prefix="bench-tokenize-", dir=workdir))
    try:
        texts = stdlib_texts()
        tokenizer = train_bpe(texts[:: max(1, len(texts) // 300)], vocab_size)
        tokenizer.save(work / "tok")
        tokenizer = BPETokenizer.load(work / "tok")
        corpus = work / "corpus"
        corpus.mkdir()
        text_bytes = build_corpus(corpus, texts, corpus_size)
        files = sorted(corpus.iterdir())
        cores = os.cpu_count()
        print(f"corpus: {corpus_size / 1e6:,.0f} MB of JSON Lines ({text_bytes / 1e6:,.0f} MB of text: the stdlib "
              f"sources repeated) in {len(files)} files; byte-level BPE, {tokenizer.vocab_size} tokens; {cores} cores",
              flush=True)

        rows = {}
        seconds, tokens = plain_loop(tokenizer, files)
        rows["plain encode_batch loop (all cores)"] = (seconds, tokens, None)
        started_ray = not ray.is_initialized()
        connect(num_cpus=cores)
        settings = TokenizeSettings((str(corpus),), shard_tokens=shard_tokens)
        for workers in (1, 2):
            out = work / f"shards-{workers}"
            with PeakMemory() as memory:
                start = time.perf_counter()
                manifest = tokenize_corpus(work / "tok", out, settings, workers=workers, log=lambda line: None)
                seconds = time.perf_counter() - start
            rows[f"arscale tokenize, {workers} worker{'s' * (workers > 1)}"] = (seconds, manifest.tokens, memory)
            checksums = [s.sha256 for s in manifest.shards]
            if workers == 1:
                first = checksums
            shutil.rmtree(out)
        if started_ray:
            ray.shutdown()

        print(f"{'':38} {'seconds':>8} {'MB/s':>7} {'tokens/s':>10} {'peak memory: driver+workers':>28} "
              f"{'with Ray':>9}")
        for name, (seconds, tokens, memory) in rows.items():
            mem = f"{memory.peak_ours / 1e9:>25.2f} GB {memory.peak_total / 1e9:>6.2f} GB" if memory else ""
            print(f"{name:38} {seconds:>8.1f} {text_bytes / seconds / 1e6:>7.2f} {tokens / seconds:>10,.0f} {mem}")
        plain, one, two = (text_bytes / r[0] for r in rows.values())
        peaks = [r[2] for r in rows.values() if r[2]]
        result = {"bytes": corpus_size, "mb_per_s": two / 1e6, "vs_plain": two / plain, "two_vs_one": two / one,
                  "peak_ours_gb": max(m.peak_ours for m in peaks) / 1e9,
                  "peak_total_gb": max(m.peak_total for m in peaks) / 1e9,
                  "same_tokens": next(iter(rows.values()))[1] == manifest.tokens, "same_shards": first == checksums}
        print(f"bulk (2 workers) / plain loop: {result['vs_plain']:.2f}×  (goal ≥ 0.8×)")
        print(f"2 workers / 1 worker:          {result['two_vs_one']:.2f}×  (goal ≥ 1.6×)")
        print(f"peak memory (PSS) for {corpus_size / 1e9:.2f} GB: {result['peak_ours_gb']:.2f} GB in the driver and "
              f"workers, {result['peak_total_gb']:.2f} GB with all of Ray's processes (goal for 1 GB: < 2 GB)")
        print(f"same tokens as the plain loop: {result['same_tokens']}; same shards for 1 and 2 workers: "
              f"{result['same_shards']}")
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure(smoke: bool = False, corpus_size: str = "1G") -> list[Row]:
    """The rows for the suite. The runs go in a fresh interpreter: the suite's process holds what its earlier
    benchmarks allocated (torch, compiled graphs), which would count as this driver's memory."""
    import subprocess
    import sys

    with tempfile.TemporaryDirectory(prefix="bench-tokenize-result-") as tmp:
        result = Path(tmp) / "result.json"
        subprocess.run([sys.executable, __file__, *(["--smoke"] if smoke else ["--size", str(corpus_size)]),
                        "--json", str(result)], check=True)
        r = json.loads(result.read_text())
    same = r["same_tokens"] and r["same_shards"]
    mb = f"{r['bytes'] / 1e6:,.0f} MB"

    def status(ok: str) -> str:
        return MISSED if not same else INFO if smoke else ok

    note = "" if same else "OUTPUT DIFFERS between the runs"
    # the memory goal is stated for a 1 GB corpus; memory is bounded, so a smaller corpus checks it too
    return [
        Row(f"tokenize: arscale (2 workers) vs encode_batch loop, {mb}",
            f"{r['vs_plain']:.2f}× ({r['mb_per_s']:.1f} MB/s)", "≥ 0.8×", status(check(r["vs_plain"], 0.8)),
            r["vs_plain"], note),
        Row(f"tokenize: 2 workers vs 1, {mb}", f"{r['two_vs_one']:.2f}×", "≥ 1.6×",
            status(check(r["two_vs_one"], 1.6)), r["two_vs_one"], note),
        Row(f"tokenize: peak memory (PSS, with Ray's processes), {mb}", f"{r['peak_total_gb']:.2f} GB",
            "< 2 GB for 1 GB", status(check(r["peak_total_gb"], at_most=2.0)), r["peak_total_gb"],
            f"driver and workers alone: {r['peak_ours_gb']:.2f} GB"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=size, default=size("1G"), help="corpus size: bytes, or 200M, 1G (default 1G)")
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--shard-tokens", type=int, default=4_000_000)
    parser.add_argument("--workdir", type=Path, help="where to build the corpus (default: a temporary folder)")
    parser.add_argument("--smoke", action="store_true", help="a 2 MB corpus, in seconds")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args()
    if args.smoke:
        args.size, args.vocab_size, args.shard_tokens = size("2M"), 512, 200_000
    result = run(args.size, args.vocab_size, args.shard_tokens, args.workdir)
    if args.json:
        args.json.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
