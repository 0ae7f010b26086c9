"""ExportPretrained: write the trained model in the Hugging Face format when fitting ends.

Works with any LightningModule that has ``export_pretrained(path)`` (the score-model trainers do), on every
strategy: the module gathers sharded parameters on all ranks and rank 0 writes config, safetensors and tokenizer.
A module with a non-finite parameter or buffer (on any rank) is not exported: a ``RuntimeError`` names them and
nothing is written.
"""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from lit_safe.models.sharding import nonfinite_tensors


class ExportPretrained(Callback):
    """Export the model at the end of ``fit``.

    Args:
        dirpath: output directory; ``None`` puts it under the logger's run directory as ``hf_model``.
    """

    def __init__(self, dirpath: str | None = None) -> None:
        self.dirpath = dirpath
        self.exported: Path | None = None

    def _target(self, trainer: Trainer) -> Path:
        if self.dirpath is not None:
            return Path(self.dirpath)
        base = trainer.log_dir or trainer.default_root_dir
        return Path(base) / "hf_model"

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not hasattr(pl_module, "export_pretrained"):
            raise TypeError(f"{type(pl_module).__name__} has no export_pretrained(path); remove ExportPretrained")
        target = self._target(trainer)
        bad = nonfinite_tensors(pl_module)
        if not trainer.strategy.reduce_boolean_decision(not bad, all=True):  # every rank refuses together
            where = ", ".join(bad[:5]) + (" ..." if len(bad) > 5 else "") if bad else "on another rank"
            raise RuntimeError(f"{type(pl_module).__name__} has non-finite weights at step {trainer.global_step} "
                               f"({where}): not exported to {target}")
        pl_module.export_pretrained(target)
        self.exported = target
        rank_zero_info(f"Exported the trained model (Hugging Face format) to {target}")
