"""Where rows come from: local JSON/JSONL/parquet files, directories of split files, or the Hugging Face hub.

Every row is yielded with its location (``file:line N`` or ``hub-id@revision[config]/split row N``), so that a
validation error can name the file and the row. A file without rows is an error naming it; a line that is not UTF-8
is yielded as an :class:`UndecodableRow`, which every row check reports, so that ``on_bad_row`` applies to it.
Hub datasets are loaded with a pinned ``revision`` and config name (``subset``), as reproducibility requires;
machines without network fail with the hub's own clear error.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
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


@dataclass(frozen=True)
class UndecodableRow:
    """A line that is not a row: its bytes are not valid UTF-8 text, it is not valid JSON, or its JSON decodes to
    text that no UTF-8 encoder accepts.

    :func:`read_file` yields it in the row's place instead of raising, so that the bad line is a per-row problem:
    every row check of :mod:`~lit_safe.data_modules.schemas` reports it as ``("<row>", problem)``, which names the
    file and the line under ``on_bad_row: error`` and is dropped and counted (``invalid:<row>``) under ``skip``.
    """

    problem: str


def _lone_surrogate(value: Any, field: str = "") -> tuple[str, str] | None:
    """``(field, character)`` of the first string inside ``value`` that cannot be encoded as UTF-8 (a lone UTF-16
    surrogate: a ``\\udcXX`` escape in JSON, or an undecodable byte kept by ``surrogateescape``), else ``None``."""
    if isinstance(value, str):
        if value.isascii():
            return None
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            return field or "<row>", value[err.start]
        return None
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = ((f"[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    for key, item in items:
        name = f"{field}{key}" if str(key).startswith("[") else f"{field}.{key}" if field else str(key)
        found = _lone_surrogate(item, name)
        if found is not None:
            return found
    return None


def _surrogate_problem(found: tuple[str, str], escaped_bytes: bool = False) -> str:
    field, char = found
    code = ord(char)
    if escaped_bytes and 0xDC80 <= code <= 0xDCFF:  # a byte that was not valid UTF-8, kept by surrogateescape
        return f"not valid UTF-8: byte 0x{code - 0xDC00:02x} in field '{field}'"
    return f"not valid text: a lone UTF-16 surrogate \\u{code:04x} in field '{field}' (not encodable as UTF-8)"


def _no_rows(path: Path, what: str) -> DataValidationError:
    return DataValidationError(f"{path}: no rows ({what})")


def _read_jsonl(path: Path, opener) -> Iterator[tuple[str, Any]]:
    # Bytes per line, decoded here: a line that is not UTF-8 becomes an UndecodableRow (a per-row problem naming the
    # line) instead of a UnicodeDecodeError from the file object that names neither the file nor the line.
    found = False
    with opener(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte order mark
                raw = raw[3:]
            if not raw.strip():
                continue
            found = True
            where = f"{path}: line {number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                yield where, UndecodableRow(
                    f"not valid UTF-8: byte 0x{raw[err.start]:02x} at offset {err.start} of the line")
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:  # a cut or garbled line: a bad row like any other (named or skipped)
                yield where, UndecodableRow(f"invalid JSON ({err.msg} at column {err.colno})")
                continue
            if b"\\ud" in raw or b"\\uD" in raw:  # a surrogate escape: valid only as half of a pair
                bad = _lone_surrogate(row)
                if bad is not None:
                    row = UndecodableRow(_surrogate_problem(bad))
            yield where, row
    if not found:
        raise _no_rows(path, "empty or blank-only file")


def _read_json(path: Path, opener) -> Iterator[tuple[str, Any]]:
    with opener(path, "rb") as f:
        data = f.read()
    try:
        text, escaped = data.decode("utf-8"), False
    except UnicodeDecodeError:
        # surrogateescape keeps undecodable bytes as lone surrogates, so that only the rows holding them are bad
        text, escaped = data.decode("utf-8", errors="surrogateescape"), True
    text = text.removeprefix("\ufeff")
    if not text.strip():
        raise _no_rows(path, "empty or blank-only file")
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataValidationError(f"{path}: invalid JSON at line {err.lineno} ({err.msg})") from err
    if not isinstance(rows, list):
        raise DataValidationError(f"{path}: expected a JSON array of rows, got {type(rows).__name__}")
    if not rows:
        raise _no_rows(path, "an empty JSON array")
    suspect = escaped or "\\ud" in text or "\\uD" in text
    for index, row in enumerate(rows):
        bad = _lone_surrogate(row) if suspect else None
        yield f"{path}: row {index}", UndecodableRow(_surrogate_problem(bad, escaped)) if bad is not None else row


def read_file(path: str | Path) -> Iterator[tuple[str, Any]]:
    """Yield ``(location, row)`` for every row of a JSONL, JSON (array), gzip'd JSON(L) or parquet file.

    A row that is not valid UTF-8 text is yielded as an :class:`UndecodableRow` (every row check reports it), so
    that ``on_bad_row`` decides between an error naming its line and a counted skip.

    Raises:
        FileNotFoundError: the file does not exist.
        DataValidationError: the file has no rows (empty, blank lines only, ``[]``, a parquet file of 0 rows), a
            line is not valid JSON, or a JSON file is not an array of objects.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    suffix = _suffix(path)
    if suffix is None:
        raise DataValidationError(f"{path}: unsupported file type; expected one of {', '.join(SUFFIXES)}")
    opener = gzip.open if suffix.endswith(".gz") else open
    if suffix.startswith(".jsonl"):
        yield from _read_jsonl(path, opener)
    elif suffix.startswith(".json"):
        yield from _read_json(path, opener)
    else:
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        if table.num_rows == 0:
            raise _no_rows(path, "a parquet file with 0 rows")
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
