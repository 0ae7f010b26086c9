"""TokenThroughput: tokens per second, padding share and time spent waiting for data, logged to TensorBoard.

Counts the real (attended) and padded tokens of every training batch that carries an ``attention_mask``, and
measures the wall time between the end of one training step and the start of the next (the loader's share, plus
the loop's own bookkeeping; validation runs in between are not counted).
Logs ``perf/real_tokens_per_s``, ``perf/padded_tokens_per_s``, ``perf/padding_share``, ``perf/data_wait_share``
every ``log_every_n_steps`` steps (aggregated over that window).
"""

from __future__ import annotations

import time
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer


class TokenThroughput(Callback):
    """Log throughput, padding and data-wait figures of training.

    Args:
        log_every_n_steps: length of the aggregation window, in training batches.
    """

    def __init__(self, log_every_n_steps: int = 10) -> None:
        self.log_every_n_steps = max(1, log_every_n_steps)
        self._reset()
        self._last_end: float | None = None
        self._start: float | None = None

    def _reset(self) -> None:
        self.window = {"real_tokens": 0, "padded_tokens": 0, "wait_s": 0.0, "step_s": 0.0, "batches": 0}

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._last_end = time.perf_counter()

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._last_end = None  # the time until the next training batch is validation, not data loading

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        now = time.perf_counter()
        if self._last_end is not None:
            self.window["wait_s"] += now - self._last_end
        self._start = now

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        now = time.perf_counter()
        self.window["step_s"] += now - (self._start or now)
        self._last_end = now
        mask = batch.get("attention_mask") if isinstance(batch, dict) else None
        if mask is not None:
            self.window["real_tokens"] += int(mask.sum())
            self.window["padded_tokens"] += int(mask.numel())
        self.window["batches"] += 1
        if self.window["batches"] >= self.log_every_n_steps:
            self._flush(pl_module)

    def _flush(self, pl_module: LightningModule) -> None:
        w = self.window
        total_s = w["wait_s"] + w["step_s"]
        if total_s > 0 and w["padded_tokens"] > 0:
            pl_module.log_dict(
                {
                    "perf/real_tokens_per_s": w["real_tokens"] / total_s,
                    "perf/padded_tokens_per_s": w["padded_tokens"] / total_s,
                    "perf/padding_share": 1 - w["real_tokens"] / w["padded_tokens"],
                    "perf/data_wait_share": w["wait_s"] / total_s,
                },
                on_step=True,
                on_epoch=False,
            )
        self._reset()
