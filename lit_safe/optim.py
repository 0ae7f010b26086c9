"""Optimisers and learning-rate schedules shared by the trainers (pure torch; no Lightning: the length of a schedule
comes in as a number, counted by :meth:`lit_safe.modules.base.BackboneModule.optimizer_steps`).

Safe RLHF's recipe: AdamW with betas (0.9, 0.95), no weight decay on biases and normalisation weights, and a
cosine (or constant) schedule after a linear warm-up over a share of the total optimiser steps. The trainers take
these settings as one argument group, :class:`OptimizerSettings`, each with its reference script's defaults.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

LR_SCHEDULES = ("cosine", "linear", "constant")
Schedule = Literal["cosine", "linear", "constant"]


@dataclass(frozen=True)
class OptimizerSettings:
    """AdamW with a linear warm-up then a cosine, linear or constant learning-rate schedule, and gradient clipping: the
    ``optimizer`` argument group of the trainers (``--model.optimizer.lr 1e-4``; in a config, ``optimizer:`` with
    the fields to change under the model's ``init_args``). Each trainer's default is the reference script's for it;
    fields a config leaves out keep that trainer's defaults. The checkpoints of a trainer built in Python store it
    among their hyperparameters (LightningCLI stores the config's plain values), so it is registered for
    ``torch.load(weights_only=True)``.

    Args:
        lr: peak learning rate.
        weight_decay: AdamW weight decay (not applied to biases and norms).
        betas: AdamW betas.
        warmup_ratio: share of the optimiser steps spent warming up linearly.
        lr_schedule: after warm-up, ``cosine`` (decay to 0, the reference's), ``linear`` (decay to 0, TRL's
            default) or ``constant``.
        max_grad_norm: clip gradients to this global norm (``None``: measure only).
    """

    lr: float = 2e-5
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_ratio: float = 0.03
    lr_schedule: Schedule = "cosine"
    max_grad_norm: float | None = 1.0

    def __post_init__(self) -> None:
        """Refuse the first setting out of range with a ValueError that names it (``not >=`` also refuses NaN)."""
        for name in ("lr", "weight_decay", "warmup_ratio"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"optimizer: {name} must be >= 0, got {getattr(self, name)}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"optimizer: max_grad_norm must be > 0, got {self.max_grad_norm}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"optimizer: lr_schedule must be one of {', '.join(LR_SCHEDULES)}, "
                             f"got {self.lr_schedule!r}")
        object.__setattr__(self, "betas", tuple(self.betas))  # a list from Python or YAML compares and saves alike


torch.serialization.add_safe_globals([OptimizerSettings])


def decay_groups(named_parameters: Iterable[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict]:
    """Split trainable parameters into a decayed group and a group without decay (biases, norms, 1-D tensors)."""
    decay, no_decay = [], []
    for name, param in named_parameters:
        if not param.requires_grad:
            continue
        lowered = name.lower()
        if param.ndim < 2 or lowered.endswith("bias") or "norm" in lowered:
            no_decay.append(param)
        else:
            decay.append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def warmup_schedule_factor(
    step: int, total_steps: int, warmup_steps: int, kind: Schedule = "cosine"
) -> float:
    """Learning-rate multiplier at optimiser step ``step``: linear warm-up, then cosine decay to 0, linear decay to 0
    (TRL's and transformers' ``linear``: ``(total - step) / (total - warmup)``) or constant."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if kind == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def adamw_with_schedule(
    named_parameters: Iterable[tuple[str, nn.Parameter]],
    *,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    total_steps: int,
    warmup_ratio: float,
    schedule: Schedule = "cosine",
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over decay groups plus a per-step warm-up schedule (for ``configure_optimizers``).

    The AdamW is torch's fused kernel when every parameter is a plain tensor on a CPU or CUDA device (the same update
    in one pass over all parameters: on a CPU about 3x faster than the default per-tensor loop, which costs a PPO
    iteration with three trained networks a quarter of its time on small models); sharded (FSDP2 ``DTensor``)
    parameters keep torch's default implementation.
    """
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"lr schedule must be one of {', '.join(LR_SCHEDULES)}, got {schedule!r}")
    groups = decay_groups(named_parameters, weight_decay)
    params = [param for group in groups for param in group["params"]]
    fused = bool(params) and all(type(p.data) is torch.Tensor and p.device.type in ("cpu", "cuda") for p in params)
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused or None)
    warmup = int(round(warmup_ratio * total_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_schedule_factor(step, total_steps, warmup, schedule)
    )
    return optimizer, scheduler


def total_optimizer_steps(
    max_steps: int, max_epochs: int | None, batches_per_epoch: int, accumulate_grad_batches: int = 1,
    steps_per_batch: int = 1,
) -> int:
    """Optimiser steps a run will take, for the length of a learning-rate schedule.

    Args:
        max_steps: the trainer's ``max_steps`` (-1: unbounded), in optimiser steps (what ``global_step`` counts).
        max_epochs: the trainer's ``max_epochs`` (``None`` or -1: unbounded).
        batches_per_epoch: training batches per epoch on this rank (after ``limit_train_batches``).
        accumulate_grad_batches: batches per optimiser step.
        steps_per_batch: optimiser steps per training batch (PPO: epochs x minibatches of each rollout); the trainer
            checks ``max_steps`` between batches, so a run ends on a whole batch: ``max_steps`` rounds up to one.
    """
    per_epoch = math.ceil(batches_per_epoch / max(1, accumulate_grad_batches)) * steps_per_batch
    limit = math.ceil(max_steps / steps_per_batch) * steps_per_batch if max_steps >= 0 else -1
    if max_epochs is None or max_epochs < 0:
        if limit < 0:
            raise ValueError("a learning-rate schedule needs max_steps or max_epochs")
        return limit
    total = per_epoch * max(1, max_epochs)
    return min(total, limit) if limit >= 0 else total
