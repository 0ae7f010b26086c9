"""PPOLagrangianModule: Safe RLHF's constrained policy optimisation (Dai et al., arXiv 2310.12773), in Lightning.

Maximise the reward subject to the expected cost staying at or below ``cost_threshold``, with PPO on the Lagrangian:
the actor follows the combined advantage ``(A_R - lambda A_C) / (1 + lambda)``, and the Lagrange multiplier lambda
(parameterised as ``log lambda``, updated by its own SGD step) grows while the mean episode cost of a window of
recent rollouts exceeds the threshold and shrinks once it does not (ALGORITHMS.md section 7; the math is in
:mod:`lit_safe.rl`).

One training step takes a batch of prompts (the data module's ``prompts`` view) and:

1. **rolls out**: the actor samples responses (KV cache, ``temperature``/``top_p``); the frozen reference gives the
   per-token KL, the frozen reward and cost models score the responses (a model with another tokenizer, or a
   Hugging Face reward model, reads the decoded conversation its own way), the reward and cost critics give
   values; both streams are KL-shaped and go through GAE;
2. **moves lambda** once, on the all-ranks window of episode costs (after ``lambda_update_delay`` rollouts), then
   combines the two advantage streams with the new lambda (as the reference does);
3. **updates** actor and critics for ``ppo_epochs`` passes over ``num_minibatches`` minibatches of the rollout,
   so that the PPO clip can act (with one pass over one minibatch the ratio is always 1).

Text: the prompts come in the data module's ``prompt_template``. Under ``chat`` a response ends at EOS or the chat
template's end-of-turn token (generation stops there, and so does the response mask), and a scorer that reads text
gets the conversation (the batch's ``prompt_turns`` and the decoded response) rendered by its own chat template.

``algorithm`` selects the same machinery as plain PPO (``ppo``: reward only, no cost model) or PPO with fixed
reward shaping (``reward_shaping``: the score is ``R - shaping_lambda * C``). Optimisation is manual: the actor's
optimizer is Lightning's (``trainer.global_step`` counts actor updates), the critics' and lambda's are stepped
directly. Strategies: one device, or FSDP2 (``configs/trainer/fsdp2.yaml``); DDP is not supported (several
backward passes per step over different networks). PTX (``ptx_coeff``) needs the data module's ``ptx: true``, which
streams an SFT batch beside every batch of prompts.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor
from transformers import LogitsProcessor, LogitsProcessorList

from lit_safe.losses import sft_loss
from lit_safe.models.backbone import load_backbone, sampling_config
from lit_safe.models.lora import adapters_disabled, add_lora
from lit_safe.models.score_model import (
    COST_SIGNS,
    ScoreModel,
    SharedCritic,
    build_score_model,
    score_conversations,
    score_texts,
)
from lit_safe.models.sharding import clip_grad_norm, export_causal_lm, nonfinite_tensors
from lit_safe.models.text import SAFE_RLHF_TEMPLATE, check_template, end_ids, is_chat, resolve_template, stop_token_ids
from lit_safe.models.tokenizer import load_tokenizer, tokenizer_fingerprint
from lit_safe.modules.base import BackboneModule, NonFiniteError, check_hparams
from lit_safe.optim import adamw_with_schedule
from lit_safe.rl import (
    Averaging,
    clamp_log_lambda,
    combined_advantage,
    critic_loss,
    gae,
    gather_log_probs,
    lagrange_loss,
    ppo_actor_loss,
    response_mean,
    shaped_rewards,
)

Algorithm = Literal["ppo_lagrangian", "ppo", "reward_shaping"]
CostSign = Literal["positive means unsafe", "positive means safe"]


@dataclass
class Rollout:
    """One batch of experience. Shapes: ``(B, L)`` for the sequences (``P`` prompt tokens, left-padded, then the
    response, right-padded), ``(B, R)`` for per-action tensors on the response part (``R = L - P``: action ``j``
    generates token ``P + j``), ``(B,)`` for per-episode scores. The old log-probs, the KL, the critics' values and
    what follows from them are ``None`` until :meth:`PPOLagrangianModule.estimate` fills them in (in the rollout, or,
    with one minibatch, from the first update's own forward passes)."""

    sequences: Tensor
    attention_mask: Tensor
    position_ids: Tensor
    prompt_length: int
    action_mask: Tensor
    reward: Tensor
    cost: Tensor | None
    reference_log_probs: Tensor | None = None
    old_log_probs: Tensor | None = None
    kl: Tensor | None = None
    reward_values: Tensor | None = None
    reward_returns: Tensor | None = None
    reward_advantages: Tensor | None = None
    cost_values: Tensor | None = None
    cost_returns: Tensor | None = None
    cost_advantages: Tensor | None = None
    advantages: Tensor | None = None  # what the actor follows: set by ``combine`` once lambda has moved

    def select(self, index: Tensor) -> Rollout:
        return Rollout(**{k: v[index] if isinstance(v, Tensor) else v for k, v in vars(self).items()})

    def combine(self, lagrange: Tensor | None) -> None:
        """Set the actor's advantages: ``(A_R - lambda A_C) / (1 + lambda)``, or ``A_R`` without a cost stream."""
        self.advantages = (self.reward_advantages if lagrange is None or self.cost_advantages is None
                           else combined_advantage(self.reward_advantages, self.cost_advantages, lagrange))


class FiniteLogits(LogitsProcessor):
    """Sampling guard: a row of next-token scores with a NaN or +inf (or nothing left to sample) would make
    ``torch.multinomial`` fail on this rank alone (the others would wait in a collective); such a row samples EOS
    instead and ``hit`` is set, so that every rank can stop together after ``generate``."""

    def __init__(self, eos_token_id: int) -> None:
        self.eos_token_id = eos_token_id
        self.hit = False

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        bad = torch.isnan(scores).any(-1) | torch.isposinf(scores).any(-1) | torch.isneginf(scores).all(-1)
        if not bool(bad.any()):
            return scores
        self.hit = True
        eos = torch.full_like(scores[0], float("-inf"))
        eos[self.eos_token_id] = 0.0
        return torch.where(bad.unsqueeze(-1), eos, scores)


def positions_from_mask(attention_mask: Tensor) -> Tensor:
    """Position ids that count only attended tokens (left-padded prompts start at position 0, as in generation)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


def response_masks(sequences: Tensor, prompt_mask: Tensor, stop_ids: int | list[int]) -> tuple[Tensor, Tensor]:
    """Attention mask ``(B, L)`` and action mask ``(B, L - 1)`` of generated sequences.

    A response runs from the first generated token up to and including its first stop token (EOS, or under a chat
    template also its end-of-turn token, :func:`~lit_safe.models.text.stop_token_ids`; everything after is
    padding, also when the pad token is the EOS); action ``t`` generates token ``t + 1``.

    Args:
        sequences: ``(B, L)`` prompts (left-padded, ``P`` tokens) followed by the generated tokens.
        prompt_mask: ``(B, P)`` attention mask of the prompts.
        stop_ids: the id, or ids, that end a response.
    """
    prompt_length = prompt_mask.size(1)
    response = sequences[:, prompt_length:]
    stops = torch.as_tensor([stop_ids] if isinstance(stop_ids, int) else list(stop_ids), device=sequences.device)
    is_eos = torch.isin(response, stops).long()
    in_response = (is_eos.cumsum(-1) - is_eos) == 0  # no EOS strictly before this token
    attention = torch.cat([prompt_mask.long(), in_response.long()], dim=1)
    actions = torch.cat([torch.zeros_like(prompt_mask[:, 1:]).bool(), in_response], dim=1)
    return attention, actions


class PPOLagrangianModule(BackboneModule):
    """PPO-Lagrangian (and, by ``algorithm``, plain PPO or fixed reward shaping) on prompts.

    Its ``backbone`` is the initial policy, trained as the actor (usually the SFT export): a preset, hub id or
    directory of a causal LM; the frozen reference is a second copy of it. ``dtype`` is the parameter dtype of all
    networks and ``gradient_checkpointing`` applies to the actor and the critics. ``max_nonfinite_steps`` counts
    training steps (rollouts) in a row with a non-finite loss or gradient norm (each such update is skipped);
    non-finite weights or sampling logits of the actor stop training at once. There is no ``optimizer`` group (the
    optimisers have arguments of their own, ``actor_lr`` ...) and no ``revision``.

    Args:
        reward_model: a saved reward score model: a lit_safe export, a reference ``beaver-7b-*-reward``, or a
            Hugging Face ``*ForSequenceClassification`` reward model with one label (its head, tokenizer and chat
            template kept; it reads the decoded conversation in its tokenizer's own encoding, as its forward expects).
        cost_model: a saved cost model, of the same kinds. With ``algorithm: ppo`` it is optional and only
            scores responses for the logs (``train/cost``, ``train/episode_cost``); it never enters the objective.
        cost_model_sign: what the cost model's positive scores mean: ``positive means unsafe`` (lit_safe's
            convention) or ``positive means safe`` (e.g. a harmlessness reward model: its scores are negated, for the
            objective and for a cost critic initialised from it). ``None``: the cost model's ``config.json``
            ``cost_sign`` when it has one, else ``positive means unsafe``.
        reward_critic: initialises the reward critic (default: the reward model when it shares the actor's
            tokenizer, else the initial policy with a new head). A critic reads the actor's ids: an encoder (BERT)
            initialises one only when its tokenizer is the actor's.
        cost_critic: the same for the cost critic.
        reference: ``copy`` (a frozen copy of the initial policy; the policy is trained in full) or ``lora`` (LoRA
            adapters on every linear layer of the policy's transformer blocks are all that trains, and the reference
            is the same network with its adapters switched off: no second policy in memory, no gradients or optimiser
            state for the base weights). Off by default: training only adapters changes results. The export folds
            the adapters into plain weights.
        lora_rank: LoRA rank (``reference: lora``).
        lora_alpha: LoRA alpha (default: the rank, i.e. scaling 1).
        shared_critic: (PPO-Lagrangian) the cost values are a second head on the reward critic's backbone instead of
            a critic of their own: one backbone pass and one optimiser step give both values (a third fewer network
            passes in every PPO update, one network less in memory). Off by default: the two value functions then
            share features, which changes results. The cost head starts new (``cost_critic`` must be unset).
        algorithm: ``ppo_lagrangian``, ``ppo`` or ``reward_shaping``.
        max_new_tokens: longest response.
        temperature: sampling temperature of rollouts.
        top_p: nucleus sampling mass of rollouts.
        kl_coeff: beta of the per-token KL penalty (0.01 for PPO-Lagrangian, 0.02 for PPO in the reference).
        ptx_coeff: weight of the PTX term, the SFT loss on a batch of the data module's ``ptx`` stream added to
            every actor step (0: off; the reference uses 16 with its PTX data).
        clip_eps: PPO ratio clip.
        loss_averaging: how the actor and critic losses average over response tokens: ``sequence`` (each
            response's mean, then the minibatch's: every response weighs the same, as in Safe RLHF and its reference
            code) or ``token`` (one mean over all response tokens of the minibatch, as TRL does: long responses weigh
            more).
        value_clip: critic value clip around the rollout-time values.
        score_clip: clip of the shaped per-token rewards and costs.
        gamma: discount.
        gae_lambda: GAE lambda.
        ppo_epochs: passes over each rollout batch.
        num_minibatches: minibatches per pass (the rollout batch size must be divisible by it).
        cost_threshold: the constraint ``E[C] <= cost_threshold`` (0: on average safe).
        lambda_init: initial Lagrange multiplier.
        lambda_lr: SGD step size on ``log lambda``.
        lambda_max: cap of lambda (``None``: none).
        lambda_update_delay: rollouts before lambda starts moving.
        episode_window: episode costs (over all ranks) in the window lambda's update averages.
        shaping_lambda: the fixed weight of ``reward_shaping``.
        actor_lr: actor peak learning rate (AdamW, cosine with warm-up).
        actor_weight_decay: actor weight decay.
        warmup_ratio: share of actor updates spent warming up.
        critic_lr: critics' learning rate (AdamW, constant).
        critic_weight_decay: critics' weight decay.
        betas: AdamW betas (actor and critics).
        max_grad_norm: gradient clip of each network.
        **kwargs: the arguments every trainer takes, as :class:`~lit_safe.modules.base.BackboneModule`, but
            ``optimizer`` and ``revision``.
    """

    model: torch.nn.Module | None  # the actor (BackboneModule's name for the trained network)
    views = ("prompts",)  # left-padded prompts (with ``ptx: true``, beside an SFT stream)
    fixed_arguments = ("revision", "optimizer")

    def __init__(
        self,
        *,
        reward_model: str = "runs/quickstart/reward_model",
        cost_model: str | None = "runs/quickstart/cost_model",
        cost_model_sign: CostSign | None = None,
        reward_critic: str | None = None,
        cost_critic: str | None = None,
        reference: Literal["copy", "lora"] = "copy",
        lora_rank: int = 8,
        lora_alpha: float | None = None,
        shared_critic: bool = False,
        algorithm: Algorithm = "ppo_lagrangian",
        max_new_tokens: int = 128,
        temperature: float = 1.0,
        top_p: float = 1.0,
        kl_coeff: float = 0.01,
        ptx_coeff: float = 0.0,
        clip_eps: float = 0.2,
        loss_averaging: Averaging = "sequence",
        value_clip: float = 5.0,
        score_clip: float = 50.0,
        gamma: float = 1.0,
        gae_lambda: float = 0.95,
        ppo_epochs: int = 1,
        num_minibatches: int = 1,
        cost_threshold: float = 0.0,
        lambda_init: float = 1.0,
        lambda_lr: float = 0.1,
        lambda_max: float | None = 5.0,
        lambda_update_delay: int = 0,
        episode_window: int = 128,
        shaping_lambda: float = 1.0,
        actor_lr: float = 1e-5,
        actor_weight_decay: float = 0.01,
        warmup_ratio: float = 0.03,
        critic_lr: float = 5e-6,
        critic_weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.95),
        max_grad_norm: float | None = 1.0,
        **kwargs: Any,
    ) -> None:
        name = type(self).__name__
        check_hparams(name, non_negative={"actor_lr": actor_lr, "critic_lr": critic_lr, "lambda_lr": lambda_lr,
                                          "actor_weight_decay": actor_weight_decay,
                                          "critic_weight_decay": critic_weight_decay, "warmup_ratio": warmup_ratio,
                                          "kl_coeff": kl_coeff, "ptx_coeff": ptx_coeff},
                      positive={"temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens,
                                "max_grad_norm": max_grad_norm})
        if top_p > 1:
            raise ValueError(f"{name}: top_p must be in (0, 1], got {top_p}")
        if loss_averaging not in ("sequence", "token"):
            raise ValueError(f"{name}: loss_averaging must be 'sequence' or 'token', got {loss_averaging!r}")
        if algorithm not in ("ppo_lagrangian", "ppo", "reward_shaping"):
            raise ValueError(f"algorithm must be ppo_lagrangian, ppo or reward_shaping, got {algorithm!r}")
        if cost_model_sign is not None and cost_model_sign not in COST_SIGNS:
            raise ValueError(f"{name}: cost_model_sign must be one of {COST_SIGNS}, got {cost_model_sign!r}")
        if reference not in ("copy", "lora"):
            raise ValueError(f"{name}: reference must be 'copy' or 'lora', got {reference!r}")
        if shared_critic and cost_critic is not None:
            raise ValueError(f"{name}: shared_critic puts the cost values on a second head of the reward critic; "
                             f"cost_critic ({cost_critic}) would initialise a separate one: set one or the other")
        if algorithm != "ppo" and cost_model is None:
            raise ValueError(f"algorithm {algorithm!r} needs a cost_model")
        if not lambda_init > 0:
            raise ValueError(f"{name}: lambda_init must be > 0 (lambda is parameterised as log lambda), got "
                             f"{lambda_init}")
        super().__init__(revision=None, optimizer=None, **kwargs)
        self.automatic_optimization = False
        self.log_lambda = torch.nn.Parameter(torch.tensor(math.log(lambda_init)))
        self.episode_costs: deque[float] = deque(maxlen=episode_window)
        self.rollouts_done = 0
        self.timings: dict[str, float] = {}
        self.prompt_template = SAFE_RLHF_TEMPLATE  # the data module's, in setup

    def make_tokenizer(self, name: str, revision: str | None):
        """The actor's tokenizer (``tokenizer``, else the backbone's), padding on the left for generation."""
        return load_tokenizer(name, revision=revision, padding_side="left")

    @property
    def uses_cost(self) -> bool:
        """Whether responses are scored by the cost model (plain PPO with a cost model scores them only to log
        the cost, e.g. to show that it ignores the constraint)."""
        return self.hparams.cost_model is not None

    @property
    def lagrangian(self) -> bool:
        return self.hparams.algorithm == "ppo_lagrangian"

    def setup(self, stage: str) -> None:
        """The base checks, and the data module's ``prompt_template`` (one source of truth: the prompts were rendered
        with it; ``safe_rlhf`` without a data module or one without the setting)."""
        super().setup(stage)
        template = getattr(getattr(self.datamodule, "hparams", None), "prompt_template", None)
        self.prompt_template = resolve_template(template or SAFE_RLHF_TEMPLATE)

    @property
    def stop_ids(self) -> list[int]:
        """The ids that end a response: EOS, and under a chat template its end-of-turn token."""
        return stop_token_ids(self.tokenizer, self.prompt_template)

    # ------------------------------------------------------------------------------------------------ models
    def _frozen_scorer(self, path: str, cost_sign: str | None = None) -> tuple[ScoreModel, Any, bool]:
        """A frozen reward or cost model, its tokenizer, and whether that is the actor's."""
        tokenizer = load_tokenizer(path)
        model = ScoreModel.from_pretrained(path, dtype=self.hparams.dtype, cost_sign=cost_sign)
        model.eval().requires_grad_(False)
        return model, tokenizer, tokenizer_fingerprint(tokenizer) == tokenizer_fingerprint(self.tokenizer)

    def reads_ids(self, model: ScoreModel, same_tokenizer: bool) -> bool:
        """Whether a scorer reads the actor's ids as they are: the same tokenizer, a lit_safe encoding (not a Hugging
        Face reward model's own, ``text_encoding: tokenizer``) and, under a chat template, an end of turn of a single
        token (the one generation stops at). Any other scorer reads the decoded conversation."""
        return same_tokenizer and model.text_encoding != "tokenizer" and (
            not is_chat(self.prompt_template) or len(end_ids(self.tokenizer, self.prompt_template)) == 1)

    def on_fit_start(self) -> None:
        """Under a chat template, every scorer that reads text needs a chat template of its own (named if not)."""
        if is_chat(self.prompt_template):
            for model, tokenizer, same in ((self.reward_model, self.reward_tokenizer, self.reward_same_tokenizer),
                                           (self.cost_model, self.cost_tokenizer, self.cost_same_tokenizer)):
                if model is not None and not self.reads_ids(model, same):
                    check_template(self.prompt_template, tokenizer)

    def _critic(self, init: str | None, scorer_path: str, same_tokenizer: bool,
                cost_sign: str | None = None) -> ScoreModel:
        """A critic on the actor's ids: from ``init``, else the scorer when it shares the actor's tokenizer, else the
        initial policy with a new head; ``cost_sign`` applies when it starts from a score checkpoint."""
        source = init or (scorer_path if same_tokenizer else self.hparams.backbone)
        critic = build_score_model(source, self.tokenizer, "critic", dtype=self.hparams.dtype,
                                   cost_sign=cost_sign if source != self.hparams.backbone else None)
        if critic.is_encoder and not (same_tokenizer if source == scorer_path else tokenizer_fingerprint(
                load_tokenizer(source)) == tokenizer_fingerprint(self.tokenizer)):
            raise ValueError(f"{type(self).__name__}: the critic initialisation {source} is an encoder with another "
                             f"tokenizer than the policy's ({self.hparams.backbone}); a critic reads the policy's "
                             f"token ids: give an encoder critic only with the policy's tokenizer, or leave the "
                             f"critic unset (the policy with a new head)")
        if self.hparams.gradient_checkpointing:
            critic.backbone.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        return critic

    def configure_model(self) -> None:
        if self.model is not None:
            return
        hp = self.hparams
        self.model = load_backbone(hp.backbone, self.tokenizer, causal_lm=True, dtype=hp.dtype)
        if hp.gradient_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.reference = self.lora_scaling = None
        if hp.reference == "lora":
            self.lora_scaling = add_lora(self.model, hp.lora_rank, hp.lora_alpha, "all-linear")
        else:
            self.reference = load_backbone(hp.backbone, self.tokenizer, causal_lm=True, dtype=hp.dtype)
            self.reference.eval().requires_grad_(False)
        self.reward_model, self.reward_tokenizer, self.reward_same_tokenizer = self._frozen_scorer(hp.reward_model)
        self.reward_critic = self._critic(hp.reward_critic, hp.reward_model, self.reward_same_tokenizer)
        self.cost_model = self.cost_tokenizer = self.cost_critic = None
        self.cost_same_tokenizer = False
        if self.uses_cost:
            self.cost_model, self.cost_tokenizer, self.cost_same_tokenizer = self._frozen_scorer(
                hp.cost_model, hp.cost_model_sign)
            if self.lagrangian and hp.shared_critic:
                self.reward_critic = SharedCritic(self.reward_critic)
            elif self.lagrangian:
                self.cost_critic = self._critic(hp.cost_critic, hp.cost_model, self.cost_same_tokenizer,
                                                hp.cost_model_sign)
        for network in (self.model, self.reference, self.reward_model, self.reward_critic, self.cost_model,
                        self.cost_critic):
            if network is not None:
                self.shard(network)

    def configure_optimizers(self):
        hp = self.hparams
        actor, schedule = adamw_with_schedule(self.model.named_parameters(), lr=hp.actor_lr,
                                              weight_decay=hp.actor_weight_decay, betas=tuple(hp.betas),
                                              total_steps=max(1, self._actor_updates()), warmup_ratio=hp.warmup_ratio,
                                              schedule="cosine")
        optimizers = [actor]
        for critic in (self.reward_critic, self.cost_critic):
            if critic is not None:
                optimizers.append(adamw_with_schedule(critic.named_parameters(), lr=hp.critic_lr,
                                                      weight_decay=hp.critic_weight_decay, betas=tuple(hp.betas),
                                                      total_steps=1, warmup_ratio=0.0, schedule="constant")[0])
        optimizers.append(torch.optim.SGD([self.log_lambda], lr=hp.lambda_lr))
        return optimizers, [{"scheduler": schedule, "interval": "step"}]

    def _actor_updates(self) -> int:
        """Actor optimiser steps of the whole run (what ``trainer.global_step`` and ``max_steps`` count): rollout
        batches x PPO epochs x minibatches, or ``max_steps`` rounded up to whole rollouts when that is fewer."""
        return self.optimizer_steps(steps_per_batch=self.hparams.ppo_epochs * self.hparams.num_minibatches)

    def on_before_optimizer_step(self, optimizer) -> None:
        """Gradients are clipped per network in :meth:`_step` (manual optimisation)."""

    # ------------------------------------------------------------------------------------------------ rollout
    def _score(self, model: ScoreModel, tokenizer, same_tokenizer: bool, sequences: Tensor, attention: Tensor,
               positions: Tensor, prompt_length: int, prompt_turns: list | None) -> Tensor:
        """End scores ``(B,)`` of the generated sequences. A scorer that reads the actor's ids scores them as they
        are; any other (another tokenizer, or a Hugging Face reward model, ``text_encoding: tokenizer``) reads decoded
        text: under a ``{prompt}`` template the whole decoded sequence, re-encoded its way; under ``chat`` the decoded
        response after the batch's ``prompt_turns``, rendered with the scorer's own chat template
        (:func:`~lit_safe.models.score_model.score_conversations`)."""
        if self.reads_ids(model, same_tokenizer):
            return model(sequences, attention, position_ids=positions).end_scores
        pad = self.tokenizer.pad_token_id
        if not is_chat(self.prompt_template):
            texts = self.tokenizer.batch_decode(sequences.masked_fill(attention == 0, pad), skip_special_tokens=True)
            return score_texts(model, tokenizer, texts, 4096)
        if prompt_turns is None:
            raise ValueError("prompt_template 'chat': a scorer that reads text needs the batch's prompt_turns (the "
                             "data module's prompts view writes them under chat)")
        response = sequences[:, prompt_length:].masked_fill(attention[:, prompt_length:] == 0, pad)
        responses = self.tokenizer.batch_decode(response, skip_special_tokens=True)
        return score_conversations(model, tokenizer, prompt_turns, responses, self.prompt_template, 4096)

    @torch.no_grad()
    def rollout(self, batch: dict) -> Rollout:
        """Generate and score one batch of prompts (left-padded ``input_ids``/``attention_mask``).

        With ``num_minibatches: 1`` the first PPO update runs the actor and the critics on exactly these sequences
        with exactly these weights, so its forward passes give the old log-probs and the values (with gradient, used
        once): the rollout runs only the reference and the scorers. With several minibatches the rollout runs the actor
        and the critics too, without gradient, and estimates the advantages here."""
        hp = self.hparams
        prompt_ids, prompt_mask = batch["input_ids"], batch["attention_mask"]
        start = self._clock()
        bad = nonfinite_tensors(self.model)
        if not self.all_ranks_agree(not bad):
            raise NonFiniteError(f"{type(self).__name__}: the actor has non-finite weights at step {self.global_step} "
                                 f"({', '.join(bad[:3]) or 'on another rank'}); cannot sample. Lower the learning "
                                 f"rate ({self._lr_text()}).")
        guard = FiniteLogits(self.tokenizer.eos_token_id)
        stops = self.stop_ids
        self.model.eval()
        sequences = self.model.generate(
            input_ids=prompt_ids, attention_mask=prompt_mask,
            generation_config=sampling_config(hp.max_new_tokens, hp.temperature, hp.top_p,
                                              self.tokenizer.pad_token_id, stops),
            logits_processor=LogitsProcessorList([guard]),
        )
        self.model.train()
        if not self.all_ranks_agree(not guard.hit):
            raise NonFiniteError(f"{type(self).__name__}: the actor's sampling distribution is not finite at step "
                                 f"{self.global_step} (rollout {self.rollouts_done + 1}): its logits overflow; "
                                 f"training stopped. Lower the learning rate ({self._lr_text()}).")
        generated = self._clock()
        length = prompt_ids.size(1)
        attention, actions = response_masks(sequences, prompt_mask, stops)
        positions = positions_from_mask(attention)
        turns = batch.get("prompt_turns")
        reward = self._score(self.reward_model, self.reward_tokenizer, self.reward_same_tokenizer, sequences,
                             attention, positions, length, turns)
        cost = None
        if self.uses_cost:
            cost = self._score(self.cost_model, self.cost_tokenizer, self.cost_same_tokenizer, sequences,
                               attention, positions, length, turns)
        rollout = Rollout(sequences, attention, positions, length, actions[:, length - 1:], reward, cost)
        if self.reference is None:  # reference: lora
            with adapters_disabled(self.model):
                rollout.reference_log_probs = self._log_probs(self.model, rollout)
        else:
            rollout.reference_log_probs = self._log_probs(self.reference, rollout)
        if hp.num_minibatches > 1:
            self.estimate(rollout, self._log_probs(self.model, rollout), *self._critic_values(rollout).values())
        scored = self._clock()
        self.timings = {"generation_seconds": generated - start, "scoring_seconds": scored - generated,
                        "generated_tokens": float(rollout.action_mask.sum())}
        return rollout

    def estimate(self, rollout: Rollout, old_log_probs: Tensor, reward_values: Tensor,
                 cost_values: Tensor | None = None) -> None:
        """Fill in the rollout's old log-probs, KL, values, returns and the advantages of each stream (GAE on the
        KL-shaped rewards and costs), from the actor's log-probs and the critics' values ``(B, R)`` at rollout time."""
        hp = self.hparams
        mask = rollout.action_mask
        rollout.old_log_probs = old_log_probs = old_log_probs.detach()
        rollout.kl = kl = old_log_probs - rollout.reference_log_probs
        reward = rollout.reward
        score = reward - hp.shaping_lambda * rollout.cost if hp.algorithm == "reward_shaping" else reward
        rollout.reward_values = reward_values.detach()
        rewards = shaped_rewards(kl, score, mask, hp.kl_coeff, -1.0, hp.score_clip)
        rollout.reward_advantages, rollout.reward_returns = gae(rewards, rollout.reward_values, mask, hp.gamma,
                                                                hp.gae_lambda)
        if cost_values is not None:
            rollout.cost_values = cost_values.detach()
            costs = shaped_rewards(kl, rollout.cost, mask, hp.kl_coeff, +1.0, hp.score_clip)
            rollout.cost_advantages, rollout.cost_returns = gae(costs, rollout.cost_values, mask, hp.gamma,
                                                                hp.gae_lambda)

    def _clock(self) -> float:
        """Wall time, after the device has finished its queued work (so that phases are timed, not queued)."""
        import time

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _log_probs(self, model, rollout: Rollout) -> Tensor:
        """``(B, R)`` log-probabilities of the response tokens under ``model`` (the actor or the reference): only the
        response positions go through the output head and the softmax."""
        sequences, start = rollout.sequences, rollout.prompt_length
        logits = model(input_ids=sequences, attention_mask=rollout.attention_mask, position_ids=rollout.position_ids,
                       use_cache=False, **self._keep(model, sequences.size(1) - start + 1)).logits
        return gather_log_probs(logits[:, -(sequences.size(1) - start + 1):], sequences[:, start - 1:])

    @staticmethod
    def _keep(model, count: int) -> dict[str, int]:
        """``logits_to_keep`` for a Hugging Face causal LM that takes it (most do), else nothing (all logits)."""
        import inspect

        return {"logits_to_keep": count} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}

    @staticmethod
    def _values(critic: ScoreModel, rollout: Rollout) -> Tensor:
        """A critic's values ``(B, R)`` (with gradient when enabled): the value of action ``j`` is the critic's score
        at token ``P - 1 + j``, the last token before it."""
        scores = critic(rollout.sequences, rollout.attention_mask, position_ids=rollout.position_ids).scores
        return scores[:, rollout.prompt_length - 1:-1]

    def _critic_values(self, rollout: Rollout) -> dict[str, Tensor]:
        """Every critic's values, by stream (``reward``, and ``cost`` under PPO-Lagrangian; both from one pass of a
        shared critic)."""
        if isinstance(self.reward_critic, SharedCritic):
            reward, cost = self.reward_critic(rollout.sequences, rollout.attention_mask, rollout.position_ids)
            start = rollout.prompt_length - 1
            return {"reward": reward[:, start:-1], "cost": cost[:, start:-1]}
        return {name: self._values(critic, rollout) for name, critic in
                (("reward", self.reward_critic), ("cost", self.cost_critic)) if critic is not None}

    # ------------------------------------------------------------------------------------------------ lambda
    def update_lambda(self, episode_costs: Tensor) -> Tensor:
        """Fold this rollout's episode costs (gathered from every rank) into the window and, after the delay, take
        one SGD step on ``log lambda``; returns the window's mean cost."""
        gathered = self.all_gather(episode_costs.detach().float()).flatten()
        self.episode_costs.extend(gathered.cpu().tolist())
        window_cost = torch.tensor(sum(self.episode_costs) / len(self.episode_costs))
        if self.lagrangian and self.rollouts_done >= self.hparams.lambda_update_delay:
            optimizer = self.optimizers(use_pl_optimizer=False)[-1]
            optimizer.zero_grad()
            lagrange_loss(self.log_lambda, window_cost.to(self.log_lambda), self.hparams.cost_threshold).backward()
            if bool(torch.isfinite(self.log_lambda.grad).all()):  # the same on every rank (an all-ranks window)
                optimizer.step()
                clamp_log_lambda(self.log_lambda, self.hparams.lambda_max)
            else:
                optimizer.zero_grad(set_to_none=True)
                self._skipped.append("lambda")
        return window_cost

    # ------------------------------------------------------------------------------------------------ update
    def _step(self, optimizer, loss: Tensor, parameters, name: str) -> Tensor:
        """One update of one network; with a non-finite loss or gradient norm (on any rank) its gradients are
        dropped, so that the optimiser step (still taken: the actor's counts as ``global_step``) changes nothing."""
        optimizer.zero_grad()
        self.manual_backward(loss)
        norm = clip_grad_norm(self.trainer.model, list(parameters), self.hparams.max_grad_norm)
        if not self.all_ranks_agree(bool(torch.isfinite(loss.detach()).all()) and bool(torch.isfinite(norm))):
            optimizer.zero_grad(set_to_none=True)  # AdamW skips parameters without a gradient
            self._skipped.append(f"{name} (loss {float(loss.detach()):.4g}, gradient norm {float(norm):.4g})")
        optimizer.step()
        return norm

    def _update(self, mb: Rollout, log_probs: Tensor | None, values: dict[str, Tensor] | None, ptx_batch: dict | None,
                ptx_chunks: tuple[Tensor, ...] | None, stats: dict[str, list[Tensor]]) -> None:
        """One PPO step of the actor and of each critic on a minibatch; ``log_probs`` and ``values`` are their forward
        passes when already run (the first update with one minibatch), else they run here, one network at a time."""
        hp = self.hparams
        if log_probs is None:
            log_probs = self._log_probs(self.model, mb)
        loss, clip_fraction = ppo_actor_loss(log_probs, mb.old_log_probs, mb.advantages, mb.action_mask, hp.clip_eps,
                                             hp.loss_averaging)
        if ptx_chunks is not None:  # the PTX term joins the same actor step
            part = ptx_chunks[len(stats["actor_loss"]) % len(ptx_chunks)]
            ptx_logits = self.model(input_ids=ptx_batch["input_ids"][part],
                                    attention_mask=ptx_batch["attention_mask"][part], use_cache=False).logits
            ptx_loss = sft_loss(ptx_logits, ptx_batch["labels"][part])[0]
            stats["ptx_loss"].append(ptx_loss.detach())
            loss = loss + hp.ptx_coeff * ptx_loss
        stats["actor_grad_norm"].append(self._step(self.optimizers()[0], loss, self.model.parameters(), "actor"))
        self.lr_schedulers().step()
        stats["actor_loss"].append(loss.detach())  # PPO loss (+ ptx_coeff x PTX loss)
        stats["clip_fraction"].append(clip_fraction)
        raw = self.optimizers(use_pl_optimizer=False)
        if isinstance(self.reward_critic, SharedCritic):  # one backbone, one loss (the sum), one step
            current = values if values is not None else self._critic_values(mb)
            losses = {name: critic_loss(current[name], getattr(mb, f"{name}_values"), getattr(mb, f"{name}_returns"),
                                        mb.action_mask, hp.value_clip, hp.loss_averaging) for name in current}
            self._step(raw[1], sum(losses.values()), self.reward_critic.parameters(), "shared critic")
            for name, value_loss in losses.items():
                stats[f"{name}_critic_loss"].append(value_loss.detach())
            return
        critics = [("reward", self.reward_critic, raw[1], mb.reward_values, mb.reward_returns)]
        if self.cost_critic is not None:
            critics.append(("cost", self.cost_critic, raw[2], mb.cost_values, mb.cost_returns))
        for name, critic, optimizer, old_values, returns in critics:
            current = values[name] if values is not None else self._values(critic, mb)
            value_loss = critic_loss(current, old_values, returns, mb.action_mask, hp.value_clip, hp.loss_averaging)
            self._step(optimizer, value_loss, critic.parameters(), f"{name} critic")
            stats[f"{name}_critic_loss"].append(value_loss.detach())

    def training_step(self, batch: dict, batch_idx: int) -> dict[str, Rollout]:
        """One rollout, lambda's update, and the PPO updates of actor and critics; returns ``{"rollout": ...}``
        (Lightning hands it to ``on_train_batch_end`` as ``outputs``, e.g. for
        :class:`lit_safe.callbacks.samples.PPOSamples`)."""
        hp = self.hparams
        ptx_batch = None
        if "prompts" in batch:  # the data module streams prompts and PTX (sft) batches together
            batch, ptx_batch = batch["prompts"], batch["ptx"]
        if hp.ptx_coeff > 0 and ptx_batch is None:
            raise ValueError("ptx_coeff > 0 needs PTX batches: set the data module's ptx: true")
        self._skipped: list[str] = []
        rollout = self.rollout(batch)
        # lambda moves first, on the window that now holds this rollout's costs; the actor follows the new lambda
        window_cost = self.update_lambda(rollout.cost) if self.uses_cost else None
        lagrange = self.log_lambda.detach().exp() if self.lagrangian else None
        if rollout.old_log_probs is not None:  # estimated in the rollout (several minibatches)
            rollout.combine(lagrange)
        self.rollouts_done += 1
        size = rollout.sequences.size(0)
        if size % hp.num_minibatches:
            raise ValueError(f"the rollout batch ({size}) is not divisible by num_minibatches ({hp.num_minibatches})")
        stats: dict[str, list[Tensor]] = {"actor_loss": [], "clip_fraction": [], "reward_critic_loss": [],
                                          "cost_critic_loss": [], "actor_grad_norm": [], "ptx_loss": []}
        ptx_chunks = None
        if ptx_batch is not None and hp.ptx_coeff > 0:
            ptx_size = ptx_batch["input_ids"].size(0)
            ptx_chunks = torch.arange(ptx_size, device=rollout.sequences.device).chunk(hp.num_minibatches)
        update_start = self._clock()
        for _ in range(hp.ppo_epochs):
            if rollout.old_log_probs is None:  # one minibatch: the first update's forward passes are the rollout's
                log_probs, values = self._log_probs(self.model, rollout), self._critic_values(rollout)
                self.estimate(rollout, log_probs, *values.values())
                rollout.combine(lagrange)
                self._update(rollout, log_probs, values, ptx_batch, ptx_chunks, stats)
                continue
            for index in torch.randperm(size, device=rollout.sequences.device).chunk(hp.num_minibatches):
                self._update(rollout.select(index), None, None, ptx_batch, ptx_chunks, stats)
        update_seconds = self._clock() - update_start
        skipped = sorted(set(self._skipped), key=self._skipped.index)
        self.count_step(not skipped, "skipped updates: " + "; ".join(skipped[:4]) if skipped else "")
        t = self.timings
        self.log_dict({
            "perf/generation_seconds": t["generation_seconds"],
            "perf/scoring_seconds": t["scoring_seconds"],
            "perf/update_seconds": update_seconds,
            "perf/rollout_tokens_per_s": t["generated_tokens"] / max(t["generation_seconds"], 1e-9),
            "perf/update_samples_per_s": size * hp.ppo_epochs / max(update_seconds, 1e-9),
        })
        self._log_rollout(rollout, window_cost, stats)
        return {"rollout": rollout}

    def _log_rollout(self, rollout: Rollout, window_cost: Tensor | None, stats: dict[str, list[Tensor]]) -> None:
        mask = rollout.action_mask
        lengths = mask.sum(-1).float()
        logs = {
            "train/reward": rollout.reward.mean(),
            "train/kl": response_mean(rollout.kl, mask),
            "train/reward_with_kl": (rollout.reward - self.hparams.kl_coeff * (rollout.kl * mask).sum(-1)).mean(),
            "train/reward_value": response_mean(rollout.reward_values, mask),
            "train/reward_return": response_mean(rollout.reward_returns, mask),
            "train/advantage": response_mean(rollout.advantages, mask),
            "train/mean_generated_length": lengths.mean(),
            "train/max_generated_length": lengths.max(),
            "train/lambda": self.log_lambda.detach().exp(),
        }
        if rollout.cost is not None:
            logs["train/cost"] = rollout.cost.mean()
            logs["train/cost_with_kl"] = (rollout.cost + self.hparams.kl_coeff * (rollout.kl * mask).sum(-1)).mean()
            logs["train/episode_cost"] = window_cost
            logs["train/safe_share"] = (rollout.cost <= 0).float().mean()
        if rollout.cost_values is not None:
            logs["train/cost_value"] = response_mean(rollout.cost_values, mask)
            logs["train/cost_return"] = response_mean(rollout.cost_returns, mask)
        for key, values in stats.items():
            if values:
                logs[f"train/{key}"] = torch.stack(values).float().mean()
        self.log_dict({k: v.float() for k, v in logs.items()}, prog_bar=False)
        self.log_dict({"reward": logs["train/reward"], **({"cost": logs["train/cost"]} if "train/cost" in logs
                                                            else {}), "lambda": logs["train/lambda"]}, prog_bar=True,
                      logger=False)

    # ------------------------------------------------------------------------------------------------ state
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)  # refuses non-finite weights; the training random stream
        checkpoint["ppo_state"] = {"episode_costs": list(self.episode_costs), "rollouts_done": self.rollouts_done}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("ppo_state", {})
        self.episode_costs = deque(state.get("episode_costs", []), maxlen=self.hparams.episode_window)
        self.rollouts_done = int(state.get("rollouts_done", 0))

    def export_pretrained(self, path) -> Any:
        """Write the trained policy as a Hugging Face causal LM (config, safetensors, tokenizer). Call on every
        rank."""
        return export_causal_lm(self.model, self.tokenizer, path, root=self.export_root(), prefix="model.",
                                lora_scaling=self.lora_scaling)
