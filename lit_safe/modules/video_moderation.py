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

from typing import Literal

import torch

from lit_safe.losses import moderation_loss
from lit_safe.models.moderation_model import ModerationOutput
from lit_safe.models.tokenizer import load_tokenizer
from lit_safe.models.video_text import VideoTextModel, build_video_text_model
from lit_safe.modules.base import ModerationTrainer, take_video_settings, video_model_arguments
from lit_safe.optim import OptimizerSettings

#: the text moderation trainer's AdamW settings: weight decay 0.01, betas (0.9, 0.999), 6% warm-up
DEFAULT_OPTIMIZER = OptimizerSettings(weight_decay=0.01, betas=(0.9, 0.999), warmup_ratio=0.06)


class VideoModerationModule(ModerationTrainer):
    """Train a text-video moderation classifier on the ``moderation`` view of the SafeSora data module.

    Args:
        backbone: ``tiny``/``small`` (random CLIPs for CPUs), a hub id or directory of a dual encoder, or a saved
            video moderation model to continue from.
        revision: hub revision of the backbone.
        dtype: parameter dtype.
        num_frames: frames per video the model's temporal embedding covers; ``None``: the data module's.
        frame_size: the data's frame size (the presets' vision ``image_size``); ``None``: the data module's.
        fusion_width: fusion transformer width (``None``: the text encoder's hidden size).
        fusion_layers: fusion transformer layers.
        fusion_heads: fusion attention heads.
        fusion_dropout: fusion dropout.
        freeze_backbone: train only the fusion transformer and the heads.
        categories: harm category names; ``None`` takes them from the data module (saved in checkpoints).
        pos_weight: weight each category's positive term by negatives / positives of the training split.
        max_pos_weight: cap of those weights.
        flag_rule: ``unsafe`` or ``categories`` (see the module docstring).
        flag_threshold: probability threshold of the ``unsafe`` rule.
        category_thresholds: per-category detection thresholds: one number for all, or ``{category: threshold}``
            (unnamed categories use 0.5).
        optimizer: AdamW, its learning-rate schedule and gradient clipping (defaults: ``DEFAULT_OPTIMIZER``).
        gradient_checkpointing: recompute the dual encoder's activations in backward.
        max_nonfinite_steps: optimiser steps in a row whose loss or gradient norm is not finite (each is skipped)
            before training stops with an error.
    """

    loss_parts = ("category", "unsafe")  # SafeSora labels have no severity
    log_flag_rates = False

    def __init__(
        self,
        backbone: str = "tiny",
        revision: str | None = None,
        dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        num_frames: int | None = None,
        frame_size: int | None = None,
        fusion_width: int | None = None,
        fusion_layers: int = 2,
        fusion_heads: int = 4,
        fusion_dropout: float = 0.0,
        freeze_backbone: bool = False,
        categories: list[str] | None = None,
        pos_weight: bool = True,
        max_pos_weight: float = 10.0,
        flag_rule: Literal["unsafe", "categories"] = "unsafe",
        flag_threshold: float = 0.5,
        category_thresholds: float | dict[str, float] = 0.5,
        optimizer: OptimizerSettings = DEFAULT_OPTIMIZER,
        gradient_checkpointing: bool = False,
        max_nonfinite_steps: int = 3,
    ) -> None:
        super().__init__()
        self.save_checked_hyperparameters()  # the decision rule is checked in setup, once the categories are known
        self.tokenizer = load_tokenizer(backbone, revision=revision)
        self.model: VideoTextModel | None = None

    # ------------------------------------------------------------------------------------------------- labels
    def setup(self, stage: str) -> None:
        """Check the tokenizer and the view; take the categories, ``num_frames`` and ``frame_size`` from the data
        module (and check the categories against a checkpoint's), then :meth:`prepare_labels` (decision rule,
        ``pos_weight``, stats)."""
        super().setup(stage)
        take_video_settings(self)
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
                                      **video_model_arguments(self))

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
