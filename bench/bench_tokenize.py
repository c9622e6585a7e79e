"""Bulk tokenization against a plain `encode_batch` loop, side by side in one run, on real text.

The corpus is the Python standard library's sources and, where Debian's dict-gcide is unpacked, GCIDE's dictionary
entries, repeated into JSON Lines files up to `--size` bytes. Runs on the same files and cores:

- plain loop: read the lines, json.loads, the same tokenizer's HF `encode_batch` (all cores), keep the ids;
- `arscale tokenize` (pipelines.tokenization.corpus_to_shards.tokenize_corpus) with 2 Ray workers, writing shards;

first on the whole corpus (MB/s, tokens/s, peak memory as PSS of the driver and workers, and of every process of the
run with Ray's own; goal for 1 GB: < 2 GB), then in paired rounds on a `--sample` part of it: the plain loop,
1 worker and 2 workers one after the other, in another order each round. The ratios (goals: 2 workers ≥ 0.8× the
plain loop, 2 workers ≥ 1.6× 1 worker) are the medians of the rounds' ratios: other work on this shared machine
takes a varying share of the cores for minutes at a time, which runs minutes apart feel differently and runs seconds
apart alike. Ray's start-up is not timed; planning, actor start-up, Parquet writing and checksums are. Asserts
nothing.

    .venv/bin/python bench/bench_tokenize.py               # 1 GB (about 30 minutes on 2 cores)
    .venv/bin/python bench/bench_tokenize.py --size 200M   # quicker
    .venv/bin/python bench/bench_tokenize.py --smoke       # seconds: checks that it runs
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import psutil

from common import INFO, MISSED, Row, check
from armodels.bpe import BPETokenizer, train_bpe
from armodels.packaged_text import STDLIB, gcide
from pipelines.tokenization.corpus_to_shards import TokenizeSettings, tokenize_corpus

FILE_BYTES = 64 << 20  # size of one corpus file
BATCH_BYTES = 1 << 20  # text per encode_batch call, as bulk tokenization uses


def size(text: str) -> int:
    units = {"K": 1e3, "M": 1e6, "G": 1e9}
    return int(float(text[:-1]) * units[text[-1].upper()]) if text[-1].upper() in units else int(text)


def packaged_texts() -> tuple[list[str], str]:
    """The documents the corpus repeats, and what they are: the stdlib's sources, and GCIDE's entries where Debian's
    dict-gcide is unpacked (in JSON Lines, its few bytes that are not UTF-8 become U+FFFD)."""
    texts = []
    for path in sorted(STDLIB.rglob("*.py")):
        if "site-packages" in path.parts:
            continue
        try:
            texts.append(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, OSError):
            continue
    if (dictionary := gcide()) is None:
        return texts, "the stdlib sources"
    text = gzip.decompress(dictionary.read_bytes()).decode("utf-8", errors="replace")
    start = 0
    while start < len(text):  # documents of a few entries, about 4 kB each
        cut = text.find("\n\n", start + 4096)
        cut = len(text) if cut < 0 else cut + 2
        texts.append(text[start:cut])
        start = cut
    return texts, "the stdlib sources and GCIDE"


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


def tokenize_run(tok_dir: Path, corpus: Path, out: Path, workers: int,
                 shard_tokens: int) -> tuple[float, int, list[str]]:
    """(seconds, tokens, shard checksums) of one `arscale tokenize` run; planning and actor start-up are timed."""
    settings = TokenizeSettings((str(corpus),), shard_tokens=shard_tokens)
    start = time.perf_counter()
    manifest = tokenize_corpus(tok_dir, out, settings, workers=workers, log=lambda line: None)
    seconds = time.perf_counter() - start
    shutil.rmtree(out)
    return seconds, manifest.tokens, [s.sha256 for s in manifest.shards]


def paired_rounds(tokenizer: BPETokenizer, tok_dir: Path, sample: Path, rounds: int, shard_tokens: int,
                  work: Path) -> tuple[list[dict[str, float]], bool]:
    """Seconds of the plain loop, 1 worker and 2 workers on the same sample, one after the other, `rounds` times,
    each round in another order; and whether 1 and 2 workers made the same shards. This machine is shared: other
    work takes a varying share of its cores for minutes at a time, so runs minutes apart see different machines.
    Runs seconds apart see nearly the same one, and the median of the rounds' ratios leaves out a round that a burst
    of other work fell on."""
    shards: dict[str, list[str]] = {}

    def bulk(workers: int) -> float:
        seconds, _, shards[str(workers)] = tokenize_run(tok_dir, sample, work / "round-shards", workers, shard_tokens)
        return seconds

    runs = {"plain": lambda: plain_loop(tokenizer, sorted(sample.iterdir()))[0], "1": lambda: bulk(1),
            "2": lambda: bulk(2)}
    names = list(runs)
    results = []
    for r in range(rounds):
        order = names[r % 3:] + names[:r % 3]
        results.append({name: runs[name]() for name in order})
        print(f"round {r + 1}/{rounds} ({', '.join(order)}): " + ", ".join(
            f"{name} {results[-1][name]:.1f} s" for name in names), flush=True)
    return results, shards["1"] == shards["2"]


def run(corpus_size: int, vocab_size: int = 4096, shard_tokens: int = TokenizeSettings.shard_tokens, rounds: int = 3,
        sample_size: int = 2 * FILE_BYTES, workdir: Path | None = None) -> dict:
    """Build the corpus; time the plain loop and 2 workers on all of it (throughput, peak memory), then the plain
    loop, 1 and 2 workers in `rounds` paired rounds on a `sample_size` part of it (the ratios); print the tables.
    Returns the ratios and peak memory."""
    import ray

    from pipelines.ray_connect import connect

    # Ray starts its workers at niceness 15; the plain loop runs at 0. On a machine shared with other work that would
    # give the workers less of the same cores than the baseline gets: run them at the baseline's priority.
    os.environ.setdefault("RAY_worker_niceness", "0")
    work = Path(tempfile.mkdtemp(prefix="bench-tokenize-", dir=workdir))
    try:
        texts, what = packaged_texts()
        tokenizer = train_bpe(texts[:: max(1, len(texts) // 300)], vocab_size)
        tok_dir = work / "tok"
        tokenizer.save(tok_dir)
        tokenizer = BPETokenizer.load(tok_dir)
        corpus = work / "corpus"
        corpus.mkdir()
        text_bytes = build_corpus(corpus, texts, corpus_size)
        files = sorted(corpus.iterdir())
        sample = work / "sample"
        sample.mkdir()
        sample_bytes = build_corpus(sample, texts, min(sample_size, corpus_size))
        cores = os.cpu_count()
        print(f"corpus: {corpus_size / 1e6:,.0f} MB of JSON Lines ({text_bytes / 1e6:,.0f} MB of text: {what} "
              f"repeated) in {len(files)} files; byte-level BPE, {tokenizer.vocab_size} tokens; {cores} cores",
              flush=True)

        plain_seconds, plain_tokens = plain_loop(tokenizer, files)
        started_ray = not ray.is_initialized()
        connect(num_cpus=cores)
        with PeakMemory() as memory:
            bulk_seconds, bulk_tokens, _ = tokenize_run(tok_dir, corpus, work / "shards", 2, shard_tokens)
        print(f"\nall {corpus_size / 1e6:,.0f} MB:{'':22} {'seconds':>8} {'MB/s':>7} {'tokens/s':>10} "
              f"{'peak memory: driver+workers':>28} {'with Ray':>9}")
        for name, seconds, tokens, mem in (("plain encode_batch loop (all cores)", plain_seconds, plain_tokens, ""),
                                          ("arscale tokenize, 2 workers", bulk_seconds, bulk_tokens,
                                           f"{memory.peak_ours / 1e9:>25.2f} GB {memory.peak_total / 1e9:>6.2f} GB")):
            print(f"{name:38} {seconds:>8.1f} {text_bytes / seconds / 1e6:>7.2f} {tokens / seconds:>10,.0f} {mem}")

        print(f"\npaired rounds on {sample_size / 1e6:,.0f} MB ({sample_bytes / 1e6:,.0f} MB of text):", flush=True)
        timings, same_shards = paired_rounds(tokenizer, tok_dir, sample, rounds, shard_tokens, work)
        if started_ray:
            ray.shutdown()
        vs_plain = [t["plain"] / t["2"] for t in timings]
        two_vs_one = [t["1"] / t["2"] for t in timings]
        result = {"bytes": corpus_size, "mb_per_s": text_bytes / bulk_seconds / 1e6,
                  "vs_plain": statistics.median(vs_plain), "two_vs_one": statistics.median(two_vs_one),
                  "vs_plain_rounds": vs_plain, "two_vs_one_rounds": two_vs_one,
                  "vs_plain_all": plain_seconds / bulk_seconds, "rounds": rounds, "sample_bytes": sample_size,
                  "peak_ours_gb": memory.peak_ours / 1e9, "peak_total_gb": memory.peak_total / 1e9,
                  "same_tokens": plain_tokens == bulk_tokens, "same_shards": same_shards}

        def listed(ratios: list[float]) -> str:
            return ", ".join(f"{x:.2f}" for x in ratios)

        print(f"\nbulk (2 workers) / plain loop: {result['vs_plain']:.2f}×, median of rounds {listed(vs_plain)} "
              f"(goal ≥ 0.8×); {result['vs_plain_all']:.2f}× on all {corpus_size / 1e6:,.0f} MB")
        print(f"2 workers / 1 worker:          {result['two_vs_one']:.2f}×, median of rounds {listed(two_vs_one)} "
              "(goal ≥ 1.6×)")
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

    differs = "" if same else "OUTPUT DIFFERS between the runs; "
    rounds = f"median of {r['rounds']} paired rounds on {r['sample_bytes'] / 1e6:,.0f} MB"

    def listed(ratios: list[float]) -> str:
        return ", ".join(f"{x:.2f}" for x in ratios)

    # the memory goal is stated for a 1 GB corpus; memory is bounded, so a smaller corpus checks it too
    return [
        Row("tokenize: arscale (2 workers) vs encode_batch loop", f"{r['vs_plain']:.2f}×", "≥ 0.8×",
            status(check(r["vs_plain"], 0.8)), r["vs_plain"],
            f"{differs}{rounds} ({listed(r['vs_plain_rounds'])}); on all {mb}: {r['vs_plain_all']:.2f}× "
            f"({r['mb_per_s']:.1f} MB/s)"),
        Row("tokenize: 2 workers vs 1", f"{r['two_vs_one']:.2f}×", "≥ 1.6×", status(check(r["two_vs_one"], 1.6)),
            r["two_vs_one"], f"{differs}{rounds} ({listed(r['two_vs_one_rounds'])})"),
        Row(f"tokenize: peak memory (PSS, with Ray's processes), {mb}", f"{r['peak_total_gb']:.2f} GB",
            "< 2 GB for 1 GB", status(check(r["peak_total_gb"], at_most=2.0)), r["peak_total_gb"],
            f"{differs}driver and workers alone: {r['peak_ours_gb']:.2f} GB"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=size, default=size("1G"), help="corpus size: bytes, or 200M, 1G (default 1G)")
    parser.add_argument("--sample", type=size, default=2 * FILE_BYTES,
                        help="size of the part of the corpus the paired rounds run on (default 134M)")
    parser.add_argument("--rounds", type=int, default=3, help="paired rounds (default 3)")
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--shard-tokens", type=int, default=TokenizeSettings.shard_tokens,
                        help="as `arscale tokenize --shard-tokens` (default: its default, %(default)s)")
    parser.add_argument("--workdir", type=Path, help="where to build the corpus (default: a temporary folder)")
    parser.add_argument("--smoke", action="store_true", help="a 2 MB corpus, 1 MB rounds, in seconds")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args()
    if args.smoke:
        args.size, args.sample, args.rounds, args.vocab_size, args.shard_tokens = \
            size("2M"), size("1M"), 2, 512, 200_000
    result = run(args.size, args.vocab_size, args.shard_tokens, args.rounds, args.sample, args.workdir)
    if args.json:
        args.json.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
