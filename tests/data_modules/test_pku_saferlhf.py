"""Tests of PKUSafeRLHFDataModule: preparation of real rows (report, splits, labels, truncation), bad input, split
sources, reuse of prepared data, and the batches the loaders stream (padding, EOS, length grouping)."""

import copy
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from litdata import StreamingDataset

from lit_safe.data_modules.pku_saferlhf import PKUSafeRLHFDataModule, prompt_bucket
from lit_safe.data_modules.sources import DataValidationError

# Written out here (not imported) so that a change of the module's default template is caught.
TEMPLATE = "BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:"


def _rows(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def _module(source, prepared_dir, **kwargs) -> PKUSafeRLHFDataModule:
    kwargs.setdefault("num_workers", 0)
    return PKUSafeRLHFDataModule(tokenizer="tiny", source=str(source), prepared_dir=str(prepared_dir), **kwargs)


def _items(location: str, split: str) -> list[dict]:
    dataset = StreamingDataset(f"{location}/{split}", shuffle=False)
    return [dataset[i] for i in range(len(dataset))]


def _expected_ids(tokenizer, prompt: str, response: str, max_length: int) -> np.ndarray:
    """prompt in the template + response, BOS from the tokenizer, cut to max_length - 1, then EOS."""
    ids = tokenizer(TEMPLATE.replace("{prompt}", prompt) + response)["input_ids"]
    assert ids[-1] != tokenizer.eos_token_id
    return np.asarray([*ids[: max_length - 1], tokenizer.eos_token_id])


def _pair_key(chosen, rejected) -> tuple[bytes, bytes]:
    return np.asarray(chosen, dtype=np.int64).tobytes(), np.asarray(rejected, dtype=np.int64).tobytes()


def _expected_pairs(tokenizer, rows: list[dict], max_length: int) -> dict[tuple[bytes, bytes], list[int]]:
    """(chosen, rejected) token ids of every source row -> the row numbers that produce them."""
    out: dict[tuple[bytes, bytes], list[int]] = {}
    for number, row in enumerate(rows):
        better = row["better_response_id"]
        chosen = _expected_ids(tokenizer, row["prompt"], row[f"response_{better}"], max_length)
        rejected = _expected_ids(tokenizer, row["prompt"], row[f"response_{1 - better}"], max_length)
        out.setdefault(_pair_key(chosen, rejected), []).append(number)
    return out


def _source_rows_of(items: list[dict], expected: dict, eos: int) -> list[int]:
    """Map every prepared item back to the source row it was built from (by its exact token ids)."""
    numbers = []
    for item in items:
        assert item["chosen"][-1] == eos and item["rejected"][-1] == eos
        key = _pair_key(item["chosen"], item["rejected"])
        assert key in expected, f"item {int(item['row'])}: tokens match no source row with the labels applied"
        assert len(expected[key]) == 1
        numbers.append(expected[key][0])
    return numbers


# -------------------------------------------------------------------------------------------------- real rows
def test_real_rows_report_splits_and_labels(pku_real_file, tmp_path, tiny_tokenizer):
    rows = _rows(pku_real_file)
    assert not any(r["response_0"] == r["response_1"] for r in rows)  # so nothing should be dropped
    dm = _module(pku_real_file, tmp_path, val_fraction=0.1, test_fraction=0.1)
    report = dm.prepare()

    assert set(report.splits) == {"train", "val", "test"}
    assert sum(s.rows_read for s in report.splits.values()) == 200
    for name, split in report.splits.items():
        assert split.rows_read > 0, name
        assert split.kept == split.rows_read, (name, split.to_dict())
        assert sum(split.dropped.values()) == 0
    assert json.loads((Path(dm.prepared_location()) / "report.json").read_text()) == report.to_dict()

    expected = _expected_pairs(tiny_tokenizer, rows, 512)
    eos = tiny_tokenizer.eos_token_id
    source_rows: dict[str, list[int]] = {}
    for name in ("train", "val", "test"):
        items = _items(dm.prepared_location(), name)
        assert len(items) == report.splits[name].kept
        numbers = _source_rows_of(items, expected, eos)
        # `row` is the row's position in the source file, so every item traces back to its line
        assert [int(i["row"]) for i in items] == numbers
        source_rows[name] = numbers

    # every source row ends up in exactly one split, with its labels applied
    assert sorted(n for numbers in source_rows.values() for n in numbers) == list(range(200))
    # no prompt is shared between training and held-out splits
    prompts = {name: {rows[n]["prompt"] for n in numbers} for name, numbers in source_rows.items()}
    assert not prompts["train"] & prompts["val"]
    assert not prompts["train"] & prompts["test"]
    assert not prompts["val"] & prompts["test"]
    # the carving rule: a seeded hash of the prompt, val below 0.1, test in [0.1, 0.2)
    for n in source_rows["val"]:
        assert prompt_bucket(rows[n]["prompt"], 42) < 0.1
    for n in source_rows["test"]:
        assert 0.1 <= prompt_bucket(rows[n]["prompt"], 42) < 0.2
    for n in source_rows["train"]:
        assert prompt_bucket(rows[n]["prompt"], 42) >= 0.2


def test_real_rows_short_max_length_keeps_eos(pku_real_file, tmp_path, tiny_tokenizer):
    rows = _rows(pku_real_file)
    dm = _module(pku_real_file, tmp_path, val_fraction=0.1, test_fraction=0.1, max_length=32)
    report = dm.prepare()
    assert sum(s.rows_read for s in report.splits.values()) == 200
    assert sum(s.notes["truncated_sequences"] for s in report.splits.values()) > 0
    expected = _expected_pairs(tiny_tokenizer, rows, 32)
    eos = tiny_tokenizer.eos_token_id
    for name, split in report.splits.items():
        # rows cut to identical pairs are dropped and counted, never lost
        assert split.kept + sum(split.dropped.values()) == split.rows_read
        assert set(split.dropped) <= {"identical_after_truncation"}
        items = _items(dm.prepared_location(), name)
        assert len(items) == split.kept
        for item in items:
            for key in ("chosen", "rejected"):
                assert 2 <= len(item[key]) <= 32
                assert item[key][-1] == eos
                assert (item[key][:-1] != eos).all()
        _source_rows_of(items, expected, eos)  # the truncated pairs are the right rows with the right labels
    dm.setup()
    for batch in dm.train_dataloader():
        assert batch["input_ids"].shape[1] <= 32


# -------------------------------------------------------------------------------------------------- bad input
@pytest.fixture
def bad_file(pku_real_file, tmp_path) -> tuple[Path, list[dict]]:
    """30 real rows, then (line 31) a row without response_1, (32) better_response_id=3, (33) identical responses."""
    rows = _rows(pku_real_file)
    good = rows[:30]
    missing = copy.deepcopy(rows[30])
    del missing["response_1"]
    out_of_range = copy.deepcopy(rows[31])
    out_of_range["better_response_id"] = 3
    identical = copy.deepcopy(rows[32])
    identical["response_1"] = identical["response_0"]
    identical["response_1_sha256"] = identical["response_0_sha256"]
    return _write_jsonl(tmp_path / "src" / "bad.jsonl", [*good, missing, out_of_range, identical]), good


def test_bad_rows_error_names_file_line_and_field(bad_file, tmp_path):
    path, _ = bad_file
    prepared = tmp_path / "prepared"
    dm = _module(path, prepared, val_fraction=0.0, test_fraction=0.0, on_bad_row="error")
    with pytest.raises(DataValidationError) as err:
        dm.prepare()
    message = str(err.value)
    assert f"{path}: line 31: field 'response_1'" in message
    assert f"{path}: line 32: field 'better_response_id'" in message
    assert "2 invalid row(s)" in message
    assert "line 33" not in message  # identical responses are a view's drop, not a schema error
    assert not prepared.exists() or not any(prepared.iterdir())  # nothing half-written


def test_bad_rows_skip_drops_and_counts(bad_file, tmp_path, tiny_tokenizer):
    path, good = bad_file
    dm = _module(path, tmp_path / "prepared", val_fraction=0.0, test_fraction=0.0, on_bad_row="skip")
    report = dm.prepare()
    assert set(report.splits) == {"train"}
    train = report.splits["train"]
    assert train.rows_read == 33
    assert train.kept == 30
    assert dict(train.dropped) == {
        "invalid:response_1": 1,
        "invalid:better_response_id": 1,
        "identical_responses": 1,
    }
    items = _items(dm.prepared_location(), "train")
    numbers = _source_rows_of(items, _expected_pairs(tiny_tokenizer, good, 512), tiny_tokenizer.eos_token_id)
    assert sorted(numbers) == list(range(30))
    saved = json.loads((Path(dm.prepared_location()) / "report.json").read_text())
    assert saved["splits"]["train"]["dropped"]["identical_responses"] == 1


def test_identical_responses_are_dropped_even_with_error_policy(pku_real_file, tmp_path):
    rows = _rows(pku_real_file)[:20]
    rows[5]["response_1"] = rows[5]["response_0"]
    rows[5]["response_1_sha256"] = rows[5]["response_0_sha256"]
    path = _write_jsonl(tmp_path / "src" / "rows.jsonl", rows)
    report = _module(path, tmp_path / "prepared", val_fraction=0.0, test_fraction=0.0).prepare()
    assert report.splits["train"].rows_read == 20
    assert report.splits["train"].kept == 19
    assert dict(report.splits["train"].dropped) == {"identical_responses": 1}


# ------------------------------------------------------------------------------------------------ split sources
def test_directory_source_uses_its_own_test_split(pku_real_file, tmp_path, tiny_tokenizer):
    rows = _rows(pku_real_file)
    source = tmp_path / "src"
    _write_jsonl(source / "train.jsonl", rows[:150])
    _write_jsonl(source / "test.jsonl", rows[150:])
    dm = _module(source, tmp_path / "prepared", val_fraction=0.1, test_fraction=0.3)
    report = dm.prepare()
    assert report.splits["test"].rows_read == 50
    assert report.splits["train"].rows_read + report.splits["val"].rows_read == 150
    assert report.splits["val"].rows_read > 0
    expected = _expected_pairs(tiny_tokenizer, rows, 512)
    eos = tiny_tokenizer.eos_token_id
    test_rows = _source_rows_of(_items(dm.prepared_location(), "test"), expected, eos)
    assert sorted(test_rows) == list(range(150, 200))
    for name in ("train", "val"):
        assert max(_source_rows_of(_items(dm.prepared_location(), name), expected, eos)) < 150


def test_missing_val_split_lists_available(pku_real_file, tmp_path):
    rows = _rows(pku_real_file)[:20]
    source = tmp_path / "src"
    _write_jsonl(source / "train.jsonl", rows[:15])
    _write_jsonl(source / "test.jsonl", rows[15:])
    dm = _module(source, tmp_path / "prepared", val_split="validation")
    with pytest.raises(DataValidationError) as err:
        dm.prepare()
    message = str(err.value)
    assert "'validation'" in message and "'train'" in message and "'test'" in message


def test_missing_train_split(pku_real_file, tmp_path):
    source = tmp_path / "src"
    _write_jsonl(source / "test.jsonl", _rows(pku_real_file)[:5])
    with pytest.raises(DataValidationError, match="'train'"):
        _module(source, tmp_path / "prepared").prepare()


@pytest.mark.parametrize("name", ["missing.jsonl", "missing_dir"])
def test_nonexistent_source(tmp_path, name):
    path = tmp_path / name
    with pytest.raises(FileNotFoundError) as err:
        _module(path, tmp_path / "prepared").prepare()
    assert str(path) in str(err.value)


# ------------------------------------------------------------------------------------------------------ reuse
def test_prepared_data_is_reused_and_refreshed(pku_real_file, tmp_path):
    rows = _rows(pku_real_file)[:60]
    path = _write_jsonl(tmp_path / "src" / "rows.jsonl", rows)
    prepared = tmp_path / "prepared"
    first = _module(path, prepared, val_fraction=0.1, test_fraction=0.1)
    report = first.prepare()
    location = Path(first.prepared_location())
    report_file = location / "report.json"
    mtime = report_file.stat().st_mtime_ns
    marker = location / "marker"
    marker.write_text("written by the test")

    again = _module(path, prepared, val_fraction=0.1, test_fraction=0.1)
    assert Path(again.prepared_location()) == location
    assert again.prepare().to_dict() == report.to_dict()
    assert report_file.stat().st_mtime_ns == mtime
    assert marker.exists()
    assert len(list(prepared.iterdir())) == 1  # no second copy, no leftover staging directory

    shorter = _module(path, prepared, val_fraction=0.1, test_fraction=0.1, max_length=64)
    assert Path(shorter.prepared_location()) != location
    shorter.prepare()
    assert (Path(shorter.prepared_location()) / "report.json").is_file()

    # force=True prepares anew: the old directory is replaced (the marker is gone), same report
    forced = again.prepare(force=True)
    assert forced.to_dict() == report.to_dict()
    assert not marker.exists()
    assert report_file.is_file()
    assert sorted(p.name for p in prepared.iterdir() if p.name.startswith(".")) == []

    # a changed source file is a different preparation
    _write_jsonl(path, rows[:50])
    changed = _module(path, prepared, val_fraction=0.1, test_fraction=0.1)
    assert Path(changed.prepared_location()) != location
    assert sum(s.rows_read for s in changed.prepare().splits.values()) == 50


def test_prepared_directory_as_source(pku_real_file, tmp_path):
    path = _write_jsonl(tmp_path / "src" / "rows.jsonl", _rows(pku_real_file)[:40])
    dm = _module(path, tmp_path / "prepared", val_fraction=0.2, test_fraction=0.0, batch_size=4, group_size=2)
    report = dm.prepare()
    location = dm.prepared_location()
    mtime = (Path(location) / "report.json").stat().st_mtime_ns

    elsewhere = tmp_path / "never_used"
    streamed = _module(location, elsewhere, batch_size=4, group_size=2)
    assert streamed.prepared_location() == location
    streamed.setup("fit")
    assert not elsewhere.exists()
    assert (Path(location) / "report.json").stat().st_mtime_ns == mtime
    assert streamed.prepare().to_dict()["splits"] == report.to_dict()["splits"]
    seen = [int(r) for batch in streamed.train_dataloader() for r in batch["row"]]
    expected_rows = sorted(int(i["row"]) for i in _items(location, "train"))
    assert sorted(seen) == expected_rows and len(expected_rows) == report.splits["train"].kept
    assert sum(len(b["row"]) for b in streamed.val_dataloader()) == report.splits["val"].kept
    with pytest.raises(ValueError, match="no 'test' split"):
        streamed.test_dataloader()


# ---------------------------------------------------------------------------------------------- synthetic batches
@pytest.fixture
def synthetic(tmp_path):
    def make(**kwargs):
        kwargs.setdefault("batch_size", 4)
        kwargs.setdefault("group_size", 4)
        dm = _module("synthetic", tmp_path, synthetic_rows=400, **kwargs)
        dm.setup("fit")
        return dm

    return make


def _check_batch(batch, batch_size, pad_id, eos):
    ids, mask, rows = batch["input_ids"], batch["attention_mask"], batch["row"]
    b = len(rows)
    assert 1 <= b <= batch_size
    assert ids.shape == mask.shape == (2 * b, ids.shape[1])
    assert ids.dtype == torch.long
    lengths = mask.sum(1)
    assert int(lengths.max()) == ids.shape[1]  # padded to the longest, no further
    # right padding: ones then zeros
    positions = torch.arange(ids.shape[1]).expand_as(mask)
    assert torch.equal(mask, (positions < lengths[:, None]).long())
    assert (ids[mask == 0] == pad_id).all()
    last = ids.gather(1, (lengths - 1)[:, None]).squeeze(1)
    assert (last == eos).all()
    # chosen first, rejected second: each pair differs
    assert all(not torch.equal(ids[i], ids[b + i]) for i in range(b))
    return b


def test_synthetic_batches(synthetic):
    dm = synthetic(batch_size=4)
    pad_id, eos = dm.tokenizer.pad_token_id, dm.tokenizer.eos_token_id
    assert pad_id != eos
    report = dm.report
    assert report is not None and set(report.splits) == {"train", "val", "test"}
    assert report.splits["test"].rows_read == 50  # the synthetic source's own test split (400 // 8)
    assert report.splits["train"].rows_read + report.splits["val"].rows_read == 400
    loaders = (("train", dm.train_dataloader()), ("val", dm.val_dataloader()), ("test", dm.test_dataloader()))
    for name, loader in loaders:
        seen = []
        for batch in loader:
            _check_batch(batch, 4, pad_id, eos)
            seen += batch["row"].tolist()
        assert sorted(seen) == sorted(int(i["row"]) for i in _items(dm.prepared_location(), name)), name
        assert len(seen) == len(set(seen)) == report.splits[name].kept, name
        assert len(loader) == -(-report.splits[name].kept // 4)


def test_eval_loaders_keep_sorted_order(synthetic):
    dm = synthetic(batch_size=4, eval_batch_size=2, group_size=64)
    lengths = [int(b["attention_mask"].shape[1]) for b in dm.val_dataloader()]
    assert len(lengths) >= 5
    assert lengths == sorted(lengths)  # one pool, not shuffled for evaluation
    assert max(len(b["row"]) for b in dm.val_dataloader()) == 2


def _padding_share(loader) -> tuple[float, list[int]]:
    used = total = 0
    rows = []
    for batch in loader:
        used += int(batch["attention_mask"].sum())
        total += batch["attention_mask"].numel()
        rows += batch["row"].tolist()
    return 1 - used / total, rows


def test_length_grouping_reduces_padding(synthetic):
    ungrouped, rows_ungrouped = _padding_share(synthetic(batch_size=8, group_size=1).train_dataloader())
    grouped, rows_grouped = _padding_share(synthetic(batch_size=8, group_size=32).train_dataloader())
    assert ungrouped > 0.15  # the synthetic lengths vary enough for this to mean something
    assert grouped < 0.6 * ungrouped, (grouped, ungrouped)
    assert len(rows_grouped) == len(set(rows_grouped))
    assert sorted(rows_grouped) == sorted(rows_ungrouped)


def test_settings_validation(tmp_path):
    with pytest.raises(ValueError, match="on_bad_row"):
        _module("synthetic", tmp_path, on_bad_row="ignore")
    with pytest.raises(ValueError, match="prompt"):
        _module("synthetic", tmp_path, prompt_template="no placeholder")
    with pytest.raises(ValueError, match="fraction"):
        _module("synthetic", tmp_path, val_fraction=0.5, test_fraction=0.5)


def test_environment_is_single_threaded():
    assert os.environ.get("OMP_NUM_THREADS") == "1"


def test_the_2023_v0_release_reads_with_its_seven_fields(pku_real_file, tmp_path):
    """The Safe RLHF paper's release has only 7 fields (a subset of 2024's): the same module reads it."""
    v0_fields = ("prompt", "response_0", "response_1", "is_response_0_safe", "is_response_1_safe",
                 "better_response_id", "safer_response_id")
    rows = [json.loads(line) for line in pku_real_file.read_text().splitlines()]
    v0 = tmp_path / "v0.jsonl"
    v0.write_text("".join(json.dumps({k: r[k] for k in v0_fields}) + "\n" for r in rows))
    report = _module(v0, tmp_path / "prepared", val_fraction=0.1, test_fraction=0.1).prepare()
    assert sum(s.rows_read for s in report.splits.values()) == len(rows)
    assert sum(s.kept for s in report.splits.values()) == len(rows)


# ---------------------------------------------------------------------------- rows without safety labels; DPO
def test_rows_without_safety_labels_train_a_reward_model(pku_real_file, tmp_path):
    """PKU-SafeRLHF-single-dimension style rows (no safety labels): the preference view gives the items of the
    labelled rows; a view that reads safety labels is one error naming the file and the fields, before preparing."""
    rows = _rows(pku_real_file)[:40]
    unlabelled = [{k: v for k, v in r.items() if k not in ("is_response_0_safe", "is_response_1_safe",
                                                           "safer_response_id")} for r in rows]
    labelled_path = _write_jsonl(tmp_path / "labelled.jsonl", rows)
    path = _write_jsonl(tmp_path / "unlabelled.jsonl", unlabelled)
    split = {"val_fraction": 0.0, "test_fraction": 0.0}
    labelled = _module(labelled_path, tmp_path / "prepared", **split)
    labelled.prepare()
    dm = _module(path, tmp_path / "prepared", **split)
    assert dm.prepare().splits["train"].kept == 40
    expected = _items(labelled.prepared_location(), "train")
    got = _items(dm.prepared_location(), "train")
    assert [[np.asarray(v).tolist() for v in i.values()] for i in got] == \
        [[np.asarray(v).tolist() for v in i.values()] for i in expected]
    for view in ("safety", "moderation"):
        with pytest.raises(DataValidationError) as err:
            _module(path, tmp_path / "other", view=view, **split).prepare()
        assert str(err.value).startswith(f"{path}: the {view} view needs safety labels (is_response_0_safe, "
                                         "is_response_1_safe, safer_response_id)")
        assert not (tmp_path / "other").exists() or not any((tmp_path / "other").iterdir())


def test_preference_pairs_view_for_dpo(pku_real_file, tmp_path, tiny_tokenizer):
    rows = _rows(pku_real_file)[:12]
    path = _write_jsonl(tmp_path / "rows.jsonl", rows)
    dm = _module(path, tmp_path / "prepared", view="preference_pairs", max_length=4096, val_fraction=0.0,
                 test_fraction=0.0, batch_size=4)
    assert dm.prepare().splits["train"].kept == 12
    eos = tiny_tokenizer.eos_token_id
    for item in _items(dm.prepared_location(), "train"):
        row = rows[int(item["row"])]
        better, n = row["better_response_id"], int(item["prompt_length"])
        prompt = tiny_tokenizer(TEMPLATE.replace("{prompt}", row["prompt"]))["input_ids"]
        assert item["chosen"][:n].tolist() == item["rejected"][:n].tolist() == prompt
        for key, k in (("chosen", better), ("rejected", 1 - better)):
            response = tiny_tokenizer(row[f"response_{k}"], add_special_tokens=False)["input_ids"]
            assert item[key][n:].tolist() == [*response, eos]
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape[0] == 2 * batch["row"].shape[0] == 8
    assert (batch["labels"][:, :1] == -100).all()  # the prompt is masked in the DPO loss
