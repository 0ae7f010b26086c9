"""The Safe RLHF cost loss and sign accuracy against numbers worked out by hand."""

import math

import torch

from lit_safe.losses import cost_preference_loss, sign_accuracy


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_cost_loss_by_hand():
    unsafer, safer = torch.tensor([2.0, -0.5]), torch.tensor([-1.0, 0.5])
    unsafer_sign, safer_sign = torch.tensor([1, 1]), torch.tensor([-1, -1])
    # pair 1: -ls(2 - -1) - ls(1 * 2) - ls(-1 * -1) = -ls(3) - ls(2) - ls(1)
    # pair 2: -ls(-0.5 - 0.5) - ls(1 * -0.5) - ls(-1 * 0.5) = -ls(-1) - ls(-0.5) - ls(-0.5)
    pair1 = -(log_sigmoid(3) + log_sigmoid(2) + log_sigmoid(1))
    pair2 = -(log_sigmoid(-1) + 2 * log_sigmoid(-0.5))
    l2 = (4 + 0.25 + 1 + 0.25) / 4
    expected = (pair1 + pair2) / 2 + 0.001 * l2
    got = cost_preference_loss(unsafer, safer, unsafer_sign, safer_sign, l2_coeff=0.001)
    assert abs(float(got) - expected) < 1e-6


def test_sign_term_pushes_unsafe_up_and_safe_down():
    unsafer = torch.zeros(1, requires_grad=True)
    safer = torch.zeros(1, requires_grad=True)
    cost_preference_loss(unsafer, safer, torch.tensor([1]), torch.tensor([-1]), l2_coeff=0.0).backward()
    # at c = 0 every -log sigmoid term has slope -0.5 in its argument: for the unsafer response the pairwise and
    # the sign term (s = +1) both give -0.5, so gradient descent raises its cost; for the safer one +0.5 + 0.5
    assert float(unsafer.grad) == -1.0 and float(safer.grad) == 1.0
    # both labelled safe: the sign term pulls both below zero, the pairwise term still orders them
    unsafer.grad = safer.grad = None
    cost_preference_loss(unsafer, safer, torch.tensor([-1]), torch.tensor([-1]), l2_coeff=0.0).backward()
    assert float(unsafer.grad) == 0.0 and float(safer.grad) == 1.0


def test_sign_accuracy():
    costs = torch.tensor([1.0, -2.0, 0.5, 0.0])
    signs = torch.tensor([1, -1, -1, 1])
    assert float(sign_accuracy(costs, signs)) == 0.5  # 1 and -2 right, 0.5 wrong sign, 0 counts as wrong
