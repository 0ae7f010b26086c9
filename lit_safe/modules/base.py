"""What every lit_safe trainer of a transformer shares: checked hyperparameters, a check that the data is tokenised
with the model's tokenizer and is the view the trainer reads, FSDP2 sharding in ``configure_model``, AdamW with the
reference schedule, gradient clipping that works under every strategy, per-stage statistics logged at each epoch's
end, a guard against non-finite steps and weights, and a private random stream for training that checkpoints save,
so that a killed run resumes exactly.

Arguments: the ones every trainer takes (``backbone``, ``revision``, ``tokenizer``, ``dtype``, ``optimizer``,
``gradient_checkpointing``, ``max_nonfinite_steps``) are :class:`BackboneModule`'s, documented there once; a trainer's
``__init__`` lists only its own (and its own ``optimizer`` default, a :class:`lit_safe.optim.OptimizerSettings`: AdamW,
its schedule and ``max_grad_norm``), refuses the out-of-range ones (:func:`check_hparams`) and passes the rest on as
``**kwargs``, as the DataModules do: LightningCLI shows the shared arguments, with their defaults and descriptions,
under every trainer. The base saves every argument along the class hierarchy as hyperparameters and loads the
tokenizer. Subclasses build ``self.model`` in ``configure_model`` and call :meth:`BackboneModule.shard` on it.

Statistics: a trainer keeps one stats object per stage it measures (``train_stats``, ``val_stats``, ``test_stats``;
the :class:`lit_safe.metrics.StageStats` protocol) and, as a :class:`StageStatsModule`, an ``evaluation_step`` (one
batch into the given stats) for validation and test. At the end of each epoch of a stage the base module logs every 0-d
value of ``stats.compute()`` as ``<stage>/<name>`` (synchronised across ranks already by torchmetrics; ``sync_dist``
only keeps Lightning consistent), leaving out in training the metrics the trainer logs per step
(``step_metrics``), keeps the values in ``epoch_metrics[stage]`` for callbacks, and resets the stats.
Trainers of a kind share more: :class:`ScoreTrainer` (the reward and cost models), :class:`ModerationTrainer`
(the text and video moderation classifiers) and :class:`VideoTextTrainer` (the video-model arguments of the video
trainers).

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

from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.strategies import ModelParallelStrategy
from lightning.pytorch.utilities import rank_zero_warn

from lit_safe.metrics import ModerationStats, ScoreStats, StageStats, category_pos_weight, category_threshold_tensor
from lit_safe.models.moderation_model import validate_decision
from lit_safe.models.score_model import ScoreModel, build_score_model, export_score_model, score_pairs
from lit_safe.models.sharding import apply_fsdp2, clip_grad_norm, nonfinite_tensors
from lit_safe.models.tokenizer import load_tokenizer, tokenizer_fingerprint
from lit_safe.optim import OptimizerSettings, adamw_with_schedule, total_optimizer_steps


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


class BackboneModule(LightningModule):
    """A LightningModule whose ``self.model`` holds one or more Hugging Face transformers: the arguments every trainer
    takes (see the module docstring), saved with the trainer's own as hyperparameters, and its tokenizer.

    Args:
        backbone: the network to train: a preset (``tiny``, ``small``), a hub id or a local directory (each trainer
            says which kind it reads), or a saved model of the same trainer to continue from.
        revision: hub revision of the backbone.
        tokenizer: the tokenizer to use (a preset, hub id or directory); default the backbone's own. Exports save the
            tokenizer used, with its chat template.
        dtype: parameter dtype (``float32``; use ``bfloat16`` only with ``precision: bf16-true``).
        optimizer: AdamW, its learning-rate schedule and gradient clipping (each trainer has its reference
            defaults, its ``DEFAULT_OPTIMIZER``); ``None`` in a trainer with optimisers of its own (PPO-Lagrangian).
        gradient_checkpointing: recompute activations in backward (for big models).
        max_nonfinite_steps: optimiser steps in a row whose loss or gradient norm is not finite (each is skipped)
            before training stops with an error.
    """

    model: torch.nn.Module | None
    tokenizer: object
    default_max_nonfinite_steps = 3
    #: AdamW, its schedule and gradient clipping: the ``optimizer`` argument (``None`` in a trainer with optimisers of
    #: its own, PPO-Lagrangian)
    optimizer_settings: OptimizerSettings | None = None
    #: the data module views (its ``hparams.view``) this trainer reads; another one is refused in ``setup`` (a pair
    #: view fed to the wrong trainer would train it backwards without an error). Data modules without views pass.
    views: tuple[str, ...] = ()
    #: arguments of this class that a trainer sets itself in its ``super().__init__`` call: neither its arguments
    #: (LightningCLI leaves out what the call sets) nor its hyperparameters
    fixed_arguments: tuple[str, ...] = ()

    def __init__(
        self,
        *,
        backbone: str = "tiny",
        revision: str | None = None,
        tokenizer: str | None = None,
        dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        optimizer: OptimizerSettings | None = None,
        gradient_checkpointing: bool = False,
        max_nonfinite_steps: int = 3,
    ) -> None:
        check_max_nonfinite_steps(type(self).__name__, max_nonfinite_steps)
        super().__init__()
        # The arguments of every __init__ of the class hierarchy, this one's included (Lightning collects them from
        # their frames; under LightningCLI they are the config's plain values, a dict for ``optimizer``, which is also
        # what loads a LightningCLI checkpoint back through jsonargparse).
        # An unset ``tokenizer`` is no hyperparameter: the data module's ``tokenizer`` (always set) would clash with it
        # when a logger merges the two (Lightning refuses one name with two values).
        self.save_hyperparameters(ignore=[*self.fixed_arguments, *(["tokenizer"] if tokenizer is None else [])])
        self.optimizer_settings = optimizer  # the settings object itself
        # the backbone's revision pins the backbone's own tokenizer, not another one
        self.tokenizer = self.make_tokenizer(backbone, revision) if tokenizer is None else self.make_tokenizer(
            tokenizer, None)
        self.model = None  # the trained network (and what it holds), built in configure_model
        self.nonfinite_steps = 0  # skipped steps of the whole run (saved in checkpoints)
        self.nonfinite_in_a_row = 0
        self._loss_finite: torch.Tensor | None = None  # of the micro-batches since the last optimiser step
        self._last_loss: torch.Tensor | None = None
        self._training_rng: dict[str, torch.Tensor] | None = None  # the private stream, between batches
        self._outer_rng: dict[str, torch.Tensor] | None = None  # the global stream, while a batch runs

    def make_tokenizer(self, name: str, revision: str | None):
        """The tokenizer ``name`` (the ``tokenizer`` argument, else the backbone), with right padding, for training on
        whole sequences."""
        return load_tokenizer(name, revision=revision)

    @property
    def datamodule(self):
        """The trainer's data module (``None`` outside a trainer or without one)."""
        return getattr(self._trainer, "datamodule", None) if self._trainer is not None else None

    def setup(self, stage: str) -> None:
        """Check that the data module tokenises with this model's tokenizer (different ids would train on garbage)
        and that its view is one of :attr:`views`."""
        datamodule = self.datamodule
        theirs = getattr(datamodule, "tokenizer", None)
        if theirs is not None and tokenizer_fingerprint(theirs) != tokenizer_fingerprint(self.tokenizer):
            raise ValueError(
                f"the data module's tokenizer ({theirs.name_or_path}) is not the model's "
                f"({self.tokenizer.name_or_path}): set data.tokenizer to the model's backbone"
            )
        view = getattr(getattr(datamodule, "hparams", None), "view", None)
        if self.views and view is not None and view not in self.views:
            raise ValueError(f"{type(self).__name__} trains on the data module's "
                             f"{' or '.join(map(repr, self.views))} view, got view {view!r}")

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
        """AdamW over decay groups and a per-step warm-up schedule from the module's ``optimizer`` settings, as long
        as :meth:`optimizer_steps`."""
        settings = self.optimizer_settings
        optimizer, scheduler = adamw_with_schedule(
            self.model.named_parameters(), lr=settings.lr, weight_decay=settings.weight_decay,
            betas=tuple(settings.betas), total_steps=max(1, self.optimizer_steps()),
            warmup_ratio=settings.warmup_ratio, schedule=settings.lr_schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def optimizer_steps(self, steps_per_batch: int = 1) -> int:
        """Optimiser steps (training batches over gradient accumulation, times ``steps_per_batch`` for a trainer
        that steps several times per batch) this run will take, for the length of a learning-rate schedule (call
        from ``configure_optimizers``).

        Counted from the DataModule's ``train_batches()`` (or the length of its training loader) rather than with
        ``trainer.estimated_stepping_batches``, which sets up the fit loop's loader before a checkpoint is restored
        and so makes Lightning 2.6 skip restoring the loader's position on resume. Falls back to
        ``estimated_stepping_batches`` without a DataModule.
        """
        trainer = self.trainer
        datamodule = trainer.datamodule
        if datamodule is None:  # Lightning's estimate: the run's steps of one per batch, as one "epoch"
            return total_optimizer_steps(trainer.max_steps, 1, int(trainer.estimated_stepping_batches),
                                         steps_per_batch=steps_per_batch)
        count = getattr(datamodule, "train_batches", None)
        batches = count() if callable(count) else len(datamodule.train_dataloader())
        limit = trainer.limit_train_batches
        batches = min(batches, int(limit) if isinstance(limit, int) else int(batches * limit))
        return total_optimizer_steps(trainer.max_steps, trainer.max_epochs, batches, trainer.accumulate_grad_batches,
                                     steps_per_batch)

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
        norm = clip_grad_norm(self.trainer.model, self.model.parameters(), self.optimizer_settings.max_grad_norm)
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
        """The learning rates of the error messages: ``lr=`` of the ``optimizer`` settings, or the ``*_lr``
        hyperparameters of a trainer with optimisers of its own (PPO-Lagrangian)."""
        if self.optimizer_settings is not None:
            return f"lr={self.optimizer_settings.lr}"
        return ", ".join(f"{k}={v}" for k, v in self.hparams.items() if k.endswith("_lr")) or "lr"

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


class StageStatsModule(BackboneModule):
    """A trainer measured by per-stage statistics (see the module docstring): validation and test batches go through
    the subclass's ``evaluation_step(batch, batch_idx, stats)`` into ``val_stats`` and ``test_stats``, and every
    stage's stats are logged and reset at the end of its epochs. (Trainers without validation, such as PPO, stay plain
    :class:`BackboneModule`: Lightning runs a validation loop for any module that defines ``validation_step``.)"""

    #: training metrics the trainer logs per step, left out of the ``train/...`` values logged at the epoch's end
    step_metrics: tuple[str, ...] = ()
    #: metrics shown in the progress bar during validation and test; ``None``: every validation metric
    progress_bar_metrics: tuple[str, ...] | None = None
    #: leave out metrics that are NaN (nothing counted towards them; the stats are synchronised first, so every rank
    #: leaves out the same ones)
    drop_nan_metrics = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.epoch_metrics: dict[str, dict[str, torch.Tensor]] = {}  # per stage, every value of its last epoch end

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.evaluation_step(batch, batch_idx, self.val_stats)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.evaluation_step(batch, batch_idx, self.test_stats)

    def log_stats(self, stage: str) -> None:
        """Log the 0-d values of the stage's stats (``<stage>_stats``, if the trainer has them) as
        ``<stage>/<name>`` in float32, keep every value in ``epoch_metrics[stage]``, and reset the stats."""
        stats = getattr(self, f"{stage}_stats", None)
        if stats is None:
            return
        values = stats.compute()
        self.epoch_metrics[stage] = values
        scalars = {k: v.float().to(self.device) for k, v in values.items()
                   if v.dim() == 0 and not (stage == "train" and k in self.step_metrics)
                   and not (self.drop_nan_metrics and torch.isnan(v))}
        shown = self.progress_bar_metrics
        if shown is None:
            shown = tuple(scalars) if stage == "val" else ()
        elif stage == "train":
            shown = ()
        self.log_dict({f"{stage}/{k}": v for k, v in scalars.items() if k not in shown}, sync_dist=True)
        self.log_dict({f"{stage}/{k}": v for k, v in scalars.items() if k in shown}, prog_bar=True, sync_dist=True)
        stats.reset()

    def on_train_epoch_end(self) -> None:
        self.log_stats("train")

    def on_validation_epoch_end(self) -> None:
        self.log_stats("val")

    def on_test_epoch_end(self) -> None:
        self.log_stats("test")


class ScoreTrainer(StageStatsModule):
    """What the reward and the cost trainers share (one Bradley-Terry score model, two orders of the pairs): their
    common arguments, the :class:`~lit_safe.models.score_model.ScoreModel` of type ``score_type`` built from the
    hyperparameters (``backbone``, ``revision``, ``dtype``, ``normalize_scores``, ``normalizer_momentum``,
    ``gradient_checkpointing``), one stats object per stage (:meth:`make_stats`), the end scores of both responses of
    a pair batch, the running statistics of the raw scores, and the export.

    Args:
        l2_coeff: weight of the L2 term on scores (eta).
        normalize_scores: normalise the model's scores with running statistics (kept and exported either way; a cost
            model's normaliser only scales, so the sign is kept).
        normalizer_momentum: ``None`` for exact running statistics, or an EMA momentum.
        **kwargs: the arguments every trainer takes, as :class:`BackboneModule`.
    """

    model: ScoreModel | None
    score_type = "reward"

    def __init__(
        self,
        *,
        l2_coeff: float = 1e-3,
        normalize_scores: bool = False,
        normalizer_momentum: float | None = None,
        **kwargs: Any,
    ) -> None:
        check_hparams(type(self).__name__, non_negative={"l2_coeff": l2_coeff})
        super().__init__(**kwargs)
        # One metric holder per stage (a ModuleDict cannot have a key named "train": nn.Module.train exists).
        self.train_stats, self.val_stats, self.test_stats = self.make_stats(), self.make_stats(), self.make_stats()

    def make_stats(self) -> StageStats:
        """One stage's statistics."""
        return ScoreStats(self.score_type)

    def configure_model(self) -> None:
        if self.model is not None:
            return
        hp = self.hparams
        self.model = build_score_model(
            hp.backbone,
            self.tokenizer,
            self.score_type,
            dtype=hp.dtype,
            revision=hp.revision,
            do_normalize=hp.normalize_scores,
            normalizer_momentum=hp.normalizer_momentum,
            gradient_checkpointing=hp.gradient_checkpointing,
        )
        self.shard(self.model)

    def pair_scores(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, object]:
        """End scores of the first and the second responses of a pair batch, unpacked or packed.

        Returns:
            ``(first (B,), second (B,), the model output)``.
        """
        return score_pairs(self.model, batch)

    def update_normalizer(self, raw: torch.Tensor) -> None:
        """Add a training batch's raw (unnormalised) end scores, gathered from every rank, to the model's running
        statistics, kept (and exported) whether or not they are applied; a batch with a non-finite score (a step the
        base module will skip) would make them NaN for good, so it adds nothing. A collective: call on every rank."""
        gathered = self.all_gather(raw.detach())
        if bool(torch.isfinite(gathered).all()):
            self.model.normalizer.update(gathered)

    def export_config(self) -> dict:
        """Extra entries of the exported ``config.json``."""
        return {}

    def export_pretrained(self, path):
        """Write the model in the Hugging Face format (config, safetensors, tokenizer). Call on every rank."""
        return export_score_model(self.model, self.tokenizer, path, root=self.export_root(), prefix="model.",
                                  **self.export_config())


class ModerationTrainer(StageStatsModule):
    """What the text and the video moderation trainers share (one algorithm on two kinds of input): the categories
    taken from the data module's ``moderation`` view, the per-class ``pos_weight`` of the training split, the
    decision rule's thresholds, the training logs, evaluation into :class:`~lit_safe.metrics.ModerationStats`,
    predictions and the export.

    Subclasses take their labels from the data module in ``setup`` (then call :meth:`prepare_labels`), state their
    rule in ``decision_config()`` (the exported model carries it), build the classifier with that rule in
    ``build_model()`` (its output a :class:`~lit_safe.models.moderation_model.ModerationOutput`, its ``decide`` the
    rule's decisions), run it on a batch in ``classify(batch)`` and compute the loss in
    ``model_step(batch) -> (loss, parts, output)``. The rule's arguments (``flag_rule``, ``flag_threshold`` ...) are
    theirs, checked in ``setup`` once the categories are known.

    Args:
        categories: harm category names; ``None`` takes them from the data module (saved in checkpoints).
        pos_weight: weight each category's positive term by negatives / positives of the training split.
        max_pos_weight: cap of those weights (rare categories would otherwise get weights in the hundreds).
        category_thresholds: per-category detection thresholds: one number for all, or ``{category: threshold}``
            (unnamed categories use 0.5).
        **kwargs: the arguments every trainer takes, as :class:`BackboneModule`.
    """

    views = ("moderation",)
    progress_bar_metrics = ("accuracy", "macro_f1", "fpr_safe")
    #: the loss parts (of :func:`lit_safe.losses.moderation_loss`) logged per training step as ``train/loss_<part>``
    loss_parts: tuple[str, ...] = ("category", "unsafe")
    #: log the flag rate per true severity level (or safe/unsafe without severity) as ``flag_rate/<group>``
    log_flag_rates = True

    def __init__(
        self,
        *,
        categories: list[str] | None = None,
        pos_weight: bool = True,
        max_pos_weight: float = 10.0,
        category_thresholds: float | dict[str, float] = 0.5,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        # Saved in checkpoints (so that val/loss of a later validate or test weighs as during fit); filled in setup.
        self.register_buffer("pos_weight", None)
        self.val_stats: ModerationStats | None = None
        self.test_stats: ModerationStats | None = None

    # ------------------------------------------------------------------------------------------------- labels
    def take_data_label(self, key: str, value) -> None:
        """Set hyperparameter ``key`` (``categories``, ``severity_levels``) from the data module when unset, or refuse
        data that labels differently (a checkpoint's categories must be the data's)."""
        if self.hparams[key] is None:
            self.hparams[key] = value
        elif self.hparams[key] != value:
            raise ValueError(f"the model's {key} {self.hparams[key]} differ from the data's {value}")

    def prepare_labels(self, stage: str, severity_levels: int) -> None:
        """Once the categories are known: check the decision rule against them; for training, compute the per-class
        ``pos_weight`` from the training split's label counts; and make the evaluation stats (flag rates per true
        severity level, or safe/unsafe without severity)."""
        hp = self.hparams
        validate_decision(self.decision_config(), hp.categories, severity_levels)
        if stage == "fit" and hp.pos_weight:
            datamodule = self.datamodule
            summary = datamodule.label_summary("train") if hasattr(datamodule, "label_summary") else {}
            weight = category_pos_weight(summary or {}, list(hp.categories), hp.max_pos_weight)
            if weight is not None:
                self.pos_weight = weight
            else:
                rank_zero_warn(f"{type(self).__name__}: no training label counts (a remote prepared dataset?): "
                               "pos_weight is 1 for every category")
        groups = [f"severity_{k}" for k in range(severity_levels)] if severity_levels else ["safe", "unsafe"]
        groups = groups if self.log_flag_rates else []
        self.val_stats = ModerationStats(hp.categories, groups, severity_levels)
        self.test_stats = ModerationStats(hp.categories, groups, severity_levels)

    def category_thresholds(self) -> torch.Tensor:
        """Per-category detection thresholds ``(C,)`` of the ``category_thresholds`` hyperparameter."""
        return category_threshold_tensor(self.hparams.categories, self.hparams.category_thresholds)

    # ------------------------------------------------------------------------------------------------- model
    def configure_model(self) -> None:
        if self.model is not None:
            return
        if self.hparams.categories is None:
            self.setup("predict")
        self.model = self.build_model()
        if self.hparams.pos_weight and self.pos_weight is None:  # outside fit: ones, until a checkpoint's are loaded
            self.pos_weight = torch.ones(len(self.hparams.categories))
        self.shard(self.model)

    def decide(self, out) -> dict[str, torch.Tensor]:
        """Probabilities and decisions of the configured rule (the model's ``decide``)."""
        return self.model.decide(out)

    def pos_weight_on(self, device: torch.device) -> torch.Tensor | None:
        """``pos_weight`` on ``device`` for :func:`lit_safe.losses.moderation_loss` (``None``: all 1)."""
        return None if self.pos_weight is None else self.pos_weight.to(device)

    # ------------------------------------------------------------------------------------------------- steps
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, parts, out = self.model_step(batch)
        flagged = self.decide(out)["flagged"]
        self.log("train/loss", loss, prog_bar=True)
        self.log_dict({f"train/loss_{k}": parts[k] for k in self.loss_parts})
        self.log("train/accuracy", (flagged == batch["unsafe"].bool()).float().mean(), prog_bar=True)
        return loss

    def evaluation_step(self, batch: dict, batch_idx: int, stats: ModerationStats) -> None:
        loss, _, out = self.model_step(batch)
        d = self.decide(out)
        severity = batch["severity"] if "severity" in batch else torch.full_like(batch["unsafe"], -1)
        stats.update(loss, d["category_probs"], batch["categories"], d["unsafe_prob"], batch["unsafe"], d["flagged"],
                     d["detected"], d["severity_probs"], severity)

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        """Per item: ``flagged``, ``unsafe_prob``, ``categories`` ({name: probability}), ``detected`` (names at or
        above their threshold) and, with severity, ``severity`` (most likely level) and ``severity_probs``; keyed by
        ``line`` (a ``predict_file``) or ``row``/``response`` (a prepared split)."""
        d = self.decide(self.classify(batch))
        names = self.hparams.categories
        result = {key: batch[key] for key in ("line", "row", "response") if key in batch}
        result.update({
            "flagged": d["flagged"],
            "unsafe_prob": d["unsafe_prob"],
            "categories": [dict(zip(names, p)) for p in d["category_probs"].tolist()],
            "detected": [[n for n, hit in zip(names, row) if hit] for row in d["detected"].tolist()],
        })
        if d["severity_probs"] is not None:
            result["severity"] = d["severity_probs"].argmax(-1)
            result["severity_probs"] = d["severity_probs"]
        return result

    def log_stats(self, stage: str) -> None:
        """Log the stage's metrics, unless no rank saw a batch of it (an empty split: every rank decides alike, so
        none waits in ``compute()``'s gather)."""
        stats = getattr(self, f"{stage}_stats", None)
        if stats is not None and float(self.trainer.strategy.reduce(stats.count.clone(), reduce_op="sum")) == 0:
            self.epoch_metrics.pop(stage, None)
            return
        super().log_stats(stage)

    # ------------------------------------------------------------------------------------------------ export
    def export_pretrained(self, path):
        """Write the model, its categories and its decision rule in the Hugging Face format. Call on every rank."""
        return export_score_model(self.model, self.tokenizer, path, root=self.export_root(), prefix="model.")


class VideoTextTrainer(BackboneModule):
    """The video-model arguments of the trainers of a :class:`~lit_safe.models.video_text.VideoTextModel` (dual
    encoder + fusion transformer), whose ``backbone`` is ``tiny``/``small`` (random CLIPs for CPUs), a hub id or
    directory of a dual encoder (``openai/clip-vit-base-patch32``, a SigLIP), or a saved model of the trainer to
    continue from; ``gradient_checkpointing`` applies to the dual encoder. The frame settings left unset come from the
    data module in ``setup``. A video trainer derives from this class first, then from the trainer of its kind
    (``class VideoModerationModule(VideoTextTrainer, ModerationTrainer)``).

    Args:
        num_frames: frames per video the model's temporal embedding covers; ``None``: the data module's.
        frame_size: the data's frame size (the presets' vision ``image_size``); ``None``: the data module's.
        fusion_width: fusion transformer width (``None``: the text encoder's hidden size).
        fusion_layers: fusion transformer layers.
        fusion_heads: fusion attention heads.
        fusion_dropout: fusion dropout.
        freeze_backbone: train only the fusion transformer and the head(s) (the dual encoder runs without autograd).
        **kwargs: the arguments every trainer takes, as :class:`BackboneModule`.
    """

    def __init__(
        self,
        *,
        num_frames: int | None = None,
        frame_size: int | None = None,
        fusion_width: int | None = None,
        fusion_layers: int = 2,
        fusion_heads: int = 4,
        fusion_dropout: float = 0.0,
        freeze_backbone: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)

    def setup(self, stage: str) -> None:
        """Check the tokenizer and the view, then fill the unset ``num_frames`` and ``frame_size`` from the data
        module (``datamodule.hparams.num_frames`` / ``frame_size``), and refuse data with more frames than the model
        covers."""
        super().setup(stage)
        data = getattr(self.datamodule, "hparams", None)
        if data is None:
            return
        hp = self.hparams
        for key in ("num_frames", "frame_size"):
            if hp.get(key) is None and data.get(key) is not None:
                hp[key] = int(data[key])
        if data.get("num_frames") is not None and hp.num_frames is not None and int(data["num_frames"]) > hp.num_frames:
            raise ValueError(f"the data has {data['num_frames']} frames per video, the model's num_frames is "
                             f"{hp.num_frames}")

    def video_model_arguments(self) -> dict:
        """The keyword arguments of :func:`~lit_safe.models.video_text.build_video_text_model` from the
        hyperparameters (``num_frames`` 8 where neither the run nor its data module set it)."""
        hp = self.hparams
        keys = ("frame_size", "fusion_width", "fusion_layers", "fusion_heads", "fusion_dropout", "freeze_backbone",
                "dtype", "revision", "gradient_checkpointing")
        return {"num_frames": hp.num_frames or 8, **{key: hp[key] for key in keys}}


def _value(tensor: torch.Tensor | None) -> str:
    return "n/a" if tensor is None else f"{float(tensor.float().mean()):.4g}"
