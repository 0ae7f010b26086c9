"""Sharding helpers that run without GPUs: the FSDP1 block policy, activation checkpointing, gradient clipping, the
non-finite weight check."""

import torch
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
    CheckpointWrapper,
    apply_activation_checkpointing,
)

from lit_safe.models.backbone import load_backbone
from lit_safe.models.score_model import ScoreModel
from lit_safe.models.sharding import TransformerBlockPolicy, clip_grad_norm, full_state_dict, nonfinite_tensors


def test_block_policy_finds_the_decoder_layers_of_any_wrapper(tiny_tokenizer):
    model = ScoreModel(load_backbone("tiny", tiny_tokenizer))
    targets = TransformerBlockPolicy()._run_policy(model, ignored_modules=set(), root_kwargs={})
    names = sorted(type(m).__name__ for m in targets if m is not model)
    assert names == ["LlamaDecoderLayer", "LlamaDecoderLayer"]


def test_block_policy_drives_activation_checkpointing(tiny_tokenizer):
    torch.manual_seed(0)
    model = ScoreModel(load_backbone("tiny", tiny_tokenizer))
    ids = torch.randint(3, 100, (2, 12))
    mask = torch.ones_like(ids)
    before = model(ids, mask).end_scores.detach()
    apply_activation_checkpointing(model, auto_wrap_policy=TransformerBlockPolicy())
    wrapped = [m for m in model.modules() if isinstance(m, CheckpointWrapper)]
    assert len(wrapped) == 2
    out = model(ids, mask).end_scores
    torch.testing.assert_close(out.detach(), before)
    out.sum().backward()
    assert model.score_head.weight.grad is not None


def test_clip_grad_norm_returns_the_norm_before_clipping():
    layer = torch.nn.Linear(2, 1, bias=False)
    layer.weight.grad = torch.tensor([[3.0, 4.0]])
    norm = clip_grad_norm(layer, layer.parameters(), max_norm=1.0)
    assert float(norm) == 5.0
    torch.testing.assert_close(layer.weight.grad, torch.tensor([[0.6, 0.8]]), atol=1e-6, rtol=0)
    layer.weight.grad = torch.tensor([[3.0, 4.0]])
    assert float(clip_grad_norm(layer, layer.parameters(), max_norm=None)) == 5.0
    torch.testing.assert_close(layer.weight.grad, torch.tensor([[3.0, 4.0]]))


def test_full_state_dict_of_an_unsharded_module_is_a_cpu_copy(tiny_tokenizer):
    model = ScoreModel(load_backbone("tiny", tiny_tokenizer))
    state = full_state_dict(model, model, prefix="model.")
    assert set(state) == set(model.state_dict())
    assert all(t.device.type == "cpu" for t in state.values())


def test_nonfinite_tensors_names_float_parameters_and_buffers_with_nan_or_inf():
    module = torch.nn.BatchNorm1d(3)  # float weight, bias, running stats and an integer batch counter
    assert nonfinite_tensors(module) == []
    with torch.no_grad():
        module.weight[1] = float("nan")
        module.running_var[0] = float("inf")
    assert nonfinite_tensors(module) == ["weight", "running_var"]
