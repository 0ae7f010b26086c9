"""Samples for TensorBoard: a table of PPO rollouts (:class:`PPOSamples`) and videos of a text-to-video policy
(:class:`VideoSamples`), written through the loggers' public API.

The callbacks decide when to log and what to write; the modules only produce what is shown: PPO's ``training_step``
returns its rollout (``outputs["rollout"]`` in ``on_train_batch_end``), and the diffusion module generates videos
with ``sample_videos``. Neither moves a random stream, so a run trains the same numbers with or without them.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from lit_safe.models.frames import write_mp4


def tensorboard_writers(trainer: Trainer) -> list[Any]:
    """The ``SummaryWriter`` of each TensorBoard logger of the trainer."""
    return [logger.experiment for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]


def rollout_rows(rollout: Any, tokenizer: Any, count: int) -> list[tuple[str, str, float, float | None]]:
    """``(prompt, response, reward, cost)`` of the first ``count`` sequences of a PPO rollout, decoded.

    Args:
        rollout: anything with ``sequences``, ``attention_mask`` ``(B, L)`` (``prompt_length`` left-padded prompt
            tokens, then the responses), ``prompt_length``, ``reward`` ``(B,)`` and ``cost`` ``(B,)`` or ``None``.
        tokenizer: the policy's tokenizer.
        count: rows at most.
    """
    rows = []
    for i in range(min(count, rollout.sequences.size(0))):
        kept = rollout.sequences[i][rollout.attention_mask[i].bool()]
        start = int(rollout.attention_mask[i, :rollout.prompt_length].sum())  # the prompt's tokens, without padding
        cost = None if rollout.cost is None else float(rollout.cost[i])
        rows.append((tokenizer.decode(kept[:start], skip_special_tokens=True),
                     tokenizer.decode(kept[start:], skip_special_tokens=True), float(rollout.reward[i]), cost))
    return rows


def markdown_table(rows: list[tuple[str, str, float, float | None]]) -> str:
    """A markdown table ``| prompt | response | reward | cost |`` (scores to 2 decimals; no cost: an empty cell)."""
    lines = ["| prompt | response | reward | cost |", "|---|---|---:|---:|"]
    for prompt, response, reward, cost in rows:
        cells = [text.replace("|", "\\|").replace("\n", " ") for text in (prompt, response)]
        lines.append(f"| {cells[0]} | {cells[1]} | {reward:.2f} | {'' if cost is None else f'{cost:.2f}'} |")
    return "\n".join(lines)


class PPOSamples(Callback):
    """Log a table of generated samples (prompt, response, reward, cost) of the PPO rollouts as TensorBoard text
    (``train/samples``), on rank 0, after the first rollout and every ``every_n_rollouts`` after it (counted by the
    module's ``rollouts_done``, which checkpoints keep), at the step of the rollout's last actor update.

    Args:
        every_n_rollouts: rollouts between two tables.
        rows: samples per table.
    """

    def __init__(self, every_n_rollouts: int = 10, rows: int = 4) -> None:
        if every_n_rollouts < 1 or rows < 1:
            raise ValueError(f"PPOSamples: every_n_rollouts and rows must be >= 1, got {every_n_rollouts}, {rows}")
        self.every_n_rollouts = every_n_rollouts
        self.rows = rows

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        rollout = outputs.get("rollout") if isinstance(outputs, dict) else None
        if rollout is None:
            raise TypeError(f"PPOSamples needs a training_step that returns {{'rollout': ...}}; "
                            f"{type(pl_module).__name__} does not: remove the callback")
        if (pl_module.rollouts_done - 1) % self.every_n_rollouts or not trainer.is_global_zero:
            return
        table = markdown_table(rollout_rows(rollout, pl_module.tokenizer, self.rows))
        for writer in tensorboard_writers(trainer):
            writer.add_text("train/samples", table, trainer.global_step)


def encode_gif(frames: Tensor, fps: int = 8) -> bytes:
    """An animated GIF (looping) of ``uint8 (F, 3, H, W)`` frames."""
    from PIL import Image

    images = [Image.fromarray(frame.permute(1, 2, 0).cpu().numpy()) for frame in frames]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=max(1, 1000 // fps),
                   loop=0)
    return buffer.getvalue()


class VideoSamples(Callback):
    """Generate one video per prompt with the current policy once before training and every ``every_n_steps``
    optimiser steps, and write them: to TensorBoard as a filmstrip image (``samples/<i>``, the frames side by side)
    and under ``<log_dir>/samples`` as ``step<N>_<i>.gif`` and ``step<N>_<i>.mp4`` (H.264 needs even sizes: odd ones
    get the GIF only). The videos have the size of the batch's ``frames``. The module's ``sample_videos`` runs on
    every rank (the UNet may be sharded); rank 0 writes.

    Args:
        prompts: the prompts of the sample videos.
        every_n_steps: optimiser steps between two sets of samples.
        steps: DDIM steps of the samples.
        guidance: classifier-free guidance scale.
        fps: frame rate of the GIF and mp4 files.
        seed: seed of the initial noise (the same videos at every step, so they compare).
    """

    def __init__(self, prompts: list[str], every_n_steps: int = 250, steps: int = 25, guidance: float = 7.5,
                 fps: int = 8, seed: int = 0) -> None:
        if not prompts:
            raise ValueError("VideoSamples needs at least one prompt")
        if every_n_steps < 1:
            raise ValueError(f"VideoSamples: every_n_steps must be >= 1, got {every_n_steps}")
        self.prompts, self.every_n_steps, self.steps = list(prompts), every_n_steps, steps
        self.guidance, self.fps, self.seed = guidance, fps, seed
        self.last_step = -1

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: dict, batch_idx: int) -> None:
        if trainer.global_step == 0 and self.last_step < 0:
            self.log_samples(trainer, pl_module, batch["frames"])  # the initial model, for comparison

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: dict,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if step % self.every_n_steps == 0 and step != self.last_step:  # once per step under gradient accumulation
            self.log_samples(trainer, pl_module, batch["frames"])

    def log_samples(self, trainer: Trainer, pl_module: LightningModule, frames: Tensor) -> Tensor:
        """Generate the videos at the size of ``frames`` ``(..., F, 3, H, W)`` and write them (rank 0).

        Returns:
            ``uint8 (P, F, 3, H, W)``.
        """
        if not hasattr(pl_module, "sample_videos"):
            raise TypeError(f"{type(pl_module).__name__} has no sample_videos(...); remove VideoSamples")
        step = self.last_step = trainer.global_step
        num_frames, height, width = int(frames.shape[-4]), int(frames.shape[-2]), int(frames.shape[-1])
        videos = pl_module.sample_videos(self.prompts, num_frames, height, width, steps=self.steps,
                                         guidance=self.guidance, seed=self.seed)
        log_dir = trainer.log_dir or trainer.default_root_dir  # a collective: ask on every rank
        if not trainer.is_global_zero:
            return videos
        for writer in tensorboard_writers(trainer):
            if step == 0:
                writer.add_text("samples/prompts", "\n".join(f"{i}: {p}" for i, p in enumerate(self.prompts)), step)
            for i, video in enumerate(videos):
                writer.add_image(f"samples/{i}", torch.cat(list(video), dim=-1), step)  # (3, H, F x W)
        folder = Path(log_dir) / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        for i, video in enumerate(videos):
            (folder / f"step{step:07d}_{i}.gif").write_bytes(encode_gif(video, self.fps))
        if height % 2 or width % 2:
            rank_zero_warn(f"sample videos of odd size {height}x{width} are not written as mp4 (H.264)")
            return videos
        for i, video in enumerate(videos):
            write_mp4(folder / f"step{step:07d}_{i}.mp4", video.permute(0, 2, 3, 1).numpy(), fps=self.fps)
        return videos
