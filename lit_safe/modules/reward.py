"""RewardModule: the helpfulness reward model of Safe RLHF (Dai et al., arXiv 2310.12773), in Lightning.

A :class:`~lit_safe.models.score_model.ScoreModel` trained with the Bradley-Terry loss on (better, worse)
response pairs (``better_response_id`` of PKU-SafeRLHF), plus an L2 term that keeps scores near 0; sequence-wise
(end scores, the default) or token-wise (every token from the first differing one). Better and worse sequences
run in one forward pass of batch 2B. Metrics per stage: ``loss``, ``accuracy``, ``reward_mean``, ``reward_std``
and ``reward_margin`` (``train/...``, ``val/...``, ``test/...``).

Defaults follow the reference scripts (lr 2e-5, weight decay 0.1, AdamW betas (0.9, 0.95), cosine schedule with
3% warm-up, gradient clip 1.0, L2 1e-3). Departure: gradients are clipped here rather than by the Trainer, since
Lightning refuses norm clipping under FSDP1; leave ``trainer.gradient_clip_val`` unset.
The math is in :mod:`lit_safe.losses`; this file only wires it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from torchmetrics import MeanMetric

from lit_safe.losses import divergence_index, preference_accuracy, sequence_preference_loss, token_preference_loss
from lit_safe.models.score_model import ScoreModel, build_score_model, export_score_model, score_pairs
from lit_safe.models.tokenizer import load_tokenizer
from lit_safe.modules.base import BackboneModule, check_hparams, check_max_nonfinite_steps


class ScoreStats(torch.nn.Module):
    """Running means of loss, accuracy, scores, squared scores and margins for one stage (sync across ranks)."""

    def __init__(self) -> None:
        super().__init__()
        self.loss, self.accuracy = MeanMetric(), MeanMetric()
        self.score, self.score_sq, self.margin = MeanMetric(), MeanMetric(), MeanMetric()
        for metric in (self.loss, self.accuracy, self.score, self.score_sq, self.margin):
            metric.persistent(True)  # saved in checkpoints: a run resumed mid-epoch reports the whole epoch

    def update(self, loss: torch.Tensor, chosen: torch.Tensor, rejected: torch.Tensor) -> None:
        scores = torch.cat([chosen, rejected]).detach()
        self.loss.update(loss.detach())
        self.accuracy.update(preference_accuracy(chosen, rejected), weight=chosen.numel())
        self.score.update(scores)
        self.score_sq.update(scores.pow(2))
        self.margin.update((chosen - rejected).detach())

    def compute(self, name: str) -> dict[str, torch.Tensor]:
        mean = self.score.compute()
        std = (self.score_sq.compute() - mean.pow(2)).clamp_min(0).sqrt()
        return {
            "loss": self.loss.compute(),
            "accuracy": self.accuracy.compute(),
            f"{name}_mean": mean,
            f"{name}_std": std,
            f"{name}_margin": self.margin.compute(),
        }

    def reset(self) -> None:
        for metric in (self.loss, self.accuracy, self.score, self.score_sq, self.margin):
            metric.reset()


class RewardModule(BackboneModule):
    """Train a reward model on preference pairs.

    Args:
        backbone: preset (``tiny``, ``small``), hub id or local path of the initial model (usually the SFT model),
            or a saved score model to continue from.
        revision: hub revision of the backbone.
        dtype: parameter dtype (``float32``; use ``bfloat16`` only with ``precision: bf16-true``).
        loss_type: ``sequence`` (end scores) or ``token`` (every token from the first differing one).
        l2_coeff: weight of the L2 term on scores (eta).
        lr: peak learning rate.
        weight_decay: AdamW weight decay (not applied to biases and norms).
        betas: AdamW betas.
        warmup_ratio: share of the optimiser steps spent warming up linearly.
        lr_schedule: ``cosine`` or ``constant`` after warm-up.
        max_grad_norm: clip gradients to this global norm (``None``: measure only).
        normalize_scores: normalise the model's scores with running statistics (kept and exported either way).
        normalizer_momentum: ``None`` for exact running statistics, or an EMA momentum.
        gradient_checkpointing: recompute activations in backward (for big models).
        max_nonfinite_steps: optimiser steps in a row whose loss or gradient norm is not finite (each is skipped)
            before training stops with an error.
    """

    score_type = "reward"

    def __init__(
        self,
        backbone: str = "tiny",
        revision: str | None = None,
        dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        loss_type: Literal["sequence", "token"] = "sequence",
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
        if loss_type not in ("sequence", "token"):
            raise ValueError(f"loss_type must be 'sequence' or 'token', got {loss_type!r}")
        self.save_hyperparameters()
        self.tokenizer = load_tokenizer(backbone, revision=revision)
        self.model: ScoreModel | None = None
        # One metric holder per stage (a ModuleDict cannot have a key named "train": nn.Module.train exists).
        self.train_stats, self.val_stats, self.test_stats = ScoreStats(), ScoreStats(), ScoreStats()

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

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        return self.model(input_ids, attention_mask)

    # ------------------------------------------------------------------------------------------------- steps
    def scores(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, object]:
        """End scores of the chosen and rejected responses of a preference batch, unpacked or packed.

        Returns:
            ``(chosen (B,), rejected (B,), the model output)``.
        """
        return score_pairs(self.model, batch)

    def model_step(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Loss, end scores of the chosen and rejected responses, and the raw (unnormalised) end scores."""
        if self.hparams.loss_type == "token" and "pair_attention" in batch:
            raise ValueError("loss_type 'token' needs unpacked pairs: set the data module's pack_pairs to false")
        chosen, rejected, out = self.scores(batch)
        if self.hparams.loss_type == "sequence":
            loss = sequence_preference_loss(chosen, rejected, self.hparams.l2_coeff)
        else:
            c_ids, r_ids = batch["input_ids"].chunk(2)
            c_mask, r_mask = batch["attention_mask"].chunk(2)
            c_scores, r_scores = out.scores.chunk(2)
            c_end, r_end = out.end_index.chunk(2)
            diverge = divergence_index(c_ids, r_ids, c_mask, r_mask)
            loss = token_preference_loss(c_scores, r_scores, c_end, r_end, diverge, self.hparams.l2_coeff)
        return loss, chosen, rejected, out.raw_end_scores

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, chosen, rejected, raw = self.model_step(batch)
        # Statistics of the raw scores on every rank, kept (and exported) whether or not they are applied; a batch
        # with a non-finite score (a step the base module will skip) would make them NaN for good.
        gathered = self.all_gather(raw.detach())
        if bool(torch.isfinite(gathered).all()):
            self.model.normalizer.update(gathered)
        self.train_stats.update(loss, chosen, rejected)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/accuracy", preference_accuracy(chosen, rejected), prog_bar=True)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        loss, chosen, rejected, _ = self.model_step(batch)
        self.val_stats.update(loss, chosen, rejected)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        loss, chosen, rejected, _ = self.model_step(batch)
        self.test_stats.update(loss, chosen, rejected)

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        """Per response of a ``predict_file`` line: ``reward``; per pair of a prepared split: both scores."""
        if "line" in batch:
            return {"line": batch["line"], "reward": self.model(batch["input_ids"], batch["attention_mask"]).end_scores}
        chosen, rejected, _ = self.scores(batch)
        return {"row": batch["row"], "chosen_score": chosen, "rejected_score": rejected}

    def _log_epoch(self, stage: str) -> None:
        values = getattr(self, f"{stage}_stats").compute(self.score_type)
        if stage == "train":  # loss and accuracy are logged per step during training
            values = {k: v for k, v in values.items() if k not in ("loss", "accuracy")}
        # The metrics are already reduced across ranks by torchmetrics; sync_dist only keeps Lightning consistent.
        self.log_dict({f"{stage}/{k}": v for k, v in values.items()}, prog_bar=stage == "val", sync_dist=True)
        getattr(self, f"{stage}_stats").reset()

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    # ------------------------------------------------------------------------------------------------ export
    def export_pretrained(self, path: str | Path) -> Path | None:
        """Write the model in the Hugging Face format (config, safetensors, tokenizer). Call on every rank."""
        return export_score_model(self.model, self.tokenizer, path, root=self.export_root(), prefix="model.")
