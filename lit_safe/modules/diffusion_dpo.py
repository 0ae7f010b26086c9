"""DiffusionDPOModule: Diffusion-DPO (Wallace et al., arXiv 2311.12908) of a text-to-video model on preference pairs.

Each batch is a ``preference`` pair view of the SafeSora data module (``dimension: safety_first`` or
``harmlessness`` for safety; the ``safety`` view puts the less safe video first and is refused): prompt tokens
``(B, L)`` and ``frames uint8 (2B, F, 3, H, W)``, the B preferred videos first. A step (ALGORITHMS.md section 9):

1. encode the prompts (frozen CLIP) and both videos (frozen VAE, frame by frame) without gradients;
2. draw ONE timestep and ONE noise per pair, shared by winner and loser (:func:`pair_noise`), and noise both;
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
device). Every ``sample_every_n_steps`` optimiser steps (and once before training), videos for ``sample_prompts``
(DDIM, classifier-free guidance, a fixed seed) go to TensorBoard as animated GIFs (``samples/<i>``) and to
``<log_dir>/samples/step<N>_<i>.mp4``.

Checkpoints: the frozen reference copy is part of the state dict (``reference.*``), so a checkpoint holds the UNet
twice with ``reference: copy``. It is never trained, so a resumed run gets the initial weights back exactly, without
reloading ``model`` (which may have changed on the hub). ``reference: lora`` stores the UNet once (its base
weights are the reference). The frozen VAE and text encoder are stored once. Only the UNet (with LoRA: only the
adapters) is in the optimiser. ``export_pretrained`` writes the policy in the diffusers layout (LoRA merged).

Defaults follow the reference trainers: lr 1e-5 (align-anything's video DPO and the diffusers example's README runs;
Salesforce's launchers use 1e-8 scaled by their 2048-pair batch), AdamW (0.9, 0.999) with weight decay 1e-2 (the
diffusers training-script defaults), a constant schedule after a 25% linear warm-up (Salesforce: 500 of 2000
steps), gradient clip 1.0.
"""

from __future__ import annotations

import contextlib
import copy
import io
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torchmetrics import MeanMetric

from lit_safe.losses import (
    DIFFUSION_DPO_BETA_FACTORS,
    denoising_errors,
    diffusion_dpo_loss,
    implicit_accuracy,
    safe_preference_hits,
)
from lit_safe.models.video_diffusion import (
    VideoDiffusion,
    export_video_diffusion,
    load_video_diffusion,
    load_video_tokenizer,
    shard_unet,
)
from lit_safe.modules.base import BackboneModule, check_hparams, check_max_nonfinite_steps

EVAL_METRICS = ("loss", "dpo_loss", "implicit_accuracy", "error_gap", "reward_margin", "policy_error_w",
                "policy_error_l", "ref_error_w", "ref_error_l", "safe_preference_accuracy")


def pair_noise(latents_w: Tensor, num_timesteps: int,
               generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """One noise and one timestep per pair, shared by its winner and its loser.

    Args:
        latents_w: ``(B, C, F, h, w)`` latents of the winners (only their shape, dtype and device are read).
        num_timesteps: T of the training schedule; timesteps are uniform on ``{0, ..., T - 1}``.
        generator: draws both (on its own device, then moved: a CPU generator gives the same draw everywhere);
            ``None`` uses the global RNG on the latents' device.

    Returns:
        ``(noise (2B, C, F, h, w), timesteps (2B,) long)`` with ``noise[:B] == noise[B:]`` and
        ``timesteps[:B] == timesteps[B:]``, for a batch laid out winners first.
    """
    device = generator.device if generator is not None else latents_w.device
    b = latents_w.size(0)
    noise = torch.randn(latents_w.shape, generator=generator, device=device, dtype=latents_w.dtype)
    timesteps = torch.randint(0, num_timesteps, (b,), generator=generator, device=device)
    noise, timesteps = noise.to(latents_w.device), timesteps.to(latents_w.device)
    return noise.repeat(2, *([1] * (noise.dim() - 1))), timesteps.repeat(2)


def gif_bytes(frames: Tensor, fps: int = 8) -> bytes:
    """An animated GIF (looping) of ``uint8 (F, 3, H, W)`` frames."""
    from PIL import Image

    images = [Image.fromarray(frame.permute(1, 2, 0).cpu().numpy()) for frame in frames]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=max(1, 1000 // fps),
                   loop=0)
    return buffer.getvalue()


def log_video_gif(experiment, tag: str, frames: Tensor, step: int, fps: int = 8) -> None:
    """Log ``uint8 (F, 3, H, W)`` frames to a TensorBoard ``SummaryWriter`` as an animated GIF image (what
    ``add_video`` writes, without its moviepy dependency); writers without that API get a frame strip image."""
    if not hasattr(experiment, "_get_file_writer"):
        experiment.add_image(tag, torch.cat(list(frames), dim=-1), step)
        return
    from tensorboard.compat.proto.summary_pb2 import Summary

    _, _, height, width = frames.shape
    image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=gif_bytes(frames, fps))
    experiment._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)


class DiffusionStats(torch.nn.Module):
    """Pair-weighted running means of the evaluation metrics of one stage (synchronised by torchmetrics)."""

    def __init__(self) -> None:
        super().__init__()
        self.means = torch.nn.ModuleDict({name: MeanMetric() for name in EVAL_METRICS})
        for metric in self.means.values():
            metric.persistent(True)

    def update(self, values: dict[str, Tensor], pairs: int | dict[str, Tensor]) -> None:
        """Add a batch's means, each weighted by the pairs it averages (``pairs``, or ``pairs[name]``)."""
        for name, value in values.items():
            weight = pairs[name] if isinstance(pairs, dict) else pairs
            self.means[name].update(value.detach().float(), weight=weight)

    def compute(self) -> dict[str, Tensor]:
        """Every metric, synchronised across ranks (each rank runs the same collectives, whatever its batches held);
        a metric no pair counted towards comes back NaN on every rank."""
        return {name: metric.compute() for name, metric in self.means.items()}

    def reset(self) -> None:
        for metric in self.means.values():
            metric.reset()


class DiffusionDPOModule(BackboneModule):
    """Fine-tune a text-to-video UNet on preference pairs with Diffusion-DPO (or SFT on the winners).

    Args:
        model: ``tiny`` (random preset), hub id or local directory of a diffusers text-to-video checkpoint
            (``TextToVideoSDPipeline`` layout: ModelScope T2V, Zeroscope).
        revision: hub revision of ``model``.
        objective: ``dpo`` (Diffusion-DPO) or ``sft`` (denoising loss on the preferred videos only).
        beta: DPO inverse temperature, in the units of ``beta_convention``.
        beta_convention: ``salesforce`` (``-beta/2`` inside the sigmoid; beta 5000) or ``diffusers`` (``-beta``;
            beta 2500).
        error_reduction: per-sample error as the ``mean`` (reference trainers) or ``sum`` over latent elements.
        reference: ``copy`` (a frozen copy of the initial UNet, trained in full) or ``lora`` (LoRA adapters are
            trained; the reference is the UNet with adapters disabled).
        lora_rank: LoRA rank (``reference: lora``).
        lora_alpha: LoRA alpha (default: the rank, i.e. scaling 1).
        lr: peak learning rate.
        weight_decay: AdamW weight decay (not applied to biases and norms).
        betas: AdamW betas.
        warmup_ratio: share of the optimiser steps spent warming up linearly.
        lr_schedule: ``constant`` or ``cosine`` after warm-up.
        max_grad_norm: clip gradients to this global norm (``None``: measure only).
        gradient_checkpointing: recompute the UNet blocks' activations in backward.
        sample_every_n_steps: generate and log sample videos every this many optimiser steps (0: never).
        sample_prompts: the prompts of the sample videos.
        sample_steps: DDIM steps of the samples.
        sample_guidance: classifier-free guidance scale of the samples.
        sample_fps: frame rate of the logged GIFs and mp4 files.
        diffusion_seed: seed of the ``tiny`` preset, of the LoRA initialisation, of the evaluation noise
            (``diffusion_seed + batch_idx``) and of the sample videos (not ``seed``: the data module has that
            hyperparameter, and Lightning refuses two different values under one name).
        max_nonfinite_steps: optimiser steps in a row whose loss or gradient norm is not finite (each is skipped)
            before training stops with an error.
    """

    def __init__(
        self,
        model: str = "tiny",
        revision: str | None = None,
        objective: Literal["dpo", "sft"] = "dpo",
        beta: float = 5000.0,
        beta_convention: Literal["salesforce", "diffusers"] = "salesforce",
        error_reduction: Literal["mean", "sum"] = "mean",
        reference: Literal["copy", "lora"] = "copy",
        lora_rank: int = 8,
        lora_alpha: float | None = None,
        lr: float = 1e-5,
        weight_decay: float = 1e-2,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_ratio: float = 0.25,
        lr_schedule: Literal["cosine", "constant"] = "constant",
        max_grad_norm: float | None = 1.0,
        gradient_checkpointing: bool = False,
        sample_every_n_steps: int = 0,
        sample_prompts: list[str] | None = None,
        sample_steps: int = 25,
        sample_guidance: float = 7.5,
        sample_fps: int = 8,
        diffusion_seed: int = 0,
        max_nonfinite_steps: int = 3,
    ) -> None:
        super().__init__()
        check_hparams(type(self).__name__, non_negative={"lr": lr, "weight_decay": weight_decay,
                                                         "warmup_ratio": warmup_ratio},
                      positive={"beta": beta, "max_grad_norm": max_grad_norm})
        check_max_nonfinite_steps(type(self).__name__, max_nonfinite_steps)
        if objective not in ("dpo", "sft"):
            raise ValueError(f"objective must be 'dpo' or 'sft', got {objective!r}")
        if beta_convention not in DIFFUSION_DPO_BETA_FACTORS:
            raise ValueError(f"beta_convention must be one of {sorted(DIFFUSION_DPO_BETA_FACTORS)}, "
                             f"got {beta_convention!r}")
        if error_reduction not in ("mean", "sum"):
            raise ValueError(f"error_reduction must be 'mean' or 'sum', got {error_reduction!r}")
        if reference not in ("copy", "lora"):
            raise ValueError(f"reference must be 'copy' or 'lora', got {reference!r}")
        if sample_every_n_steps and not sample_prompts:
            raise ValueError("sample_every_n_steps needs sample_prompts")
        self.save_hyperparameters()
        self.tokenizer = load_video_tokenizer(model, revision=revision)
        self.model: VideoDiffusion | None = None
        self.reference: torch.nn.Module | None = None  # the frozen copy (reference: copy)
        self.val_stats, self.test_stats = DiffusionStats(), DiffusionStats()
        self._video_shape: tuple[int, int, int] | None = None  # (F, H, W) of the training videos, for samples
        self._last_sample_step = -1

    # ------------------------------------------------------------------------------------------------- model
    def setup(self, stage: str) -> None:
        """Check the data module's tokenizer (the text encoder's) and view (winner first)."""
        super().setup(stage)
        self.require_view("preference")

    def configure_model(self) -> None:
        if self.model is not None:
            return
        hp = self.hparams
        self.model = load_video_diffusion(hp.model, revision=hp.revision, seed=hp.diffusion_seed)
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

    def dpo_terms(self, batch: dict, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Errors of policy and reference on the pairs of ``batch`` and the Diffusion-DPO loss.

        Returns:
            ``loss`` (scalar, with gradient), ``inside`` and the ``(B,)`` errors ``policy_w``, ``policy_l``,
            ``ref_w``, ``ref_l``.
        """
        hp = self.hparams
        pairs = self._check_pairs(batch)
        text, latents = self._conditioning(batch, batch["frames"], generator)
        noise, timesteps = pair_noise(latents[:pairs], self.model.num_train_timesteps, generator)
        noisy = self.model.scheduler.add_noise(latents, noise, timesteps)
        target = self.model.noise_target(latents, noise, timesteps)
        text = text.repeat(2, 1, 1)
        # The reference first: with LoRA, disabling the adapters flips their requires_grad until it is restored.
        with torch.no_grad(), self.reference_context():
            ref = denoising_errors(self.model.denoise(noisy, timesteps, text, unet=self.reference), target,
                                   hp.error_reduction)
        policy = denoising_errors(self.model.denoise(noisy, timesteps, text), target, hp.error_reduction)
        (policy_w, policy_l), (ref_w, ref_l) = policy.chunk(2), ref.chunk(2)
        loss, inside = diffusion_dpo_loss(policy_w, policy_l, ref_w, ref_l, hp.beta, hp.beta_convention)
        return {"loss": loss, "inside": inside.detach(), "policy_w": policy_w.detach(),
                "policy_l": policy_l.detach(), "ref_w": ref_w, "ref_l": ref_l}

    def sft_loss(self, batch: dict) -> tuple[Tensor, Tensor]:
        """Denoising loss on the preferred videos only (the winners, the first B): ``(loss, (B,) errors)``."""
        pairs = self._check_pairs(batch)
        text, latents = self._conditioning(batch, batch["frames"][:pairs], None)
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, self.model.num_train_timesteps, (pairs,), device=latents.device)
        noisy = self.model.scheduler.add_noise(latents, noise, timesteps)
        pred = self.model.denoise(noisy, timesteps, text)
        errors = denoising_errors(pred, self.model.noise_target(latents, noise, timesteps),
                                  self.hparams.error_reduction)
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
        self._video_shape = tuple(int(s) for s in (batch["frames"].size(1), *batch["frames"].shape[-2:]))
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

    def _evaluate(self, batch: dict, batch_idx: int, stats: DiffusionStats) -> None:
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

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, self.val_stats)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, self.test_stats)

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
        text, latents = self._conditioning(batch, batch["frames"], generator)
        noise = torch.randn(latents.shape, generator=generator).to(latents)
        timesteps = torch.randint(0, self.model.num_train_timesteps, (latents.size(0),), generator=generator)
        timesteps = timesteps.to(latents.device)
        noisy = self.model.scheduler.add_noise(latents, noise, timesteps)
        target = self.model.noise_target(latents, noise, timesteps)
        with torch.no_grad(), self.reference_context():
            ref = denoising_errors(self.model.denoise(noisy, timesteps, text, unet=self.reference), target,
                                   hp.error_reduction)
        with torch.no_grad():
            policy = denoising_errors(self.model.denoise(noisy, timesteps, text), target, hp.error_reduction)
        return {"line": batch["line"], "policy_error": policy, "ref_error": ref,
                "implicit_reward": -beta_eff * (policy - ref)}

    def _log_epoch(self, stage: str) -> None:
        stats = getattr(self, f"{stage}_stats")
        values = stats.compute()  # already synchronised: a NaN (nothing counted) is NaN on every rank, dropped alike
        values = {k: v for k, v in values.items() if not torch.isnan(v)}
        self.log_dict({f"{stage}/{k}": v for k, v in values.items()}, prog_bar=stage == "val", sync_dist=True)
        stats.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    # ----------------------------------------------------------------------------------------------- samples
    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        if self.hparams.sample_every_n_steps and self.global_step == 0 and self._last_sample_step < 0:
            shape = batch["frames"].shape
            self._video_shape = (int(shape[1]), int(shape[-2]), int(shape[-1]))
            self.log_samples()  # the initial model, for comparison
        super().on_train_batch_start(batch, batch_idx)  # samples outside the training stream: they do not shift it

    def on_train_batch_end(self, outputs: Any, batch: dict, batch_idx: int) -> None:
        super().on_train_batch_end(outputs, batch, batch_idx)
        every = self.hparams.sample_every_n_steps
        if every and self.global_step % every == 0 and self.global_step != self._last_sample_step:
            self.log_samples()

    def log_samples(self) -> Tensor | None:
        """Generate one video per sample prompt with the current policy (on every rank: the UNet may be sharded)
        and, on rank 0, log them to TensorBoard as GIFs and write them as mp4 under ``<log_dir>/samples``.

        Returns:
            ``uint8 (P, F, 3, H, W)``, or ``None`` before the video size is known.
        """
        from lightning.pytorch.loggers import TensorBoardLogger

        hp = self.hparams
        if self._video_shape is None or not hp.sample_prompts:
            return None
        self._last_sample_step = self.global_step
        frames, height, width = self._video_shape
        was_training = self.model.unet.training
        self.model.eval()
        videos = self.model.sample(hp.sample_prompts, frames, height, width, num_inference_steps=hp.sample_steps,
                                   guidance_scale=hp.sample_guidance,
                                   generator=torch.Generator().manual_seed(hp.diffusion_seed)).cpu()
        self.model.train(was_training)
        if self._trainer is None:
            return videos
        log_dir = self.trainer.log_dir or self.trainer.default_root_dir  # a collective: ask on every rank
        if not self.trainer.is_global_zero:
            return videos
        step = self.global_step
        for logger in self.loggers:
            if isinstance(logger, TensorBoardLogger):
                if step == 0:
                    table = "\n".join(f"{i}: {p}" for i, p in enumerate(hp.sample_prompts))
                    logger.experiment.add_text("samples/prompts", table, step)
                for i, video in enumerate(videos):
                    log_video_gif(logger.experiment, f"samples/{i}", video, step, hp.sample_fps)
        if height % 2 or width % 2:
            rank_zero_warn(f"sample videos of odd size {height}x{width} are not written as mp4 (H.264)")
            return videos
        from lit_safe.models.frames import write_mp4

        folder = Path(log_dir) / "samples"
        for i, video in enumerate(videos):
            write_mp4(folder / f"step{step:07d}_{i}.mp4", video.permute(0, 2, 3, 1).numpy(), fps=hp.sample_fps)
        return videos

    # ------------------------------------------------------------------------------------------------ export
    def export_pretrained(self, path: str | Path) -> Path | None:
        """Write the trained policy in the diffusers ``TextToVideoSDPipeline`` layout (LoRA merged). Call on every
        rank."""
        return export_video_diffusion(self.model, path, root=self.export_root(), prefix="model.")
