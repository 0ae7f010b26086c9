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

from pathlib import Path
from typing import Literal

import torch
from torchmetrics import MeanMetric

from lit_safe.losses import cost_preference_loss, preference_accuracy, sign_accuracy
from lit_safe.models.score_model import ScoreModel, build_score_model, export_score_model, score_pairs
from lit_safe.models.tokenizer import load_tokenizer
from lit_safe.modules.base import BackboneModule, check_hparams, check_max_nonfinite_steps

COST_SIGN = "positive means unsafe"


class CostStats(torch.nn.Module):
    """Running means of one stage's cost metrics (synchronised across ranks by torchmetrics)."""

    def __init__(self) -> None:
        super().__init__()
        self.loss, self.accuracy, self.accuracy_sign = MeanMetric(), MeanMetric(), MeanMetric()
        self.cost, self.cost_sq, self.safe, self.unsafe = MeanMetric(), MeanMetric(), MeanMetric(), MeanMetric()
        for metric in self.children():
            metric.persistent(True)  # saved in checkpoints: a run resumed mid-epoch reports the whole epoch

    def update(self, loss, unsafer, safer, unsafer_sign, safer_sign) -> None:
        costs, signs = torch.cat([unsafer, safer]).detach(), torch.cat([unsafer_sign, safer_sign])
        self.loss.update(loss.detach())
        self.accuracy.update(preference_accuracy(unsafer, safer), weight=unsafer.numel())
        self.accuracy_sign.update(sign_accuracy(costs, signs), weight=costs.numel())
        self.cost.update(costs)
        self.cost_sq.update(costs.pow(2))
        # weight 0 where a response is of the other kind, so a batch without safe (or unsafe) ones adds nothing
        self.safe.update(costs, weight=(signs < 0).to(costs.dtype))
        self.unsafe.update(costs, weight=(signs > 0).to(costs.dtype))

    def compute(self) -> dict[str, torch.Tensor]:
        mean = self.cost.compute()
        return {
            "loss": self.loss.compute(),
            "accuracy": self.accuracy.compute(),
            "accuracy_sign": self.accuracy_sign.compute(),
            "cost_mean": mean,
            "cost_std": (self.cost_sq.compute() - mean.pow(2)).clamp_min(0).sqrt(),
            "cost_safe_mean": self.safe.compute(),
            "cost_unsafe_mean": self.unsafe.compute(),
        }

    def reset(self) -> None:
        for metric in self.children():
            metric.reset()


class CostModule(BackboneModule):
    """Train a cost model on (less safe, safer) pairs with safety signs (the data module's ``safety`` view).

    Args:
        backbone: preset (``tiny``, ``small``), hub id or local path of the initial model (usually the SFT model),
            or a saved score model to continue from.
        revision: hub revision of the backbone.
        dtype: parameter dtype (``float32``; use ``bfloat16`` only with ``precision: bf16-true``).
        l2_coeff: weight of the L2 term on costs (eta).
        lr: peak learning rate.
        weight_decay: AdamW weight decay (not applied to biases and norms).
        betas: AdamW betas.
        warmup_ratio: share of the optimiser steps spent warming up linearly.
        lr_schedule: ``cosine`` or ``constant`` after warm-up.
        max_grad_norm: clip gradients to this global norm (``None``: measure only).
        normalize_scores: scale costs by their running standard deviation (the sign is kept).
        normalizer_momentum: ``None`` for exact running statistics, or an EMA momentum.
        gradient_checkpointing: recompute activations in backward (for big models).
        max_nonfinite_steps: optimiser steps in a row whose loss or gradient norm is not finite (each is skipped)
            before training stops with an error.
    """

    score_type = "cost"

    def __init__(
        self,
        backbone: str = "tiny",
        revision: str | None = None,
        dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        l2_coeff: float = 1e-3,
        lr: float = 2e-5,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_ratio: float = 0.03,
        lr_schedule: Literal["cosine", "constant"] = "cosine",
        max_grad_norm: float | None = 1.0,
        normalize_scores: bool = False,
        normalizer_momentum: float | None = None,
        gradient_checkpointing: bool = False,
        max_nonfinite_steps: int = 3,
    ) -> None:
        super().__init__()
        check_hparams(type(self).__name__, positive={"max_grad_norm": max_grad_norm},
                      non_negative={"lr": lr, "weight_decay": weight_decay, "l2_coeff": l2_coeff,
                                    "warmup_ratio": warmup_ratio})
        check_max_nonfinite_steps(type(self).__name__, max_nonfinite_steps)
        self.save_hyperparameters()
        self.tokenizer = load_tokenizer(backbone, revision=revision)
        self.model: ScoreModel | None = None
        self.train_stats, self.val_stats, self.test_stats = CostStats(), CostStats(), CostStats()

    # ------------------------------------------------------------------------------------------------- model
    def configure_model(self) -> None:
        if self.model is not None:
            return
        hp = self.hparams
        self.model = build_score_model(
            hp.backbone,
            self.tokenizer,
            self.score_type,
            dtype=hp.dtype,
            revision=hp.revision,
            do_normalize=hp.normalize_scores,
            normalizer_momentum=hp.normalizer_momentum,
            gradient_checkpointing=hp.gradient_checkpointing,
        )
        self.shard(self.model)

    # ------------------------------------------------------------------------------------------------- steps
    def costs(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, object]:
        """End costs of the less safe and the safer responses of a safety batch, unpacked or packed."""
        return score_pairs(self.model, batch)

    def model_step(self, batch: dict):
        if "unsafer_sign" not in batch:
            raise ValueError("CostModule needs the data module's 'safety' view (batches with safety signs)")
        unsafer, safer, out = self.costs(batch)
        loss = cost_preference_loss(unsafer, safer, batch["unsafer_sign"], batch["safer_sign"], self.hparams.l2_coeff)
        return loss, unsafer, safer, out.raw_end_scores

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, unsafer, safer, raw = self.model_step(batch)
        # Statistics of the raw scores on every rank, kept (and exported) whether or not they are applied; a batch
        # with a non-finite score (a step the base module will skip) would make them NaN for good.
        gathered = self.all_gather(raw.detach())
        if bool(torch.isfinite(gathered).all()):
            self.model.normalizer.update(gathered)
        self.train_stats.update(loss, unsafer, safer, batch["unsafer_sign"], batch["safer_sign"])
        signs = torch.cat([batch["unsafer_sign"], batch["safer_sign"]])
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/accuracy", preference_accuracy(unsafer, safer), prog_bar=True)
        self.log("train/accuracy_sign", sign_accuracy(torch.cat([unsafer, safer]), signs), prog_bar=True)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        loss, unsafer, safer, _ = self.model_step(batch)
        self.val_stats.update(loss, unsafer, safer, batch["unsafer_sign"], batch["safer_sign"])

    def test_step(self, batch: dict, batch_idx: int) -> None:
        loss, unsafer, safer, _ = self.model_step(batch)
        self.test_stats.update(loss, unsafer, safer, batch["unsafer_sign"], batch["safer_sign"])

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        """Per response of a ``predict_file`` line: ``cost`` and ``safe`` (cost <= 0); per pair of a prepared
        split: both costs and both safety decisions."""
        if "line" in batch:
            cost = self.model(batch["input_ids"], batch["attention_mask"]).end_scores
            return {"line": batch["line"], "cost": cost, "safe": cost <= 0}
        unsafer, safer, _ = self.costs(batch)
        return {"row": batch["row"], "unsafer_cost": unsafer, "safer_cost": safer,
                "unsafer_safe": unsafer <= 0, "safer_safe": safer <= 0}

    def _log_epoch(self, stage: str) -> None:
        stats = getattr(self, f"{stage}_stats")
        values = stats.compute()
        if stage == "train":  # loss and accuracies are logged per step during training
            values = {k: v for k, v in values.items() if k not in ("loss", "accuracy", "accuracy_sign")}
        self.log_dict({f"{stage}/{k}": v for k, v in values.items()}, prog_bar=stage == "val", sync_dist=True)
        stats.reset()

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    # ------------------------------------------------------------------------------------------------ export
    def export_pretrained(self, path: str | Path) -> Path | None:
        """Write the model in the Hugging Face format, the cost sign convention in its config. Call on every rank."""
        return export_score_model(self.model, self.tokenizer, path, root=self.export_root(), prefix="model.",
                                  cost_sign=COST_SIGN)
