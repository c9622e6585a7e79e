"""`arscale tokenize --input s3://...` and `tokenizer train bpe --input s3://...`: a real corpus (standard library
sources, as text, gzipped JSON Lines and Parquet) uploaded to a real S3 server (moto), tokenized through the real CLI,
gives the shards of the same files tokenized from a local folder, token for token; inputs that cannot be read are one
line naming the URI without its secrets, exit 2, in seconds."""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path
from urllib.parse import quote

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyarrow import fs

from armodels.packaged_text import STDLIB
from armodels.shards import iter_documents_with_ids, read_manifest
from pipelines.errors import UserError
from pipelines.tokenization.corpus_to_shards import TokenizeSettings, find_inputs, tokenize_corpus
from tests.support.cli import arscale, one_line_error
from tests.support.servers import free_port

SECRET = "s3cr3t-Zq9/x"  # a secret key with a '/', as AWS's have; moto takes any keys
SHARD_TOKENS = 3_000  # small shards: the corpus makes several, and its larger files are cut between them


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """About 150 kB of stdlib sources in a local folder: .py files (one in a subfolder, one in site-packages, which
    folders leave out), a gzipped JSON Lines file and a Parquet file of two row groups."""
    root = tmp_path_factory.mktemp("corpus")
    json_pkg = sorted((STDLIB / "json").glob("*.py"))
    for path in json_pkg[:3]:
        (root / path.name).write_bytes(path.read_bytes())
    (root / "sub dir").mkdir()
    (root / "sub dir" / "scanner.py").write_bytes((STDLIB / "json" / "scanner.py").read_bytes())
    (root / "site-packages").mkdir()
    (root / "site-packages" / "third_party.py").write_text("not part of the corpus\n")
    (root / "notes.bin").write_bytes(b"\0" * 10)  # not a wanted extension: left out of folders
    logging = sorted((STDLIB / "logging").glob("*.py"))
    lines = [json.dumps({"text": p.read_text(encoding="utf-8")}) for p in logging]
    (root / "logging.jsonl.gz").write_bytes(gzip.compress("\n".join(lines).encode()))
    email = sorted((STDLIB / "email").glob("*.py"))[:6]
    pq.write_table(pa.table({"text": [p.read_text(encoding="utf-8") for p in email]}), root / "email.parquet",
                   row_group_size=3)
    return root


@pytest.fixture(scope="module")
def uploaded(s3, corpus) -> str:
    """The corpus folder uploaded under corpus/ in the S3 server; the prefix (not its URI: see `uri`)."""
    store, base = fs.FileSystem.from_uri(s3.uri("corpus"))
    for path in corpus.rglob("*"):
        if path.is_file():
            with store.open_output_stream(f"{base}/{path.relative_to(corpus).as_posix()}") as f:
                f.write(path.read_bytes())
    return "corpus"


def uri(s3, prefix: str, port: int | None = None, bucket: str = "arscale-test") -> str:
    """A URI of the S3 server with its endpoint and keys in its options (a secret key that must never be shown)."""
    return (f"s3://AKIDTEST:{SECRET.replace('/', '%2F')}@{bucket}/{prefix}"
            f"?endpoint_override=127.0.0.1:{port or s3.port}&scheme=http")


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory, tokenizer) -> Path:
    path = tmp_path_factory.mktemp("tok") / "tok"
    tokenizer.save(path)
    return path


def documents(shards: Path) -> list[tuple[int, list[int]]]:
    return [(doc_id, list(tokens)) for doc_id, tokens in iter_documents_with_ids(shards)]


def test_shards_from_s3_equal_those_from_a_local_folder(s3, uploaded, corpus, tok_dir, tmp_path):
    r = arscale("tokenize", "--tokenizer", tok_dir, "--input", uri(s3, uploaded + "/"), "--out", tmp_path / "s3",
                "--workers", 1, "--shard-tokens", SHARD_TOKENS, "--verify")
    assert r.returncode == 0, r.stderr
    local = tokenize_corpus(tok_dir, tmp_path / "local", TokenizeSettings((str(corpus),), SHARD_TOKENS),
                            use_ray=False, log=lambda line: None)
    remote = read_manifest(tmp_path / "s3")
    assert len(remote.shards) == len(local.shards) > 3
    assert documents(tmp_path / "s3") == documents(tmp_path / "local")  # token for token, the same document ids
    assert [(s.rows, s.tokens, s.bytes, s.documents) for s in remote.shards] == \
        [(s.rows, s.tokens, s.bytes, s.documents) for s in local.shards]
    # the manifest names the objects, without keys or options; the shards of the large files hold parts of them
    named = [src["file"] for s in remote.shards for src in s.sources]
    assert "s3://arscale-test/corpus/sub dir/scanner.py" in named and not any("site-packages" in f for f in named)
    assert {f.rsplit("/", 1)[-1] for f in named} == {Path(f).name for s in local.shards for f in
                                                     (src["file"] for src in s.sources)}
    for name in ("manifest.json", "tokenizer/meta.json"):
        text = (tmp_path / "s3" / name).read_text()
        assert "s3cr3t" not in text and "endpoint_override" not in text
    assert "s3cr3t" not in r.stdout + r.stderr


def test_globs_and_single_objects_name_what_local_paths_name(s3, uploaded, corpus):
    for pattern in ("**/*.py", "*.py", "*.parquet", "sub dir/*", "logging.jsonl.gz"):
        remote = find_inputs(TokenizeSettings((uri(s3, f"{uploaded}/{quote(pattern, safe='/*[]')}"),)))
        local = find_inputs(TokenizeSettings((str(corpus / pattern),)))
        assert [f.split("/corpus/", 1)[1].split("?")[0].replace("%20", " ") for f in remote] == \
            [p.relative_to(corpus).as_posix() for p in local], pattern


def test_train_bpe_from_s3_is_the_tokenizer_trained_from_the_folder(s3, uploaded, corpus, tmp_path):
    for name, source in (("s3", uri(s3, uploaded)), ("local", corpus)):
        r = arscale("tokenizer", "train", "bpe", "--input", source, "--vocab-size", 300, "--out", tmp_path / name)
        assert r.returncode == 0, r.stderr
    assert (tmp_path / "s3" / "tokenizer.json").read_bytes() == (tmp_path / "local" / "tokenizer.json").read_bytes()


def test_unreadable_inputs_are_one_line_naming_the_uri_in_seconds(s3, uploaded, tok_dir, tmp_path):
    cases = {
        "nothing listening": (uri(s3, uploaded, port=free_port()), "cannot be read"),
        "missing bucket": (uri(s3, uploaded, bucket="no-such-bucket"), "the bucket 'no-such-bucket' does not exist"),
        "empty prefix": (uri(s3, "nothing/here/"), "no file or folder of that name is there"),
    }
    for name, (source, words) in cases.items():
        r = arscale("tokenize", "--tokenizer", tok_dir, "--input", source, "--out", tmp_path / "out")
        one_line_error(r, 2, words)
        assert "AKIDTEST:***@" in r.stderr and "s3cr3t" not in r.stderr, name
        # in seconds: timed in this process, as the command's own start-up takes long on a loaded machine (pyarrow
        # retries a refused connection for 6 s by default)
        started = time.monotonic()
        with pytest.raises(UserError, match=words.replace("'", ".")):
            find_inputs(TokenizeSettings((source,)))
        assert time.monotonic() - started < 3, name
    assert not (tmp_path / "out").exists()
    with pytest.raises(UserError, match="no object matches it") as e:  # the same code, in this process
        find_inputs(TokenizeSettings((uri(s3, f"{uploaded}/*.md"),)))
    assert "s3cr3t" not in str(e.value)
    r = arscale("tokenize", "--tokenizer", tok_dir, "--input", uri(s3, uploaded), "--out", uri(s3, "shards"))
    one_line_error(r, 2, "--out names an object store")
    assert "s3cr3t" not in r.stderr
