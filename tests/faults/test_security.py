"""Security: what arscale starts listens on loopback only. Elsewhere: crafted pickles in checkpoints are refused
(test_train_loop, test_zero_checkpoints), names from configs cannot leave the study folder (test_config), secrets in tracking URIs are
redacted (test_tracking)."""

import ipaddress

import psutil


def test_the_local_ray_it_starts_listens_on_loopback_only(ray_local):
    ours = {p.pid for p in psutil.Process().children(recursive=True)} | {psutil.Process().pid}
    listening = [c for c in psutil.net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN and c.pid in ours]
    assert listening, "found no listening socket of the local Ray"
    exposed = []
    for c in listening:
        address = ipaddress.ip_address(c.laddr.ip)
        address = getattr(address, "ipv4_mapped", None) or address
        if not address.is_loopback:
            exposed.append((c.laddr, psutil.Process(c.pid).name()))
    assert not exposed

