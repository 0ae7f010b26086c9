"""Classification metrics of the moderation models, as pure functions on tensors (hand-checked in the tests).

Conventions: a category's F1 is undefined (NaN) when it has no positive label and no positive prediction; macro F1
averages the categories that have at least one positive label in the evaluated data (categories absent from a small
evaluation set would otherwise count as 0 or 1 depending on the library). AUROC is the Mann-Whitney statistic: the
probability that a random positive scores above a random negative, ties counting one half; NaN when one class is
absent.
"""

from __future__ import annotations

import torch
from torch import Tensor


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


__all__ = ["binary_auroc", "f1_scores", "macro_f1", "multilabel_auroc"]
