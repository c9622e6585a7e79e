"""The training rendezvous of a Ray Train run, listening only on its node's address.

Ray Train's TorchTrainer joins its workers in one torch process group through torch's TCP store, whose server
listens on every interface of rank 0's machine, unauthenticated: on a single machine (a local Ray on 127.0.0.1)
anyone on the network could reach it. Here rank 0 binds the store's socket itself, to its node's address (127.0.0.1
on a single machine, the node's cluster address otherwise), and hands it to the store; the transports of the
process group (gloo, NCCL) are pinned to the interface holding that address.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta

from ray.train.torch import TorchConfig
from ray.train.torch.config import _set_torch_distributed_env_vars, _TorchBackend

_listener: socket.socket | None = None  # rank 0's bound socket, kept open until the store takes it


def interface_of(address: str) -> str | None:
    """The name of the network interface that holds `address` ("lo" for 127.0.0.1), or None."""
    import psutil

    for name, addresses in psutil.net_if_addrs().items():
        if any(a.address == address for a in addresses):
            return name
    return None


def _listen_on_node_address() -> tuple[str, int]:
    """On rank 0: a socket bound to this node's address on a free port, for the store; returns (address, port)."""
    import ray

    global _listener
    address = ray.util.get_node_ip_address()
    _listener = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM)
    _listener.bind((address, 0))
    _listener.listen(128)
    return address, _listener.getsockname()[1]


def _join(backend: str, world_rank: int, world_size: int, address: str, port: int, timeout_s: int) -> None:
    """On each worker: join the process group through the store on rank 0's bound socket."""
    import torch.distributed as dist

    interface = interface_of(address)
    if interface:  # the transports listen on this interface only (they would pick the hostname's otherwise)
        os.environ.setdefault("GLOO_SOCKET_IFNAME", interface)
        os.environ.setdefault("NCCL_SOCKET_IFNAME", interface)
    timeout = timedelta(seconds=timeout_s)
    listen_fd = _listener.fileno() if world_rank == 0 else None
    store = dist.TCPStore(address, port, world_size, is_master=world_rank == 0, timeout=timeout,
                          master_listen_fd=listen_fd, use_libuv=listen_fd is None)
    dist.init_process_group(backend, store=store, rank=world_rank, world_size=world_size, timeout=timeout)


class _BoundRendezvousBackend(_TorchBackend):
    def on_start(self, worker_group, backend_config: TorchConfig) -> None:
        address, port = worker_group.execute_single(0, _listen_on_node_address)
        worker_group.execute(_set_torch_distributed_env_vars)  # LOCAL_RANK and the like, as TorchTrainer sets them
        import ray

        ray.get([worker_group.execute_single_async(rank, _join, backend=backend_config.backend, world_rank=rank,
                                                   world_size=len(worker_group), address=address, port=port,
                                                   timeout_s=backend_config.timeout_s)
                 for rank in range(len(worker_group))])


class BoundRendezvousConfig(TorchConfig):
    """TorchConfig whose process group meets on rank 0's node address only (see the module's docstring). The
    backend ("gloo", "nccl") must be given."""

    @property
    def backend_cls(self):
        return _BoundRendezvousBackend
