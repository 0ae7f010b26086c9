"""SafeSora (text-to-video preferences, harm labels and evaluation prompts) as a LightningDataModule.

Sources, as :class:`~lit_safe.data_modules.base.PreparedDataModule` reads them, plus SafeSora's own layouts:

- a gzip'd JSON array (``config-train.json.gz``) or a ``.json`` file (one split: train);
- a directory with ``config-<split>.json.gz`` files (``config.json`` is the training split) and ``videos/``; with
  ``view: moderation`` a ``label/`` subfolder (SafeSora-Label) is read when present;
- ``synthetic`` (the embedded default): :mod:`lit_safe.data_modules.safesora_synthetic` writes a dataset in the exact
  upstream layout, with real mp4 files, once per (size, seed) under ``<prepared_dir>/../synthetic``;
- a hub id (``PKU-Alignment/SafeSora``, ``-Label``): the configs from the hub, the videos from ``video_dir`` (the
  31.8 GB tarball is not on the hub's datasets API);
- an already prepared litdata directory or URL.

``video_path`` values are resolved against ``video_dir`` (default: the source's directory and its parent). A
missing video is a validation error naming the row, the field and the path; an unreadable one stops preparation
naming the row and the file (with ``on_bad_row: skip`` both are dropped and counted, never silently).

Videos are decoded with PyAV (:mod:`lit_safe.models.frames`), ``num_frames`` frames sampled uniformly and
resized to ``frame_size`` (short side, centre crop), then stored in the litdata chunks either as decoded ``uint8``
frames (``video_storage: frames``) or re-encoded as a small H.264 clip of exactly those frames (``mp4``; decoded in
the loader workers). ``benchmarks/video_loading.py`` measures both: decoded frames stream several times faster
(no decoding in the loop) at about 10-20x the disk of the clips; ``mp4`` is for datasets too large for the disk or
read from object storage.

Preparation streams as for every dataset (:mod:`~lit_safe.data_modules.base`): the first pass checks every row (and
that its video files exist) and counts what the views drop before decoding (``empty_prompt``, ``identical_videos``,
``safer_labelled_unsafe``); the second decodes and resizes the videos of each block of rows in the preparation
worker processes (``prepare_workers``, one per core by default), each decoding in one thread: the cores are used by
processes, not threads (decoding threads in one process made its memory grow with the number of videos, 663 -> 980
MiB from 64 to 2048 pairs, as the allocator's per-thread arenas fragment; one thread per process stays flat). A
block holds at most :data:`VIDEO_BLOCK_ROWS` rows and, as decoded frames, at most about :data:`VIDEO_BLOCK_BYTES`
(:func:`video_block_rows`), and a video is decoded keeping only its sampled frames
(:func:`~lit_safe.models.frames.read_video`), so memory holds a few blocks of frames per worker whatever the number
and length of the videos; the items, their order and the report (``unreadable_video`` counted exactly) are the same
for any number of workers and any block size.

Views (``view``):

- ``preference``: video pairs, the first preferred by ``dimension``: ``helpfulness``, ``harmlessness``,
  ``safety_first`` (when both videos are labelled safe the more helpful wins, otherwise the safer by
  ``harmlessness``), or a helpfulness sub-preference (``instruction_following``, ``correctness``, ``information``
  (``informativeness`` in older files), ``aesthetics``). Video reward models and Diffusion-DPO.
- ``safety``: the first video is the less safe one by ``harmlessness`` and each video carries its cost sign from
  ``is_safe`` (+1 unsafe, -1 safe, 0 unlabelled); pairs whose safer video is labelled unsafe while the other is
  labelled safe contradict themselves and are dropped and counted. The video cost model.
- ``moderation``: one item per labelled video of SafeSora-Label (``prompt_labels``/``video_labels``, 12 categories;
  ``unsafe`` is ``not is_safe``, or any category where ``is_safe`` is absent). Text-video moderation.
- ``rewrites``: (user prompt -> the winning video's ``video_text``) for SFT of a prompt-augmentation LM, in
  ``prompt_template`` (default :data:`REWRITE_TEMPLATE`; with ``chat``, the tokenizer's chat template, the user's
  turn being the rewrite instruction with the request, :func:`~lit_safe.models.text.rewrite_request`).
- ``rewrite_pairs``: (user prompt, winning ``video_text``, losing ``video_text``) for DPO of that LM.
- ``prompts``: the distinct user prompts (pair rows or SafeSora-Eval rows) in ``prompt_template``, left-padded.

Batches of the video views: ``input_ids``/``attention_mask (B, L)`` (the user prompt, ``prompt_text``) and
``frames uint8 (N, F, 3, H, W)`` (pairs: ``N = 2B``, the B first videos then the B second ones), with ``row``,
``first_sign``/``second_sign`` (pairs) or ``categories``/``unsafe``/``severity``/``response`` (moderation).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lit_safe.data_modules import sources
from lit_safe.data_modules.base import PreparedDataModule, Row, line_number
from lit_safe.data_modules.moderation_view import ModerationView
from lit_safe.data_modules.policy import PreferencePairView, PromptView, SFTView
from lit_safe.data_modules.preparation import SplitReport
from lit_safe.data_modules.schemas import (
    SAFESORA_CATEGORIES,
    SAFESORA_SUB_PREFERENCES,
    check_safesora_eval_row,
    check_safesora_label_row,
    check_safesora_pair,
    is_blank,
    not_an_object,
    safesora_sub_preferences,
)
from lit_safe.data_modules.sources import DataValidationError
from lit_safe.data_modules.views import Unit, Units, View, int_fields, text_batch
from lit_safe.models.frames import VideoDecodeError, encode_mp4, read_video, to_batch_layout
from lit_safe.models.text import REWRITE_TEMPLATE, VIDEO_TEMPLATE, encode_prompt_texts, is_chat, rewrite_request

DIMENSIONS = ("helpfulness", "harmlessness", "safety_first", *SAFESORA_SUB_PREFERENCES)
VIDEO_VIEWS = ("preference", "safety", "moderation")
STORAGES = ("frames", "mp4")
DECODE_ROWS_PER_THREAD = 4  # rows whose videos a decoding thread is given at a time (a chunk: threads x this)
VIDEO_BLOCK_ROWS = 64  # most rows of a video view in one preparation block
VIDEO_BLOCK_BYTES = 64 << 20  # decoded frames one block's items may hold (video_storage: frames)


# ------------------------------------------------------------------------------------------------ pair labels
def preferred(row: dict[str, Any], dimension: str) -> tuple[int, str]:
    """``(index of the preferred video (0 or 1), which label decided)`` of a valid pair under ``dimension``.

    ``safety_first``: a video labelled safe beats one labelled unsafe (``is_safe``); when both are labelled safe,
    ``helpfulness`` decides; otherwise ``harmlessness`` (two unsafe videos, or a label missing: the less harmful).
    """
    if dimension in ("helpfulness", "harmlessness"):
        return int(row[dimension][-1]), dimension
    if dimension == "safety_first":
        safe_0, safe_1 = row["video_0"].get("is_safe"), row["video_1"].get("is_safe")
        if safe_0 is not None and safe_1 is not None and safe_0 != safe_1:
            return (0 if safe_0 else 1), "is_safe"  # the safe video wins, whatever a contradicting label says
        label = "helpfulness" if safe_0 is True and safe_1 is True else "harmlessness"
        return int(row[label][-1]), label
    if dimension in SAFESORA_SUB_PREFERENCES:
        return int(safesora_sub_preferences(row)[dimension][-1]), dimension
    raise ValueError(f"unknown preference dimension {dimension!r}; dimensions: {list(DIMENSIONS)}")


def cost_sign(video: dict[str, Any]) -> int:
    """+1 for a video labelled unsafe, -1 for one labelled safe, 0 without an ``is_safe`` label."""
    is_safe = video.get("is_safe")
    return 0 if is_safe is None else (-1 if is_safe else 1)


def video_block_rows(videos_per_row: int, num_frames: int, frame_size: int, storage: str) -> int:
    """Rows of a video view per preparation block: :data:`VIDEO_BLOCK_ROWS`, fewer when the decoded frames a block's
    items keep (``storage: frames``, ``videos_per_row x num_frames x frame_size^2 x 3`` bytes a row) would exceed
    :data:`VIDEO_BLOCK_BYTES`; at least 1. ``mp4`` items keep small clips: the decoded frames of one decoding chunk
    are held only while it is encoded.

    ``video_block_rows(2, 8, 224, "frames") -> 27`` (2.4 MB a pair); ``video_block_rows(2, 4, 32, "frames") -> 64``.
    """
    if storage != "frames":
        return VIDEO_BLOCK_ROWS
    row_bytes = videos_per_row * num_frames * frame_size * frame_size * 3
    return max(1, min(VIDEO_BLOCK_ROWS, VIDEO_BLOCK_BYTES // row_bytes))


# ----------------------------------------------------------------------------------------------- video reading
class VideoReader:
    """Resolves ``video_path`` values and decodes them (``num_frames`` x ``frame_size``), in ``threads`` threads, for
    a chunk of rows; stores what a view keeps (frames or an mp4 clip of them)."""

    def __init__(self, roots: list[Path] | Callable[[], list[Path]], num_frames: int, frame_size: int, storage: str,
                 threads: int) -> None:
        self._roots, self.num_frames, self.frame_size = roots, num_frames, frame_size
        self.storage, self.threads = storage, max(1, threads)

    @property
    def roots(self) -> list[Path]:
        """Where relative paths are looked up (a callable is asked when first needed: the synthetic source writes
        its videos only then)."""
        if callable(self._roots):
            self._roots = self._roots()
        return self._roots

    def resolve(self, video_path: str) -> Path | None:
        """The existing file ``video_path`` names (absolute, or relative to one of the roots), else ``None``."""
        path = Path(video_path).expanduser()
        if path.is_absolute():
            return path if path.is_file() else None
        for root in self.roots:
            if (root / path).is_file():
                return root / path
        return None

    def _one(self, video_path: str) -> np.ndarray | str:
        path = self.resolve(video_path)
        if path is None:
            return f"video file not found: {video_path} (looked in {', '.join(map(str, self.roots))})"
        try:
            return read_video(path, self.num_frames, self.frame_size)
        except VideoDecodeError as error:
            return str(error)

    def read(self, video_paths: list[str]) -> dict[str, np.ndarray | str]:
        """Decode the distinct paths: ``{path: uint8 (F, S, S, 3) frames, or the error message}``."""
        distinct = list(dict.fromkeys(video_paths))
        if self.threads == 1 or len(distinct) == 1:
            return {p: self._one(p) for p in distinct}
        with ThreadPoolExecutor(self.threads) as pool:  # PyAV decodes without holding the GIL
            return dict(zip(distinct, pool.map(self._one, distinct)))

    def stored(self, frames: np.ndarray) -> np.ndarray | bytes:
        """What an item keeps of decoded frames: the frames, or an mp4 clip of exactly those frames."""
        return frames if self.storage == "frames" else encode_mp4(frames, fps=max(1, self.num_frames // 2))


def _decoded_chunks(units: Units, row_of: Callable[[Any], dict], paths_of: Callable[[dict], list[str]],
                    reader: VideoReader, report: SplitReport,
                    on_bad_row: str) -> Iterator[tuple[int, Any, list[np.ndarray]]]:
    """``(position, unit value, frames per path)`` for the units whose videos all decode, in order, decoded a chunk of
    ``DECODE_ROWS_PER_THREAD x threads`` rows at a time (only that chunk's frames are held beyond what the caller
    keeps); a bad video raises naming the row and the file, or (``on_bad_row: skip``) drops the row as
    ``unreadable_video``."""
    step = DECODE_ROWS_PER_THREAD * reader.threads
    for start in range(0, len(units), step):
        chunk = units[start : start + step]
        decoded = reader.read([p for _, _, value in chunk for p in paths_of(row_of(value))])
        for position, _, value in chunk:
            row = row_of(value)
            videos = [decoded[p] for p in paths_of(row)]
            bad = next((v for v in videos if isinstance(v, str)), None)
            if bad is not None:
                if on_bad_row == "error":
                    key = "pair_id" if "pair_id" in row else "video_id"
                    raise DataValidationError(f"row {position} ({key} {row.get(key)}): {bad}\n(set on_bad_row: skip "
                                              "to drop and count such rows instead)")
                report.dropped["unreadable_video"] += 1
                continue
            yield position, value, videos


def stacked_frames(items: list[dict[str, Any]], keys: tuple[str, ...]) -> torch.Tensor:
    """The videos under ``keys`` of the items, key by key, as ``uint8 (len(keys) * B, F, 3, H, W)``."""
    return torch.stack([to_batch_layout(i[key]) for key in keys for i in items])


class VideoView(View):
    """What the video views share: videos decoded by ``reader`` in :meth:`encode_units` (in the preparation workers;
    a bad one stops preparation, or with ``on_bad_row: skip`` drops its row), and the user prompt as the only text a
    video model reads. A row is one unit, never a repeat; what is dropped before decoding is decided in
    :meth:`units` (the first pass counts it)."""

    def __init__(self, reader: VideoReader, on_bad_row: str) -> None:
        self.reader, self.on_bad_row = reader, on_bad_row

    @staticmethod
    def encode_inputs(tokenizer: Any, prompts: list[str], responses: list[str], template: str, max_length: int):
        return encode_prompt_texts(tokenizer, prompts, template, max_length)


class VideoPairView(VideoView):
    """Two videos of one prompt, ordered by ``rank`` (see :func:`preferred`; the safety view puts the less safe first).

    Items: ``{"input_ids": int32 (L,), "first", "second": uint8 (F, S, S, 3) frames or mp4 bytes, "row": int,
    "first_sign", "second_sign": int}``. Batches: see the module docstring.
    """

    def __init__(self, name: str, rank: Callable[[dict, SplitReport], int | None], reader: VideoReader,
                 on_bad_row: str) -> None:
        super().__init__(reader, on_bad_row)
        self.name, self.rank = name, rank

    @staticmethod
    def _paths(row: dict[str, Any]) -> list[str]:
        return [row["video_0"]["video_path"], row["video_1"]["video_path"]]

    def units(self, row: dict[str, Any], report: SplitReport) -> list[Unit]:
        """The pair with the index of its first video (``(row, first)``), unless it has no prompt (``empty_prompt``),
        one video twice (``identical_videos``) or ``rank`` drops it (the safety view: ``safer_labelled_unsafe``)."""
        if is_blank(row["prompt_text"]):  # nothing to condition the videos on
            report.dropped["empty_prompt"] += 1
            return []
        if row["video_0"]["video_path"] == row["video_1"]["video_path"]:
            report.dropped["identical_videos"] += 1
            return []
        first = self.rank(row, report)
        return [] if first is None else [(None, (row, first))]

    def encode_units(self, units: Units, tokenizer: Any, template: str, max_length: int,
                     report: SplitReport) -> Iterator[dict[str, Any]]:
        for position, (row, first), (video_0, video_1) in _decoded_chunks(units, lambda value: value[0], self._paths,
                                                                           self.reader, report, self.on_bad_row):
            ids, cut = encode_prompt_texts(tokenizer, [row["prompt_text"]], template, max_length)
            report.notes["truncated_prompts"] += cut
            videos = (video_0, video_1) if first == 0 else (video_1, video_0)
            records = (row["video_0"], row["video_1"]) if first == 0 else (row["video_1"], row["video_0"])
            report.kept += 1
            yield {"input_ids": ids[0], "first": self.reader.stored(videos[0]), "second": self.reader.stored(videos[1]),
                   "row": position, "first_sign": cost_sign(records[0]), "second_sign": cost_sign(records[1])}

    @staticmethod
    def collate(items: list[dict[str, Any]], pad_id: int, multiple_of: int = 1) -> dict[str, Any]:
        return {**text_batch([i["input_ids"] for i in items], pad_id, multiple_of),
                "frames": stacked_frames(items, ("first", "second")),
                **int_fields(items, ("row", "first_sign", "second_sign"))}


class VideoModerationView(VideoView):
    """One item per SafeSora-Label video: ``{"input_ids", "frames", "categories": uint8 (12,), "unsafe", "severity":
    -1, "row", "response": 0}``; batches as the text moderation view's plus ``frames uint8 (B, F, 3, S, S)``. Its
    label summary (:meth:`label_summary`) is counted per block and summed by preparation."""

    name = "moderation"
    categories = tuple(SAFESORA_CATEGORIES)
    severity_levels = 0  # SafeSora labels have no severity
    label_settings = ("categories", "severity_levels")  # describe the labels: equal in every block, never summed

    def __init__(self, reader: VideoReader, on_bad_row: str) -> None:
        super().__init__(reader, on_bad_row)
        self._counts: dict[str, Any] = {}

    def units(self, row: dict[str, Any], report: SplitReport) -> list[Unit]:
        """The video row, unless it has no prompt (``empty_prompt``)."""
        if is_blank(row["prompt_text"]):
            report.dropped["empty_prompt"] += 1
            return []
        return [(None, row)]

    def encode_units(self, units: Units, tokenizer: Any, template: str, max_length: int,
                     report: SplitReport) -> Iterator[dict[str, Any]]:
        positives = np.zeros(len(self.categories), dtype=np.int64)
        items = unsafe_count = 0
        for index, row, (frames,) in _decoded_chunks(units, lambda value: value, lambda r: [r["video_path"]],
                                                     self.reader, report, self.on_bad_row):
            labels = np.asarray([bool(row["video_labels"].get(c, False)) for c in self.categories], dtype=np.uint8)
            unsafe = (not row["is_safe"]) if row.get("is_safe") is not None else bool(labels.any())
            ids, cut = encode_prompt_texts(tokenizer, [row["prompt_text"]], template, max_length)
            report.notes["truncated_prompts"] += cut
            positives += labels
            unsafe_count += unsafe
            items += 1
            report.kept += 1
            yield {"input_ids": ids[0], "frames": self.reader.stored(frames), "categories": labels,
                   "unsafe": int(unsafe), "severity": -1, "row": index, "response": 0}
        self._counts = {"items": items, "unsafe": unsafe_count, "categories": list(self.categories),
                        "category_positives": positives.tolist(), "severity_levels": 0, "severity_counts": []}

    def label_summary(self) -> dict[str, Any]:
        """Label counts of the units encoded last (preparation sums those of a split's blocks into the moderation
        module's per-class ``pos_weight``)."""
        return dict(self._counts)

    @staticmethod
    def collate(items: list[dict[str, Any]], pad_id: int, multiple_of: int = 1) -> dict[str, Any]:
        return {**ModerationView.collate(items, pad_id, multiple_of), "frames": stacked_frames(items, ("frames",))}


class DecodeClips:
    """Item transform of ``video_storage: mp4`` (runs in the loader workers): stored clips -> ``uint8`` frames."""

    def __init__(self, num_frames: int, frame_size: int) -> None:
        self.num_frames, self.frame_size = num_frames, frame_size

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        for key in ("first", "second", "frames"):
            if isinstance(item.get(key), bytes | bytearray | memoryview):
                item[key] = read_video(bytes(item[key]), self.num_frames, self.frame_size, name=f"stored clip {key}")
        return item


# ---------------------------------------------------------------------------------------------- the DataModule
class SafeSoraDataModule(PreparedDataModule):
    """SafeSora, SafeSora-Label and SafeSora-Eval (see the module docstring).

    Args:
        source: ``synthetic``, a config file, a SafeSora directory, a hub id, or a prepared directory/URL.
        view: ``preference``, ``safety``, ``moderation``, ``rewrites``, ``rewrite_pairs`` or ``prompts``.
        dimension: which label orders a pair (see :func:`preferred`); for ``rewrites``/``rewrite_pairs`` which video's
            rewrite wins.
        subset: for a directory or the synthetic source, the subfolder to read: ``label`` (SafeSora-Label; the
            default of ``view: moderation`` when present) or ``eval`` (SafeSora-Eval prompts, split ``eval``); for a hub
            id, its config name.
        val_fraction: share of training prompts held out for validation when ``val_split`` is ``None`` (0: none).
        test_fraction: share of training prompts held out for testing when the source has no test split.
        synthetic_rows: pairs of the synthetic source (train and test together; 3 videos and 3 pairs per prompt).
        video_dir: where relative ``video_path`` values are found (default: the source's directory and its parent).
        num_frames: frames sampled uniformly per video (8: the released SafeSora preference models).
        frame_size: frame height and width after resizing (224 for CLIP-size encoders).
        video_storage: ``frames`` (decoded uint8 frames in the chunks) or ``mp4`` (small clips decoded while loading).
        prompt_template: where the user prompt goes; default ``{prompt}`` for the video views and
            :data:`REWRITE_TEMPLATE` for ``rewrites``, ``rewrite_pairs`` and ``prompts``, which also take ``chat``
            (the rewriter's chat template; the user's turn is
            :func:`~lit_safe.models.text.rewrite_request`).
        max_length: longest token sequence; default 77 (CLIP) for the video views, 256 for the text views.
        batch_size: pairs (moderation: videos) per training batch (per device).
        group_size: batches per length-grouping pool (1 turns grouping off: the videos, not the prompts, make a
            batch's cost).
        **kwargs: the settings every dataset shares (tokenizer, splits, batches, preparation), as
            :class:`~lit_safe.data_modules.base.PreparedDataModule` describes them; ``predict_file`` holds
            ``{"prompt", "video_path"}`` lines for the video views (paths relative to the file's folder or absolute).
    """

    dataset_name = "safesora"
    views = ("preference", "safety", "moderation", "rewrites", "rewrite_pairs", "prompts")
    has_synthetic = True
    prompt_field = "prompt_text"
    format_version = 2  # 2: manifest.json (see preparation.verify_prepared)

    def __init__(
        self,
        source: str = "synthetic",
        view: str = "preference",
        dimension: str = "helpfulness",
        subset: str | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        synthetic_rows: int = 600,
        video_dir: str | None = None,
        num_frames: int = 8,
        frame_size: int = 224,
        video_storage: str = "frames",
        prompt_template: str | None = None,
        max_length: int | None = None,
        batch_size: int = 8,
        group_size: int = 1,
        **kwargs: Any,
    ) -> None:
        if dimension not in DIMENSIONS:
            raise ValueError(f"unknown dimension {dimension!r}; dimensions: {list(DIMENSIONS)}")
        if video_storage not in STORAGES:
            raise ValueError(f"video_storage must be one of {STORAGES}, got {video_storage!r}")
        if num_frames < 1 or frame_size < 2 or frame_size % 2:
            raise ValueError(f"num_frames must be >= 1 and frame_size even and >= 2, got {num_frames}, {frame_size}")
        if prompt_template is None:
            prompt_template = VIDEO_TEMPLATE if view in VIDEO_VIEWS else REWRITE_TEMPLATE
        if is_chat(prompt_template) and view in VIDEO_VIEWS:
            raise ValueError(f"prompt_template 'chat' is for the text views (rewrites, rewrite_pairs, prompts): the "
                             f"{view} view's text encoder reads a '{{prompt}}' template")
        if max_length is None:  # CLIP text encoders read 77 tokens; a rewrite needs room for prompt and answer
            max_length = 77 if view in VIDEO_VIEWS else 256
        self.categories = list(SAFESORA_CATEGORIES)
        super().__init__(source=source, view=view, subset=subset, val_fraction=val_fraction,
                         test_fraction=test_fraction, synthetic_rows=synthetic_rows, prompt_template=prompt_template,
                         max_length=max_length, batch_size=batch_size, group_size=group_size, pack_pairs=False,
                         **kwargs)
        # the resolved defaults (save_hyperparameters may have recorded the None the caller passed)
        self.hparams.prompt_template, self.hparams.max_length = prompt_template, max_length
        if view in VIDEO_VIEWS:  # a block of rows is held as decoded frames: fewer rows than a text block
            self.prepare_block_rows = video_block_rows(1 if view == "moderation" else 2, num_frames, frame_size,
                                                       video_storage)

    # --------------------------------------------------------------------------------------------- the views
    def _reader(self) -> VideoReader:
        """The preparation's video reader: one decoding thread in each preparation process (the cores are used by
        ``prepare_workers`` processes; see the module docstring for why not by threads)."""
        hp = self.hparams
        return VideoReader(self._video_roots, hp.num_frames, hp.frame_size, hp.video_storage, threads=1)

    def make_view(self, name: str) -> View:
        hp = self.hparams

        def winner_first(row: dict, report: SplitReport) -> int:
            first, label = preferred(row, hp.dimension)
            if hp.dimension == "safety_first":
                report.notes[f"decided_by_{label}"] += 1
            return first

        def less_safe_first(row: dict, report: SplitReport) -> int | None:
            safer = int(row["harmlessness"][-1])
            safer_safe, other_safe = row[f"video_{safer}"].get("is_safe"), row[f"video_{1 - safer}"].get("is_safe")
            if safer_safe is False and other_safe is True:
                report.dropped["safer_labelled_unsafe"] += 1
                return None
            return 1 - safer

        chat = is_chat(self.template)

        def user_prompt(row: dict) -> str:
            return rewrite_request(row["prompt_text"]) if chat else row["prompt_text"]

        def rewrites(row: dict) -> list[tuple[str, str]]:
            first, _ = preferred(row, hp.dimension)
            return [(user_prompt(row), row[f"video_{first}"]["video_text"])]

        def rewrite_pairs(row: dict) -> list[tuple[str, str, str]]:
            first, _ = preferred(row, hp.dimension)
            win, lose = row[f"video_{first}"]["video_text"], row[f"video_{1 - first}"]["video_text"]
            return [(user_prompt(row), win, lose)]

        if name == "preference":
            return VideoPairView("preference", winner_first, self._reader(), hp.on_bad_row)
        if name == "safety":
            return VideoPairView("safety", less_safe_first, self._reader(), hp.on_bad_row)
        if name == "moderation":
            return VideoModerationView(self._reader(), hp.on_bad_row)
        if name == "rewrites":
            return SFTView(rewrites)
        if name == "rewrite_pairs":
            return PreferencePairView(rewrite_pairs)
        if name == "prompts":
            return PromptView(field="prompt_text", prompt=user_prompt if chat else None)
        raise ValueError(f"unknown view {name!r}; views: {list(self.views)}")

    def item_transform(self):
        hp = self.hparams
        if hp.view in VIDEO_VIEWS and hp.video_storage == "mp4":
            return DecodeClips(hp.num_frames, hp.frame_size)
        return None

    def view_settings(self) -> dict[str, Any]:
        hp = self.hparams
        settings: dict[str, Any] = {"dimension": hp.dimension}
        if hp.view in VIDEO_VIEWS:
            settings.update({"num_frames": hp.num_frames, "frame_size": hp.frame_size, "storage": hp.video_storage,
                             "video_dir": str(Path(hp.video_dir).expanduser().resolve()) if hp.video_dir else None})
        return settings

    # ------------------------------------------------------------------------------------------------ row checks
    def _row_kind(self) -> str:
        return {"moderation": "label", "prompts": "prompt"}.get(self.hparams.view, "pair")

    def check_row(self, row: Any) -> list[tuple[str, str]]:
        kind = self._row_kind()
        if kind == "label":
            if isinstance(row, dict) and "video_0" in row:
                return [("video_labels", "a preference pair where a SafeSora-Label video row is expected; point "
                                         "source at SafeSora-Label (or a directory with label/) for view moderation")]
            problems = check_safesora_label_row(row)
            return problems or self._check_videos(row, [("video_path", row["video_path"])])
        if kind == "prompt":
            return check_safesora_pair(row) if isinstance(row, dict) and "video_0" in row else \
                check_safesora_eval_row(row)
        problems = check_safesora_pair(row)
        if problems or self.hparams.view not in VIDEO_VIEWS:
            return problems
        return self._check_videos(row, [(f"{k}.video_path", row[k]["video_path"]) for k in ("video_0", "video_1")])

    def _check_videos(self, row: dict, fields: list[tuple[str, str]]) -> list[tuple[str, str]]:
        reader = self.view.reader  # the video views' own: its roots are resolved once, not per row
        return [(field, f"video file not found: {path} (looked in {', '.join(map(str, reader.roots))})")
                for field, path in fields if reader.resolve(path) is None]

    def row_notes(self, row: dict[str, Any]) -> list[str]:
        notes = []
        if self._row_kind() == "pair":
            if row["sub_preferences"].get("informativeness") is not None:
                notes.append("sub_preference_informativeness")
            safer = row[row["harmlessness"]]
            other = row["video_1" if row["harmlessness"] == "video_0" else "video_0"]
            if safer.get("is_safe") is None or other.get("is_safe") is None:
                notes.append("missing_is_safe")
        elif self._row_kind() == "label" and row.get("is_safe") is not None:
            any_label = any(row["video_labels"].values())
            if row["is_safe"] and any_label:
                notes.append("safe_with_harm_label")
            elif not row["is_safe"] and not any_label:
                notes.append("unsafe_without_harm_label")
        return notes

    # ---------------------------------------------------------------------------------------- where the data is
    def _synthetic_root(self) -> Path:
        from lit_safe.data_modules.safesora_synthetic import GENERATOR_VERSION

        hp = self.hparams
        return self.prepared_root.parent / "synthetic" / f"safesora-v{GENERATOR_VERSION}-{hp.synthetic_rows}-{hp.seed}"

    def synthetic_dataset(self) -> Path:
        """The synthetic dataset's directory, generated on first use (atomically: a temporary folder renamed)."""
        from lit_safe.data_modules.safesora_synthetic import generate

        root = self._synthetic_root()
        if not (root / "synthetic.json").is_file():
            root.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
            try:
                generate(tmp, self.hparams.synthetic_rows, seed=self.hparams.seed)
                os.replace(tmp, root)
            except OSError:
                shutil.rmtree(tmp, ignore_errors=True)
                if not (root / "synthetic.json").is_file():
                    raise
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        return root

    def _config_dir(self) -> Path | None:
        """The directory whose ``config-<split>`` files are read (synthetic and directory sources)."""
        kind = self._source_kind()
        if kind == "synthetic":
            base = self.synthetic_dataset()
        elif kind == "dir":
            base = Path(self.hparams.source).expanduser()
        else:
            return None
        subset = self.hparams.subset or ("label" if self.hparams.view == "moderation" else None)
        if subset is not None and (base / subset).is_dir():
            return base / subset
        if self.hparams.subset is not None:
            raise DataValidationError(f"{base} has no subset folder {self.hparams.subset!r} (label: SafeSora-Label, "
                                      f"eval: SafeSora-Eval)")
        return base

    def _video_roots(self) -> list[Path]:
        hp = self.hparams
        if hp.video_dir:
            return [Path(hp.video_dir).expanduser()]
        kind = self._source_kind()
        if kind in ("synthetic", "dir"):
            base = self.synthetic_dataset() if kind == "synthetic" else Path(hp.source).expanduser()
            return [base, base.parent]
        if kind == "file":
            base = Path(hp.source).expanduser().parent
            return [base, base.parent]
        return [Path.cwd()]

    def split_files(self) -> dict[str, Path] | None:
        """The ``config-<split>`` files of the synthetic or directory source (see :meth:`_config_dir`); a single
        file, the hub or a prepared dataset as for every dataset."""
        directory = self._config_dir()
        return _config_files(directory) if directory is not None else super().split_files()

    # ------------------------------------------------------------------------------------------------ predicting
    @property
    def prediction_fields(self) -> tuple[str, ...]:
        """``{"prompt", "video_path"}`` lines for the video views; the text views (``rewrites``...) read
        ``{"prompt", "response"}`` lines, for modules that predict on them (``SFTModule`` and ``DPOModule`` do not)."""
        return ("prompt", "video_path") if self.hparams.view in VIDEO_VIEWS else super().prediction_fields

    def _prediction_reader(self, path: Path) -> VideoReader:
        """Decodes the videos of a ``predict_file`` (paths relative to its folder, or absolute)."""
        hp = self.hparams
        return VideoReader([path.parent], hp.num_frames, hp.frame_size, "frames", threads=max(1, hp.num_workers))

    def check_prediction(self, row: Any, path: Path) -> list[tuple[str, str]]:
        if self.hparams.view not in VIDEO_VIEWS:
            return super().check_prediction(row, path)
        if not isinstance(row, dict):
            return not_an_object(row)
        problems = [(name, "missing required field" if row.get(name) is None else
                     f"expected str, got {type(row[name]).__name__}") for name in self.prediction_fields
                    if not isinstance(row.get(name), str)]
        if not problems and self._prediction_reader(path).resolve(row["video_path"]) is None:
            problems.append(("video_path", f"video file not found: {row['video_path']}"))
        return problems

    def prediction_items(self, rows: list[Row], path: Path) -> list[dict[str, Any]]:
        """Video views: ``{"input_ids", "frames", "line"}`` per line whose video decodes.

        Raises:
            DataValidationError: naming every unreadable video (up to ten), unless ``on_bad_row: skip``.
        """
        hp = self.hparams
        if hp.view not in VIDEO_VIEWS:
            return super().prediction_items(rows, path)
        decoded = self._prediction_reader(path).read([row["video_path"] for _, row in rows])
        items, problems = [], []
        for where, row in rows:
            frames = decoded[row["video_path"]]
            if isinstance(frames, str):
                problems.append(f"{where}: field 'video_path': {frames}")
                continue
            ids, _ = encode_prompt_texts(self.tokenizer, [row["prompt"]], hp.prompt_template, hp.max_length)
            items.append({"input_ids": ids[0], "frames": frames, "line": line_number(where)})
        if problems and hp.on_bad_row == "error":
            listed = "\n  ".join(problems[:10])
            raise DataValidationError(f"{len(problems)} unreadable video(s) in {path}:\n  {listed}")
        if problems:
            print(f"{path}: skipped {len(problems)} line(s) with unreadable videos")
        return items

    def collate_predictions(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """Video views: the text batch with ``frames uint8 (B, F, 3, S, S)``."""
        if self.hparams.view not in VIDEO_VIEWS:
            return super().collate_predictions(items)
        return {**super().collate_predictions(items), "frames": stacked_frames(items, ("frames",))}


def _config_files(directory: Path) -> dict[str, Path]:
    """SafeSora's split files in ``directory``: ``config-<split>.json(.gz)`` -> split, ``config.json(.gz)`` -> train;
    other data files by their stem (``train.jsonl`` -> train)."""
    out: dict[str, Path] = {}
    for split, path in sources.local_splits(directory).items():
        name = "train" if split == "config" else split.removeprefix("config-")
        if name in out:
            raise DataValidationError(f"{directory}: two files for split {name!r}: {out[name]} and {path}")
        out[name] = path
    return out


__all__ = ["DIMENSIONS", "SafeSoraDataModule", "cost_sign", "preferred"]
