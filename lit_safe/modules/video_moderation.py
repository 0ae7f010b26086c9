"""VideoModerationModule: a text-video (prompt + generated video) harm classifier on SafeSora-Label, in Lightning.

Trains a moderation-head :class:`~lit_safe.models.video_text.VideoTextModel` on the ``moderation`` view of the
SafeSora data module: one item per labelled video, 12 harm categories (porn, violence, hate, terrorism, contraband,
controversial, racism, other_discrimination, animal_abuse, child_abuse, crime, other_harmful) and an overall unsafe
flag, no severity. The moderation judges the *pair*: a risky prompt with a harmless video need not be flagged
(methods.md section 3.3).

Loss (:func:`lit_safe.losses.moderation_loss`, as the text :class:`~lit_safe.modules.moderation.ModerationModule`):
multi-label BCE over categories with per-class ``pos_weight`` (negatives / positives in the training split, capped at
``max_pos_weight``) plus BCE on the unsafe flag. Decision (:func:`lit_safe.models.moderation.flag_decisions`):
``flag_rule: unsafe`` flags at P(unsafe) >= ``flag_threshold``; ``categories`` flags when a category reaches its own
threshold (``category_thresholds``: one number or ``{category: threshold}``). The rule is saved with the exported
model.

Metrics (``val/...``, ``test/...``, at the rule's decisions, from
:class:`~lit_safe.modules.moderation.ModerationStats`): ``loss``, ``accuracy`` (safe/unsafe), ``fpr_safe`` (safe videos
flagged), ``recall_unsafe``, ``auroc_unsafe``, ``macro_f1``, ``f1/<category>``, ``auroc/<category>``, and a
per-category table as TensorBoard text. Training logs the loss, its parts and the accuracy per step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from lightning.pytorch.utilities import rank_zero_warn

from lit_safe.losses import moderation_loss
from lit_safe.models.moderation_model import validate_decision
from lit_safe.models.score_model import export_score_model
from lit_safe.models.tokenizer import load_tokenizer
from lit_safe.models.video_text import VideoTextModel, build_video_text_model
from lit_safe.modules.base import BackboneModule, check_hparams, check_max_nonfinite_steps
from lit_safe.modules.moderation import ModerationStats, category_threshold_tensor, log_category_table
from lit_safe.modules.video_preference import take_video_settings


def category_pos_weight(summary: dict, categories: list[str], cap: float) -> torch.Tensor | None:
    """Per-class ``pos_weight`` = negatives / positives of the training split, capped; 1 for a class without positives.

    Args:
        summary: a data module's ``label_summary("train")``: ``{"items": n, "categories": [...],
            "category_positives": [...]}`` (the moderation views), or ``{"count": n, "positives": {name: n}}``.
        categories: the model's categories, in label order.
        cap: the largest weight.

    Returns:
        ``(C,)`` float32, or ``None`` when the summary has no counts.
    """
    if "category_positives" in summary:
        named = dict(zip(summary.get("categories", categories), summary["category_positives"]))
        total = summary["items"]
    elif "positives" in summary:
        named, total = summary["positives"], summary["count"]
    else:
        return None
    positives = torch.tensor([float(named.get(c, 0)) for c in categories])
    negatives = float(total) - positives
    weight = torch.where(positives > 0, negatives / positives.clamp_min(1), torch.ones_like(positives))
    return weight.clamp(max=cap)


class VideoModerationModule(BackboneModule):
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
        lr: peak learning rate.
        weight_decay: AdamW weight decay (not applied to biases and norms).
        betas: AdamW betas.
        warmup_ratio: share of the optimiser steps spent warming up linearly.
        lr_schedule: ``cosine`` or ``constant`` after warm-up.
        max_grad_norm: clip gradients to this global norm (``None``: measure only).
        gradient_checkpointing: recompute the dual encoder's activations in backward.
        max_nonfinite_steps: optimiser steps in a row whose loss or gradient norm is not finite (each is skipped)
            before training stops with an error.
    """

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
        lr: float = 2e-5,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_ratio: float = 0.06,
        lr_schedule: Literal["cosine", "constant"] = "cosine",
        max_grad_norm: float | None = 1.0,
        gradient_checkpointing: bool = False,
        max_nonfinite_steps: int = 3,
    ) -> None:
        super().__init__()
        check_hparams(type(self).__name__, positive={"max_grad_norm": max_grad_norm},
                      non_negative={"lr": lr, "weight_decay": weight_decay,
                                    "warmup_ratio": warmup_ratio})
        check_max_nonfinite_steps(type(self).__name__, max_nonfinite_steps)
        self.save_hyperparameters()  # the decision rule is checked in setup, once the categories are known
        self.tokenizer = load_tokenizer(backbone, revision=revision)
        self.model: VideoTextModel | None = None
        # Saved in checkpoints (so that val/loss of a later validate or test weighs as during fit); filled in setup.
        self.register_buffer("pos_weight", None)
        self.val_stats: ModerationStats | None = None
        self.test_stats: ModerationStats | None = None

    # ------------------------------------------------------------------------------------------------- labels
    def setup(self, stage: str) -> None:
        """Check the tokenizer; take the categories, ``num_frames`` and ``frame_size`` from the data module (and check
        the categories against a checkpoint's), check the decision rule, and, for training, compute the per-class
        ``pos_weight`` from the training split's label counts."""
        super().setup(stage)
        self.require_view("moderation")
        take_video_settings(self)
        hp = self.hparams
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        theirs = getattr(datamodule, "categories", None) or getattr(getattr(datamodule, "view", None), "categories",
                                                                     None)
        if theirs is not None:
            if hp.categories is None:
                hp.categories = list(theirs)
            elif list(hp.categories) != list(theirs):
                raise ValueError(f"the model's categories {hp.categories} differ from the data's {list(theirs)}")
        if hp.categories is None:
            raise ValueError("VideoModerationModule needs categories (or a data module with view: moderation)")
        validate_decision(self.decision_config(), hp.categories, 0)
        if stage == "fit" and hp.pos_weight:
            summary = datamodule.label_summary("train") if hasattr(datamodule, "label_summary") else {}
            weight = category_pos_weight(summary or {}, list(hp.categories), hp.max_pos_weight)
            if weight is not None:
                self.pos_weight = weight
            else:
                rank_zero_warn("VideoModerationModule: no training label counts (a remote prepared dataset?): "
                               "pos_weight is 1 for every category")
        # groups for ModerationStats' flag rates: safe, unsafe (SafeSora labels have no severity)
        self.val_stats = ModerationStats(len(hp.categories), 2, 0)
        self.test_stats = ModerationStats(len(hp.categories), 2, 0)

    def _category_thresholds(self) -> torch.Tensor:
        return category_threshold_tensor(self.hparams.categories, self.hparams.category_thresholds)

    def decision_config(self) -> dict:
        """The decision rule of this run's hyperparameters (the exported model carries it)."""
        hp = self.hparams
        return {"flag_rule": hp.flag_rule, "flag_threshold": hp.flag_threshold,
                "category_thresholds": dict(zip(hp.categories, self._category_thresholds().tolist()))}

    # ------------------------------------------------------------------------------------------------- model
    def configure_model(self) -> None:
        if self.model is not None:
            return
        if self.hparams.categories is None:
            self.setup("predict")
        hp = self.hparams
        self.model = build_video_text_model(
            hp.backbone, self.tokenizer, "moderation", categories=hp.categories, decision=self.decision_config(),
            num_frames=hp.num_frames or 8, frame_size=hp.frame_size, fusion_width=hp.fusion_width,
            fusion_layers=hp.fusion_layers, fusion_heads=hp.fusion_heads, fusion_dropout=hp.fusion_dropout,
            freeze_backbone=hp.freeze_backbone, dtype=hp.dtype, revision=hp.revision,
            gradient_checkpointing=hp.gradient_checkpointing,
        )
        if hp.pos_weight and self.pos_weight is None:  # outside fit: ones, until a checkpoint's values are loaded
            self.pos_weight = torch.ones(len(hp.categories))
        self.shard(self.model)

    def decide(self, out) -> dict[str, torch.Tensor]:
        """Probabilities and decisions of the configured rule (:meth:`VideoTextModel.decide`)."""
        return self.model.decide(out)

    # ------------------------------------------------------------------------------------------------- steps
    def model_step(self, batch: dict):
        if "categories" not in batch or "frames" not in batch:
            raise ValueError("VideoModerationModule needs the SafeSora data module's 'moderation' view (batches with "
                             "frames and categories)")
        out = self.model(batch["input_ids"], batch["attention_mask"], batch["frames"])
        pos_weight = None if self.pos_weight is None else self.pos_weight.to(out.category_logits.device)
        loss, parts = moderation_loss(out.category_logits, batch["categories"], out.unsafe_logits, batch["unsafe"],
                                      pos_weight)
        return loss, parts, out

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, parts, out = self.model_step(batch)
        flagged = self.decide(out)["flagged"]
        self.log("train/loss", loss, prog_bar=True)
        self.log_dict({f"train/loss_{k}": parts[k] for k in ("category", "unsafe")})
        self.log("train/accuracy", (flagged == batch["unsafe"].bool()).float().mean(), prog_bar=True)
        return loss

    def _evaluate(self, batch: dict, stats: ModerationStats) -> None:
        loss, _, out = self.model_step(batch)
        d = self.decide(out)
        severity = batch.get("severity", torch.full_like(batch["unsafe"], -1))
        stats.update(loss, d["category_probs"], batch["categories"], d["unsafe_prob"], batch["unsafe"], d["flagged"],
                     d["detected"], None, severity)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.val_stats)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.test_stats)

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        """Per video: ``flagged``, ``unsafe_prob``, ``categories`` ({name: probability}) and ``detected`` (names at or
        above their threshold); keyed by ``line`` (a ``predict_file``) or ``row``/``response`` (a prepared split)."""
        out = self.model(batch["input_ids"], batch["attention_mask"], batch["frames"])
        d = self.decide(out)
        names = self.hparams.categories
        result = {key: batch[key] for key in ("line", "row", "response") if key in batch}
        result.update({
            "flagged": d["flagged"],
            "unsafe_prob": d["unsafe_prob"],
            "categories": [dict(zip(names, p)) for p in d["category_probs"].tolist()],
            "detected": [[n for n, hit in zip(names, row) if hit] for row in d["detected"].tolist()],
        })
        return result

    # ------------------------------------------------------------------------------------------------ logging
    def _log_epoch(self, stage: str) -> None:
        stats: ModerationStats = getattr(self, f"{stage}_stats")
        # no batches on any rank (an empty split): every rank decides alike, so none waits in compute()'s gather
        if float(self.trainer.strategy.reduce(stats.count.clone(), reduce_op="sum")) == 0:
            return
        values = stats.compute()
        scalars = {k: values[k] for k in ("loss", "recall_unsafe", "auroc_unsafe")}
        for c, name in enumerate(self.hparams.categories):
            scalars[f"f1/{name}"] = values["f1"][c]
            scalars[f"auroc/{name}"] = values["auroc"][c]
        headline = {k: values[k] for k in ("accuracy", "macro_f1", "fpr_safe")}
        # Already reduced across ranks by torchmetrics; sync_dist only keeps Lightning consistent.
        self.log_dict({f"{stage}/{k}": v.float().to(self.device) for k, v in scalars.items()}, sync_dist=True)
        self.log_dict({f"{stage}/{k}": v.float().to(self.device) for k, v in headline.items()}, prog_bar=True,
                      sync_dist=True)
        log_category_table(self, stage, values)
        stats.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    # ------------------------------------------------------------------------------------------------ export
    def export_pretrained(self, path: str | Path) -> Path | None:
        """Write the model, its categories and its decision rule in the Hugging Face format. Call on every rank."""
        return export_score_model(self.model, self.tokenizer, path, root=self.export_root(), prefix="model.")


__all__ = ["VideoModerationModule", "category_pos_weight"]
