"""Tests of lit_safe.losses against numbers worked out by hand (ALGORITHMS.md section 3)."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import math

import pytest
import torch

from lit_safe.losses import (
    divergence_index,
    preference_accuracy,
    score_l2,
    sequence_preference_loss,
    token_preference_loss,
)


def softplus(x: float) -> float:
    """-log sigmoid(-x) = log(1 + e^x), written out with math."""
    return math.log(1.0 + math.exp(x))


def neg_log_sigmoid(d: float) -> float:
    """-log sigmoid(d) = log(1 + e^{-d})."""
    return math.log(1.0 + math.exp(-d))


# ----------------------------------------------------------------------------------------------- sequence-wise


def test_sequence_preference_loss_by_hand():
    chosen = torch.tensor([2.0, 0.5], dtype=torch.float64)
    rejected = torch.tensor([1.0, 1.5], dtype=torch.float64)
    # d = chosen - rejected = [1.0, -1.0]
    # -log sigmoid(1)  = log(1 + e^-1) = 0.3132617
    # -log sigmoid(-1) = log(1 + e^1)  = 1.3132617
    bt = (math.log(1 + math.exp(-1.0)) + math.log(1 + math.exp(1.0))) / 2  # = 0.8132617
    assert bt == pytest.approx(0.8132616875, abs=1e-9)
    # L2: mean([2.0^2, 0.5^2, 1.0^2, 1.5^2]) = (4 + 0.25 + 1 + 2.25) / 4 = 1.875; times 0.001 = 0.001875
    expected = bt + 0.001 * 1.875
    loss = sequence_preference_loss(chosen, rejected, l2_coeff=0.001)
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    assert loss.item() == pytest.approx(0.8151366875, abs=1e-9)
    # default eta is 1e-3 (the reference scripts' value)
    assert sequence_preference_loss(chosen, rejected).item() == pytest.approx(expected, abs=1e-12)


def test_sequence_preference_loss_without_l2():
    chosen = torch.tensor([2.0, 0.5])
    rejected = torch.tensor([1.0, 1.5])
    expected = (math.log(1 + math.exp(-1.0)) + math.log(1 + math.exp(1.0))) / 2
    assert sequence_preference_loss(chosen, rejected, l2_coeff=0.0).item() == pytest.approx(expected, abs=1e-6)
    # Equal scores: exactly log 2, whatever their value, when there is no L2 term.
    same = torch.tensor([3.0, -7.0])
    assert sequence_preference_loss(same, same.clone(), l2_coeff=0.0).item() == pytest.approx(math.log(2), abs=1e-6)


def test_sequence_preference_loss_is_not_symmetric():
    chosen, rejected = torch.tensor([2.0]), torch.tensor([0.0])
    good = sequence_preference_loss(chosen, rejected, l2_coeff=0.0)
    bad = sequence_preference_loss(rejected, chosen, l2_coeff=0.0)
    assert good.item() == pytest.approx(neg_log_sigmoid(2.0), abs=1e-6)
    assert bad.item() == pytest.approx(neg_log_sigmoid(-2.0), abs=1e-6)
    assert good < bad


def test_score_l2_is_mean_over_all_scores():
    # mean([1, 4, 9, 16, 25]) = 11 (a flat mean over both tensors, not a mean of means)
    assert score_l2(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0, 5.0])).item() == pytest.approx(11.0)


def test_sequence_preference_loss_gradients_by_hand():
    chosen = torch.tensor([2.0, 0.5], dtype=torch.float64, requires_grad=True)
    rejected = torch.tensor([1.0, 1.5], dtype=torch.float64, requires_grad=True)
    eta = 0.01
    sequence_preference_loss(chosen, rejected, l2_coeff=eta).backward()
    # dL/dc_i = -(1 - sigmoid(d_i)) / B + eta * 2 c_i / (2B);  dL/dr_i = +(1 - sigmoid(d_i)) / B + eta * 2 r_i / (2B)
    sig = [1 / (1 + math.exp(-1.0)), 1 / (1 + math.exp(1.0))]
    expected_c = [-(1 - sig[0]) / 2 + eta * 2.0 / 2, -(1 - sig[1]) / 2 + eta * 0.5 / 2]
    expected_r = [(1 - sig[0]) / 2 + eta * 1.0 / 2, (1 - sig[1]) / 2 + eta * 1.5 / 2]
    torch.testing.assert_close(chosen.grad, torch.tensor(expected_c, dtype=torch.float64))
    torch.testing.assert_close(rejected.grad, torch.tensor(expected_r, dtype=torch.float64))
    assert (chosen.grad != 0).all() and (rejected.grad != 0).all()


# ----------------------------------------------------------------------------------------------- divergence


def test_divergence_index_cases():
    pad = 0
    chosen_ids = torch.tensor(
        [
            [1, 5, 6, 7, 2, pad],  # shared prefix [1, 5, 6], then 7 vs 8
            [1, 5, 6, pad, pad, pad],  # chosen is a prefix of rejected: diverges where chosen ends (3)
            [9, 5, 6, 7, 2, pad],  # first token differs
            [1, 5, 6, 2, 7, 2],  # rejected is a prefix of chosen (rejected ends at 3)
        ]
    )
    chosen_mask = torch.tensor(
        [
            [1, 1, 1, 1, 1, 0],
            [1, 1, 1, 0, 0, 0],
            [1, 1, 1, 1, 1, 0],
            [1, 1, 1, 1, 1, 1],
        ]
    )
    rejected_ids = torch.tensor(
        [
            [1, 5, 6, 8, 9, 2],
            [1, 5, 6, 7, 2, pad],
            [1, 5, 6, 7, 2, pad],
            [1, 5, 6, 2, pad, pad],
        ]
    )
    rejected_mask = torch.tensor(
        [
            [1, 1, 1, 1, 1, 1],
            [1, 1, 1, 1, 1, 0],
            [1, 1, 1, 1, 1, 0],
            [1, 1, 1, 1, 0, 0],
        ]
    )
    out = divergence_index(chosen_ids, rejected_ids, chosen_mask, rejected_mask)
    assert out.dtype == torch.long
    assert out.tolist() == [3, 3, 0, 4]


def test_divergence_index_uses_masks_not_pad_ids():
    # pad == a real token id (pad == eos tokenizers): chosen has ended at 3 but its padding id equals the
    # rejected response's real token there; the mask, not the ids, says they differ from position 3.
    chosen_ids = torch.tensor([[1, 5, 6, 2, 2]])
    chosen_mask = torch.tensor([[1, 1, 1, 0, 0]])
    rejected_ids = torch.tensor([[1, 5, 6, 2, 2]])
    rejected_mask = torch.tensor([[1, 1, 1, 1, 1]])
    assert divergence_index(chosen_ids, rejected_ids, chosen_mask, rejected_mask).tolist() == [3]


# ----------------------------------------------------------------------------------------------- token-wise


def _token_example():
    # Pair 0: chosen ends at 3, rejected at 5, diverge at 2 -> window t in [2, 5]; chosen held at 0.5 for t = 4, 5.
    # Pair 1: chosen ends at 4, rejected at 2, diverge at 1 -> window t in [1, 4]; rejected held at 1.5 for t = 3, 4.
    # Values outside the window and past each end are wild, so reading them would change the loss a lot.
    chosen = torch.tensor(
        [
            [9.0, -9.0, 1.0, 0.5, 100.0, -100.0],
            [9.0, 2.0, 1.0, 0.0, -1.0, 100.0],
        ],
        dtype=torch.float64,
    )
    rejected = torch.tensor(
        [
            [-9.0, 9.0, 0.0, 1.0, 0.5, 2.0],
            [-9.0, 1.0, 1.5, -50.0, 50.0, 50.0],
        ],
        dtype=torch.float64,
    )
    chosen_end, rejected_end = torch.tensor([3, 4]), torch.tensor([5, 2])
    diverge = torch.tensor([2, 1])
    return chosen, rejected, chosen_end, rejected_end, diverge


def _token_expected(eta: float) -> float:
    # Pair 0, window [2, 5]: chosen held = [1.0, 0.5, 0.5, 0.5], rejected = [0.0, 1.0, 0.5, 2.0]
    #   d = [1.0, -0.5, 0.0, -1.5]; bt0 = mean(-log sigmoid(d))
    #   l2_0 = (1 + 0.25 + 0.25 + 0.25 + 0 + 1 + 0.25 + 4) / 8 = 7.0 / 8 = 0.875
    bt0 = sum(neg_log_sigmoid(d) for d in (1.0, -0.5, 0.0, -1.5)) / 4
    l2_0 = 7.0 / 8
    # Pair 1, window [1, 4]: chosen = [2.0, 1.0, 0.0, -1.0], rejected held = [1.0, 1.5, 1.5, 1.5]
    #   d = [1.0, -0.5, -1.5, -2.5]
    #   l2_1 = (4 + 1 + 0 + 1 + 1 + 2.25 + 2.25 + 2.25) / 8 = 13.75 / 8 = 1.71875
    bt1 = sum(neg_log_sigmoid(d) for d in (1.0, -0.5, -1.5, -2.5)) / 4
    l2_1 = 13.75 / 8
    return ((bt0 + eta * l2_0) + (bt1 + eta * l2_1)) / 2


@pytest.mark.parametrize("eta", [0.0, 1e-3, 0.1])
def test_token_preference_loss_by_hand(eta):
    chosen, rejected, chosen_end, rejected_end, diverge = _token_example()
    loss = token_preference_loss(chosen, rejected, chosen_end, rejected_end, diverge, l2_coeff=eta)
    assert loss.item() == pytest.approx(_token_expected(eta), abs=1e-12)


def test_token_preference_loss_holds_end_score_past_the_end():
    chosen, rejected, chosen_end, rejected_end, diverge = _token_example()
    base = token_preference_loss(chosen, rejected, chosen_end, rejected_end, diverge, l2_coeff=0.1)
    # Changing the scores past each sequence's end or before the divergence changes nothing.
    chosen2, rejected2 = chosen.clone(), rejected.clone()
    chosen2[0, 4:] = torch.tensor([-3.0, 7.0])
    chosen2[1, 5] = -42.0
    rejected2[1, 3:] = torch.tensor([0.0, -8.0, 3.0])
    chosen2[:, 0], rejected2[:, 0] = 123.0, -123.0
    chosen2[0, 1] = 5.0
    same = token_preference_loss(chosen2, rejected2, chosen_end, rejected_end, diverge, l2_coeff=0.1)
    assert same.item() == pytest.approx(base.item(), abs=1e-12)
    # Changing an end score changes the loss (it is read at every held position).
    chosen3 = chosen.clone()
    chosen3[0, 3] = 2.0
    assert token_preference_loss(chosen3, rejected, chosen_end, rejected_end, diverge).item() != pytest.approx(
        base.item(), abs=1e-6
    )


def test_token_preference_loss_gradients():
    chosen, rejected, chosen_end, rejected_end, diverge = _token_example()
    chosen.requires_grad_(True)
    rejected.requires_grad_(True)
    token_preference_loss(chosen, rejected, chosen_end, rejected_end, diverge).backward()
    gc, gr = chosen.grad, rejected.grad
    # Pair 0: chosen gets gradient in [2, 3] only (4, 5 are held copies of position 3), rejected in [2, 5].
    assert (gc[0, 2:4] != 0).all() and (gc[0, :2] == 0).all() and (gc[0, 4:] == 0).all()
    assert (gr[0, 2:6] != 0).all() and (gr[0, :2] == 0).all()
    # Pair 1: chosen gets gradient in [1, 4], rejected in [1, 2] only.
    assert (gc[1, 1:5] != 0).all() and (gc[1, 0] == 0) and (gc[1, 5] == 0)
    assert (gr[1, 1:3] != 0).all() and (gr[1, 0] == 0) and (gr[1, 3:] == 0).all()
    # The held end score collects the gradient of three positions (3, 4, 5) in pair 0:
    # each term -log sigmoid(c - r)/(4 * 2) contributes -(1 - sigmoid(d))/8 (l2 part: eta * 2c / (8 * 2)).
    eta = 1e-3
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    expected = sum(-(1 - sig(d)) / 8 + eta * 2 * 0.5 / 16 for d in (-0.5, 0.0, -1.5))
    assert gc[0, 3].item() == pytest.approx(expected, abs=1e-12)


def test_token_loss_with_divergence_index_and_identical_scores_is_log2():
    # End to end with divergence_index: equal scores give log 2 per token, whatever the windows.
    chosen_ids = torch.tensor([[1, 5, 6, 7, 2, 0], [1, 3, 2, 0, 0, 0]])
    rejected_ids = torch.tensor([[1, 5, 8, 2, 0, 0], [1, 4, 4, 4, 2, 0]])
    chosen_mask, rejected_mask = (chosen_ids != 0).long(), (rejected_ids != 0).long()
    diverge = divergence_index(chosen_ids, rejected_ids, chosen_mask, rejected_mask)
    assert diverge.tolist() == [2, 1]
    scores = torch.zeros(2, 6)
    loss = token_preference_loss(scores, scores, torch.tensor([4, 2]), torch.tensor([3, 4]), diverge, l2_coeff=0.5)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)


# ----------------------------------------------------------------------------------------------- accuracy


def test_preference_accuracy_ties_count_as_wrong():
    chosen = torch.tensor([1.0, 2.0, 3.0, 0.0])
    rejected = torch.tensor([0.0, 2.0, 4.0, -1.0])
    # [win, tie, loss, win] -> 2 / 4
    assert preference_accuracy(chosen, rejected).item() == pytest.approx(0.5)
    assert preference_accuracy(torch.zeros(3), torch.zeros(3)).item() == 0.0
    assert preference_accuracy(torch.ones(3), torch.zeros(3)).item() == 1.0
