"""CategoryTables: the per-category table of a moderation classifier as TensorBoard text.

After every validation and test run, writes ``<stage>/per_category``: a markdown table of support, precision,
recall, F1 and AUROC per harm category (:func:`lit_safe.metrics.category_table`), to every TensorBoard logger of the
trainer, on rank 0, at the current global step. It reads what the module computed at that stage's epoch end: the
per-category vectors of :class:`lit_safe.metrics.ModerationStats` that the moderation trainers keep in
``epoch_metrics[stage]``, and the category names in ``hparams.categories``; a module without them writes nothing.
(Lightning calls a callback's ``on_validation_epoch_end`` before the module's, which computes the statistics; hence
``on_validation_end``.)
"""

from __future__ import annotations

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger

from lit_safe.metrics import category_table


class CategoryTables(Callback):
    """Write the per-category table of each validation and test run to TensorBoard."""

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.write(trainer, pl_module, "val")

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.write(trainer, pl_module, "test")

    def write(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Write ``<stage>/per_category`` from the module's last values of ``stage``, if it has per-category ones."""
        values = getattr(pl_module, "epoch_metrics", {}).get(stage)
        if not trainer.is_global_zero or values is None or "support" not in values:
            return
        table = category_table(pl_module.hparams.categories, values)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_text(f"{stage}/per_category", table, pl_module.global_step)


__all__ = ["CategoryTables"]
