"""Tests of the Diffusion-DPO math in lit_safe.losses (denoising_errors, diffusion_dpo_loss, implicit_accuracy)
against numbers worked out by hand with math.log / math.exp (ALGORITHMS.md section 9)."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import math

import pytest
import torch

from lit_safe.losses import denoising_errors, diffusion_dpo_loss, implicit_accuracy


def neg_log_sigmoid(x: float) -> float:
    """-log sigmoid(x) = log(1 + e^-x), written out."""
    return math.log(1.0 + math.exp(-x))


def test_denoising_errors_hand_values():
    # sample 0: pred [[1, 2], [3, 4]], target 0     -> squares 1, 4, 9, 16: mean 7.5, sum 30
    # sample 1: pred [[1, 1], [1, 3]], target 1     -> squares 0, 0, 0, 4:  mean 1.0, sum 4
    pred = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[1.0, 1.0], [1.0, 3.0]]])
    target = torch.stack([torch.zeros(2, 2), torch.ones(2, 2)])
    torch.testing.assert_close(denoising_errors(pred, target), torch.tensor([7.5, 1.0]))
    torch.testing.assert_close(denoising_errors(pred, target, reduction="sum"), torch.tensor([30.0, 4.0]))


def test_denoising_errors_reduce_every_non_batch_dimension_of_video_latents():
    pred = torch.zeros(3, 4, 2, 5, 5)  # (N, C, F, h, w)
    target = torch.full_like(pred, 2.0)
    errors = denoising_errors(pred, target)
    assert errors.shape == (3,)
    torch.testing.assert_close(errors, torch.full((3,), 4.0))
    torch.testing.assert_close(denoising_errors(pred, target, "sum"), torch.full((3,), 4.0 * 4 * 2 * 5 * 5))


def test_denoising_errors_rejects_mismatched_shapes_and_unknown_reduction():
    with pytest.raises(ValueError, match="shape"):
        denoising_errors(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="reduction"):
        denoising_errors(torch.zeros(2, 3), torch.zeros(2, 3), reduction="max")


# One pair by hand: e_theta^w = 0.3, e_ref^w = 0.5, e_theta^l = 0.6, e_ref^l = 0.4, beta = 10.
#   gap = (0.3 - 0.5) - (0.6 - 0.4) = -0.4   (the policy denoises the winner better: favours it)
#   salesforce: inside = -(10 / 2) * -0.4 = 2.0 ; diffusers: inside = -10 * -0.4 = 4.0
POLICY_W, REF_W, POLICY_L, REF_L, BETA = 0.3, 0.5, 0.6, 0.4, 10.0


@pytest.mark.parametrize(("convention", "inside"), [("salesforce", 2.0), ("diffusers", 4.0)])
def test_diffusion_dpo_loss_hand_value(convention, inside):
    t = lambda v: torch.tensor([v])  # noqa: E731
    loss, got = diffusion_dpo_loss(t(POLICY_W), t(POLICY_L), t(REF_W), t(REF_L), BETA, convention)
    torch.testing.assert_close(got, torch.tensor([inside]))
    assert loss.item() == pytest.approx(neg_log_sigmoid(inside), rel=1e-6)


def test_salesforce_convention_is_half_of_diffusers():
    gen = torch.Generator().manual_seed(0)
    errors = [torch.rand(5, generator=gen) for _ in range(4)]
    _, salesforce = diffusion_dpo_loss(*errors, beta=5000.0, convention="salesforce")
    _, diffusers = diffusion_dpo_loss(*errors, beta=5000.0, convention="diffusers")
    torch.testing.assert_close(salesforce, 0.5 * diffusers)
    # Salesforce's beta 5000 is the diffusers example's beta 2500.
    _, diffusers_2500 = diffusion_dpo_loss(*errors, beta=2500.0, convention="diffusers")
    torch.testing.assert_close(salesforce, diffusers_2500)


def test_loss_is_exactly_log_2_when_policy_equals_reference():
    gen = torch.Generator().manual_seed(1)
    e_w, e_l = torch.rand(6, generator=gen), torch.rand(6, generator=gen)
    loss, inside = diffusion_dpo_loss(e_w, e_l, e_w.clone(), e_l.clone(), beta=5000.0)
    assert torch.equal(inside, torch.zeros(6))
    assert torch.equal(loss, torch.tensor(math.log(2.0)))  # log 2 rounded to float32, exactly
    assert implicit_accuracy(inside).item() == 0.0  # ties count as wrong


def test_swapping_winner_and_loser_flips_the_sign_of_inside():
    gen = torch.Generator().manual_seed(2)
    pw, pl, rw, rl = (torch.rand(4, generator=gen) for _ in range(4))
    loss, inside = diffusion_dpo_loss(pw, pl, rw, rl, beta=100.0)
    swapped_loss, swapped = diffusion_dpo_loss(pl, pw, rl, rw, beta=100.0)
    torch.testing.assert_close(swapped, -inside)
    # -log s(x) - (-log s(-x)) = -x per pair, so the mean losses differ by -mean(inside).
    torch.testing.assert_close(loss - swapped_loss, -inside.mean())


def test_implicit_accuracy_and_batch_mean_by_hand():
    # pair 0 as above (inside 2.0); pair 1 the other way round (gap +0.4, inside -2.0).
    pw, pl = torch.tensor([POLICY_W, POLICY_L]), torch.tensor([POLICY_L, POLICY_W])
    rw, rl = torch.tensor([REF_W, REF_L]), torch.tensor([REF_L, REF_W])
    loss, inside = diffusion_dpo_loss(pw, pl, rw, rl, BETA)
    torch.testing.assert_close(inside, torch.tensor([2.0, -2.0]))
    assert implicit_accuracy(inside).item() == 0.5
    assert loss.item() == pytest.approx((neg_log_sigmoid(2.0) + neg_log_sigmoid(-2.0)) / 2, rel=1e-6)


def test_gradient_reaches_the_policy_errors_only():
    pw, pl = torch.tensor([0.3], requires_grad=True), torch.tensor([0.6], requires_grad=True)
    loss, _ = diffusion_dpo_loss(pw, pl, torch.tensor([0.5]), torch.tensor([0.4]), BETA)
    loss.backward()
    # dL/d e_theta^w = -(1 - s(inside)) * d inside / d e_theta^w = -(1 - s(2)) * -5 = 5 (1 - s(2))
    s = 1.0 / (1.0 + math.exp(-2.0))
    assert pw.grad.item() == pytest.approx(5.0 * (1.0 - s), rel=1e-6)
    assert pl.grad.item() == pytest.approx(-5.0 * (1.0 - s), rel=1e-6)


def test_unknown_convention_is_rejected():
    with pytest.raises(ValueError, match="convention"):
        diffusion_dpo_loss(*(torch.zeros(1) for _ in range(4)), beta=1.0, convention="paper")


def test_safe_preference_hits_count_only_safe_versus_unsafe_pairs():
    from lit_safe.losses import safe_preference_hits

    inside = torch.tensor([0.3, -0.2, 0.5, -0.1, 0.4, 0.2])
    first = torch.tensor([-1, -1, 1, 1, 0, 1])  # safe, safe, unsafe, unsafe, unlabelled, unsafe
    second = torch.tensor([1, 1, -1, -1, 1, 1])  # unsafe, unsafe, safe, safe, unsafe, unsafe
    hits, counted = safe_preference_hits(inside, first, second)
    # pair 0: first safe, margin > 0 -> hit; 1: first safe, margin < 0 -> miss; 2: first unsafe, margin > 0 -> miss;
    # 3: first unsafe, margin < 0 -> hit; 4: one unlabelled and 5: both unsafe are not counted
    assert counted.tolist() == [1, 1, 1, 1, 0, 0]
    assert hits.tolist() == [1, 0, 0, 1, 0, 0]
