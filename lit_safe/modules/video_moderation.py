"""VideoModerationModule: a text-video (prompt + generated video) harm classifier on SafeSora-Label, in Lightning.

Trains a moderation-head :class:`~lit_safe.models.video_text.VideoTextModel` on the ``moderation`` view of the
SafeSora data module: one item per labelled video, 12 harm categories (porn, violence, hate, terrorism, contraband,
controversial, racism, other_discrimination, animal_abuse, child_abuse, crime, other_harmful) and an overall unsafe
flag, no severity. The moderation judges the *pair*: a risky prompt with a harmless video need not be flagged
(methods.md section 3.3).

Loss (:func:`lit_safe.losses.moderation_loss`, as the text :class:`~lit_safe.modules.moderation.ModerationModule`;
what the two trainers share is :class:`~lit_safe.modules.base.ModerationTrainer`):
multi-label BCE over categories with per-class ``pos_weight`` (negatives / positives in the training split, capped at
``max_pos_weight``) plus BCE on the unsafe flag. Decision (:func:`lit_safe.models.moderation_model.flag_decisions`):
``flag_rule: unsafe`` flags at P(unsafe) >= ``flag_threshold``; ``categories`` flags when a category reaches its own
threshold (``category_thresholds``: one number or ``{category: threshold}``). The rule is saved with the exported
model.

Metrics (``val/...``, ``test/...``, at the rule's decisions, from :class:`~lit_safe.metrics.ModerationStats`):
``loss``, ``accuracy`` (safe/unsafe), ``fpr_safe`` (safe videos flagged), ``recall_unsafe``, ``auroc_unsafe``,
``macro_f1``, ``f1/<category>``, ``auroc/<category>``; the callback
:class:`lit_safe.callbacks.category_tables.CategoryTables` writes a per-category table as TensorBoard text. Training
logs the loss, its parts and the accuracy per step.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from lit_safe.losses import moderation_loss
from lit_safe.models.moderation_model import ModerationOutput
from lit_safe.models.video_text import VideoTextModel, build_video_text_model
from lit_safe.modules.base import ModerationTrainer, VideoTextTrainer
from lit_safe.optim import OptimizerSettings

#: the text moderation trainer's AdamW settings: weight decay 0.01, betas (0.9, 0.999), 6% warm-up
DEFAULT_OPTIMIZER = OptimizerSettings(weight_decay=0.01, betas=(0.9, 0.999), warmup_ratio=0.06)


class VideoModerationModule(VideoTextTrainer, ModerationTrainer):
    """Train a text-video moderation classifier on the ``moderation`` view of the SafeSora data module.

    Args:
        flag_rule: ``unsafe`` or ``categories`` (see the module docstring).
        flag_threshold: probability threshold of the ``unsafe`` rule.
        optimizer: AdamW, its learning-rate schedule and gradient clipping (defaults: ``DEFAULT_OPTIMIZER``).
        **kwargs: the video model's arguments, as :class:`~lit_safe.modules.base.VideoTextTrainer`, the categories
            and their weights and thresholds, as :class:`~lit_safe.modules.base.ModerationTrainer`, and the arguments
            every trainer takes, as :class:`~lit_safe.modules.base.BackboneModule`.
    """

    model: VideoTextModel | None
    loss_parts = ("category", "unsafe")  # SafeSora labels have no severity
    log_flag_rates = False

    def __init__(
        self,
        *,
        flag_rule: Literal["unsafe", "categories"] = "unsafe",
        flag_threshold: float = 0.5,
        optimizer: OptimizerSettings = DEFAULT_OPTIMIZER,
        **kwargs: Any,
    ) -> None:
        super().__init__(optimizer=optimizer, **kwargs)

    # ------------------------------------------------------------------------------------------------- labels
    def setup(self, stage: str) -> None:
        """Check the tokenizer and the view; take ``num_frames``, ``frame_size`` and the categories from the data
        module (and check the categories against a checkpoint's), then :meth:`prepare_labels` (decision rule,
        ``pos_weight``, stats)."""
        super().setup(stage)
        datamodule = self.datamodule
        theirs = getattr(datamodule, "categories", None) or getattr(getattr(datamodule, "view", None), "categories",
                                                                     None)
        if theirs is not None:
            self.take_data_label("categories", list(theirs))
        if self.hparams.categories is None:
            raise ValueError("VideoModerationModule needs categories (or a data module with view: moderation)")
        self.prepare_labels(stage, 0)

    def decision_config(self) -> dict:
        """The decision rule of this run's hyperparameters (the exported model carries it)."""
        hp = self.hparams
        return {"flag_rule": hp.flag_rule, "flag_threshold": hp.flag_threshold,
                "category_thresholds": dict(zip(hp.categories, self.category_thresholds().tolist()))}

    # ------------------------------------------------------------------------------------------------- model
    def build_model(self) -> VideoTextModel:
        return build_video_text_model(self.hparams.backbone, self.tokenizer, "moderation",
                                      categories=self.hparams.categories, decision=self.decision_config(),
                                      **self.video_model_arguments())

    # ------------------------------------------------------------------------------------------------- steps
    def classify(self, batch: dict) -> ModerationOutput:
        return self.model(batch["input_ids"], batch["attention_mask"], batch["frames"])

    def model_step(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor], ModerationOutput]:
        """The loss of a batch, its parts and the model's output."""
        if "categories" not in batch or "frames" not in batch:
            raise ValueError("VideoModerationModule needs the SafeSora data module's 'moderation' view (batches with "
                             "frames and categories)")
        out = self.classify(batch)
        loss, parts = moderation_loss(out.category_logits, batch["categories"], out.unsafe_logits, batch["unsafe"],
                                      self.pos_weight_on(out.category_logits.device))
        return loss, parts, out


__all__ = ["VideoModerationModule"]
