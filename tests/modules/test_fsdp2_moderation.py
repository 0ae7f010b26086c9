"""The moderation trainer under FSDP2 on 2 CPU processes (gloo) through the lit-safe command line: it trains,
validates with metrics reduced across both ranks (the AUROC inputs are gathered), and exports a model that reloads
in one process."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_safe.data_modules.schemas import PKU_HARM_CATEGORIES
from lit_safe.models.moderation_model import ModerationModel

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_moderation_trains_validates_and_exports_under_fsdp2(tmp_path, quickstart_config):
    lit_safe = Path(sys.executable).parent / "lit-safe"
    config = quickstart_config("moderation", tmp_path, synthetic_rows=600)  # every output under tmp_path
    command = [
        str(lit_safe), "fit", "--config", str(config), "--config", "configs/trainer/fsdp2_cpu.yaml",
        "--trainer.max_steps", "24", "--trainer.val_check_interval", "12", "--trainer.limit_val_batches", "4",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "returned a view tensor" not in proc.stderr  # FSDP2's warning about outputs that can skip its hooks

    events = sorted((tmp_path / "runs").rglob("events.out.tfevents.*"))
    accumulator = EventAccumulator(str(events[-1].parent)).Reload()
    accuracy = [e.value for e in accumulator.Scalars("val/accuracy")]
    assert len(accuracy) == 2 and accuracy[-1] >= 0.8
    assert len(accumulator.Scalars("val/auroc_unsafe")) == 2
    losses = [e.value for e in accumulator.Scalars("train/loss")]
    assert losses[-1] < losses[0]

    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    model = ModerationModel.from_pretrained(tmp_path / "moderation_model")
    assert model.categories == list(PKU_HARM_CATEGORIES) and model.severity_levels == 4
