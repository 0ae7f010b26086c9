"""Where rows come from: local JSON/JSONL/parquet files, directories of split files, or the Hugging Face hub.

Every row is yielded with its location (``file:line N`` or ``hub-id@revision[config]/split row N``), so that a
validation error can name the file and the row. A file without rows is an error naming it; a line that is not UTF-8
is yielded as an :class:`UndecodableRow`, which every row check reports, so that ``on_bad_row`` applies to it.
Hub datasets are loaded with a pinned ``revision`` and config name (``subset``), as reproducibility requires;
machines without network fail with the hub's own clear error.

Rows are read one at a time, so that memory does not grow with the file: JSONL line by line (:func:`read_lines`
yields the undecoded lines that preparation's workers decode with :func:`parse_line`), parquet one record batch at a
time, hub datasets row by row from their memory-mapped cache. A JSON array (``.json``, ``.json.gz``) is the exception:
it is parsed whole, so large data belongs in JSONL or parquet.
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


def is_jsonl(path: Path) -> bool:
    """Whether ``path`` names a JSONL (or gzip'd JSONL) file, whose lines :func:`read_lines` reads undecoded."""
    return _suffix(path) in (".jsonl", ".jsonl.gz")


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


def read_lines(path: str | Path) -> Iterator[tuple[str, bytes]]:
    """Yield ``(location, raw line)`` for every non-blank line of a JSONL (or gzip'd JSONL) file, undecoded: what
    preparation sends to its workers, which decode each line with :func:`parse_line` (the reading process only splits
    lines, the costly decoding runs on every core). ``location`` is ``"<file>: line N"``.

    Raises:
        FileNotFoundError: the file does not exist.
        DataValidationError: not a JSONL file, or no rows (empty or blank lines only).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    suffix = _suffix(path)
    if suffix not in (".jsonl", ".jsonl.gz"):
        raise DataValidationError(f"{path}: not a JSONL file")
    found = False
    with (gzip.open if suffix.endswith(".gz") else open)(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte order mark
                raw = raw[3:]
            if not raw.strip():
                continue
            found = True
            yield f"{path}: line {number}", raw
    if not found:
        raise _no_rows(path, "empty or blank-only file")


def parse_line(raw: bytes) -> Any:
    """The row of one JSONL line, or an :class:`UndecodableRow` saying why it is none: bytes that are not UTF-8 (decoded
    here, so that the problem names the line instead of a ``UnicodeDecodeError`` that names neither file nor line), a
    line that is not JSON, or a lone surrogate escape."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return UndecodableRow(f"not valid UTF-8: byte 0x{raw[err.start]:02x} at offset {err.start} of the line")
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:  # a cut or garbled line: a bad row like any other (named or skipped)
        return UndecodableRow(f"invalid JSON ({err.msg} at column {err.colno})")
    if b"\\ud" in raw or b"\\uD" in raw:  # a surrogate escape: valid only as half of a pair
        bad = _lone_surrogate(row)
        if bad is not None:
            return UndecodableRow(_surrogate_problem(bad))
    return row


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
    if suffix.startswith(".jsonl"):
        for where, raw in read_lines(path):
            yield where, parse_line(raw)
    elif suffix.startswith(".json"):
        yield from _read_json(path, gzip.open if suffix.endswith(".gz") else open)
    else:
        yield from _read_parquet(path)


PARQUET_BATCH_ROWS = 1024  # rows converted to Python objects at a time


def _read_parquet(path: Path) -> Iterator[tuple[str, Any]]:
    # Batch by batch, so that memory holds one record batch (and its row group) rather than the whole table.
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    if parquet.metadata.num_rows == 0:
        raise _no_rows(path, "a parquet file with 0 rows")
    index = 0
    for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS):
        for row in batch.to_pylist():
            yield f"{path}: row {index}", row
            index += 1


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
