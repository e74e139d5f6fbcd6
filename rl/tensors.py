"""Small tensor helpers shared by credit assignment and the learner."""

from __future__ import annotations

import itertools

import torch


def pad(rows: list, value: float = 0.0, dtype: torch.dtype = torch.float64, device: torch.device | None = None) -> torch.Tensor:
    """Right-pad lists or 1-D tensors into one [B, T] tensor, on `device` (None: the CPU).

    One host tensor for all rows (not one per row), so padding stays off the learner's critical path.
    """
    lengths = torch.tensor([len(r) for r in rows])
    if isinstance(rows[0], torch.Tensor):
        flat = torch.cat(rows).to(dtype)
    else:
        flat = torch.tensor(list(itertools.chain.from_iterable(rows)), dtype=dtype)
    out = torch.full((len(rows), int(lengths.max())), value, dtype=dtype)
    out[torch.arange(out.shape[1]) < lengths[:, None]] = flat
    if device is not None and device.type == "cuda":
        return out.pin_memory().to(device, non_blocking=True)
    return out


def autocast(device: torch.device, bf16: bool):
    """bf16 autocast when `bf16` and `device` is a GPU; the CPU always runs float32 (`learner.bf16`)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16 and device.type == "cuda")
