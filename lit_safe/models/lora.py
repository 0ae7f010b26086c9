"""LoRA adapters (peft) on any torch module, and the reference model they give for free: the same network with its
adapters switched off. Used by Diffusion-DPO (the UNet's attention projections) and PPO-Lagrangian (every linear
layer of the policy's transformer blocks) as an alternative to a frozen copy of the network.

``inject_adapter_in_model`` adds ``lora_A``/``lora_B`` beside each target's ``base_layer`` without wrapping the model
(no ``PeftModel``: module names, FSDP units and checkpoints keep their layout apart from the adapter tensors);
``B`` starts at 0, so an adapted network starts out equal to its base. Exports fold the adapters into plain weights
(:func:`merge_lora_state_dict`), so that what is written loads without peft.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from torch import Tensor, nn

LORA_ADAPTER = "default"


def add_lora(module: nn.Module, rank: int, alpha: float | None, target_modules: Sequence[str] | str) -> float:
    """Inject LoRA adapters into ``module`` and make them its only trainable parameters.

    Args:
        module: the network (changed in place).
        rank: r of every adapter.
        alpha: LoRA alpha (``None``: ``rank``, a scaling of 1).
        target_modules: module name suffixes, or peft's ``"all-linear"`` (every linear layer but a language model's
            output layer).

    Returns:
        The scaling ``alpha / rank`` (what :func:`merge_lora_state_dict` needs).
    """
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.tuners_utils import BaseTunerLayer

    if rank < 1:
        raise ValueError(f"lora_rank must be >= 1, got {rank}")
    if any(isinstance(m, BaseTunerLayer) for m in module.modules()):
        raise ValueError(f"{type(module).__name__} already has LoRA adapters")
    alpha = float(rank if alpha is None else alpha)
    targets = target_modules if isinstance(target_modules, str) else list(target_modules)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, init_lora_weights="gaussian")
    inject_adapter_in_model(config, module, adapter_name=LORA_ADAPTER)
    for name, param in module.named_parameters():
        param.requires_grad_(".lora_" in name)
    return alpha / rank


@contextlib.contextmanager
def adapters_disabled(module: nn.Module) -> Iterator[None]:
    """Run ``module`` without its LoRA adapters (its base weights: the reference), then switch them back on. peft's
    toggle also flips the adapters' ``requires_grad``; it is restored exactly on exit."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in module.modules() if isinstance(m, BaseTunerLayer)]
    if not layers:
        raise ValueError(f"{type(module).__name__} has no LoRA adapters to disable")
    trainable = {name: p.requires_grad for name, p in module.named_parameters()}
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)
        for name, param in module.named_parameters():
            param.requires_grad_(trainable[name])


def merge_lora_state_dict(state: dict[str, Tensor], scaling: float,
                          adapter: str = LORA_ADAPTER) -> dict[str, Tensor]:
    """Fold peft LoRA adapters into plain weights: ``W = W_base + scaling * B @ A`` for every
    ``<name>.base_layer.weight`` with ``<name>.lora_A.<adapter>.weight`` ``(r, in)`` and
    ``<name>.lora_B.<adapter>.weight`` ``(out, r)``; ``<name>.base_layer.bias`` becomes ``<name>.bias``; adapter
    tensors are dropped. Keys without adapters pass through."""
    merged: dict[str, Tensor] = {}
    for key, value in state.items():
        if ".lora_" in key:
            continue
        if ".base_layer." not in key:
            merged[key] = value
            continue
        name, param = key.split(".base_layer.")
        if param == "weight":
            a, b = state[f"{name}.lora_A.{adapter}.weight"], state[f"{name}.lora_B.{adapter}.weight"]
            value = (value.float() + scaling * (b.float() @ a.float())).to(value.dtype)
        merged[f"{name}.{param}"] = value
    return merged


__all__ = ["LORA_ADAPTER", "adapters_disabled", "add_lora", "merge_lora_state_dict"]
