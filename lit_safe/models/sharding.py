"""Sharding a transformer across GPUs: FSDP2 (``fully_shard`` per block) and an FSDP1 auto-wrap policy.

FSDP2 runs through Lightning's ``ModelParallelStrategy``: a module's ``configure_model`` calls
:func:`apply_fsdp2`, which shards every transformer block (found from the model's own ``_no_split_modules``)
and then the root, with bf16 compute and fp32 gradient reduction when the trainer runs in bf16. FSDP1 runs
through Lightning's ``FSDPStrategy`` with :class:`TransformerBlockPolicy` as its ``auto_wrap_policy`` (set from
YAML; it needs no class import in the config).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.distributed.fsdp.wrap import ModuleWrapPolicy

from lit_safe.models.backbone import transformer_blocks
from lit_safe.models.lora import merge_lora_state_dict


def apply_fsdp2(model: nn.Module, mesh, param_dtype: torch.dtype | None = None, reshard_after_forward: bool = True):
    """Shard ``model`` in place with FSDP2: each transformer block, then the root module.

    Args:
        model: a module containing one or more Hugging Face transformers.
        mesh: the data-parallel device mesh (``strategy.device_mesh["data_parallel"]``).
        param_dtype: compute dtype of the gathered parameters (``torch.bfloat16`` for bf16 training); the sharded
            parameters stay in their own dtype (fp32 master weights) and gradients are reduced in fp32.
        reshard_after_forward: free gathered parameters after each block's forward (ZeRO-3 style).

    Returns:
        The same module, now made of ``FSDPModule`` s.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32) if param_dtype else None
    kwargs = {"mesh": mesh, "reshard_after_forward": reshard_after_forward}
    if policy is not None:
        kwargs["mp_policy"] = policy
    for block in transformer_blocks(model):
        fully_shard(block, **kwargs)
    # The root (embeddings, final norm, heads) is needed again right at the start of backward: keeping it
    # gathered saves an all-gather and does not depend on FSDP finding the output tensors to re-gather it.
    fully_shard(model, **{**kwargs, "reshard_after_forward": False})
    return model


class TransformerBlockPolicy(ModuleWrapPolicy):
    """FSDP1 auto-wrap (and activation-checkpointing) policy: every transformer block is its own unit.

    The block classes are found at wrap time from the model's own ``_no_split_modules`` (``LlamaDecoderLayer``,
    ``Qwen2DecoderLayer``, ...), so one YAML line serves every architecture:
    ``auto_wrap_policy: {class_path: lit_safe.models.sharding.TransformerBlockPolicy}``.

    Args:
        class_names: block class names to wrap instead of the model's ``_no_split_modules``.
    """

    def __init__(self, class_names: list[str] | None = None) -> None:
        super().__init__(set())
        self.class_names = set(class_names) if class_names else None

    def _resolve(self, root: nn.Module) -> None:
        if self._module_classes:
            return
        names = self.class_names or {type(block).__name__ for block in transformer_blocks(root)}
        self._module_classes = {type(m) for m in root.modules() if type(m).__name__ in names}
        self._module_classes_str = str(sorted(c.__name__ for c in self._module_classes))
        if not self._module_classes:
            raise ValueError(f"no module of the classes {sorted(names)} in {type(root).__name__}")

    def _run_policy(self, root_module, ignored_modules, root_kwargs):
        self._resolve(root_module)
        return super()._run_policy(root_module, ignored_modules, root_kwargs)

    def __call__(self, module: nn.Module, recurse: bool, nonwrapped_numel: int) -> bool:
        if recurse:
            if not self._module_classes:
                self._resolve(module)
            return True
        return isinstance(module, tuple(self._module_classes))


def is_fsdp1(module: nn.Module) -> bool:
    """Whether ``module`` is wrapped by FSDP1 (``FullyShardedDataParallel``)."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    return isinstance(module, FullyShardedDataParallel)


def clip_grad_norm(root: nn.Module, parameters, max_norm: float | None) -> torch.Tensor:
    """Clip gradients by their global norm and return that norm (before clipping), for plain, DDP, FSDP1 and
    FSDP2 models alike (FSDP1 needs its own method; FSDP2's DTensor norm is made a plain tensor).

    Args:
        root: the module the strategy wrapped (``trainer.model``).
        parameters: the parameters to clip.
        max_norm: the largest allowed norm; ``None`` or ``inf`` only measures.
    """
    limit = float("inf") if max_norm is None else float(max_norm)
    if is_fsdp1(root):
        norm = root.clip_grad_norm_(limit)
    else:
        norm = torch.nn.utils.clip_grad_norm_([p for p in parameters if p.grad is not None], limit)
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return norm.detach()


def nonfinite_tensors(module: nn.Module) -> list[str]:
    """Names of the floating-point parameters and buffers of ``module`` with a non-finite value in this rank's
    shard (the local part of an FSDP2 DTensor): a local check, reduce the answer across ranks."""
    bad = []
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        if tensor is None or not tensor.is_floating_point() or not tensor.numel():
            continue
        local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
        if not bool(torch.isfinite(local).all()):
            bad.append(name)
    return bad


def full_state_dict(module: nn.Module, root: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """Gather the full (unsharded) state dict of ``module`` on CPU; call it on every rank (it is a collective).

    Args:
        module: the module to export (e.g. the score model inside a LightningModule).
        root: the module the strategy wrapped (``trainer.model``), to detect FSDP1.
        prefix: the name of ``module`` inside ``root`` with a trailing dot (``"model."``), for FSDP1, whose full
            state dict can only be taken from the wrapped root.

    Returns:
        The state dict; with FSDP it is complete on rank 0 only (other ranks may get an empty dict).
    """
    from torch.distributed.fsdp import FSDPModule

    if is_fsdp1(root):
        from torch.distributed.fsdp import FullStateDictConfig, FullyShardedDataParallel, StateDictType

        config = FullStateDictConfig(offload_to_cpu=True, rank0_only=True)
        with FullyShardedDataParallel.state_dict_type(root, StateDictType.FULL_STATE_DICT, config):
            state = root.state_dict()
        return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    if any(isinstance(m, FSDPModule) for m in module.modules()):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


def is_writer() -> bool:
    """Whether this process writes exports: rank 0, or the only process."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def export_causal_lm(model: nn.Module, tokenizer, path: str | Path, *, root: nn.Module, prefix: str,
                     lora_scaling: float | None = None) -> Path | None:
    """Write a (possibly sharded) causal LM in the Hugging Face format with its tokenizer; call on every rank
    (gathering is a collective), rank 0 writes.

    Args:
        model: the causal LM.
        tokenizer: saved beside the weights.
        path: output directory.
        root: the module holding ``model`` as the strategy wrapped it (a LightningModule, or the trainer's
            ``model`` under FSDP1).
        prefix: ``model``'s name inside ``root`` with a trailing dot (``"model."``).
        lora_scaling: the model carries LoRA adapters (:mod:`lit_safe.models.lora`) of this scaling: they are folded
            into plain weights, so that the export loads without peft.
    """
    state = full_state_dict(model, root, prefix=prefix)
    if not is_writer():
        return None
    if lora_scaling is not None:
        state = merge_lora_state_dict(state, lora_scaling)
    path = Path(path)
    model.save_pretrained(path, state_dict=state)
    tokenizer.save_pretrained(path)
    return path
