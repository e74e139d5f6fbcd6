"""Loading a model: the one place the learner, the engines, SFT and evaluation get their weights from."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_model(path: str | Path, device: torch.device) -> torch.nn.Module:
    """A causal LM in float32 (master weights; autocast decides the compute dtype)."""
    if not Path(path).exists() and not looks_like_hub_id(str(path)):
        raise FileNotFoundError(
            f"model path {str(path)!r} does not exist (give a Hugging Face model directory or hub id)"
        )
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device)


def looks_like_hub_id(path: str) -> bool:
    parts = path.split("/")
    return len(parts) == 2 and all(parts) and not path.startswith((".", "/", "~"))
