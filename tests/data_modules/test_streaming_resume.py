"""A run killed mid-epoch (``kill -9``, after its last checkpoint) resumes from that checkpoint with exactly the batches
the uninterrupted run trained on: the quickstart reward model with a litdata loader worker, length grouping over
pools of several batches, the checkpoint inside a pool and several pools into the epoch.

The batches the killed run trained after its checkpoint are lost with it; the resumed run must serve those same
batches again, then the rest, and end with the weights of the uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback

from lit_safe.cli import LitSafeCLI
from lit_safe.data_modules.pku_saferlhf import PKUSafeRLHFDataModule

BATCH, GROUP = 8, 4
CHECKPOINT_EVERY = 10  # steps: the last checkpoint before the kill, inside the third pool (10 = 2 * 4 + 2)
KILL_AT = 13  # steps: 3 batches trained after that checkpoint are lost
STEPS = 24

KILLED_RUN = """
import json, os, signal, sys
from lightning.pytorch.callbacks import Callback
from lit_safe.cli import LitSafeCLI

config, rows_file, kill_at, root = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]

class RecordAndKill(Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        with open(rows_file, "a") as handle:
            handle.write(json.dumps(batch["row"].tolist()) + "\\n")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

cli = LitSafeCLI(args=["--config", config, "--trainer.default_root_dir", root], run=False)
cli.trainer.callbacks.append(RecordAndKill())
cli.trainer.fit(cli.model, cli.datamodule)
"""


class RowRecorder(Callback):
    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batches.append(batch["row"].tolist())


def _config(quickstart_config, tmp: Path) -> Path:
    """The reward quickstart with one loader worker, pools of 4 batches of 8 pairs, a checkpoint (last.ckpt) every
    10 steps and no validation before step 24."""
    path = quickstart_config("reward", tmp, synthetic_rows=600, max_length=96, batch_size=BATCH, group_size=GROUP,
                             num_workers=1)
    config = yaml.safe_load(path.read_text())
    config["trainer"].update(max_steps=STEPS, enable_model_summary=False)
    for callback in config["trainer"]["callbacks"]:
        if callback["class_path"].endswith("ModelCheckpoint"):
            callback["init_args"].update(monitor=None, save_top_k=0, save_last=True,
                                         every_n_train_steps=CHECKPOINT_EVERY)
    path.write_text(yaml.safe_dump(config))
    return path


def _fit(config: Path, root: Path, ckpt_path: Path | None = None):
    cli = LitSafeCLI(args=["--config", str(config), "--trainer.default_root_dir", str(root)], run=False)
    recorder = RowRecorder()
    cli.trainer.callbacks.append(recorder)
    cli.trainer.fit(cli.model, cli.datamodule, ckpt_path=None if ckpt_path is None else str(ckpt_path))
    return cli, recorder.batches


@pytest.mark.slow
def test_a_run_killed_mid_epoch_resumes_with_exactly_the_batches_it_would_have_seen(quickstart_config, tmp_path):
    config = _config(quickstart_config, tmp_path)
    full, full_batches = _fit(config, tmp_path / "full")
    assert len(full_batches) == STEPS < full.trainer.num_training_batches  # all inside the first epoch
    checkpoint = tmp_path / "checkpoints" / "last.ckpt"
    checkpoint.unlink()  # the killed run must write its own

    rows_file = tmp_path / "killed_rows.jsonl"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    killed = subprocess.run([sys.executable, "-c", KILLED_RUN, str(config), str(rows_file), str(KILL_AT),
                             str(tmp_path / "killed")], env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    killed_batches = [json.loads(line) for line in rows_file.read_text().splitlines()]
    assert killed_batches == full_batches[:KILL_AT]  # the same batches as the uninterrupted run, up to the kill
    assert torch.load(checkpoint, weights_only=False, map_location="cpu")["global_step"] == CHECKPOINT_EVERY

    resumed, resumed_batches = _fit(config, tmp_path / "resumed", ckpt_path=checkpoint)
    # the batches trained after the checkpoint died with the run: they come again, then the rest of the run
    assert resumed_batches[: KILL_AT - CHECKPOINT_EVERY] == killed_batches[CHECKPOINT_EVERY:]
    assert killed_batches[:CHECKPOINT_EVERY] + resumed_batches == full_batches
    assert all(len(batch) == BATCH for batch in full_batches)
    assert resumed.trainer.global_step == full.trainer.global_step == STEPS
    for (name, a), (_, b) in zip(full.model.named_parameters(), resumed.model.named_parameters()):
        assert torch.equal(a, b), f"{name}: the resumed run ends with other weights"


def test_the_loader_state_resumes_inside_any_pool_with_a_worker(tmp_path):
    """The DataModule's training loader (packed pairs, one litdata worker, pools of 4 batches): the state taken after
    k batches, loaded into the loader of a fresh DataModule, gives the rest of the epoch exactly, for k inside the
    first pool, at a pool boundary, several pools in, and in the last, partial pool."""

    def loader():
        data = PKUSafeRLHFDataModule(tokenizer="tiny", source="synthetic", synthetic_rows=400, max_length=96,
                                     batch_size=BATCH, group_size=GROUP, num_workers=1, pack_pairs=True,
                                     prepared_dir=str(tmp_path / "prepared"))
        data.prepare_data()
        data.setup("fit")
        return data.train_dataloader()

    full = [batch["row"].tolist() for batch in loader()]
    pools = -(-len(full) // GROUP)
    assert pools >= 8 and len(full) % GROUP != 0  # several pools, the last one partial
    for k in (1, GROUP, 2 * GROUP + 3, len(full) - 1):
        first = loader()
        iterator = iter(first)
        taken = [next(iterator)["row"].tolist() for _ in range(k)]
        state = first.state_dict()
        iterator.close()
        resumed = loader()
        resumed.load_state_dict(state)
        rest = [batch["row"].tolist() for batch in resumed]
        assert taken + rest == full, f"resumed after {k} batches"
