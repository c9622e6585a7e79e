"""Security: what arscale starts listens on loopback only. Elsewhere: crafted pickles in checkpoints are refused
(test_train_loop, test_zero_checkpoints), names from configs cannot leave the study folder (test_config), secrets
in tracking URIs are redacted (test_tracking)."""

import ipaddress

import psutil

from armodels.train import TrainConfig, TrainRun, train_single_process


def exposed_sockets() -> tuple[list, list]:
    """(every socket this process and its children listen on, those of them not on a loopback address)."""
    ours = {p.pid for p in psutil.Process().children(recursive=True)} | {psutil.Process().pid}
    listening = [c for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.pid in ours]
    exposed = []
    for c in listening:
        address = ipaddress.ip_address(c.laddr.ip)
        address = getattr(address, "ipv4_mapped", None) or address
        if not address.is_loopback:
            exposed.append((c.laddr, psutil.Process(c.pid).name()))
    return listening, exposed


def test_the_local_ray_it_starts_listens_on_loopback_only(ray_local):
    listening, exposed = exposed_sockets()
    assert listening, "found no listening socket of the local Ray"
    assert not exposed


def test_training_in_one_process_opens_no_port_to_the_network(tmp_path, shards):
    """`arscale train` (and the GPU check) form a process group of one: it must not listen on every interface, as
    torch's TCP rendezvous store does."""
    run = TrainRun("transformer", {"vocab_size": 320, "seq_len": 32, "n_layer": 1, "n_head": 2, "n_embd": 16},
                   TrainConfig(tokens=2_000, batch_size=8, eval_points=1, eval_windows=2), str(shards / "train"),
                   str(shards / "val"), name="t")
    assert train_single_process(run, tmp_path)["status"] == "ok"
    assert not exposed_sockets()[1]
