"""The metrics floor: what every trainer's per-stage statistics are, and the classification metrics of the moderation
models as pure functions on tensors (hand-checked in the tests). Torch and torchmetrics only: no Lightning.

Stats: a trainer keeps one stats object per stage (``train_stats``, ``val_stats``, ``test_stats``) with the
:class:`StageStats` protocol: ``update(...)`` per batch (with what the trainer's step produced), ``compute()`` every
metric by name, synchronised across ranks by torchmetrics (0-d tensors are logged as ``<stage>/<name>`` by
:class:`lit_safe.modules.base.BackboneModule`; other tensors, such as per-category vectors, are for callbacks), and
``reset()`` at the end of each epoch. Running means are saved in checkpoints (``persistent``), so a run resumed
mid-epoch reports the whole epoch.

Classification conventions: a category's F1 is undefined (NaN) when it has no positive label and no positive
prediction; macro F1 averages the categories that have at least one positive label in the evaluated data (categories
absent from a small evaluation set would otherwise count as 0 or 1 depending on the library). AUROC is the
Mann-Whitney statistic: the probability that a random positive scores above a random negative, ties counting one half;
NaN when one class is absent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import Tensor
from torchmetrics import MeanMetric, Metric

from lit_safe.losses import preference_accuracy, sign_accuracy


def f1_scores(tp: Tensor, fp: Tensor, fn: Tensor) -> Tensor:
    """Per-class F1 ``2 tp / (2 tp + fp + fn)`` from counts of shape ``(C,)``; NaN where the denominator is 0."""
    tp, fp, fn = (x.double() for x in (tp, fp, fn))
    denominator = 2 * tp + fp + fn
    return torch.where(denominator > 0, 2 * tp / denominator.clamp_min(1), torch.full_like(tp, float("nan")))


def macro_f1(tp: Tensor, fp: Tensor, fn: Tensor) -> Tensor:
    """Mean F1 over the classes with at least one positive label (``tp + fn > 0``); NaN if there are none."""
    present = (tp + fn) > 0
    if not bool(present.any()):
        return torch.tensor(float("nan"), dtype=torch.float64, device=tp.device)
    return f1_scores(tp, fp, fn)[present].mean()


def binary_auroc(scores: Tensor, labels: Tensor) -> Tensor:
    """Area under the ROC curve of scores ``(N,)`` for boolean labels ``(N,)`` (ties count one half).

    Computed from average ranks: ``(sum of positive ranks - P (P + 1) / 2) / (P N_neg)``. NaN when the labels are
    all positive or all negative.
    """
    scores, labels = scores.double().flatten(), labels.bool().flatten()
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return torch.tensor(float("nan"), dtype=torch.float64, device=scores.device)
    order = torch.argsort(scores)
    sorted_scores = scores[order]
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=torch.float64, device=scores.device)
    # average the ranks of tied scores
    _, inverse, counts = torch.unique_consecutive(sorted_scores, return_inverse=True, return_counts=True)
    rank_sum = torch.zeros(len(counts), dtype=torch.float64, device=scores.device).index_add_(0, inverse, ranks[order])
    ranks[order] = (rank_sum / counts.double())[inverse]
    return (ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives)


def multilabel_auroc(scores: Tensor, labels: Tensor) -> Tensor:
    """Per-class AUROC of scores and labels ``(N, C)``: ``(C,)``, NaN for a class with one label value only.
    Every result is on the inputs' device."""
    return torch.stack([binary_auroc(scores[:, c], labels[:, c]) for c in range(scores.size(1))])


class StageStats(Protocol):
    """The statistics of one stage of a trainer (see the module docstring)."""

    def update(self, *args: Any, **kwargs: Any) -> None:
        """Add one batch."""

    def compute(self) -> dict[str, Tensor]:
        """Every metric by name, synchronised across ranks."""

    def reset(self) -> None:
        """Forget every batch (at the end of an epoch)."""


def _persistent_means(module: torch.nn.Module, names: Sequence[str]) -> None:
    """Add a checkpointed :class:`MeanMetric` attribute per name to ``module``."""
    for name in names:
        metric = MeanMetric()
        metric.persistent(True)  # saved in checkpoints: a run resumed mid-epoch reports the whole epoch
        module.add_module(name, metric)


def _reset_children(module: torch.nn.Module) -> None:
    for metric in module.children():
        metric.reset()


class MeanStats(torch.nn.Module):
    """Weighted running means of named metrics over one stage.

    Args:
        names: the metrics averaged; ``compute`` returns them in this order.
    """

    def __init__(self, names: Sequence[str]) -> None:
        super().__init__()
        self.means = torch.nn.ModuleDict()
        _persistent_means(self.means, names)

    def update(self, values: dict[str, Tensor], weight: float | Tensor | dict[str, float | Tensor]) -> None:
        """Add a batch's means, each weighted by what it averages: ``weight``, or ``weight[name]`` for a dict."""
        for name, value in values.items():
            self.means[name].update(value.detach().float(), weight=weight[name] if isinstance(weight, dict) else weight)

    def compute(self) -> dict[str, Tensor]:
        """Every mean (a mean with no weight counted towards it is NaN, on every rank)."""
        return {name: metric.compute() for name, metric in self.means.items()}

    def reset(self) -> None:
        _reset_children(self.means)


class ScoreStats(torch.nn.Module):
    """Running means of a score model's loss, pair accuracy, scores, squared scores and margins over one stage.

    Args:
        name: the score's name in the metric keys (``reward``: ``reward_mean``, ``reward_std``, ``reward_margin``).
    """

    def __init__(self, name: str = "reward") -> None:
        super().__init__()
        self.name = name
        _persistent_means(self, ("loss", "accuracy", "score", "score_sq", "margin"))

    def update(self, loss: Tensor, chosen: Tensor, rejected: Tensor) -> None:
        """Add a batch of pairs: its loss and the scores ``(B,)`` of the chosen and the rejected responses."""
        scores = torch.cat([chosen, rejected]).detach()
        self.loss.update(loss.detach())
        self.accuracy.update(preference_accuracy(chosen, rejected), weight=chosen.numel())
        self.score.update(scores)
        self.score_sq.update(scores.pow(2))
        self.margin.update((chosen - rejected).detach())

    def compute(self) -> dict[str, Tensor]:
        mean = self.score.compute()
        return {
            "loss": self.loss.compute(),
            "accuracy": self.accuracy.compute(),
            f"{self.name}_mean": mean,
            f"{self.name}_std": (self.score_sq.compute() - mean.pow(2)).clamp_min(0).sqrt(),
            f"{self.name}_margin": self.margin.compute(),
        }

    def reset(self) -> None:
        _reset_children(self)


def labelled_sign_hits(costs: Tensor, signs: Tensor) -> tuple[Tensor, Tensor]:
    """Per response, whether its cost has the sign of its label, and whether it has a label.

    Args:
        costs: ``(N,)``.
        signs: ``(N,)`` +1 unsafe, -1 safe, 0 unlabelled.

    Returns:
        ``(hit (N,) float: 1 where s * c > 0, labelled (N,) float: 1 where s != 0)``; the sign accuracy over labelled
        responses is ``sum(hit) / sum(labelled)`` (an unlabelled response is never a hit).
    """
    return (signs.to(costs.dtype) * costs > 0).float(), (signs != 0).float()


class CostStats(torch.nn.Module):
    """Running means of a cost model's metrics over one stage: ``loss``, ``accuracy`` (the less safe response costs
    more), ``accuracy_sign`` (the cost has the sign of the label), ``cost_mean``, ``cost_std``, ``cost_safe_mean``
    and ``cost_unsafe_mean``.

    Args:
        unlabelled_signs: signs may be 0 (no safety label, as SafeSora videos may lack): ``accuracy_sign`` counts
            the labelled responses only (:func:`labelled_sign_hits`).
    """

    def __init__(self, unlabelled_signs: bool = False) -> None:
        super().__init__()
        self.unlabelled_signs = unlabelled_signs
        _persistent_means(self, ("loss", "accuracy", "accuracy_sign", "cost", "cost_sq", "safe", "unsafe"))

    def update(self, loss: Tensor, unsafer: Tensor, safer: Tensor, unsafer_sign: Tensor, safer_sign: Tensor) -> None:
        """Add a batch of pairs: its loss, the costs ``(B,)`` of the less safe and the safer responses, and their
        safety signs ``(B,)`` (+1 unsafe, -1 safe, 0 unlabelled)."""
        costs, signs = torch.cat([unsafer, safer]).detach(), torch.cat([unsafer_sign, safer_sign])
        self.loss.update(loss.detach())
        self.accuracy.update(preference_accuracy(unsafer, safer), weight=unsafer.numel())
        if self.unlabelled_signs:
            self.accuracy_sign.update(*labelled_sign_hits(costs, signs))
        else:
            self.accuracy_sign.update(sign_accuracy(costs, signs), weight=costs.numel())
        self.cost.update(costs)
        self.cost_sq.update(costs.pow(2))
        # weight 0 where a response is of the other kind, so a batch without safe (or unsafe) ones adds nothing
        self.safe.update(costs, weight=(signs < 0).to(costs.dtype))
        self.unsafe.update(costs, weight=(signs > 0).to(costs.dtype))

    def compute(self) -> dict[str, Tensor]:
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
        _reset_children(self)


class TokenStats(torch.nn.Module):
    """Token-weighted loss and accuracy of a causal LM over one stage: ``loss``, ``perplexity``, ``token_accuracy``."""

    def __init__(self) -> None:
        super().__init__()
        _persistent_means(self, ("loss", "accuracy"))

    def update(self, loss: Tensor, count: Tensor, correct: Tensor) -> None:
        """Add a batch: its token-mean loss, its number of response tokens and how many of them were predicted."""
        if int(count) == 0:
            return
        self.loss.update(loss.detach(), weight=count)
        self.accuracy.update(correct / count, weight=count)

    def compute(self) -> dict[str, Tensor]:
        loss = self.loss.compute()
        return {"loss": loss, "perplexity": loss.exp(), "token_accuracy": self.accuracy.compute()}

    def reset(self) -> None:
        _reset_children(self)


class ModerationStats(Metric):
    """Counts and scores of a moderation classifier over one evaluation stage, reduced across ranks by torchmetrics.

    Written by hand because the conventions of this module (macro F1 over the categories present, rank AUROC with NaN
    for a one-class category, flag rates per true severity) are not torchmetrics'.

    ``compute()`` gives the logged scalars ``loss``, ``accuracy`` (flagged = unsafe), ``fpr_safe``, ``recall_unsafe``,
    ``auroc_unsafe``, ``macro_f1``, ``severity_accuracy`` (with severity levels), ``f1/<category>``,
    ``auroc/<category>`` and ``flag_rate/<group>``; and, for tables and tests, the vectors ``support``,
    ``precision``, ``recall``, ``f1``, ``auroc`` (per category), ``flag_rate`` and ``group_total`` (per group).

    Args:
        categories: the category names, in label order.
        groups: the names of the true-label groups flag rates are reported for: severity levels (``severity_0``,
            ...), or ``safe``, ``unsafe``; empty: no flag rates.
        severity_levels: S (0: no severity).
    """

    full_state_update = False

    def __init__(self, categories: Sequence[str], groups: Sequence[str], severity_levels: int) -> None:
        super().__init__()
        self.categories, self.groups = list(categories), list(groups)
        c = len(self.categories)
        for name, shape in (("tp", c), ("fp", c), ("fn", c), ("group_total", len(self.groups)),
                            ("group_flagged", len(self.groups))):
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
        if self.groups:
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

    def compute(self) -> dict[str, Tensor]:
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
        for c, name in enumerate(self.categories):
            out[f"f1/{name}"] = out["f1"][c]
            out[f"auroc/{name}"] = out["auroc"][c]
        for g, group in enumerate(self.groups):
            out[f"flag_rate/{group}"] = out["flag_rate"][g]
        return out


def category_table(categories: Sequence[str], values: dict[str, Tensor]) -> str:
    """A markdown table of per-category support, precision, recall, F1 and AUROC (the vectors of
    :meth:`ModerationStats.compute`), one row per category."""
    lines = ["| category | support | precision | recall | F1 | AUROC |", "|---|---:|---:|---:|---:|---:|"]
    for c, name in enumerate(categories):
        lines.append(f"| {name} | {int(values['support'][c])} | {float(values['precision'][c]):.3f} | "
                     f"{float(values['recall'][c]):.3f} | {float(values['f1'][c]):.3f} | "
                     f"{float(values['auroc'][c]):.3f} |")
    return "\n".join(lines)


def category_threshold_tensor(categories: list[str], thresholds: float | dict[str, float]) -> Tensor:
    """Per-category decision thresholds ``(C,)`` from one threshold or a ``{category: threshold}`` dict (categories it
    leaves out get 0.5). Raises ``ValueError`` naming categories the dict has but the model does not."""
    if isinstance(thresholds, dict):
        unknown = sorted(set(thresholds) - set(categories))
        if unknown:
            raise ValueError(f"category_thresholds names unknown categories {unknown}; known: {categories}")
        return torch.tensor([float(thresholds.get(c, 0.5)) for c in categories])
    return torch.full((len(categories),), float(thresholds))


def category_pos_weight(summary: dict, categories: Sequence[str], cap: float) -> Tensor | None:
    """Per-class BCE ``pos_weight`` = negatives / positives of the training split, capped; 1 for a class without
    positives.

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


__all__ = [
    "CostStats",
    "MeanStats",
    "ModerationStats",
    "ScoreStats",
    "StageStats",
    "TokenStats",
    "binary_auroc",
    "category_pos_weight",
    "category_table",
    "category_threshold_tensor",
    "f1_scores",
    "labelled_sign_hits",
    "macro_f1",
    "multilabel_auroc",
]
