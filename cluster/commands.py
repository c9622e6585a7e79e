"""The `arscale cluster` and `arscale jobs` commands (`arscale submit`: cluster.submit); pipelines.cli adds them
to its parser."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from cluster import jobs, local_cluster
from cluster.client import dashboard_url, job_client, reaching
from pipelines.errors import RunFailure


def cluster_options() -> list[argparse.ArgumentParser]:
    """The options of every command that talks to a cluster: --home and --address."""
    home = argparse.ArgumentParser(add_help=False)
    home.add_argument("--home", type=Path, help="arscale's state folder (default: $ARSCALE_HOME, else ~/.arscale)")
    address = argparse.ArgumentParser(add_help=False)
    address.add_argument("--address", help="a Ray cluster's dashboard address, http://HEAD:8265 (default: "
                                           "$RAY_ADDRESS if it is such a URL, else the local cluster)")
    return [home, address]


def add_parsers(sub, common: argparse.ArgumentParser) -> None:
    home, address = cluster_options()
    parents = [common, home, address]

    cluster_actions = sub.add_parser("cluster", parents=[common]).add_subparsers(metavar="ACTION")
    p = cluster_actions.add_parser("up", parents=[common, home], help="start a head and worker nodes on 127.0.0.1",
                                   description="Start a Ray head and N worker nodes on this machine, each a separate "
                                               "`ray start` bound to 127.0.0.1, with token authentication.")
    p.add_argument("--workers", type=int, default=1, help="worker nodes besides the head (default 1)")
    p.add_argument("--cpus-per-node", type=int, help="CPUs of each node (default: this machine's CPUs shared "
                                                     "among the nodes)")
    p.set_defaults(handler=cmd_cluster_up)
    p = cluster_actions.add_parser("down", parents=[common, home], help="stop the processes `cluster up` started")
    p.set_defaults(handler=cmd_cluster_down)
    p = cluster_actions.add_parser("status", parents=parents, help="nodes, resources and running jobs")
    p.set_defaults(handler=cmd_cluster_status)

    jobs_actions = sub.add_parser("jobs", parents=[common]).add_subparsers(metavar="ACTION")
    p = jobs_actions.add_parser("list", parents=parents, help="the jobs of the cluster")
    p.set_defaults(handler=cmd_jobs_list)
    for action, handler, text in (("status", cmd_jobs_status, "a job's state; why it failed"),
                                  ("logs", cmd_jobs_logs, "a job's log"),
                                  ("stop", cmd_jobs_stop, "stop a job (its study keeps what it finished)")):
        p = jobs_actions.add_parser(action, parents=parents, help=text)
        p.add_argument("job_id", metavar="ID")
        p.set_defaults(handler=handler)
        if action == "logs":
            p.add_argument("--follow", "-f", action="store_true", help="keep printing until the job ends")


def cmd_cluster_up(args) -> int:
    workers = args.workers
    cpus = args.cpus_per_node or max(1, (os.cpu_count() or 1) // (max(workers, 0) + 1))
    state, started = local_cluster.up(workers, cpus, args.home)
    if not started:
        print(f"a local Ray cluster is already up (`arscale cluster down` stops it):\n{state.describe()}")
        return 0
    print(f"started {state.describe()}")
    print(f"state: {local_cluster.state_path(args.home)}; stop it with `arscale cluster down`")
    print("next: arscale submit configs/text-tiny.yaml --wait")
    return 0


def cmd_cluster_down(args) -> int:
    stopped = local_cluster.down(args.home)
    if stopped is None:
        print("no local Ray cluster is up; nothing to stop")
    elif stopped == 0:
        print("the local Ray cluster had stopped already; its state is cleared")
    else:
        print(f"stopped the local Ray cluster ({stopped} processes)")
    return 0


def cmd_cluster_status(args) -> int:
    if not args.address:
        state = local_cluster.load_state(args.home)
        if state is None:
            raise RunFailure("no local Ray cluster is up: start one with `arscale cluster up`, or look at another "
                             "cluster with --address http://HEAD:8265")
        if not local_cluster.processes(state):
            raise RunFailure(f"the local cluster recorded in {local_cluster.state_path(args.home)} is gone (its "
                             "processes have ended): `arscale cluster up` starts a new one")
        print(state.describe())
    print(describe_cluster(cluster_url(args)))
    return 0


def describe_cluster(url: str) -> str:
    """Its nodes with their resources, the CPUs in use, and the jobs that are running."""
    from ray.util.state import list_nodes

    client = job_client(url)
    with reaching(url):
        nodes = list_nodes(address=url, detail=True, raise_on_missing_output=False)
        running = [j for j in client.list_jobs() if j.submission_id and j.status.value in ("PENDING", "RUNNING")]
    lines = [f"nodes at {url}:"]
    for n in sorted(nodes, key=lambda n: (not n.is_head_node, n.node_id)):
        total = n.resources_total or {}
        lines.append(f"  {'head  ' if n.is_head_node else 'worker'}  {n.node_id[:8]}  {n.node_ip:<15}  {n.state:<5}  "
                     f"{total.get('CPU', 0):g} CPU  {total.get('GPU', 0):g} GPU  "
                     f"{total.get('memory', 0) / 2**30:.1f} GiB memory")
    used = _cpus_in_use(client)
    if used is not None:  # the total from the node list: the dashboard's load report lags new nodes by seconds
        total = sum((n.resources_total or {}).get("CPU", 0) for n in nodes if n.state == "ALIVE")
        lines.append(f"CPUs in use: {used:g} of {total:g}")
    lines.append(f"running jobs: {len(running)}")
    lines += [f"  {j.submission_id}  {j.status.value}  {(j.metadata or {}).get('arscale.out', j.entrypoint)}"
              for j in running]
    return "\n".join(lines)


def _cpus_in_use(client) -> float | None:
    """CPUs in use from the dashboard's cluster status, or None if it does not say."""
    try:
        data = client._do_request("GET", "/api/cluster_status").json()["data"]
        used, _ = data["clusterStatus"]["loadMetricsReport"]["usage"]["CPU"]
        return float(used)
    except Exception:  # an older or newer dashboard: leave the line out
        return None


def cmd_jobs_list(args) -> int:
    print(jobs.list_jobs(cluster_url(args)))
    return 0


def cmd_jobs_status(args) -> int:
    print(jobs.job_status(cluster_url(args), args.job_id))
    return 0


def cmd_jobs_logs(args) -> int:
    jobs.print_logs(cluster_url(args), args.job_id, args.follow)
    return 0


def cmd_jobs_stop(args) -> int:
    print(f"job {args.job_id}: {jobs.stop(cluster_url(args), args.job_id)}")
    return 0


def cluster_url(args) -> str:
    """The dashboard URL of the cluster the command talks to (--address, $RAY_ADDRESS or the local cluster)."""
    return dashboard_url(args.address, args.home)
