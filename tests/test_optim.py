"""Tests of lit_safe.optim: weight-decay groups, the warm-up schedule, AdamW + LambdaLR and the settings group."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import io
import math
from dataclasses import replace

import pytest
import torch
from torch import nn
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from lit_safe.optim import OptimizerSettings, adamw_with_schedule, decay_groups, warmup_schedule_factor


class TinyBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(10, 4)
        self.input_layernorm = LlamaRMSNorm(4)
        self.proj = nn.Linear(4, 3)
        self.post_norm = nn.LayerNorm(3)
        self.scale = nn.Parameter(torch.ones(3))  # 1-D without "bias" or "norm" in its name
        self.frozen = nn.Linear(3, 3)
        self.frozen.requires_grad_(False)


def _ids(params) -> set[int]:
    return {id(p) for p in params}


def test_decay_groups_split():
    model = TinyBlock()
    groups = decay_groups(model.named_parameters(), weight_decay=0.1)
    assert len(groups) == 2
    decay, no_decay = groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert _ids(decay["params"]) == _ids([model.embed_tokens.weight, model.proj.weight])
    assert _ids(no_decay["params"]) == _ids(
        [model.input_layernorm.weight, model.proj.bias, model.post_norm.weight, model.post_norm.bias, model.scale]
    )
    # frozen parameters are in neither group
    everything = _ids(decay["params"]) | _ids(no_decay["params"])
    assert id(model.frozen.weight) not in everything and id(model.frozen.bias) not in everything


def test_decay_groups_on_a_llama_backbone(tiny_tokenizer):
    from lit_safe.models.backbone import load_backbone

    torch.manual_seed(0)
    model = load_backbone("tiny", tiny_tokenizer)
    decay, no_decay = decay_groups(model.named_parameters(), weight_decay=0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    decay_names = {names[id(p)] for p in decay["params"]}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert "layers.0.input_layernorm.weight" in no_decay_names
    assert "layers.1.post_attention_layernorm.weight" in no_decay_names
    assert "norm.weight" in no_decay_names
    assert "layers.0.self_attn.q_proj.weight" in decay_names and "embed_tokens.weight" in decay_names
    assert all(p.ndim >= 2 for p in decay["params"])
    assert len(decay_names) + len(no_decay_names) == len(names)


@pytest.mark.parametrize("kind", ["cosine", "linear", "constant"])
def test_warmup_is_linear(kind):
    # total 100, warm-up 10: factor (step + 1) / 10 during warm-up, 1 at its last step
    assert warmup_schedule_factor(0, 100, 10, kind) == pytest.approx(0.1)
    assert warmup_schedule_factor(4, 100, 10, kind) == pytest.approx(0.5)
    assert warmup_schedule_factor(9, 100, 10, kind) == pytest.approx(1.0)
    assert warmup_schedule_factor(10, 100, 10, kind) == pytest.approx(1.0)


def test_cosine_after_warmup():
    # progress = (step - 10) / 90; factor = (1 + cos(pi * progress)) / 2
    assert warmup_schedule_factor(55, 100, 10) == pytest.approx(0.5)  # halfway
    assert warmup_schedule_factor(100, 100, 10) == pytest.approx(0.0, abs=1e-12)  # end
    assert warmup_schedule_factor(130, 100, 10) == pytest.approx(0.0, abs=1e-12)  # clamped past the end
    assert warmup_schedule_factor(40, 100, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 30 / 90)))
    # no warm-up: starts at 1
    assert warmup_schedule_factor(0, 100, 0) == pytest.approx(1.0)
    assert warmup_schedule_factor(50, 100, 0) == pytest.approx(0.5)
    # monotone non-increasing after warm-up
    values = [warmup_schedule_factor(s, 100, 10) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_linear_after_warmup():
    """transformers' get_linear_schedule_with_warmup after warm-up: (total - step) / (total - warmup)."""
    assert warmup_schedule_factor(10, 110, 10, "linear") == 1.0
    assert warmup_schedule_factor(35, 110, 10, "linear") == pytest.approx(0.75)
    assert warmup_schedule_factor(60, 110, 10, "linear") == pytest.approx(0.5)
    assert warmup_schedule_factor(110, 110, 10, "linear") == 0.0
    assert warmup_schedule_factor(500, 110, 10, "linear") == 0.0  # past the end it stays at 0
    assert warmup_schedule_factor(4, 110, 10, "linear") == pytest.approx(0.5)  # warm-up as for the other kinds


def test_constant_after_warmup():
    assert warmup_schedule_factor(50, 100, 10, "constant") == 1.0
    assert warmup_schedule_factor(100, 100, 10, "constant") == 1.0
    assert warmup_schedule_factor(0, 100, 0, "constant") == 1.0


def test_adamw_with_schedule():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    optimizer, scheduler = adamw_with_schedule(
        model.named_parameters(),
        lr=1e-3,
        weight_decay=0.05,
        betas=(0.9, 0.95),
        total_steps=10,
        warmup_ratio=0.2,  # 2 warm-up steps
        schedule="cosine",
    )
    assert isinstance(optimizer, torch.optim.AdamW)
    assert [g["betas"] for g in optimizer.param_groups] == [(0.9, 0.95), (0.9, 0.95)]
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.05, 0.0]
    assert len(optimizer.param_groups[0]["params"]) == 1  # the Linear weight
    assert len(optimizer.param_groups[1]["params"]) == 3  # Linear bias, LayerNorm weight and bias
    assert all(g["fused"] for g in optimizer.param_groups)  # CPU tensors: torch's fused AdamW kernel

    lrs = []
    x = torch.randn(5, 3)
    before = model[0].weight.detach().clone()
    for _ in range(10):
        lrs.append(optimizer.param_groups[0]["lr"])
        model(x).pow(2).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
    lrs.append(optimizer.param_groups[0]["lr"])
    assert not torch.equal(before, model[0].weight)
    # step 0: 1e-3 * 1/2, step 1: 1e-3 * 2/2, then cosine over 8 steps: step 6 is halfway, step 10 the end
    assert lrs[0] == pytest.approx(0.5e-3)
    assert lrs[1] == pytest.approx(1e-3)
    assert lrs[2] == pytest.approx(1e-3)
    assert lrs[6] == pytest.approx(0.5e-3)
    assert lrs[10] == pytest.approx(0.0, abs=1e-15)
    # both groups follow the same schedule
    assert optimizer.param_groups[1]["lr"] == optimizer.param_groups[0]["lr"]


def test_adamw_with_constant_schedule_and_bad_schedule():
    model = nn.Linear(2, 2)
    optimizer, scheduler = adamw_with_schedule(
        model.named_parameters(),
        lr=5e-6,
        weight_decay=0.0,
        betas=(0.9, 0.999),
        total_steps=100,
        warmup_ratio=0.0,
        schedule="constant",
    )
    assert optimizer.param_groups[0]["betas"] == (0.9, 0.999)
    for _ in range(50):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(5e-6)
    with pytest.raises(ValueError, match="cosine"):
        adamw_with_schedule(
            model.named_parameters(),
            lr=1e-3,
            weight_decay=0.0,
            betas=(0.9, 0.95),
            total_steps=10,
            warmup_ratio=0.1,
            schedule="step",
        )


def test_fused_adamw_takes_the_default_steps_within_rounding():
    """The fused kernel is the same AdamW update (decay groups, betas, weight decay) as torch's default loop."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    twin = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    twin.load_state_dict(model.state_dict())
    fused, _ = adamw_with_schedule(model.named_parameters(), lr=1e-2, weight_decay=0.05, betas=(0.9, 0.95),
                                   total_steps=10, warmup_ratio=0.0, schedule="constant")
    plain = torch.optim.AdamW([{"params": [twin[0].weight], "weight_decay": 0.05},
                               {"params": [twin[0].bias, *twin[1].parameters()], "weight_decay": 0.0}],
                              lr=1e-2, betas=(0.9, 0.95), foreach=False)
    x = torch.randn(5, 3)
    for _ in range(5):
        for net, optimizer in ((model, fused), (twin, plain)):
            optimizer.zero_grad()
            net(x).pow(2).sum().backward()
            optimizer.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        assert not torch.equal(a, torch.zeros_like(a))
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_total_optimizer_steps():
    from lit_safe.optim import total_optimizer_steps

    assert total_optimizer_steps(max_steps=-1, max_epochs=2, batches_per_epoch=10) == 20
    assert total_optimizer_steps(max_steps=15, max_epochs=2, batches_per_epoch=10) == 15
    assert total_optimizer_steps(max_steps=-1, max_epochs=3, batches_per_epoch=10, accumulate_grad_batches=4) == 9
    assert total_optimizer_steps(max_steps=50, max_epochs=-1, batches_per_epoch=10) == 50
    with pytest.raises(ValueError, match="max_steps or max_epochs"):
        total_optimizer_steps(max_steps=-1, max_epochs=None, batches_per_epoch=10)
    # PPO: 4 optimiser steps per rollout batch; max_steps counts optimiser steps (10 rollouts x 4 = 40), not batches
    assert total_optimizer_steps(max_steps=40, max_epochs=-1, batches_per_epoch=100, steps_per_batch=4) == 40
    assert total_optimizer_steps(max_steps=40, max_epochs=1, batches_per_epoch=100, steps_per_batch=4) == 40
    assert total_optimizer_steps(max_steps=-1, max_epochs=2, batches_per_epoch=5, steps_per_batch=4) == 40
    assert total_optimizer_steps(max_steps=100, max_epochs=1, batches_per_epoch=5, steps_per_batch=4) == 20
    # the trainer stops between batches: 41 steps end after the 11th rollout
    assert total_optimizer_steps(max_steps=41, max_epochs=-1, batches_per_epoch=100, steps_per_batch=4) == 44


@pytest.mark.parametrize("field, value, message", [
    ("lr", -0.1, "optimizer: lr must be >= 0, got -0.1"),
    ("lr", float("nan"), "optimizer: lr must be >= 0, got nan"),
    ("weight_decay", -1.0, "optimizer: weight_decay must be >= 0, got -1.0"),
    ("warmup_ratio", -0.5, "optimizer: warmup_ratio must be >= 0, got -0.5"),
    ("max_grad_norm", 0.0, "optimizer: max_grad_norm must be > 0, got 0.0"),
    ("lr_schedule", "step", "optimizer: lr_schedule must be one of cosine, linear, constant, got 'step'"),
])
def test_optimizer_settings_refuse_a_setting_out_of_range_by_name(field, value, message):
    with pytest.raises(ValueError, match=message):
        OptimizerSettings(**{field: value})
    with pytest.raises(ValueError, match=message):  # also when one field of a trainer's defaults is changed
        replace(OptimizerSettings(weight_decay=0.1), **{field: value})


def test_optimizer_settings_accept_no_clipping_and_keep_betas_a_tuple():
    settings = OptimizerSettings(max_grad_norm=None, betas=[0.9, 0.999])
    assert settings.max_grad_norm is None and settings.betas == (0.9, 0.999)
    assert replace(settings, lr=1e-3) == OptimizerSettings(lr=1e-3, max_grad_norm=None, betas=(0.9, 0.999))


def test_optimizer_settings_load_from_a_weights_only_checkpoint():
    """Trainer checkpoints keep the settings among their hyperparameters; Lightning and LightningCLI read them with
    ``torch.load(weights_only=True)``."""
    buffer = io.BytesIO()
    settings = OptimizerSettings(lr=1e-6, weight_decay=0.05, lr_schedule="constant")
    torch.save({"hyper_parameters": {"optimizer": settings}}, buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True)["hyper_parameters"]["optimizer"] == settings
