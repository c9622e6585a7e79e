"""Studies kept in an object store, against a real S3-compatible server (moto) on 127.0.0.1: push and pull of step
folders, the executor skipping what the store holds after the local scratch folder is gone, a failed step's work
carried to the next attempt, and the errors for bad or unreachable stores."""

import json
import shutil

import pytest

from pipelines.errors import UserError
from pipelines.executor import Executor
from pipelines.step_status import step_state
from pipelines.storage import StopSignal, StudyStore, is_uri, join_uri
from tests.support.s3 import BUCKET
from tests.pipelines.test_executor import dag


@pytest.fixture
def store(s3, tmp_path, monkeypatch, request):
    monkeypatch.setenv("ARSCALE_SCRATCH", str(tmp_path / "scratch"))
    return StudyStore(s3.uri(request.node.name))


def test_uris_and_paths_are_told_apart():
    assert is_uri("s3://bucket/x") and is_uri("gs://b/x")
    assert not is_uri("studies/x") and not is_uri("/abs/x") and not is_uri("file:///abs/x")


def test_push_then_pull_gives_the_same_folder_commit_markers_last(store, tmp_path):
    local = tmp_path / "step"
    (local / "checkpoint").mkdir(parents=True)
    files = {"STATUS.json": "{}", "a.bin": "a" * 10_000, "checkpoint/state.json": "{}", "checkpoint/w.bin": "w",
             "ray-train/log": "not needed"}
    for name, text in files.items():
        (local / name).parent.mkdir(parents=True, exist_ok=True)
        (local / name).write_text(text)
    order = []
    upload = store._upload
    store._upload = lambda path, rel: (order.append(rel.split("/", 1)[-1]), upload(path, rel))
    store.push(local, "step-1")
    assert order[-2:] == ["checkpoint/state.json", "STATUS.json"] and "ray-train/log" not in order

    assert store.pull("step-1", tmp_path / "copy") and not store.pull("missing", tmp_path / "none")
    copied = {p.relative_to(tmp_path / "copy").as_posix(): p.read_text()
              for p in (tmp_path / "copy").rglob("*") if p.is_file()}
    assert copied == {k: v for k, v in files.items() if not k.startswith("ray-train")}
    assert not (tmp_path / "none").exists() and not list(tmp_path.glob("*.pull-*"))

    store.push(local / "a.bin", "a.bin")  # a single file, at the top
    store.pull_into("", tmp_path / "top", ["a.bin"])
    assert (tmp_path / "top" / "a.bin").read_text() == files["a.bin"]

    (local / "a.bin").unlink()  # a push mirrors the folder: files it no longer has leave the store
    store.push(local, "step-1")
    assert not store.exists("step-1/a.bin") and store.exists("step-1/checkpoint/w.bin")
    (local / "checkpoint" / "w.bin").unlink()  # not mirrored: what another node pushed stays
    store.push(local, "step-1", mirror=False)
    assert store.exists("step-1/checkpoint/w.bin")


def test_the_store_not_the_scratch_folder_is_what_a_rerun_resumes(store, ray_local):
    *_, sd = dag()
    first = Executor(store.scratch, store=store).run([sd])
    assert {o.state for o in first.values()} == {"succeeded"}
    for step in "abcd":  # every finished step is in the store, its record last
        assert store.read_json(f"{next(store.scratch.glob(f'{step}-*')).name}/STATUS.json")["state"] == "succeeded"

    shutil.rmtree(store.scratch)  # a new machine, or a cleaned one
    again = Executor(store.scratch, store=store).run([sd])
    assert {o.state for o in again.values()} == {"skipped"}

    *_, sd2 = dag(c=30)  # c and d run again; d reads b, which only the store has now
    changed = Executor(store.scratch, store=store).run([sd2])
    assert {n: o.state for n, o in changed.items()} == {"a": "skipped", "b": "skipped", "c": "succeeded",
                                                        "d": "succeeded"}
    assert json.loads((store.scratch / sd2.dirname / "out.json").read_text())["total"] == 33
    assert store.read_json(f"{sd2.dirname}/STATUS.json")["summary"] == {"total": 33}


def test_a_failed_step_leaves_its_work_in_the_store_for_the_next_attempt(store, ray_local):
    sa, sb, sc, sd = dag(fail_b=True)
    Executor(store.scratch, store=store, log=lambda m: None).run([sd])
    assert store.read_json(f"{sb.dirname}.tmp/STATUS.json")["state"] == "failed"
    shutil.rmtree(store.scratch)
    Executor(store.scratch, store=store, log=lambda m: None).run([sd])  # it fails again, on what it left
    assert (store.scratch / f"{sb.dirname}.tmp" / "partial.txt").read_text() == "half done"
    assert step_state(store.scratch, sb.dirname)["state"] == "failed"


def test_a_stop_request_in_the_store_reaches_every_node(store, tmp_path):
    stop = StopSignal(tmp_path / "STOP", store, every=0.0)
    assert not stop()
    store.write_text("STOP", "")
    assert stop()


def test_bad_and_unreachable_stores_are_one_line_errors(s3, tmp_path):
    with pytest.raises(UserError, match="not a storage URI pyarrow can open"):
        StudyStore("nosuchscheme://bucket/x")
    with pytest.raises(UserError, match=r"storage s3://test:\*\*\*@no-such-bucket/x\?.* cannot be written "
                                        r".*bucket exists"):
        StudyStore(s3.uri("x").replace(BUCKET, "no-such-bucket")).check()


def test_study_folders_under_a_uri_keep_its_options():
    assert join_uri("s3://b/studies?endpoint_override=h:1&scheme=http", "micro") == \
        "s3://b/studies/micro?endpoint_override=h:1&scheme=http"
    assert join_uri("s3://b/studies/", "micro") == "s3://b/studies/micro"
