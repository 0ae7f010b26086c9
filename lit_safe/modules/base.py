"""What every lit_safe trainer of a transformer shares: a check that the data is tokenised with the model's tokenizer,
FSDP2 sharding in ``configure_model``, AdamW with the reference schedule, gradient clipping that works under
every strategy, a guard against non-finite steps and weights, and a private random stream for training that
checkpoints save, so that a killed run resumes exactly.

Subclasses build ``self.model`` in ``configure_model`` and call :meth:`BackboneModule.shard` on it; their
``hparams`` carry ``lr``, ``weight_decay``, ``betas``, ``warmup_ratio``, ``lr_schedule``, ``max_grad_norm`` and
``max_nonfinite_steps``.

Non-finite steps: an optimiser step whose loss or gradient norm is not finite (on any rank) is skipped (its
gradients are dropped, so AdamW moves neither the weights nor its moments) and counted (``train/nonfinite_steps``);
``max_nonfinite_steps`` of them in a row stop training with a :class:`NonFiniteError` that names the step. A
checkpoint is never written with a non-finite parameter or buffer (the same error, before anything is written).
Under a ``GradScaler`` (``16-mixed``) overflowing gradients are the scaler's business (it skips those steps and lowers
its scale), so only a non-finite loss counts there.

Random stream: everything between ``on_train_batch_start`` and ``on_train_batch_end`` (training step, dropout,
PPO sampling, diffusion noise, backward, optimiser step) draws from a torch (CPU and current CUDA device) random
state of its own, saved per rank in checkpoints under ``training_rng`` and restored on resume. Lightning does not
checkpoint the global random state, and other consumers of it (data loader iterators, validation, sanity checks)
run at different points in a resumed run, so only a stream of its own makes a resumed run draw what an
uninterrupted one draws.
"""

from __future__ import annotations

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.strategies import ModelParallelStrategy
from lightning.pytorch.utilities import rank_zero_warn

from lit_safe.models.sharding import apply_fsdp2, clip_grad_norm
from lit_safe.models.tokenizer import tokenizer_fingerprint
from lit_safe.optim import adamw_with_schedule, total_optimizer_steps


class NonFiniteError(RuntimeError):
    """Training met values that are not finite and cannot go on (a loss, a gradient, a weight or a sampling
    distribution)."""


def check_hparams(owner: str, *, non_negative: dict[str, float | None] | None = None,
                  positive: dict[str, float | None] | None = None) -> None:
    """Raise a ValueError naming the first argument out of range (``None`` passes): call at the top of a module's
    ``__init__``, before anything is built."""
    for name, value in (non_negative or {}).items():
        if value is not None and not value >= 0:  # `not >=` also refuses NaN
            raise ValueError(f"{owner}: {name} must be >= 0, got {value}")
    for name, value in (positive or {}).items():
        if value is not None and not value > 0:
            raise ValueError(f"{owner}: {name} must be > 0, got {value}")


def check_max_nonfinite_steps(owner: str, value: int) -> None:
    if int(value) != value or value < 1:
        raise ValueError(f"{owner}: max_nonfinite_steps must be an integer >= 1, got {value}")


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor (FSDP2), else the tensor."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def nonfinite_tensors(module: torch.nn.Module) -> list[str]:
    """Names of the floating-point parameters and buffers of ``module`` with a non-finite value in this rank's
    shard (a local check: reduce the answer across ranks)."""
    named = [*module.named_parameters(), *module.named_buffers()]
    return [name for name, t in named
            if t is not None and t.is_floating_point() and t.numel() and not bool(torch.isfinite(_local(t)).all())]


class BackboneModule(LightningModule):
    """A LightningModule whose ``self.model`` holds one or more Hugging Face transformers."""

    model: torch.nn.Module | None
    tokenizer: object
    default_max_nonfinite_steps = 3

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.nonfinite_steps = 0  # skipped steps of the whole run (saved in checkpoints)
        self.nonfinite_in_a_row = 0
        self._loss_finite: torch.Tensor | None = None  # of the micro-batches since the last optimiser step
        self._last_loss: torch.Tensor | None = None
        self._training_rng: dict[str, torch.Tensor] | None = None  # the private stream, between batches
        self._outer_rng: dict[str, torch.Tensor] | None = None  # the global stream, while a batch runs

    def setup(self, stage: str) -> None:
        """Check that the data module tokenises with this model's tokenizer (different ids would train on garbage)."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        theirs = getattr(datamodule, "tokenizer", None)
        if theirs is not None and tokenizer_fingerprint(theirs) != tokenizer_fingerprint(self.tokenizer):
            raise ValueError(
                f"the data module's tokenizer ({theirs.name_or_path}) is not the model's "
                f"({self.tokenizer.name_or_path}): set data.tokenizer to the model's backbone"
            )

    def require_view(self, *views: str) -> None:
        """Refuse a data module whose view orders or labels items differently from what this module assumes (a pair
        view fed to the wrong module would train it backwards without an error). Data modules without views pass."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        view = getattr(getattr(datamodule, "hparams", None), "view", None)
        if view is not None and view not in views:
            raise ValueError(f"{type(self).__name__} trains on the data module's {' or '.join(map(repr, views))} view, "
                             f"got view {view!r}")

    def shard(self, model: torch.nn.Module) -> None:
        """Shard ``model`` with FSDP2 (per transformer block, then the root) when the trainer runs Lightning's
        ``ModelParallelStrategy`` (``configs/trainer/fsdp2.yaml``); bf16 compute when the precision is bf16."""
        if self._trainer is not None and isinstance(self.trainer.strategy, ModelParallelStrategy):
            bf16 = "bf16" in str(self.trainer.precision)
            apply_fsdp2(model, self.trainer.strategy.device_mesh["data_parallel"],
                        param_dtype=torch.bfloat16 if bf16 else None)

    def export_root(self) -> torch.nn.Module:
        """The module the strategy wraps (``trainer.model``: under FSDP1 a full state dict is taken from it), or this
        module outside a trainer: the ``root`` of the export helpers, with the network's attribute name as prefix."""
        return self.trainer.model if self._trainer is not None else self

    def configure_optimizers(self):
        """AdamW over decay groups and a per-step warm-up schedule from the module's ``lr``, ``weight_decay``,
        ``betas``, ``warmup_ratio`` and ``lr_schedule`` hyperparameters, as long as :meth:`optimizer_steps`."""
        hp = self.hparams
        optimizer, scheduler = adamw_with_schedule(
            self.model.named_parameters(), lr=hp.lr, weight_decay=hp.weight_decay, betas=tuple(hp.betas),
            total_steps=max(1, self.optimizer_steps()), warmup_ratio=hp.warmup_ratio, schedule=hp.lr_schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def optimizer_steps(self) -> int:
        """Optimiser steps (training batches over gradient accumulation) this run will take, for the length of a
        learning-rate schedule (call from ``configure_optimizers``).

        Counted from the DataModule's ``train_batches()`` (or the length of its training loader) rather than with
        ``trainer.estimated_stepping_batches``, which sets up the fit loop's loader before a checkpoint is restored
        and so makes Lightning 2.6 skip restoring the loader's position on resume. Falls back to
        ``estimated_stepping_batches`` without a DataModule.
        """
        trainer = self.trainer
        datamodule = trainer.datamodule
        if datamodule is None:
            return int(trainer.estimated_stepping_batches)
        count = getattr(datamodule, "train_batches", None)
        batches = count() if callable(count) else len(datamodule.train_dataloader())
        limit = trainer.limit_train_batches
        batches = min(batches, int(limit) if isinstance(limit, int) else int(batches * limit))
        return total_optimizer_steps(trainer.max_steps, trainer.max_epochs, batches, trainer.accumulate_grad_batches)

    # ------------------------------------------------------------------------------------- non-finite guard
    @property
    def max_nonfinite_steps(self) -> int:
        return int(self.hparams.get("max_nonfinite_steps", self.default_max_nonfinite_steps))

    def on_before_backward(self, loss: torch.Tensor) -> None:
        if self.automatic_optimization:  # every micro-batch of an accumulated step counts
            finite = torch.isfinite(loss.detach()).all()
            self._loss_finite = finite if self._loss_finite is None else self._loss_finite & finite
            self._last_loss = loss.detach()

    def on_before_optimizer_step(self, optimizer) -> None:
        norm = clip_grad_norm(self.trainer.model, self.model.parameters(), self.hparams.max_grad_norm)
        self.log("train/grad_norm", norm)
        loss_finite = self._loss_finite if self._loss_finite is not None else torch.tensor(True)
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        finite = bool(loss_finite) and (scaler is not None or bool(torch.isfinite(norm)))
        loss, self._loss_finite, self._last_loss = self._last_loss, None, None
        finite = self.all_ranks_agree(finite)
        if not finite:
            optimizer.zero_grad(set_to_none=True)  # AdamW skips parameters without a gradient: no update at all
        self.count_step(finite, f"loss {_value(loss)}, gradient norm {_value(norm)}")

    def all_ranks_agree(self, decision: bool) -> bool:
        """Whether ``decision`` holds on every rank (a collective: call it on all of them)."""
        if self._trainer is None:
            return decision
        return bool(self.trainer.strategy.reduce_boolean_decision(bool(decision), all=True))

    def count_step(self, finite: bool, detail: str) -> None:
        """Count one optimiser (or PPO) step as finite or skipped, log ``train/nonfinite_steps``, and stop after
        ``max_nonfinite_steps`` skipped steps in a row. ``finite`` must already agree across ranks
        (:meth:`all_ranks_agree`)."""
        step, limit = self.global_step, self.max_nonfinite_steps
        if finite:
            self.nonfinite_in_a_row = 0
        else:
            self.nonfinite_steps += 1
            self.nonfinite_in_a_row += 1
            if self.nonfinite_in_a_row == 1:
                self._nonfinite_since = step
        self.log("train/nonfinite_steps", float(self.nonfinite_steps))
        if finite:
            return
        if self.nonfinite_in_a_row >= limit:
            since = getattr(self, "_nonfinite_since", step)
            raise NonFiniteError(
                f"{type(self).__name__}: not finite at step {step} ({detail}); {self.nonfinite_in_a_row} steps in a "
                f"row since step {since} were skipped (max_nonfinite_steps={limit}): training stopped. Lower the "
                f"learning rate ({self._lr_text()}) or check the data."
            )
        rank_zero_warn(f"{type(self).__name__}: step {step} skipped, not finite ({detail}); "
                       f"{self.nonfinite_in_a_row} in a row of at most {limit}")

    def _lr_text(self) -> str:
        names = [k for k in self.hparams if k == "lr" or k.endswith("_lr")]
        return ", ".join(f"{k}={self.hparams[k]}" for k in names) or "lr"

    def check_finite_weights(self, when: str) -> None:
        """Raise :class:`NonFiniteError` when a parameter or buffer is not finite on any rank (a collective)."""
        bad = nonfinite_tensors(self)
        if not self.all_ranks_agree(not bad):
            where = f": {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}" if bad else " (on another rank)"
            raise NonFiniteError(f"{type(self).__name__}: non-finite weights at step {self.global_step}, "
                                 f"{when} refused{where}")

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clipping happens in :meth:`on_before_optimizer_step` (``max_grad_norm``), for every strategy: Lightning
        refuses norm clipping under FSDP1, so leave ``trainer.gradient_clip_val`` unset."""

    # ------------------------------------------------------------------------------------------ random stream
    def _cuda_device(self) -> torch.device | None:
        return self.device if self.device.type == "cuda" else None

    def _get_rng(self) -> dict[str, torch.Tensor]:
        state = {"torch": torch.get_rng_state()}
        if (device := self._cuda_device()) is not None:
            state["cuda"] = torch.cuda.get_rng_state(device)
        return state

    def _set_rng(self, state: dict[str, torch.Tensor]) -> None:
        torch.set_rng_state(state["torch"])
        if (device := self._cuda_device()) is not None and "cuda" in state:
            torch.cuda.set_rng_state(state["cuda"], device)

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        """Switch to the training stream (it starts where the global stream is at the first batch of a run)."""
        if self._outer_rng is not None:
            return
        self._outer_rng = self._get_rng()
        if self._training_rng is not None:
            self._set_rng(self._training_rng)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        """Keep the training stream and give the global one back."""
        if self._outer_rng is None:
            return
        self._training_rng = self._get_rng()
        self._set_rng(self._outer_rng)
        self._outer_rng = None

    # ------------------------------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Refuse non-finite weights; save the skipped-step counts and every rank's training stream."""
        self.check_finite_weights("checkpoint")
        checkpoint["nonfinite_state"] = {"total": self.nonfinite_steps, "in_a_row": self.nonfinite_in_a_row}
        # Inside a batch (a callback saving in on_train_batch_end) the stream is the current global state.
        state = self._get_rng() if self._outer_rng is not None else self._training_rng
        if state is None:
            return
        world = self.trainer.world_size if self._trainer is not None else 1
        if world > 1:  # every rank's stream, gathered so that every rank saves the same (deduplicated) entry
            gathered = {k: self.all_gather(v.to(self.device)).cpu() for k, v in state.items()}
            checkpoint["training_rng"] = [{k: v[r].clone() for k, v in gathered.items()} for r in range(world)]
        else:
            checkpoint["training_rng"] = [{k: v.clone() for k, v in state.items()}]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        counts = checkpoint.get("nonfinite_state", {})
        self.nonfinite_steps = int(counts.get("total", 0))
        self.nonfinite_in_a_row = int(counts.get("in_a_row", 0))
        states = checkpoint.get("training_rng")
        if not states:
            return
        world = self.trainer.world_size if self._trainer is not None else 1
        if len(states) != world:
            rank_zero_warn(f"the checkpoint's training random streams are of {len(states)} ranks, this run has "
                           f"{world}: they are not restored (the run will not repeat the original's draws)")
            return
        rank = self.global_rank if self._trainer is not None else 0
        self._training_rng = {k: torch.as_tensor(v).cpu().to(torch.uint8) for k, v in states[rank].items()}


def _value(tensor: torch.Tensor | None) -> str:
    return "n/a" if tensor is None else f"{float(tensor.float().mean()):.4g}"
