"""Bulk tokenization (`arscale tokenize` on Ray, `tokenizer train bpe`, `detokenize`) on real text: the Python
standard library's sources, in every input format, with the odd documents that break naive tokenizers."""

from __future__ import annotations

import gzip
import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from armodels.corpus_readers import ReadOptions, Segment, file_format, iter_docs, plan_corpus, safe_cut
from armodels.packaged_text import STDLIB, gcide
from armodels.piece_encoder import EncodeOptions, encode_piece
from armodels.shards import iter_documents_with_ids, load_token_stream, read_manifest, shard_index
from pipelines import cli
from pipelines.errors import RunFailure, UserError
from pipelines.progress import ThroughputProgress
from pipelines.tokenization.bpe_training import train_bpe_on_corpus
from pipelines.tokenization.corpus_to_shards import JOURNAL, TokenizeSettings, tokenize_corpus
from pipelines.tokenization.shards_to_documents import detokenize
from tests.support.cli import ARSCALE, ROOT, arscale, one_line_error

GCIDE = gcide()
SETTINGS = dict(shard_tokens=4_000)  # small shards: every run makes several, and large files are cut


def stdlib_bytes(package: str) -> list[bytes]:
    return [p.read_bytes() for p in sorted((STDLIB / package).glob("*.py"))]


def write_zst(path: Path, data: bytes) -> None:
    with pa.output_stream(str(path), compression="zstd") as f:
        f.write(data)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[bytes]]:
    """A folder with every format and the expected documents, in the order the planner reads them."""
    root = tmp_path_factory.mktemp("corpus")
    docs: list[bytes] = []

    def add(name: str, data: bytes, content: list[bytes]) -> None:
        (root / name).write_bytes(data)
        docs.extend(content)

    email, json_pkg, logging = stdlib_bytes("email"), stdlib_bytes("json"), stdlib_bytes("logging")
    add("a_module.txt", email[0], [email[0]])
    lines = [json.dumps({"id": i, "text": t.decode()}).encode() for i, t in enumerate(json_pkg)]
    add("b_docs.jsonl", b"\n".join(lines[:2] + [b""] + lines[2:]) + b"\n", json_pkg)  # a blank line is no document
    add("c_docs.jsonl.gz", gzip.compress(b"\n".join(json.dumps({"text": t.decode()}).encode() for t in logging)),
        logging)
    table = pa.table({"text": [t.decode() for t in email[1:6]] + [None, ""]})
    pq.write_table(table, root / "d_rows.parquet", row_group_size=3)
    docs.extend(email[1:6] + [b""])
    write_zst(root / "e_text.txt.zst", email[6])
    docs.append(email[6])
    add("f_latin1.txt", "café, déjà vu: ÿ\n".encode("latin-1"), ["café, déjà vu: ÿ\n".encode("latin-1")])
    add("g_empty.txt", b"", [b""])
    long_line = (b"x = [" + b", ".join(str(i).encode() for i in range(60_000)) + b"]")  # ~400 kB, one line
    add("h_long_line.txt", long_line, [long_line])
    add("i_special.txt", b"text that names <|endoftext|> in the middle", [b"text that names <|endoftext|> in the "
                                                                          b"middle"])
    big = b"\n".join(email[7:20])  # large enough to be cut between shards
    add("j_big.txt", big, [big])
    if GCIDE:  # English from a Debian package, with its first bytes that are not UTF-8; dictzip is gzip
        excerpt = gcide_excerpt()
        add("k_gcide.txt.dz", gzip.compress(excerpt), [excerpt])
    return root, docs


def gcide_excerpt() -> bytes:
    """200 kB of GCIDE's start, and 40 kB around its first byte that is not UTF-8."""
    text = gzip.decompress(GCIDE.read_bytes())
    try:
        text.decode("utf-8")
        raise AssertionError("GCIDE was expected to hold bytes that are not UTF-8")
    except UnicodeDecodeError as e:
        bad = e.start
    return text[:200_000] + text[bad - 20_000:bad + 20_000]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory, tokenizer) -> Path:
    path = tmp_path_factory.mktemp("tok")
    tokenizer.save(path)
    return path


def decoded(shards: Path, tmp: Path) -> list[bytes]:
    out = tmp / f"detok-{shards.name}"
    detokenize(shards, out, as_files=True)
    return [p.read_bytes() for p in sorted(out.iterdir())]


def checksums(shards: Path) -> list[str]:
    return [s.sha256 for s in read_manifest(shards).shards]


@pytest.fixture(scope="module")
def two_workers(ray_local, corpus, tok_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "w2"
    tokenize_corpus(tok_dir, out, TokenizeSettings((str(corpus[0]),), **SETTINGS), workers=2, verify=True)
    return out


def test_every_format_round_trips_byte_for_byte(two_workers, corpus, tmp_path):
    manifest = read_manifest(two_workers)
    assert len(manifest.shards) > 3 and manifest.layout == "documents" and manifest.dtype == "uint16"
    assert decoded(two_workers, tmp_path) == corpus[1]
    totals = json.loads((two_workers / "manifest.json").read_text())["totals"]
    assert totals["documents"] == len(corpus[1]) and totals["bytes"] == sum(map(len, corpus[1]))
    assert 0.2 < totals["tokens_per_byte"] < 1  # a 320-token vocabulary on Python source and long lists of numbers
    big = [s for shard in manifest.shards for s in shard.sources if s["file"].endswith("j_big.txt")]
    assert len(big) > 1, "a text file larger than a shard is cut between shards"
    by_piece: dict[int, list] = {}
    for shard in manifest.shards:
        by_piece.setdefault(shard_index(shard.file), []).append(shard)
    rolled = {src["file"].rsplit("/", 1)[-1] for shards in by_piece.values() if len(shards) > 1
              for s in shards for src in s.sources}
    assert {"c_docs.jsonl.gz", "e_text.txt.zst"} <= rolled, "a compressed file goes on into more shards"
    limit = SETTINGS["shard_tokens"]
    for shards in (s for s in by_piece.values() if len(s) > 1):  # ... once a shard holds --shard-tokens
        assert all(s.tokens >= limit for s in shards[:-1])
        text = [s for s in shards if all(file_format(Path(src["file"]))[0] == "text" for src in s.sources)]
        assert all(s.tokens < 1.5 * limit for s in text)  # (a JSON Lines or Parquet document is never cut)
    assert not (two_workers / JOURNAL).exists()


@pytest.mark.skipif(GCIDE is None, reason="Debian's dict-gcide is not unpacked here (make setup fetches it where "
                    "apt can)")
def test_a_dictzip_dictionary_from_debian_reads_as_gzip():
    whole = gzip.decompress(GCIDE.read_bytes())
    plan = plan_corpus([GCIDE], piece_bytes=1 << 20, options=ReadOptions(), skip_bad=False)
    (piece,) = plan.pieces  # a compressed file cannot be cut
    assert plan.bytes == len(whole) > 30_000_000
    assert b"".join(d.data for d in iter_docs(piece.segments[0], ReadOptions())) == whole


def test_documents_cut_between_shards_have_the_tokens_of_the_whole(two_workers, corpus, tokenizer):
    docs = dict(iter_documents_with_ids(two_workers))
    big = corpus[1][-2:] if GCIDE else corpus[1][-1:]  # j_big.txt, cut by planning; GCIDE's, by a worker
    for whole in big:
        found = [t.tolist() for t in docs.values() if tokenizer.decode_bytes(t.tolist()) == whole]
        assert found == tokenizer.encode_bytes_batch([whole])
    whole = big[0]
    segment = Segment(str(corpus[0] / "j_big.txt"), 0, len(whole), 0, len(whole))
    blocks = [d.data for d in iter_docs(segment, ReadOptions(), block_bytes=2_000)]
    assert len(blocks) > 50 and b"".join(blocks) == whole
    assert sum(tokenizer.encode_bytes_batch(blocks), []) == tokenizer.encode_bytes_batch([whole])[0]


def test_cutting_a_text_where_safe_cut_says_keeps_its_tokens(tokenizer, stdlib_texts):
    rng = random.Random(1)
    for text in (t.encode() for t in stdlib_texts[:20]):
        for end in rng.sample(range(2, len(text)), 10):
            cut = safe_cut(text[:end], first=False)
            if cut is not None:
                assert sum(tokenizer.encode_bytes_batch([text[:cut], text[cut:]]), []) == \
                    tokenizer.encode_bytes_batch([text])[0]


def test_one_and_two_workers_write_the_same_shards(ray_local, two_workers, corpus, tok_dir, tmp_path):
    tokenize_corpus(tok_dir, tmp_path / "w1", TokenizeSettings((str(corpus[0]),), **SETTINGS), workers=1)
    assert checksums(tmp_path / "w1") == checksums(two_workers)


def test_random_bytes_round_trip(tmp_path, tokenizer, tok_dir):
    rng = random.Random(0)
    blobs = [bytes(rng.randrange(256) for _ in range(rng.randrange(3000))) for _ in range(50)] + [bytes(range(256))]
    ids = tokenizer.encode_bytes_batch(blobs)
    assert [tokenizer.decode_bytes(i) for i in ids] == blobs
    pq.write_table(pa.table({"text": pa.array(blobs, pa.binary())}), tmp_path / "random.parquet")
    tokenize_corpus(tok_dir, tmp_path / "s", TokenizeSettings((str(tmp_path / "random.parquet"),)), use_ray=False,
                    verify=True, log=lambda line: None)
    assert decoded(tmp_path / "s", tmp_path) == blobs


def test_packed_rows_hold_the_same_stream(ray_local, two_workers, corpus, tok_dir, tmp_path):
    tokenize_corpus(tok_dir, tmp_path / "p", TokenizeSettings((str(corpus[0]),), seq_len=64, **SETTINGS), workers=2)
    manifest = read_manifest(tmp_path / "p")
    assert manifest.layout == "packed" and manifest.seq_len == 64
    for shard in manifest.shards:
        lengths = [len(r) for r in pq.read_table(tmp_path / "p" / shard.file).column("tokens").to_pylist()]
        assert set(lengths[:-1]) == {64} and 0 < lengths[-1] <= 64  # only a shard's last row may be shorter
    assert np.array_equal(load_token_stream(tmp_path / "p"), load_token_stream(two_workers))
    assert decoded(tmp_path / "p", tmp_path) == corpus[1]


@pytest.mark.exclusive  # the kill must land mid-run: no other test's load to shift when
def test_killed_run_resumes_to_the_same_shards(ray_local, tok_dir, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    text = b"\n".join(stdlib_bytes("email"))
    (corpus / "part0.txt.gz").write_bytes(gzip.compress(text))  # one piece, written as several shards
    for i in range(1, 6):  # ~3 MB of real text in many small shards, so that the kill lands mid-run
        (corpus / f"part{i}.txt").write_bytes(text)
    settings = TokenizeSettings((str(corpus),), shard_tokens=3_000)
    out = tmp_path / "killed"
    run = subprocess.Popen([*ARSCALE, "tokenize", "--tokenizer", tok_dir, "--input", corpus, "--out", out,
                            "--shard-tokens", "3000", "--workers", "1"], cwd=ROOT, start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and run.poll() is None:
            if (out / JOURNAL).exists() and len((out / JOURNAL).read_text().splitlines()) > 5:
                break
            time.sleep(0.05)
        assert run.poll() is None, "the run ended before it could be killed"
    finally:
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()
    assert not (out / "manifest.json").exists()
    done = len((out / JOURNAL).read_text().splitlines()) - 1
    first = out / "shard-00000-001.parquet"  # the second shard of the compressed file's piece
    first.write_bytes(first.read_bytes()[:-10])  # a shard listed as done but damaged since: its piece encoded again
    messages = []
    tokenize_corpus(tok_dir, out, settings, workers=2, log=messages.append)
    assert messages[0].startswith(f"resuming: {done - 1} of ")
    tokenize_corpus(tok_dir, tmp_path / "whole", settings, workers=2, log=lambda line: None)
    assert checksums(out) == checksums(tmp_path / "whole")
    assert not list(out.glob(".*.tmp"))


def test_a_different_run_in_the_same_folder_is_refused(two_workers, corpus, tok_dir):
    with pytest.raises(UserError, match="holds shards made from other inputs or settings"):
        tokenize_corpus(tok_dir, two_workers, TokenizeSettings((str(corpus[0]),), seq_len=32, **SETTINGS),
                        use_ray=False, log=lambda line: None)


def test_verify_names_the_first_document_that_does_not_round_trip(tmp_path, corpus, tok_dir, monkeypatch):
    from armodels.bpe import BPETokenizer

    original = BPETokenizer.decode_bytes
    monkeypatch.setattr(BPETokenizer, "decode_bytes", lambda self, ids: original(self, ids).replace(b"\xff", b"?"))
    with pytest.raises(RunFailure, match=r"document \d+ \(.*f_latin1.txt\) does not round-trip.*first difference"):
        tokenize_corpus(tok_dir, tmp_path / "s", TokenizeSettings((str(corpus[0]),)), use_ray=False, verify=True,
                        log=lambda line: None)


def test_encoding_a_piece_twice_gives_the_same_file(tmp_path, corpus, tokenizer):
    plan = plan_corpus(sorted(corpus[0].iterdir()), piece_bytes=20_000, options=ReadOptions(), skip_bad=False)
    a = encode_piece(tokenizer, plan.pieces[2], tmp_path, EncodeOptions()).shards
    b = encode_piece(tokenizer, plan.pieces[2], tmp_path, EncodeOptions()).shards
    assert a == b and len(a) == 1 and a[0].sources


def test_progress_bar_on_a_terminal_and_lines_in_a_log(capsys):
    lines = []
    log = ThroughputProgress("tokenize", 2_000_000, write=lines.append, every=0)
    log.update(1_000_000, 10, 300_000)
    assert lines and all(k in lines[0] for k in ("50%", "10 docs", "B/s", "tok/s", "ETA"))
    log.close()  # nothing new since the last line: no repeat
    assert len(lines) == 1
    log.every = 1e9  # the next update writes nothing, so close writes the final line
    log.update(1_000_000, 1, 300_000)
    log.close()
    assert len(lines) == 2 and "100%" in lines[1] and "11 docs" in lines[1]
    bar = ThroughputProgress("tokenize", 2_000_000, tty=True)
    bar._last = -1e9
    bar.update(1_000_000, 10, 300_000)
    bar.close()
    err = capsys.readouterr().err
    assert err.startswith("\r") and "[##########..........]" in err and err.endswith("\n")


def test_train_bpe_from_files_and_from_a_sample(tmp_path):
    r = arscale("tokenizer", "train", "bpe", "--input", STDLIB / "json", STDLIB / "email", "--vocab-size", 400,
                "--out", tmp_path / "tok", "--special-tokens", "<|pad|>")
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "tok" / "meta.json").read_text())
    assert meta["vocab_size"] == 400 and meta["special_tokens"] == ["<|endoftext|>", "<|pad|>"]
    assert meta["training"]["inputs"] == [str(STDLIB / "json"), str(STDLIB / "email")]
    assert not meta["training"]["sampled"] and len(meta["sha256"]) == 64
    settings = TokenizeSettings((str(STDLIB / "email"),))
    small = train_bpe_on_corpus(settings, 300, tmp_path / "sampled", special_tokens=[], sample_bytes=100_000)
    assert small.meta.training["sampled"] and small.meta.training["sample"]["bytes"] < 400_000


def test_cli_tokenizes_with_a_summary_and_detokenizes(two_workers, corpus, tok_dir, tmp_path):
    r = arscale("tokenize", "--tokenizer", tok_dir, "--input", corpus[0] / "b_docs.jsonl", "--out", tmp_path / "s",
                "--workers", 1, "--verify")
    assert r.returncode == 0, r.stderr
    assert "documents" in r.stdout and "tokens/byte" in r.stdout and "tok/s" in r.stderr
    r = arscale("detokenize", tmp_path / "s", "--out", tmp_path / "d")
    assert r.returncode == 0, r.stderr
    texts = pq.read_table(tmp_path / "d" / "documents.parquet").column("text").to_pylist()
    assert texts == stdlib_bytes("json")


def bad_inputs(root: Path) -> dict:
    """name -> (arguments after --tokenizer, the words the one-line error must hold)."""
    (root / "binary.txt").write_bytes(b"\x7fELF\x00\x00" * 100)
    (root / "empty").mkdir()
    (root / "empty" / "a.txt").write_bytes(b"")
    (root / "docs.jsonl").write_text('{"body": "x"}\n')
    pq.write_table(pa.table({"body": ["x"]}), root / "docs.parquet")
    (root / "corrupt.parquet").write_bytes(b"PAR1" + os.urandom(200))
    (root / "corrupt.txt.gz").write_bytes(gzip.compress(b"hello " * 1000)[:40] + b"not gzip" * 10)
    return {
        "missing": ([root / "nope.txt"], "nope.txt does not exist"),
        "binary": ([root / "binary.txt"], "binary.txt looks binary"),
        "empty": ([root / "empty"], "the inputs hold no text"),
        "text field": ([root / "docs.jsonl"],
                       "docs.jsonl line 1 has no field 'text' (it has: body); pass --text-field"),
        "column": ([root / "docs.parquet"], "docs.parquet has no column 'text' (it has: body); pass --column"),
        "corrupt parquet": ([root / "corrupt.parquet"], "corrupt.parquet is not a valid Parquet file"),
        "corrupt gzip": ([root / "corrupt.txt.gz"], "corrupt.txt.gz is not valid gzip data"),
    }


def test_bad_input_is_one_line_naming_the_file_and_exit_2(tmp_path, tok_dir, capsys):
    """In this process through `pipelines.cli.main` (a subprocess would spend 3 s a case importing arscale), and
    once as the real console script, for the exit-code plumbing."""

    def tokenize(*args) -> subprocess.CompletedProcess:
        code = cli.main([*map(str, args)])
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    for name, (inputs, words) in bad_inputs(tmp_path).items():
        one_line_error(tokenize("tokenize", "--tokenizer", tok_dir, "--input", *inputs, "--out", tmp_path / "out"),
                       2, words)
    one_line_error(tokenize("tokenize", "--tokenizer", tmp_path, "--input", STDLIB / "json", "--out", tmp_path / "o"),
                   2, "tokenizer.json not found")
    one_line_error(arscale("tokenize", "--tokenizer", tok_dir, "--input", tmp_path / "nope.txt", "--out",
                           tmp_path / "out"), 2, "nope.txt does not exist")
    assert not (tmp_path / "out").exists()
    r = tokenize("--debug", "tokenize", "--tokenizer", tok_dir, "--input", tmp_path / "nope", "--out", tmp_path / "o")
    assert r.returncode == 2 and "Traceback" in r.stderr


def test_unreadable_file_is_named(tmp_path, tok_dir, monkeypatch, capsys):
    import armodels.corpus_readers as readers

    (tmp_path / "secret.txt").write_text("x")
    opened = readers.open_stream

    def open_stream(path, compression):
        if Path(path).name == "secret.txt":
            raise PermissionError(13, "Permission denied", str(path))
        return opened(path, compression)

    monkeypatch.setattr(readers, "open_stream", open_stream)
    assert cli.main(["tokenize", "--tokenizer", str(tok_dir), "--input", str(tmp_path / "secret.txt"),
                     "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {tmp_path / 'secret.txt'} cannot be read (permission denied); remove it from the inputs "
                   "or pass --skip-bad"]


def test_skip_bad_lists_the_files_left_out_in_the_manifest(ray_local, tmp_path, tok_dir):
    inputs = bad_inputs(tmp_path)
    good = tmp_path / "good.txt"
    good.write_bytes(stdlib_bytes("json")[0])
    paths = [str(p) for name, (ps, _) in inputs.items() if name not in ("missing", "empty") for p in ps]
    settings = TokenizeSettings((*paths, str(good)), skip_bad=True)
    tokenize_corpus(tok_dir, tmp_path / "s", settings, workers=1, log=lambda line: None)
    manifest = read_manifest(tmp_path / "s")
    assert sorted(Path(s["file"]).name for s in manifest.skipped) == sorted(Path(p).name for p in paths)
    assert all(s["reason"] for s in manifest.skipped) and manifest.documents == 1
