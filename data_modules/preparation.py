"""Preparation: validated, tokenised rows written as litdata chunks, with a report of what was kept and dropped.

A prepared dataset is a directory ``<prepared_dir>/<dataset>-<view>-<fingerprint>/`` holding one litdata directory
per split (``train/``, ``val/``, ``test/``, each with ``index.json`` and ``chunk-*.bin``), ``report.json`` and
``meta.json``, and ``manifest.json``. The fingerprint hashes everything that changes the tokens (source, revision,
config, view, tokenizer, template, max length, split rule, seed), so a changed setting prepares anew and an unchanged
one is reused. Writing goes to a hidden staging directory (``.<name>-*``, with a record of its owner process) that is
renamed at the end, so an interrupted preparation never leaves a half-written dataset behind; the staging directory
of a preparation that was killed is removed by the next preparation (see :func:`clean_stale_staging`), which then
gives the same result.

Streaming and parallel preparation (driven by :class:`~lit_safe.data_modules.base.PreparedDataModule`): a source split
is cut into :class:`Block` s of rows (:func:`cut_blocks`; JSONL lines travel undecoded), which :class:`Workers` hands
to forked worker processes, answers coming back in block order with a bounded number in flight; digests of rows and
units are kept as 16-byte arrays (:func:`digest_array`, :func:`first_occurrences`), label summaries and report counts
of blocks are summed (:func:`add_counts`, :func:`add_report`), and items are written in order by one
:class:`SplitWriter` per split, so that the chunk files are the same bytes for any number of workers. A preparation
across nodes writes one shard per node (``<name>.shards/node-<rank>-of-<nodes>/``, with its :data:`SHARD_FILE`),
which :func:`merge_shards` links into one dataset.

Loading a prepared dataset never runs code from it. lit_safe stores items only with litdata's plain-data serializers
(integers, floats, booleans, strings, bytes, numpy arrays; never ``pickle``) and checks that before writing
(:func:`write_split`). ``manifest.json``, written last, lists per split the ``index.json`` and every chunk file with
its size and sha256, plus the fingerprint. :func:`verify_prepared` refuses a directory without it ("not written by
lit_safe"), an ``index.json`` that asks for any other deserializer (:func:`check_index`: a crafted ``pickle`` item
would run code when read), and a missing, truncated or altered file, naming it. Sizes and the small JSON files are
always checked; chunk checksums when the chunks total at most :data:`CHECKSUM_MAX_BYTES`, 64 MiB (reading a large
dataset in full at every start would make the start grow with the data: a million preference pairs are about 1 GB,
1.5 s of hashing; pass ``checksums=True`` to force it). The allowlist, not the
manifest, is what keeps code out: a crafted directory can carry a matching manifest, but not a ``pickle`` item.
Object storage (``s3://bucket/prefix``, any S3-compatible server): a preparation is written locally (the same code
path, in a staging directory under ``$LIT_SAFE_CACHE/uploads/``) and uploaded by :func:`upload_prepared`, the
manifest last and the previous manifest deleted first, so that a reader never takes a partial upload for a finished
one. :func:`verify_remote` refuses a URL without ``manifest.json`` (naming the URL) and compares the size of every
file it lists with the bucket's listing; the ``index.json`` litdata downloads for a split is compared with the
manifest's sha256 and passes the same allowlist before any item is read. Chunk checksums are not checked remotely
(that would mean downloading everything twice). Other URL schemes litdata streams (``local://``, ``gs://``, ...) are
checked on their ``index.json`` only. Endpoints and credentials are those of boto3, which litdata streams with: the
standard ``AWS_*`` environment variables, or ``storage_options`` (boto3 client arguments such as ``endpoint_url``).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import multiprocessing
import os
import re
import shutil
import socket
import tempfile
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from numbers import Integral
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
from litdata.streaming.writer import BinaryWriter, _config_body
from litdata.utilities.env import _DistributedEnv

from lit_safe.data_modules.sources import DataValidationError

REPORT_FILE = "report.json"
META_FILE = "meta.json"
MANIFEST_FILE = "manifest.json"
MANIFEST_VERSION = 1
OWNER_FILE = ".lit_safe_staging.json"  # inside a staging directory: which process writes it
# litdata's target size of a prepared chunk file. The writer holds up to three times this at once (the items, then
# the chunk assembled from them, twice), which sets the memory a preparation needs beyond its workers' blocks.
CHUNK_BYTES = "16MB"
CHECKSUM_MAX_BYTES = 64 << 20  # chunk sha256 is verified at load time up to this many chunk bytes (about 60 ms here)
LEGACY_STALE_AFTER_S = 3600.0  # a staging dir without an owner record, untouched this long, was abandoned
FOREIGN_STALE_AFTER_S = 24 * 3600.0  # the same for one owned by a process on another host (its pid can't be checked)

# The litdata serializers whose decoding is plain data. Everything else is refused, "pickle" above all (and
# "<any>:pickle", which litdata also routes to pickle), as are the media decoders lit_safe never writes.
SAFE_DATA_FORMAT = re.compile(r"int|float|bool|str|bytes|json|numpy|tensor|no_header_numpy:\d+|no_header_tensor:\d+")
SAFE_TREE_NODES = frozenset({"builtins.dict", "builtins.list", "builtins.tuple"})


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
    reused: bool = False  # an identical earlier preparation was found (not saved in report.json)
    pending: str | None = None  # one node's shard of a preparation across nodes, still waiting for the others
    row_format: str | None = None  # the preference format the rows were read in (see data_modules/formats.py)
    origins: dict[str, str] = field(default_factory=dict)  # per split: where its rows came from, and why

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "view": self.view,
            "output_dir": self.output_dir,
            "row_format": self.row_format,
            "splits": {name: split.to_dict() for name, split in self.splits.items()},
            "origins": self.origins,
        }

    def format(self) -> str:
        """A human-readable table of the report: per split the counts, then where its rows came from."""
        row_format = f", format: {self.row_format}" if self.row_format else ""
        lines = [f"Prepared {self.source} (view: {self.view}{row_format}) -> {self.output_dir}"]
        if self.pending:
            lines.append(f"  {self.pending}; the counts below are this node's share of what is kept")
        for name, split in self.splits.items():
            dropped = sum(split.dropped.values())
            lines.append(f"  {name:<5} read {split.rows_read:>7}  kept {split.kept:>7}  dropped {dropped:>6}")
            if name in self.origins:
                lines.append(f"          from    {self.origins[name]}")
            for reason, count in sorted(split.dropped.items()):
                lines.append(f"          dropped {count:>6}  {reason}")
            for note, count in sorted(split.notes.items()):
                lines.append(f"          noted   {count:>6}  {note}")
        return "\n".join(lines)


def fingerprint(settings: dict[str, Any]) -> str:
    """A short stable hash of the settings that determine a prepared dataset."""
    blob = json.dumps(settings, sort_keys=True, default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:16]


def parse_report(text: str | bytes, where: str) -> PrepareReport:
    """A :class:`PrepareReport` from the text of a ``report.json``; ``where`` names it in the error."""
    try:
        data = json.loads(text)
        report = PrepareReport(source=data["source"], view=data["view"], output_dir=data["output_dir"],
                               row_format=data.get("row_format"), origins=dict(data.get("origins") or {}))
        for name, split in data["splits"].items():
            report.splits[name] = SplitReport(split["rows_read"], split["kept"])
            report.splits[name].dropped.update(split["dropped"])
            report.splits[name].notes.update(split["notes"])
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise PreparedDatasetError(f"{where}: unreadable report ({type(error).__name__}: {error})") from None
    return report


def is_prepared(directory: str | Path) -> bool:
    """Whether a local directory looks like a prepared dataset (a manifest, a report or a split's ``index.json``).

    Looking like one is not being a sound one: :func:`verify_prepared` says whether it may be streamed.
    """
    directory = Path(directory)
    return (
        (directory / MANIFEST_FILE).is_file()
        or (directory / REPORT_FILE).is_file()
        or any((directory / s / "index.json").is_file() for s in SPLITS)
    )


SPLITS = ("train", "val", "test")


class EmptySplitError(ValueError):
    """Every row of a split was dropped: there is nothing to write."""


class PreparedDatasetError(DataValidationError):
    """A prepared dataset lit_safe refuses to stream: not written by lit_safe, damaged, or asking for a deserializer
    that could run code. The message names the file."""


# ----------------------------------------------------------------------------------------------- what may be read
def check_index(index: Any, where: str) -> None:
    """Refuse a litdata ``index.json`` whose items would be decoded by anything but plain-data serializers.

    Args:
        index: the parsed ``index.json``.
        where: the file, for the message.

    Raises:
        PreparedDatasetError: naming ``where`` and what it asks for.
    """
    config = index.get("config") if isinstance(index, dict) else None
    if not isinstance(config, dict) or not isinstance(index.get("chunks"), list):
        raise PreparedDatasetError(f"{where}: not a litdata index (no 'config' or 'chunks')")
    formats = config.get("data_format")
    if not isinstance(formats, list) or not formats:
        raise PreparedDatasetError(f"{where}: no data_format")
    unsafe = [f for f in formats if not isinstance(f, str) or not SAFE_DATA_FORMAT.fullmatch(f)]
    if unsafe:
        raise PreparedDatasetError(
            f"{where}: refusing to load items stored with {unsafe}: lit_safe stores only integers, floats, strings, "
            "bytes and arrays (a 'pickle' item runs code when it is loaded); this dataset was not written by lit_safe"
        )
    if config.get("item_loader", "PyTreeLoader") != "PyTreeLoader":
        raise PreparedDatasetError(f"{where}: unexpected item_loader {config.get('item_loader')!r}")
    if config.get("encryption") is not None:
        raise PreparedDatasetError(f"{where}: encrypted chunks; lit_safe never writes them")
    spec = config.get("data_spec")
    if spec is not None:
        try:
            _check_tree_spec(json.loads(spec)[1])
        except (TypeError, ValueError, KeyError, IndexError) as error:
            raise PreparedDatasetError(f"{where}: refusing data_spec ({error})") from None
    for chunk in index["chunks"]:
        name = chunk.get("filename") if isinstance(chunk, dict) else None
        if not isinstance(name, str) or not name or Path(name).name != name or name.startswith("."):
            raise PreparedDatasetError(f"{where}: bad chunk file name {name!r}")


def _check_tree_spec(node: Any) -> None:
    """Only dicts, lists and tuples: litdata imports the module a ``defaultdict`` node names."""
    if not isinstance(node, dict):
        raise TypeError("a tree node is not an object")
    if node.get("type") is not None and node["type"] not in SAFE_TREE_NODES:
        raise ValueError(f"container type {node['type']!r} is not one lit_safe writes")
    for child in node.get("children_spec") or []:
        _check_tree_spec(child)


def _file_record(path: Path) -> dict[str, Any]:
    return {"bytes": path.stat().st_size, "sha256": _sha256(path)}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(directory: str | Path, fingerprint: str | None = None) -> dict[str, Any]:
    """Write ``manifest.json`` for the splits in ``directory``: each ``index.json`` and chunk file with its size and
    sha256, the report and meta files, and the fingerprint. Checks every index first (:func:`check_index`)."""
    directory = Path(directory)
    splits: dict[str, Any] = {}
    for split in SPLITS:
        index_path = directory / split / "index.json"
        if not index_path.is_file():
            continue
        index = json.loads(index_path.read_text())
        check_index(index, str(index_path))
        chunks = {c["filename"]: _file_record(directory / split / c["filename"]) for c in index["chunks"]}
        splits[split] = {"index": _file_record(index_path), "chunks": chunks}
    files = {name: _file_record(directory / name) for name in (REPORT_FILE, META_FILE) if (directory / name).is_file()}
    manifest = {"written_by": "lit_safe", "manifest_version": MANIFEST_VERSION, "fingerprint": fingerprint,
                "splits": splits, "files": files}
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def verify_prepared(directory: str | Path, checksums: bool | None = None, fingerprint: str | None = None) -> None:
    """Check a local prepared dataset before anything in it is deserialized.

    Args:
        directory: the prepared dataset (holding ``manifest.json`` and the split directories).
        checksums: also compare every chunk's sha256 with the manifest; ``None``: when the chunks total at most
            :data:`CHECKSUM_MAX_BYTES` (sizes, the ``index.json`` files, report and meta are always checked).
        fingerprint: the fingerprint the manifest must record (a reused preparation), or ``None``.

    Raises:
        PreparedDatasetError: no manifest, an ``index.json`` asking for an unsafe deserializer, a split the manifest
            does not list, or a missing, truncated or altered file; the message names the file.
    """
    directory = Path(directory)
    manifest_path = directory / MANIFEST_FILE
    if not manifest_path.is_file():
        raise PreparedDatasetError(
            f"{directory} was not written by lit_safe (no {MANIFEST_FILE}); prepare it with lit-safe prepare "
            "(point source at the original data)"
        )
    try:
        text = manifest_path.read_text()
    except OSError as error:
        raise PreparedDatasetError(f"{manifest_path}: unreadable manifest ({error})") from None
    manifest = _parse_manifest(text, str(manifest_path), fingerprint)
    splits: dict[str, Any] = manifest["splits"]
    files: dict[str, Any] = manifest["files"]
    total = sum(int(record["bytes"]) for entry in splits.values() for record in entry["chunks"].values())
    for split in SPLITS:
        if (directory / split / "index.json").exists() and split not in splits:
            raise PreparedDatasetError(f"{directory / split / 'index.json'}: a split {MANIFEST_FILE} does not list")
    if checksums is None:
        checksums = total <= CHECKSUM_MAX_BYTES
    for name, record in files.items():  # names, splits and record shapes were checked by _parse_manifest
        _check_file(directory / name, record, manifest_path, digest=True)
    for split, entry in splits.items():
        index_path = directory / split / "index.json"
        _check_file(index_path, entry["index"], manifest_path, digest=True)
        try:
            index = json.loads(index_path.read_text())
        except ValueError as error:
            raise PreparedDatasetError(f"{index_path}: not JSON ({error})") from None
        check_index(index, str(index_path))
        listed = sorted(chunk["filename"] for chunk in index["chunks"])
        if listed != sorted(entry["chunks"]):
            raise PreparedDatasetError(f"{index_path}: its chunks {listed} are not those {MANIFEST_FILE} lists")
        for name, record in entry["chunks"].items():
            _check_file(directory / split / name, record, manifest_path, digest=checksums)


def _parse_manifest(text: str | bytes, where: str, fingerprint: str | None = None) -> dict[str, Any]:
    """A parsed lit_safe manifest, its shape checked (and its fingerprint, when given); raises naming ``where``."""
    try:
        manifest = json.loads(text)
        if manifest.get("written_by") != "lit_safe" or manifest.get("manifest_version") != MANIFEST_VERSION:
            raise ValueError(f"not a lit_safe manifest of version {MANIFEST_VERSION}")
        for name, record in manifest["files"].items():
            if name not in (REPORT_FILE, META_FILE):
                raise PreparedDatasetError(f"{where}: unexpected file {name!r}")
            int(record["bytes"]), str(record["sha256"])
        for split, entry in manifest["splits"].items():
            if split not in SPLITS:
                raise PreparedDatasetError(f"{where}: unexpected split {split!r}")
            for record in (entry["index"], *entry["chunks"].values()):
                int(record["bytes"]), str(record["sha256"])
            for name in entry["chunks"]:
                if not isinstance(name, str) or not name or Path(name).name != name or name.startswith("."):
                    raise PreparedDatasetError(f"{where}: bad chunk file name {name!r}")
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        if isinstance(error, PreparedDatasetError):
            raise
        raise PreparedDatasetError(f"{where}: unreadable manifest ({error})") from None
    if fingerprint is not None and manifest.get("fingerprint") != fingerprint:
        raise PreparedDatasetError(f"{where}: fingerprint {manifest.get('fingerprint')!r}, expected {fingerprint!r}")
    return manifest


def _check_file(path: Path, record: Any, manifest_path: Path, digest: bool) -> None:
    try:
        size, sha = int(record["bytes"]), str(record["sha256"])
    except (KeyError, TypeError, ValueError):
        raise PreparedDatasetError(f"{manifest_path}: malformed entry for {path.name}") from None
    if not path.is_file():
        raise PreparedDatasetError(f"{path}: missing (listed in {manifest_path})")
    actual = path.stat().st_size
    if actual != size:
        raise PreparedDatasetError(f"{path}: {actual} bytes, {manifest_path.name} says {size} (truncated or damaged)")
    if digest and _sha256(path) != sha:
        raise PreparedDatasetError(f"{path}: its sha256 differs from {manifest_path.name} (damaged)")


class SplitWriter:
    """Items written in order as one litdata split directory (``chunk-<rank>-<n>.bin`` files as they fill, then
    ``index.json``), refusing any item litdata would pickle. Memory holds at most one chunk of serialised items.

    Args:
        directory: the split directory (created with the first item: a split without items leaves none).
        rank: names the chunk files (``chunk-<rank>-<n>.bin``): the node that wrote them, so that the shards of a
            preparation across nodes merge without renaming (:func:`merge_shards`).
        chunk_bytes: litdata's target size of a chunk file (default :data:`CHUNK_BYTES`).
    """

    def __init__(self, directory: str | Path, rank: int = 0, chunk_bytes: str | int | None = None) -> None:
        self.directory, self.rank, self.chunk_bytes = Path(directory), rank, chunk_bytes or CHUNK_BYTES
        self.count = 0
        self._writer: BinaryWriter | None = None

    def add(self, item: dict[str, Any]) -> None:
        if self._writer is None:
            self._writer = BinaryWriter(str(self.directory), chunk_bytes=self.chunk_bytes)
            # This writer is the only one, even inside a distributed job (Lightning runs prepare_data on rank 0
            # alone): without this, litdata reads the world size from the environment and waits forever for the
            # index files of writers that do not exist.
            self._writer._distributed_env = _DistributedEnv(world_size=1, global_rank=0, num_nodes=1)
            self._writer._rank = self.rank
        self._writer[self.count] = item
        if self.count == 0:
            _check_item_formats(self._writer._data_format, item, self.directory)
        self.count += 1

    def finish(self) -> int:
        """Write the last chunk and ``index.json``; returns how many items were written (0: nothing written)."""
        if self._writer is not None:
            self._writer.done()
            self._writer._merge_no_wait()  # its own index -> index.json (merge() would wait for rank 0's)
            self._writer = None
        return self.count


def write_split(items: Iterable[dict[str, Any]], directory: str | Path, chunk_bytes: str | int | None = None) -> int:
    """Write items as a litdata dataset in ``directory``; returns how many were written.

    Raises:
        EmptySplitError: there were no items.
    """
    writer = SplitWriter(directory, chunk_bytes=chunk_bytes)
    for item in items:
        writer.add(item)
    if writer.finish() == 0:
        raise EmptySplitError(f"no rows left to write to {directory}: every row was dropped (see the report)")
    return writer.count


def _check_item_formats(data_format: list[str] | None, item: Any, directory: str | Path) -> None:
    """Refuse, before writing on, items litdata would store with a serializer :func:`check_index` refuses."""
    formats = list(data_format or [])
    unsafe = [f for f in formats if not SAFE_DATA_FORMAT.fullmatch(f)]
    if unsafe:
        fields = dict(zip(item, formats)) if isinstance(item, dict) and len(item) == len(formats) else formats
        raise TypeError(
            f"{directory}: items would be stored as {fields}; lit_safe stores only integers, floats, strings, bytes "
            "and numpy arrays (never pickle), so that loading a prepared dataset cannot run code"
        )


def publish(
    tmp_dir: Path, final_dir: Path, report: PrepareReport, meta: dict[str, Any], replace: bool = False
) -> None:
    """Write report, meta and then the manifest into ``tmp_dir`` and move it to ``final_dir`` (atomic on one
    filesystem).

    With ``replace`` (a forced preparation, or one replacing a damaged directory) an existing ``final_dir`` is moved
    aside and deleted first, so that the new preparation wins; otherwise an existing sound ``final_dir`` is kept.
    """
    (tmp_dir / REPORT_FILE).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    (tmp_dir / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
    settings = meta.get("settings")
    write_manifest(tmp_dir, fingerprint(settings) if settings is not None else None)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    if replace and final_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}-old-", dir=final_dir.parent))
        _write_owner(old)
        os.replace(final_dir, old / final_dir.name)
        shutil.rmtree(old, ignore_errors=True)
    unclaim_staging(tmp_dir)
    try:
        os.replace(tmp_dir, final_dir)
    except OSError:
        # Another process finished the same preparation first (same fingerprint, same content): keep theirs.
        try:
            verify_prepared(final_dir, checksums=False)
        except PreparedDatasetError:
            raise PreparedDatasetError(f"{final_dir} exists and is not a sound preparation; delete it") from None
        shutil.rmtree(tmp_dir, ignore_errors=True)


# --------------------------------------------------------------------------------------------- object storage
REMOTE_RETRIES = 5  # boto3 attempts per request of lit_safe's own S3 calls (litdata's streaming client has its own)


def is_remote(location: str | Path) -> bool:
    """Whether ``location`` is a URL (``s3://...``, litdata's ``local://``...) rather than a local path."""
    return "://" in str(location)


def s3_parts(url: str) -> tuple[str, str]:
    """``(bucket, key prefix without slashes at either end)`` of an ``s3://bucket/prefix`` URL.

    Raises:
        ValueError: another scheme, or no bucket.
    """
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"{url}: expected s3://bucket/prefix (prepared datasets are written to S3-compatible storage "
                         "only; other URLs can be streamed as a prepared source)")
    return parsed.netloc, parsed.path.strip("/")


def s3_client(storage_options: dict[str, Any] | None = None) -> Any:
    """A boto3 S3 client resolved as litdata's streaming client resolves it (``litdata.streaming.client.S3Client``
    outside Lightning Studios): ``boto3.Session().client("s3", **storage_options)``, so endpoint, credentials and
    region come from ``storage_options`` (boto3 client arguments: ``endpoint_url``, ``region_name``,
    ``aws_access_key_id``...) or else from boto3's own sources (``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL``,
    ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``, ``~/.aws``). Unlike litdata's client
    (1,000 adaptive attempts) it gives up after a few, so a wrong endpoint is an error, not a hang."""
    import boto3
    import botocore.config

    options = dict(storage_options or {})
    options.setdefault("config", botocore.config.Config(retries={"max_attempts": REMOTE_RETRIES, "mode": "standard"},
                                                        connect_timeout=10, read_timeout=120))
    return boto3.Session().client("s3", **options)


def allow_plain_http(storage_options: dict[str, Any] | None = None) -> str | None:
    """Let litdata download chunks from an ``http://`` endpoint (a local MinIO, a test server); returns the endpoint.

    litdata (0.2.76) fetches ``index.json`` with boto3 but chunks with obstore when it is installed (it is a litdata
    dependency), and builds obstore's client without ``allow_http``: against a plain-HTTP endpoint every chunk fails
    with ``BadScheme``. When the endpoint boto3 resolves is ``http://``, this adds ``allow_http`` to litdata's obstore
    client options (process-wide; loader workers forked afterwards inherit it). HTTPS endpoints are left alone.
    """
    endpoint = s3_client(storage_options).meta.endpoint_url
    if endpoint and endpoint.lower().startswith("http://"):
        from litdata.streaming import downloader

        options = getattr(downloader, "_OBSTORE_CLIENT_OPTIONS", None)
        if isinstance(options, dict):
            options["allow_http"] = "true"
    return endpoint


class RemoteAccessError(PreparedDatasetError):
    """The object store could not be reached or refused the request (endpoint, credentials, bucket): not a damaged
    dataset, so nothing is prepared again because of it."""


def _s3_error(error: Exception, url: str) -> RemoteAccessError:
    return RemoteAccessError(f"{url}: {type(error).__name__}: {error} (check the endpoint and credentials: "
                                "AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, or storage_options)")


def read_remote(url: str, storage_options: dict[str, Any] | None = None, client: Any = None) -> bytes | None:
    """The content of the object at ``url``, or ``None`` when there is none.

    Raises:
        PreparedDatasetError: the bucket is missing or the server cannot be reached or refuses (naming ``url``).
    """
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = s3_parts(url)
    client = client or s3_client(storage_options)
    try:
        return client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
            return None
        raise _s3_error(error, url) from None
    except BotoCoreError as error:
        raise _s3_error(error, url) from None


def _remote_sizes(url: str, client: Any) -> dict[str, int]:
    """``{path relative to url: bytes}`` of every object under the prefix ``url/``."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = s3_parts(url)
    sizes = {}
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/"):
            for entry in page.get("Contents", []):
                sizes[entry["Key"][len(prefix) + 1 :]] = int(entry["Size"])
    except (ClientError, BotoCoreError) as error:
        raise _s3_error(error, url) from None
    return sizes


def _manifest_files(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{relative path: record}`` of every file a manifest lists (not the manifest itself)."""
    files = dict(manifest["files"])
    for split, entry in manifest["splits"].items():
        files[f"{split}/index.json"] = entry["index"]
        files.update({f"{split}/{name}": record for name, record in entry["chunks"].items()})
    return files


def verify_remote(url: str, storage_options: dict[str, Any] | None = None,
                  fingerprint: str | None = None) -> dict[str, Any]:
    """Check a prepared dataset in object storage before it is streamed; returns its manifest.

    ``manifest.json`` must exist (it is uploaded last: without it the upload did not finish, or lit_safe did not
    write the dataset), be a lit_safe manifest (with ``fingerprint``, when given), and every file it lists must be
    in the bucket with the size it records, and no split the manifest lacks. Two requests (one GET, one LIST);
    checksums are not compared here (the ``index.json`` of a split is, when it is opened).

    Raises:
        PreparedDatasetError: naming the URL of the manifest or of the missing or truncated file.
    """
    url = url.rstrip("/")
    client = s3_client(storage_options)
    where = f"{url}/{MANIFEST_FILE}"
    text = read_remote(where, client=client)
    if text is None:
        raise PreparedDatasetError(
            f"{where}: not found: {url} is not a finished lit_safe preparation (nothing prepared there, an upload "
            "that did not finish, or data lit_safe did not write); prepare it with lit-safe prepare and "
            "prepared_dir: s3://..."
        )
    manifest = _parse_manifest(text, where, fingerprint)
    sizes = _remote_sizes(url, client)
    for path, record in _manifest_files(manifest).items():
        if path not in sizes:
            raise PreparedDatasetError(f"{url}/{path}: missing (listed in {where})")
        if sizes[path] != int(record["bytes"]):
            raise PreparedDatasetError(f"{url}/{path}: {sizes[path]} bytes, {MANIFEST_FILE} says {record['bytes']} "
                                       "(truncated or damaged)")
    for split in SPLITS:
        if f"{split}/index.json" in sizes and split not in manifest["splits"]:
            raise PreparedDatasetError(f"{url}/{split}/index.json: a split {MANIFEST_FILE} does not list")
    return manifest


def check_remote_index(index_bytes: bytes, url: str, manifest: dict[str, Any] | None) -> None:
    """Check the ``index.json`` litdata downloaded for a remote split (``url`` names it): the serializer allowlist
    (:func:`check_index`), and, with the dataset's ``manifest``, its sha256."""
    if manifest is not None:
        split = url.rstrip("/").rsplit("/", 2)[-2]
        expected = manifest["splits"].get(split, {}).get("index", {}).get("sha256")
        if hashlib.sha256(index_bytes).hexdigest() != expected:
            raise PreparedDatasetError(f"{url}: its sha256 differs from {MANIFEST_FILE} (changed after it was "
                                       "prepared, or a stale litdata cache)")
    try:
        index = json.loads(index_bytes)
    except ValueError as error:
        raise PreparedDatasetError(f"{url}: unreadable ({error})") from None
    check_index(index, url)


def upload_prepared(directory: str | Path, url: str, storage_options: dict[str, Any] | None = None) -> None:
    """Upload a finished local preparation (verified first) to ``url`` (``s3://bucket/prefix/<name>``).

    Readers go by the manifest, so it is deleted first (a replaced preparation reads as unfinished while its files
    change), every other file is uploaded (each split's chunks before its ``index.json``), objects of an earlier
    preparation the new manifest does not list are deleted, and the manifest is uploaded last.
    """
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import BotoCoreError, ClientError

    directory, url = Path(directory), url.rstrip("/")
    verify_prepared(directory)
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    bucket, prefix = s3_parts(url)
    client = s3_client(storage_options)
    files = sorted(_manifest_files(manifest), key=lambda path: (path.count("/") == 0, path.endswith("index.json"),
                                                               path))
    try:
        client.delete_object(Bucket=bucket, Key=f"{prefix}/{MANIFEST_FILE}")
        for path in files:
            client.upload_file(str(directory / path), bucket, f"{prefix}/{path}")
        for stale in sorted(set(_remote_sizes(url, client)) - set(files) - {MANIFEST_FILE}):
            client.delete_object(Bucket=bucket, Key=f"{prefix}/{stale}")
        client.upload_file(str(directory / MANIFEST_FILE), bucket, f"{prefix}/{MANIFEST_FILE}")
    except (ClientError, BotoCoreError, S3UploadFailedError) as error:
        raise _s3_error(error, url) from None


# ---------------------------------------------------------------------------------------------------- staging
def staging_dir(final_dir: Path) -> Path:
    """A fresh hidden directory beside ``final_dir`` (same filesystem, so the final rename is atomic), with a record
    of the process that owns it (host, pid, start time) so that a later preparation can tell it was abandoned."""
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}-", dir=final_dir.parent))
    _write_owner(tmp)
    return tmp


def unclaim_staging(directory: Path) -> None:
    """Remove the owner record of a finished staging directory, before it is renamed to its final name."""
    (directory / OWNER_FILE).unlink(missing_ok=True)


def _process_start(pid: int) -> str | None:
    """The start time of a process in clock ticks since boot (Linux), to tell a reused pid apart; else ``None``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _where() -> dict[str, str | None]:
    """Where this process's pids mean something: host, boot and pid namespace (containers sharing a host name have
    their own pids)."""

    def read(path: str, link: bool = False) -> str | None:
        try:
            return os.readlink(path) if link else Path(path).read_text().strip()
        except OSError:
            return None

    return {"host": socket.gethostname(), "boot": read("/proc/sys/kernel/random/boot_id"),
            "pidns": read("/proc/self/ns/pid", link=True)}


def _write_owner(directory: Path) -> None:
    owner = {**_where(), "pid": os.getpid(), "started": _process_start(os.getpid())}
    (directory / OWNER_FILE).write_text(json.dumps(owner) + "\n")


def _owner_alive(owner: Any) -> bool | None:
    """Whether the process a staging directory records is still running; ``None`` if that cannot be told (another
    host, boot or pid namespace, or an unreadable record)."""
    try:
        pid, started = int(owner["pid"]), owner.get("started")
        here = _where()
        if any(owner.get(key) != value for key, value in here.items() if key == "host" or key in owner):
            return None
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, under another user
        return True
    return started is None or _process_start(pid) in (None, started)


def _last_change(directory: Path) -> float:
    newest = directory.stat().st_mtime
    for root, dirs, files in os.walk(directory):
        for name in dirs + files:
            try:
                newest = max(newest, os.stat(os.path.join(root, name)).st_mtime)
            except OSError:
                pass
    return newest


def clean_stale_staging(final_dir: Path) -> list[Path]:
    """Remove the staging directories of preparations that were killed, beside ``final_dir``; returns them.

    A staging directory (``.<name>-*``) is abandoned when the process it records ran on this host and is gone (or
    its pid now belongs to another process), when it records a process on another host and nothing in it changed for
    :data:`FOREIGN_STALE_AFTER_S`, or, for one of ``final_dir`` without a record (older lit_safe versions), for
    :data:`LEGACY_STALE_AFTER_S`. A preparation still running is never touched.
    """
    root = final_dir.parent
    if not root.is_dir():
        return []
    removed = []
    now = time.time()
    for entry in sorted(root.iterdir()):
        if not entry.name.startswith(".") or entry.is_symlink() or not entry.is_dir():
            continue
        owner_path = entry / OWNER_FILE
        if owner_path.is_file():
            try:
                owner = json.loads(owner_path.read_text())
            except (OSError, ValueError):
                owner = None
            alive = _owner_alive(owner)
            stale = alive is False or (alive is None and now - _last_change(entry) > FOREIGN_STALE_AFTER_S)
        else:
            stale = entry.name.startswith(f".{final_dir.name}-") and now - _last_change(entry) > LEGACY_STALE_AFTER_S
        if stale:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


# ------------------------------------------------------------------------------------------- streaming, workers
@dataclass
class Block:
    """An ordered piece of one source split: what one preparation worker reads, checks and encodes at a time.

    Attributes:
        number: its place among the blocks of its source split, from 0.
        position: the position in the source split of its first row (rows are numbered from 0, blank lines not
            counted), so that items keep their row's position whatever the cut.
        rows: ``(location, row)``; with ``lines``, ``(location, raw JSONL line)``, decoded by the worker
            (:func:`~lit_safe.data_modules.sources.parse_line`).
        lines: whether ``rows`` holds undecoded JSONL lines.
    """

    number: int
    position: int
    rows: list[tuple[str, Any]]
    lines: bool = False


def cut_blocks(rows: Iterable[tuple[str, Any]], size: int, lines: bool = False) -> Iterator[Block]:
    """``rows`` (``(location, row or raw line)``, in source order) cut into :class:`Block` s of ``size`` rows, read
    as they are needed."""
    if size < 1:
        raise ValueError(f"block size must be at least 1, got {size}")
    it = iter(rows)
    number = position = 0
    while chunk := list(itertools.islice(it, size)):
        yield Block(number, position, chunk, lines)
        number, position = number + 1, position + len(chunk)


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity, which schedulers and containers set)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


_WORKER_STATE: Any = None  # in a worker process: the state Workers was given (inherited through fork)


def _adopt_state(state: Any) -> None:
    global _WORKER_STATE
    _WORKER_STATE = state


def _call_with_state(function: Callable[[Any, Any], Any], task: Any) -> Any:
    return function(_WORKER_STATE, task)


class WorkerDied(RuntimeError):
    """A preparation worker process ended without an answer (killed, e.g. by the out-of-memory killer)."""


class Workers:
    """``function(state, task)`` over an ordered stream of tasks, answers in task order, in ``processes`` forked
    worker processes (``processes`` <= 1: in this process).

    Workers are forked, so they start from this process's memory as it is when the first task is submitted: ``state``
    (a data module, its tokenizer and view) is neither pickled nor rebuilt, and may hold closures; only tasks and
    answers travel, pickled. At most ``2 * processes`` tasks are in flight, so that memory holds a bounded number of
    blocks whatever the size of the input, and the pool is started only when a second task is waiting (a single
    block is done here). Tokenizers' own thread pool is turned off in the workers (``TOKENIZERS_PARALLELISM=false``,
    set before they fork): each worker is one core. Where ``fork`` does not exist (Windows), tasks run here.

    Args:
        processes: worker processes; 0 or 1 runs every task in this process.
        state: what every task function receives first.
    """

    def __init__(self, processes: int, state: Any) -> None:
        self.processes = processes if processes > 1 and "fork" in multiprocessing.get_all_start_methods() else 1
        self.state = state
        self._pool: ProcessPoolExecutor | None = None
        self._environment: str | None = None

    def map(self, function: Callable[[Any, Any], Any], tasks: Iterable[Any]) -> Iterator[Any]:
        """``function(state, task)`` for every task, in order. ``function`` must be a module-level function (it is
        sent to the workers by name)."""
        tasks = iter(tasks)
        if self.processes == 1:
            for task in tasks:
                yield function(self.state, task)
            return
        window: deque[Future] = deque()
        first = next(tasks, None)
        if first is None:
            return
        second = next(tasks, None)
        if second is None and self._pool is None:  # one task: not worth starting processes
            yield function(self.state, first)
            return
        pending = itertools.chain([first], [] if second is None else [second], tasks)
        pool = self._start()
        for task in pending:
            window.append(pool.submit(_call_with_state, function, task))
            if len(window) >= 2 * self.processes:
                yield self._answer(window.popleft())
        while window:
            yield self._answer(window.popleft())

    def _start(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._environment = os.environ.get("TOKENIZERS_PARALLELISM")
            os.environ["TOKENIZERS_PARALLELISM"] = "false"
            self._pool = ProcessPoolExecutor(self.processes, mp_context=multiprocessing.get_context("fork"),
                                             initializer=_adopt_state, initargs=(self.state,))
        return self._pool

    @staticmethod
    def _answer(future: Future) -> Any:
        try:
            return future.result()
        except BrokenProcessPool:
            raise WorkerDied("a preparation worker process died (killed, or out of memory?); fewer prepare_workers "
                             "need less memory") from None

    def close(self, abandon: bool = False) -> None:
        """Stop the worker processes and restore the environment; ``abandon``: kill them at once (after an error or
        an interrupt, a task still running must not go on)."""
        if self._pool is not None:
            if abandon:
                for process in list((self._pool._processes or {}).values()):
                    process.kill()
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
            if self._environment is None:
                os.environ.pop("TOKENIZERS_PARALLELISM", None)
            else:
                os.environ["TOKENIZERS_PARALLELISM"] = self._environment

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, kind: Any, *exc: Any) -> None:
        self.close(abandon=kind is not None)


# ---------------------------------------------------------------------------------------- digests, counts, merging
DIGEST_BYTES = 16


def digest_array(parts: Iterable[bytes]) -> np.ndarray:
    """Concatenated 16-byte digests as a ``(n,)`` array of ``V16`` (sortable, compared as bytes)."""
    blob = b"".join(parts)
    return np.frombuffer(blob, dtype=f"V{DIGEST_BYTES}") if blob else np.empty(0, dtype=f"V{DIGEST_BYTES}")


def first_occurrences(digests: np.ndarray) -> np.ndarray:
    """``bool (n,)``: True where a digest appears for the first time in ``digests`` (``V16``, in order).

    A stable sort of the digests (as two 64-bit words) puts equal ones next to each other in their original order; the
    first of each run is the first occurrence. About a second per million digests."""
    first = np.zeros(len(digests), dtype=bool)
    if len(digests):
        words = np.ascontiguousarray(digests).view(np.uint64).reshape(-1, 2)
        order = np.lexsort((words[:, 1], words[:, 0]))  # stable: equal digests keep their order
        ranked = words[order]
        starts = np.ones(len(order), dtype=bool)
        starts[1:] = (ranked[1:] != ranked[:-1]).any(axis=1)
        first[order[starts]] = True
    return first


def add_counts(total: dict[str, Any] | None, part: dict[str, Any] | None,
               fixed: tuple[str, ...] = ()) -> dict[str, Any] | None:
    """The sum of two label summaries (:meth:`~lit_safe.data_modules.views.View.label_summary`): integers add, lists
    of integers add element by element; the keys in ``fixed`` (what describes the labels, e.g. how many severity
    levels there are) and anything else (category names) must be equal."""
    if total is None or part is None:
        return part if total is None else total
    out = dict(total)
    for key, value in part.items():
        mine = out.get(key)
        if key not in out:
            out[key] = value
        elif key not in fixed and _is_count(value) and _is_count(mine):
            out[key] = int(mine) + int(value)
        elif (key not in fixed and isinstance(value, list) and isinstance(mine, list) and len(value) == len(mine)
              and all(map(_is_count, (*value, *mine)))):
            out[key] = [int(a) + int(b) for a, b in zip(mine, value)]
        elif mine != value:
            raise ValueError(f"label summaries disagree on {key!r}: {mine!r} and {value!r}")
    return out


def _is_count(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool | np.bool_)


def add_report(total: SplitReport, part: SplitReport) -> None:
    """Add ``part``'s counts to ``total`` (notes counted as 0 stay listed, as a view reports them)."""
    total.rows_read += part.rows_read
    total.kept += part.kept
    for mine, theirs in ((total.dropped, part.dropped), (total.notes, part.notes)):
        for key, value in theirs.items():
            mine[key] += value


def report_from_dict(data: dict[str, Any]) -> SplitReport:
    """A :class:`SplitReport` from :meth:`SplitReport.to_dict`."""
    split = SplitReport(int(data["rows_read"]), int(data["kept"]))
    split.dropped.update(data["dropped"])
    split.notes.update(data["notes"])
    return split


SHARD_FILE = "shard.json"  # in a finished shard of a preparation across nodes: what it holds


def shard_name(rank: int, nodes: int) -> str:
    """The directory name of node ``rank``'s shard among ``nodes``."""
    return f"node-{rank}-of-{nodes}"


def read_shard(directory: Path, fingerprint: str, nodes: int) -> dict[str, Any] | None:
    """The record of a finished shard of this preparation (its ``shard.json``), or ``None`` when there is none or it is
    another preparation's."""
    try:
        record = json.loads((directory / SHARD_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("fingerprint") != fingerprint or record.get("nodes") != nodes:
        return None
    return record


def merge_shards(shards: list[Path], out: Path) -> dict[str, int]:
    """Merge the split directories of finished shards (in node order) into ``out``: every chunk file is hard-linked
    (copied where links are not possible), and each split's ``index.json`` lists the shards' chunks in node order, so
    that items stream in the order one node would have written them. Returns the items per split.

    Raises:
        PreparedDatasetError: two shards that stored items differently (their litdata configs differ).
    """
    counts: dict[str, int] = {}
    for split in SPLITS:
        chunks: list[dict[str, Any]] = []
        config: dict[str, Any] | None = None
        for shard in shards:
            index_path = shard / split / "index.json"
            if not index_path.is_file():
                continue  # no item of this split in this shard
            index = json.loads(index_path.read_text())
            check_index(index, str(index_path))
            if config is None:
                config = index["config"]
            elif _config_body(config) != _config_body(index["config"]):
                raise PreparedDatasetError(f"{index_path}: its items are stored unlike those of the shard before it")
            (out / split).mkdir(parents=True, exist_ok=True)
            for chunk in index["chunks"]:
                source, target = shard / split / chunk["filename"], out / split / chunk["filename"]
                try:
                    os.link(source, target)
                except OSError:
                    shutil.copyfile(source, target)
            chunks += index["chunks"]
        if config is not None:
            merged = {"chunks": chunks, "config": config, "updated_at": str(time.time())}
            (out / split / "index.json").write_text(json.dumps(merged, sort_keys=True))
            counts[split] = sum(int(chunk["chunk_size"]) for chunk in chunks)
    return counts
