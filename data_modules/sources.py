"""Where rows come from: local JSON/JSONL/parquet files, directories of split files, or the Hugging Face hub.

Every row is yielded with its location (``file:line N`` or ``hub-id@revision[config]/split row N``), so that a
validation error can name the file and the row. Hub datasets are loaded with a pinned ``revision`` and config
name (``subset``), as reproducibility requires; machines without network fail with the hub's own clear error.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet")


class DataValidationError(ValueError):
    """Bad input data: the message names the file or dataset, the row and the field."""


def _suffix(path: Path) -> str | None:
    name = path.name.lower()
    return next((s for s in SUFFIXES if name.endswith(s)), None)


def is_data_file(path: Path) -> bool:
    """Whether ``path`` is a file lit_safe can read rows from."""
    return path.is_file() and _suffix(path) is not None


def read_file(path: str | Path) -> Iterator[tuple[str, Any]]:
    """Yield ``(location, row)`` for every row of a JSONL, JSON (array), gzip'd JSON(L) or parquet file.

    Raises:
        FileNotFoundError: the file does not exist.
        DataValidationError: a line is not valid JSON, or a JSON file is not an array of objects.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    suffix = _suffix(path)
    if suffix is None:
        raise DataValidationError(f"{path}: unsupported file type; expected one of {', '.join(SUFFIXES)}")
    opener = gzip.open if suffix.endswith(".gz") else open
    if suffix.startswith(".jsonl"):
        with opener(path, "rt", encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataValidationError(f"{path}: line {number}: invalid JSON ({err.msg})") from err
                yield f"{path}: line {number}", row
    elif suffix.startswith(".json"):
        with opener(path, "rt", encoding="utf-8") as f:
            try:
                rows = json.load(f)
            except json.JSONDecodeError as err:
                raise DataValidationError(f"{path}: invalid JSON at line {err.lineno} ({err.msg})") from err
        if not isinstance(rows, list):
            raise DataValidationError(f"{path}: expected a JSON array of rows, got {type(rows).__name__}")
        for index, row in enumerate(rows):
            yield f"{path}: row {index}", row
    else:
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        for index, row in enumerate(table.to_pylist()):
            yield f"{path}: row {index}", row


def local_splits(directory: str | Path) -> dict[str, Path]:
    """Split files directly inside a directory, by file stem: ``train.jsonl`` -> ``{"train": ...}``."""
    splits: dict[str, Path] = {}
    for path in sorted(Path(directory).iterdir()):
        suffix = _suffix(path)
        if suffix is not None and path.is_file():
            split = path.name[: -len(suffix)]
            if split in splits:
                raise DataValidationError(f"{directory}: two files for split {split!r}: {splits[split]} and {path}")
            splits[split] = path
    return splits


def read_hub(name: str, split: str, subset: str | None, revision: str | None) -> Iterator[tuple[str, Any]]:
    """Yield ``(location, row)`` for a split of a Hugging Face dataset (hub id, or a local clone of a hub repo)."""
    import datasets

    dataset = datasets.load_dataset(name, name=subset, revision=revision, split=split)
    where = f"{name}@{revision or 'main'}[{subset or 'default'}]/{split}"
    for index, row in enumerate(dataset):
        yield f"{where} row {index}", row


def hub_split_names(name: str, subset: str | None, revision: str | None) -> list[str]:
    """The split names of a Hugging Face dataset."""
    import datasets

    return list(datasets.get_dataset_split_names(name, config_name=subset, revision=revision))
