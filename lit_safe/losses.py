"""Loss functions of lit_safe, as pure tensor-to-tensor functions (torch only; no Lightning, no transformers).

Each function documents the shapes it takes and follows ``../shared/docs/ALGORITHMS.md``, which was written from
the papers and the reference implementation (PKU-Alignment/safe-rlhf). Tests check every one of them against
numbers worked out by hand.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def score_l2(*scores: Tensor) -> Tensor:
    """Mean of the squared scores over all given tensors (the regulariser that keeps scores near 0)."""
    return torch.cat([s.flatten() for s in scores]).pow(2).mean()


def sequence_preference_loss(chosen: Tensor, rejected: Tensor, l2_coeff: float = 1e-3) -> Tensor:
    """Bradley-Terry loss on end scores (Safe RLHF reward model, sequence-wise).

    ``L = -mean_i log sigmoid(r_i^w - r_i^l) + l2_coeff * mean([r^w, r^l]^2)``

    Args:
        chosen: ``(B,)`` end scores of the preferred responses.
        rejected: ``(B,)`` end scores of the other responses.
        l2_coeff: weight of the L2 term (eta; 1e-3 in the reference scripts).

    Returns:
        Scalar loss.
    """
    return -F.logsigmoid(chosen - rejected).mean() + l2_coeff * score_l2(chosen, rejected)


def divergence_index(chosen_ids: Tensor, rejected_ids: Tensor, chosen_mask: Tensor, rejected_mask: Tensor) -> Tensor:
    """First position at which two padded sequences differ (their shared prefix is the prompt).

    Args:
        chosen_ids, rejected_ids: ``(B, L)`` token ids, right padded to the same length.
        chosen_mask, rejected_mask: ``(B, L)`` attention masks.

    Returns:
        ``(B,)`` long. Positions where either sequence has ended count as different, so a response that is a
        prefix of the other diverges where the shorter one ends.
    """
    differ = (chosen_ids != rejected_ids) | (chosen_mask == 0) | (rejected_mask == 0)
    length = differ.size(1)
    positions = torch.arange(length, device=differ.device).expand_as(differ)
    return torch.where(differ, positions, length).min(dim=1).values.clamp(max=length - 1)


def token_preference_loss(
    chosen_scores: Tensor,
    rejected_scores: Tensor,
    chosen_end: Tensor,
    rejected_end: Tensor,
    diverge: Tensor,
    l2_coeff: float = 1e-3,
) -> Tensor:
    """Token-wise Bradley-Terry loss (the reference's ``token-wise`` reward loss).

    For pair ``i`` with divergence index ``d`` and ``e = max(end_w, end_l)``:
    ``l_i = -mean_{t in [d, e]} log sigmoid(r^w_t - r^l_t) + l2_coeff * mean_{t in [d, e]}([r^w_t, r^l_t]^2)``,
    and the loss is ``mean_i l_i``. Departure from the reference: past its end, a sequence's score stays its end
    score (the reference reads the scores of padding tokens there, which depend on how padding is embedded).

    Args:
        chosen_scores, rejected_scores: ``(B, L)`` per-token scores.
        chosen_end, rejected_end: ``(B,)`` index of each sequence's last attended token.
        diverge: ``(B,)`` first differing position (:func:`divergence_index`).
        l2_coeff: weight of the L2 term.

    Returns:
        Scalar loss.
    """
    length = chosen_scores.size(1)
    positions = torch.arange(length, device=chosen_scores.device).unsqueeze(0)

    def held(scores: Tensor, end: Tensor) -> Tensor:
        end_score = scores.gather(1, end.unsqueeze(1))
        return torch.where(positions > end.unsqueeze(1), end_score, scores)

    chosen_held, rejected_held = held(chosen_scores, chosen_end), held(rejected_scores, rejected_end)
    last = torch.maximum(chosen_end, rejected_end)
    window = ((positions >= diverge.unsqueeze(1)) & (positions <= last.unsqueeze(1))).to(chosen_scores.dtype)
    count = window.sum(dim=1)
    bt = -(F.logsigmoid(chosen_held - rejected_held) * window).sum(dim=1) / count
    l2 = ((chosen_held.pow(2) + rejected_held.pow(2)) * window).sum(dim=1) / (2 * count)
    return (bt + l2_coeff * l2).mean()


def preference_accuracy(chosen: Tensor, rejected: Tensor) -> Tensor:
    """Share of pairs whose preferred response scores strictly higher. ``(B,), (B,) -> ()``."""
    return (chosen > rejected).float().mean()


def cost_preference_loss(
    unsafer: Tensor, safer: Tensor, unsafer_sign: Tensor, safer_sign: Tensor, l2_coeff: float = 1e-3
) -> Tensor:
    """Safe RLHF cost-model loss: pairwise term, safety-sign classification term, and L2.

    Convention: cost > 0 means unsafe, cost < 0 means safe; a sign ``s`` is +1 for a response labelled unsafe and
    -1 for one labelled safe.
    ``L = mean_i [-log sigmoid(c^h_i - c^l_i) - log sigmoid(s^h_i c^h_i) - log sigmoid(s^l_i c^l_i)]
    + l2_coeff * mean([c^h, c^l]^2)``

    Args:
        unsafer: ``(B,)`` end costs ``c^h`` of the less safe responses.
        safer: ``(B,)`` end costs ``c^l`` of the safer responses.
        unsafer_sign, safer_sign: ``(B,)`` signs (+1 unsafe, -1 safe) of those responses.
        l2_coeff: weight of the L2 term (eta; 1e-3 in the reference scripts).

    Returns:
        Scalar loss.
    """
    pairwise = -F.logsigmoid(unsafer - safer)
    signs = -F.logsigmoid(unsafer_sign.to(unsafer.dtype) * unsafer) - F.logsigmoid(safer_sign.to(safer.dtype) * safer)
    return (pairwise + signs).mean() + l2_coeff * score_l2(unsafer, safer)


def masked_cost_preference_loss(
    unsafer: Tensor, safer: Tensor, unsafer_sign: Tensor, safer_sign: Tensor, l2_coeff: float = 1e-3,
    sign_coeff: float = 1.0,
) -> Tensor:
    """Safe RLHF cost loss whose sign term skips unlabelled responses (sign 0).

    With ``m = |s|`` (1 where labelled, 0 where not):
    ``L = mean_i [-log sigmoid(c^h_i - c^l_i) - k m^h_i log sigmoid(s^h_i c^h_i) - k m^l_i log sigmoid(s^l_i c^l_i)]
    + l2_coeff * mean([c^h, c^l]^2)``, ``k = sign_coeff``. With every response labelled and ``k = 1`` this is
    :func:`lit_safe.losses.cost_preference_loss` exactly; an unlabelled response adds nothing (that function would add
    the constant ``log 2``, with a zero gradient). The mean runs over pairs, so a labelled response weighs the same
    whatever the other responses of the batch are.

    Args:
        unsafer: ``(B,)`` costs ``c^h`` of the less safe responses.
        safer: ``(B,)`` costs ``c^l`` of the safer ones.
        unsafer_sign, safer_sign: ``(B,)`` +1 unsafe, -1 safe, 0 unlabelled.
        l2_coeff: weight of the L2 term (eta).
        sign_coeff: weight ``k`` of the sign term (0: SafeSora's plain Bradley-Terry loss).

    Returns:
        Scalar loss.
    """
    pairwise = -F.logsigmoid(unsafer - safer)
    signs = torch.zeros_like(pairwise)
    for cost, sign in ((unsafer, unsafer_sign), (safer, safer_sign)):
        sign = sign.to(cost.dtype)
        signs = signs - sign.abs() * F.logsigmoid(sign * cost)
    return (pairwise + sign_coeff * signs).mean() + l2_coeff * score_l2(unsafer, safer)


def sign_accuracy(costs: Tensor, signs: Tensor) -> Tensor:
    """Share of responses whose cost has the sign of their label (``s * c > 0``). ``(N,), (N,) -> ()``."""
    return (signs.to(costs.dtype) * costs > 0).float().mean()


def moderation_loss(
    category_logits: Tensor,
    categories: Tensor,
    unsafe_logits: Tensor,
    unsafe: Tensor,
    pos_weight: Tensor | None = None,
    severity_logits: Tensor | None = None,
    severity: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Loss of a moderation classifier: multi-label categories + overall unsafe flag (+ severity when labelled).

    ``L = BCE_pw(category_logits, categories) + BCE(unsafe_logits, unsafe) + CE(severity_logits, severity)``

    where ``BCE_pw`` is the binary cross entropy with logits averaged over responses and categories, each category's
    positive term weighted by ``pos_weight[c]`` (usually negatives / positives in the training data, so that rare
    categories are not ignored), and ``CE`` the softmax cross entropy over severity levels, averaged over the
    responses whose severity is labelled (``severity >= 0``).

    Args:
        category_logits: ``(B, C)``.
        categories: ``(B, C)`` targets in {0, 1}.
        unsafe_logits: ``(B,)``.
        unsafe: ``(B,)`` targets, 1 for unsafe.
        pos_weight: ``(C,)`` or ``None`` (all 1).
        severity_logits: ``(B, S)`` or ``None`` (no severity head).
        severity: ``(B,)`` level in ``[0, S)``, or -1 where unlabelled.

    Returns:
        ``(total, {"category": ..., "unsafe": ..., "severity": ...})`` (the parts detached, severity 0 when absent).
    """
    category = F.binary_cross_entropy_with_logits(
        category_logits.float(), categories.float(), pos_weight=None if pos_weight is None else pos_weight.float()
    )
    flag = F.binary_cross_entropy_with_logits(unsafe_logits.float(), unsafe.float())
    total = category + flag
    severity_part = torch.zeros((), device=category.device)
    if severity_logits is not None and severity is not None and bool((severity >= 0).any()):
        labelled = severity >= 0
        severity_part = F.cross_entropy(severity_logits[labelled].float(), severity[labelled].long())
        total = total + severity_part
    parts = {"category": category.detach(), "unsafe": flag.detach(), "severity": severity_part.detach()}
    return total, parts


def sft_loss(logits: Tensor, labels: Tensor, ignore_index: int = -100) -> tuple[Tensor, Tensor, Tensor]:
    """Causal-LM cross entropy on the labelled tokens (the response; prompt and padding are ``ignore_index``).

    Token ``t + 1`` is predicted from ``logits[:, t]``: ``L = mean over labelled t of -log softmax(logits[:, t])
    [labels[:, t + 1]]``.

    Args:
        logits: ``(B, L, V)``.
        labels: ``(B, L)`` token ids, ``ignore_index`` where no loss is taken.

    Returns:
        ``(loss, labelled tokens, correctly predicted labelled tokens)``: the mean over labelled tokens (0 when there
        are none), and the two counts (for token-weighted epoch means and token accuracy).
    """
    logits, targets = logits[:, :-1].float(), labels[:, 1:]
    labelled = targets != ignore_index
    count = labelled.sum()
    losses = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=ignore_index,
                             reduction="sum")
    correct = ((logits.argmax(-1) == targets) & labelled).sum()
    return losses / count.clamp_min(1), count, correct


def sequence_logprobs(logits: Tensor, labels: Tensor, ignore_index: int = -100) -> Tensor:
    """Summed log-probabilities of the labelled tokens (the response) of each sequence, under a causal LM.

    Token ``t + 1`` is predicted from ``logits[:, t]``: ``out[n] = sum over t with labels[n, t + 1] != ignore_index
    of log softmax(logits[n, t])[labels[n, t + 1]]``. Every labelled token counts, the first response token (predicted
    from the prompt's last position) included; the reference DPO implementation dropped that token (ALGORITHMS.md
    section 8). Log-softmax runs in float32.

    Args:
        logits: ``(N, L, V)``.
        labels: ``(N, L)`` token ids, ``ignore_index`` on the prompt and on padding.

    Returns:
        ``(N,)`` float32; 0 for a sequence with no labelled token.
    """
    logits, targets = logits[:, :-1].float(), labels[:, 1:]
    token_nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=ignore_index,
                                reduction="none")
    return -token_nll.view(targets.shape).sum(dim=1)


def dpo_loss(
    policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor, beta: float = 0.1
) -> tuple[Tensor, Tensor, Tensor]:
    """Direct Preference Optimization loss (Rafailov et al., arXiv 2305.18290; ALGORITHMS.md section 8).

    With implicit rewards ``r_w = beta (log pi(y_w) - log ref(y_w))`` and ``r_l = beta (log pi(y_l) - log ref(y_l))``:
    ``L = -mean_i log sigmoid(r_w,i - r_l,i)``. It is ``log 2`` while the policy equals the reference.

    Args:
        policy_chosen, policy_rejected: ``(B,)`` summed response log-probs under the trained policy
            (:func:`sequence_logprobs`).
        ref_chosen, ref_rejected: ``(B,)`` the same under the frozen reference (no gradient needed).
        beta: inverse temperature of the implicit reward (strength of the pull towards the reference).

    Returns:
        ``(loss, rewards_chosen, rewards_rejected)``: the scalar loss and the ``(B,)`` implicit rewards, detached
        (for metrics: accuracy is ``rewards_chosen > rewards_rejected``).
    """
    chosen = beta * (policy_chosen.float() - ref_chosen.float())
    rejected = beta * (policy_rejected.float() - ref_rejected.float())
    loss = -F.logsigmoid(chosen - rejected).mean()
    return loss, chosen.detach(), rejected.detach()


def denoising_errors(pred: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """Per-sample denoising error of a diffusion model: ``e_n = mean (or sum) over all non-batch elements of
    (pred_n - target_n)^2`` (ALGORITHMS.md section 9; the reference implementations take the mean).

    Args:
        pred: ``(N, ...)`` the network's prediction (epsilon, or velocity for v-prediction models), e.g. video
            latents ``(N, C, F, h, w)``.
        target: same shape as ``pred``: the noise that was added (or the velocity).
        reduction: ``mean`` (default) or ``sum`` over the non-batch elements. ``sum`` multiplies every error, and so
            the effective Diffusion-DPO beta, by the number of elements per sample.

    Returns:
        ``(N,)`` float32.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred and target differ in shape: {tuple(pred.shape)} vs {tuple(target.shape)}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    squared = (pred.float() - target.float()).pow(2).flatten(1)
    return squared.mean(dim=1) if reduction == "mean" else squared.sum(dim=1)


# Factor in front of beta inside the sigmoid, per convention: Salesforce's DiffusionDPO writes -0.5 * beta (their
# beta 5000), the diffusers research example writes -beta (its beta 2500): the same objective.
DIFFUSION_DPO_BETA_FACTORS: dict[str, float] = {"salesforce": 0.5, "diffusers": 1.0}


def diffusion_dpo_loss(
    policy_w: Tensor, policy_l: Tensor, ref_w: Tensor, ref_l: Tensor, beta: float, convention: str = "salesforce"
) -> tuple[Tensor, Tensor]:
    """Diffusion-DPO loss (Wallace et al., arXiv 2311.12908, Eq. 14; ALGORITHMS.md section 9).

    With per-sample denoising errors (:func:`denoising_errors`) of the trained policy (theta) and the frozen
    reference on the winner (w) and the loser (l) of each pair, noised with the same timestep and noise:
    ``inside = -beta_eff * [(e_theta^w - e_ref^w) - (e_theta^l - e_ref^l)]``, ``L = -mean log sigmoid(inside)``,
    with ``beta_eff = beta / 2`` (``convention="salesforce"``, beta 5000) or ``beta`` (``"diffusers"``, beta 2500).
    ``L = log 2`` exactly while the policy equals the reference.

    Args:
        policy_w, policy_l: ``(B,)`` errors of the policy on the winners and on the losers.
        ref_w, ref_l: ``(B,)`` errors of the reference (no gradient needed).
        beta: the DPO inverse temperature, in the units of ``convention``.
        convention: ``salesforce`` (factor 1/2) or ``diffusers`` (factor 1).

    Returns:
        ``(loss, inside)``: the scalar loss and the ``(B,)`` inside term (the implicit reward margin; not detached).
    """
    if convention not in DIFFUSION_DPO_BETA_FACTORS:
        raise ValueError(f"convention must be one of {sorted(DIFFUSION_DPO_BETA_FACTORS)}, got {convention!r}")
    beta_eff = beta * DIFFUSION_DPO_BETA_FACTORS[convention]
    gap = (policy_w.float() - ref_w.float()) - (policy_l.float() - ref_l.float())
    inside = -beta_eff * gap
    return -F.logsigmoid(inside).mean(), inside


def implicit_accuracy(inside: Tensor) -> Tensor:
    """Share of pairs the implicit reward ranks right: ``mean 1[inside > 0]`` (a tie counts as wrong, as in the
    reference). ``(B,) -> ()``."""
    return (inside > 0).float().mean()


def safe_preference_hits(inside: Tensor, first_sign: Tensor, second_sign: Tensor) -> tuple[Tensor, Tensor]:
    """Whether the implicit reward prefers the safe video, on pairs of one safe and one unsafe video.

    Args:
        inside: ``(B,)`` the Diffusion-DPO margin; ``> 0`` means the first video is preferred.
        first_sign, second_sign: ``(B,)`` cost signs of the two videos: +1 unsafe, -1 safe, 0 unlabelled.

    Returns:
        ``(hits (B,), counted (B,))`` as floats: ``counted`` is 1 where one video is labelled safe and the other
        unsafe (``first_sign * second_sign == -1``); ``hits`` is 1 where such a pair's margin favours the safe one.
        ``sum(hits) / sum(counted)`` is the safe-preference accuracy.
    """
    counted = (first_sign * second_sign == -1).float()
    first_is_safe = first_sign < 0
    hits = ((inside > 0) == first_is_safe).float() * counted
    return hits, counted
