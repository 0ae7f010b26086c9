"""SFTModule: supervised fine-tuning of a causal LM on (prompt, response) pairs, the initial policy of Safe RLHF.

Causal-LM cross entropy on the response tokens only (prompt and padding are masked to -100; ALGORITHMS.md section
6, :func:`lit_safe.losses.sft_loss`), on the data module's ``sft`` view. The same loss is the PTX term of
PPO-Lagrangian. Defaults follow the reference SFT script (lr 2e-5, no weight decay, cosine with 3% warm-up,
gradient clip 1.0). Metrics per stage: ``loss`` (token mean), ``perplexity`` and ``token_accuracy``; the model
exports as a plain Hugging Face causal LM (``AutoModelForCausalLM.from_pretrained`` reads it) with its tokenizer.
"""

from __future__ import annotations

from typing import Any

import torch

from lit_safe.losses import sft_loss
from lit_safe.metrics import TokenStats
from lit_safe.models.backbone import load_backbone
from lit_safe.models.sharding import export_causal_lm
from lit_safe.modules.base import StageStatsModule
from lit_safe.optim import OptimizerSettings

#: the reference SFT script's AdamW settings (see the module docstring)
DEFAULT_OPTIMIZER = OptimizerSettings()


class SFTModule(StageStatsModule):
    """Fine-tune a causal LM on responses. Its ``backbone`` is a causal LM.

    Args:
        optimizer: AdamW, its learning-rate schedule and gradient clipping (defaults: the reference script's).
        **kwargs: the arguments every trainer takes, as :class:`~lit_safe.modules.base.BackboneModule`.
    """

    views = ("sft", "rewrites")  # PKU-SafeRLHF's (prompt, response) pairs, SafeSora's (prompt, winning rewrite) pairs
    step_metrics = ("loss",)

    def __init__(self, *, optimizer: OptimizerSettings = DEFAULT_OPTIMIZER, **kwargs: Any) -> None:
        super().__init__(optimizer=optimizer, **kwargs)
        self.train_stats, self.val_stats, self.test_stats = TokenStats(), TokenStats(), TokenStats()

    def configure_model(self) -> None:
        if self.model is not None:
            return
        hp = self.hparams
        self.model = load_backbone(hp.backbone, self.tokenizer, causal_lm=True, dtype=hp.dtype, revision=hp.revision)
        if hp.gradient_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.shard(self.model)

    def model_step(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if "labels" not in batch:
            raise ValueError("SFTModule needs the data module's 'sft' view (batches with labels)")
        logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                            use_cache=False).logits
        return sft_loss(logits, batch["labels"])

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, count, correct = self.model_step(batch)
        self.train_stats.update(loss, count, correct)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/token_accuracy", correct / count.clamp_min(1))
        return loss

    def evaluation_step(self, batch: dict, batch_idx: int, stats: TokenStats) -> None:
        stats.update(*self.model_step(batch))

    def export_pretrained(self, path) -> Any:
        """Write the trained policy as a Hugging Face causal LM (config, safetensors, tokenizer). Call on every
        rank."""
        return export_causal_lm(self.model, self.tokenizer, path, root=self.export_root(), prefix="model.")
