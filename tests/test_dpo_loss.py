"""DPO math (ALGORITHMS.md section 8): summed response log-probs and the DPO loss, against hand computations."""

import math

import pytest
import torch

from lit_safe.losses import dpo_loss, sequence_logprobs

LN2, LN3 = math.log(2.0), math.log(3.0)


# ------------------------------------------------------------------------------------------------ sequence_logprobs
def test_sequence_logprobs_by_hand_counts_the_first_response_token():
    """Vocabulary of 3 tokens, length 4, logits[:, t] predict token t + 1.

    Sequence 0: prompt = positions 0-1, response = positions 2-3 (tokens 2, 1).
      token 2 at position 2 is read from logits[0, 1] = [0, 0, ln 2]  -> p = 2 / (1 + 1 + 2) = 0.5
      token 1 at position 3 is read from logits[0, 2] = [ln 3, 0, 0] -> p = 1 / (3 + 1 + 1) = 0.2
      sum = ln 0.5 + ln 0.2 = ln 0.1. logits[0, 0] (predicts a prompt token) and logits[0, 3] (after the last
      token) must not count.
    Sequence 1: prompt = position 0, response = position 1 (token 1), then padding.
      token 1 is read from logits[1, 0] = [0, ln 3, 0] -> p = 3 / 5 = 0.6; sum = ln 0.6.
    Sequence 2: no labelled token -> 0.
    """
    logits = torch.zeros(3, 4, 3)
    logits[0, 0] = torch.tensor([10.0, -10.0, 5.0])
    logits[0, 1] = torch.tensor([0.0, 0.0, LN2])
    logits[0, 2] = torch.tensor([LN3, 0.0, 0.0])
    logits[0, 3] = torch.tensor([100.0, 0.0, 0.0])
    logits[1, 0] = torch.tensor([0.0, LN3, 0.0])
    logits[1, 1:] = torch.tensor([50.0, -50.0, 7.0])  # padding positions
    logits[2] = torch.randn(4, 3)
    labels = torch.tensor([[-100, -100, 2, 1], [-100, 1, -100, -100], [-100, -100, -100, -100]])

    out = sequence_logprobs(logits, labels)
    assert out.shape == (3,) and out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor([math.log(0.1), math.log(0.6), 0.0]))

    # The reference's slice dropped the first response token: it would have given ln 0.2 for sequence 0.
    assert abs(float(out[0]) - math.log(0.2)) > 0.5


def test_sequence_logprobs_reads_the_prompts_last_position_and_nothing_after_the_end():
    torch.manual_seed(0)
    logits = torch.randn(1, 5, 7)
    labels = torch.tensor([[-100, -100, 3, 4, -100]])  # response = positions 2, 3
    base = sequence_logprobs(logits, labels)
    moved = logits.clone()
    moved[0, 1, 3] += 1.0  # the prompt's last position predicts the first response token
    assert not torch.allclose(sequence_logprobs(moved, labels), base)
    ignored = logits.clone()
    ignored[0, 0] += 5.0 * torch.randn(7)  # predicts a prompt token
    ignored[0, 3:] += 5.0 * torch.randn(2, 7)  # predict padding / nothing
    torch.testing.assert_close(sequence_logprobs(ignored, labels), base)


def test_sequence_logprobs_equals_a_loop_over_tokens_and_has_gradients():
    torch.manual_seed(1)
    logits = torch.randn(2, 6, 11, requires_grad=True)
    labels = torch.tensor([[-100, -100, 5, 1, 9, -100], [-100, 2, 2, 2, 0, 10]])
    out = sequence_logprobs(logits, labels)
    expected = []
    for n in range(2):
        total = 0.0
        for t in range(1, 6):
            if labels[n, t] != -100:
                total += torch.log_softmax(logits[n, t - 1], -1)[labels[n, t]]
        expected.append(total)
    torch.testing.assert_close(out, torch.stack(expected))
    out.sum().backward()
    assert logits.grad[0, 0].abs().sum() == 0 and logits.grad[0, 1].abs().sum() > 0


def test_sequence_logprobs_of_bfloat16_logits_is_float32():
    logits = torch.randn(1, 4, 5).bfloat16()
    out = sequence_logprobs(logits, torch.tensor([[-100, 1, 2, 3]]))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, sequence_logprobs(logits.float(), torch.tensor([[-100, 1, 2, 3]])))


# --------------------------------------------------------------------------------------------------------- dpo_loss
def test_dpo_loss_is_log_2_when_the_policy_is_the_reference():
    logps = torch.tensor([-3.0, -12.5, -0.2])
    other = torch.tensor([-7.0, -1.0, -4.0])
    loss, chosen, rejected = dpo_loss(logps, other, logps.clone(), other.clone(), beta=0.1)
    torch.testing.assert_close(loss, torch.tensor(LN2))
    assert chosen.eq(0).all() and rejected.eq(0).all()


def test_dpo_loss_by_hand():
    """beta = 0.5.
    Pair 0: pi_w = -2, pi_l = -3, ref_w = ref_l = -2.5 -> r_w = 0.5 * 0.5 = 0.25, r_l = 0.5 * -0.5 = -0.25,
            margin 0.5, loss -log sigmoid(0.5) = log(1 + e^-0.5) = 0.474077.
    Pair 1: pi_w = pi_l = -1, ref_w = -0.5, ref_l = -1.5 -> r_w = -0.25, r_l = 0.25, margin -0.5,
            loss log(1 + e^0.5) = 0.974077.
    Mean: 0.724077.
    """
    loss, chosen, rejected = dpo_loss(torch.tensor([-2.0, -1.0]), torch.tensor([-3.0, -1.0]),
                                      torch.tensor([-2.5, -0.5]), torch.tensor([-2.5, -1.5]), beta=0.5)
    torch.testing.assert_close(chosen, torch.tensor([0.25, -0.25]))
    torch.testing.assert_close(rejected, torch.tensor([-0.25, 0.25]))
    assert loss.item() == pytest.approx((math.log1p(math.exp(-0.5)) + math.log1p(math.exp(0.5))) / 2, abs=1e-6)
    assert loss.item() == pytest.approx(0.724077, abs=1e-6)


def test_dpo_loss_swapping_chosen_and_rejected_flips_the_sign():
    """One pair with margin m: L(m) = log(1 + e^-m), L(-m) = log(1 + e^m), so L(-m) - L(m) = m."""
    pc, pr = torch.tensor([-2.0], requires_grad=True), torch.tensor([-4.0], requires_grad=True)
    rc, rr = torch.tensor([-3.0]), torch.tensor([-3.0])
    beta = 0.2
    loss, chosen, rejected = dpo_loss(pc, pr, rc, rr, beta)
    swapped, chosen_s, rejected_s = dpo_loss(pr, pc, rr, rc, beta)
    margin = float(chosen - rejected)
    assert margin == pytest.approx(beta * 2.0)
    assert float(chosen_s - rejected_s) == pytest.approx(-margin)
    assert swapped.item() - loss.item() == pytest.approx(margin, abs=1e-6)
    grad_chosen = torch.autograd.grad(loss, pc)[0]
    grad_swapped = torch.autograd.grad(swapped, pc)[0]
    # d/d pi_w of the loss: -beta * sigmoid(-m) (pushes pi_w up); swapped, pi_w is the rejected one: +beta sigmoid(m)
    assert grad_chosen.item() == pytest.approx(-beta * torch.sigmoid(torch.tensor(-margin)).item(), abs=1e-6)
    assert grad_swapped.item() == pytest.approx(beta * torch.sigmoid(torch.tensor(margin)).item(), abs=1e-6)


def test_dpo_loss_gradient_reaches_only_the_policy_and_rewards_are_detached():
    pc, pr = torch.tensor([-1.0, -2.0], requires_grad=True), torch.tensor([-1.5, -0.5], requires_grad=True)
    rc, rr = torch.tensor([-1.2, -2.2]), torch.tensor([-1.1, -0.4])
    loss, chosen, rejected = dpo_loss(pc, pr, rc, rr, beta=0.1)
    assert not chosen.requires_grad and not rejected.requires_grad
    loss.backward()
    assert (pc.grad < 0).all() and (pr.grad > 0).all()  # raise the chosen log-probs, lower the rejected ones
