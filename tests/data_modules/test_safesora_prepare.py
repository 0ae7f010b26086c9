"""SafeSora preparation in blocks and worker processes: the videos are decoded and resized in the workers, the items
are the same bytes for 1 and 2 workers and for any block size, a bad video in the middle of the data is dropped and
counted exactly (``on_bad_row: skip``) or named with its row and file (``error``) whatever the workers, and the
moderation view's label summary is summed over blocks to the counts of the rows. Memory is measured by
``benchmarks/video_loading.py --mode prepare``, not here; what bounds it (rows per block, rows per decoding chunk) is
checked by value."""

import gzip
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from litdata import StreamingDataset

from lit_safe.data_modules import safesora
from lit_safe.data_modules.preparation import available_cores
from lit_safe.data_modules.safesora import SafeSoraDataModule, VideoReader, video_block_rows
from lit_safe.data_modules.safesora_synthetic import generate
from lit_safe.data_modules.schemas import SAFESORA_CATEGORIES
from lit_safe.data_modules.sources import DataValidationError
from lit_safe.models import frames
from lit_safe.models.frames import read_video

SIZE, FRAMES, PAIRS = 32, 4, 60  # 20 prompts x 3 videos: 54 training pairs, 6 test pairs


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("safesora") / "data", PAIRS, seed=3)


def _module(source: Path, prepared: Path, workers: int, block_rows: int | None = None, **kwargs) -> SafeSoraDataModule:
    settings = {"tokenizer": "tiny", "source": str(source), "frame_size": SIZE, "num_frames": FRAMES, "num_workers": 0,
                "prepared_dir": str(prepared), "prepare_workers": workers}
    dm = SafeSoraDataModule(**{**settings, **kwargs})
    if block_rows is not None:
        dm.prepare_block_rows = block_rows
    return dm


def _load(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return json.load(f)


def _write(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def _items(location: str, split: str) -> list[dict]:
    return list(StreamingDataset(str(Path(location) / split), shuffle=False))


# ------------------------------------------------------------------------------------------- the same bytes
@pytest.mark.parametrize("view", ["preference", "moderation"])
def test_one_or_two_workers_and_any_block_size_write_the_same_bytes(prepared_files, view, synthetic, tmp_path, capsys):
    one = _module(synthetic, tmp_path, workers=1, view=view, val_fraction=0.25, dimension="safety_first")
    assert one.prepare_block_rows == 64  # 32 px frames: the most rows a block takes
    one.prepare()
    assert "(in this process)" in capsys.readouterr().out
    files, summary, report = prepared_files(one.prepared_location()), one.label_summary("train"), one.report.to_dict()
    assert {"train/chunk-0-0.bin", "val/chunk-0-0.bin", "test/chunk-0-0.bin", "report.json", "meta.json"} <= set(files)
    for workers, block_rows in ((2, 64), (2, 5), (1, 7)):
        other = _module(synthetic, tmp_path, workers=workers, block_rows=block_rows, view=view, val_fraction=0.25,
                        dimension="safety_first")
        assert other.prepared_location() == one.prepared_location()  # neither is in the fingerprint
        other.prepare(force=True)
        out = capsys.readouterr().out
        assert ("(2 worker processes)" in out) == (workers == 2)
        assert prepared_files(other.prepared_location()) == files, (workers, block_rows)  # chunks, index, report, meta
        assert other.report.to_dict() == report
        assert other.label_summary("train") == summary
    kept = sum(split["kept"] for split in report["splits"].values())
    if view == "preference":  # every pair of the source is an item; safety_first's deciding labels all counted
        assert kept == PAIRS
        decided = sum(split["notes"].get(f"decided_by_{label}", 0) for split in report["splits"].values()
                      for label in ("helpfulness", "harmlessness", "is_safe"))
        assert decided == PAIRS
    else:  # one item per video; the label summary of the training split counts its rows' labels
        labels = _load(synthetic / "label" / "config-train.json.gz")
        rows = [labels[int(item["row"])] for item in _items(one.prepared_location(), "train")]
        assert kept == len(labels) + len(_load(synthetic / "label" / "config-test.json.gz"))
        assert summary == {"items": len(rows), "unsafe": sum(not r["is_safe"] for r in rows),
                           "categories": SAFESORA_CATEGORIES, "severity_levels": 0, "severity_counts": [],
                           "category_positives": [sum(r["video_labels"][c] for r in rows) for c in SAFESORA_CATEGORIES]}
        assert 0 < summary["unsafe"] < summary["items"]


# ----------------------------------------------------------------------------------------------- bad videos
@pytest.fixture
def spread(synthetic, tmp_path) -> tuple[Path, list[dict], dict[str, list[int]]]:
    """The 54 training pairs in ``tmp_path/data/pairs.json`` (videos copied beside it), with, in the middle of the
    file, a pair whose video is missing, one without a prompt, one with the same video twice, and one corrupt video
    file (shared by the pairs of its prompt); returns the file, its rows and the row numbers of each."""
    rows = json.loads(json.dumps(_load(synthetic / "config-train.json.gz")))
    data = tmp_path / "data"
    for row in rows:
        for key in ("video_0", "video_1"):
            target = data / row[key]["video_path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(synthetic / row[key]["video_path"], target)
    rows[20]["video_1"]["video_path"] = "videos/gone/missing.mp4"
    rows[27]["prompt_text"] = "  "
    rows[33]["video_1"] = dict(rows[33]["video_0"])
    broken = rows[24]["video_0"]["video_path"]
    (data / broken).write_bytes(b"not an mp4 at all " * 64)
    users = [i for i, r in enumerate(rows) if broken in (r["video_0"]["video_path"], r["video_1"]["video_path"])]
    assert len(users) == 2 and 24 in users and not {20, 27, 33} & set(users)  # its prompt's other pair uses it too
    return _write(data / "pairs.json", rows), rows, {"missing": [20], "blank": [27], "same": [33], "broken": users}


@pytest.mark.parametrize(("workers", "block_rows"), [(1, 64), (2, 5)])
def test_bad_rows_in_the_middle_are_dropped_and_counted_exactly(workers, block_rows, spread, tmp_path):
    path, rows, bad = spread
    dm = _module(path, tmp_path / "prepared", workers, block_rows, on_bad_row="skip", val_fraction=0.0,
                 test_split=None)
    report = dm.prepare().splits["train"]
    assert report.rows_read == len(rows) == 54
    assert dict(report.dropped) == {"invalid:video_1.video_path": 1, "empty_prompt": 1, "identical_videos": 1,
                                    "unreadable_video": 2}
    dropped = sorted(i for numbers in bad.values() for i in numbers)
    assert report.kept == len(rows) - len(dropped) == 49
    items = _items(dm.prepared_location(), "train")
    assert [int(item["row"]) for item in items] == [i for i in range(len(rows)) if i not in dropped]
    for item in items[::12]:  # the frames of the winning video, decoded and resized in the workers
        row = rows[int(item["row"])]
        winner = row[row["helpfulness"]]["video_path"]
        assert np.array_equal(item["first"], read_video(path.parent / winner, FRAMES, SIZE))


def test_a_corrupt_video_is_named_with_its_row_and_file_by_two_workers(spread, tmp_path):
    path, rows, bad = spread
    rows = json.loads(json.dumps(rows))
    rows[20]["video_1"]["video_path"] = rows[21]["video_1"]["video_path"]  # only the corrupt video stays bad
    rows[27]["prompt_text"] = "a prompt"
    _write(path, rows)
    prepared = tmp_path / "prepared"
    dm = _module(path, prepared, workers=2, block_rows=5, val_fraction=0.0, test_split=None)
    with pytest.raises(DataValidationError) as raised:
        dm.prepare()
    message = str(raised.value)
    first = bad["broken"][0]  # the first row using it, whichever worker decoded which block
    assert message.startswith(f"row {first} (pair_id {rows[first]['pair_id']}): ")
    assert rows[first]["video_0"]["video_path"] in message and "cannot decode" in message
    assert "on_bad_row: skip" in message
    assert [p.name for p in prepared.iterdir() if not p.name.startswith("synthetic")] == []  # nothing left staged


def test_moderation_drops_an_unreadable_video_and_sums_labels_over_blocks(synthetic, tmp_path):
    labels = json.loads(json.dumps(_load(synthetic / "label" / "config-train.json.gz")))
    data = tmp_path / "data"
    for row in labels:
        (data / row["video_path"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(synthetic / row["video_path"], data / row["video_path"])
    middle = len(labels) // 2
    (data / labels[middle]["video_path"]).write_bytes(b"garbage " * 100)
    path = _write(data / "labels.json", labels)
    summaries = []
    for workers, block_rows in ((1, 64), (2, 4)):
        dm = _module(path, tmp_path / f"prepared-{workers}", workers, block_rows, view="moderation",
                     on_bad_row="skip", val_fraction=0.0, test_split=None)
        report = dm.prepare().splits["train"]
        assert dict(report.dropped) == {"unreadable_video": 1} and report.kept == len(labels) - 1
        summaries.append(dm.label_summary("train"))
    kept = [r for i, r in enumerate(labels) if i != middle]
    assert summaries[0] == summaries[1]
    assert summaries[0]["items"] == len(kept) and summaries[0]["unsafe"] == sum(not r["is_safe"] for r in kept)
    assert summaries[0]["category_positives"] == [sum(r["video_labels"][c] for r in kept) for c in SAFESORA_CATEGORIES]


# ------------------------------------------------------------------------------------ what bounds the memory
def test_block_rows_and_decoding_threads_by_hand():
    assert video_block_rows(2, 8, 224, "frames") == 27  # 64 MiB / (2 x 8 x 224 x 224 x 3 bytes)
    assert video_block_rows(1, 8, 224, "frames") == 55
    assert video_block_rows(2, 16, 512, "frames") == 2
    assert video_block_rows(2, 64, 1024, "frames") == 1  # one row even when it alone exceeds the budget
    assert video_block_rows(2, 8, 224, "mp4") == 64  # items keep small clips
    assert video_block_rows(2, FRAMES, SIZE, "frames") == 64


def test_each_preparation_process_decodes_in_one_thread_and_blocks_fit_the_frames(synthetic, tmp_path):
    for workers in (0, 1, 2, 4 * available_cores()):  # the cores are used by processes (threads fragment memory)
        assert _module(synthetic, tmp_path, workers).view.reader.threads == 1
    dm = _module(synthetic, tmp_path, 1, frame_size=224, num_frames=8)
    assert dm.prepare_block_rows == 27
    assert _module(synthetic, tmp_path, 1, frame_size=224, num_frames=8, view="moderation").prepare_block_rows == 55
    assert _module(synthetic, tmp_path, 1, view="rewrites").prepare_block_rows == 512  # text: the default


@pytest.mark.parametrize("workers", [1, 2])
def test_videos_are_decoded_in_the_workers_a_chunk_at_a_time(workers, synthetic, tmp_path, monkeypatch):
    calls = tmp_path / "calls.txt"  # appended to by whichever process decodes (the workers are forked)
    original = VideoReader.read

    def read(self, video_paths):
        with open(calls, "a") as f:
            f.write(f"{os.getpid()} {len(video_paths)}\n")
        return original(self, video_paths)

    monkeypatch.setattr(VideoReader, "read", read)
    dm = _module(synthetic, tmp_path, workers, block_rows=10, val_fraction=0.0, video_storage="mp4")
    dm.view.reader.threads = 2
    dm.prepare()
    asked = [tuple(map(int, line.split())) for line in calls.read_text().splitlines()]
    assert sum(n for _, n in asked) == 2 * PAIRS  # every video of every pair once
    assert max(n for _, n in asked) == 2 * safesora.DECODE_ROWS_PER_THREAD * 2  # 4 rows per thread at a time
    pids = {pid for pid, _ in asked}
    if workers == 1:
        assert pids == {os.getpid()}
    else:  # decoded by the worker processes only (which of the two takes which block is the scheduler's choice)
        assert os.getpid() not in pids and 1 <= len(pids) <= 2


# ------------------------------------------------------------------------------ decoding keeps the sampled frames
def _every_frame(path: Path) -> np.ndarray:
    """Every decodable frame of a video, ``uint8 (T, H, W, 3)`` (the reference: what a full decode holds)."""
    import av

    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(container.streams.video[0])])


@pytest.fixture(scope="module")
def long_video(tmp_path_factory) -> Path:
    """A 60-frame 48 x 80 clip whose frames all differ (a ramp of brightness over a fixed noise)."""
    noise = np.random.default_rng(0).integers(0, 120, size=(1, 48, 80, 3))
    return frames.write_mp4(tmp_path_factory.mktemp("clip") / "long.mp4",
                            (noise + 2 * np.arange(60)[:, None, None, None]).astype(np.uint8), fps=12)


@pytest.mark.parametrize("num_frames", [1, 8, 60, 75])
def test_read_video_is_the_uniform_sample_of_every_decoded_frame(long_video, num_frames):
    everything = _every_frame(long_video)
    assert len(everything) == 60
    expected = frames.resize_array(everything[frames.sample_indices(60, num_frames)], 32)
    assert np.array_equal(read_video(long_video, num_frames, 32), expected)


def test_only_the_wanted_frames_are_kept_while_decoding(long_video):
    kept, total = frames._decode_picked(long_video, {0, 17, 59})
    assert total == 60 and sorted(kept) == [0, 17, 59]
    everything = _every_frame(long_video)
    assert all(np.array_equal(kept[i], everything[i]) for i in kept)


@pytest.mark.parametrize("announced", [5, 61, 200])
def test_a_wrong_packet_count_still_gives_the_sample_of_the_frames_that_decode(long_video, announced, monkeypatch):
    monkeypatch.setattr(frames, "_count_packets", lambda source, name: announced)
    expected = frames.resize_array(_every_frame(long_video)[frames.sample_indices(60, 8)], 32)
    assert np.array_equal(read_video(long_video, 8, 32), expected)
    assert np.array_equal(read_video(long_video.read_bytes(), 8, 32), expected)  # a stored clip's bytes
