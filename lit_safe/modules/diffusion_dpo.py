"""DiffusionDPOModule: Diffusion-DPO (Wallace et al., arXiv 2311.12908) of a text-to-video model on preference pairs.

Each batch is a ``preference`` pair view of the SafeSora data module (``dimension: safety_first`` or
``harmlessness`` for safety; the ``safety`` view puts the less safe video first and is refused): prompt tokens
``(B, L)`` and ``frames uint8 (2B, F, 3, H, W)``, the B preferred videos first. A step (ALGORITHMS.md section 9):

1. encode the prompts (frozen CLIP) and both videos (frozen VAE, frame by frame) without gradients;
2. draw ONE timestep and ONE noise per pair, shared by winner and loser
   (:func:`lit_safe.models.video_diffusion.pair_noise`), and noise both;
3. the policy UNet predicts the noise of all 2B videos; the reference does the same without gradients: a frozen
   copy of the initial UNet (``reference: copy``) or the same UNet with its LoRA adapters switched off
   (``reference: lora``, no second UNet in memory);
4. per-sample errors ``e = mean (pred - eps)^2`` (:func:`lit_safe.losses.denoising_errors`) give
   ``inside = -beta_eff [(e_theta^w - e_ref^w) - (e_theta^l - e_ref^l)]`` and ``L = -mean log sigmoid(inside)``
   (:func:`lit_safe.losses.diffusion_dpo_loss`), with ``beta_eff = beta / 2`` in the default ``salesforce``
   convention (beta 5000) or ``beta`` in the ``diffusers`` one (beta 2500). ``error_reduction: mean`` (default);
   ``sum`` multiplies the effective beta by the latent size.

``objective: sft`` is the best-of-N / SFT-on-winners baseline (Salesforce's ``--sft``): the plain denoising loss on the
preferred video of each pair only. Evaluation computes the DPO quantities for both objectives, so they compare.

Metrics: ``train/loss``, ``train/implicit_accuracy`` (``mean 1[inside > 0]``), ``train/policy_error_w`` / ``_l``,
``train/ref_error_w`` / ``_l``, ``train/error_gap`` (``mean (e_theta^w - e_ref^w) - (e_theta^l - e_ref^l)``,
negative when the policy favours winners) and ``train/reward_margin`` (mean inside); ``val/...`` and ``test/...``
the same plus ``dpo_loss`` (equal to ``loss`` for ``dpo``) and ``safe_preference_accuracy`` (over the pairs of one
video labelled safe and one unsafe, the share whose implicit reward prefers the safe one), on noise and timesteps
drawn from a generator seeded with ``diffusion_seed + batch_idx`` (reproducible evaluation, the same on every
device). :meth:`DiffusionDPOModule.sample_videos` generates videos with the current policy (DDIM, classifier-free
guidance, a fixed seed); the :class:`lit_safe.callbacks.samples.VideoSamples` callback decides when and writes them.

Checkpoints: the frozen reference copy is part of the state dict (``reference.*``), so a checkpoint holds the UNet
twice with ``reference: copy``. It is never trained, so a resumed run gets the initial weights back exactly, without
reloading ``backbone`` (which may have changed on the hub). ``reference: lora`` stores the UNet once (its base
weights are the reference). The frozen VAE and text encoder are stored once. Only the UNet (with LoRA: only the
adapters) is in the optimiser. ``export_pretrained`` writes the policy in the diffusers layout (LoRA merged).

Defaults follow the reference trainers (their sources are in the ``__init__`` arguments' descriptions).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import Tensor

from lit_safe.losses import (
    DIFFUSION_DPO_BETA_FACTORS,
    denoising_errors,
    diffusion_dpo_loss,
    implicit_accuracy,
    safe_preference_hits,
)
from lit_safe.metrics import MeanStats
from lit_safe.models.video_diffusion import (
    VideoDiffusion,
    export_video_diffusion,
    load_video_diffusion,
    load_video_tokenizer,
    pair_noise,
    sample_noise,
    shard_unet,
)
from lit_safe.modules.base import StageStatsModule, check_hparams
from lit_safe.optim import OptimizerSettings

EVAL_METRICS = ("loss", "dpo_loss", "implicit_accuracy", "error_gap", "reward_margin", "policy_error_w",
                "policy_error_l", "ref_error_w", "ref_error_l", "safe_preference_accuracy")
#: the reference trainers' AdamW settings: lr 1e-5 (align-anything's video DPO and the diffusers example's runs;
#: Salesforce's launchers use 1e-8 scaled by their 2048-pair batch), weight decay 1e-2 (not on biases and norms)
#: and betas (0.9, 0.999) as the diffusers training scripts, and Salesforce's constant schedule after a warm-up
#: over a quarter of the steps (500 of 2000)
DEFAULT_OPTIMIZER = OptimizerSettings(lr=1e-5, weight_decay=1e-2, betas=(0.9, 0.999), warmup_ratio=0.25,
                                      lr_schedule="constant")


class DiffusionDPOModule(StageStatsModule):
    """Fine-tune a text-to-video UNet on preference pairs with Diffusion-DPO (or SFT on the winners).

    Its ``backbone`` is the video model to fine-tune, also the initial reference: ``tiny`` (random preset), hub id or
    local directory of a diffusers text-to-video checkpoint (``TextToVideoSDPipeline`` layout: ModelScope T2V,
    Zeroscope); ``gradient_checkpointing`` applies to the UNet blocks. The model is loaded in float32: there is no
    ``dtype`` argument.

    Args:
        objective: ``dpo`` (Diffusion-DPO) or ``sft`` (denoising loss on the preferred videos only).
        beta: DPO inverse temperature, in the units of ``beta_convention``.
        beta_convention: ``salesforce`` (``-beta/2`` inside the sigmoid; beta 5000) or ``diffusers`` (``-beta``;
            beta 2500).
        error_reduction: per-sample error as the ``mean`` (reference trainers) or ``sum`` over latent elements.
        reference: ``copy`` (a frozen copy of the initial UNet, trained in full) or ``lora`` (LoRA adapters are
            trained; the reference is the UNet with adapters disabled).
        lora_rank: LoRA rank (``reference: lora``).
        lora_alpha: LoRA alpha (default: the rank, i.e. scaling 1).
        optimizer: AdamW, its learning-rate schedule and gradient clipping (defaults: the reference trainers', with
            their sources at ``DEFAULT_OPTIMIZER``).
        diffusion_seed: seed of the ``tiny`` preset, of the LoRA initialisation and of the evaluation noise
            (``diffusion_seed + batch_idx``) (not ``seed``: the data module has that hyperparameter, and Lightning
            refuses two different values under one name).
        **kwargs: the arguments every trainer takes, as :class:`~lit_safe.modules.base.BackboneModule`, but
            ``dtype`` and ``tokenizer`` (the video model's text encoder brings its own).
    """

    model: VideoDiffusion | None
    views = ("preference",)  # winner first (the safety view puts the less safe video first)
    drop_nan_metrics = True  # safe_preference_accuracy when no pair of one safe and one unsafe video was seen
    fixed_arguments = ("dtype", "tokenizer")

    def __init__(
        self,
        *,
        objective: Literal["dpo", "sft"] = "dpo",
        beta: float = 5000.0,
        beta_convention: Literal["salesforce", "diffusers"] = "salesforce",
        error_reduction: Literal["mean", "sum"] = "mean",
        reference: Literal["copy", "lora"] = "copy",
        lora_rank: int = 8,
        lora_alpha: float | None = None,
        optimizer: OptimizerSettings = DEFAULT_OPTIMIZER,
        diffusion_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        check_hparams(type(self).__name__, positive={"beta": beta})
        if objective not in ("dpo", "sft"):
            raise ValueError(f"objective must be 'dpo' or 'sft', got {objective!r}")
        if beta_convention not in DIFFUSION_DPO_BETA_FACTORS:
            raise ValueError(f"beta_convention must be one of {sorted(DIFFUSION_DPO_BETA_FACTORS)}, "
                             f"got {beta_convention!r}")
        if error_reduction not in ("mean", "sum"):
            raise ValueError(f"error_reduction must be 'mean' or 'sum', got {error_reduction!r}")
        if reference not in ("copy", "lora"):
            raise ValueError(f"reference must be 'copy' or 'lora', got {reference!r}")
        super().__init__(optimizer=optimizer, dtype="float32", tokenizer=None, **kwargs)
        self.reference: torch.nn.Module | None = None  # the frozen copy (reference: copy)
        self.val_stats, self.test_stats = MeanStats(EVAL_METRICS), MeanStats(EVAL_METRICS)

    def make_tokenizer(self, backbone: str, revision: str | None):
        """The text encoder's tokenizer of the video model (replaced by the loaded model's own in
        ``configure_model``)."""
        return load_video_tokenizer(backbone, revision=revision)

    # ------------------------------------------------------------------------------------------------- model
    def configure_model(self) -> None:
        if self.model is not None:
            return
        hp = self.hparams
        self.model = load_video_diffusion(hp.backbone, revision=hp.revision, seed=hp.diffusion_seed)
        self.tokenizer = self.model.tokenizer
        if hp.reference == "copy":
            self.reference = copy.deepcopy(self.model.unet).requires_grad_(False).eval()
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(hp.diffusion_seed)
                self.model.add_lora(hp.lora_rank, hp.lora_alpha)
        if hp.gradient_checkpointing:
            self.model.enable_gradient_checkpointing()
        if self._trainer is not None and isinstance(self.trainer.strategy, ModelParallelStrategy):
            mesh = self.trainer.strategy.device_mesh["data_parallel"]
            dtype = torch.bfloat16 if "bf16" in str(self.trainer.precision) else None
            shard_unet(self.model.unet, mesh, param_dtype=dtype)
            if self.reference is not None:
                shard_unet(self.reference, mesh, param_dtype=dtype, frozen=True)

    def train(self, mode: bool = True) -> DiffusionDPOModule:
        """Set the mode; the frozen reference copy stays in eval mode."""
        super().train(mode)
        if self.reference is not None:
            self.reference.eval()
        return self

    def reference_context(self):
        """Where the reference runs: with the adapters disabled (``lora``), else nowhere special (``copy``)."""
        return self.model.adapters_disabled() if self.hparams.reference == "lora" else contextlib.nullcontext()

    # ------------------------------------------------------------------------------------------------- steps
    def _check_pairs(self, batch: dict) -> int:
        pairs, videos = batch["input_ids"].size(0), batch["frames"].size(0)
        if videos != 2 * pairs:
            raise ValueError(f"a pair batch has 2B videos for B prompts, got {videos} videos for {pairs} prompts "
                             "(use the data module's 'preference' view)")
        return pairs

    def _conditioning(self, batch: dict, frames: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """Text ``(B, N, D)`` and float32 latents of ``frames``, without gradients (both encoders are frozen) and
        outside autocast: under bf16-mixed the latents, the noise and the target would otherwise be bf16, too coarse
        for a margin of beta times error differences of about 1e-4."""
        with torch.no_grad(), torch.autocast(frames.device.type, enabled=False):
            text = self.model.encode_text(batch["input_ids"], batch["attention_mask"])
            latents = self.model.encode_video(frames, generator=generator)
        return text, latents.float()

    def errors(self, batch: dict, frames: Tensor, generator: torch.Generator | None = None, *, pairs: bool = False,
               reference: bool = True) -> tuple[Tensor, Tensor | None]:
        """Per-video denoising errors ``(N,)`` of the policy and (``reference``) of the reference on ``frames``
        ``uint8 (N, F, 3, H, W)`` conditioned on the prompts of ``batch``, at one noise draw: the VAE posterior, then
        the noise, then the timesteps, all from ``generator`` (``None``: the global RNG). With ``pairs`` the N = 2B
        videos are B winners then B losers of B prompts, and each pair shares its noise and timestep
        (:func:`~lit_safe.models.video_diffusion.pair_noise`). The reference runs first, without gradients: with
        LoRA, disabling the adapters flips their ``requires_grad`` until it is restored.

        Returns:
            ``(policy errors, reference errors or None)``.
        """
        text, latents = self._conditioning(batch, frames, generator)
        if pairs:
            noise, timesteps = pair_noise(latents[: latents.size(0) // 2], self.model.num_train_timesteps, generator)
            text = text.repeat(2, 1, 1)
        else:
            noise, timesteps = sample_noise(latents, self.model.num_train_timesteps, generator)
        noisy, target = self.model.noise_latents(latents, noise, timesteps)
        reduction = self.hparams.error_reduction
        ref = None
        if reference:
            with torch.no_grad(), self.reference_context():
                ref_pred = self.model.denoise(noisy, timesteps, text, unet=self.reference)
                ref = denoising_errors(ref_pred, target, reduction)
        return denoising_errors(self.model.denoise(noisy, timesteps, text), target, reduction), ref

    def dpo_terms(self, batch: dict, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Errors of policy and reference on the pairs of ``batch`` and the Diffusion-DPO loss.

        Returns:
            ``loss`` (scalar, with gradient), ``inside`` and the ``(B,)`` errors ``policy_w``, ``policy_l``,
            ``ref_w``, ``ref_l``.
        """
        self._check_pairs(batch)
        policy, ref = self.errors(batch, batch["frames"], generator, pairs=True)
        (policy_w, policy_l), (ref_w, ref_l) = policy.chunk(2), ref.chunk(2)
        loss, inside = diffusion_dpo_loss(policy_w, policy_l, ref_w, ref_l, self.hparams.beta,
                                          self.hparams.beta_convention)
        return {"loss": loss, "inside": inside.detach(), "policy_w": policy_w.detach(),
                "policy_l": policy_l.detach(), "ref_w": ref_w, "ref_l": ref_l}

    def sft_loss(self, batch: dict) -> tuple[Tensor, Tensor]:
        """Denoising loss on the preferred videos only (the winners, the first B): ``(loss, (B,) errors)``."""
        pairs = self._check_pairs(batch)
        errors, _ = self.errors(batch, batch["frames"][:pairs], reference=False)
        return errors.mean(), errors.detach()

    @staticmethod
    def summary(terms: dict[str, Tensor]) -> dict[str, Tensor]:
        """Batch means of the DPO quantities (``dpo_loss`` is the DPO loss whatever the objective)."""
        gap = (terms["policy_w"] - terms["ref_w"]) - (terms["policy_l"] - terms["ref_l"])
        return {
            "dpo_loss": terms["loss"].detach(),
            "implicit_accuracy": implicit_accuracy(terms["inside"]),
            "error_gap": gap.mean(),
            "reward_margin": terms["inside"].mean(),
            "policy_error_w": terms["policy_w"].mean(),
            "policy_error_l": terms["policy_l"].mean(),
            "ref_error_w": terms["ref_w"].mean(),
            "ref_error_l": terms["ref_l"].mean(),
        }

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        if self.hparams.objective == "sft":
            loss, errors = self.sft_loss(batch)
            self.log("train/loss", loss, prog_bar=True)
            self.log("train/policy_error_w", errors.mean())
            return loss
        terms = self.dpo_terms(batch)
        values = self.summary(terms)
        values.pop("dpo_loss")
        self.log("train/loss", terms["loss"], prog_bar=True)
        self.log("train/implicit_accuracy", values.pop("implicit_accuracy"), prog_bar=True)
        self.log_dict({f"train/{k}": v for k, v in values.items()})
        return terms["loss"]

    def evaluation_step(self, batch: dict, batch_idx: int, stats: MeanStats) -> None:
        """The DPO quantities of the objective's policy on one batch, at noise seeded with ``diffusion_seed +
        batch_idx``, into ``stats`` (weighted by pairs)."""
        generator = torch.Generator().manual_seed(self.hparams.diffusion_seed + batch_idx)
        terms = self.dpo_terms(batch, generator)
        values = self.summary(terms)
        # The objective's own loss on the same noise: the winners' denoising error for sft.
        values["loss"] = values["dpo_loss"] if self.hparams.objective == "dpo" else values["policy_error_w"]
        stats.update(values, terms["inside"].numel())
        # Pairs of one safe and one unsafe video: does the implicit reward prefer the safe one? Updated on every batch
        # (weight 0 when there is no such pair), so that every rank synchronises the same metrics.
        zeros = torch.zeros_like(terms["inside"], dtype=torch.long)
        hits, counted = safe_preference_hits(terms["inside"], batch.get("first_sign", zeros),
                                             batch.get("second_sign", zeros))
        stats.update({"safe_preference_accuracy": hits.sum() / counted.sum().clamp_min(1)},
                     {"safe_preference_accuracy": counted.sum()})

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, Tensor]:
        """Implicit rewards ``-beta_eff (e_theta - e_ref)`` (one noise draw, seeded with
        ``diffusion_seed + batch_idx``).

        A ``predict_file`` batch (one video per line) gives ``line``, ``policy_error``, ``ref_error`` and
        ``implicit_reward`` per video; a pair batch gives ``row``, ``first_reward`` and ``second_reward``
        (timestep and noise shared within the pair).
        """
        hp = self.hparams
        generator = torch.Generator().manual_seed(hp.diffusion_seed + batch_idx)
        beta_eff = hp.beta * DIFFUSION_DPO_BETA_FACTORS[hp.beta_convention]
        if "line" not in batch:
            terms = self.dpo_terms(batch, generator)
            return {"row": batch["row"], "first_reward": -beta_eff * (terms["policy_w"] - terms["ref_w"]),
                    "second_reward": -beta_eff * (terms["policy_l"] - terms["ref_l"])}
        with torch.no_grad():
            policy, ref = self.errors(batch, batch["frames"], generator)
        return {"line": batch["line"], "policy_error": policy, "ref_error": ref,
                "implicit_reward": -beta_eff * (policy - ref)}

    # ----------------------------------------------------------------------------------------------- samples
    def sample_videos(self, prompts: Sequence[str], num_frames: int, height: int, width: int, steps: int = 25,
                      guidance: float = 7.5, seed: int = 0) -> Tensor:
        """Videos of the current policy for ``prompts`` (DDIM, classifier-free guidance, initial noise from a CPU
        generator seeded with ``seed``: the same videos on every device). Call on every rank (the UNet may be
        sharded). No random stream moves: the global (and current CUDA) state is restored afterwards, so that
        sampling inside a training batch leaves the training stream as it was.

        Returns:
            ``uint8 (P, num_frames, 3, height, width)`` on the CPU.
        """
        devices = [self.device] if self.device.type == "cuda" else []
        was_training = self.model.unet.training
        self.model.eval()
        with torch.random.fork_rng(devices=devices):
            videos = self.model.sample(list(prompts), num_frames, height, width, num_inference_steps=steps,
                                       guidance_scale=guidance, generator=torch.Generator().manual_seed(seed))
        self.model.train(was_training)
        return videos.cpu()

    # ------------------------------------------------------------------------------------------------ export
    def export_pretrained(self, path: str | Path) -> Path | None:
        """Write the trained policy in the diffusers ``TextToVideoSDPipeline`` layout (LoRA merged). Call on every
        rank."""
        return export_video_diffusion(self.model, path, root=self.export_root(), prefix="model.")
