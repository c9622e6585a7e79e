"""Keeping Ray on 127.0.0.1.

Ray 2.60 rewrites a loopback address to the machine's outward-facing IP on Linux: `ray start --node-ip-address
127.0.0.1`, `ray.init(_node_ip_address="127.0.0.1")` and `ray.init(address="127.0.0.1:6379")` all end up on, say,
192.0.2.2, and its servers then listen on every interface. Only in Ray's single-machine mode (the environment
variable below set to 0, as on macOS and Windows) does it keep 127.0.0.1, and its servers then listen on loopback
only. That mode also makes `ray start --address` refuse to add a worker node, so worker nodes of the local
cluster are started through `python -m pipelines.loopback start ...`: Ray's own `ray start`, with that one refusal
lifted and 127.0.0.1 left as it is.

Every process of a loopback cluster (its nodes, the workers and job drivers they start, and drivers that connect
from outside) must run in that mode, or it looks for the cluster at the other address.
"""

from __future__ import annotations

import os
import sys

SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
LOOPBACK = "127.0.0.1"
ENV = {SINGLE_MACHINE_ENV: "0"}


def is_loopback(address: str | None) -> bool:
    """True for 127.0.0.1:6379, localhost:6379, http://127.0.0.1:8265 and the like."""
    if not address:
        return False
    host = address.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    return host in ("127.0.0.1", "localhost", "::1")


def use_loopback() -> None:
    """Put this process (and the processes it starts) in Ray's single-machine mode, even if Ray is imported."""
    os.environ.update(ENV)
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:
        constants.ENABLE_RAY_CLUSTER = False


def ray_start(argv: list[str]) -> None:
    """Run `ray start ARGV` for a node of a loopback cluster (head or worker)."""
    from ray._private import ray_constants, services
    from ray.scripts.scripts import main

    resolve = services.resolve_ip_for_localhost
    services.resolve_ip_for_localhost = lambda host: LOOPBACK if host in (LOOPBACK, "localhost") else resolve(host)
    ray_constants.ENABLE_RAY_CLUSTER = True  # lifts only the refusal to start a worker node (see above)
    sys.argv = ["ray", "start", *argv]
    main()


if __name__ == "__main__":
    if sys.argv[1:2] != ["start"]:
        sys.exit("usage: python -m pipelines.loopback start [ray start options]")
    ray_start(sys.argv[2:])
