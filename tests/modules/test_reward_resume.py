"""A killed reward-model run resumes exactly: same batches afterwards (loader position restored mid-epoch, inside a
length-grouping pool), same optimizer and schedule, hence the same final weights as an uninterrupted run."""

from dataclasses import replace

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lit_safe.data_modules.pku_saferlhf import PKUSafeRLHFDataModule
from lit_safe.modules.reward import DEFAULT_OPTIMIZER, RewardModule


class RowRecorder(Callback):
    def __init__(self) -> None:
        self.rows: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.rows += batch["row"].tolist()


class KillAt(Callback):
    """Stops the run after a given step, as a crash would (the config, and so the LR schedule, stay the same)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            trainer.should_stop = True


def _fit(tmp_path, kill_at: int | None = None, ckpt_path=None):
    L.seed_everything(7)
    data = PKUSafeRLHFDataModule(tokenizer="tiny", synthetic_rows=320, batch_size=8, group_size=4, num_workers=0,
                                 max_length=128, prepared_dir=str(tmp_path / "prepared"))
    model = RewardModule(backbone="tiny", optimizer=replace(DEFAULT_OPTIMIZER, lr=2e-3, warmup_ratio=0.1))
    recorder = RowRecorder()
    callbacks = [recorder]
    if kill_at:
        callbacks += [KillAt(kill_at), ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=kill_at,
                                                       save_top_k=-1, filename="{step}")]
    trainer = L.Trainer(accelerator="cpu", max_epochs=2, logger=False, callbacks=callbacks,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        default_root_dir=tmp_path)
    trainer.fit(model, data, ckpt_path=ckpt_path)
    return model, recorder.rows, trainer


def test_resume_mid_epoch_gives_the_same_batches_and_weights(tmp_path):
    full_model, full_rows, full_trainer = _fit(tmp_path / "full")
    steps_per_epoch = full_trainer.num_training_batches
    stop = steps_per_epoch + 7  # in the second epoch, inside a pool of 4 batches (7 = 4 + 3)

    _, first_rows, _ = _fit(tmp_path / "cut", kill_at=stop)
    ckpt = tmp_path / "cut" / "ckpt" / f"step={stop}.ckpt"
    assert ckpt.is_file()
    resumed_model, rest_rows, resumed_trainer = _fit(tmp_path / "cut", ckpt_path=str(ckpt))

    assert len(first_rows) == stop * 8 - 4  # epoch 1 ends with a half batch (300 pairs, batch 8)
    assert first_rows + rest_rows == full_rows  # the same batches, in the same order
    assert resumed_trainer.global_step == full_trainer.global_step
    for (name, a), (_, b) in zip(full_model.model.named_parameters(), resumed_model.model.named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
