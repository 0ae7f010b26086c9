"""Atomic checkpoints (lit_safe.checkpointing): written beside their destination and renamed, so that an interrupted
or killed write leaves the previous checkpoint intact; stray temporaries are removed at the next save; a torn file is
named; lit-safe installs the plugin by default without replacing a user's own CheckpointIO."""

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.plugins.io import AsyncCheckpointIO

from lit_safe.checkpointing import (
    AtomicCheckpointIO,
    CheckpointError,
    atomic_link,
    with_atomic_checkpoint_io,
)
from lit_safe.cli import LitSafeCLI


def _state(value: float) -> dict:
    return {"state_dict": {"w": torch.full((64, 64), value)}, "global_step": int(value)}


def _temporaries(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if ".tmp-" in p.name]


def test_save_writes_beside_the_destination_not_in_tmpdir(tmp_path, monkeypatch):
    # Lightning's writer makes its temporary file in $TMPDIR and moves it: a copy when $TMPDIR is another filesystem
    # (a tmpfs /tmp), which a kill can interrupt after the old checkpoint is gone. Here $TMPDIR cannot be used at all.
    def no_tmpdir(*args, **kwargs):
        raise OSError("$TMPDIR must not be used for checkpoints")

    monkeypatch.setattr(tempfile, "mkstemp", no_tmpdir)
    with pytest.raises(OSError, match="TMPDIR"):
        TorchCheckpointIO().save_checkpoint(_state(1.0), tmp_path / "lightning.ckpt")
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(_state(1.0), ckpt)
    assert AtomicCheckpointIO().load_checkpoint(ckpt)["global_step"] == 1
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["last.ckpt"]


def test_an_interrupted_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    ckpt = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint(_state(1.0), ckpt)
    before = ckpt.read_bytes()

    def torn_save(obj, file, *args, **kwargs):
        file.write(b"PK\x03\x04" + b"\0" * 5000)  # the start of a zip, then the interruption
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint(_state(2.0), ckpt)
    monkeypatch.undo()
    assert ckpt.read_bytes() == before
    assert io.load_checkpoint(ckpt)["global_step"] == 1
    assert _temporaries(tmp_path) == []


KILLED_WRITER = """
import os, signal, sys
import torch
from lit_safe.checkpointing import AtomicCheckpointIO

path = sys.argv[1]
AtomicCheckpointIO().save_checkpoint({"global_step": 1, "w": torch.ones(64, 64)}, path)

def killed_save(obj, file, *args, **kwargs):
    file.write(b"PK\\x03\\x04" + b"\\0" * 5000)
    file.flush()
    os.kill(os.getpid(), signal.SIGKILL)

torch.save = killed_save
AtomicCheckpointIO().save_checkpoint({"global_step": 2, "w": torch.zeros(64, 64)}, path)
"""


def test_a_kill_during_the_write_leaves_the_old_checkpoint_and_the_stray_file_is_removed_next_time(tmp_path):
    ckpt = tmp_path / "last.ckpt"
    process = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(ckpt)], stderr=subprocess.PIPE, text=True)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == -signal.SIGKILL, stderr
    assert AtomicCheckpointIO().load_checkpoint(ckpt)["global_step"] == 1  # the old one, whole
    stray = _temporaries(tmp_path)
    assert [p.name for p in stray] == [f".last.ckpt.tmp-{process.pid}"]
    assert stray[0].stat().st_size > 0
    AtomicCheckpointIO().save_checkpoint(_state(3.0), tmp_path / "epoch0-step3.ckpt")  # the next save in that dir
    assert _temporaries(tmp_path) == []
    assert AtomicCheckpointIO().load_checkpoint(ckpt)["global_step"] == 1


def test_loading_a_torn_checkpoint_names_it(tmp_path):
    whole = tmp_path / "whole.ckpt"
    AtomicCheckpointIO().save_checkpoint(_state(1.0), whole)
    torn = tmp_path / "torn.ckpt"
    torn.write_bytes(whole.read_bytes()[:3000])
    with pytest.raises(CheckpointError, match=rf"^{torn} is not a complete checkpoint \(3000 bytes; a write was "
                                              r"interrupted\?\)$"):
        AtomicCheckpointIO().load_checkpoint(torn)


def test_a_users_checkpoint_io_is_kept_and_wrappers_write_through_the_atomic_one():
    assert [type(p) for p in with_atomic_checkpoint_io(None)] == [AtomicCheckpointIO]
    own = TorchCheckpointIO()
    assert with_atomic_checkpoint_io([own]) == [own]
    wrapper = AsyncCheckpointIO()
    assert with_atomic_checkpoint_io(wrapper) == [wrapper]
    assert isinstance(wrapper.checkpoint_io, AtomicCheckpointIO)
    strategy = SimpleNamespace(_checkpoint_io=TorchCheckpointIO())
    assert with_atomic_checkpoint_io(["bf16-mixed"], strategy) == ["bf16-mixed"]


def test_the_cli_trainer_writes_checkpoints_atomically_and_removes_strays_at_start(tmp_path, quickstart_config):
    config = quickstart_config("reward", tmp_path, synthetic_rows=300)
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()  # a process id that no longer runs: the writer of the stray was killed
    (tmp_path / "checkpoints").mkdir()
    stray = tmp_path / "checkpoints" / f".last.ckpt.tmp-{finished.pid}"
    stray.write_bytes(b"PK\x03\x04 torn")
    cli = LitSafeCLI(args=["--config", str(config)], run=False)
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    assert not stray.exists()
    cli = LitSafeCLI(args=["--config", str(config), "--trainer.plugins",
                           "lightning.fabric.plugins.io.torch_io.TorchCheckpointIO"], run=False)
    assert type(cli.trainer.strategy.checkpoint_io) is TorchCheckpointIO


def test_save_last_link_replaces_last_ckpt_without_a_gap(tmp_path):
    target = tmp_path / "epoch0-step3.ckpt"
    AtomicCheckpointIO().save_checkpoint(_state(3.0), target)
    last = tmp_path / "last.ckpt"
    last.write_bytes(b"the previous last checkpoint")
    trainer = SimpleNamespace(is_global_zero=True, strategy=SimpleNamespace(barrier=lambda: None))
    atomic_link(trainer, str(target), str(last))
    assert last.is_symlink() and os.readlink(last) == "epoch0-step3.ckpt"
    assert AtomicCheckpointIO().load_checkpoint(last)["global_step"] == 3
    assert _temporaries(tmp_path) == []
