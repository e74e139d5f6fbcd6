"""LoRA through `peft`: adapters train, the base model stays frozen, the engines get merged weights.

The engines never see an adapter: every sync (and the checkpoint's model directory) holds
W + (alpha / r) * B @ A under the base model's own parameter names, so the HF and vLLM
engines load them as they load any full fine-tune. The reference policy of the KL term
is the same base model run with the adapters off: no second copy in memory.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch

ADAPTER = "default"  # peft's name for the one adapter


def add_adapters(
    model: torch.nn.Module, rank: int, alpha: float, targets: list[str], modules_to_save: list[str] = ()
) -> torch.nn.Module:
    """Wrap `model` in a peft model with LoRA adapters of `rank` on the modules named in `targets`; only they
    train, and the modules named in `modules_to_save` (peft's: a trained copy beside the frozen original)."""
    from peft import LoraConfig, get_peft_model

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    for key, names in (("lora_targets", targets), ("lora_modules_to_save", modules_to_save)):
        missing = sorted(set(names) - present)
        if missing:
            raise ValueError(
                f"learner.{key}: the model has no module named {missing} (it has e.g. {sorted(present)[:8]})"
            )
    # ensure_weight_tying: a trained copy of tied input embeddings is the LM head's weight too, as in the base model.
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        target_modules=list(targets),
        modules_to_save=list(modules_to_save) or None,
        ensure_weight_tying=bool(modules_to_save),
        lora_dropout=0.0,
        bias="none",
    )
    # A is drawn at random (B starts at 0): the same draw in every process, so each rank of a sharded
    # learner keeps its shard of one and the same tensor, and a resumed run rebuilds the same model.
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return get_peft_model(model, config)


def adapter_params(model: torch.nn.Module) -> int:
    """Parameters of the LoRA adapters (A and B of every target)."""
    return sum(p.numel() for name, p in model.named_parameters() if ".lora_A." in name or ".lora_B." in name)


class AdaptersOff:
    """The base model behind a peft model: calls run it with the adapters disabled (the KL reference)."""

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def __call__(self, **inputs):
        with self.model.disable_adapter():
            return self.model(**inputs)


def merged_weights(
    model: torch.nn.Module, gather: Callable[[torch.Tensor], torch.Tensor]
) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for every base-model parameter, with each adapter merged into the weight it adapts.

    `gather` gathers a sharded tensor (a collective on every rank, in this order) or returns it as is.
    """
    base = model.get_base_model()
    for name, param in base.named_parameters():
        if ".lora_A." in name or ".lora_B." in name or ".original_module." in name:
            continue  # a module trained whole is served from its trained copy (below)
        if f".modules_to_save.{ADAPTER}." in name:
            yield name.replace(f".modules_to_save.{ADAPTER}", ""), gather(param.detach())
            continue
        if ".base_layer." not in name:
            yield name, gather(param.detach())
            continue
        layer = base.get_submodule(name.split(".base_layer.")[0])
        weight = gather(param.detach())
        if name.endswith(".weight"):
            a, b = gather(layer.lora_A[ADAPTER].weight.detach()), gather(layer.lora_B[ADAPTER].weight.detach())
            weight = weight + layer.scaling[ADAPTER] * (b @ a)  # [out, r] @ [r, in]: nn.Linear's [out, in]
        yield name.replace(".base_layer", ""), weight
