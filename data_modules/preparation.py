"""Preparation: validated, tokenised rows written as litdata chunks, with a report of what was kept and dropped.

A prepared dataset is a directory ``<prepared_dir>/<dataset>-<view>-<fingerprint>/`` holding one litdata directory
per split (``train/``, ``val/``, ``test/``, each with ``index.json`` and ``chunk-*.bin``), ``report.json`` and
``meta.json``, and ``manifest.json``. The fingerprint hashes everything that changes the tokens (source, revision,
config, view, tokenizer, template, max length, split rule, seed), so a changed setting prepares anew and an unchanged
one is reused. Writing goes to a hidden staging directory (``.<name>-*``, with a record of its owner process) that is
renamed at the end, so an interrupted preparation never leaves a half-written dataset behind; the staging directory
of a preparation that was killed is removed by the next preparation (see :func:`clean_stale_staging`).

Loading a prepared dataset never runs code from it. lit_safe stores items only with litdata's plain-data serializers
(integers, floats, booleans, strings, bytes, numpy arrays; never ``pickle``) and checks that before writing
(:func:`write_split`). ``manifest.json``, written last, lists per split the ``index.json`` and every chunk file with
its size and sha256, plus the fingerprint. :func:`verify_prepared` refuses a directory without it ("not written by
lit_safe"), an ``index.json`` that asks for any other deserializer (:func:`check_index`: a crafted ``pickle`` item
would run code when read), and a missing, truncated or altered file, naming it. Sizes and the small JSON files are
always checked; chunk checksums when the chunks total at most :data:`CHECKSUM_MAX_BYTES` (reading a large video
dataset in full at every start would cost minutes; pass ``checksums=True`` to force it). The allowlist, not the
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
import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from litdata.streaming.writer import BinaryWriter
from litdata.utilities.env import _DistributedEnv

from lit_safe.data_modules.sources import DataValidationError

REPORT_FILE = "report.json"
META_FILE = "meta.json"
MANIFEST_FILE = "manifest.json"
MANIFEST_VERSION = 1
OWNER_FILE = ".lit_safe_staging.json"  # inside a staging directory: which process writes it
CHECKSUM_MAX_BYTES = 1 << 30  # chunk sha256 is verified at load time up to this many chunk bytes (about 1 s here)
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
        if count == 1:
            _check_item_formats(writer._data_format, item, directory)
    if count == 0:
        raise EmptySplitError(f"no rows left to write to {directory}: every row was dropped (see the report)")
    writer.done()
    writer.merge()
    return count


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
    (tmp_dir / OWNER_FILE).unlink(missing_ok=True)
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
