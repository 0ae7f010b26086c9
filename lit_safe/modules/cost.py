"""CostModule: the harmlessness cost model of Safe RLHF (Dai et al., arXiv 2310.12773), in Lightning.

Convention, the one the whole Safe RLHF method depends on: **cost > 0 means unsafe, cost < 0 means safe**. A
:class:`~lit_safe.models.score_model.ScoreModel` with ``score_type="cost"`` (its normaliser only scales, so the sign
survives) is trained on (less safe, safer) pairs of the ``safety`` view (``safer_response_id``) with the pairwise
Bradley-Terry term, a safety-sign classification term from ``is_response_k_safe`` (+1 unsafe, -1 safe) and an L2
term (:func:`lit_safe.losses.cost_preference_loss`). The exported model's config carries ``score_type: cost`` and
``cost_sign: "positive means unsafe"``.

Metrics per stage (``train/...``, ``val/...``, ``test/...``): ``loss``, ``accuracy`` (the less safe response costs
more), ``accuracy_sign`` (over both responses, the cost has the sign of the label), ``cost_mean``, ``cost_std``,
``cost_safe_mean`` and ``cost_unsafe_mean``. Defaults follow the reference scripts, as for the reward model.
Departure: only the sequence-wise loss (the reference's token-wise cost variant is not implemented).
"""

from __future__ import annotations

from typing import Any

import torch

from lit_safe.losses import cost_preference_loss, preference_accuracy, sign_accuracy
from lit_safe.metrics import CostStats
from lit_safe.modules.base import ScoreTrainer
from lit_safe.optim import OptimizerSettings

COST_SIGN = "positive means unsafe"

#: the reference script's AdamW settings, those of the reward model
DEFAULT_OPTIMIZER = OptimizerSettings(weight_decay=0.1)


class CostModule(ScoreTrainer):
    """Train a cost model on (less safe, safer) pairs with safety signs (the data module's ``safety`` view). Its
    ``backbone`` is the initial model (usually the SFT model) or a saved score model to continue from.

    Args:
        optimizer: AdamW, its learning-rate schedule and gradient clipping (defaults: the reference script's).
        **kwargs: ``l2_coeff`` (the L2 term on costs) and the normaliser's settings (it scales costs by their running
            standard deviation), as :class:`~lit_safe.modules.base.ScoreTrainer`, and the arguments every trainer
            takes, as :class:`~lit_safe.modules.base.BackboneModule`.
    """

    score_type = "cost"
    views = ("safety",)  # the first response of a pair is the less safe one
    step_metrics = ("loss", "accuracy", "accuracy_sign")

    def __init__(self, *, optimizer: OptimizerSettings = DEFAULT_OPTIMIZER, **kwargs: Any) -> None:
        super().__init__(optimizer=optimizer, **kwargs)

    def make_stats(self) -> CostStats:
        """One stage's statistics."""
        return CostStats()

    # ------------------------------------------------------------------------------------------------- steps
    def model_step(self, batch: dict):
        if "unsafer_sign" not in batch:
            raise ValueError("CostModule needs the data module's 'safety' view (batches with safety signs)")
        unsafer, safer, out = self.pair_scores(batch)
        loss = cost_preference_loss(unsafer, safer, batch["unsafer_sign"], batch["safer_sign"], self.hparams.l2_coeff)
        return loss, unsafer, safer, out.raw_end_scores

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, unsafer, safer, raw = self.model_step(batch)
        self.update_normalizer(raw)
        self.train_stats.update(loss, unsafer, safer, batch["unsafer_sign"], batch["safer_sign"])
        signs = torch.cat([batch["unsafer_sign"], batch["safer_sign"]])
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/accuracy", preference_accuracy(unsafer, safer), prog_bar=True)
        self.log("train/accuracy_sign", sign_accuracy(torch.cat([unsafer, safer]), signs), prog_bar=True)
        return loss

    def evaluation_step(self, batch: dict, batch_idx: int, stats: CostStats) -> None:
        loss, unsafer, safer, _ = self.model_step(batch)
        stats.update(loss, unsafer, safer, batch["unsafer_sign"], batch["safer_sign"])

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        """Per response of a ``predict_file`` line: ``cost`` and ``safe`` (cost <= 0); per pair of a prepared
        split: both costs and both safety decisions."""
        if "line" in batch:
            cost = self.model(batch["input_ids"], batch["attention_mask"]).end_scores
            return {"line": batch["line"], "cost": cost, "safe": cost <= 0}
        unsafer, safer, _ = self.pair_scores(batch)
        return {"row": batch["row"], "unsafer_cost": unsafer, "safer_cost": safer,
                "unsafer_safe": unsafer <= 0, "safer_safe": safer <= 0}

    # ------------------------------------------------------------------------------------------------ export
    def export_config(self) -> dict:
        """The cost sign convention, in the exported ``config.json``."""
        return {"cost_sign": COST_SIGN}
