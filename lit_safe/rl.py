"""Pure RL math of PPO-Lagrangian (Safe RLHF, Dai et al., arXiv 2310.12773): torch only, no Lightning.

Shapes: ``B`` sequences (prompt + response, left-padded prompts, right-padded responses), ``L`` tokens. Per-token
RL quantities live on the ``L - 1`` *action* positions: action ``t`` is token ``t + 1`` generated from the prefix
``0..t``, so ``log_probs[:, t] = log pi(ids[:, t + 1] | ids[:, :t + 1])``. ``mask (B, L - 1)`` is 1 on the actions
that are response tokens (EOS included) and 0 on prompt and padding; a response of length ``n`` has its last action
at ``end_index`` (the last 1 of its mask row), where its reward and cost enter.

Follows ``../shared/docs/ALGORITHMS.md`` section 7. Departures from the reference implementation: the score clip
applies to the whole shaped per-token value (the spec's formula), end positions come from the mask of each row
(the reference assumed one length per batch in places), and the Lagrange multiplier moves on a window of episode
costs averaged across ranks once per update (not per micro-batch on rank 0).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

Averaging = Literal["sequence", "token"]


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over the positions where ``mask`` is 1 (all of them, or along ``dim``).

    Args:
        x: any shape.
        mask: the same shape, 0/1 or boolean.
        dim: reduce along this dimension only (rows with no masked position give 0).
    """
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp_min(1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp_min(1)


def response_mean(x: Tensor, mask: Tensor, averaging: Averaging = "sequence") -> Tensor:
    """The mean of a per-action quantity over a batch of responses, the way the PPO losses average.

    ``sequence`` (the default, Safe RLHF's and ALGORITHMS.md's): each response's mean over its own actions, then the
    mean over the responses (rows without any action do not count), so a long response weighs as much as a short
    one. ``token``: one mean over every response action of the batch (TRL's), so long responses weigh more.

    Args:
        x: ``(B, T)`` per-action values.
        mask: ``(B, T)`` response actions, 0/1 or boolean.
        averaging: ``sequence`` or ``token``.

    Returns:
        A scalar (0 when no row has an action).
    """
    if averaging == "token":
        return masked_mean(x, mask)
    if averaging != "sequence":
        raise ValueError(f"averaging must be 'sequence' or 'token', got {averaging!r}")
    rows = mask.bool().any(dim=-1)
    return masked_mean(masked_mean(x, mask, dim=-1), rows)


def gather_log_probs(logits: Tensor, ids: Tensor) -> Tensor:
    """Log-probabilities of the tokens that were actually taken.

    Args:
        logits: ``(B, L, V)`` the model's logits for the whole sequence.
        ids: ``(B, L)`` the sequence.

    Returns:
        ``(B, L - 1)`` float32: ``log softmax(logits[:, t])[ids[:, t + 1]]``.
    """
    log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return log_probs.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)


def end_positions(mask: Tensor) -> Tensor:
    """The last action of every response: ``(B,)`` index of the last 1 in each row of ``mask (B, L - 1)``.
    A row without any response action is an error (an empty response still has its EOS)."""
    mask = mask.bool()
    if not bool(mask.any(dim=-1).all()):
        raise ValueError("a sequence has no response action (an all-zero mask row)")
    positions = torch.arange(mask.size(-1), device=mask.device).expand_as(mask)
    return torch.where(mask, positions, -1).max(dim=-1).values


def shaped_rewards(
    kl: Tensor, score: Tensor, mask: Tensor, kl_coeff: float, kl_sign: float, clip: float = 50.0
) -> Tensor:
    """Per-token rewards of one stream: the KL penalty on every response action, the sequence's score added at its
    last action, clipped.

    ``r_t = clip(kl_sign * kl_coeff * kl_t + score * 1[t = end], -clip, clip)`` on response actions, 0 elsewhere.
    The reward stream uses ``kl_sign = -1`` (the KL is a penalty), the cost stream ``+1`` (a cost), so that in the
    combined advantage ``(A_R - lambda A_C) / (1 + lambda)`` the KL weight stays ``kl_coeff`` whatever lambda is.

    Args:
        kl: ``(B, L - 1)`` per-action KL estimates ``log pi_old - log pi_ref``.
        score: ``(B,)`` end score of the reward (or cost) model.
        mask: ``(B, L - 1)`` response actions.
        kl_coeff: beta.
        kl_sign: -1 for rewards, +1 for costs.
        clip: bound of the shaped value.

    Returns:
        ``(B, L - 1)`` float32.
    """
    mask = mask.bool()
    # torch.where, not a product with the mask: a non-finite KL outside the response must not leak in as NaN
    values = torch.where(mask, kl_sign * kl_coeff * kl, 0.0)
    end = end_positions(mask)
    values = values.scatter_add(1, end.unsqueeze(1), score.to(values.dtype).unsqueeze(1))
    return torch.where(mask, values.clamp(-clip, clip), 0.0)


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over the response actions of sequences of different lengths.

    ``delta_t = r_t + gamma V_{t+1} - V_t``, ``A_t = delta_t + gamma lam A_{t+1}``, returns ``G_t = A_t + V_t``, where
    the value after a sequence's last action is 0 (the episode ends there) and positions outside ``mask`` neither
    contribute nor receive anything.

    Args:
        rewards: ``(B, T)`` per-action rewards (0 outside the mask).
        values: ``(B, T)`` critic values at each action.
        mask: ``(B, T)`` response actions; each row's ones must be contiguous.
        gamma: discount.
        lam: GAE lambda.

    Returns:
        ``(advantages, returns)``, both ``(B, T)``, 0 outside the mask.
    """
    mask = mask.to(values.dtype)
    values = values * mask
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])
    next_value = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.size(1))):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * m
        advantages[:, t] = running
        # outside the mask (the padding after a response) the next value stays 0 and the running sum is reset
        next_value = values[:, t] * m
    return advantages, (advantages + values) * mask


def combined_advantage(reward_advantages: Tensor, cost_advantages: Tensor, lagrange: Tensor | float) -> Tensor:
    """``(A_R - lambda A_C) / (1 + lambda)`` with lambda detached (the actor does not move lambda)."""
    lagrange = torch.as_tensor(lagrange, dtype=reward_advantages.dtype, device=reward_advantages.device).detach()
    return (reward_advantages - lagrange * cost_advantages) / (1 + lagrange)


def ppo_actor_loss(
    log_probs: Tensor, old_log_probs: Tensor, advantages: Tensor, mask: Tensor, clip_eps: float = 0.2,
    averaging: Averaging = "sequence",
) -> tuple[Tensor, Tensor]:
    """PPO-clip policy loss over response actions.

    ``L = -mean(min(rho A, clip(rho, 1 - eps, 1 + eps) A))`` with ``rho = exp(log pi - log pi_old)``, the mean taken
    by :func:`response_mean` (each response's mean, then the batch's, by default).

    Args:
        log_probs: ``(B, T)`` under the current policy (with gradient).
        old_log_probs: ``(B, T)`` at rollout time.
        advantages: ``(B, T)``.
        mask: ``(B, T)`` response actions.
        clip_eps: epsilon.
        averaging: ``sequence`` or ``token`` (:func:`response_mean`).

    Returns:
        ``(loss, clip_fraction)``: the share of response actions where the clipped term was the one taken (averaged
        the same way).
    """
    ratio = torch.exp(log_probs - old_log_probs)
    unclipped = ratio * advantages
    clipped = ratio.clamp(1 - clip_eps, 1 + clip_eps) * advantages
    loss = -response_mean(torch.minimum(unclipped, clipped), mask, averaging)
    clip_fraction = response_mean((clipped < unclipped).to(log_probs.dtype), mask, averaging)
    return loss, clip_fraction.detach()


def critic_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip: float = 5.0,
    averaging: Averaging = "sequence",
) -> Tensor:
    """Clipped value loss: ``0.5 mean(max((V - G)^2, (clip(V, V_old - c, V_old + c) - G)^2))``, the mean taken by
    :func:`response_mean`.

    Args:
        values: ``(B, T)`` current critic values (with gradient).
        old_values: ``(B, T)`` at rollout time.
        returns: ``(B, T)`` GAE returns.
        mask: ``(B, T)`` response actions.
        clip: c.
        averaging: ``sequence`` or ``token`` (:func:`response_mean`).
    """
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    return 0.5 * response_mean(torch.maximum((values - returns) ** 2, (clipped - returns) ** 2), mask, averaging)


def lagrange_loss(log_lambda: Tensor, episode_cost: Tensor | float, threshold: float) -> Tensor:
    """The loss whose gradient step on ``log lambda`` is the Safe RLHF multiplier update.

    ``d/d(log lambda) [-lambda (J_C - threshold)] = -lambda (J_C - threshold)``, so a plain SGD step of size ``lr``
    gives ``log lambda <- log lambda + lr * lambda * (J_C - threshold)``: lambda grows while the mean episode cost
    ``J_C`` is above the threshold and shrinks once it is below.
    """
    return -log_lambda.exp() * (torch.as_tensor(episode_cost, dtype=log_lambda.dtype) - threshold)


def clamp_log_lambda(log_lambda: Tensor, lambda_max: float | None) -> None:
    """Keep ``lambda <= lambda_max`` (in place, no gradient)."""
    if lambda_max is not None:
        with torch.no_grad():
            log_lambda.clamp_(max=math.log(lambda_max))


__all__ = [
    "Averaging",
    "clamp_log_lambda",
    "combined_advantage",
    "critic_loss",
    "end_positions",
    "gae",
    "gather_log_probs",
    "lagrange_loss",
    "masked_mean",
    "ppo_actor_loss",
    "response_mean",
    "shaped_rewards",
]
