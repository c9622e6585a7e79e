"""The order xdist hands modules out in, and the lock that runs `exclusive` tests alone under `pytest -n`
(tests/support/exclusive.py): an exclusive holder waits for the shared one beside it, and a test that comes after
it waits its turn instead of starving it."""

import os
import threading
import time
import uuid
from pathlib import Path

from tests.support.exclusive import MachineLock, slow_modules_first


def waiting_on(path: Path) -> bool:
    """Whether some lock request on `path` is blocked (a "->" line of /proc/locks names its inode)."""
    inode = f":{os.stat(path).st_ino} "
    return any("->" in line and inode in line + " " for line in Path("/proc/locks").read_text().splitlines())


def wait_until(condition, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_an_exclusive_test_waits_for_the_one_beside_it_and_then_runs_alone(tmp_path):
    run_id = uuid.uuid4().hex
    beside, alone, after = MachineLock(run_id), MachineLock(run_id), MachineLock(run_id)
    main = Path(beside._main.name)
    entered: list[str] = []
    release_alone = threading.Event()

    def hold(lock: MachineLock, name: str, exclusive: bool, until: threading.Event | None = None) -> None:
        with lock.hold(exclusive):
            entered.append(name)
            if until:
                until.wait(20)

    with beside.hold(exclusive=False):  # a test is running
        exclusive = threading.Thread(target=hold, args=(alone, "alone", True, release_alone))
        exclusive.start()
        wait_until(lambda: waiting_on(main), "the exclusive test to wait for the running one")
        # a test that comes now would share the lock with the running one; the turnstile holds it back
        later = threading.Thread(target=hold, args=(after, "after", False))
        later.start()
        time.sleep(0.3)
        assert entered == []
    wait_until(lambda: entered == ["alone"], "the exclusive test to start once the running one ended")
    time.sleep(0.3)
    assert entered == ["alone"]  # nothing beside it
    release_alone.set()
    exclusive.join(10)
    later.join(10)
    assert entered == ["alone", "after"]
    for lock in (beside, alone, after):
        lock._turnstile.close(), lock._main.close()
    for path in (main, Path(beside._turnstile.name)):
        path.unlink()


class Collected:  # what slow_modules_first reads of a pytest item
    def __init__(self, nodeid: str, slow: bool = False, fixtures: tuple[str, ...] = ()):
        self.nodeid, self.slow, self.fixturenames = nodeid, slow, fixtures

    def get_closest_marker(self, name: str):
        return name == "slow" and self.slow or None


def test_modules_with_the_most_slow_tests_go_first_each_kept_whole():
    tests = [Collected("a.py::t1"), Collected("b.py::t1", slow=True), Collected("a.py::t2"),
             Collected("c.py::t1", slow=True), Collected("c.py::t2", slow=True), Collected("b.py::t2")]
    assert [t.nodeid for t in slow_modules_first(tests)] == \
        ["c.py::t1", "c.py::t2", "b.py::t1", "b.py::t2", "a.py::t1", "a.py::t2"]


def test_modules_that_share_the_tiny_study_keep_their_order():
    tests = [Collected("a.py::t1", fixtures=("tiny_study",)), Collected("b.py::t1", slow=True),
             Collected("c.py::t1", slow=True, fixtures=("tiny_study",)), Collected("c.py::t2", slow=True)]
    assert [t.nodeid for t in slow_modules_first(tests)] == ["a.py::t1", "c.py::t1", "c.py::t2", "b.py::t1"]
