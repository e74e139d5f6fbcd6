"""Small helpers shared by the engine, credit assignment and the learner: padding, autocast, what a
model's forward accepts, and the distinct rows of a batch (a GRPO group repeats its prompt)."""

from __future__ import annotations

import inspect
import itertools
from dataclasses import dataclass

import torch


def pad(
    rows: list, value: float = 0.0, dtype: torch.dtype = torch.float64, device: torch.device | None = None
) -> torch.Tensor:
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


@dataclass(frozen=True)
class ForwardArgs:
    cache: str  # the KV-cache argument: transformers renamed `past_key_values` to `cache` during 5.x
    logits_to_keep: bool  # the forward can skip the LM head on all but the last positions


def forward_args(model) -> ForwardArgs:
    params = inspect.signature(model.forward).parameters
    return ForwardArgs("cache" if "cache" in params else "past_key_values", "logits_to_keep" in params)


def distinct_rows(keys: list) -> tuple[list[int], list[int]]:
    """(the first row of each distinct key, in order; for every row, the index of its key among those).

    A group's episodes share a prompt: the prompt runs once, and each row takes its copy by the second list.
    """
    first_row: dict = {}
    copy_of = [first_row.setdefault(key, i) for i, key in enumerate(keys)]
    distinct = sorted(first_row.values())
    slot = {row: k for k, row in enumerate(distinct)}
    return distinct, [slot[row] for row in copy_of]
