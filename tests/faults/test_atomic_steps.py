"""A step counts as done only when its final folder holds a success record: a `.tmp` folder that says succeeded
(its process died between that record and the rename) is finished when every file it lists is there at its size,
and rerun otherwise, never trusted as it is."""

import json
import os

from pipelines.executor import Executor
from pipelines.step_status import STATUS, step_state
from tests.pipelines.test_executor import dag


def _uncommit(root, step):
    """Put a finished step back as its process left it just before the rename."""
    os.rename(root / step.dirname, root / f"{step.dirname}.tmp")


def test_a_succeeded_tmp_folder_is_finished_or_rerun_never_trusted(tmp_path, ray_local):
    sa, sb, sc, sd = dag()
    assert all(o.state == "succeeded" for o in Executor(tmp_path).run([sd]).values())
    first = {s.name: json.loads((tmp_path / s.dirname / "out.json").read_text()) for s in (sb, sc)}
    # b died just before its rename; c too, and a power loss emptied its output; d must run again
    _uncommit(tmp_path, sb)
    _uncommit(tmp_path, sc)
    (tmp_path / f"{sc.dirname}.tmp" / "out.json").write_text("")
    os.rename(tmp_path / sd.dirname, tmp_path / "d-elsewhere")
    assert step_state(tmp_path, sb.dirname)["state"] == "interrupted"  # a .tmp record alone never says done

    outcomes = Executor(tmp_path).run([sd])
    assert outcomes["b"].state == "skipped"  # its commit was finished: the rename, not a rerun
    assert json.loads((tmp_path / sb.dirname / "out.json").read_text()) == first["b"]
    assert outcomes["c"].state == "succeeded"  # a listed file lost its contents: rerun
    assert json.loads((tmp_path / sc.dirname / "out.json").read_text())["start"] > first["c"]["start"]
    assert outcomes["d"].state == "succeeded" and not list(tmp_path.glob("*.tmp"))


def test_the_success_record_lists_every_file_at_its_size(tmp_path, ray_local):
    sa, *_ = dag()
    Executor(tmp_path).run([sa])
    record = json.loads((tmp_path / sa.dirname / STATUS).read_text())
    assert record["files"] == {"out.json": (tmp_path / sa.dirname / "out.json").stat().st_size}
