"""What every lit_safe trainer of a transformer shares: a check that the data is tokenised with the model's tokenizer,
FSDP2 sharding in ``configure_model``, AdamW with the reference schedule, and gradient clipping that works under
every strategy.

Subclasses build ``self.model`` in ``configure_model`` and call :meth:`BackboneModule.shard` on it; their
``hparams`` carry ``lr``, ``weight_decay``, ``betas``, ``warmup_ratio``, ``lr_schedule`` and ``max_grad_norm``.
"""

from __future__ import annotations

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.strategies import ModelParallelStrategy

from lit_safe.models.sharding import apply_fsdp2, clip_grad_norm
from lit_safe.models.tokenizer import tokenizer_fingerprint
from lit_safe.optim import lightning_adamw


class BackboneModule(LightningModule):
    """A LightningModule whose ``self.model`` holds one or more Hugging Face transformers."""

    model: torch.nn.Module | None
    tokenizer: object

    def setup(self, stage: str) -> None:
        """Check that the data module tokenises with this model's tokenizer (different ids would train on garbage)."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        theirs = getattr(datamodule, "tokenizer", None)
        if theirs is not None and tokenizer_fingerprint(theirs) != tokenizer_fingerprint(self.tokenizer):
            raise ValueError(
                f"the data module's tokenizer ({theirs.name_or_path}) is not the model's "
                f"({self.tokenizer.name_or_path}): set data.tokenizer to the model's backbone"
            )

    def require_view(self, *views: str) -> None:
        """Refuse a data module whose view orders or labels items differently from what this module assumes (a pair
        view fed to the wrong module would train it backwards without an error). Data modules without views pass."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        view = getattr(getattr(datamodule, "hparams", None), "view", None)
        if view is not None and view not in views:
            raise ValueError(f"{type(self).__name__} trains on the data module's {' or '.join(map(repr, views))} view, "
                             f"got view {view!r}")

    def shard(self, model: torch.nn.Module) -> None:
        """Shard ``model`` with FSDP2 (per transformer block, then the root) when the trainer runs Lightning's
        ``ModelParallelStrategy`` (``configs/trainer/fsdp2.yaml``); bf16 compute when the precision is bf16."""
        if self._trainer is not None and isinstance(self.trainer.strategy, ModelParallelStrategy):
            bf16 = "bf16" in str(self.trainer.precision)
            apply_fsdp2(model, self.trainer.strategy.device_mesh["data_parallel"],
                        param_dtype=torch.bfloat16 if bf16 else None)

    def configure_optimizers(self):
        return lightning_adamw(self.model.named_parameters(), self.hparams, self.trainer)

    def on_before_optimizer_step(self, optimizer) -> None:
        norm = clip_grad_norm(self.trainer.model, self.model.parameters(), self.hparams.max_grad_norm)
        self.log("train/grad_norm", norm)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clipping happens in :meth:`on_before_optimizer_step` (``max_grad_norm``), for every strategy: Lightning
        refuses norm clipping under FSDP1, so leave ``trainer.gradient_clip_val`` unset."""
