"""The synthetic SafeSora generator (data_modules/safesora_synthetic.py): the upstream layout and schema, videos whose
content carries the labels (harm markers, object size and smoothness), helpfulness sub-labels that follow the
attributes, prompt-disjoint train and test splits, and determinism for a seed."""

import gzip
import json
import re
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from lit_safe.data_modules.safesora_synthetic import (
    DIRECTIONS,
    HARM_PHRASES,
    MARKER_CELL,
    PLACES,
    SLOTS,
    SUB_WEIGHTS,
    generate,
    parse_video_text,
    render,
)
from lit_safe.data_modules.schemas import (
    SAFESORA_CATEGORIES,
    check_safesora_eval_row,
    check_safesora_label_row,
    check_safesora_pair,
)
from lit_safe.models.frames import read_video

NUM_PAIRS = 30  # 10 prompts x 3 videos x 3 pairs; test_fraction 0.125 -> 1 test prompt
EVAL_PROMPTS = 6
CHOICES = ("video_0", "video_1")
# Written out here (not imported), so that the test reads the texts as a user would.
COLOURS = {"red", "green", "blue", "yellow", "cyan", "orange"}
SHAPES = {"square", "disc", "bar"}


def _load(path: Path) -> list[dict]:
    assert path.read_bytes()[:2] == b"\x1f\x8b", f"{path} is not gzip'd"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = json.load(f)
    assert isinstance(rows, list)
    return rows


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, dict[str, list[dict]]]:
    root = generate(tmp_path_factory.mktemp("safesora_synthetic") / "data", NUM_PAIRS, seed=0,
                    num_eval_prompts=EVAL_PROMPTS)
    files = {
        "train": root / "config-train.json.gz",
        "test": root / "config-test.json.gz",
        "label_train": root / "label" / "config-train.json.gz",
        "label_test": root / "label" / "config-test.json.gz",
        "eval": root / "eval" / "config-eval.json.gz",
    }
    return root, {name: _load(path) for name, path in files.items()}


def _attributes(text: str) -> dict:
    """What a text asks for, read word by word."""
    words = re.findall(r"[a-z]+", text.lower())
    return {
        "colour": next(w for w in words if w in COLOURS),
        "shape": next(w for w in words if w in SHAPES),
        "direction": words[words.index("moving") + 1],
        "large": "large" in words,
        "smooth": "shaky" not in words,
    }


def _mean_colour(frames: np.ndarray, top: int, left: int) -> np.ndarray:
    """Mean RGB of the inner 4 x 4 pixels of the 8 x 8 cell at (top, left), over all frames."""
    return frames[:, top + 2 : top + 6, left + 2 : left + 6].reshape(-1, 3).mean(axis=0)


def _is_magenta(rgb: np.ndarray) -> bool:
    return rgb[0] > 180 and rgb[2] > 180 and rgb[1] < 90


# ------------------------------------------------------------------------------------------------- layout
def test_layout_is_the_upstream_one(dataset):
    root, data = dataset
    assert sorted(p.name for p in root.iterdir()) == [
        "config-test.json.gz", "config-train.json.gz", "eval", "label", "synthetic.json", "videos"]
    assert sorted(p.name for p in (root / "label").iterdir()) == ["config-test.json.gz", "config-train.json.gz"]
    assert sorted(p.name for p in (root / "eval").iterdir()) == ["config-eval.json.gz"]
    assert len(data["train"]) + len(data["test"]) == NUM_PAIRS
    assert len(data["test"]) == 3  # one prompt, its three pairs
    assert len(data["label_train"]) + len(data["label_test"]) == 3 * NUM_PAIRS // 3  # 10 prompts x 3 videos
    assert len(data["eval"]) == EVAL_PROMPTS
    assert json.loads((root / "synthetic.json").read_text())["num_pairs"] == NUM_PAIRS

    videos = data["label_train"] + data["label_test"]
    on_disk = sorted(str(p.relative_to(root)) for p in (root / "videos").rglob("*"))
    assert on_disk == sorted([f"videos/{v['prompt_id']}" for v in videos][::3] + [v["video_path"] for v in videos])
    for video in videos:
        assert video["video_path"] == f"videos/{video['prompt_id']}/{video['video_id']}.mp4"
        assert not Path(video["video_path"]).is_absolute()
        assert (root / video["video_path"]).is_file()
    assert len({v["video_id"] for v in videos}) == len(videos)
    # every video of a pair is a labelled video (same record, without the labels)
    by_id = {v["video_id"]: v for v in videos}
    for pair in data["train"] + data["test"]:
        for key in CHOICES:
            record = pair[key]
            labelled = by_id[record["video_id"]]
            assert {k: v for k, v in labelled.items() if k not in ("prompt_labels", "video_labels")} == record
            assert record["prompt_id"] == pair["prompt_id"] and record["prompt_text"] == pair["prompt_text"]


def test_every_row_passes_its_schema_check(dataset):
    _, data = dataset
    for pair in data["train"] + data["test"]:
        assert check_safesora_pair(pair) == [], pair["pair_id"]
        assert set(pair["sub_preferences"]) == {"instruction_following", "correctness", "information", "aesthetics"}
        assert pair["video_0"]["video_id"] != pair["video_1"]["video_id"]
    for row in data["label_train"] + data["label_test"]:
        assert check_safesora_label_row(row) == [], row["video_id"]
        assert list(row["video_labels"]) == SAFESORA_CATEGORIES
        assert list(row["prompt_labels"]) == SAFESORA_CATEGORIES
    for row in data["eval"]:
        assert check_safesora_eval_row(row) == [], row
        assert set(row) == {"prompt_id", "prompt_text", "prompt_type"}
    types = [row["prompt_type"] for row in data["eval"]]
    assert types.count("safety_critical") == types.count("safety_neutral") == EVAL_PROMPTS // 2
    assert len({row["pair_id"] for row in data["train"] + data["test"]}) == NUM_PAIRS


def test_train_and_test_prompts_are_disjoint(dataset):
    _, data = dataset
    for key in ("prompt_id", "prompt_text"):
        train = {row[key] for row in data["train"]} | {row[key] for row in data["label_train"]}
        test = {row[key] for row in data["test"]} | {row[key] for row in data["label_test"]}
        assert train and test
        assert not train & test
    assert {r["prompt_id"] for r in data["test"]} == {r["prompt_id"] for r in data["label_test"]}


# ------------------------------------------------------------------------------------------ labels in videos
def test_marker_slots_are_distinct_border_cells():
    assert len(SLOTS) == len(SAFESORA_CATEGORIES) == 12
    assert len(set(SLOTS)) == 12
    for top, left in SLOTS:
        assert top % MARKER_CELL == 0 and left % MARKER_CELL == 0
        edge = 64 - MARKER_CELL
        assert top in (0, edge) or left in (0, edge)  # on the border of a 64 x 64 frame


def test_videos_show_a_marker_for_each_labelled_category_and_no_other(dataset):
    root, data = dataset
    rows = data["label_train"] + data["label_test"]
    assert any(not r["is_safe"] for r in rows) and any(r["is_safe"] for r in rows)  # both kinds are checked
    for row in rows:
        frames = read_video(root / row["video_path"], num_frames=4, size=64)
        assert frames.shape == (4, 64, 64, 3)
        for category, (top, left) in zip(SAFESORA_CATEGORIES, SLOTS):
            shown = _is_magenta(_mean_colour(frames, top, left))
            assert shown == row["video_labels"][category], (row["video_id"], category, row["video_text"])
        assert row["is_safe"] == (not any(row["video_labels"].values()))


def test_prompt_labels_are_what_the_prompt_asks_for(dataset):
    _, data = dataset
    for row in data["label_train"] + data["label_test"]:
        asked = [c for c, on in row["prompt_labels"].items() if on]
        assert (row["prompt_type"] == "safety_critical") == bool(asked)


def test_object_size_and_smoothness_are_visible(dataset):
    root, data = dataset
    rows = data["label_train"] + data["label_test"]
    assert {_attributes(r["video_text"])["large"] for r in rows} == {True, False}
    assert {_attributes(r["video_text"])["smooth"] for r in rows} == {True, False}
    for row in rows:
        frames = read_video(root / row["video_path"], num_frames=16, size=64).astype(np.float32)
        wanted = _attributes(row["video_text"])
        magenta = (frames[..., 0] > 180) & (frames[..., 2] > 180) & (frames[..., 1] < 90)
        # every object colour has a channel >= 200; backgrounds are dark (an unsafe scene's red tint is below 100)
        bright = frames.max(axis=-1) > 160
        object_pixels = (bright & ~magenta).sum(axis=(1, 2))
        # large: a square of 27 x 27, a disc of radius 13 or a bar of 37 x 11; small: at most 13 x 13
        assert (object_pixels.max() > 280) == wanted["large"], (row["video_text"], object_pixels.max())
        # shaky: per-frame noise on the background (std 18); smooth: flat up to the codec (the median absolute
        # deviation ignores the few blended pixels at the object's edges)
        background = frames[(frames.max(axis=-1) < 140) & ~magenta]
        spread = np.median(np.abs(background - np.median(background, axis=0)), axis=0).mean()
        assert (spread > 5) == (not wanted["smooth"]), (row["video_text"], spread)


# ----------------------------------------------------------------------------------------------- preferences
def test_sub_preferences_follow_the_attributes(dataset):
    _, data = dataset
    agree: dict[str, list[bool]] = {name: [] for name in SUB_WEIGHTS}
    for pair in data["train"] + data["test"]:
        asked = _attributes(pair["prompt_text"])
        got = [_attributes(pair[key]["video_text"]) for key in CHOICES]
        scores = {
            "instruction_following": [float(g["colour"] == asked["colour"]) for g in got],
            "correctness": [(g["shape"] == asked["shape"]) + (g["direction"] == asked["direction"]) for g in got],
            "information": [float(g["large"]) for g in got],
            "aesthetics": [float(g["smooth"]) for g in got],
        }
        for name, (a, b) in scores.items():
            if a != b:  # one video is better on this attribute
                agree[name].append(pair["sub_preferences"][name] == ("video_0" if a > b else "video_1"))
    for name, votes in agree.items():
        assert len(votes) >= 5, (name, len(votes))  # enough pairs decide the attribute for the check to mean much
        assert sum(votes) / len(votes) > 0.8, (name, sum(votes), len(votes))


def test_harmlessness_prefers_fewer_harms(dataset):
    _, data = dataset
    by_id = {v["video_id"]: v for v in data["label_train"] + data["label_test"]}
    decided = 0
    for pair in data["train"] + data["test"]:
        harms = [sum(by_id[pair[k]["video_id"]]["video_labels"].values()) for k in CHOICES]
        if harms[0] != harms[1]:
            decided += 1
            assert pair["harmlessness"] == CHOICES[int(np.argmin(harms))], pair["pair_id"]
    assert decided >= 5


def test_vocabulary_is_package_data():
    text = resources.files("lit_safe.data_modules").joinpath("phrases/safesora_vocabulary.json").read_text()
    vocabulary = json.loads(text)
    assert set(vocabulary["colours"]) == COLOURS and set(vocabulary["shapes"]) == SHAPES
    assert list(HARM_PHRASES) == SAFESORA_CATEGORIES  # render() and parse_video_text() list harms in this order
    assert DIRECTIONS["right"] == (1, 0) and PLACES["in space"] == (10, 10, 20)  # read as tuples
    assert all(len(rgb) == 3 and all(0 <= c <= 255 for c in rgb) for rgb in (*vocabulary["colours"].values(),
                                                                               *vocabulary["places"].values()))


def test_parse_video_text_hand_values():
    spec = parse_video_text("a large blue disc moving up in a park, shaky camera, with a robbery, with self harm")
    assert spec["colour"] == "blue" and spec["shape"] == "disc" and spec["direction"] == "up"
    assert spec["large"] is True and spec["smooth"] is False
    assert spec["harms"] == ["crime", "other_harmful"]
    spec = parse_video_text("a small orange square moving left in a city, smooth camera")
    assert (spec["colour"], spec["shape"], spec["direction"], spec["large"], spec["smooth"], spec["harms"]) == (
        "orange", "square", "left", False, True, [])


def test_a_bar_with_discriminating_signs_is_still_a_bar():
    # "discriminating" contains "disc": the shape must be read as a word, or the video shows a disc for a bar
    text = "a small green bar moving up in a city, smooth camera, with discriminating signs"
    assert parse_video_text(text)["shape"] == "bar"
    frames = render(text, seed=0)
    green = (frames[0, 8:56, 8:56, 1] > 150) & (frames[0, 8:56, 8:56, 0] < 100)
    ys, xs = np.nonzero(green)
    assert xs.max() - xs.min() > 2 * (ys.max() - ys.min())  # wide and flat


def test_render_hand_checks():
    frames = render("a large red square moving right in space, smooth camera, with illegal drugs", seed=1)
    assert frames.shape == (16, 64, 64, 3) and frames.dtype == np.uint8
    top, left = SLOTS[SAFESORA_CATEGORIES.index("contraband")]
    cell = frames[:, top : top + MARKER_CELL, left : left + MARKER_CELL]
    assert (cell == np.array([255, 0, 255], dtype=np.uint8)).all()
    red = (frames[..., 0] == 220) & (frames[..., 1] == 40) & (frames[..., 2] == 40)
    assert (red.sum(axis=(1, 2)) > 27 * 27 - 64).all()  # a 27 x 27 square (half size 13), maybe under a marker
    xs = [np.nonzero(red[f])[1].mean() for f in range(16)]
    assert (np.diff(xs) > 0).all()  # moving right
    assert np.array_equal(frames, render("a large red square moving right in space, smooth camera, with illegal drugs",
                                         seed=1))


# ------------------------------------------------------------------------------------------------ determinism
def test_same_seed_same_dataset_other_seed_other_dataset(tmp_path):
    a = generate(tmp_path / "a", 6, seed=3, num_eval_prompts=2)
    b = generate(tmp_path / "b", 6, seed=3, num_eval_prompts=2)
    c = generate(tmp_path / "c", 6, seed=4, num_eval_prompts=2)
    names = ["config-train.json.gz", "config-test.json.gz", "label/config-train.json.gz",
             "label/config-test.json.gz", "eval/config-eval.json.gz"]
    for name in names:
        assert _load(a / name) == _load(b / name), name
    assert _load(a / "config-train.json.gz") != _load(c / "config-train.json.gz")
    videos_a = sorted(p.relative_to(a) for p in a.rglob("*.mp4"))
    assert videos_a == sorted(p.relative_to(b) for p in b.rglob("*.mp4"))
    assert len(videos_a) == 2 * 3  # 6 pairs: 2 prompts x 3 videos
    for relative in videos_a:
        # the same rendered frames; H.264 encoding (x264) is not always bit-exact from run to run, so the
        # decoded frames are compared up to codec noise
        diff = np.abs(read_video(a / relative, 16, 64).astype(np.int16) - read_video(b / relative, 16, 64))
        assert diff.mean() < 1.5, (relative, diff.mean())
