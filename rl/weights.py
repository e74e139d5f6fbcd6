"""Weights on their way from the learner to the engines: buckets of whole tensors, through Ray's object store or
by broadcast in a process group of their own."""

from __future__ import annotations

import math
import pickle
from typing import Iterable, Iterator

import torch


def bucketed(named: Iterator[tuple[str, torch.Tensor]], bucket_mb: float) -> Iterator[dict[str, torch.Tensor]]:
    """Group (name, tensor) pairs into buckets of about `bucket_mb` MB each (a tensor is never split)."""
    limit = bucket_mb * 2**20
    bucket: dict[str, torch.Tensor] = {}
    size = 0
    for name, tensor in named:
        nbytes = tensor.numel() * tensor.element_size()
        if bucket and size + nbytes > limit:
            yield bucket
            bucket, size = {}, 0
        bucket[name] = tensor
        size += nbytes
    yield bucket


def buckets(weights: dict[str, torch.Tensor], bucket_mb: float) -> list[dict[str, torch.Tensor]]:
    """Split a state dict into buckets of about `bucket_mb` MB each (a tensor is never split)."""
    return list(bucketed(iter(weights.items()), bucket_mb))


def to_numpy(tensor: torch.Tensor):
    tensor = tensor.detach().cpu()
    return tensor if tensor.dtype == torch.bfloat16 else tensor.numpy()  # numpy has no bfloat16


class WeightGroup:
    """A process group for syncs by broadcast (`workers.weight_transport=broadcast`): rank 0 holds the learner's
    whole weights (the trainer's process, or learner rank 0), ranks 1..N are the rollout workers. gloo on the CPU,
    NCCL when the workers are on GPUs. Every member constructs it at the same time (it connects them all).

    A sync is self-describing: for each bucket rank 0 broadcasts its layout's length, the layout (names, dtypes,
    shapes) and then the bucket's bytes in one flat buffer; an empty layout ends the sync. The workers need to
    know nothing of the model beforehand.
    """

    def __init__(self, host: str, port: int, rank: int, size: int, device: torch.device, timeout_s: float):
        from datetime import timedelta

        import torch.distributed as dist

        from rl import nodes

        timeout = timedelta(seconds=timeout_s)
        store = dist.TCPStore(host, port, size, is_master=rank == 0, timeout=timeout, wait_for_workers=False)
        self.rank, self.device = rank, device
        if device.type == "cuda":
            self.group = dist.ProcessGroupNCCL(store, rank, size)
        else:
            options = dist.ProcessGroupGloo._Options()
            options._timeout = timeout
            # bound to this node's Ray address, which the other members reach (not the host name's)
            options._devices = [dist.ProcessGroupGloo.create_device(hostname=nodes.node_ip())]
            self.group = dist.ProcessGroupGloo(store, rank, size, options)
        self.store = store  # the group talks through it until it ends

    def _broadcast(self, tensor: torch.Tensor) -> torch.Tensor:
        self.group.broadcast(tensor, 0).wait()
        return tensor

    def _header(self, layout: list | None) -> list:
        """Rank 0 sends `layout`; every rank returns it."""
        data = pickle.dumps(layout) if self.rank == 0 else b""
        length = self._broadcast(torch.tensor([len(data)], dtype=torch.int64, device=self.device))
        if self.rank == 0:
            raw = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(self.device)
        else:
            raw = torch.empty(int(length), **_bytes(self))
        return pickle.loads(self._broadcast(raw).cpu().numpy().tobytes())

    def send(self, buckets: Iterable[dict[str, torch.Tensor]]) -> str:
        """Broadcast every bucket (rank 0). Consumes `buckets` to the end even when a receiver fails (a sharded
        learner gathers each bucket with its other ranks, which must not be left waiting); returns "" or why
        the broadcast failed."""
        failed = ""
        for bucket in buckets:
            if failed:
                continue
            try:
                layout = [(name, t.dtype, tuple(t.shape)) for name, t in bucket.items()]
                self._header(layout)
                parts = []
                for t in bucket.values():
                    raw = t.detach().reshape(-1).view(torch.uint8)
                    parts += [raw.to(self.device), torch.zeros(_padded(raw.numel()) - raw.numel(), **_bytes(self))]
                self._broadcast(torch.cat(parts))
            except RuntimeError as e:
                failed = self._failed(e)
        if not failed:
            try:
                self._header([])
            except RuntimeError as e:
                failed = self._failed(e)
        return failed

    def _failed(self, error: RuntimeError) -> str:
        """Why the broadcast failed; the group is ended, so that the receivers still waiting fail too, at once."""
        self.close()
        return " ".join(str(error).split())[:300]

    def receive(self) -> Iterator[dict[str, torch.Tensor]]:
        """The buckets of one sync (ranks 1..N), each as rank 0 sent it."""
        while layout := self._header(None):
            sizes = [math.prod(shape) * torch.empty((), dtype=dtype).element_size() for _, dtype, shape in layout]
            flat = self._broadcast(torch.empty(sum(map(_padded, sizes)), **_bytes(self)))
            bucket, offset = {}, 0
            for (name, dtype, shape), size in zip(layout, sizes):
                bucket[name] = flat[offset : offset + size].view(dtype).reshape(shape)
                offset += _padded(size)
            yield bucket

    def close(self) -> None:
        """End the group: its connections close with it (gloo's abort leaves them open, so the other members
        would wait out their timeout), and a member still waiting on them fails at once."""
        self.group = self.store = None


def _padded(nbytes: int) -> int:
    """Each tensor starts 16-byte aligned in a bucket's buffer (a view as a wider dtype needs its offset aligned)."""
    return -(-nbytes // 16) * 16


def _bytes(group: WeightGroup) -> dict:
    return {"dtype": torch.uint8, "device": group.device}
