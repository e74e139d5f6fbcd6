"""Weights by broadcast (rl/weights.py WeightGroup) between real processes over gloo, and the network helpers of
rl/nodes.py: every byte arrives whatever the dtypes and shapes, a member that dies makes the sender say so
(and finish its buckets) and the members left fail at once instead of waiting out their timeout."""

import multiprocessing
import os
import socket
import time

import pytest
import torch

from rl import nodes
from rl.weights import WeightGroup

TIMEOUT_S = 120.0  # what a member left waiting would sit through, were the group not ended


def buckets() -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [
        {"a": torch.randn(3, 5, generator=g), "b": torch.randn(7, generator=g).to(torch.bfloat16)},
        {"c": torch.arange(11, dtype=torch.int64), "d": torch.randn(2, 3, 1, generator=g).half(), "e": torch.ones(())},
    ]


def member(rank: int, size: int, port: int, role: str, out, cuda: bool = False) -> None:
    try:
        device = torch.device(f"cuda:{rank}") if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(device)
        group = WeightGroup(nodes.node_ip(), port, rank, size, device, TIMEOUT_S)
        if role == "sender":
            time.sleep(1.0 if size > 2 else 0.0)  # the receiver that dies is gone by then
            sent = list(buckets())
            out.put((rank, "sent", group.send(iter(sent)), len(sent)))
        elif role == "dies":
            os._exit(0)
        else:
            start = time.monotonic()
            try:
                got = [{k: v.cpu() for k, v in b.items()} for b in group.receive()]
                out.put((rank, "received", got, None))
            except RuntimeError as e:
                out.put((rank, "failed", str(e), time.monotonic() - start))
    except Exception as e:  # shown by the test
        out.put((rank, "error", repr(e), None))


def run_group(roles: list[str], cuda: bool = False) -> dict[int, tuple]:
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    port = nodes.free_port(nodes.node_ip())
    procs = [
        context.Process(target=member, args=(k, len(roles), port, role, out, cuda)) for k, role in enumerate(roles)
    ]
    for p in procs:
        p.start()
    results = {}
    try:
        for _ in range(sum(role != "dies" for role in roles)):
            rank, *rest = out.get(timeout=TIMEOUT_S)
            results[rank] = tuple(rest)
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    return results


def test_every_bucket_arrives_bit_for_bit_whatever_its_dtypes_and_shapes():
    results = run_group(["sender", "receiver", "receiver"])
    assert_arrived(results, receivers=(1, 2))


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL between two processes needs two CUDA GPUs")
def test_nccl_carries_every_bucket_from_gpu_to_gpu():
    assert_arrived(run_group(["sender", "receiver"], cuda=True), receivers=(1,))


def assert_arrived(results: dict[int, tuple], receivers: tuple[int, ...]) -> None:
    assert results[0][:2] == ("sent", "")
    for rank in receivers:
        kind, got, _ = results[rank]
        assert kind == "received", got
        want = buckets()
        assert [list(b) for b in got] == [list(b) for b in want]
        for b_got, b_want in zip(got, want):
            for name in b_want:
                assert b_got[name].dtype == b_want[name].dtype and b_got[name].shape == b_want[name].shape
                assert torch.equal(b_got[name], b_want[name]), name


def test_a_member_that_dies_fails_the_broadcast_and_the_others_at_once():
    results = run_group(["sender", "receiver", "dies"])
    kind, why, buckets_given = results[0]
    assert kind == "sent" and why, "the sender reports the failure instead of raising"
    assert buckets_given == 2
    kind, error, waited = results[1]
    assert kind == "failed", error
    assert waited < TIMEOUT_S / 2, f"the receiver left waited {waited:.0f}s: the sender did not end the group"


def test_unreachable_names_each_address_it_could_not_open():
    ip = "127.0.0.1"
    with socket.create_server((ip, 0)) as listening:
        closed = nodes.free_port(ip)
        failed = nodes.unreachable([(ip, listening.getsockname()[1]), (ip, closed)], timeout=5.0)
    assert failed == [f"{ip}:{closed} (Connection refused)"]
    report = nodes.unreachable_report(["10.0.0.1", "10.0.0.2"], [[], failed], "learner.connect_timeout_s", 5.0)
    assert report.startswith("learner ranks cannot reach each other (tried for learner.connect_timeout_s=5s each)")
    assert f"rank 1 at 10.0.0.2 cannot reach {ip}:{closed} (Connection refused)" in report


def test_collectives_bind_to_the_interface_of_the_node_address(monkeypatch):
    for name in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"):
        monkeypatch.setenv(name, "")  # restored (unset, if it was) after the test
        monkeypatch.delenv(name)
    assert nodes.bind_collectives("127.0.0.1") == "lo"
    assert os.environ["GLOO_SOCKET_IFNAME"] == os.environ["NCCL_SOCKET_IFNAME"] == "lo"
    assert nodes.bind_collectives("127.0.0.1", "eth7") == "eth7"  # learner.socket_ifname wins
    assert os.environ["GLOO_SOCKET_IFNAME"] == os.environ["NCCL_SOCKET_IFNAME"] == "eth7"
    with pytest.raises(RuntimeError, match="no network interface of this machine holds 203.0.113.9"):
        nodes.interface_of("203.0.113.9")
