"""Tests of lit_safe.rl (PPO-Lagrangian, ALGORITHMS.md section 7) against numbers worked out by hand.

Expected values are computed with Python floats / ``math`` in the test (the arithmetic is written in comments), never
with the function under test.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import math

import pytest
import torch

from lit_safe.rl import (
    clamp_log_lambda,
    combined_advantage,
    critic_loss,
    end_positions,
    gae,
    gather_log_probs,
    lagrange_loss,
    masked_mean,
    ppo_actor_loss,
    response_mean,
    shaped_rewards,
)

F64 = torch.float64


def t64(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=F64)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: float) -> None:
    """Same shape, no NaN, max absolute difference <= tol (plain torch: torch.testing's first call costs ~0.6 s)."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    diff = (actual.double() - expected.double()).abs()
    assert not torch.isnan(diff).any(), (actual, expected)
    assert diff.max().item() <= tol if diff.numel() else True, (actual, expected)


def assert_rows(actual: torch.Tensor, expected, tol: float = 1e-9) -> None:
    """Compare a tensor with nested lists of Python floats computed by hand."""
    assert_close(actual, t64(expected), tol)


# ----------------------------------------------------------------------------------------------- masked_mean


def test_masked_mean_global():
    x = t64([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]])
    # (1 + 2 + 5 + 6) / 4 = 14 / 4 = 3.5
    assert masked_mean(x, mask).item() == pytest.approx(3.5, abs=1e-12)
    # a boolean mask gives the same
    assert masked_mean(x, mask.bool()).item() == pytest.approx(3.5, abs=1e-12)
    # only the first element: 1 / 1
    assert masked_mean(x, torch.tensor([[1, 0, 0], [0, 0, 0]])).item() == pytest.approx(1.0, abs=1e-12)


def test_masked_mean_per_dim_and_empty_rows():
    x = t64([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    mask = torch.tensor([[1, 0, 1], [0, 0, 0], [0, 1, 1]])
    # rows: (1 + 3) / 2 = 2; empty row -> 0; (8 + 9) / 2 = 8.5
    assert_rows(masked_mean(x, mask, dim=1), [2.0, 0.0, 8.5])
    assert_rows(masked_mean(x, mask, dim=-1), [2.0, 0.0, 8.5])
    # columns: 1 / 1 = 1; 8 / 1 = 8; (3 + 9) / 2 = 6
    assert_rows(masked_mean(x, mask, dim=0), [1.0, 8.0, 6.0])
    # an all-zero mask gives 0 globally too (no division by zero, no NaN)
    assert masked_mean(x, torch.zeros(3, 3)).item() == 0.0


def test_masked_mean_ignores_huge_values_outside_mask():
    x = t64([[1.0, 1e30], [-1e30, 3.0]])
    mask = torch.tensor([[1, 0], [0, 1]])
    # (1 + 3) / 2 = 2
    assert masked_mean(x, mask).item() == pytest.approx(2.0, abs=1e-12)
    assert_rows(masked_mean(x, mask, dim=1), [1.0, 3.0])


def test_response_mean_weighs_every_response_alike():
    x = t64([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    mask = torch.tensor([[1, 1, 1], [0, 1, 0], [0, 0, 0]])
    # sequence: row means 2 and 5 (the row without actions does not count): (2 + 5) / 2 = 3.5
    assert response_mean(x, mask).item() == pytest.approx(3.5, abs=1e-12)
    assert response_mean(x, mask.bool(), "sequence").item() == pytest.approx(3.5, abs=1e-12)
    # token: (1 + 2 + 3 + 5) / 4 = 2.75: the 3-action response weighs three times the 1-action one
    assert response_mean(x, mask, "token").item() == pytest.approx(2.75, abs=1e-12)
    assert response_mean(x, torch.zeros(3, 3)).item() == 0.0
    with pytest.raises(ValueError, match="averaging must be 'sequence' or 'token'"):
        response_mean(x, mask, "tokens")


# ----------------------------------------------------------------------------------------------- gather_log_probs


def _log_softmax_at(row: list[float], index: int) -> float:
    return row[index] - math.log(sum(math.exp(v) for v in row))


def test_gather_log_probs_by_hand():
    logits = t64([[[0.0, 1.0, 2.0, 3.0], [1.0, 1.0, 1.0, 1.0], [5.0, -5.0, 0.0, 9.0]]])  # (1, 3, 4)
    ids = torch.tensor([[2, 3, 0]])
    out = gather_log_probs(logits, ids)
    assert out.shape == (1, 2)  # (B, L - 1)
    assert out.dtype == torch.float32
    # t = 0: logits[:, 0] at token ids[:, 1] = 3: 3 - log(e^0 + e^1 + e^2 + e^3) = 3 - 3.4401897 = -0.4401897
    lp0 = 3.0 - math.log(math.exp(0.0) + math.exp(1.0) + math.exp(2.0) + math.exp(3.0))
    # t = 1: logits[:, 1] (uniform) at token ids[:, 2] = 0: log(1/4) = -1.3862944
    lp1 = math.log(0.25)
    assert out[0, 0].item() == pytest.approx(lp0, abs=1e-6)
    assert out[0, 1].item() == pytest.approx(lp1, abs=1e-6)
    # the off-by-one alternatives differ: logits[:, 0] at ids[:, 0] = 2 would give 2 - 3.44 = -1.44,
    # logits[:, 1] at ids[:, 1] would give log(1/4) for t = 0
    assert abs(lp0 - _log_softmax_at([0.0, 1.0, 2.0, 3.0], 2)) > 0.5
    assert abs(lp0 - lp1) > 0.5


def test_gather_log_probs_ignores_last_logits_and_casts_to_float32():
    logits = torch.tensor([[[0.0, 1.0, 2.0, 3.0], [1.0, 1.0, 1.0, 1.0], [5.0, -5.0, 0.0, 9.0]]], dtype=torch.bfloat16)
    ids = torch.tensor([[2, 3, 0]])
    out = gather_log_probs(logits, ids)
    assert out.dtype == torch.float32
    changed = logits.clone()
    changed[:, -1] = torch.tensor([-100.0, 50.0, 7.0, 0.0], dtype=torch.bfloat16)  # the last position predicts nothing
    assert_close(gather_log_probs(changed, ids), out, 0.0)
    # bf16 logits 0..3 are exact, so the float32 log-softmax is the hand value to float32 precision
    assert out[0, 0].item() == pytest.approx(_log_softmax_at([0.0, 1.0, 2.0, 3.0], 3), abs=1e-6)


def test_gather_log_probs_batch_of_two():
    logits = torch.zeros(2, 3, 2, dtype=F64)
    logits[0, 0] = t64([0.0, math.log(3.0)])  # p = [1/4, 3/4]
    logits[0, 1] = t64([math.log(4.0), 0.0])  # p = [4/5, 1/5]
    logits[1, 0] = t64([0.0, 0.0])  # p = [1/2, 1/2]
    logits[1, 1] = t64([0.0, math.log(9.0)])  # p = [1/10, 9/10]
    ids = torch.tensor([[1, 1, 0], [0, 0, 1]])
    out = gather_log_probs(logits, ids)
    # row 0: log(3/4), log(4/5); row 1: log(1/2), log(9/10)
    assert_rows(out, [[math.log(0.75), math.log(0.8)], [math.log(0.5), math.log(0.9)]], tol=1e-6)


# ----------------------------------------------------------------------------------------------- end_positions


def test_end_positions_ragged_rows():
    mask = torch.tensor(
        [
            [0, 1, 1, 0, 0],  # response of 2 actions, then padding: end 2
            [0, 1, 1, 1, 1],  # response runs to the last action: end 4
            [0, 1, 0, 0, 0],  # early EOS, a response of one action: end 1
            [1, 0, 0, 0, 0],  # response at the very first action: end 0
        ]
    )
    assert end_positions(mask).tolist() == [2, 4, 1, 0]
    assert end_positions(mask.bool()).tolist() == [2, 4, 1, 0]
    assert end_positions(mask.float()).tolist() == [2, 4, 1, 0]


def test_end_positions_all_zero_row_raises():
    mask = torch.tensor([[0, 1, 1], [0, 0, 0]])
    with pytest.raises(ValueError, match="no response action"):
        end_positions(mask)


# ----------------------------------------------------------------------------------------------- shaped_rewards

# two sequences, 5 actions each; action 0 is a prompt action in both rows, row 0 answers with 3 actions (end 3),
# row 1 with one (end 1); the KL outside the mask is large and must not leak in
RAGGED_MASK = torch.tensor([[0, 1, 1, 1, 0], [0, 1, 0, 0, 0]])
RAGGED_KL = t64([[9.0, 0.5, -1.0, 2.0, 7.0], [-3.0, 4.0, 6.0, 8.0, 10.0]])
BETA = 0.1


def test_shaped_rewards_reward_stream():
    score = t64([1.5, -2.0])
    out = shaped_rewards(RAGGED_KL, score, RAGGED_MASK, kl_coeff=BETA, kl_sign=-1.0)
    # row 0: t1: -0.1 * 0.5 = -0.05; t2: -0.1 * -1 = +0.1; t3 (end): -0.1 * 2 + 1.5 = 1.3
    # row 1: t1 (end): -0.1 * 4 + (-2.0) = -2.4
    assert_rows(out, [[0.0, -0.05, 0.1, 1.3, 0.0], [0.0, -2.4, 0.0, 0.0, 0.0]])


def test_shaped_rewards_cost_stream():
    score = t64([1.5, -2.0])
    out = shaped_rewards(RAGGED_KL, score, RAGGED_MASK, kl_coeff=BETA, kl_sign=1.0)
    # row 0: t1: +0.05; t2: -0.1; t3 (end): +0.2 + 1.5 = 1.7
    # row 1: t1 (end): +0.4 - 2.0 = -1.6
    assert_rows(out, [[0.0, 0.05, -0.1, 1.7, 0.0], [0.0, -1.6, 0.0, 0.0, 0.0]])


def test_shaped_rewards_streams_cancel_kl_in_combined_advantage():
    # r_t - c_t with the same score: the score cancels, leaving -2 beta kl_t on the mask (the net KL weight argument)
    score = t64([0.3, 0.7])
    r = shaped_rewards(RAGGED_KL, score, RAGGED_MASK, kl_coeff=BETA, kl_sign=-1.0)
    c = shaped_rewards(RAGGED_KL, score, RAGGED_MASK, kl_coeff=BETA, kl_sign=1.0)
    # row 0: -0.2 * [0.5, -1, 2] = [-0.1, 0.2, -0.4]; row 1: -0.2 * 4 = -0.8
    assert_rows(r - c, [[0.0, -0.1, 0.2, -0.4, 0.0], [0.0, -0.8, 0.0, 0.0, 0.0]])


def test_shaped_rewards_clip_binds_on_the_whole_shaped_value():
    score = t64([80.0, -80.0])
    r = shaped_rewards(RAGGED_KL, score, RAGGED_MASK, kl_coeff=BETA, kl_sign=-1.0, clip=50.0)
    # row 0 end: clip(-0.2 + 80 = 79.8) = 50 (clipping the score alone first would give 50 - 0.2 = 49.8)
    # row 1 end: clip(-0.4 - 80 = -80.4) = -50
    assert_rows(r, [[0.0, -0.05, 0.1, 50.0, 0.0], [0.0, -50.0, 0.0, 0.0, 0.0]])
    c = shaped_rewards(RAGGED_KL, score, RAGGED_MASK, kl_coeff=BETA, kl_sign=1.0, clip=50.0)
    # row 0 end: clip(0.2 + 80) = 50; row 1 end: clip(0.4 - 80 = -79.6) = -50
    assert_rows(c, [[0.0, 0.05, -0.1, 50.0, 0.0], [0.0, -50.0, 0.0, 0.0, 0.0]])
    # a small clip also binds on the KL term of a non-end action: clip=0.08 -> row 0 t2: 0.1 -> 0.08, end 1.3 -> 0.08
    small = shaped_rewards(RAGGED_KL, t64([1.5, -2.0]), RAGGED_MASK, kl_coeff=BETA, kl_sign=-1.0, clip=0.08)
    assert_rows(small, [[0.0, -0.05, 0.08, 0.08, 0.0], [0.0, -0.08, 0.0, 0.0, 0.0]])


def test_shaped_rewards_float32_default_clip():
    kl = torch.tensor([[0.0, 1000.0, 0.0]], dtype=torch.float32)
    mask = torch.tensor([[1, 1, 1]])
    out = shaped_rewards(kl, torch.tensor([0.25]), mask, kl_coeff=0.1, kl_sign=-1.0)
    # t1: -0.1 * 1000 = -100 -> clipped to the default -50; t2 (end): 0 + 0.25
    assert out.dtype == torch.float32
    assert_rows(out, [[0.0, -50.0, 0.25]], tol=1e-6)


# ----------------------------------------------------------------------------------------------- gae

# 6 actions; action 0 is a prompt action (mask 0), row 0 answers at 1..3 and row 1 at 1..2, padding after.
GAE_MASK = torch.tensor([[0, 1, 1, 1, 0, 0], [0, 1, 1, 0, 0, 0]])
GAE_REWARDS = t64([[0.0, 1.0, 0.0, 2.0, 0.0, 0.0], [0.0, -1.0, 3.0, 0.0, 0.0, 0.0]])
# values outside the mask are large: they must not matter
GAE_VALUES = t64([[100.0, 0.5, 1.0, 1.5, -100.0, 100.0], [50.0, 2.0, -1.0, 77.0, -33.0, 11.0]])


def test_gae_gamma_1_lam_095_by_hand():
    adv, ret = gae(GAE_REWARDS, GAE_VALUES, GAE_MASK, gamma=1.0, lam=0.95)
    # row 0 (V after the end = 0):
    #   t3: delta = 2 + 0 - 1.5 = 0.5;          A3 = 0.5
    #   t2: delta = 0 + 1.5 - 1.0 = 0.5;        A2 = 0.5 + 0.95 * 0.5 = 0.975
    #   t1: delta = 1 + 1.0 - 0.5 = 1.5;        A1 = 1.5 + 0.95 * 0.975 = 2.42625
    # row 1:
    #   t2: delta = 3 + 0 - (-1) = 4;           A2 = 4
    #   t1: delta = -1 + (-1) - 2 = -4;         A1 = -4 + 0.95 * 4 = -0.2
    a = [[0.0, 2.42625, 0.975, 0.5, 0.0, 0.0], [0.0, -0.2, 4.0, 0.0, 0.0, 0.0]]
    assert_rows(adv, a)
    # returns = A + V on the mask: row 0: 2.92625, 1.975, 2.0; row 1: 1.8, 3.0
    assert_rows(ret, [[0.0, 2.92625, 1.975, 2.0, 0.0, 0.0], [0.0, 1.8, 3.0, 0.0, 0.0, 0.0]])


def test_gae_gamma_09_lam_05_by_hand():
    adv, ret = gae(GAE_REWARDS, GAE_VALUES, GAE_MASK, gamma=0.9, lam=0.5)
    # gamma * lam = 0.45
    # row 0:
    #   t3: delta = 2 + 0.9 * 0 - 1.5 = 0.5;            A3 = 0.5
    #   t2: delta = 0 + 0.9 * 1.5 - 1.0 = 0.35;         A2 = 0.35 + 0.45 * 0.5 = 0.575
    #   t1: delta = 1 + 0.9 * 1.0 - 0.5 = 1.4;          A1 = 1.4 + 0.45 * 0.575 = 1.65875
    # row 1:
    #   t2: delta = 3 + 0 - (-1) = 4;                   A2 = 4
    #   t1: delta = -1 + 0.9 * (-1) - 2 = -3.9;         A1 = -3.9 + 0.45 * 4 = -2.1
    assert_rows(adv, [[0.0, 1.65875, 0.575, 0.5, 0.0, 0.0], [0.0, -2.1, 4.0, 0.0, 0.0, 0.0]])
    # returns: row 0: 1.65875 + 0.5 = 2.15875, 0.575 + 1 = 1.575, 0.5 + 1.5 = 2.0; row 1: -2.1 + 2 = -0.1, 4 - 1 = 3
    assert_rows(ret, [[0.0, 2.15875, 1.575, 2.0, 0.0, 0.0], [0.0, -0.1, 3.0, 0.0, 0.0, 0.0]])


def test_gae_ignores_values_and_rewards_outside_mask():
    outside = GAE_MASK == 0
    for gamma, lam in [(1.0, 0.95), (0.9, 0.5)]:
        adv, ret = gae(GAE_REWARDS, GAE_VALUES, GAE_MASK, gamma=gamma, lam=lam)
        for fill in (0.0, 1e6, -1e6):
            values = GAE_VALUES.masked_fill(outside, fill)
            rewards = GAE_REWARDS.masked_fill(outside, -fill + 7.0)
            adv2, ret2 = gae(rewards, values, GAE_MASK, gamma=gamma, lam=lam)
            assert_close(adv2, adv, 1e-9)
            assert_close(ret2, ret, 1e-9)
        assert torch.all(adv[outside] == 0) and torch.all(ret[outside] == 0)


def test_gae_returns_are_advantages_plus_values_on_mask():
    adv, ret = gae(GAE_REWARDS, GAE_VALUES, GAE_MASK, gamma=0.9, lam=0.5)
    m = GAE_MASK.bool()
    assert_close(ret[m], adv[m] + GAE_VALUES[m], 1e-12)


def _gae_reference(rewards: list[float], values: list[float], mask: list[int], gamma: float, lam: float):
    """One row, explicit loop over that row's response positions only; V after the end is 0."""
    positions = [i for i, m in enumerate(mask) if m]
    adv = [0.0] * len(mask)
    ret = [0.0] * len(mask)
    running = 0.0
    next_value = 0.0
    for i in reversed(positions):
        delta = rewards[i] + gamma * next_value - values[i]
        running = delta + gamma * lam * running
        adv[i] = running
        ret[i] = running + values[i]
        next_value = values[i]
    return adv, ret


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.5), (0.99, 1.0), (1.0, 0.0)])
def test_gae_matches_bruteforce_on_random_ragged_batches(gamma, lam):
    gen = torch.Generator().manual_seed(1234)
    for _ in range(5):
        batch, length = 6, 12
        rewards = torch.randn(batch, length, generator=gen, dtype=F64)
        values = torch.randn(batch, length, generator=gen, dtype=F64) * 10
        mask = torch.zeros(batch, length, dtype=torch.long)
        for b in range(batch):
            start = int(torch.randint(0, length, (1,), generator=gen))
            n = int(torch.randint(1, length - start + 1, (1,), generator=gen))
            mask[b, start : start + n] = 1
        adv, ret = gae(rewards, values, mask, gamma=gamma, lam=lam)
        for b in range(batch):
            ref_adv, ref_ret = _gae_reference(rewards[b].tolist(), values[b].tolist(), mask[b].tolist(), gamma, lam)
            assert adv[b].tolist() == pytest.approx(ref_adv, abs=1e-6)
            assert ret[b].tolist() == pytest.approx(ref_ret, abs=1e-6)


# ----------------------------------------------------------------------------------------------- combined_advantage


def test_combined_advantage_by_hand_with_float_lambda():
    a_r = t64([1.0, -2.0, 0.5])
    a_c = t64([0.5, 1.0, -3.0])
    out = combined_advantage(a_r, a_c, 0.5)
    # (1 - 0.5 * 0.5) / 1.5 = 0.75 / 1.5 = 0.5; (-2 - 0.5) / 1.5 = -5/3; (0.5 + 1.5) / 1.5 = 4/3
    assert_rows(out, [0.5, -5.0 / 3.0, 4.0 / 3.0], tol=1e-12)
    # lambda = 0 leaves A_R; lambda = 3: (1 - 1.5) / 4 = -0.125, (-2 - 3) / 4 = -1.25, (0.5 + 9) / 4 = 2.375
    assert_rows(combined_advantage(a_r, a_c, 0.0), [1.0, -2.0, 0.5], tol=1e-12)
    assert_rows(combined_advantage(a_r, a_c, 3.0), [-0.125, -1.25, 2.375], tol=1e-12)


def test_combined_advantage_detaches_tensor_lambda():
    a_r = torch.tensor([[1.0, -2.0, 0.5]])
    a_c = torch.tensor([[0.5, 1.0, -3.0]])
    lam = torch.tensor(0.5, requires_grad=True)
    out = combined_advantage(a_r, a_c, lam)
    assert not out.requires_grad
    assert_rows(out, [[0.5, -5.0 / 3.0, 4.0 / 3.0]], tol=1e-6)
    # a float64 lambda (another dtype) requiring grad is detached as well
    lam64 = torch.tensor(0.5, dtype=F64, requires_grad=True)
    assert not combined_advantage(a_r, a_c, lam64).requires_grad
    # gradient still flows into the advantages when they require it, never into lambda
    a_r_grad = a_r.clone().requires_grad_(True)
    combined_advantage(a_r_grad, a_c, lam).sum().backward()
    assert lam.grad is None
    # d/dA_R of sum((A_R - lam A_C) / (1 + lam)) = 1 / 1.5
    assert_rows(a_r_grad.grad, [[1 / 1.5] * 3], tol=1e-6)


# ----------------------------------------------------------------------------------------------- ppo_actor_loss


def test_ppo_actor_loss_inside_trust_region_is_plain_surrogate():
    ratios = [1.0, 1.1, 0.9, 1.15, 0.85, 1.05]
    advs = [1.0, 2.0, -1.0, -0.5, 3.0, 0.25]
    log_probs = torch.tensor([[math.log(r) for r in ratios]], dtype=F64, requires_grad=True)
    old = torch.zeros(1, 6, dtype=F64)
    loss, frac = ppo_actor_loss(log_probs, old, t64([advs]), torch.ones(1, 6), clip_eps=0.2)
    # -mean(rho A) = -(1 + 2.2 - 0.9 - 0.575 + 2.55 + 0.2625) / 6 = -4.5375 / 6 = -0.75625
    assert loss.item() == pytest.approx(-4.5375 / 6, abs=1e-9)
    assert frac.item() == 0.0
    loss.backward()
    # d loss / d log pi_t = -rho_t A_t / 6 everywhere (no clipping)
    assert_rows(log_probs.grad, [[-r * a / 6 for r, a in zip(ratios, advs)]], tol=1e-9)


def _mixed_example():
    # old log-probs non-zero so the ratio really is exp(new - old)
    old = t64([[-1.0, -2.0, -0.5, -3.0]])
    ratios = [1.1, 1.5, 0.5, 0.9]
    log_probs = (old + t64([[math.log(r) for r in ratios]])).requires_grad_(True)
    advs = t64([[2.0, 1.0, -1.0, -3.0]])
    return log_probs, old, advs


def test_ppo_actor_loss_mixed_clip_cases_by_hand():
    log_probs, old, advs = _mixed_example()
    loss, frac = ppo_actor_loss(log_probs, old, advs, torch.ones(1, 4), clip_eps=0.2)
    # t0: rho 1.1 (inside), A 2:      min(2.2, 2.2) = 2.2
    # t1: rho 1.5 > 1.2,   A 1:       min(1.5, 1.2 * 1) = 1.2    (clip binds)
    # t2: rho 0.5 < 0.8,   A -1:      min(-0.5, 0.8 * -1) = -0.8 (clip binds)
    # t3: rho 0.9 (inside), A -3:     -2.7
    # loss = -(2.2 + 1.2 - 0.8 - 2.7) / 4 = -(-0.1) / 4 = 0.025
    assert loss.item() == pytest.approx(0.025, abs=1e-9)
    assert frac.item() == pytest.approx(0.5, abs=1e-12)  # 2 of 4 actions clipped
    assert not frac.requires_grad
    loss.backward()
    # gradient -rho A / 4 where unclipped, 0 where the clip binds: [-0.55, 0, 0, 0.675]
    assert_rows(log_probs.grad, [[-2.2 / 4, 0.0, 0.0, 2.7 / 4]], tol=1e-9)


def test_ppo_actor_loss_clip_is_pessimistic_only():
    # outside the range on the side that would *lower* the objective the unclipped term is the min and keeps gradient
    ratios = [1.5, 0.5]
    log_probs = torch.tensor([[math.log(r) for r in ratios]], dtype=F64, requires_grad=True)
    advs = t64([[-1.0, 2.0]])
    loss, frac = ppo_actor_loss(log_probs, torch.zeros(1, 2, dtype=F64), advs, torch.ones(1, 2), clip_eps=0.2)
    # t0: min(1.5 * -1 = -1.5, 1.2 * -1 = -1.2) = -1.5; t1: min(0.5 * 2 = 1.0, 0.8 * 2 = 1.6) = 1.0
    # loss = -(-1.5 + 1.0) / 2 = 0.25
    assert loss.item() == pytest.approx(0.25, abs=1e-9)
    assert frac.item() == 0.0
    loss.backward()
    # -rho A / 2: t0: -(1.5 * -1) / 2 = 0.75; t1: -(0.5 * 2) / 2 = -0.5
    assert_rows(log_probs.grad, [[0.75, -0.5]], tol=1e-9)


def test_ppo_actor_loss_ignores_masked_positions():
    log_probs, old, advs = _mixed_example()
    # a second, fully masked row and a masked tail in row 0 with wild ratios and advantages
    lp = torch.cat(
        [torch.cat([log_probs.detach(), t64([[5.0]])], 1), t64([[4.0, -6.0, 3.0, 2.0, 1.0]])], 0
    ).requires_grad_(True)
    old2 = torch.cat([torch.cat([old, t64([[0.0]])], 1), torch.zeros(1, 5, dtype=F64)], 0)
    advs2 = torch.cat([torch.cat([advs, t64([[1e3]])], 1), t64([[-1e3, 1e3, -1e3, 1e3, 1e3]])], 0)
    mask = torch.tensor([[1, 1, 1, 1, 0], [0, 0, 0, 0, 0]])
    loss, frac = ppo_actor_loss(lp, old2, advs2, mask, clip_eps=0.2)
    # same as the 1x4 example: 0.025 and 2 / 4 clipped
    assert loss.item() == pytest.approx(0.025, abs=1e-9)
    assert frac.item() == pytest.approx(0.5, abs=1e-12)
    loss.backward()
    assert_rows(lp.grad, [[-2.2 / 4, 0.0, 0.0, 2.7 / 4, 0.0], [0.0] * 5], tol=1e-9)


def test_ppo_actor_loss_averages_each_response_first():
    # two responses of 1 and 3 actions, ratio 1 everywhere (log pi = log pi_old), advantages 2 and 1, 1, 1
    log_probs = torch.zeros(2, 3, dtype=F64, requires_grad=True)
    advs = t64([[2.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    mask = torch.tensor([[1, 0, 0], [1, 1, 1]])
    loss, frac = ppo_actor_loss(log_probs, torch.zeros(2, 3, dtype=F64), advs, mask, clip_eps=0.2)
    # sequence: -(2 / 1 + 3 / 3) / 2 = -1.5 (a token mean would give -(2 + 3) / 4 = -1.25)
    assert loss.item() == pytest.approx(-1.5, abs=1e-12)
    assert frac.item() == 0.0
    loss.backward()
    # d/d log pi at rho = 1: -A / (n_i * B): row 0: -2 / 2 = -1; row 1: -1 / 6 each
    assert_rows(log_probs.grad, [[-1.0, 0.0, 0.0], [-1 / 6, -1 / 6, -1 / 6]], tol=1e-12)
    token, _ = ppo_actor_loss(log_probs.detach(), torch.zeros(2, 3, dtype=F64), advs, mask, 0.2, averaging="token")
    assert token.item() == pytest.approx(-1.25, abs=1e-12)


# ----------------------------------------------------------------------------------------------- critic_loss


def test_critic_loss_by_hand():
    values = t64([[10.0, 10.0, 1.0, -8.0]]).requires_grad_(True)
    old = t64([[0.0, 0.0, 0.0, 0.0]])
    returns = t64([[0.0, 12.0, 3.0, -9.0]])
    loss = critic_loss(values, old, returns, torch.ones(1, 4), clip=5.0)
    # t0: clip(V) = 5; (10 - 0)^2 = 100 vs (5 - 0)^2 = 25 -> 100 (unclipped larger)
    # t1: clip(V) = 5; (10 - 12)^2 = 4 vs (5 - 12)^2 = 49 -> 49 (clipped larger)
    # t2: inside: (1 - 3)^2 = 4
    # t3: clip(V) = -5; (-8 + 9)^2 = 1 vs (-5 + 9)^2 = 16 -> 16 (clipped larger)
    # loss = 0.5 * (100 + 49 + 4 + 16) / 4 = 0.5 * 169 / 4 = 21.125
    assert loss.item() == pytest.approx(21.125, abs=1e-9)
    loss.backward()
    # d/dV: 0.5 * 2 (V - G) / 4 on unclipped branches, 0 where the clipped branch (clip binding) is taken
    # t0: (10 - 0) / 4 = 2.5; t1: 0; t2: (1 - 3) / 4 = -0.5; t3: 0
    assert_rows(values.grad, [[2.5, 0.0, -0.5, 0.0]], tol=1e-9)


def test_critic_loss_clip_is_relative_to_old_values():
    values = t64([[3.0, -1.0]])
    old = t64([[-4.0, 2.0]])
    returns = t64([[0.0, 10.0]])
    # t0: V - V_old = 7 -> clip to 5: -4 + 5 = 1; (3 - 0)^2 = 9 vs (1 - 0)^2 = 1 -> 9
    # t1: V - V_old = -3 (inside): (-1 - 10)^2 = 121
    # loss = 0.5 * (9 + 121) / 2 = 32.5
    assert critic_loss(values, old, returns, torch.ones(1, 2), clip=5.0).item() == pytest.approx(32.5, abs=1e-9)
    # clip 1: t0: -4 + 1 = -3: (-3)^2 = 9 vs 9 -> 9; t1: 2 - 1 = 1: (1 - 10)^2 = 81 vs 121 -> 121; same 32.5
    # clip 0.5: t0: -3.5: 12.25 vs 9 -> 12.25; t1: 1.5: 72.25 vs 121 -> 121; 0.5 * 133.25 / 2 = 33.3125
    assert critic_loss(values, old, returns, torch.ones(1, 2), clip=0.5).item() == pytest.approx(33.3125, abs=1e-9)


def test_critic_loss_ignores_masked_positions():
    values = t64([[10.0, 10.0, 1.0, -8.0, 1e4], [1e3, -1e3, 5.0, 6.0, 7.0]])
    old = t64([[0.0, 0.0, 0.0, 0.0, -1e4], [0.0, 0.0, 0.0, 0.0, 0.0]])
    returns = t64([[0.0, 12.0, 3.0, -9.0, 1e5], [-1e3, 1e3, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0], [0, 0, 0, 0, 0]])
    # same four positions as test_critic_loss_by_hand: 21.125
    assert critic_loss(values, old, returns, mask, clip=5.0).item() == pytest.approx(21.125, abs=1e-9)


def test_critic_loss_averages_each_response_first():
    values = t64([[1.0, 0.0, 0.0], [2.0, 2.0, 2.0]])
    returns = torch.zeros(2, 3, dtype=F64)
    mask = torch.tensor([[1, 0, 0], [1, 1, 1]])
    # squared errors 1 and 4, 4, 4 (inside the clip): sequence 0.5 * (1 + 4) / 2 = 1.25; token 0.5 * 13 / 4 = 1.625
    assert critic_loss(values, values, returns, mask).item() == pytest.approx(1.25, abs=1e-12)
    assert critic_loss(values, values, returns, mask, averaging="token").item() == pytest.approx(1.625, abs=1e-12)


# ----------------------------------------------------------------------------------------------- lagrange multiplier


def _sgd_step(log_lambda: torch.Tensor, episode_cost, threshold: float, lr: float = 0.1) -> None:
    optimizer = torch.optim.SGD([log_lambda], lr=lr)
    optimizer.zero_grad()
    lagrange_loss(log_lambda, episode_cost, threshold).backward()
    optimizer.step()


def test_lagrange_step_by_hand():
    log_lambda = torch.tensor(0.0, requires_grad=True)  # lambda = 1
    optimizer = torch.optim.SGD([log_lambda], lr=0.1)
    loss = lagrange_loss(log_lambda, 2.0, 0.0)
    # loss = -lambda (J_C - d) = -1 * (2 - 0) = -2; d loss / d log lambda = -lambda (J_C - d) = -2
    assert loss.item() == pytest.approx(-2.0, abs=1e-7)
    loss.backward()
    assert log_lambda.grad.item() == pytest.approx(-2.0, abs=1e-7)
    optimizer.step()
    # log lambda <- 0 + 0.1 * 1 * (2 - 0) = 0.2
    assert log_lambda.item() == pytest.approx(0.2, abs=1e-7)


def test_lagrange_step_with_threshold_and_tensor_cost():
    log_lambda = torch.tensor(math.log(2.0), dtype=F64, requires_grad=True)  # lambda = 2
    _sgd_step(log_lambda, torch.tensor(1.0), threshold=3.0)
    # log 2 + 0.1 * 2 * (1 - 3) = 0.6931472 - 0.4 = 0.2931472
    assert log_lambda.item() == pytest.approx(math.log(2.0) - 0.4, abs=1e-12)


def test_lambda_rises_above_threshold_and_falls_below():
    log_lambda = torch.tensor(0.0, dtype=F64, requires_grad=True)
    history = [log_lambda.item()]
    for _ in range(3):
        _sgd_step(log_lambda, 1.5, threshold=0.5)
        history.append(log_lambda.item())
    assert all(b > a for a, b in zip(history, history[1:]))
    # first step by hand: 0 + 0.1 * 1 * (1.5 - 0.5) = 0.1; second: 0.1 + 0.1 * e^0.1 * 1 = 0.2105171
    assert history[1] == pytest.approx(0.1, abs=1e-12)
    assert history[2] == pytest.approx(0.1 + 0.1 * math.exp(0.1), abs=1e-12)
    top = history[-1]
    for _ in range(3):
        _sgd_step(log_lambda, -1.0, threshold=0.5)
        history.append(log_lambda.item())
    assert all(b < a for a, b in zip(history[3:], history[4:]))
    # first falling step: top + 0.1 * e^top * (-1 - 0.5) = top - 0.15 e^top
    assert history[4] == pytest.approx(top - 0.15 * math.exp(top), abs=1e-12)
    # at the threshold lambda stays put
    before = log_lambda.item()
    _sgd_step(log_lambda, 0.5, threshold=0.5)
    assert log_lambda.item() == before


def test_clamp_log_lambda():
    log_lambda = torch.tensor(math.log(10.0), requires_grad=True)
    clamp_log_lambda(log_lambda, 5.0)
    # lambda = 10 > lambda_max = 5 -> log 5 = 1.6094379
    assert log_lambda.item() == pytest.approx(math.log(5.0), abs=1e-6)
    assert log_lambda.requires_grad and log_lambda.grad is None
    below = torch.tensor(math.log(2.0), requires_grad=True)
    clamp_log_lambda(below, 5.0)
    assert below.item() == pytest.approx(math.log(2.0), abs=1e-7)  # untouched
    free = torch.tensor(math.log(100.0), requires_grad=True)
    clamp_log_lambda(free, None)
    assert free.item() == pytest.approx(math.log(100.0), abs=1e-6)  # no bound


def test_lambda_update_loop_stays_below_lambda_max():
    log_lambda = torch.tensor(0.0, requires_grad=True)
    lambdas = []
    for _ in range(30):
        _sgd_step(log_lambda, 2.0, threshold=0.0)
        clamp_log_lambda(log_lambda, 5.0)
        lambdas.append(math.exp(log_lambda.item()))
    assert all(b >= a for a, b in zip(lambdas, lambdas[1:]))
    assert max(lambdas) <= 5.0 + 1e-5
    # the increments are at least 0.1 * 1 * 2 = 0.2 in log space, so log 5 = 1.61 is reached within 9 steps
    assert lambdas[-1] == pytest.approx(5.0, abs=1e-5)
    assert lambdas[8] == pytest.approx(5.0, abs=1e-5)
