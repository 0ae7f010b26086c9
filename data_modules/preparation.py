"""Preparation: validated, tokenised rows written as litdata chunks, with a report of what was kept and dropped.

A prepared dataset is a directory ``<prepared_dir>/<dataset>-<view>-<fingerprint>/`` holding one litdata directory
per split (``train/``, ``val/``, ``test/``, each with ``index.json`` and ``chunk-*.bin``), ``report.json`` and
``meta.json``. The fingerprint hashes everything that changes the tokens (source, revision, config, view,
tokenizer, template, max length, split rule, seed), so a changed setting prepares anew and an unchanged one is
reused. Writing goes to a temporary directory that is renamed at the end, so an interrupted preparation never
leaves a half-written dataset behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from litdata.streaming.writer import BinaryWriter
from litdata.utilities.env import _DistributedEnv

REPORT_FILE = "report.json"
META_FILE = "meta.json"


@dataclass
class SplitReport:
    """Counts of one split: rows read, kept, dropped by reason, and label notes that were counted but kept."""

    rows_read: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    notes: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows_read": self.rows_read,
            "kept": self.kept,
            "dropped": dict(sorted(self.dropped.items())),
            "notes": dict(sorted(self.notes.items())),
        }


@dataclass
class PrepareReport:
    """The report of a whole preparation: per-split counts plus what was prepared and where."""

    source: str
    view: str
    output_dir: str
    splits: dict[str, SplitReport] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "view": self.view,
            "output_dir": self.output_dir,
            "splits": {name: split.to_dict() for name, split in self.splits.items()},
        }

    def format(self) -> str:
        """A human-readable table of the report."""
        lines = [f"Prepared {self.source} (view: {self.view}) -> {self.output_dir}"]
        for name, split in self.splits.items():
            dropped = sum(split.dropped.values())
            lines.append(f"  {name:<5} read {split.rows_read:>7}  kept {split.kept:>7}  dropped {dropped:>6}")
            for reason, count in sorted(split.dropped.items()):
                lines.append(f"          dropped {count:>6}  {reason}")
            for note, count in sorted(split.notes.items()):
                lines.append(f"          noted   {count:>6}  {note}")
        return "\n".join(lines)


def fingerprint(settings: dict[str, Any]) -> str:
    """A short stable hash of the settings that determine a prepared dataset."""
    blob = json.dumps(settings, sort_keys=True, default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:16]


def is_prepared(directory: str | Path) -> bool:
    """Whether a local directory holds a finished preparation (it has the report and at least one split)."""
    directory = Path(directory)
    return (directory / REPORT_FILE).is_file() and any((directory / s / "index.json").is_file() for s in SPLITS)


SPLITS = ("train", "val", "test")


class EmptySplitError(ValueError):
    """Every row of a split was dropped: there is nothing to write."""


def write_split(items: Iterable[dict[str, Any]], directory: str | Path, chunk_bytes: str = "64MB") -> int:
    """Write items as a litdata dataset in ``directory``; returns how many were written."""
    writer = BinaryWriter(str(directory), chunk_bytes=chunk_bytes)
    # This writer is the only one, even inside a distributed job (Lightning runs prepare_data on rank 0 alone):
    # without this, litdata reads the world size from the environment and rank 0 waits forever in merge() for
    # index files of writers that do not exist.
    writer._distributed_env = _DistributedEnv(world_size=1, global_rank=0, num_nodes=1)
    writer._rank = 0
    count = 0
    for count, item in enumerate(items, start=1):
        writer[count - 1] = item
    if count == 0:
        raise EmptySplitError(f"no rows left to write to {directory}: every row was dropped (see the report)")
    writer.done()
    writer.merge()
    return count


def publish(
    tmp_dir: Path, final_dir: Path, report: PrepareReport, meta: dict[str, Any], replace: bool = False
) -> None:
    """Write report and meta into ``tmp_dir`` and move it to ``final_dir`` (atomic on one filesystem).

    With ``replace`` (a forced preparation) an existing ``final_dir`` is moved aside and deleted first, so that the
    new preparation wins; otherwise an existing finished ``final_dir`` is kept.
    """
    (tmp_dir / REPORT_FILE).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    (tmp_dir / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    if replace and final_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}-old-", dir=final_dir.parent))
        os.replace(final_dir, old / final_dir.name)
        shutil.rmtree(old, ignore_errors=True)
    try:
        os.replace(tmp_dir, final_dir)
    except OSError:
        # Another process finished the same preparation first (same fingerprint, same content): keep theirs.
        if not is_prepared(final_dir):
            raise
        shutil.rmtree(tmp_dir, ignore_errors=True)


def staging_dir(final_dir: Path) -> Path:
    """A fresh temporary directory beside ``final_dir`` (same filesystem, so the final rename is atomic)."""
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{final_dir.name}-", dir=final_dir.parent))
