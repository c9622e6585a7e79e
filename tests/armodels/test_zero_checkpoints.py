"""ZeRO stages 1-3 checkpoint and resume exactly, on gloo with two ranks: a run stopped mid-way and started again
gives the curve and the weights of an unbroken run, also when the ranks share no disk and meet in an object store.
A WSD cooldown branch off a ZeRO trunk's branch point equals a straight WSD run, there too. Damaged, crafted or
mismatched checkpoints are refused with one line, on every rank alike.

Two worker processes (torch.multiprocessing, meeting through a file store) run every training job of this module
one after another in the same process group, so DeepSpeed is imported once per process, not once per run."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import traceback
from dataclasses import replace
from functools import partial
from pathlib import Path

import pytest
import torch

from armodels.checkpoint import file_rank, load_checkpoint
from armodels.files import file_sha256
from armodels.train import TrainConfig, TrainRun, branch_folder, load_model, train_single_process
from pipelines.steps.train import _pull_checkpoint, _push_checkpoint_files, _push_checkpoint_state, _push_run
from pipelines.storage import StudyStore

STAGES = (1, 2, 3)
CASES = [(1, "fp32"), (2, "fp32"), (3, "fp32"), (3, "bf16")]  # (zero_stage, precision)
STOP_AFTER = 7  # of 16 steps; periodic checkpoints after steps 5 and 11, so the stop replaces one
BRANCH_AT = 12  # a trunk's branch point; the branch cools down over the last 4 of its 16 steps


def make_run(shards: Path, zero_stage: int, **train) -> TrainRun:
    options = dict(tokens=8_000, batch_size=16, lr=5e-3, eval_points=2, eval_windows=8, log_every=1, checkpoints=2)
    return TrainRun("transformer", {"vocab_size": 320, "seq_len": 32, "n_layer": 1, "n_head": 2, "n_embd": 16},
                    TrainConfig(**{**options, **train, "zero_stage": zero_stage}),
                    str(shards / "train"), str(shards / "val"), name=f"zero{zero_stage}")


def trunk_and_wsd(shards: Path, zero_stage: int) -> tuple[TrainRun, TrainRun]:
    """A constant-lr trunk that keeps its state after BRANCH_AT steps, and the straight WSD run its branch equals."""
    warmup = dict(warmup_tokens=2 * 16 * 32, checkpoints=0)
    trunk = make_run(shards, zero_stage, tokens=BRANCH_AT * 16 * 32, schedule="constant", branch_points=(BRANCH_AT,),
                     **warmup)
    return trunk, make_run(shards, zero_stage, schedule="wsd", decay_fraction=0.25, **warmup)


def _worker(rank: int, world: int, store: str, jobs_file: str) -> None:
    """One rank: runs the jobs in order; what each training job returned or raised goes into job<i>-<rank>.json."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    import torch.distributed as dist

    from armodels.train import train

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    for index, job in enumerate(json.loads(Path(jobs_file).read_text())):
        # "own_folders": each rank runs in a folder of its own, as on machines that share no disk
        out = Path(job["out"]) / f"node{rank}" / job.get("name", "run") if job.get("own_folders") else Path(job["out"])
        if job.get("copy_from") and rank == 0:
            shutil.copytree(job["copy_from"], out)
        if job.get("list_store") and rank == 0:
            out.write_text(json.dumps(StudyStore(job["list_store"]).files("")))
        dist.barrier()
        if "run" not in job:
            continue
        calls = iter(range(10_000))
        stop_after = job.get("stop_after")
        try:
            hooks = store_hooks(StudyStore(job["store"]), out, rank) if job.get("store") else {}
            run = TrainRun.from_dict(job["run"])
            if job.get("branch_of"):  # a branch on a machine of its own: its trunk's branch point from the store
                trunk = Path(job["branch_of"]["out"]) / f"node{rank}" / job["branch_of"]["name"]
                StudyStore(job["store"]).pull(trunk.name, trunk)
                run = replace(run, start_from=str(branch_folder(trunk, BRANCH_AT)))
            result = train(run, out, **hooks,
                           should_stop=(lambda c=calls, n=stop_after: next(c) >= n - 1) if stop_after else None)
            if job.get("store") and rank == 0:
                _push_run(StudyStore(job["store"]), out)
            record = {"result": result}
        except Exception as e:  # the test reads what each rank raised
            record = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        (Path(jobs_file).parent / f"job{index}-{rank}.json").write_text(json.dumps(record))
        dist.barrier()
    dist.destroy_process_group()


def store_hooks(store: StudyStore, out: Path, rank: int) -> dict:
    """What the training step's workers do with a study in an object store (pipelines.steps.train._train_worker):
    fetch the store's checkpoint, upload each rank's checkpoint files, then rank 0 the state.json."""
    out.mkdir(parents=True, exist_ok=True)
    _pull_checkpoint(store, out)
    return {"on_checkpoint_files": partial(_push_checkpoint_files, store, out),
            "on_checkpoint": (lambda: _push_checkpoint_state(store, out)) if rank == 0 else None}


def run_jobs(jobs: list[dict], world: int = 2) -> list[list[dict]]:
    """Run `jobs` on `world` ranks; per job, what each rank recorded."""
    import torch.multiprocessing as mp

    folder = Path(tempfile.mkdtemp(prefix="zero-jobs-"))
    (folder / "jobs.json").write_text(json.dumps(jobs))
    ranks = mp.start_processes(_worker, args=(world, str(folder / "store"), str(folder / "jobs.json")), nprocs=world,
                               start_method="spawn", join=False)
    deadline = time.monotonic() + 600
    while not ranks.join(timeout=5):  # a rank that raises ends the others: start_processes raises its error
        if time.monotonic() > deadline:  # ranks stuck in a collective: the test fails rather than hangs
            for process in ranks.processes:
                process.kill()
            pytest.fail(f"the ranks did not finish {len(jobs)} jobs in 600 s")
    records = [[json.loads((folder / f"job{i}-{r}.json").read_text()) for r in range(world)] if "run" in job else []
               for i, job in enumerate(jobs)]
    shutil.rmtree(folder, ignore_errors=True)
    return records


def result(records: list[dict]) -> dict:
    assert all("result" in r for r in records), [r.get("traceback") for r in records]
    return records[0]["result"]


def error(records: list[dict]) -> str:
    """The one error every rank raised (they agree)."""
    assert all("error" in r for r in records), records
    assert len({r["error"] for r in records}) == 1, [r["error"] for r in records]
    return records[0]["error"]


def curve(folder: Path) -> dict:
    return json.loads((folder / "curve.json").read_text())


@pytest.fixture(scope="module")
def zero_runs(tmp_path_factory, shards, s3):
    """Per case: an unbroken run, a run stopped after STOP_AFTER steps (a copy of its checkpoint kept), and that
    run resumed; then the bad inputs (another stage, a damaged partition, a crafted pickle) and the object store."""
    root = tmp_path_factory.mktemp("zero")
    jobs = []
    for stage, precision in CASES:
        run, case = make_run(shards, stage, precision=precision).to_dict(), f"{stage}-{precision}"
        jobs += [{"out": str(root / f"whole{case}"), "run": run},
                 {"out": str(root / f"split{case}"), "run": run, "stop_after": STOP_AFTER},
                 {"out": str(root / f"stopped{case}"), "copy_from": str(root / f"split{case}")},
                 {"out": str(root / f"split{case}"), "run": run}]
    # the stage-1 checkpoint resumed as stage 2
    jobs.append({"out": str(root / "other-stage"), "run": make_run(shards, 2).to_dict(),
                 "copy_from": str(root / "stopped1-fp32")})
    # per stage: a trunk, a cooldown branch off its branch point, the straight WSD run; a stage-2 branch of stage 1
    cases = len(jobs)
    for stage in STAGES:
        trunk, straight = trunk_and_wsd(shards, stage)
        start = str(branch_folder(root / f"trunk{stage}", BRANCH_AT))
        jobs += [{"out": str(root / f"trunk{stage}"), "run": trunk.to_dict()},
                 {"out": str(root / f"branch{stage}"), "run": replace(straight, start_from=start).to_dict()},
                 {"out": str(root / f"wsd{stage}"), "run": straight.to_dict()}]
    other = replace(trunk_and_wsd(shards, 2)[1], start_from=str(branch_folder(root / "trunk1", BRANCH_AT)))
    jobs.append({"out": str(root / "branch-other-stage"), "run": other.to_dict()})
    records = run_jobs(jobs)
    # the damaged and crafted checkpoints are made from the stopped runs' copies, then resumed in a second batch
    damaged = root / "damaged"
    shutil.copytree(root / "stopped2-fp32", damaged)
    partition = partition_file(damaged, rank=1)
    data = bytearray(partition.read_bytes())
    data[len(data) // 2] ^= 0xFF
    partition.write_bytes(bytes(data))
    crafted = root / "crafted"
    shutil.copytree(root / "stopped3-fp32", crafted)
    marker = root / "pwned"
    craft_pickle(crafted, rank=1, marker=marker)
    # a stage-2 run whose two ranks have folders of their own, like machines without a shared disk: with an object
    # store it is stopped, then resumed on "new machines" (empty folders) from the store alone; without, it cannot
    # keep a checkpoint, so it runs on to the end
    run2, uri = make_run(shards, 2).to_dict(), s3.uri("zero-study")
    # and a stage-2 trunk on such machines, whose branch then runs on new ones from the store alone
    trunk2, straight2 = (r.to_dict() for r in trunk_and_wsd(shards, 2))
    more = run_jobs([{"out": str(damaged), "run": make_run(shards, 2).to_dict()},
                     {"out": str(crafted), "run": make_run(shards, 3).to_dict()},
                     {"out": str(root / "store-a"), "own_folders": True, "store": uri, "run": run2,
                      "stop_after": STOP_AFTER},
                     {"out": str(root / "store-listing.json"), "list_store": uri},
                     {"out": str(root / "store-b"), "own_folders": True, "store": uri, "run": run2},
                     {"out": str(root / "unshared"), "own_folders": True, "run": run2, "stop_after": STOP_AFTER},
                     {"out": str(root / "store-trunk"), "own_folders": True, "name": "trunk2", "store": uri,
                      "run": trunk2},
                     {"out": str(root / "store-branch"), "own_folders": True, "name": "branch2", "store": uri,
                      "run": straight2, "branch_of": {"out": str(root / "store-branch-trunk"), "name": "trunk2"}}])
    return {"root": root, "records": records[:cases], "branches": records[cases:], "bad": more[:2],
            "store": more[2:6], "store_branch": more[6:], "marker": marker, "uri": uri}


def partition_file(run_dir: Path, rank: int) -> Path:
    return next(p for p in (run_dir / "checkpoint").rglob("*optim_states.pt") if file_rank(p.name) == rank)


class Payload:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def craft_pickle(run_dir: Path, rank: int, marker: Path) -> None:
    """Replace a rank's partition file by a pickle that would create `marker` when loaded, checksum updated."""
    path = partition_file(run_dir, rank)
    torch.save({"optimizer_state_dict": Payload(marker)}, path)
    state_file = run_dir / "checkpoint" / "state.json"
    state = json.loads(state_file.read_text())
    state["files"][path.relative_to(run_dir / "checkpoint").as_posix()] = file_sha256(path)
    state_file.write_text(json.dumps(state))


@pytest.mark.parametrize("stage, precision", CASES)
def test_a_stopped_zero_run_resumes_exactly(zero_runs, stage, precision):
    root, records, case = zero_runs["root"], zero_runs["records"], f"{stage}-{precision}"
    i = CASES.index((stage, precision))
    whole, stopped, _, resumed = (result(r) if r else None for r in records[i * 4:(i + 1) * 4])
    assert whole["status"] == "ok" and whole["workers"] == 2 and whole["steps"] == 16
    assert whole["precision"] == precision
    assert stopped["status"] == "interrupted" and stopped["steps"] == STOP_AFTER
    state = json.loads((root / f"stopped{case}" / "checkpoint" / "state.json").read_text())
    assert (state["zero_stage"], state["world_size"], state["precision"]) == (stage, 2, precision)
    assert state["step"] == STOP_AFTER
    assert {file_rank(n) for n in state["files"]} >= {0, 1}  # each rank's partition, checksummed
    assert resumed["status"] == "ok" and resumed["resumed_at_step"] == STOP_AFTER
    assert (resumed["steps"], resumed["tokens"]) == (whole["steps"], whole["tokens"])
    a, b = curve(root / f"whole{case}"), curve(root / f"split{case}")
    assert [p["step"] for p in b["train"]] == [p["step"] for p in a["train"]] == list(range(16))
    for p, q in zip(a["train"] + a["val"], b["train"] + b["val"]):
        assert q["loss"] == pytest.approx(p["loss"], rel=1e-6, abs=1e-7)
    weights = [load_model(root / d).state_dict() for d in (f"whole{case}", f"split{case}")]
    for name, tensor in weights[0].items():
        torch.testing.assert_close(weights[1][name], tensor, rtol=1e-6, atol=1e-7)
    assert not (root / f"split{case}" / "checkpoint").exists()  # a finished run keeps no optimizer state


def test_the_stages_agree_and_zero3_saves_the_whole_model(zero_runs, shards):
    """ZeRO only partitions the same computation; under stage 3 the saved weights are gathered from every rank's
    shard and evaluate to the loss the run measured."""
    from armodels.data import TokenWindows
    from armodels.evaluate import evaluate_loss
    from armodels.shards import load_token_stream

    root = zero_runs["root"]
    curves = [curve(root / f"whole{s}-fp32")["train"] for s in STAGES]
    for c in curves[1:]:
        assert max(abs(p["loss"] - q["loss"]) for p, q in zip(curves[0], c)) < 2e-3
    model = load_model(root / "whole3-fp32")
    assert all(t.numel() > 0 for t in model.state_dict().values())
    ev = evaluate_loss(model, TokenWindows(load_token_stream(shards / "val"), 32), max_windows=8)
    assert ev.nats_per_token == pytest.approx(curve(root / "whole3-fp32")["val"][-1]["loss"], rel=1e-4)


def test_a_checkpoint_of_another_zero_stage_is_an_error_that_says_what_to_do(zero_runs):
    message = error(zero_runs["records"][-1])
    assert message.startswith("ValueError: the checkpoint ") and "\n" not in message
    assert "saved with zero_stage 1 on 2 workers" in message and "now has zero_stage 2 on 2 workers" in message
    assert "run it as it was saved (zero_stage 1, num_workers 2" in message and "or delete" in message


def test_a_checkpoint_of_another_world_size_is_an_error(zero_runs, shards, tmp_path):
    shutil.copytree(zero_runs["root"] / "stopped1-fp32", tmp_path / "run")
    with pytest.raises(ValueError, match=r"saved with zero_stage 1 on 2 workers in fp32 but the run now has "
                                         r"zero_stage 1 on 1 worker in fp32: run it as it was saved \(zero_stage 1, "
                                         r"num_workers 2, precision fp32\), or delete .*checkpoint to start over"):
        train_single_process(make_run(shards, 1), tmp_path / "run")


def test_a_damaged_partition_is_refused_by_its_checksum_on_every_rank(zero_runs):
    message = error(zero_runs["bad"][0])
    assert "zero_pp_rank_1_" in message and "does not match its checksum" in message


def test_a_crafted_pickle_in_a_zero_checkpoint_is_not_executed(zero_runs):
    message = error(zero_runs["bad"][1])
    assert "zero_pp_rank_1_" in message and "cannot be loaded safely" in message
    assert not zero_runs["marker"].exists()
    with pytest.raises(ValueError, match="cannot be loaded safely"):
        load_checkpoint(zero_runs["root"] / "crafted", rank=1)
    assert load_checkpoint(zero_runs["root"] / "crafted", rank=0).loaded  # rank 0's own files are fine
    assert not zero_runs["marker"].exists()


def test_a_torn_state_file_is_named(zero_runs, tmp_path):
    shutil.copytree(zero_runs["root"] / "stopped1-fp32" / "checkpoint", tmp_path / "checkpoint")
    state = tmp_path / "checkpoint" / "state.json"
    state.write_text(state.read_text()[:100])
    with pytest.raises(ValueError, match=r"state.json is not valid JSON"):
        load_checkpoint(tmp_path)


def test_without_a_shared_disk_every_rank_sends_its_partition_to_the_store(zero_runs):
    root = zero_runs["root"]
    stopped, _, resumed, unshared = zero_runs["store"]
    assert result(stopped)["status"] == "interrupted" and result(stopped)["steps"] == STOP_AFTER
    listing = sorted(json.loads((root / "store-listing.json").read_text()))
    # each checkpoint a generation of its own, the last two kept, and the pointer
    generations = sorted({n.split("/")[2] for n in listing if n.startswith("run/checkpoint/gen-")})
    assert len(generations) == 2 and generations[-1] == f"gen-{STOP_AFTER:09d}"
    assert "run/checkpoint/state.json" in listing
    latest = f"run/checkpoint/{generations[-1]}/"
    assert [n for n in listing if n.startswith(latest)] == [
        latest + "state.json", *(f"{latest}step-{STOP_AFTER}/{name}" for name in (
            "mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt",
            "zero_pp_rank_1_mp_rank_00_optim_states.pt"))]
    # rank 1's partition went to the store only; rank 0's folder has the checkpoint but for it
    assert not list((root / "store-a" / "node1" / "run").rglob("*.pt"))
    assert len(list((root / "store-a" / "node0" / "run" / "checkpoint").rglob("*.pt"))) == 2

    assert result(resumed)["status"] == "ok" and result(resumed)["resumed_at_step"] == STOP_AFTER
    whole = curve(root / "whole2-fp32")
    assert curve(root / "store-b" / "node0" / "run") == whole
    assert not StudyStore(zero_runs["uri"]).exists("run/checkpoint")  # the finished run's checkpoint is dropped

    # no store: no whole checkpoint can be kept, so the stop request is not honoured and the run goes on
    assert result(unshared)["status"] == "ok" and result(unshared)["resumed_at_step"] is None
    assert curve(root / "unshared" / "node0" / "run") == whole
    assert not (root / "unshared" / "node0" / "run" / "checkpoint").exists()


@pytest.mark.parametrize("stage", STAGES)
def test_a_cooldown_branch_off_a_zero_trunk_equals_a_straight_wsd_run(zero_runs, stage):
    """The trunk keeps its partitioned state after BRANCH_AT steps; the branch loads it on as many workers and
    cools down: the same lr curve and losses as one WSD run."""
    root = zero_runs["root"]
    trunk, branch, straight = (result(r) for r in zero_runs["branches"][3 * (stage - 1):3 * stage])
    assert trunk["status"] == "ok" and trunk["steps"] == BRANCH_AT
    state = json.loads((branch_folder(root / f"trunk{stage}", BRANCH_AT) / "checkpoint" / "state.json").read_text())
    assert (state["zero_stage"], state["world_size"], state["step"]) == (stage, 2, BRANCH_AT)
    assert {file_rank(n) for n in state["files"]} >= {0, 1}  # each rank's partition, checksummed
    assert branch["resumed_at_step"] == BRANCH_AT and branch["steps"] == straight["steps"] == 16
    a, b = curve(root / f"branch{stage}")["train"], curve(root / f"wsd{stage}")["train"]
    assert [p["step"] for p in a] == [p["step"] for p in b] == list(range(16))
    assert [p["lr"] for p in a] == pytest.approx([p["lr"] for p in b], rel=1e-12)
    assert [p["loss"] for p in a] == pytest.approx([p["loss"] for p in b], rel=1e-6, abs=1e-7)
    assert branch["final_val_loss"] == pytest.approx(straight["final_val_loss"], rel=1e-6)


def test_a_branch_of_another_zero_stage_is_refused_on_every_rank(zero_runs):
    message = error(zero_runs["branches"][-1])
    assert message.startswith("ValueError: the branch zero2 differs from the trunk it starts from") and \
        message.endswith("in train.zero_stage")


def test_a_branch_point_without_a_shared_disk_is_kept_in_the_store(zero_runs):
    """A stage-2 trunk whose ranks share no disk: rank 1 sends its partition of the branch point to the store; a
    branch on new machines (empty folders) starts from the store's branch point and equals the straight run."""
    root, store = zero_runs["root"], StudyStore(zero_runs["uri"])
    trunk, branch = (result(r) for r in zero_runs["store_branch"])
    assert trunk["status"] == "ok" and branch["status"] == "ok" and branch["resumed_at_step"] == BRANCH_AT
    point = f"trunk2/branch-{BRANCH_AT:09d}/checkpoint"
    listing = store.files(point)
    assert "state.json" in listing and {file_rank(n) for n in listing if "optim_states" in n} == {0, 1}
    assert not list((root / "store-trunk" / "node1" / "trunk2").rglob("*.pt"))  # rank 1's went to the store only
    a, b = curve(root / "store-branch" / "node0" / "branch2")["train"], curve(root / "wsd2")["train"]
    assert [p["loss"] for p in a] == pytest.approx([p["loss"] for p in b], rel=1e-6, abs=1e-7)
