"""VideoRewardModule and VideoCostModule: SafeSora's text-video preference models, in Lightning.

Both train a score-head :class:`~lit_safe.models.video_text.VideoTextModel` (dual encoder + fusion transformer) on
pairs of videos generated for one prompt; both videos of a pair are scored in one forward pass of batch 2B, the
prompt encoded once.

- :class:`VideoRewardModule` reads the ``preference`` view (first video = preferred along the data module's
  dimension: helpfulness, harmlessness, safety_first, a sub-preference, ...) and minimises SafeSora's loss
  ``-log sigmoid(s_first - s_second) + l2_coeff * mean(s^2)`` (:func:`lit_safe.losses.sequence_preference_loss`;
  the released SafeSora models use ``l2_coeff = 0.001``). Metrics: ``loss``, ``accuracy``, ``reward_mean``,
  ``reward_std``, ``reward_margin``.
- :class:`VideoCostModule` reads the ``safety`` view (first video = the less safe one by ``harmlessness``) and
  minimises the Safe RLHF cost loss with the sign term masked where a video has no ``is_safe`` label (sign 0),
  which SafeSora videos may lack (:func:`lit_safe.losses.masked_cost_preference_loss`). Convention: **cost > 0 means
  unsafe**; the exported config says so (``cost_sign``). Metrics: ``loss``, ``accuracy``, ``accuracy_sign`` (over
  labelled videos), ``cost_mean``, ``cost_std``, ``cost_safe_mean``, ``cost_unsafe_mean``.

Metrics are logged as ``train/...``, ``val/...``, ``test/...`` like the text reward and cost modules. Departure from
SafeSora (methods.md section 3.2): the released "cost" model is a plain Bradley-Terry harmlessness model; here the
Safe RLHF sign term is added where labels exist (``sign_coeff: 0`` gives SafeSora's loss).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lit_safe.losses import masked_cost_preference_loss, preference_accuracy, sequence_preference_loss
from lit_safe.metrics import CostStats, ScoreStats, labelled_sign_hits
from lit_safe.models.score_model import export_score_model
from lit_safe.models.video_text import VideoTextModel, build_video_text_model, video_pair_scores
from lit_safe.modules.base import StageStatsModule, VideoTextTrainer, check_hparams
from lit_safe.optim import OptimizerSettings

#: the text reward and cost models' AdamW settings (Safe RLHF's reference scripts)
DEFAULT_OPTIMIZER = OptimizerSettings(weight_decay=0.1)


# ------------------------------------------------------------------------------------------------------ modules
class VideoScoreModule(VideoTextTrainer, StageStatsModule):
    """What the video reward and cost trainers share: hyperparameters, the model, the frame settings of the data and
    export. Subclasses set ``score_type``, the data ``views`` they train on, their stats (:meth:`make_stats`) and the
    steps.

    Args:
        l2_coeff: weight of the L2 term on scores (SafeSora: 0.001).
        optimizer: AdamW, its learning-rate schedule and gradient clipping (defaults: the text score models').
        **kwargs: the video model's arguments, as :class:`~lit_safe.modules.base.VideoTextTrainer`, and the arguments
            every trainer takes, as :class:`~lit_safe.modules.base.BackboneModule`.
    """

    model: VideoTextModel | None
    score_type = "reward"
    views = ("preference",)
    step_metrics = ("loss", "accuracy", "accuracy_sign")

    def __init__(self, *, l2_coeff: float = 1e-3, optimizer: OptimizerSettings = DEFAULT_OPTIMIZER,
                 **kwargs: Any) -> None:
        check_hparams(type(self).__name__, non_negative={"l2_coeff": l2_coeff})
        super().__init__(optimizer=optimizer, **kwargs)
        # One metric holder per stage (a ModuleDict cannot have a key named "train": nn.Module.train exists).
        self.train_stats, self.val_stats, self.test_stats = self.make_stats(), self.make_stats(), self.make_stats()

    def make_stats(self) -> ScoreStats | CostStats:
        """One stage's statistics."""
        return ScoreStats(self.score_type)

    # ------------------------------------------------------------------------------------------------- model
    def configure_model(self) -> None:
        if self.model is not None:
            return
        self.model = build_video_text_model(self.hparams.backbone, self.tokenizer, "score", score_type=self.score_type,
                                            **self.video_model_arguments())
        self.shard(self.model)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, frames: Tensor) -> Tensor:
        """Scores ``(N,)`` of (prompt, video) pairs (see :meth:`VideoTextModel.forward`)."""
        return self.model(input_ids, attention_mask, frames).scores

    def pair_scores(self, batch: dict) -> tuple[Tensor, Tensor]:
        """Scores of the first and the second video of every pair: ``((B,), (B,))``."""
        first, second, _ = video_pair_scores(self.model, batch)
        return first, second

    # ------------------------------------------------------------------------------------------------ export
    def export_pretrained(self, path: str | Path) -> Path | None:
        """Write the model in the Hugging Face format (config with a ``lit_safe_video`` entry, safetensors,
        tokenizer). Call on every rank."""
        return export_score_model(self.model, self.tokenizer, path, root=self.export_root(), prefix="model.")


class VideoRewardModule(VideoScoreModule):
    """Train a text-video reward model on the ``preference`` view (first video preferred); arguments as
    :class:`VideoScoreModule`."""

    score_type = "reward"
    views = ("preference",)  # the first video of a pair is the preferred one

    def model_step(self, batch: dict) -> tuple[Tensor, Tensor, Tensor]:
        """Loss and the scores of the preferred and the other videos."""
        if "frames" not in batch:
            raise ValueError("VideoRewardModule needs video pair batches (SafeSoraDataModule view: preference)")
        chosen, rejected = self.pair_scores(batch)
        return sequence_preference_loss(chosen, rejected, self.hparams.l2_coeff), chosen, rejected

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        loss, chosen, rejected = self.model_step(batch)
        self.train_stats.update(loss, chosen, rejected)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/accuracy", preference_accuracy(chosen, rejected), prog_bar=True)
        return loss

    def evaluation_step(self, batch: dict, batch_idx: int, stats: ScoreStats) -> None:
        loss, chosen, rejected = self.model_step(batch)
        stats.update(loss, chosen, rejected)

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, Tensor]:
        """Per video of a ``predict_file`` line: ``reward``; per pair of a prepared split: both scores."""
        if "line" in batch:
            return {"line": batch["line"], "reward": self(batch["input_ids"], batch["attention_mask"], batch["frames"])}
        chosen, rejected = self.pair_scores(batch)
        return {"row": batch["row"], "chosen_score": chosen, "rejected_score": rejected}


class VideoCostModule(VideoScoreModule):
    """Train a text-video cost model (cost > 0 = unsafe) on the ``safety`` view (first video = the less safe one).

    Args:
        sign_coeff: weight of the safety-sign term (0: SafeSora's plain Bradley-Terry harmlessness loss).
        **kwargs: as :class:`VideoScoreModule`.
    """

    score_type = "cost"
    views = ("safety",)  # the first video of a pair is the less safe one

    def __init__(self, *, sign_coeff: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)

    def make_stats(self) -> CostStats:
        """One stage's statistics; ``accuracy_sign`` over the videos with a safety label."""
        return CostStats(unlabelled_signs=True)

    def model_step(self, batch: dict) -> tuple[Tensor, Tensor, Tensor]:
        """Loss and the costs of the less safe and the safer videos."""
        if "first_sign" not in batch or "frames" not in batch:
            raise ValueError("VideoCostModule needs video pair batches with safety signs (SafeSoraDataModule view: "
                             "safety)")
        unsafer, safer = self.pair_scores(batch)
        loss = masked_cost_preference_loss(unsafer, safer, batch["first_sign"], batch["second_sign"],
                                           self.hparams.l2_coeff, self.hparams.sign_coeff)
        return loss, unsafer, safer

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        loss, unsafer, safer = self.model_step(batch)
        self.train_stats.update(loss, unsafer, safer, batch["first_sign"], batch["second_sign"])
        hit, labelled = labelled_sign_hits(torch.cat([unsafer, safer]).detach(),
                                           torch.cat([batch["first_sign"], batch["second_sign"]]))
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/accuracy", preference_accuracy(unsafer, safer), prog_bar=True)
        if labelled.sum() > 0:
            self.log("train/accuracy_sign", hit.sum() / labelled.sum(), prog_bar=True,
                     batch_size=int(labelled.sum()))
        return loss

    def evaluation_step(self, batch: dict, batch_idx: int, stats: CostStats) -> None:
        loss, unsafer, safer = self.model_step(batch)
        stats.update(loss, unsafer, safer, batch["first_sign"], batch["second_sign"])

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, Tensor]:
        """Per video of a ``predict_file`` line: ``cost`` and ``safe`` (cost <= 0); per pair of a prepared split:
        both costs and both safety decisions."""
        if "line" in batch:
            cost = self(batch["input_ids"], batch["attention_mask"], batch["frames"])
            return {"line": batch["line"], "cost": cost, "safe": cost <= 0}
        unsafer, safer = self.pair_scores(batch)
        return {"row": batch["row"], "unsafer_cost": unsafer, "safer_cost": safer,
                "unsafer_safe": unsafer <= 0, "safer_safe": safer <= 0}


__all__ = ["VideoCostModule", "VideoRewardModule", "VideoScoreModule"]
