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

from typing import Any, Literal

import torch

from lit_safe.losses import divergence_index, preference_accuracy, sequence_preference_loss, token_preference_loss
from lit_safe.metrics import ScoreStats
from lit_safe.modules.base import ScoreTrainer
from lit_safe.optim import OptimizerSettings

#: the reference script's AdamW settings (see the module docstring)
DEFAULT_OPTIMIZER = OptimizerSettings(weight_decay=0.1)


class RewardModule(ScoreTrainer):
    """Train a reward model on preference pairs. Its ``backbone`` is the initial model (usually the SFT model) or a
    saved score model to continue from.

    Args:
        loss_type: ``sequence`` (end scores) or ``token`` (every token from the first differing one).
        optimizer: AdamW, its learning-rate schedule and gradient clipping (defaults: the reference script's).
        **kwargs: ``l2_coeff`` and the score normaliser's settings, as :class:`~lit_safe.modules.base.ScoreTrainer`,
            and the arguments every trainer takes, as :class:`~lit_safe.modules.base.BackboneModule`.
    """

    score_type = "reward"
    views = ("preference",)  # the first response of a pair is the better one
    step_metrics = ("loss", "accuracy")

    def __init__(
        self,
        *,
        loss_type: Literal["sequence", "token"] = "sequence",
        optimizer: OptimizerSettings = DEFAULT_OPTIMIZER,
        **kwargs: Any,
    ) -> None:
        if loss_type not in ("sequence", "token"):
            raise ValueError(f"loss_type must be 'sequence' or 'token', got {loss_type!r}")
        super().__init__(optimizer=optimizer, **kwargs)

    # ------------------------------------------------------------------------------------------------- model
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        return self.model(input_ids, attention_mask)

    # ------------------------------------------------------------------------------------------------- steps
    def model_step(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Loss, end scores of the chosen and rejected responses, and the raw (unnormalised) end scores."""
        if self.hparams.loss_type == "token" and "pair_attention" in batch:
            raise ValueError("loss_type 'token' needs unpacked pairs: set the data module's pack_pairs to false")
        chosen, rejected, out = self.pair_scores(batch)
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
        self.update_normalizer(raw)
        self.train_stats.update(loss, chosen, rejected)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/accuracy", preference_accuracy(chosen, rejected), prog_bar=True)
        return loss

    def evaluation_step(self, batch: dict, batch_idx: int, stats: ScoreStats) -> None:
        loss, chosen, rejected, _ = self.model_step(batch)
        stats.update(loss, chosen, rejected)

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        """Per response of a ``predict_file`` line: ``reward``; per pair of a prepared split: both scores."""
        if "line" in batch:
            return {"line": batch["line"], "reward": self.model(batch["input_ids"], batch["attention_mask"]).end_scores}
        chosen, rejected, _ = self.pair_scores(batch)
        return {"row": batch["row"], "chosen_score": chosen, "rejected_score": rejected}
