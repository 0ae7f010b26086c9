"""A callback that records what the FSDP2 test checks: sharded parameters, losses, and scores on a fixed batch."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from lightning.pytorch import Callback


class ShardProbe(Callback):
    """Writes ``shards_rank{r}.json``, ``losses.json`` and ``scores.pt`` (rank 0) into ``out_dir``."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.losses: list[float] = []

    def on_train_start(self, trainer, pl_module) -> None:
        from torch.distributed.tensor import DTensor, Shard

        params = list(pl_module.model.named_parameters())
        report = {
            "world_size": trainer.world_size,
            "n_params": len(params),
            "n_dtensor": sum(isinstance(p, DTensor) for _, p in params),
            "n_shard0": sum(isinstance(p, DTensor) and p.placements == (Shard(0),) for _, p in params),
            "local_numel": sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for _, p in params),
            "full_numel": sum(p.numel() for _, p in params),
        }
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"shards_rank{trainer.global_rank}.json").write_text(json.dumps(report))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))

    def on_fit_end(self, trainer, pl_module) -> None:
        torch.manual_seed(0)
        ids = torch.randint(3, len(pl_module.tokenizer), (4, 24))
        ids[:, 0] = pl_module.tokenizer.bos_token_id
        mask = torch.ones_like(ids)
        mask[1, 18:] = 0
        mask[3, 10:] = 0
        pl_module.eval()
        with torch.no_grad():
            scores = pl_module.model(ids, mask).end_scores.detach().cpu()
        if trainer.is_global_zero:
            (self.out_dir / "losses.json").write_text(json.dumps(self.losses))
            torch.save({"input_ids": ids, "attention_mask": mask, "scores": scores}, self.out_dir / "scores.pt")
