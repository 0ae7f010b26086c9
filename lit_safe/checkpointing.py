"""Checkpoints that a kill cannot tear: written next to their destination, flushed to disk, then renamed.

Lightning's ``TorchCheckpointIO`` writes through an fsspec transaction, whose local temporary file lives in
``$TMPDIR``; when that is another filesystem than the run (a tmpfs ``/tmp`` is common) the final "move" is a copy,
and a kill during the copy leaves a truncated ``last.ckpt`` with the previous one already gone. Resuming from it
then fails with an unrelated-looking ``mmap`` error.

:class:`AtomicCheckpointIO` writes ``<dir>/.<name>.tmp-<pid>`` instead, fsyncs it, ``os.replace`` s it onto
``<dir>/<name>`` (atomic within one filesystem) and fsyncs the directory, so that a kill leaves either the old or
the new checkpoint, never a torn one. Temporary files of dead processes are removed at the next save into the same
directory, and when ``lit-safe`` starts (:func:`prepare_checkpoint_callbacks`). ``lit-safe`` installs the plugin by
default (:func:`with_atomic_checkpoint_io`); a ``ModelCheckpoint`` with ``save_last: link`` gets :func:`atomic_link`
(a symlink made beside and renamed over ``last.ckpt``).

Distributed (sharded) checkpoints of ``ModelParallelStrategy`` are directories that the strategy writes itself
without a ``CheckpointIO``; they are left as they are. Remote paths (``s3://`` ...) go through Lightning's writer.

:func:`check_complete` turns a torn checkpoint into one clear :class:`CheckpointError` naming it.
"""

from __future__ import annotations

import os
import re
import shutil
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.plugins.io.wrapper import _WrappingCheckpointIO

_TEMPORARY = re.compile(r"^\..+\.tmp-(\d+)$")
_IN_FLIGHT: set[Path] = set()  # temporaries this process is writing now (async saves run in a thread)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as given: torn by an interrupted write, or of another module type."""


def _is_local(path: str | os.PathLike) -> bool:
    text = str(path)
    return "://" not in text or text.startswith("file://")


def _local_path(path: str | os.PathLike) -> Path:
    text = str(path)
    return Path(text[len("file://"):] if text.startswith("file://") else text)


def temporary_path(path: str | os.PathLike) -> Path:
    """The temporary file a save of ``path`` writes first: ``<dir>/.<name>.tmp-<pid>``."""
    path = Path(path)
    return path.parent / f".{path.name}.tmp-{os.getpid()}"


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # a leftover of this very process (its write failed): nobody is writing it any more
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def remove_stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Delete the ``.<name>.tmp-<pid>`` files of processes that no longer run (a save killed mid-write).

    Returns:
        The removed files.
    """
    removed = []
    directory = Path(directory)
    if not directory.is_dir():
        return removed
    for candidate in directory.iterdir():
        match = _TEMPORARY.match(candidate.name)
        if candidate in _IN_FLIGHT or not match or not candidate.is_file():
            continue
        if not _process_alive(int(match.group(1))):
            with suppress(FileNotFoundError):
                candidate.unlink()
                removed.append(candidate)
    return removed


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write; when the block ends without an error the temporary is renamed
    over ``path`` (atomic on POSIX) and the directory synced, otherwise it is removed and ``path`` is untouched."""
    remove_stale_temporaries(path.parent)
    temporary = temporary_path(path)
    with suppress(FileNotFoundError):
        temporary.unlink()
    _IN_FLIGHT.add(temporary)
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        with suppress(OSError):
            temporary.unlink()
        raise
    finally:
        _IN_FLIGHT.discard(temporary)
    _fsync_directory(path.parent)


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` such that ``path`` is at every moment either its old content or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as temporary, open(temporary, "wb") as file:
        torch.save(obj, file)
        file.flush()
        os.fsync(file.fileno())


def incomplete_message(path: str | os.PathLike) -> str:
    size = os.path.getsize(path)
    return f"{path} is not a complete checkpoint ({size} bytes; a write was interrupted?)"


def check_complete(path: str | os.PathLike) -> None:
    """Raise :class:`CheckpointError` if the file ``path`` cannot be a whole ``torch.save`` checkpoint.

    Called after a load failed: ``torch.save`` writes a zip archive, whose directory sits at the end of the file, so
    a truncated or empty write is not a zip. A checkpoint in the legacy (non-zip) format is accepted when it loads.
    """
    if zipfile.is_zipfile(path):
        return
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        raise CheckpointError(incomplete_message(path)) from None


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves are atomic (see the module docstring) and whose loads of a torn file
    fail with a :class:`CheckpointError` that names it."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local(path):
            return super().save_checkpoint(checkpoint, path, storage_options=storage_options)
        atomic_save(checkpoint, _local_path(path))

    def load_checkpoint(self, path, map_location: Callable | None = lambda storage, loc: storage,
                        weights_only: bool | None = None) -> dict[str, Any]:
        try:
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        except FileNotFoundError:
            raise
        except Exception:
            if _is_local(path) and _local_path(path).is_file():
                check_complete(_local_path(path))
            raise


def with_atomic_checkpoint_io(plugins: Any, strategy: Any = None) -> list:
    """The Trainer's ``plugins`` with an :class:`AtomicCheckpointIO` added, unless the user chose a ``CheckpointIO``
    (as a plugin or in a ``Strategy`` instance), which is kept as it is."""
    if plugins is None:
        plugins = []
    elif not isinstance(plugins, (list, tuple)):
        plugins = [plugins]
    plugins = list(plugins)
    for plugin in plugins:
        if isinstance(plugin, _WrappingCheckpointIO) and plugin.checkpoint_io is None:
            plugin.checkpoint_io = AtomicCheckpointIO()  # e.g. AsyncCheckpointIO: writes in a thread, through ours
    if any(isinstance(plugin, CheckpointIO) for plugin in plugins):
        return plugins
    if getattr(strategy, "_checkpoint_io", None) is not None:
        return plugins  # Lightning refuses a checkpoint_io given both in the strategy and as a plugin
    return [*plugins, AtomicCheckpointIO()]


def atomic_link(trainer: Any, filepath: str, linkpath: str) -> None:
    """``ModelCheckpoint._link_checkpoint`` (``save_last: link``) without the moment where ``last.ckpt`` is missing:
    the new symlink (or, where symlinks are not allowed, a copy) is made beside ``linkpath`` and renamed over it."""
    if trainer.is_global_zero and os.path.abspath(filepath) != os.path.abspath(linkpath):
        link = Path(linkpath)
        if link.is_dir() and not link.is_symlink():
            shutil.rmtree(link)
        with replacing(link) as temporary:
            try:
                os.symlink(os.path.relpath(filepath, os.path.dirname(linkpath)), temporary)
            except OSError:
                with open(filepath, "rb") as source, open(temporary, "wb") as target:
                    shutil.copyfileobj(source, target)
                    target.flush()
                    os.fsync(target.fileno())
    trainer.strategy.barrier()


def prepare_checkpoint_callbacks(trainer: Any) -> None:
    """Remove the temporaries that killed saves left in the ``ModelCheckpoint`` directories (global rank 0, the only
    writer), and give every ``save_last="link"`` callback the atomic :func:`atomic_link`."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    for callback in trainer.callbacks:
        if not isinstance(callback, ModelCheckpoint):
            continue
        if trainer.is_global_zero and callback.dirpath and _is_local(callback.dirpath):
            remove_stale_temporaries(_local_path(callback.dirpath))
        if callback.save_last == "link":
            callback._link_checkpoint = atomic_link  # the hook is a staticmethod: an instance attribute overrides it
