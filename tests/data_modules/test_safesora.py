"""SafeSoraDataModule on the synthetic source (the upstream layout with real mp4 files): the batches of every view,
pair ordering traced back to the config rows through ``row`` and the decoded videos, the safety view's signs and
self-contradicting pairs, the source forms (config file, .json, directory, ``video_dir``), bad input (missing,
corrupt videos, wrong labels, the wrong subset), mp4 storage, ``predict_file`` and the moderation label counts."""

import functools
import gzip
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch

from lit_safe.data_modules.safesora import SafeSoraDataModule
from lit_safe.data_modules.schemas import SAFESORA_CATEGORIES
from lit_safe.data_modules.sources import DataValidationError
from lit_safe.models.frames import read_video, to_batch_layout

SIZE, FRAMES, ROWS = 32, 4, 60  # 60 pairs: 20 prompts x 3 videos; 2 test prompts (6 pairs)
CHOICES = ("video_0", "video_1")
# Written out here (not imported) so that a change of the module's default templates is caught.
REWRITE_TEMPLATE = (
    "Rewrite the user's request as a detailed prompt for a text-to-video model.\nRequest: {prompt}\nVideo prompt: "
)
PAIR_KEYS = {"input_ids", "attention_mask", "frames", "row", "first_sign", "second_sign"}


# ----------------------------------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("safesora")


@pytest.fixture(scope="module")
def make(workdir):
    """``make(**kwargs)``: a small SafeSoraDataModule (synthetic source unless given), prepared under ``workdir``."""

    def make(**kwargs) -> SafeSoraDataModule:
        settings = {"tokenizer": "tiny", "source": "synthetic", "synthetic_rows": ROWS, "frame_size": SIZE,
                    "num_frames": FRAMES, "num_workers": 0, "batch_size": 4, "prepared_dir": str(workdir / "prepared")}
        settings.update(kwargs)
        return SafeSoraDataModule(**settings)

    return make


@pytest.fixture(scope="module")
def synthetic(make) -> Path:
    """The synthetic dataset's root (generated once for the module)."""
    root = make().synthetic_dataset()
    assert (root / "config-train.json.gz").is_file()
    return root


def _load(path: Path) -> list[dict]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return json.load(f)


def _config(root: Path, split: str, subset: str = "") -> list[dict]:
    """The source rows a prepared split's ``row`` points into (val is carved from train)."""
    name = "train" if split == "val" else split
    return _load(root / subset / f"config-{name}.json.gz")


@functools.cache
def _decoded(path: str) -> torch.Tensor:
    """A video file as the module stores it: ``uint8 (F, 3, S, S)``."""
    return to_batch_layout(read_video(path, FRAMES, SIZE))


def _batches(dm: SafeSoraDataModule) -> dict[str, list[dict]]:
    """Every batch of every prepared split."""
    dm.prepare()
    dm.setup()
    loaders = {"train": dm.train_dataloader, "val": dm.val_dataloader, "test": dm.test_dataloader}
    return {split: list(loader()) for split, loader in loaders.items() if dm.has_split(split)}


def _pair_items(batches: list[dict]) -> list[dict]:
    """Pair batches (shapes and dtypes checked) -> one dict per pair."""
    items = []
    for batch in batches:
        assert set(batch) == PAIR_KEYS
        b = batch["input_ids"].shape[0]
        assert batch["input_ids"].dtype == torch.long and batch["attention_mask"].shape == batch["input_ids"].shape
        assert batch["frames"].shape == (2 * b, FRAMES, 3, SIZE, SIZE)
        assert batch["frames"].dtype == torch.uint8
        for key in ("row", "first_sign", "second_sign"):
            assert batch[key].shape == (b,) and batch[key].dtype == torch.long
        for i in range(b):
            n = int(batch["attention_mask"][i].sum())
            assert batch["attention_mask"][i, :n].all()  # right padding
            items.append({"row": int(batch["row"][i]), "ids": batch["input_ids"][i, :n].tolist(),
                          "first": batch["frames"][i], "second": batch["frames"][b + i],
                          "first_sign": int(batch["first_sign"][i]), "second_sign": int(batch["second_sign"][i])})
    return items


def _which(row: dict, frames: torch.Tensor, roots: list[Path]) -> int:
    """Which video of a pair row (0 or 1) decodes to exactly ``frames``."""
    matches = []
    for k, key in enumerate(CHOICES):
        path = next(r / row[key]["video_path"] for r in roots if (r / row[key]["video_path"]).is_file())
        if torch.equal(_decoded(str(path)), frames):
            matches.append(k)
    assert len(matches) == 1, (row["pair_id"], matches)
    return matches[0]


def _prompt_ids(tokenizer, text: str, template: str = "{prompt}") -> list[int]:
    """BOS + the prompt in its template, then EOS (how the video views tokenise the user prompt)."""
    ids = tokenizer(template.replace("{prompt}", text))["input_ids"]
    assert ids[-1] != tokenizer.eos_token_id
    return [*ids, tokenizer.eos_token_id]


def _sign(record: dict) -> int:
    return {True: -1, False: 1, None: 0}[record.get("is_safe")]


def _expected_first(row: dict, dimension: str) -> int:
    if dimension == "safety_first":
        safe_0, safe_1 = row["video_0"]["is_safe"], row["video_1"]["is_safe"]
        if safe_0 != safe_1:  # the safe video wins
            return 0 if safe_0 else 1
        return int(row["helpfulness" if safe_0 and safe_1 else "harmlessness"][-1])
    if dimension in ("helpfulness", "harmlessness"):
        return int(row[dimension][-1])
    return int(row["sub_preferences"][dimension][-1])


def _write_json(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as f:
            json.dump(rows, f)
    else:
        path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def _copy_videos(rows: list[dict], source_root: Path, target_root: Path) -> None:
    for row in rows:
        for key in CHOICES:
            target = target_root / row[key]["video_path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                shutil.copyfile(source_root / row[key]["video_path"], target)


def _small(tmp_path: Path, make, source: Path, **kwargs) -> SafeSoraDataModule:
    """A module on a hand-made source: all rows in train, prepared under ``tmp_path``."""
    kwargs.setdefault("val_fraction", 0.0)
    kwargs.setdefault("test_split", None)
    return make(source=str(source), prepared_dir=str(tmp_path / "prepared"), **kwargs)


# ------------------------------------------------------------------------------------------ preference view
@pytest.mark.parametrize("dimension", ["helpfulness", "harmlessness", "instruction_following", "safety_first"])
def test_preference_first_video_is_the_winner(make, synthetic, tiny_tokenizer, dimension):
    dm = make(view="preference", dimension=dimension, val_fraction=0.25)  # a quarter of the training prompts
    batches = _batches(dm)
    assert set(batches) == {"train", "val", "test"}
    seen: dict[str, set[int]] = {}
    for split, split_batches in batches.items():
        rows = _config(synthetic, split)
        items = _pair_items(split_batches)
        seen[split] = {item["row"] for item in items}
        assert len(seen[split]) == len(items) == dm.report.splits[split].kept
        for item in items:
            row = rows[item["row"]]
            first = _which(row, item["first"], [synthetic])
            assert first == _expected_first(row, dimension), (split, item["row"])
            assert _which(row, item["second"], [synthetic]) == 1 - first
            assert item["first_sign"] == _sign(row[CHOICES[first]])
            assert item["second_sign"] == _sign(row[CHOICES[1 - first]])
            assert item["ids"] == _prompt_ids(tiny_tokenizer, row["prompt_text"])
    # every source row is kept once; val is carved from train by prompt
    assert seen["train"] | seen["val"] == set(range(len(_config(synthetic, "train"))))
    assert not seen["train"] & seen["val"]
    assert seen["test"] == set(range(len(_config(synthetic, "test"))))
    train_rows = _config(synthetic, "train")
    assert not {train_rows[i]["prompt_text"] for i in seen["train"]} & {train_rows[i]["prompt_text"]
                                                                       for i in seen["val"]}
    if dimension == "safety_first":  # how many pairs each label decided, per split
        for split, report in dm.report.splits.items():
            rows = [_config(synthetic, split)[i] for i in seen[split]]
            both_safe = sum(r["video_0"]["is_safe"] and r["video_1"]["is_safe"] for r in rows)
            one_safe = sum(r["video_0"]["is_safe"] != r["video_1"]["is_safe"] for r in rows)
            assert report.notes["decided_by_helpfulness"] == both_safe
            assert report.notes["decided_by_is_safe"] == one_safe
            assert report.notes["decided_by_harmlessness"] == len(rows) - both_safe - one_safe
        total = Counter()
        for report in dm.report.splits.values():
            total.update(report.notes)
        assert total["decided_by_helpfulness"] > 0 and total["decided_by_is_safe"] > 0


def test_preference_settings_the_models_read(make):
    dm = make(view="preference")
    assert dm.categories == SAFESORA_CATEGORIES
    assert dm.hparams.num_frames == FRAMES and dm.hparams.frame_size == SIZE
    assert dm.hparams.max_length == 77  # CLIP's text length for the video views


# ---------------------------------------------------------------------------------------------- safety view
def test_safety_view_less_safe_first_with_signs(make, synthetic):
    dm = make(view="safety")
    batches = _batches(dm)
    signs = Counter()
    for split, split_batches in batches.items():
        rows = _config(synthetic, split)
        assert dm.report.splits[split].dropped["safer_labelled_unsafe"] == 0  # the synthetic labels agree
        for item in _pair_items(split_batches):
            row = rows[item["row"]]
            first = _which(row, item["first"], [synthetic])
            assert first == 1 - int(row["harmlessness"][-1])  # the less safe video first
            assert item["first_sign"] == _sign(row[CHOICES[first]])
            assert item["second_sign"] == _sign(row[CHOICES[1 - first]])
            signs[(item["first_sign"], item["second_sign"])] += 1
    assert signs[(1, -1)] > 0 and signs[(-1, -1)] > 0  # unsafe-vs-safe and safe-vs-safe pairs are both there
    assert signs[(-1, 1)] == 0  # a safe first video before an unsafe one would contradict harmlessness


def test_safety_view_drops_and_counts_a_self_contradicting_pair(make, synthetic, tmp_path):
    rows = _config(synthetic, "train")
    mixed = next(i for i, r in enumerate(rows) if r["video_0"]["is_safe"] != r["video_1"]["is_safe"])
    chosen = json.loads(json.dumps([rows[mixed]] + [r for i, r in enumerate(rows) if i != mixed][:4]))
    bad = chosen[0]
    bad["harmlessness"] = CHOICES[0] if bad["video_0"]["is_safe"] is False else CHOICES[1]
    # ^ the "safer" video is labelled unsafe while the other is labelled safe: the pair contradicts itself
    unlabelled = chosen[3]
    for key in CHOICES:
        del unlabelled[key]["is_safe"]  # no safety label: kept, with sign 0
    same = chosen[4]
    same["video_1"] = dict(same["video_0"])  # one video twice: nothing to compare
    source = _write_json(tmp_path / "pairs.json", [chosen[1], bad, chosen[2], unlabelled, same])
    dm = _small(tmp_path, make, source, view="safety", video_dir=str(synthetic))
    batches = _batches(dm)
    report = dm.report.splits["train"]
    assert report.rows_read == 5 and report.kept == 3
    assert dict(report.dropped) == {"safer_labelled_unsafe": 1, "identical_videos": 1}
    assert report.notes["missing_is_safe"] == 1
    items = {item["row"]: item for item in _pair_items(batches["train"])}
    assert sorted(items) == [0, 2, 3]
    assert items[3]["first_sign"] == items[3]["second_sign"] == 0
    assert _which(unlabelled, items[3]["first"], [synthetic]) == 1 - int(unlabelled["harmlessness"][-1])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"dimension": "beauty"}, "unknown dimension"), ({"video_storage": "gif"}, "video_storage"),
     ({"frame_size": 33}, "frame_size"), ({"num_frames": 0}, "num_frames"), ({"view": "sft"}, "unknown view")],
)
def test_bad_settings_are_refused(make, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make(**kwargs)


# ------------------------------------------------------------------------------------------ moderation view
def test_moderation_view_batches_labels_and_summary(make, synthetic, tiny_tokenizer):
    dm = make(view="moderation", val_fraction=0.25)
    assert list(dm.view.categories) == SAFESORA_CATEGORIES and dm.view.severity_levels == 0
    batches = _batches(dm)
    train_rows: list[int] = []
    for split, split_batches in batches.items():
        rows = _config(synthetic, split, "label")
        for batch in split_batches:
            assert set(batch) == {"input_ids", "attention_mask", "frames", "categories", "unsafe", "severity", "row",
                                  "response"}
            b = batch["input_ids"].shape[0]
            assert batch["frames"].shape == (b, FRAMES, 3, SIZE, SIZE) and batch["frames"].dtype == torch.uint8
            assert batch["categories"].shape == (b, 12) and batch["categories"].dtype == torch.float32
            for key in ("unsafe", "severity", "row", "response"):
                assert batch[key].shape == (b,) and batch[key].dtype == torch.long
            assert (batch["severity"] == -1).all() and (batch["response"] == 0).all()
            for i in range(b):
                row = rows[int(batch["row"][i])]
                assert batch["categories"][i].tolist() == [float(row["video_labels"][c]) for c in SAFESORA_CATEGORIES]
                assert int(batch["unsafe"][i]) == int(not row["is_safe"])
                assert torch.equal(batch["frames"][i], _decoded(str(synthetic / row["video_path"])))
                n = int(batch["attention_mask"][i].sum())
                assert batch["input_ids"][i, :n].tolist() == _prompt_ids(tiny_tokenizer, row["prompt_text"])
                if split == "train":
                    train_rows.append(int(batch["row"][i]))
    label_rows = _config(synthetic, "train", "label")
    assert len(train_rows) == len(set(train_rows)) == dm.report.splits["train"].kept
    assert dm.report.splits["train"].kept + dm.report.splits["val"].kept == len(label_rows)  # val: carved from train
    # the counts the moderation module reads for pos_weight, computed from the label rows
    summary = dm.label_summary("train")
    labelled = [label_rows[i] for i in train_rows]
    assert summary["items"] == len(labelled)
    assert summary["categories"] == SAFESORA_CATEGORIES
    assert summary["category_positives"] == [sum(r["video_labels"][c] for r in labelled) for c in SAFESORA_CATEGORIES]
    assert summary["unsafe"] == sum(not r["is_safe"] for r in labelled)
    assert summary["unsafe"] > 0 and sum(summary["category_positives"]) > 0


def test_moderation_view_without_is_safe_or_racism(make, synthetic, tmp_path):
    rows = json.loads(json.dumps(_config(synthetic, "train", "label")))
    unsafe = next(r for r in rows if r["video_labels"]["racism"] is False and not r["is_safe"])
    safe = next(r for r in rows if r["is_safe"])
    racist = json.loads(json.dumps(safe))
    for row in (unsafe, safe, racist):
        del row["is_safe"]  # unsafe follows the categories
    del unsafe["video_labels"]["racism"], unsafe["prompt_labels"]["racism"]  # racism is optional: missing -> 0
    racist["video_labels"]["racism"] = True
    racist["video_id"] += "r"
    source = _write_json(tmp_path / "labels.json", [unsafe, safe, racist])
    dm = _small(tmp_path, make, source, view="moderation", video_dir=str(synthetic))
    (batch,) = _batches(dm)["train"]
    order = batch["row"].argsort()  # the training loader shuffles
    batch = {key: value[order] for key, value in batch.items()}
    assert batch["row"].tolist() == [0, 1, 2]
    assert batch["unsafe"].tolist() == [1, 0, 1]
    racism = SAFESORA_CATEGORIES.index("racism")
    assert batch["categories"][:, racism].tolist() == [0.0, 0.0, 1.0]
    assert batch["categories"][0].tolist() == [float(unsafe["video_labels"].get(c, False))
                                               for c in SAFESORA_CATEGORIES]
    assert dm.label_summary("train")["unsafe"] == 2


def test_moderation_view_on_pair_rows_explains_the_subset(make, synthetic, tmp_path):
    source = _write_json(tmp_path / "pairs.json", _config(synthetic, "test")[:2])
    dm = _small(tmp_path, make, source, view="moderation", video_dir=str(synthetic))
    with pytest.raises(DataValidationError, match="field 'video_labels'") as error:
        dm.prepare()
    assert "SafeSora-Label" in str(error.value) and f"{source}: row 0" in str(error.value)


# -------------------------------------------------------------------------------------------- text views
def test_rewrites_view_is_sft_on_the_winning_rewrite(make, synthetic, tiny_tokenizer):
    dm = make(view="rewrites")
    assert dm.hparams.max_length == 256 and dm.hparams.prompt_template == REWRITE_TEMPLATE
    batches = _batches(dm)
    eos = tiny_tokenizer.eos_token_id
    for split, split_batches in batches.items():
        rows = _config(synthetic, split)
        report = dm.report.splits[split]
        assert report.kept + report.dropped["duplicate_response"] == report.rows_read
        count = 0
        for batch in split_batches:
            assert set(batch) == {"input_ids", "attention_mask", "labels", "row"}
            for i in range(batch["input_ids"].shape[0]):
                row = rows[int(batch["row"][i])]
                winner = row[row["helpfulness"]]["video_text"]
                prompt = tiny_tokenizer(REWRITE_TEMPLATE.replace("{prompt}", row["prompt_text"]))["input_ids"]
                response = tiny_tokenizer(winner, add_special_tokens=False)["input_ids"] + [eos]
                n = int(batch["attention_mask"][i].sum())
                assert batch["input_ids"][i, :n].tolist() == prompt + response
                assert batch["labels"][i, len(prompt) : n].tolist() == response
                assert (batch["labels"][i, : len(prompt)] == -100).all() and (batch["labels"][i, n:] == -100).all()
                count += 1
        assert count == report.kept


def test_rewrites_view_with_a_chat_template(make, synthetic, chat_tokenizer_dir):
    from transformers import AutoTokenizer

    directory = chat_tokenizer_dir("chatml")
    tok = AutoTokenizer.from_pretrained(directory)
    dm = make(view="rewrites", tokenizer=directory, prompt_template="chat")
    count = 0
    for split, split_batches in _batches(dm).items():
        rows = _config(synthetic, split)
        for batch in split_batches:
            for i in range(batch["input_ids"].shape[0]):
                row = rows[int(batch["row"][i])]
                # the user's turn is the rewrite instruction with the request
                user = [{"role": "user", "content": REWRITE_TEMPLATE.replace("{prompt}", row["prompt_text"]).rstrip()}]
                reply = [{"role": "assistant", "content": row[row["helpfulness"]]["video_text"]}]
                prompt = tok(tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True),
                             add_special_tokens=False)["input_ids"]
                whole = tok(tok.apply_chat_template(user + reply, tokenize=False),
                            add_special_tokens=False)["input_ids"]
                n = int(batch["attention_mask"][i].sum())
                assert batch["input_ids"][i, :n].tolist() == whole
                assert (batch["labels"][i, : len(prompt)] == -100).all()
                assert batch["labels"][i, len(prompt) : n].tolist() == whole[len(prompt) :]
                count += 1
    assert count == sum(report.kept for report in dm.report.splits.values()) > 0


def test_video_views_refuse_a_chat_template(make, chat_tokenizer_dir):
    with pytest.raises(ValueError, match="'chat' is for the text views"):
        make(view="preference", tokenizer=chat_tokenizer_dir("chatml"), prompt_template="chat")


def test_rewrite_pairs_view_is_dpo_on_winning_and_losing_rewrites(make, synthetic, tiny_tokenizer):
    dm = make(view="rewrite_pairs", dimension="harmlessness")
    batches = _batches(dm)
    eos = tiny_tokenizer.eos_token_id
    for split, split_batches in batches.items():
        rows = _config(synthetic, split)
        for batch in split_batches:
            assert set(batch) == {"input_ids", "attention_mask", "labels", "row"}
            b = batch["row"].shape[0]
            assert batch["input_ids"].shape[0] == 2 * b
            for i in range(b):
                row = rows[int(batch["row"][i])]
                win = int(row["harmlessness"][-1])
                prompt = tiny_tokenizer(REWRITE_TEMPLATE.replace("{prompt}", row["prompt_text"]))["input_ids"]
                for j, k in ((i, win), (b + i, 1 - win)):
                    text = row[CHOICES[k]]["video_text"]
                    n = int(batch["attention_mask"][j].sum())
                    expected = prompt + tiny_tokenizer(text, add_special_tokens=False)["input_ids"] + [eos]
                    assert batch["input_ids"][j, :n].tolist() == expected
                    assert (batch["labels"][j, : len(prompt)] == -100).all()


def test_prompts_view_one_item_per_distinct_prompt(make, synthetic, tiny_tokenizer):
    dm = make(view="prompts")
    batches = _batches(dm)
    for split, split_batches in batches.items():
        rows = _config(synthetic, split)
        report = dm.report.splits[split]
        items = []
        for batch in split_batches:
            assert set(batch) == {"input_ids", "attention_mask", "row"}
            assert batch["attention_mask"][:, -1].all()  # left padding, for generation
            for i in range(batch["input_ids"].shape[0]):
                n = int(batch["attention_mask"][i].sum())
                items.append((rows[int(batch["row"][i])]["prompt_text"], batch["input_ids"][i, -n:].tolist()))
        prompts = [p for p, _ in items]
        assert len(prompts) == len(set(prompts)) == report.kept
        assert report.dropped["duplicate_prompt"] == report.rows_read - report.kept == 2 * report.kept  # 3 pairs each
        for prompt, ids in items:
            assert ids == tiny_tokenizer(REWRITE_TEMPLATE.replace("{prompt}", prompt))["input_ids"]


def test_prompts_view_on_safesora_eval(make, synthetic, tiny_tokenizer):
    dm = make(view="prompts", subset="eval", train_split="eval", test_split=None)
    batches = _batches(dm)
    rows = _load(synthetic / "eval" / "config-eval.json.gz")
    assert set(batches) <= {"train", "val"}
    assert sum(s.rows_read for s in dm.report.splits.values()) == len(rows) == 40
    assert sum(s.kept for s in dm.report.splits.values()) == len({r["prompt_text"] for r in rows})
    seen = []
    for split_batches in batches.values():
        for batch in split_batches:
            for i in range(batch["input_ids"].shape[0]):
                n = int(batch["attention_mask"][i].sum())
                prompt = rows[int(batch["row"][i])]["prompt_text"]
                assert batch["input_ids"][i, -n:].tolist() == tiny_tokenizer(
                    REWRITE_TEMPLATE.replace("{prompt}", prompt))["input_ids"]
                seen.append(int(batch["row"][i]))
    assert len(seen) == len(set(seen))


# ----------------------------------------------------------------------------------------------- source forms
def test_informativeness_is_read_as_information(make, synthetic, tmp_path):
    rows = _config(synthetic, "test")
    old = []
    for row in rows:
        row = json.loads(json.dumps(row))
        row["sub_preferences"]["informativeness"] = row["sub_preferences"].pop("information")
        old.append(row)
    source = _write_json(tmp_path / "old.json", old)
    dm = _small(tmp_path, make, source, dimension="information", video_dir=str(synthetic))
    batches = _batches(dm)
    report = dm.report.splits["train"]
    assert report.kept == len(rows) and report.notes["sub_preference_informativeness"] == len(rows)
    for item in _pair_items(batches["train"]):
        row = rows[item["row"]]
        assert _which(row, item["first"], [synthetic]) == int(row["sub_preferences"]["information"][-1])


@pytest.mark.parametrize("form", ["config_file", "json_with_video_dir", "directory"])
def test_source_forms(make, synthetic, tmp_path, form):
    rows = _config(synthetic, "test")
    if form == "config_file":  # a single gzip'd config; videos relative to the file's parent folder
        source = _write_json(tmp_path / "safesora" / "configs" / "config-test.json.gz", rows)
        _copy_videos(rows, synthetic, tmp_path / "safesora")
        roots, extra = [tmp_path / "safesora"], {}
    elif form == "json_with_video_dir":  # a .json array; videos found through video_dir
        source = _write_json(tmp_path / "pairs.json", rows)
        _copy_videos(rows, synthetic, tmp_path / "clips")
        roots, extra = [tmp_path / "clips"], {"video_dir": str(tmp_path / "clips")}
    else:  # a directory with config.json (the training split) and videos/
        source = tmp_path / "dataset"
        _write_json(source / "config.json", rows)
        _copy_videos(rows, synthetic, source)
        roots, extra = [source], {}
    dm = _small(tmp_path, make, source, **extra)
    batches = _batches(dm)
    assert set(batches) == {"train"}
    items = _pair_items(batches["train"])
    assert sorted(item["row"] for item in items) == list(range(len(rows)))
    for item in items:
        row = rows[item["row"]]
        assert _which(row, item["first"], roots) == int(row["helpfulness"][-1])


def test_a_prepared_directory_is_a_source(make, synthetic):
    prepared = make(view="preference")
    prepared.prepare()
    dm = make(view="preference", source=prepared.prepared_location())
    assert dm._source_kind() == "prepared"
    batches = _batches(dm)
    assert len(_pair_items(batches["train"])) == prepared.report.splits["train"].kept


# -------------------------------------------------------------------------------------------------- bad input
@pytest.fixture
def pair_file(synthetic, tmp_path) -> tuple[Path, list[dict]]:
    """The 6 test pairs in ``tmp_path/data/pairs.json`` with their videos in ``tmp_path/data/videos``."""
    rows = json.loads(json.dumps(_config(synthetic, "test")))
    _copy_videos(rows, synthetic, tmp_path / "data")
    return tmp_path / "data" / "pairs.json", rows


def test_missing_video_names_row_field_and_path(make, tmp_path, pair_file):
    path, rows = pair_file
    rows[2]["video_0"]["video_path"] = "videos/nope/missing.mp4"
    _write_json(path, rows)
    with pytest.raises(DataValidationError) as error:
        _small(tmp_path, make, path).prepare()
    message = str(error.value)
    assert f"{path}: row 2: field 'video_0.video_path'" in message
    assert "videos/nope/missing.mp4" in message and "not found" in message

    dm = _small(tmp_path, make, path, on_bad_row="skip")
    batches = _batches(dm)
    report = dm.report.splits["train"]
    assert report.rows_read == 6 and report.kept == 5
    assert dict(report.dropped) == {"invalid:video_0.video_path": 1}
    assert sorted(item["row"] for item in _pair_items(batches["train"])) == [0, 1, 3, 4, 5]


def test_corrupt_video_names_row_and_file(make, tmp_path, pair_file):
    path, rows = pair_file
    _write_json(path, rows)
    broken = rows[1]["video_1"]["video_path"]
    (tmp_path / "data" / broken).write_bytes(b"this is not an mp4 file " * 40)
    users = [i for i, r in enumerate(rows) if broken in (r["video_0"]["video_path"], r["video_1"]["video_path"])]
    assert 1 in users
    with pytest.raises(DataValidationError) as error:
        _small(tmp_path, make, path).prepare()
    message = str(error.value)
    assert f"row {users[0]} " in message and rows[users[0]]["pair_id"] in message
    assert broken in message and "cannot decode" in message

    dm = _small(tmp_path, make, path, on_bad_row="skip")
    batches = _batches(dm)
    report = dm.report.splits["train"]
    assert report.kept == 6 - len(users)
    assert dict(report.dropped) == {"unreadable_video": len(users)}
    assert sorted(item["row"] for item in _pair_items(batches["train"])) == [i for i in range(6) if i not in users]


def test_wrong_helpfulness_value_is_named_with_its_field(make, tmp_path, pair_file):
    path, rows = pair_file
    rows[1]["helpfulness"] = "video_2"
    _write_json(path, rows)
    with pytest.raises(DataValidationError) as error:
        _small(tmp_path, make, path).prepare()
    assert f"{path}: row 1: field 'helpfulness'" in str(error.value)
    assert "'video_2'" in str(error.value)


# ------------------------------------------------------------------------------------------------ mp4 storage
def test_mp4_storage_gives_the_frames_of_frames_storage(make):
    stored = {}
    for storage in ("frames", "mp4"):
        dm = make(view="preference", video_storage=storage)
        assert (dm.item_transform() is None) == (storage == "frames")
        stored[storage] = {item["row"]: item for item in _pair_items(_batches(dm)["test"])}
    assert set(stored["frames"]) == set(stored["mp4"])
    for row, item in stored["frames"].items():
        other = stored["mp4"][row]
        assert other["ids"] == item["ids"] and other["first_sign"] == item["first_sign"]
        for key in ("first", "second"):
            assert other[key].shape == item[key].shape and other[key].dtype == torch.uint8
            difference = (other[key].float() - item[key].float()).abs()
            assert difference.mean() < 8, (row, key, difference.mean())  # H.264 of the same (noisy) frames


# ------------------------------------------------------------------------------------------------ predict_file
def test_predict_file_batches_with_line_numbers(make, synthetic, tmp_path, tiny_tokenizer):
    videos = [v["video_path"] for v in _config(synthetic, "test", "label")][:3]
    (tmp_path / "clips").mkdir()
    shutil.copyfile(synthetic / videos[0], tmp_path / "clips" / "a.mp4")
    lines = [
        {"prompt": "a red disc moving up", "video_path": "clips/a.mp4"},  # relative to the file's folder
        "",
        {"prompt": "a blue bar", "video_path": str(synthetic / videos[1])},  # absolute
        {"prompt": "a cyan square moving left", "video_path": str(synthetic / videos[2]), "extra": 1},
    ]
    path = tmp_path / "predict.jsonl"
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    dm = make(view="preference", predict_file=str(path), eval_batch_size=2)
    batches = list(dm.predict_dataloader())
    assert len(batches) == 2
    got_lines, got = [], []
    for batch in batches:
        assert set(batch) == {"input_ids", "attention_mask", "frames", "line"}
        b = batch["input_ids"].shape[0]
        assert batch["frames"].shape == (b, FRAMES, 3, SIZE, SIZE) and batch["frames"].dtype == torch.uint8
        got_lines += batch["line"].tolist()
        got += [(batch["input_ids"][i, : int(batch["attention_mask"][i].sum())].tolist(), batch["frames"][i])
                for i in range(b)]
    assert got_lines == [1, 3, 4]
    for (ids, frames), line, video in zip(got, (lines[0], lines[2], lines[3]), videos):
        assert ids == _prompt_ids(tiny_tokenizer, line["prompt"])
        assert torch.equal(frames, _decoded(str(synthetic / video)))


def test_predict_file_missing_video_is_named_with_its_line(make, tmp_path, synthetic):
    video = str(synthetic / _config(synthetic, "test", "label")[0]["video_path"])
    path = tmp_path / "predict.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in [
        {"prompt": "ok", "video_path": video},
        {"prompt": "ok too", "video_path": video},
        {"prompt": "gone", "video_path": "clips/gone.mp4"},
    ]))
    with pytest.raises(DataValidationError) as error:
        make(view="moderation", predict_file=str(path)).prediction_loader(path)
    message = str(error.value)
    assert f"{path}: line 3: field 'video_path'" in message and "clips/gone.mp4" in message

    loader = make(view="moderation", predict_file=str(path), on_bad_row="skip").prediction_loader(path)
    assert [line for batch in loader for line in batch["line"].tolist()] == [1, 2]
