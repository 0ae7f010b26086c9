"""Hand-checked numbers for the moderation maths: lit_safe.metrics (F1, macro F1, AUROC),
lit_safe.losses.moderation_loss and the ModerationStats metric of lit_safe.metrics."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import math

import pytest
import torch

from lit_safe.losses import moderation_loss
from lit_safe.metrics import ModerationStats, binary_auroc, f1_scores, macro_f1, multilabel_auroc

NAN = float("nan")


def _assert_values(actual, expected, atol=1e-12):
    """Elementwise equality to ``atol`` in float64, NaN matching NaN."""
    torch.testing.assert_close(torch.as_tensor(actual).double(), torch.as_tensor(expected, dtype=torch.float64),
                               rtol=0, atol=atol, equal_nan=True)


# ------------------------------------------------------------------------------------------------------ F1


def test_f1_scores_from_counts():
    tp = torch.tensor([2, 0, 0, 0, 3])
    fp = torch.tensor([1, 0, 1, 0, 0])
    fn = torch.tensor([1, 0, 0, 2, 1])
    # class 0: 2*2 / (4 + 1 + 1) = 4/6; class 1: 0/0 -> NaN; class 2 (only a false positive): 0/1 = 0;
    # class 3 (positives, none found): 0/2 = 0; class 4: 6 / (6 + 0 + 1) = 6/7
    f1 = f1_scores(tp, fp, fn)
    assert f1.dtype == torch.float64
    _assert_values(f1, [4 / 6, NAN, 0.0, 0.0, 6 / 7])


def test_macro_f1_averages_classes_with_positive_labels():
    tp = torch.tensor([2, 0, 0, 0, 3])
    fp = torch.tensor([1, 0, 1, 0, 0])
    fn = torch.tensor([1, 0, 0, 2, 1])
    # Classes with tp + fn > 0: 0 (2/3), 3 (0: positives but no hit) and 4 (6/7). Class 2 (F1 0, false positives
    # only) and class 1 (NaN) are left out: (2/3 + 0 + 6/7) / 3 = (14/21 + 18/21) / 3 = 32/63.
    _assert_values(macro_f1(tp, fp, fn), 32 / 63)
    assert not math.isclose(32 / 63, (2 / 3 + 0 + 0 + 6 / 7) / 4)  # what counting class 2 would give


def test_macro_f1_nan_without_positive_labels():
    zeros = torch.zeros(3, dtype=torch.long)
    assert math.isnan(float(macro_f1(zeros, torch.tensor([1, 0, 2]), zeros)))


# ------------------------------------------------------------------------------------------------------ AUROC


def _pairwise_auroc(scores, labels):
    """Brute force: over all (positive, negative) pairs, 1 if the positive scores higher, 1/2 on a tie."""
    positives = [s for s, y in zip(scores, labels) if y]
    negatives = [s for s, y in zip(scores, labels) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


def test_binary_auroc_by_hand_with_a_tie():
    scores = torch.tensor([0.1, 0.4, 0.4, 0.8, 0.3])
    labels = torch.tensor([0, 1, 0, 1, 1])
    # positives 0.4, 0.8, 0.3; negatives 0.1, 0.4.
    # 0.4 vs 0.1: 1, 0.4 vs 0.4: 1/2; 0.8: 1 + 1; 0.3 vs 0.1: 1, 0.3 vs 0.4: 0  -> 4.5 / 6 = 0.75
    auroc = binary_auroc(scores, labels)
    assert auroc.dtype == torch.float64
    _assert_values(auroc, 0.75)
    # the ranking is all that matters: order of the rows does not
    perm = torch.tensor([3, 0, 4, 2, 1])
    _assert_values(binary_auroc(scores[perm], labels[perm]), 0.75)


def test_binary_auroc_perfect_reversed_all_tied():
    labels = torch.tensor([0, 0, 1, 1, 0])
    scores = torch.tensor([0.1, 0.2, 0.9, 0.8, 0.3])
    _assert_values(binary_auroc(scores, labels), 1.0)
    _assert_values(binary_auroc(-scores, labels), 0.0)
    _assert_values(binary_auroc(torch.full((5,), 0.5), labels), 0.5)


@pytest.mark.parametrize("labels", [[1, 1, 1], [0, 0, 0]])
def test_binary_auroc_nan_with_one_class(labels):
    assert math.isnan(float(binary_auroc(torch.tensor([0.2, 0.5, 0.9]), torch.tensor(labels))))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_binary_auroc_matches_pairwise_count_with_many_ties(seed):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 5, (50,), generator=g).float() / 4  # 5 distinct values: many ties
    labels = torch.rand(50, generator=g) < 0.4
    expected = _pairwise_auroc(scores.tolist(), labels.tolist())
    assert 0 < expected < 1
    _assert_values(binary_auroc(scores, labels), expected)


def test_multilabel_auroc_per_column():
    scores = torch.tensor([[0.1, 0.9, 0.3], [0.4, 0.2, 0.3], [0.4, 0.5, 0.7], [0.8, 0.1, 0.2], [0.3, 0.6, 0.9]])
    labels = torch.tensor([[0, 1, 0], [1, 0, 0], [0, 1, 0], [1, 0, 0], [1, 1, 0]])
    # column 0 is the tie example above (0.75); column 1 separates perfectly (1.0); column 2 has no positive (NaN)
    _assert_values(multilabel_auroc(scores, labels), [0.75, 1.0, NAN])


# ------------------------------------------------------------------------------------------------------ loss


def _softplus(x):
    """-log sigmoid(-x) = log(1 + e^x)."""
    return math.log1p(math.exp(x))


CATEGORY_LOGITS = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
CATEGORIES = torch.tensor([[1, 0], [0, 1]])
UNSAFE_LOGITS = torch.tensor([2.0, -1.0])
UNSAFE = torch.tensor([1, 0])
POS_WEIGHT = torch.tensor([3.0, 0.5])


def _expected_category(pos_weight=(3.0, 0.5)):
    # BCE_pw(x, y) = -pw * y * log sigmoid(x) - (1 - y) * log(1 - sigmoid(x)); -log sigmoid(x) = softplus(-x),
    # -log(1 - sigmoid(x)) = softplus(x). Entries: (1.0, y=1, pw 3), (-2.0, y=0), (0.5, y=0), (0.0, y=1, pw 0.5).
    return (pos_weight[0] * _softplus(-1.0) + _softplus(-2.0) + _softplus(0.5) + pos_weight[1] * _softplus(0.0)) / 4


# unsafe flag: (2.0, y=1) -> softplus(-2); (-1.0, y=0) -> softplus(-1)
EXPECTED_UNSAFE = (_softplus(-2.0) + _softplus(-1.0)) / 2


def _cross_entropy(logits, target):
    return math.log(sum(math.exp(v) for v in logits)) - logits[target]


def test_moderation_loss_by_hand_with_pos_weight_and_severity():
    severity_logits = torch.tensor([[0.2, -0.3, 1.0], [5.0, 0.0, 0.0]])
    severity = torch.tensor([2, -1])  # the second response has no severity label
    total, parts = moderation_loss(CATEGORY_LOGITS, CATEGORIES, UNSAFE_LOGITS, UNSAFE, POS_WEIGHT, severity_logits,
                                   severity)
    expected_severity = _cross_entropy([0.2, -0.3, 1.0], 2)  # row 0 only
    assert parts["category"].item() == pytest.approx(_expected_category(), abs=1e-6)
    assert parts["unsafe"].item() == pytest.approx(EXPECTED_UNSAFE, abs=1e-6)
    assert parts["severity"].item() == pytest.approx(expected_severity, abs=1e-6)
    assert total.item() == pytest.approx(_expected_category() + EXPECTED_UNSAFE + expected_severity, abs=1e-6)
    assert total.item() == pytest.approx(sum(p.item() for p in parts.values()), abs=1e-6)
    assert all(not p.requires_grad for p in parts.values())

    # the unlabelled row's severity logits do not matter
    changed = severity_logits.clone()
    changed[1] = torch.tensor([-3.0, 7.0, 1.0])
    total_changed, _ = moderation_loss(CATEGORY_LOGITS, CATEGORIES, UNSAFE_LOGITS, UNSAFE, POS_WEIGHT, changed,
                                       severity)
    assert total_changed.item() == total.item()
    # but the labelled row's do
    changed[0] = torch.tensor([1.0, -0.3, 0.2])
    total_changed, _ = moderation_loss(CATEGORY_LOGITS, CATEGORIES, UNSAFE_LOGITS, UNSAFE, POS_WEIGHT, changed,
                                       severity)
    assert total_changed.item() > total.item() + 0.5


def test_moderation_loss_severity_averages_labelled_rows():
    logits = torch.tensor([[1.0, 0.0, -1.0], [9.0, -9.0, 0.0], [0.5, 0.5, 2.0]])
    severity = torch.tensor([0, -1, 1])
    category_logits, categories = torch.zeros(3, 1), torch.zeros(3, 1)
    _, parts = moderation_loss(category_logits, categories, torch.zeros(3), torch.zeros(3), None, logits, severity)
    expected = (_cross_entropy([1.0, 0.0, -1.0], 0) + _cross_entropy([0.5, 0.5, 2.0], 1)) / 2  # over 2 rows, not 3
    assert parts["severity"].item() == pytest.approx(expected, abs=1e-6)


def test_moderation_loss_without_severity():
    total, parts = moderation_loss(CATEGORY_LOGITS, CATEGORIES, UNSAFE_LOGITS, UNSAFE, POS_WEIGHT)
    assert parts["severity"].item() == 0.0
    assert total.item() == pytest.approx(_expected_category() + EXPECTED_UNSAFE, abs=1e-6)
    assert total.item() == pytest.approx(sum(p.item() for p in parts.values()), abs=1e-6)
    # every severity unlabelled: the same as no severity head
    total_unlabelled, parts = moderation_loss(CATEGORY_LOGITS, CATEGORIES, UNSAFE_LOGITS, UNSAFE, POS_WEIGHT,
                                              torch.randn(2, 4), torch.tensor([-1, -1]))
    assert parts["severity"].item() == 0.0
    assert total_unlabelled.item() == total.item()


def test_moderation_loss_pos_weight_none_is_ones():
    total, parts = moderation_loss(CATEGORY_LOGITS, CATEGORIES, UNSAFE_LOGITS, UNSAFE, None)
    assert parts["category"].item() == pytest.approx(_expected_category((1.0, 1.0)), abs=1e-6)
    ones, _ = moderation_loss(CATEGORY_LOGITS, CATEGORIES, UNSAFE_LOGITS, UNSAFE, torch.ones(2))
    assert total.item() == pytest.approx(ones.item(), abs=1e-7)


# ------------------------------------------------------------------------------------------------ ModerationStats

# Seven responses, three categories, severity levels 0-3. Decisions are given, not derived: flagged = P(unsafe) >= 0.5
# and detected = P(category) >= 0.5, as the module would decide.
#
#  row unsafe severity P(unsafe) flagged  targets  detected  P(categories)     argmax severity
#  0   0      0        0.2       no       0 0 0    0 1 0     0.10 0.60 0.10    0 (right)
#  1   0      0        0.7       yes      0 0 0    1 0 1     0.70 0.10 0.55    1 (wrong)
#  2   1      1        0.4       no       1 0 0    0 0 0     0.30 0.20 0.10    1 (right)
#  3   1      2        0.8       yes      1 1 0    1 0 0     0.90 0.40 0.10    3 (wrong)
#  4   1      3        0.9       yes      0 1 0    0 1 0     0.20 0.80 0.10    3 (right)
#  5   1      2        0.6       yes      1 0 0    1 0 0     0.60 0.20 0.10    2 (right)
#  6   1      2        0.3       no       0 1 0    0 0 0     0.05 0.20 0.10    1 (wrong)
UNSAFE_T = torch.tensor([0, 0, 1, 1, 1, 1, 1])
SEVERITY_T = torch.tensor([0, 0, 1, 2, 3, 2, 2])
UNSAFE_P = torch.tensor([0.2, 0.7, 0.4, 0.8, 0.9, 0.6, 0.3])
TARGETS = torch.tensor([[0, 0, 0], [0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [1, 0, 0], [0, 1, 0]], dtype=torch.uint8)
CATEGORY_P = torch.tensor([[0.10, 0.60, 0.10], [0.70, 0.10, 0.55], [0.30, 0.20, 0.10], [0.90, 0.40, 0.10],
                           [0.20, 0.80, 0.10], [0.60, 0.20, 0.10], [0.05, 0.20, 0.10]])
SEVERITY_ARGMAX = torch.tensor([0, 1, 1, 3, 3, 2, 1])
SEVERITY_P = torch.full((7, 4), 0.1).scatter(1, SEVERITY_ARGMAX[:, None], 0.7)


CATEGORY_NAMES = ["a", "b", "c"]


def _stats(severity_levels, chunks, severity=SEVERITY_T, losses=(1.75,), groups=None):
    if groups is None:
        groups = [f"severity_{k}" for k in range(severity_levels)] if severity_levels else ["safe", "unsafe"]
    stats = ModerationStats(CATEGORY_NAMES, groups, severity_levels)
    flagged, detected = UNSAFE_P >= 0.5, CATEGORY_P >= 0.5
    start = 0
    for size, loss in zip(chunks, losses):
        rows = slice(start, start + size)
        start += size
        stats.update(torch.tensor(loss), CATEGORY_P[rows], TARGETS[rows], UNSAFE_P[rows], UNSAFE_T[rows],
                     flagged[rows], detected[rows], SEVERITY_P[rows] if severity_levels else None, severity[rows])
    assert start == 7
    return stats.compute()


def test_moderation_stats_by_hand():
    # the table's decisions are the thresholded probabilities
    assert (UNSAFE_P >= 0.5).tolist() == [False, True, False, True, True, True, False]
    assert ((CATEGORY_P >= 0.5).int() == torch.tensor([[0, 1, 0], [1, 0, 1], [0, 0, 0], [1, 0, 0], [0, 1, 0],
                                                       [1, 0, 0], [0, 0, 0]], dtype=torch.int32)).all()
    out = _stats(4, [7])
    _assert_values(out["loss"], 1.75)
    _assert_values(out["accuracy"], 4 / 7)  # right: rows 0, 3, 4, 5
    _assert_values(out["fpr_safe"], 1 / 2)  # safe rows 0, 1; row 1 flagged
    _assert_values(out["recall_unsafe"], 3 / 5)  # unsafe rows 2-6; 3, 4, 5 flagged
    # positives 0.4 0.8 0.9 0.6 0.3 vs negatives 0.2 0.7: 1 + 2 + 2 + 1 + 1 = 7 of 10 pairs
    _assert_values(out["auroc_unsafe"], 7 / 10)
    # flag rate per true severity: 0 {rows 0, 1}: 1/2; 1 {2}: 0; 2 {3, 5, 6}: 2/3; 3 {4}: 1
    _assert_values(out["flag_rate"], [1 / 2, 0.0, 2 / 3, 1.0], atol=1e-7)
    assert out["group_total"].tolist() == [2, 1, 3, 1]
    # argmax right on rows 0, 2, 4, 5
    _assert_values(out["severity_accuracy"], 4 / 7)
    # category 0: tp rows 3, 5; fp row 1; fn row 2 -> F1 4/6, precision 2/3, recall 2/3
    # category 1: tp row 4; fp row 0; fn rows 3, 6 -> F1 2/5, precision 1/2, recall 1/3
    # category 2: fp row 1 only -> F1 0, no support (left out of the macro F1)
    _assert_values(out["f1"], [2 / 3, 2 / 5, 0.0])
    _assert_values(out["macro_f1"], (2 / 3 + 2 / 5) / 2)  # 8/15
    assert out["support"].tolist() == [3, 3, 0]
    _assert_values(out["precision"], [2 / 3, 1 / 2, 0.0], atol=1e-7)
    _assert_values(out["recall"], [2 / 3, 1 / 3, 0.0], atol=1e-7)
    # AUROC category 0: positives 0.3 0.9 0.6 vs negatives 0.1 0.7 0.2 0.05: 3 + 4 + 3 = 10 of 12;
    # category 1: positives 0.4 0.8 0.2 vs negatives 0.6 0.1 0.2 0.2: 3 + 4 + (1 + 1/2 + 1/2) = 9 of 12;
    # category 2: no positive -> NaN
    _assert_values(out["auroc"], [10 / 12, 9 / 12, NAN])
    # the logged scalars: one per category and per group, named
    for c, name in enumerate(CATEGORY_NAMES):
        assert out[f"f1/{name}"].dim() == 0
        _assert_values(out[f"f1/{name}"], float(out["f1"][c]))
        _assert_values(out[f"auroc/{name}"], float(out["auroc"][c]))
    for g, value in enumerate([1 / 2, 0.0, 2 / 3, 1.0]):
        _assert_values(out[f"flag_rate/severity_{g}"], value, atol=1e-7)


def test_moderation_stats_without_groups_report_no_flag_rates():
    """SafeSora's video moderation logs no flag rates: no groups, no ``flag_rate/...`` keys, the rest unchanged."""
    out = _stats(0, [7], severity=torch.full((7,), -1), groups=[])
    assert not [k for k in out if k.startswith("flag_rate/")] and "severity_accuracy" not in out
    assert out["group_total"].shape == (0,)
    _assert_values(out["accuracy"], 4 / 7)
    _assert_values(out["macro_f1"], 8 / 15)


def test_moderation_stats_severity_accuracy_skips_unlabelled_rows():
    severity = SEVERITY_T.clone()
    severity[5:] = -1  # rows 5 (argmax right) and 6 (argmax wrong) lose their severity label
    out = _stats(4, [7], severity=severity)
    _assert_values(out["severity_accuracy"], 3 / 5)  # rows 0, 2, 4 right of rows 0-4 (not 3/7)
    # the metrics that do not use severity are unchanged
    _assert_values(out["accuracy"], 4 / 7)
    _assert_values(out["macro_f1"], 8 / 15)


def test_moderation_stats_without_severity_groups_safe_unsafe():
    out = _stats(0, [7], severity=torch.full((7,), -1))
    assert out["flag_rate"].shape == (2,)
    _assert_values(out["flag_rate"], [1 / 2, 3 / 5], atol=1e-7)  # safe: row 1 of rows 0, 1; unsafe: rows 3, 4, 5 of 2-6
    assert out["group_total"].tolist() == [2, 5]
    _assert_values(out["flag_rate/safe"], 1 / 2, atol=1e-7)
    _assert_values(out["flag_rate/unsafe"], 3 / 5, atol=1e-7)
    assert "severity_accuracy" not in out
    _assert_values(out["accuracy"], 4 / 7)
    _assert_values(out["f1"], [2 / 3, 2 / 5, 0.0])


@pytest.mark.parametrize("severity_levels", [4, 0])
def test_moderation_stats_two_updates_equal_one(severity_levels):
    severity = SEVERITY_T if severity_levels else torch.full((7,), -1)
    one = _stats(severity_levels, [7], severity=severity, losses=(1.75,))
    # 4 rows at loss 1.0 and 3 at 2.75 average to (4 + 8.25) / 7 = 1.75 (all exact in float32)
    two = _stats(severity_levels, [4, 3], severity=severity, losses=(1.0, 2.75))
    assert one.keys() == two.keys()
    for key in one:
        torch.testing.assert_close(two[key].double(), one[key].double(), rtol=0, atol=1e-12, equal_nan=True,
                                   msg=key)
