"""The DataModule every text dataset of lit_safe shares: source -> validate -> view -> litdata chunks -> streaming.

A dataset subclass says how its rows look (:meth:`PreparedDataModule.check_row`, :meth:`~PreparedDataModule.row_notes`),
which views it offers (:meth:`~PreparedDataModule.make_view`) and, optionally, how to generate synthetic rows. This
class does the rest, identically for every dataset:

- sources: ``synthetic``, a hub id (pinned ``revision`` and ``subset``), a local JSON/JSONL/parquet file, a directory
  of split files, or an already prepared litdata directory or object-store URL (``s3://...``);
- validation of every row before anything is written: an error names the file, the row and the field, or, with
  ``on_bad_row: skip``, the row is dropped and counted;
- splits: the source's own, or carved from the training split by a seeded hash of the *prompt* (held-out rows never
  share a prompt with training rows);
- preparation into litdata chunks, reused by fingerprint, published atomically, with a printed ``report.json`` and a
  ``manifest.json`` of every file's size and checksum; a prepared directory is verified before it is streamed (never
  a pickled item, never a truncated chunk; a damaged reused preparation is prepared again, see
  :func:`~lit_safe.data_modules.preparation.verify_prepared`);
- preparation streams, in two passes over each source split cut into blocks (``prepare_block_rows`` rows), each
  block done by one of ``prepare_workers`` forked processes (:class:`~lit_safe.data_modules.preparation.Workers`):
  the first reads, checks and counts every row, keeping only 16-byte digests (of each row, of each view unit, of
  prompts where a given held-out split is compared with training), so that invalid rows are named before anything
  is written and the split's repeats are known; the second encodes each block less its repeats and the items are
  written in row order as they come. Memory holds a few blocks per worker, one chunk of items per split and the
  digests, whatever the size of the source; the items, their order and the report are the same for any number of
  workers and any block size. Across nodes (``prepare_nodes``): every node does the first pass, encodes its share of
  the blocks into a shard, and the last to finish merges the shards (:meth:`~PreparedDataModule._prepare_shard`);
- object storage: ``prepared_dir: s3://bucket/prefix`` prepares locally and uploads, manifest last (reused by
  fingerprint when the bucket already holds it); an ``s3://`` source is streamed once its manifest and file sizes
  check out (:func:`~lit_safe.data_modules.preparation.verify_remote`); ``storage_options`` or the ``AWS_*``
  environment variables say where the server is;
- loading with :class:`~lit_safe.data_modules.streaming.LengthGroupedLoader` (length grouping, exact resume);
- ``predict_file``: ``lit-safe predict`` on a JSONL of ``{"prompt", "response"}`` lines, one output per line.

A view (:class:`~lit_safe.data_modules.views.View`) turns validated rows into items and items into batches.

Extension points for datasets with rows or a layout of their own (SafeSora's ``config-<split>.json.gz`` files and
videos; PKU-SafeRLHF's other preference formats): :meth:`PreparedDataModule.read_row` (a source row as the views
read it, e.g. normalised from another format, and its problems), :meth:`~PreparedDataModule.inspect_source` (a look
at the whole source before any row is validated: format detection, labels the view needs),
:meth:`~PreparedDataModule.split_files` (which local file holds each source split),
:meth:`~PreparedDataModule.view_settings` (what else changes the prepared items),
:meth:`~PreparedDataModule.item_transform` (applied to streamed items in the loader workers), and for
``predict_file`` :attr:`~PreparedDataModule.prediction_fields`, :meth:`~PreparedDataModule.check_prediction`,
:meth:`~PreparedDataModule.prediction_items` and :meth:`~PreparedDataModule.collate_predictions`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from numbers import Integral
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from litdata import StreamingDataset

from lit_safe.data_modules import sources
from lit_safe.data_modules.preparation import (
    META_FILE,
    REPORT_FILE,
    SHARD_FILE,
    SPLITS,
    Block,
    EmptySplitError,
    PreparedDatasetError,
    PrepareReport,
    RemoteAccessError,
    SplitReport,
    SplitWriter,
    Workers,
    add_counts,
    add_report,
    allow_plain_http,
    available_cores,
    check_remote_index,
    clean_stale_staging,
    cut_blocks,
    digest_array,
    fingerprint,
    first_occurrences,
    is_prepared,
    is_remote,
    merge_shards,
    parse_report,
    publish,
    read_remote,
    read_shard,
    report_from_dict,
    s3_parts,
    shard_name,
    staging_dir,
    unclaim_staging,
    upload_prepared,
    verify_prepared,
    verify_remote,
)
from lit_safe.data_modules.schemas import not_an_object, row_digest, text_digest
from lit_safe.data_modules.sources import DataValidationError
from lit_safe.data_modules.streaming import LengthGroupedLoader
from lit_safe.data_modules.views import Units, Valid, View, int_fields, text_batch
from lit_safe.models.text import SAFE_RLHF_TEMPLATE, check_template, resolve_template, template_setting
from lit_safe.models.tokenizer import load_tokenizer, tokenizer_fingerprint

MAX_LISTED_PROBLEMS = 10
Row = tuple[str, dict[str, Any]]  # (location, row) as read from the source
PREPARE_SPREAD = ("prepare_workers", "prepare_nodes", "prepare_node_rank")  # change where work runs, not its result


def prompt_bucket(prompt: str, seed: int) -> float:
    """A deterministic number in [0, 1) per prompt: rows with the same prompt always land in the same split."""
    digest = hashlib.sha256(f"{seed}:{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def line_number(location: str) -> int:
    """The line number ending a row's location (``"<file>: line 12"`` -> 12)."""
    return int(location.rsplit(" ", 1)[1])


def check_prediction_row(row: Any) -> list[tuple[str, str]]:
    """Check one line of a prediction file: a JSON object with string ``prompt`` and ``response``."""
    if not isinstance(row, dict):
        return not_an_object(row)
    problems = []
    for name in ("prompt", "response"):
        if row.get(name) is None:
            problems.append((name, "missing required field"))
        elif not isinstance(row[name], str):
            problems.append((name, f"expected str, got {type(row[name]).__name__} {row[name]!r:.40}"))
    return problems


def split_origins(hp: Any, carve_test: bool, val_cut: float, test_cut: float) -> dict[str, str]:
    """Where each split's rows come from and why, said in the prepare report (a carved held-out split takes rows out
    of training, which a user must notice)."""
    carved = f"prompts whose seeded hash (seed {hp.seed}) falls in"
    origins = {"train": f"source split {hp.train_split!r}"}
    if val_cut > 0 or carve_test:
        origins["train"] += ", less the prompts carved for the held-out splits"
    if hp.val_split is not None:
        origins["val"] = f"source split {hp.val_split!r}"
    elif val_cut > 0:
        origins["val"] = (f"carved from {hp.train_split!r}: {carved} the first {val_cut:.1%} (val_split is not set, "
                          f"val_fraction {hp.val_fraction})")
    if carve_test:
        origins["test"] = (f"carved from {hp.train_split!r}: {carved} the next {test_cut - val_cut:.1%} (the source "
                           f"has no split {hp.test_split!r}; test_fraction {hp.test_fraction})")
    elif hp.test_split is not None:
        origins["test"] = f"source split {hp.test_split!r}"
    return origins


def _invalid_rows(problems: list[str], n_problems: int, source: Any) -> DataValidationError:
    """The error naming the first invalid rows (file, row, field) of a source under ``on_bad_row: error``."""
    more = f"\n  ... and {n_problems - len(problems)} more" if n_problems > len(problems) else ""
    return DataValidationError(f"{n_problems} invalid row(s) in {source}:\n  " + "\n  ".join(problems) + more
                               + "\n(set on_bad_row: skip to drop and count them instead)")


@dataclass
class SourcePass:
    """One source split read by preparation: its name, the rule that sends its rows to output splits (``("carve",
    val_cut, test_cut)``: by the seeded prompt hash; ``("split", name)``: all to one), and, once the first pass has
    read it, per block and output split ``(units before the block, units in it)``."""

    split: str
    rule: tuple
    units: list[dict[str, tuple[int, int]]] = field(default_factory=list)


@dataclass
class ScanPart:
    """What the first pass found in one block for one output split: counts and 16-byte digests (of its valid rows,
    of their prompts where asked, and of the units that carry one, with their numbers in the block)."""

    report: SplitReport = field(default_factory=SplitReport)
    rows: list[bytes] = field(default_factory=list)
    prompts: list[bytes] = field(default_factory=list)
    units: int = 0
    keyed: list[int] = field(default_factory=list)
    keys: list[bytes] = field(default_factory=list)


@dataclass
class BlockScan:
    """The first pass's answer for one block: its parts per output split and its invalid rows (the first ten named)."""

    splits: dict[str, ScanPart]
    problems: list[str]
    n_problems: int


class SplitScan:
    """What the first pass keeps of one output split: its counts, and digests until :meth:`finish` has turned them
    into the sorted numbers of its repeated units (the split's units numbered in row order)."""

    def __init__(self) -> None:
        self.report = SplitReport()
        self.units = 0
        self.rows: list[bytes] = []
        self.prompts: list[bytes] = []
        self.keyed: list[np.ndarray] = []
        self.keys: list[bytes] = []
        self.repeats = np.empty(0, dtype=np.int64)
        self.done = False

    def add(self, part: ScanPart) -> None:
        add_report(self.report, part.report)
        self.rows.append(b"".join(part.rows))
        self.prompts.append(b"".join(part.prompts))
        if part.keyed:
            self.keyed.append(np.asarray(part.keyed, dtype=np.int64) + self.units)
            self.keys.append(b"".join(part.keys))
        self.units += part.units

    def finish(self, repeat_reason: str) -> None:
        """Note the rows repeated whole (``duplicate_rows``) and drop every unit whose digest an earlier unit of the
        split had (counted as ``repeat_reason``)."""
        rows = digest_array(self.rows)
        repeated_rows = len(rows) - int(first_occurrences(rows).sum())
        if repeated_rows:
            self.report.notes["duplicate_rows"] += repeated_rows
        keys = digest_array(self.keys)
        if len(keys):
            self.repeats = np.concatenate(self.keyed)[~first_occurrences(keys)]
            if len(self.repeats):
                self.report.dropped[repeat_reason] += len(self.repeats)
        self.rows, self.keyed, self.keys, self.done = [], [], [], True


def _scan_block(dm: PreparedDataModule, task: tuple[Block, tuple, set[str]]) -> BlockScan:
    """First pass over one block (in a worker): rows decoded and checked, sent to their output split, counted, and
    digested (prompts only for the splits in the task's set)."""
    block, rule, prompt_splits = task
    parts: dict[str, ScanPart] = {}
    problems: list[str] = []
    n_problems = 0
    for where, raw in block.rows:
        row, found = dm.read_row(sources.parse_line(raw) if block.lines else raw)
        split = dm._split_of(rule, row)
        part = parts.get(split)
        if part is None:
            part = parts[split] = ScanPart()
        part.report.rows_read += 1
        if found:
            n_problems += 1
            if len(problems) < MAX_LISTED_PROBLEMS:
                problems.append(f"{where}: field '{found[0][0]}': {found[0][1]}")
            part.report.dropped[f"invalid:{found[0][0]}"] += 1
            continue
        for note in dm.row_notes(row):
            part.report.notes[note] += 1
        part.rows.append(row_digest(row))
        if split in prompt_splits and dm.prompt_field in row:
            part.prompts.append(text_digest(str(row[dm.prompt_field])))
        for digest, _ in dm.view.units(row, part.report):
            if digest is not None:
                part.keyed.append(part.units)
                part.keys.append(digest)
            part.units += 1
    return BlockScan(parts, problems, n_problems)


def _encode_block(dm: PreparedDataModule,
                  task: tuple[Block, tuple, dict[str, np.ndarray]]) -> dict[str, tuple[list, SplitReport, Any]]:
    """Second pass over one block (in a worker): per output split, the items of its valid rows' units less the
    repeats the first pass found (numbered within the block), what encoding counted, and the view's label summary."""
    block, rule, repeats = task
    skip = {split: set(numbers.tolist()) for split, numbers in repeats.items()}
    counted_before = SplitReport()  # the first pass counted what units() drops
    units: dict[str, Units] = {}
    numbers: Counter = Counter()
    for offset, (_, raw) in enumerate(block.rows):
        row, found = dm.read_row(sources.parse_line(raw) if block.lines else raw)
        if found:
            continue
        split = dm._split_of(rule, row)
        for k, (_, value) in enumerate(dm.view.units(row, counted_before)):
            number = numbers[split]
            numbers[split] += 1
            if number not in skip.get(split, ()):
                units.setdefault(split, []).append((block.position + offset, k, value))
    out = {}
    for split, split_units in units.items():
        report = SplitReport()
        items = list(dm.view.encode_units(split_units, dm.tokenizer, dm.template, dm.hparams.max_length, report))
        out[split] = (items, report, dm.view.label_summary())
    return out


class PreparedDataModule(LightningDataModule, ABC):
    """Base class of the text DataModules (see the module docstring). Subclasses define ``dataset_name``,
    :meth:`check_row`, :meth:`make_view` and an ``__init__`` that lists only what is their own (their source,
    views, other defaults) and passes the rest on as ``**kwargs``: LightningCLI shows this class's arguments, with
    these defaults and descriptions, under the subclass (``lit-safe fit --print_config`` lists them all).

    Args:
        tokenizer: tokenizer preset, hub id or path (a diffusers checkpoint: its ``tokenizer/``); under ``lit-safe``
            leave it unset to take the model's (its ``tokenizer`` or ``backbone``); a tokenizer whose ids differ from
            the model's is refused before anything is prepared. Required when the DataModule is built in Python.
        source: where the rows are (see the subclass).
        view: which items to build from a row (``self.views`` lists them).
        subset: the hub config name (``None``: the default).
        revision: the hub revision to pin.
        train_split: the source split to train on.
        val_split: the source split to validate on; ``None`` carves ``val_fraction`` of the training prompts.
        test_split: the source split to test on; when the source has no such split (a single file), ``test_fraction``
            of the training prompts is carved instead; ``None`` for no test split.
        val_fraction: share of training prompts held out for validation when ``val_split`` is ``None`` (0: no
            validation).
        test_fraction: share of training prompts held out for testing when the source has no test split.
        synthetic_rows: training rows of the synthetic source (its test split has one eighth as many); datasets
            without one ignore it.
        prompt_template: how a conversation reads: a template containing ``{prompt}``, where the user prompt goes
            (``safe_rlhf`` names the default, Safe RLHF's), or ``chat``: the tokenizer's own chat template
            (``apply_chat_template``; turns of conversational rows rendered as turns, the reply ended by the
            template's end-of-turn instead of EOS, the prompt masked exactly; see :mod:`lit_safe.models.text`).
            Encoders of the moderation view read a sentence pair instead.
        max_length: longest tokenised sequence (prompt + response + EOS, or the chat template's end-of-turn);
            longer responses are cut before that end.
        batch_size: items (pairs, responses, prompts) per training batch (per device).
        eval_batch_size: per validation/test/predict batch; defaults to ``batch_size``.
        num_workers: litdata loader workers (streaming batches; preparation has its own, ``prepare_workers``).
        group_size: batches per length-grouping pool (1 turns grouping off).
        pad_to_multiple_of: round padded lengths up (8 helps tensor cores on GPUs).
        pack_pairs: (pair views) one row per pair with the shared prefix (the prompt; for tree pairs also the shared
            start of the responses) computed once, instead of two padded rows
            (:class:`~lit_safe.data_modules.pku_saferlhf.PairView`): the same scores and gradients from fewer tokens
            with almost no padding. On a CPU it pays (small preset: 1.4x the pairs/s of grouped unpacked pairs,
            padding 13% -> 0.8%); on an H200 with a 1B model it paid at 64 pairs per GPU (+10%, less memory) but not
            at 16 (the custom mask rules out flash attention), so it is off by default (``benchmarks/results/``).
            Its ``(B, 1, L, L)`` mask grows with the square of the length; it does not combine with
            ``loss_type: token``.
        on_bad_row: ``error`` stops at invalid rows and names them; ``skip`` drops and counts them.
        prepare_workers: processes that prepare the data (decode, check, tokenise), forked from this one; ``None``:
            one per core this process may use; 0 or 1: in this process. Preparation streams: memory holds a few
            blocks of rows per worker, one chunk of items per split and 16-byte digests of the rows, whatever the
            size of the source. The prepared items are the same, in the same order and bytes, for any number of
            workers (the fingerprint does not include it, so a preparation is reused whatever the workers).
        prepare_nodes: nodes that prepare one dataset together (a ``prepared_dir`` every node sees, e.g. NFS or
            Lustre): each node reads and checks every row (the cheap first pass), encodes its share of the blocks
            into ``<prepared>.shards/node-<rank>-of-<nodes>/``, and the node that finishes last merges the shards
            into the one prepared dataset, with one report and manifest (the same items as one node prepares). Run
            ``lit-safe prepare --config C.yaml --data.init_args.prepare_nodes N --data.init_args.prepare_node_rank
            K`` on node ``K`` of ``N``, then train.
        prepare_node_rank: which node this is, from 0 (with ``prepare_nodes`` > 1).
        prepared_dir: where prepared datasets are written (default ``$LIT_SAFE_CACHE/prepared`` or
            ``~/.cache/lit_safe/prepared``), or ``s3://bucket/prefix``: prepared locally (staged under
            ``$LIT_SAFE_CACHE/uploads``), uploaded, and streamed from there.
        predict_file: a JSONL of ``{"prompt": ..., "response": ...}`` lines (video views: ``{"prompt", "video_path"}``)
            that ``lit-safe predict`` scores or classifies, one output line per input line (each carries the
            input's ``line`` number); ``None`` predicts on the test split.
        seed: seeds the split carving, the synthetic data and the shuffling.
        storage_options: for ``s3://`` locations: boto3 client arguments (``endpoint_url``, ``region_name``,
            ``aws_access_key_id``...) passed to litdata's ``StreamingDataset`` and to the uploader; ``None``: boto3's
            own settings (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
            ``AWS_DEFAULT_REGION``, ``~/.aws``). Not saved with the hyperparameters (keep secrets in the environment:
            the CLI still writes its config, this argument included, beside the run).
    """

    dataset_name = "dataset"  # names the prepared directories: <dataset_name>-<view>-<fingerprint>
    views: tuple[str, ...] = ()
    has_synthetic = False
    prompt_field = "prompt"  # the row field whose hash carves held-out splits (SafeSora: prompt_text)
    format_version = 3  # of the prepared layout; 2: item 'row' is the position in the source split; 3: manifest.json
    prepare_block_rows = 512  # rows a preparation worker takes at a time (the items do not depend on it)

    def __init__(
        self,
        *,
        tokenizer: str | None = None,
        source: str,
        view: str,
        subset: str | None = None,
        revision: str | None = None,
        train_split: str = "train",
        val_split: str | None = None,
        test_split: str | None = "test",
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
        synthetic_rows: int = 0,
        prompt_template: str = SAFE_RLHF_TEMPLATE,
        max_length: int = 512,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        group_size: int = 64,
        pad_to_multiple_of: int = 1,
        pack_pairs: bool = False,
        on_bad_row: Literal["error", "skip"] = "error",
        prepare_workers: int | None = None,
        prepare_nodes: int = 1,
        prepare_node_rank: int = 0,
        prepared_dir: str | None = None,
        predict_file: str | None = None,
        seed: int = 42,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if view not in self.views:
            raise ValueError(f"unknown view {view!r} for {type(self).__name__}; views: {list(self.views)}")
        if on_bad_row not in ("error", "skip"):
            raise ValueError(f"on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")
        if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
            raise ValueError(f"val_fraction {val_fraction} and test_fraction {test_fraction} must leave training rows")
        if max_length < 2:
            raise ValueError(f"max_length must be at least 2, got {max_length}")
        for name, value, least in (("batch_size", batch_size, 1), ("eval_batch_size", eval_batch_size, 1),
                                   ("num_workers", num_workers, 0), ("group_size", group_size, 1),
                                   ("pad_to_multiple_of", pad_to_multiple_of, 1),
                                   ("prepare_workers", prepare_workers, 0), ("prepare_nodes", prepare_nodes, 1),
                                   ("prepare_node_rank", prepare_node_rank, 0)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, Integral) or value < least):
                raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
        if prepare_node_rank >= prepare_nodes:
            raise ValueError(f"prepare_node_rank {prepare_node_rank} is not one of the {prepare_nodes} nodes (0 to "
                             f"{prepare_nodes - 1})")
        resolve_template(prompt_template)  # fails early on a template without {prompt}
        if storage_options is not None and not isinstance(storage_options, dict):
            raise ValueError(f"storage_options must be a mapping of boto3 client arguments, got {storage_options!r}")
        self.save_hyperparameters(ignore=["storage_options"])  # may hold credentials: kept out of checkpoints
        self.storage_options = dict(storage_options) if storage_options else None
        if tokenizer is None:
            raise ValueError(f"{type(self).__name__}: tokenizer is not set (lit-safe takes the model's; in Python pass "
                             "the model's tokenizer name)")
        self.tokenizer = load_tokenizer(tokenizer)
        self.template = check_template(prompt_template, self.tokenizer)  # chat: the tokenizer must have one
        self.view = self.make_view(view)
        self.eval_batch_size = eval_batch_size or batch_size
        cache = Path(os.environ.get("LIT_SAFE_CACHE", "~/.cache/lit_safe")).expanduser()
        root = prepared_dir or cache / "prepared"
        self.prepared_url: str | None = None  # prepared_dir in object storage
        if is_remote(root):
            self.prepared_url = str(root).rstrip("/")
            bucket, prefix = s3_parts(self.prepared_url)  # only s3:// is written to; fails early otherwise
            self.prepared_root = cache / "uploads" / bucket / prefix  # where preparations are staged for upload
            self.prepare_data_per_node = False  # one upload serves every node: global rank 0 prepares
        else:
            self.prepared_root = Path(root).expanduser()
        self.datasets: dict[str, StreamingDataset] = {}
        self.report: PrepareReport | None = None
        self._verified: set[str] = set()  # prepared locations checked by verify_prepared/verify_remote here
        self._manifests: dict[str, dict[str, Any]] = {}  # s3:// location -> its verified manifest

    # ------------------------------------------------------------------------------------- what subclasses define
    @abstractmethod
    def make_view(self, name: str) -> View:
        """The view object for ``name`` (one of ``self.views``)."""

    @abstractmethod
    def check_row(self, row: Any) -> list[tuple[str, str]]:
        """Schema problems of one row as ``[(field, message)]``; empty when valid."""

    def row_notes(self, row: dict[str, Any]) -> list[str]:
        """Label disagreements of a valid row that are counted in the report but kept."""
        return []

    def read_row(self, row: Any) -> tuple[Any, list[tuple[str, str]]]:
        """``(row as the views read it, problems)`` of one source row: by default the row itself and
        :meth:`check_row`'s problems. A dataset that reads several row formats (PKU-SafeRLHF: TRL, conversational,
        HH) returns the normalised row; the held-out split is carved by its :attr:`prompt_field`."""
        return row, self.check_row(row)

    def inspect_source(self) -> dict[str, Any]:
        """Runs once before any row is validated: looks at the source as a whole (e.g. detects its row format, and
        raises when it lacks labels the view needs, before anything is prepared). Returns what it found, saved in
        the prepared ``meta.json``; by default nothing."""
        return {}

    def synthetic(self, split: str, num_rows: int, seed: int) -> Iterable[dict[str, Any]]:
        """Generated rows of the ``synthetic`` source (datasets with ``has_synthetic``), best generated one at a time
        (preparation reads them as they come)."""
        raise ValueError(f"{type(self).__name__} has no synthetic source; give a file, a directory or a hub id")

    # --------------------------------------------------------------------------------------------- where data is
    def _source_kind(self) -> str:
        source = self.hparams.source
        if source == "synthetic":
            if not self.has_synthetic:
                self.synthetic("train", 0, 0)  # raises the dataset's explanation
            return "synthetic"
        if "://" in source:
            return "prepared"
        path = Path(source).expanduser()
        if path.is_dir():
            if is_prepared(path):
                return "prepared"
            return "dir" if sources.local_splits(path) else "hub"
        if path.is_file():
            return "file"
        if path.suffix or source.startswith((".", "/", "~")):
            raise FileNotFoundError(f"data source not found: {source}")
        return "hub"

    def split_files(self) -> dict[str, Path] | None:
        """The local file of each source split, or ``None`` for the other sources (synthetic rows, the hub, a
        prepared dataset). A single file is the training split, whatever its name in the config; a directory's files
        are named by their stem (``train.jsonl``). Datasets with a layout of their own override this."""
        kind, path = self._source_kind(), Path(self.hparams.source).expanduser()
        if kind == "file":
            return {self.hparams.train_split: path}
        if kind == "dir":
            return sources.local_splits(path)
        return None

    def _source_splits(self) -> list[str]:
        files = self.split_files()
        if files is not None:
            return list(files)
        if self._source_kind() == "synthetic":
            return ["train", "test"]
        hp = self.hparams
        return sources.hub_split_names(hp.source, hp.subset, hp.revision)

    def _split_of(self, rule: tuple, row: Any) -> str:
        """The output split of a row read under a :class:`SourcePass` rule: a given split's name, or, carving the
        training split, by the seeded hash of the row's :attr:`prompt_field` (a row without one stays in training)."""
        if rule[0] == "split":
            return rule[1]
        _, val_cut, test_cut = rule
        prompt = row.get(self.prompt_field) if isinstance(row, dict) else None
        if not isinstance(prompt, str):
            return "train"
        bucket = prompt_bucket(prompt, self.hparams.seed)
        return "val" if bucket < val_cut else "test" if bucket < test_cut else "train"

    def _read(self, split: str) -> Iterator[Row]:
        files, hp = self.split_files(), self.hparams
        if files is not None:
            yield from sources.read_file(files[split])
        elif self._source_kind() == "synthetic":
            if split == "train":
                n, seed = hp.synthetic_rows, hp.seed
            else:
                n, seed = max(hp.synthetic_rows // 8, 1), hp.seed + 1
            for index, row in enumerate(self.synthetic(split, n, seed)):
                yield f"synthetic(seed={seed})/{split} row {index}", row
        else:
            yield from sources.read_hub(hp.source, split, hp.subset, hp.revision)

    def _settings(self) -> dict[str, Any]:
        """Everything that changes the prepared tokens (its hash names the prepared directory): local files by
        their resolved path, size and modification time."""
        hp = self.hparams
        kind, files = self._source_kind(), self.split_files()
        source: Any = hp.source
        if files is not None:
            source = [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in sorted(files.values())]
        return {
            "dataset": self.dataset_name,
            "format_version": self.format_version,
            "view": hp.view,
            "source": source,
            "subset": hp.subset if kind == "hub" else None,
            "revision": hp.revision if kind == "hub" else None,
            "splits": [hp.train_split, hp.val_split, hp.test_split, hp.val_fraction, hp.test_fraction],
            "synthetic_rows": hp.synthetic_rows if kind == "synthetic" else None,
            "template": template_setting(self.template, self.tokenizer),
            "max_length": hp.max_length,
            "tokenizer": tokenizer_fingerprint(self.tokenizer),
            "on_bad_row": hp.on_bad_row,
            "seed": hp.seed,
            **self.view_settings(),
        }

    def item_transform(self):
        """A picklable callable applied to every streamed item in the loader workers (e.g. decoding stored video
        clips), or ``None``."""
        return None

    def view_settings(self) -> dict[str, Any]:
        """Dataset-specific settings that change the prepared items (part of the fingerprint)."""
        return {}

    def prepared_location(self) -> str:
        """The prepared dataset this configuration streams from (a local directory or a URL)."""
        if self._source_kind() == "prepared":
            return self.hparams.source.rstrip("/") if is_remote(self.hparams.source) else self.hparams.source
        name = f"{self.dataset_name}-{self.hparams.view}-{fingerprint(self._settings())}"
        if self.prepared_url is not None:
            return f"{self.prepared_url}/{name}"
        return str(self.prepared_root / name)

    # ------------------------------------------------------------------------------------------------- preparing
    def _validated(
        self, rows: Iterator[Row], report_for: dict[str, SplitReport], assign, check=None, notes=None,
        source: str | None = None, with_location: bool = False,
    ) -> dict[str, list[Valid]]:
        """Check every row; returns the valid rows per output split, or raises naming the bad rows.

        Valid rows come as ``(position, row)``, or ``(location, row)`` with ``with_location``; ``row`` is what
        :meth:`read_row` made of it (``assign`` sees that too). ``check`` (problems of a row taken as it is) and
        ``notes`` default to the dataset's own, ``source`` (the name in the error) to the configured source.
        """
        read = self.read_row if check is None else lambda row: (row, check(row))
        notes = notes or self.row_notes
        out: dict[str, list[Valid]] = {name: [] for name in report_for}
        problems: list[str] = []
        n_problems = 0
        for position, (where, raw) in enumerate(rows):
            row, found = read(raw)
            split = assign(row)
            report = report_for[split]
            report.rows_read += 1
            if found:
                n_problems += 1
                if len(problems) < MAX_LISTED_PROBLEMS:
                    problems.append(f"{where}: field '{found[0][0]}': {found[0][1]}")
                report.dropped[f"invalid:{found[0][0]}"] += 1
                continue
            for note in notes(row):
                report.notes[note] += 1
            out[split].append((where, row) if with_location else (position, row))
        if problems and self.hparams.on_bad_row == "error":
            raise _invalid_rows(problems, n_problems, source or self.hparams.source)
        return out

    def prepare(self, force: bool = False) -> PrepareReport:
        """Validate, tokenise and write every split; reuse an identical earlier preparation unless ``force``.

        Returns:
            The report (also saved as ``report.json`` in the prepared directory).
        """
        location = self.prepared_location()
        if self._source_kind() == "prepared":
            self._verify(location)  # raises naming the damaged or foreign file (s3://: the manifest and sizes)
            self.report = self._load_report(location)
            return self.report
        if is_remote(location):
            return self._prepare_remote(location, force)
        return self._prepare_local(Path(location), force)

    def _prepare_remote(self, url: str, force: bool) -> PrepareReport:
        """Reuse the preparation at ``url`` if its manifest (with this fingerprint) and sizes check out; otherwise
        prepare in a local staging directory, upload it (manifest last), check the upload and delete the staging
        copy. A staging copy left by an interrupted upload is reused (verified) rather than prepared again."""
        if not force:
            damage = self._damage(url)
            if damage is None:
                return self._reuse(url)
            if "manifest.json: not found" not in damage:
                print(f"Preparing again: the earlier preparation is damaged: {damage}")
        staged = self.prepared_root / url.rsplit("/", 1)[1]
        report = self._prepare_local(staged, force, output_dir=url)
        if report.pending:  # one node's shard: the node that merges the shards uploads the dataset
            return report
        print(f"Uploading {staged} to {url}")
        upload_prepared(staged, url, self.storage_options)
        self._verified.discard(url)
        self._verify(url, fingerprint=fingerprint(self._settings()))  # what a reader will find
        shutil.rmtree(staged, ignore_errors=True)
        self._verified.discard(str(staged))
        report.output_dir, report.reused = url, False
        self.report = report
        return report

    def _reuse(self, location: str) -> PrepareReport:
        """The report of this configuration's sound earlier preparation at ``location``, printed."""
        self.report = self._load_report(location)
        self.report.reused = True
        print(f"Reusing an identical earlier preparation.\n{self.report.format()}")
        return self.report

    def _prepare_local(self, final: Path, force: bool, output_dir: str | None = None) -> PrepareReport:
        """Prepare into the local directory ``final`` (reused when sound, unless ``force``); the report names
        ``output_dir`` (default ``final``). With ``prepare_nodes`` > 1, this node prepares its shard, and the node that
        finds every shard finished merges them into ``final`` (:meth:`_prepare_shard`)."""
        location = str(final)
        for stale in clean_stale_staging(final):
            print(f"Removed {stale}: the staging directory of an interrupted preparation")
        if final.exists() and not force:
            damage = self._damage(final)
            if damage is None:
                return self._reuse(location)
            print(f"Preparing again: the earlier preparation is damaged: {damage}")
            force = True  # replaces the damaged directory
        hp = self.hparams
        available = self._source_splits()
        if hp.train_split not in available:
            raise DataValidationError(f"{hp.source} has no split {hp.train_split!r}; splits: {available}")
        if hp.val_split is not None and hp.val_split not in available:
            raise DataValidationError(f"{hp.source} has no split {hp.val_split!r}; splits: {available}")
        facts = self.inspect_source()
        carve_test = hp.test_split is not None and hp.test_split not in available
        val_cut = hp.val_fraction if hp.val_split is None else 0.0
        test_cut = val_cut + (hp.test_fraction if carve_test else 0.0)
        passes = [SourcePass(hp.train_split, ("carve", val_cut, test_cut))]
        if hp.val_split is not None:
            passes.append(SourcePass(hp.val_split, ("split", "val")))
        if hp.test_split is not None and not carve_test:
            passes.append(SourcePass(hp.test_split, ("split", "test")))
        report = PrepareReport(source=str(hp.source), view=hp.view, output_dir=output_dir or str(final),
                               row_format=facts.get("row_format"),
                               origins=split_origins(hp, carve_test, val_cut, test_cut))
        meta = {"settings": self._settings(), "hparams": self._meta_hparams(), **facts}
        with Workers(self.prepare_workers, self) as workers:
            scans = self._scan(passes, workers)  # raises naming the invalid rows under on_bad_row: error
            if hp.prepare_nodes > 1:
                shards = self._prepare_shard(final, force, passes, scans, workers, report, meta)
                if shards is None:  # other nodes' shards are not finished: this node's part is done
                    self.report = report
                    print(report.format())
                    return report
            else:
                tmp = staging_dir(final)
                try:
                    shard = self._encode(passes, scans, workers, tmp, rank=0, nodes=1)
                    self._finish(report, meta, scans, [shard], shard["items"])
                    publish(tmp, final, report, meta, replace=force)
                except BaseException:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise
        if hp.prepare_nodes > 1:
            tmp = staging_dir(final)
            try:
                self._finish(report, meta, scans, shards[1], merge_shards(shards[0], tmp))
                publish(tmp, final, report, meta, replace=force)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                if final.exists() and self._damage(final) is None:  # another node merged them first
                    return self._reuse(location)
                raise
            shutil.rmtree(shards[0][0].parent, ignore_errors=True)
        self._verified.add(str(final))  # its manifest was just written from these very files
        self.report = report
        print(report.format())
        return report

    def _prepare_shard(self, final: Path, force: bool, passes: list[SourcePass], scans: dict[str, SplitScan],
                       workers: Workers, report: PrepareReport,
                       meta: dict[str, Any]) -> tuple[list[Path], list[dict[str, Any]]] | None:
        """Node ``prepare_node_rank``'s part of a preparation across ``prepare_nodes`` nodes: its share of the blocks
        encoded into ``<final>.shards/node-<rank>-of-<nodes>/`` (renamed there when finished, with a ``shard.json``
        of its counts; a finished shard of the same fingerprint is kept, so a node that was killed prepares only its
        own share again). Returns every shard's directory and record once all are finished (the caller merges
        them), else ``None`` with ``report`` saying what is missing."""
        hp = self.hparams
        nodes, rank, settings = hp.prepare_nodes, hp.prepare_node_rank, fingerprint(meta["settings"])
        shards = final.parent / f"{final.name}.shards"
        mine = shards / shard_name(rank, nodes)
        if force or read_shard(mine, settings, nodes) is None:
            shutil.rmtree(mine, ignore_errors=True)
            tmp = staging_dir(final)
            try:
                shard = self._encode(passes, scans, workers, tmp, rank=rank, nodes=nodes)
                (tmp / SHARD_FILE).write_text(json.dumps({"fingerprint": settings, "nodes": nodes, "rank": rank,
                                                          **shard}, sort_keys=True) + "\n")
                shards.mkdir(parents=True, exist_ok=True)
                unclaim_staging(tmp)
                os.replace(tmp, mine)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        directories = [shards / shard_name(k, nodes) for k in range(nodes)]
        records = [read_shard(directory, settings, nodes) for directory in directories]
        missing = [k for k, record in enumerate(records) if record is None]
        if not missing:
            return directories, records
        own = records[rank] or {}
        self._finish(report, meta, scans, [own], own.get("items", {}), partial=True)
        report.output_dir = str(mine)
        report.pending = (f"node {rank} of {nodes}: shard written; waiting for node(s) {missing} (the node that "
                          f"finishes last merges the shards into {final})")
        return None

    @property
    def prepare_workers(self) -> int:
        """Preparation processes: ``prepare_workers``, or the cores this process may use when it is ``None``."""
        workers = self.hparams.prepare_workers
        return available_cores() if workers is None else workers

    def _meta_hparams(self) -> dict[str, Any]:
        """The hyperparameters saved in ``meta.json``: all but how the preparation was spread over processes and
        nodes, which changes nothing in it (the same bytes, whatever the workers)."""
        return {k: v for k, v in self.hparams.items() if k not in PREPARE_SPREAD}

    def _blocks(self, split: str) -> Iterator[Block]:
        """The rows of a source split cut into blocks of :attr:`prepare_block_rows` (JSONL lines undecoded: the
        workers decode them)."""
        files = self.split_files()
        if files is not None and sources.is_jsonl(files[split]):
            return cut_blocks(sources.read_lines(files[split]), self.prepare_block_rows, lines=True)
        return cut_blocks(self._read(split), self.prepare_block_rows)

    def _scan(self, passes: list[SourcePass], workers: Workers) -> dict[str, SplitScan]:
        """The first pass: every row read, checked and counted, keeping of each only 16-byte digests (of the row, of
        its units, of its prompt where a given held-out split must be compared with training); then, per output
        split, repeated rows noted, repeated units found (the first of each digest is kept) and prompts shared with
        training counted. Returns each output split's :class:`SplitScan`.

        Raises:
            DataValidationError: invalid rows under ``on_bad_row: error``, up to ten named (file, row, field), after
                the whole source split was read.
        """
        hp = self.hparams
        scans: dict[str, SplitScan] = {}
        given = [p.rule[1] for p in passes if p.rule[0] == "split"]
        for source_pass in passes:
            prompts = ({"train"} if given else set()) if source_pass.rule[0] == "carve" else {source_pass.rule[1]}
            problems: list[str] = []
            n_problems = 0
            tasks = ((block, source_pass.rule, prompts) for block in self._blocks(source_pass.split))
            for block_scan in workers.map(_scan_block, tasks):
                n_problems += block_scan.n_problems
                problems += block_scan.problems[: MAX_LISTED_PROBLEMS - len(problems)]
                units = {}
                for split, part in block_scan.splits.items():
                    scan = scans.setdefault(split, SplitScan())
                    units[split] = (scan.units, part.units)
                    scan.add(part)
                source_pass.units.append(units)
            if problems and hp.on_bad_row == "error":
                raise _invalid_rows(problems, n_problems, hp.source)
            for scan in scans.values():
                if not scan.done:
                    scan.finish(self.view.repeat_reason)
        if given and "train" in scans:
            train = digest_array(scans["train"].prompts)
            for split in given:
                if split in scans:
                    prompts = digest_array(scans[split].prompts)
                    shared = int(np.isin(prompts[first_occurrences(prompts)], train).sum())
                    if shared:  # given held-out splits may share prompts with training: counted, they inflate scores
                        scans[split].report.notes["prompts_shared_with_train"] += shared
        for scan in scans.values():
            scan.prompts = []
        return scans

    def _encode(self, passes: list[SourcePass], scans: dict[str, SplitScan], workers: Workers, out: Path, rank: int,
                nodes: int) -> dict[str, Any]:
        """The second pass: each block's valid rows encoded by the workers, less the units the first pass found
        repeated, and the items written in row order as the split directories of ``out`` (node ``rank`` of
        ``nodes`` encodes its share of each source split's blocks, a contiguous range). Returns what the pass adds
        to each split (``{"encoded": {split: report dict}, "labels": {split: summary}, "items": {split: count},
        "called": [splits the view encoded units of]}``)."""
        writers: dict[str, SplitWriter] = {}
        encoded: dict[str, SplitReport] = {}
        labels: dict[str, Any] = {}
        rows = sum(scan.report.rows_read for scan in scans.values())
        print(f"Encoding {rows} rows ({self._spread(workers, nodes)})", flush=True)
        for source_pass in passes:
            blocks = len(source_pass.units)
            low, high = blocks * rank // nodes, blocks * (rank + 1) // nodes
            tasks = ((block, source_pass.rule, self._repeats_of(source_pass.units[block.number], scans))
                     for block in itertools.takewhile(lambda b, end=high: b.number < end,
                                                      self._blocks(source_pass.split))
                     if block.number >= low)
            for answer in workers.map(_encode_block, tasks):
                for split, (items, part, summary) in answer.items():
                    writer = writers.get(split)
                    if writer is None:
                        writer = writers[split] = SplitWriter(out / split, rank=rank)
                    for item in items:
                        writer.add(item)
                    add_report(encoded.setdefault(split, SplitReport()), part)
                    labels[split] = add_counts(labels.get(split), summary, self.view.label_settings)
        return {"encoded": {split: part.to_dict() for split, part in encoded.items()},
                "labels": {split: summary for split, summary in labels.items() if summary is not None},
                "items": {split: writers[split].finish() for split in SPLITS if split in writers},
                "called": sorted(encoded)}

    def _spread(self, workers: Workers, nodes: int) -> str:
        spread = f"{workers.processes} worker processes" if workers.processes > 1 else "in this process"
        return spread + (f", node {self.hparams.prepare_node_rank} of {nodes}" if nodes > 1 else "")

    @staticmethod
    def _repeats_of(units: dict[str, tuple[int, int]], scans: dict[str, SplitScan]) -> dict[str, np.ndarray]:
        """Per output split, which of a block's units (``units``: per split, those before the block and in it;
        numbered from 0 within the block) the first pass found repeated."""
        out = {}
        for split, (start, count) in units.items():
            repeats = scans[split].repeats
            inside = repeats[np.searchsorted(repeats, start) : np.searchsorted(repeats, start + count)]
            if len(inside):
                out[split] = inside - start
        return out

    def _finish(self, report: PrepareReport, meta: dict[str, Any], scans: dict[str, SplitScan],
                shards: list[dict[str, Any]], items: dict[str, int], partial: bool = False) -> None:
        """Fill ``report`` and ``meta`` from the first pass and the encoded ``shards``: counts added, label summaries
        summed (a split whose units were never encoded gets the view's summary of none), an empty training split
        refused unless ``partial`` (one node's shard; an emptied held-out split is reported, not written)."""
        hp, labels = self.hparams, {}
        for split in SPLITS:
            if split not in scans:
                continue
            split_report = scans[split].report
            summary = None
            for shard in shards:
                if split in shard["encoded"]:
                    add_report(split_report, report_from_dict(shard["encoded"][split]))
                summary = add_counts(summary, shard["labels"].get(split), self.view.label_settings)
            if not any(split in shard["called"] for shard in shards):
                nothing = SplitReport()  # what the view notes when it encodes nothing (e.g. truncated 0)
                list(self.view.encode_units([], self.tokenizer, self.template, hp.max_length, nothing))
                add_report(split_report, nothing)
                summary = self.view.label_summary()
            if not items.get(split) and split == "train" and not partial:
                raise EmptySplitError(f"{report.output_dir}: no rows left to write to the train split: every row was "
                                      f"dropped (read {split_report.rows_read}, dropped {dict(split_report.dropped)})")
            report.splits[split] = split_report
            if summary is not None:
                labels[split] = summary
        meta["labels"] = labels

    def _read_text(self, location: str, name: str) -> str | None:
        """A small file of a prepared dataset (local or ``s3://``), or ``None`` when absent."""
        if location.startswith("s3://"):
            data = read_remote(f"{location}/{name}", self.storage_options)
            return None if data is None else data.decode("utf-8")
        path = Path(location) / name
        return path.read_text() if path.is_file() else None

    def _load_report(self, location: str) -> PrepareReport:
        if is_remote(location) and not location.startswith("s3://"):
            return PrepareReport(source=location, view="prepared", output_dir=location)
        where = f"{location}/{REPORT_FILE}"
        try:
            text = self._read_text(location, REPORT_FILE)
        except OSError as error:
            raise PreparedDatasetError(f"{where}: unreadable report ({type(error).__name__}: {error})") from None
        if text is None:
            raise PreparedDatasetError(f"{where}: unreadable report (missing)")
        return parse_report(text, where)

    def _damage(self, location: str | Path) -> str | None:
        """What is wrong with this configuration's own earlier preparation (``None``: sound, and now verified)."""
        try:
            self._verify(str(location), fingerprint=fingerprint(self._settings()))
        except RemoteAccessError:
            raise  # the store is unreachable or refuses: preparing again would not help
        except PreparedDatasetError as error:
            return str(error)
        return None

    def _verify(self, location: str, fingerprint: str | None = None) -> None:
        """:func:`~lit_safe.data_modules.preparation.verify_prepared` (``s3://``:
        :func:`~lit_safe.data_modules.preparation.verify_remote`), once per location and process. Other URLs are
        checked only on the ``index.json`` litdata downloads (:meth:`_dataset`)."""
        if location in self._verified:
            return
        if location.startswith("s3://"):
            self._manifests[location] = verify_remote(location, self.storage_options, fingerprint=fingerprint)
        elif not is_remote(location):
            verify_prepared(location, fingerprint=fingerprint)
        self._verified.add(location)

    def _ensure_verified(self, location: str) -> None:
        """Before streaming a prepared dataset: verify it; prepare a damaged or missing own preparation again, and
        raise for a damaged or foreign ``source``."""
        if location in self._verified:
            return
        if self._source_kind() == "prepared":
            self._verify(location)
        elif is_remote(location):
            if self._damage(location) is not None:
                self.prepare()  # prepares (again) and uploads, saying why
        elif not is_prepared(location) or self._damage(Path(location)) is not None:
            self.prepare()  # prepares (again), saying why
        if self.report is not None and self.report.pending:
            raise PreparedDatasetError(f"{location}: not prepared yet: {self.report.pending}; run lit-safe prepare "
                                       "on every node first")

    def label_summary(self, split: str = "train") -> dict[str, Any]:
        """Label counts of a prepared split, as the view recorded them (e.g. per-category positives), from
        ``meta.json``; prepares first if needed. Empty for views that record none or for URLs other than ``s3://``."""
        location = self.prepared_location()
        if is_remote(location) and not location.startswith("s3://"):
            return {}
        self._ensure_verified(location)
        meta = json.loads(self._read_text(location, META_FILE) or "{}")
        return meta.get("labels", {}).get(split, {})

    # ----------------------------------------------------------------------------------------- Lightning hooks
    def _predicting_from_file(self, stage: str | None = None) -> bool:
        if self.hparams.predict_file is None:
            return False
        if stage is None and self.trainer is not None:
            stage = self.trainer.state.fn
        return stage == "predict"  # a TrainerFn compares equal to its value

    def prepare_data(self) -> None:
        if not self._predicting_from_file():  # predicting on a file needs no prepared dataset (nor network)
            self.prepare()

    def setup(self, stage: str | None = None) -> None:
        if self._predicting_from_file(stage):
            return
        self._ensure_verified(self.prepared_location())

    def has_split(self, split: str) -> bool:
        """Whether the prepared dataset has ``split`` (``s3://``: its manifest says; other URLs are assumed to)."""
        location = self.prepared_location()
        if location.startswith("s3://"):
            self._ensure_verified(location)
            return split in self._manifests[location]["splits"]
        return is_remote(location) or (Path(location) / split / "index.json").is_file()

    def _dataset(self, split: str) -> StreamingDataset:
        """The streaming dataset of a prepared split (opened once; a remote split is opened when first asked for)."""
        if split not in self.datasets:
            location = self.prepared_location()
            self._ensure_verified(location)  # nothing is deserialized from an unverified local directory
            if not self.has_split(split):
                raise ValueError(f"the prepared dataset {location} has no {split!r} split")
            if location.startswith("s3://"):
                allow_plain_http(self.storage_options)
            dataset = StreamingDataset(f"{location}/{split}", shuffle=split == "train",
                                       seed=self.hparams.seed, transform=self.item_transform(),
                                       storage_options=self.storage_options)
            if is_remote(location):
                # The index litdata downloaded (its cached copy) is what names the deserializers: checked before
                # any item is read, and for s3:// against the manifest's sha256 as well.
                index = Path(dataset.input_dir.path or "") / "index.json"
                where = f"{location}/{split}/index.json"
                try:
                    data = index.read_bytes()
                except OSError as error:
                    raise PreparedDatasetError(f"{where}: unreadable ({error})") from None
                check_remote_index(data, where, self._manifests.get(location))
            self.datasets[split] = dataset
        return self.datasets[split]

    def _loader(self, split: str, train: bool) -> LengthGroupedLoader:
        pad_id, multiple = self.tokenizer.pad_token_id, self.hparams.pad_to_multiple_of
        return LengthGroupedLoader(
            self._dataset(split),
            batch_size=self.hparams.batch_size if train else self.eval_batch_size,
            collate=lambda items: self.view.collate(items, pad_id, multiple),
            length=self.view.length,
            group_size=self.hparams.group_size,
            num_workers=self.hparams.num_workers,
            seed=self.hparams.seed,
            shuffle=train,
        )

    def train_dataloader(self) -> LengthGroupedLoader:
        return self._loader("train", train=True)

    def train_batches(self) -> int:
        """Training batches per epoch on this rank (what a trainer sizes its learning-rate schedule by)."""
        return len(self._loader("train", train=True))

    def val_dataloader(self) -> LengthGroupedLoader | list:
        if not self.has_split("val"):  # val_fraction 0 and no val split: no validation
            return []
        return self._loader("val", train=False)

    def test_dataloader(self) -> LengthGroupedLoader:
        return self._loader("test", train=False)

    def predict_dataloader(self):
        if self.hparams.predict_file is None:
            return self._loader("test", train=False)
        return self.prediction_loader(self.hparams.predict_file)

    # ------------------------------------------------------------------------------------------------ predicting
    prediction_fields = ("prompt", "response")  # what a predict_file line holds

    def prediction_loader(self, path: str | Path) -> torch.utils.data.DataLoader:
        """A loader over a JSONL of :attr:`prediction_fields` lines (``{"prompt", "response"}``), in file order.
        Batches: :meth:`collate_predictions` of :meth:`prediction_items`, with ``line (B,)`` (1-based line numbers).

        Raises:
            DataValidationError: naming every bad line (up to ten), unless ``on_bad_row: skip``.
        """
        path = Path(path).expanduser()
        if not path.name.endswith((".jsonl", ".jsonl.gz")):
            fields = ", ".join(repr(field) for field in self.prediction_fields)
            raise DataValidationError(f"{path}: predict_file must be a JSONL file of {{{fields}}} lines")
        report = SplitReport()
        rows = self._validated(sources.read_file(path), {"predict": report}, lambda _: "predict",
                               check=lambda row: self.check_prediction(row, path), notes=lambda row: [],
                               source=str(path), with_location=True)["predict"]
        skipped = sum(report.dropped.values())
        if skipped:  # on_bad_row: skip
            print(f"{path}: skipped {skipped} invalid line(s): {dict(report.dropped)}")
        items = self.prediction_items(rows, path) if rows else []
        if not items:
            raise DataValidationError(f"{path}: no valid lines to predict on")
        return torch.utils.data.DataLoader(items, batch_size=self.eval_batch_size, shuffle=False,
                                           collate_fn=self.collate_predictions)

    def check_prediction(self, row: Any, path: Path) -> list[tuple[str, str]]:
        """Problems of one line of the ``predict_file`` at ``path`` (:func:`check_prediction_row`)."""
        return check_prediction_row(row)

    def prediction_items(self, rows: list[Row], path: Path) -> list[dict[str, Any]]:
        """The items of the valid lines ``(location, row)`` of ``path``: ``{"input_ids", "line"}``, each (prompt,
        response) tokenised as the view tokenises one response."""
        ids, _ = self.view.encode_inputs(self.tokenizer, [r["prompt"] for _, r in rows],
                                         [r["response"] for _, r in rows], self.template,
                                         self.hparams.max_length)
        return [{"input_ids": seq, "line": line_number(where)} for seq, (where, _) in zip(ids, rows)]

    def collate_predictions(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """``input_ids``/``attention_mask (B, L)`` (right padding) and ``line (B,)``."""
        sequences = [np.asarray(i["input_ids"]) for i in items]
        return {**text_batch(sequences, self.tokenizer.pad_token_id, self.hparams.pad_to_multiple_of),
                **int_fields(items, ["line"])}


__all__ = ["PreparedDataModule", "Row", "check_prediction_row", "line_number", "prompt_bucket"]
