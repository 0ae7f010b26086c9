"""DPOModule: Direct Preference Optimization of a causal LM (Rafailov et al., arXiv 2305.18290), in Lightning.

The policy learns from (prompt, preferred response, dispreferred response) pairs without a reward model:
``L = -log sigmoid(beta [(log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))])`` with log-probs summed over
the response tokens, where ``ref`` is a frozen copy of the policy's initial weights (ALGORITHMS.md section 8; the math
is :func:`lit_safe.losses.sequence_logprobs` and :func:`lit_safe.losses.dpo_loss`). In lit_safe it trains the
SafeSora prompt augmenter (the user's ``prompt_text`` rewritten into the ``video_text`` the video generator reads;
methods.md section 3.4) on (winning rewrite, losing rewrite) pairs, after or instead of SFT on the winning rewrites,
and is a text DPO baseline on any data module with a ``preference_pairs`` view
(:class:`lit_safe.data_modules.policy.PreferencePairView`).

One step: the frozen reference reads the 2B sequences of a batch (B chosen, then B rejected) in one pass without
gradient, then the policy reads them in one forward pass. Metrics (``train/...`` per step, ``val/...`` and
``test/...`` per epoch): ``loss``, ``accuracy`` (implicit reward of the chosen response strictly higher),
``reward_chosen``, ``reward_rejected``, ``reward_margin`` (implicit rewards ``beta (log pi - log ref)``),
``logps_chosen`` and ``logps_rejected`` (the policy's summed response log-probs). At the first step the policy is the
reference: the loss is ``log 2`` and the accuracy 0 (for a model without dropout).

The reference is a submodule (``reference``): it is saved in every checkpoint and restored from it on resume, so a
resumed run keeps the very reference it started with (the checkpoint holds two copies of the model). It is built in
:meth:`DPOModule.configure_model` as a copy of the freshly built policy (for a preset, the same random
initialisation; for a path or hub id, the loaded weights), never enters the optimizer, has no gradient and stays in
eval mode (Lightning's warning that modules are in eval mode at the start of training is about it). Under FSDP2
(``ModelParallelStrategy``) both are sharded. The export is the policy alone, a plain Hugging Face causal LM with its
tokenizer; a new DPO run from that export takes it as its reference.

Defaults follow the reference DPO script (PKU-Alignment/safe-rlhf ``scripts/dpo.sh``: beta 0.1, lr 1e-6, weight
decay 0.05, cosine with 3% warm-up, gradient clip 1.0). Departure: that implementation summed the log-probs over a slice
shifted by one token (it dropped the first differing response token and added a padding token's log-prob); here every
response token counts exactly once. Response tokens the two sequences share after the prompt cancel in the loss.
"""

from __future__ import annotations

from typing import Any

import torch

from lit_safe.losses import dpo_loss, preference_accuracy, sequence_logprobs
from lit_safe.metrics import MeanStats
from lit_safe.models.backbone import load_backbone
from lit_safe.models.sharding import export_causal_lm
from lit_safe.modules.base import StageStatsModule
from lit_safe.optim import OptimizerSettings

#: the reference DPO script's AdamW settings (see the module docstring)
DEFAULT_OPTIMIZER = OptimizerSettings(lr=1e-6, weight_decay=0.05)

#: the metrics of a step (:meth:`DPOModule.model_step`), each a mean over the batch's pairs
DPO_METRICS = ("loss", "accuracy", "reward_chosen", "reward_rejected", "reward_margin", "logps_chosen",
               "logps_rejected")


class DPOModule(StageStatsModule):
    """Train a causal LM policy with DPO against a frozen copy of its initial weights. Its ``backbone`` is the initial
    policy (usually an SFT model, e.g. the prompt augmenter fine-tuned on winning rewrites), and the reference a copy
    of it (in the same ``dtype``); ``gradient_checkpointing`` applies to the policy.

    Args:
        beta: inverse temperature of the implicit reward (how strongly the policy is held near the reference).
        optimizer: AdamW, its learning-rate schedule and gradient clipping (defaults: the reference script's).
        **kwargs: the arguments every trainer takes, as :class:`~lit_safe.modules.base.BackboneModule`.
    """

    model: torch.nn.Module | None  # the policy (BackboneModule's name for the trained network)
    views = ("rewrite_pairs", "preference_pairs")  # SafeSora's rewrite pairs, or any data module's PreferencePairView

    def __init__(self, *, beta: float = 0.1, optimizer: OptimizerSettings = DEFAULT_OPTIMIZER, **kwargs: Any) -> None:
        if beta <= 0:
            raise ValueError(f"beta must be positive, got {beta}")
        super().__init__(optimizer=optimizer, **kwargs)
        self.reference = None
        self.val_stats, self.test_stats = MeanStats(DPO_METRICS), MeanStats(DPO_METRICS)  # training logs per step

    # ------------------------------------------------------------------------------------------------- models
    def configure_model(self) -> None:
        if self.model is not None:
            return
        hp = self.hparams
        self.model = load_backbone(hp.backbone, self.tokenizer, causal_lm=True, dtype=hp.dtype, revision=hp.revision)
        self.reference = load_backbone(hp.backbone, self.tokenizer, causal_lm=True, dtype=hp.dtype,
                                       revision=hp.revision)
        self.reference.load_state_dict(self.model.state_dict())  # a preset's random init must be the policy's
        self.reference.eval().requires_grad_(False)
        if hp.gradient_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.shard(self.model)
        self.shard(self.reference)

    def train(self, mode: bool = True) -> DPOModule:
        """Switch the policy (and metrics) to training mode; the reference always stays in eval mode."""
        super().train(mode)
        if self.reference is not None:
            self.reference.eval()
        return self

    # ------------------------------------------------------------------------------------------------- steps
    def logprobs(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed response log-probs ``(2B,)`` of every sequence of a batch under the policy (with gradient) and
        the reference (without)."""
        from torch.distributed.fsdp import FSDPModule

        if "labels" not in batch or batch["input_ids"].size(0) != 2 * batch["row"].size(0):
            raise ValueError("DPOModule needs the data module's 'preference_pairs' view (2B sequences with labels)")
        ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        with torch.no_grad():  # first, so that its logits are freed before the policy's activations pile up
            reference = sequence_logprobs(self.reference(input_ids=ids, attention_mask=mask, use_cache=False).logits,
                                          labels)
        if isinstance(self.reference, FSDPModule):
            self.reference.reshard()  # FSDP2 keeps the root gathered for a backward, which the reference never runs
        policy = sequence_logprobs(self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits, labels)
        return policy, reference

    def model_step(self, batch: dict) -> dict[str, torch.Tensor]:
        """The DPO loss of a batch and its metrics (see the module docstring)."""
        policy, reference = self.logprobs(batch)
        policy_chosen, policy_rejected = policy.chunk(2)
        ref_chosen, ref_rejected = reference.chunk(2)
        loss, chosen, rejected = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected,
                                          self.hparams.beta)
        return {
            "loss": loss,
            "accuracy": preference_accuracy(chosen, rejected),
            "reward_chosen": chosen.mean(),
            "reward_rejected": rejected.mean(),
            "reward_margin": (chosen - rejected).mean(),
            "logps_chosen": policy_chosen.detach().mean(),
            "logps_rejected": policy_rejected.detach().mean(),
        }

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        values = self.model_step(batch)
        self.log("train/loss", values["loss"], prog_bar=True)
        self.log("train/accuracy", values["accuracy"], prog_bar=True)
        self.log_dict({f"train/{k}": v for k, v in values.items() if k not in ("loss", "accuracy")})
        return values["loss"]

    def evaluation_step(self, batch: dict, batch_idx: int, stats: MeanStats) -> None:
        stats.update(self.model_step(batch), weight=batch["row"].numel())

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        """Per pair of a prepared split: the implicit rewards of both responses and the policy's log-probs."""
        if "line" in batch:
            raise ValueError("DPOModule predicts on a prepared split of pairs, not on a predict_file")
        policy, reference = self.logprobs(batch)
        rewards = self.hparams.beta * (policy - reference)
        chosen, rejected = rewards.chunk(2)
        logps_chosen, logps_rejected = policy.chunk(2)
        return {"row": batch["row"], "reward_chosen": chosen, "reward_rejected": rejected,
                "logps_chosen": logps_chosen, "logps_rejected": logps_rejected}

    # ------------------------------------------------------------------------------------------------ export
    def export_pretrained(self, path) -> Any:
        """Write the trained policy as a Hugging Face causal LM (config, safetensors, tokenizer). Call on every
        rank."""
        return export_causal_lm(self.model, self.tokenizer, path, root=self.export_root(), prefix="model.")
