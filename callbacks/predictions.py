"""JsonlPredictionWriter: write what ``predict_step`` returns as JSON lines, one line per example.

``predict_step`` returns a dict of tensors (or lists) that share their first dimension, e.g. the reward model's
``{"row", "chosen_score", "rejected_score"}``; each example becomes one JSON object. With several processes each
rank writes its own file (``out.rank1.jsonl``), since ranks see different examples.

    lit-safe predict --config configs/quickstart/reward.yaml --ckpt_path .../last.ckpt \
        --trainer.callbacks+=lit_safe.callbacks.predictions.JsonlPredictionWriter \
        --trainer.callbacks.output_path runs/quickstart/predictions.jsonl
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter


def _rows(prediction: dict[str, Any]) -> list[dict[str, Any]]:
    columns = {k: v.tolist() if isinstance(v, torch.Tensor) else list(v) for k, v in prediction.items()}
    lengths = {len(v) for v in columns.values()}
    if len(lengths) != 1:
        sizes = {k: len(v) for k, v in columns.items()}
        raise ValueError(f"predict_step returned columns of different lengths: {sizes}")
    return [dict(zip(columns, values)) for values in zip(*columns.values())]


class JsonlPredictionWriter(BasePredictionWriter):
    """Write predictions to a JSONL file as they are made.

    Args:
        output_path: the file to write (its folder is created); rank ``r > 0`` writes ``<stem>.rank<r>.jsonl``.
    """

    def __init__(self, output_path: str) -> None:
        super().__init__(write_interval="batch")
        self.output_path = Path(output_path)
        self._file = None

    def _path(self, trainer: Trainer) -> Path:
        if trainer.global_rank == 0:
            return self.output_path
        return self.output_path.with_name(f"{self.output_path.stem}.rank{trainer.global_rank}.jsonl")

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        path = self._path(trainer)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("w", encoding="utf-8")

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        if not isinstance(prediction, dict):
            kind = type(prediction).__name__
            raise TypeError(f"JsonlPredictionWriter needs predict_step to return a dict, got {kind}")
        for row in _rows(prediction):
            self._file.write(json.dumps(row) + "\n")

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
