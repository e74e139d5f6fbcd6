"""Weights on their way from the learner to the engines: buckets of whole tensors, as Ray can carry them."""

from __future__ import annotations

from typing import Iterator

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
