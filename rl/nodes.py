"""Where a process runs on a Ray cluster, and which network interface its collectives use.

gloo and NCCL pick the interface of the address the machine's host name resolves to, unless told
otherwise; on many systems (Debian's and Ubuntu's /etc/hosts: 127.0.1.1) that is a loopback address,
and ranks on two machines then wait for each other at 127.0.0.1 until their timeout. So every process
that joins a collective names the interface holding its Ray node's address, the address the other
nodes reach it at.
"""

from __future__ import annotations

import os
import socket


def node_ip() -> str:
    """This process's Ray node address (what the other nodes reach it at)."""
    import ray

    return ray.util.get_node_ip_address()


def interface_of(ip: str) -> str:
    """The network interface that holds `ip` on this machine."""
    import psutil

    for name, addresses in psutil.net_if_addrs().items():
        if any(a.address == ip for a in addresses):
            return name
    raise RuntimeError(f"no network interface of this machine holds {ip}")


def bind_collectives(ip: str, ifname: str = "") -> str:
    """Make gloo and NCCL process groups made by this process use `ifname` (default: the node's own
    GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME where set, else the interface holding `ip`); returns it."""
    chosen = ifname or os.environ.get("GLOO_SOCKET_IFNAME") or interface_of(ip)
    os.environ["GLOO_SOCKET_IFNAME"] = chosen
    if ifname or "NCCL_SOCKET_IFNAME" not in os.environ:
        os.environ["NCCL_SOCKET_IFNAME"] = chosen
    return chosen


def listen(ip: str) -> socket.socket:
    """A socket that accepts connections at `ip` on a free port (the kernel completes them: nobody needs to
    accept), for `unreachable` on the other ranks."""
    return socket.create_server((ip, 0), backlog=64)


def unreachable(peers: list[tuple[str, int]], timeout: float) -> list[str]:
    """The peers ("ip:port") this process cannot open a TCP connection to within `timeout` seconds each, with why."""
    failed = []
    for ip, port in peers:
        try:
            socket.create_connection((ip, port), timeout=timeout).close()
        except OSError as e:
            failed.append(f"{ip}:{port} ({e.strerror or type(e).__name__})")
    return failed


def unreachable_report(addresses: list[str], failed: list[list[str]], option: str, timeout: float) -> str:
    """What to say when rank k (at addresses[k]) could not reach the peers failed[k]."""
    lines = [f"rank {k} at {addresses[k]} cannot reach {', '.join(f)}" for k, f in enumerate(failed) if f]
    return (
        f"learner ranks cannot reach each other (tried for {option}={timeout:g}s each): {'; '.join(lines)}. "
        "Each rank listens at its Ray node's address: check the nodes' firewalls and routes"
    )


def free_port(ip: str) -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return s.getsockname()[1]
