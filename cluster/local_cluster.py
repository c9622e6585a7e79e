"""A Ray cluster of several nodes on this machine (`arscale cluster up | down | status`), for development and tests.

Each node is its own `ray start` process tree: the head, then worker nodes joining it at 127.0.0.1:PORT. Each gets
its own Ray temp dir and its own free ports (two nodes on one machine must not share either), token authentication
(pipelines.ray_auth) and Ray's loopback mode (pipelines.loopback). Each `ray start` runs in a new process session;
every process Ray starts for that node stays in that session, and job drivers are its descendants. The state file
records the addresses, the token's source and those sessions, so `down` stops exactly what `up` started, where
`ray stop` would stop every Ray process on the machine, other people's included.

`down` does not trust the state file: after a reboot, or once pids wrap around, a recorded pid or session id may be
someone else's (a login session), and the recorded temp folder someone's own. So `up` records what identifies each
process it started (pid, command line, start time, the machine's boot id), puts a random cluster id in the nodes'
environment ($ARSCALE_CLUSTER_ID), and leaves a marker file holding that id in the temp folder it makes. `down`
signals only the processes that match their record or carry the id, the other processes of their sessions, and
their descendants (see _find); it says which of the processes the file names it left alone, and removes only a
folder holding the marker. A state file without these (from an older arscale) is not acted on.

The state file is <home>/cluster.json, home being --home, else $ARSCALE_HOME, else ~/.arscale.
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path

from armodels.files import read_json, write_json_atomic
from pipelines import loopback, ray_auth
from pipelines.errors import RunFailure, UserError
from pipelines.loopback import LOOPBACK
from pipelines.ray_connect import WORKER_ENV

HOME_ENV = "ARSCALE_HOME"
STATE_FILE = "cluster.json"
GCS_PORT, DASHBOARD_PORT = 6379, 8265  # Ray's usual ports, taken when free
START_TIMEOUT_S = 180.0
START_ATTEMPTS = 3
DAEMON_STOP_GRACE_S = 5.0  # SIGTERM, then SIGKILL: Ray's daemons often ignore SIGTERM while their peers shut down
ID_ENV = "ARSCALE_CLUSTER_ID"  # the cluster's id, in the environment of each of its processes
MARKER = ".arscale-cluster"  # in the temp folder `up` made, holding the cluster's id: `down` removes only such a folder
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
# Ports each node listens on besides its workers'; two nodes on one machine must not share them.
NODE_PORT_FLAGS = ("--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
                   "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port")


@dataclass
class Node:
    role: str  # head | worker
    cpus: int
    temp_dir: str
    session: int  # session id of its `ray start`: every process of the node is in it
    pids: list[int] = field(default_factory=list)  # its processes just after start (Ray starts more later)
    processes: list[dict] = field(default_factory=list)  # identity() of each of those pids, for `down` to check


@dataclass
class ClusterState:
    address: str  # the GCS address: RAY_ADDRESS for drivers
    dashboard_url: str  # the Jobs API and dashboard: --address of `arscale submit` and `arscale jobs`
    token: str  # where the authentication token is: a file, or $RAY_AUTH_TOKEN
    temp_root: str  # the nodes' Ray temp dirs are under it
    started: float
    nodes: list[Node]
    id: str = ""  # random: in every process's environment ($ARSCALE_CLUSTER_ID) and in the temp folder's MARKER
    boot_id: str = ""  # the machine's boot when the cluster started: no process of it survives a reboot

    @classmethod
    def from_dict(cls, data: dict) -> ClusterState:
        return cls(**{**data, "nodes": [Node(**n) for n in data["nodes"]]})

    @property
    def checkable(self) -> bool:
        """Whether the file says what identifies the cluster's processes (files of older versions do not)."""
        return bool(self.id and self.boot_id)

    def describe(self) -> str:
        workers, cpus = len(self.nodes) - 1, self.nodes[0].cpus
        since = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.started))
        return "\n".join([
            f"local Ray cluster: head + {workers} worker node{'s' if workers != 1 else ''} on 127.0.0.1, "
            f"{cpus} CPU{'s' if cpus != 1 else ''} each, up since {since}",
            f"  address:   {self.address}   (for drivers: RAY_ADDRESS, or `arscale study run --address`)",
            f"  dashboard: {self.dashboard_url}   (the Jobs API: `arscale submit` and `arscale jobs`)",
            f"  token:     {self.token}   (RAY_AUTH_MODE=token)",
            f"  processes: {', '.join(f'{n.role} {n.session} ({len(n.pids)})' for n in self.nodes)}   "
            f"(session ids; every process id is in the state file)"])


def home_dir(home: Path | str | None = None) -> Path:
    return Path(home or os.environ.get(HOME_ENV) or Path.home() / ".arscale").expanduser()


def state_path(home: Path | str | None = None) -> Path:
    return home_dir(home) / STATE_FILE


def load_state(home: Path | str | None = None) -> ClusterState | None:
    path = state_path(home)
    if not path.is_file():
        return None
    try:
        return ClusterState.from_dict(read_json(path, "cluster state"))
    except (ValueError, TypeError, KeyError) as e:
        raise UserError(f"{path} is not a cluster state file ({e}); remove it if no local cluster is up") from None


def boot_id() -> str:
    """This boot of the machine: Linux's boot id, elsewhere the boot time."""
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        import psutil

        return f"boot-time-{psutil.boot_time():.0f}"


def identity(pid: int) -> dict | None:
    """What tells process `pid` from a later one with the same pid: its command line and start time (on Linux,
    clock ticks since boot from /proc/<pid>/stat, which no clock change moves); None if there is no such process."""
    import psutil

    try:
        process = psutil.Process(pid)
        cmdline = process.cmdline()
        try:  # field 22; the name in field 2 may hold spaces and parentheses, so count from its closing one
            start: float = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        except OSError:
            start = round(process.create_time(), 3)
        return {"pid": pid, "cmdline": cmdline, "start": start}
    except (psutil.Error, OSError, IndexError, ValueError):
        return None


def processes(state: ClusterState) -> list:
    """The live processes of the cluster: those of its nodes' sessions and their descendants (job drivers) that
    are verifiably its own (see _find)."""
    return _find(state)[0]


def _find(state: ClusterState) -> tuple[list, list]:
    """(the cluster's live processes, those the state file names that are not the cluster's).

    The state file names pids and session ids, which may be someone else's by now, so each is checked. A process
    vouches for itself when it matches its record (pid, command line and start time, in the same boot) or carries
    the cluster's id in its environment (Ray's workers and agents do not show it: they write their titles over
    it). It vouches for its session: a session id is not given out again while a process of it is alive, so every
    process in that session is the cluster's too (Ray's workers and agents). Descendants of the cluster's
    processes are the cluster's (job drivers, which Ray starts in sessions of their own).
    """
    import psutil

    if not state.checkable:
        raise RunFailure(f"{_older_state(state)}: `arscale cluster down` clears it, stopping nothing; "
                         f"{_by_hand(state)}")
    if state.boot_id != boot_id():
        return [], []  # the machine has restarted since: none of the cluster's processes is left
    records = {r["pid"]: r for n in state.nodes for r in n.processes}
    sessions = {n.session for n in state.nodes}
    named = {}  # what the state file names: its pids, and the processes of its sessions
    for p in psutil.process_iter(["create_time"]):
        try:
            # A session id outlives its first process; the start time rules out a later namesake.
            if p.pid in records or (os.getsid(p.pid) in sessions and p.info["create_time"] >= state.started - 60):
                named[p.pid] = p
        except (psutil.Error, OSError):
            continue
    named.pop(os.getpid(), None)
    vouching = [p for pid, p in named.items()
                if (pid in records and identity(pid) == records[pid]) or _environment(p).get(ID_ENV) == state.id]
    trusted = {_session(p.pid) for p in vouching} & sessions
    ours = {p.pid: p for p in vouching}
    ours.update({pid: p for pid, p in named.items() if _session(pid) in trusted})
    for p in list(ours.values()):
        try:
            ours.update({q.pid: q for q in p.children(recursive=True) if q.pid != os.getpid()})
        except psutil.Error:
            continue
    strangers = [p for pid, p in named.items() if pid not in ours and p.is_running()]
    return list(ours.values()), strangers


def _environment(process) -> dict:
    import psutil

    try:
        return process.environ()
    except (psutil.Error, OSError):  # another user's process, or one that has ended
        return {}


def _older_state(state: ClusterState) -> str:
    return ("the local cluster's state file was written by an older arscale and does not say what identifies its "
            "processes")


def _by_hand(state: ClusterState) -> str:
    sessions = ", ".join(str(n.session) for n in state.nodes)
    return (f"stop them by hand (those of session {sessions}, if they are Ray's) or with `ray stop` (which stops "
            "every Ray process on this machine)")


def up(workers: int, cpus: int, home: Path | str | None = None, log=print) -> tuple[ClusterState, bool]:
    """Start a head and `workers` worker nodes with `cpus` CPUs each; returns (state, whether it started now).

    When the state file names a cluster whose processes are running, that cluster is returned as it is.
    """
    if workers < 0 or cpus < 1:
        raise UserError("--workers must be 0 or more and --cpus-per-node 1 or more")
    existing = load_state(home)
    if existing and not existing.checkable:
        log(f"{_older_state(existing)}, so nothing of it is stopped: {_by_hand(existing)}. Starting a new cluster")
        state_path(home).unlink(missing_ok=True)
    elif existing and processes(existing):
        return existing, False
    elif existing:
        log(f"the local cluster recorded in {state_path(home)} is gone; starting a new one")
        _forget(existing, home, log)
    token = ray_auth.ensure_token()
    ray_auth.enable_client_auth(None if token.startswith("$") else token)  # for the readiness check below
    # A short temp dir: Ray's socket paths under it must fit in 107 bytes.
    state = ClusterState("", "", token, tempfile.mkdtemp(prefix="arscale-ray-"), time.time(), [],
                         id=secrets.token_hex(16), boot_id=boot_id())
    (Path(state.temp_root) / MARKER).write_text(state.id)

    def head(attempt: int) -> list[str]:  # Ray's usual ports if free, else any; the state records them
        gcs, dashboard = (_port(GCS_PORT), _port(DASHBOARD_PORT)) if attempt == 0 else free_ports(2)
        state.address, state.dashboard_url = f"{LOOPBACK}:{gcs}", f"http://{LOOPBACK}:{dashboard}"
        return ["--head", "--node-ip-address", LOOPBACK, "--port", str(gcs), "--include-dashboard", "true",
                "--dashboard-host", LOOPBACK, "--dashboard-port", str(dashboard),
                "--ray-client-server-port", str(*free_ports(1))]

    try:
        _start_nodes(state, [head], cpus, home)
        _start_nodes(state, [lambda attempt: ["--address", state.address]] * workers, cpus, home)
        _wait_until_ready(state)
    except BaseException:
        _forget(state, home, log)
        raise
    write_json_atomic(state_path(home), asdict(state))
    return state, True


def down(home: Path | str | None = None, log=print) -> int | None:
    """Stop the local cluster; returns how many processes were stopped, or None when none was up.

    A state file of an older arscale is removed with nothing stopped (RunFailure): it cannot tell the cluster's
    processes from others that have its pids by now."""
    state = load_state(home)
    if state is None:
        return None
    if not state.checkable:
        state_path(home).unlink(missing_ok=True)
        raise RunFailure(f"{_older_state(state)}, so nothing was stopped: {_by_hand(state)}; its state file is removed")
    return _forget(state, home, log)


def _forget(state: ClusterState, home, log=print) -> int:
    """Stop every process of the cluster, remove its temp folder (if `up` made it) and its state file."""
    if state.boot_id != boot_id():
        log("the machine has restarted since the local cluster started: none of its processes is left, and "
            "nothing is signalled")
    stopped, skipped = set(), set()
    for _ in range(3):  # a raylet may start a worker while the rest stop: look again
        procs, strangers = _find(state)
        for p in strangers:
            if p.pid not in skipped:
                skipped.add(p.pid)
                log(f"left alone pid {p.pid} ({_command(p)}): the state file names it, but it is not a process of "
                    "the local cluster (not the one recorded, nor in a session of the cluster's)")
        if not procs:
            break
        _stop_processes(procs)
        stopped.update(p.pid for p in procs)
    _remove_temp_root(state, log)
    state_path(home).unlink(missing_ok=True)
    return len(stopped)


def _remove_temp_root(state: ClusterState, log) -> None:
    """Remove the cluster's temp folder, only if `up` made it: it holds the marker with the cluster's id."""
    root = Path(state.temp_root)
    if not root.exists():
        return
    try:  # the id is random: a folder holding it is the one `up` made, whatever happened since
        ours = (root / MARKER).read_text() == state.id
    except OSError:
        ours = False
    if ours:
        shutil.rmtree(root, ignore_errors=True)
    else:
        log(f"kept {root}: the state file names it, but it lacks the marker `arscale cluster up` leaves in the "
            "folders it makes")


def _command(process) -> str:
    import psutil

    try:
        return shlex.join(process.cmdline())[:120] or process.name()
    except (psutil.Error, OSError):
        return "?"


def _stop_processes(procs: list) -> None:
    """SIGTERM, then SIGKILL what is left after DAEMON_STOP_GRACE_S."""
    import psutil

    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=DAEMON_STOP_GRACE_S)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)


def _start_nodes(state: ClusterState, nodes: list, cpus: int, home) -> None:
    """Run `ray start` for each node (a function from the attempt number to its arguments), side by side, each
    in a new session; record them in `state`. A node that failed to start is started again with new ports: they
    are picked free, but others start Ray on this machine too, and on a busy machine Ray's own start-up can time
    out."""
    logs = home_dir(home) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for attempt in range(START_ATTEMPTS):
        started = [(args, *_launch(state, args(attempt), cpus, logs)) for args in nodes]
        nodes = []
        for args, process, node, log_file in started:
            try:
                code = process.wait(timeout=START_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                raise RunFailure(f"`ray start` did not finish in {START_TIMEOUT_S:.0f}s; see {log_file}") from None
            if code == 0:
                node.pids = sorted(p.pid for p in processes(state) if _session(p.pid) == node.session)
                node.processes = [r for r in map(identity, node.pids) if r]
                continue
            if attempt + 1 == START_ATTEMPTS:
                raise RunFailure(f"`ray start` failed {START_ATTEMPTS} times, last with: {_last_error(log_file)} "
                                 f"(its output: {log_file})")
            _stop_processes([p for p in processes(state) if _session(p.pid) == node.session])
            state.nodes.remove(node)
            nodes.append(args)
        if not nodes:
            return


def _launch(state: ClusterState, args: list[str], cpus: int, logs: Path):
    """Start `ray start ARGS` for one node in a new session; returns (process, node, its output file)."""
    index = sum(1 for _ in Path(state.temp_root).glob("n*"))
    temp_dir = Path(state.temp_root) / f"n{index}"
    temp_dir.mkdir()
    role = "head" if "--head" in args else "worker"
    ports = [str(p) for p in free_ports(len(NODE_PORT_FLAGS))]
    command = [sys.executable, "-m", "pipelines.loopback", "start", *args, "--num-cpus", str(cpus),
               "--temp-dir", str(temp_dir), "--disable-usage-stats",
               *(x for pair in zip(NODE_PORT_FLAGS, ports) for x in pair)]
    log_file = logs / f"n{index}-{role}.log"
    with open(log_file, "w") as output:
        process = subprocess.Popen(command, env=_node_env(state.token, state.address, state.id), stdout=output,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    node = Node(role, cpus, str(temp_dir), session=process.pid)
    state.nodes.append(node)
    return process, node, log_file


def _wait_until_ready(state: ClusterState) -> None:
    """Until the Jobs API answers and every node has joined."""
    from ray.util.state import list_nodes

    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            alive = [n for n in list_nodes(address=state.dashboard_url, raise_on_missing_output=False,
                                           _explain=False) if n.state == "ALIVE"]
            if len(alive) >= len(state.nodes):
                return
        except Exception:  # the dashboard is still starting
            pass
        if time.monotonic() > deadline:
            raise RunFailure(f"the cluster did not come up in {START_TIMEOUT_S:.0f}s; Ray's logs are under "
                             f"{state.temp_root}")
        time.sleep(1)


def _node_env(token: str, address: str, cluster_id: str) -> dict:
    """The environment of every node, and so of every Ray worker and job driver on it.

    RAY_ADDRESS: Ray's own actors (Ray Train's) look their cluster up, and with several Ray clusters on one
    machine that look-up fails unless it is set. ARSCALE_CLUSTER_ID: one of the ways `down` tells the cluster's
    processes from others that have a recorded pid or session id by now (see _find).
    """
    env = {**os.environ, **loopback.ENV, **WORKER_ENV, ray_auth.MODE_ENV: "token", "RAY_ADDRESS": address,
           ID_ENV: cluster_id}
    if not token.startswith("$"):
        env[ray_auth.PATH_ENV] = token
    # Job entrypoints run `python ...`: the interpreter arscale runs in, whatever PATH the shell had.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def _port(preferred: int) -> int:
    """`preferred` when it is free on 127.0.0.1, else any free port."""
    with socket.socket() as s:
        try:
            s.bind((LOOPBACK, preferred))
            return preferred
        except OSError:
            pass
    return free_ports(1)[0]


def _session(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def _last_error(log_file: Path) -> str:
    lines = [line.strip() for line in log_file.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "error" in line]
    return (errors or lines or ["no output"])[-1][:300]


def free_ports(n: int) -> list[int]:
    """`n` distinct free ports on 127.0.0.1 (held open together, so the system cannot hand out one twice)."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
