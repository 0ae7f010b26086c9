"""Bad input that used to escape the checks: files without rows, bytes that are not UTF-8, empty prompts and blank
responses, and repeated rows. Each is either an error naming the file (and line), or dropped and counted, so that
rows read = kept + dropped."""

import copy
import gzip
import json
from pathlib import Path

import pytest

from lit_safe.data_modules import sources
from lit_safe.data_modules.beavertails import BeaverTailsDataModule
from lit_safe.data_modules.pku_saferlhf import PKUSafeRLHFDataModule
from lit_safe.data_modules.schemas import (
    BEAVERTAILS_CATEGORIES,
    check_beavertails_row,
    check_pku_saferlhf_row,
    check_safesora_pair,
    check_tree_pair_row,
    response_sha256,
)
from lit_safe.data_modules.sources import DataValidationError, UndecodableRow
from lit_safe.data_modules.synthetic import generate_pku_saferlhf_rows
from lit_safe.data_modules.tree_preference import TreePreferenceDataModule

# one split, every row in it: the counts below are then the whole file's
ONE_SPLIT = {"val_fraction": 0.0, "test_fraction": 0.0}


def _pku(source, tmp_path, **kwargs) -> PKUSafeRLHFDataModule:
    return PKUSafeRLHFDataModule(tokenizer="tiny", source=str(source), prepared_dir=str(tmp_path / "prepared"),
                                 num_workers=0, max_length=128, **kwargs)


def _write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def _rehash(row: dict) -> dict:
    """Keep ``response_k_sha256`` right after editing a text (so that only the edit is under test)."""
    for k in (0, 1):
        row[f"response_{k}_sha256"] = response_sha256(row["prompt"], row[f"response_{k}"])
    return row


def _swapped(row: dict) -> dict:
    """The same pair with its responses in the other order (every per-response field swapped with them)."""
    out = dict(row)
    for name in ("response_{}", "response_{}_source", "is_response_{}_safe", "response_{}_harm_category",
                 "response_{}_severity_level", "response_{}_sha256"):
        out[name.format(0)], out[name.format(1)] = row[name.format(1)], row[name.format(0)]
    out["better_response_id"], out["safer_response_id"] = 1 - row["better_response_id"], 1 - row["safer_response_id"]
    return out


def _balanced(report) -> None:
    for name, split in report.splits.items():
        assert split.rows_read == split.kept + sum(split.dropped.values()), (name, split)


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    rows = generate_pku_saferlhf_rows(12, seed=3)
    assert len({(r["prompt"], r["response_0"], r["response_1"]) for r in rows}) == len(rows)
    assert all(r["prompt"].strip() and r["response_0"].strip() and r["response_1"].strip() for r in rows)
    return rows


# --------------------------------------------------------------------------------------------- files without rows
def _empty_jsonl(path: Path) -> None:
    path.write_bytes(b"")


def _blank_jsonl(path: Path) -> None:
    path.write_bytes(b"\n  \n\t\r\n\n")


def _empty_json_array(path: Path) -> None:
    path.write_text(" [ ]\n")


def _blank_json(path: Path) -> None:
    path.write_text("\n\n")


def _empty_jsonl_gz(path: Path) -> None:
    with gzip.open(path, "wb") as f:
        f.write(b"\n")


def _parquet_zero_rows(path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"prompt": pa.array([], pa.string()), "response_0": pa.array([], pa.string())}), path)


NO_ROWS = {
    "data.jsonl": _empty_jsonl,
    "blank.jsonl": _blank_jsonl,
    "array.json": _empty_json_array,
    "blank.json": _blank_json,
    "data.jsonl.gz": _empty_jsonl_gz,
    "rows.parquet": _parquet_zero_rows,
}


@pytest.mark.parametrize("name", sorted(NO_ROWS))
def test_a_file_without_rows_is_an_error_naming_it(tmp_path, name):
    path = tmp_path / name
    NO_ROWS[name](path)
    with pytest.raises(DataValidationError, match="no rows") as err:
        list(sources.read_file(path))
    assert str(err.value).startswith(f"{path}: no rows (")
    for on_bad_row in ("error", "skip"):  # nothing to skip: an empty source is never a successful preparation
        dm = _pku(path, tmp_path, on_bad_row=on_bad_row)
        with pytest.raises(DataValidationError, match="no rows") as err:
            dm.prepare()
        assert str(path) in str(err.value)
        assert not list((tmp_path / "prepared").glob("pku_saferlhf-*"))  # nothing published


def test_empty_and_blank_only_file_messages(tmp_path):
    for name in ("empty.jsonl", "blank.jsonl"):
        path = tmp_path / name
        (_empty_jsonl if name == "empty.jsonl" else _blank_jsonl)(path)
        with pytest.raises(DataValidationError) as err:
            _pku(path, tmp_path).prepare()
        assert str(err.value) == f"{path}: no rows (empty or blank-only file)"


def test_fit_hooks_on_an_empty_file_name_it(tmp_path):
    """``lit-safe fit`` runs prepare_data then setup: both must stop with the file's name (they used to go on to an
    ``OSError: Directory not empty``)."""
    path = tmp_path / "train.jsonl"
    _empty_jsonl(path)
    dm = _pku(path, tmp_path)
    for hook in (dm.prepare_data, lambda: dm.setup("fit")):
        with pytest.raises(DataValidationError, match=f"{path}: no rows"):
            hook()


def test_lit_safe_fit_and_prepare_on_an_empty_file(tmp_path, quickstart_config):
    from lit_safe.cli import run

    path = tmp_path / "blank.jsonl"
    _blank_jsonl(path)
    config = quickstart_config("reward", tmp_path, source=str(path))
    for command in ("prepare", "fit"):
        with pytest.raises(DataValidationError, match=f"{path}: no rows"):
            run([command, "--config", str(config)])


def test_a_split_directory_with_an_empty_file_names_it(tmp_path, rows):
    directory = tmp_path / "splits"
    _write_jsonl(directory / "test.jsonl", rows[:4])
    (directory / "train.jsonl").write_text("\n\n")
    with pytest.raises(DataValidationError) as err:
        _pku(directory, tmp_path).prepare()
    assert str(err.value) == f"{directory / 'train.jsonl'}: no rows (empty or blank-only file)"

    _write_jsonl(directory / "train.jsonl", rows)
    (directory / "test.jsonl").write_text("")
    with pytest.raises(DataValidationError, match=f"{directory / 'test.jsonl'}: no rows"):
        _pku(directory, tmp_path).prepare()


# -------------------------------------------------------------------------------------------------- not UTF-8
def _with_bad_byte(path: Path, rows: list[dict], line: int) -> Path:
    """A JSONL of ``rows`` whose line ``line`` (1-based) has a Latin-1 byte inside its prompt."""
    lines = [json.dumps(row).encode("utf-8") for row in rows]
    lines[line - 1] = lines[line - 1].replace(b'"prompt": "', b'"prompt": "caf\xe9 ', 1)
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_a_line_that_is_not_utf8_is_named_or_skipped_and_counted(tmp_path, rows):
    path = _with_bad_byte(tmp_path / "latin1.jsonl", rows[:6], line=3)
    read = list(sources.read_file(path))
    assert [where for where, _ in read] == [f"{path}: line {n}" for n in range(1, 7)]
    assert isinstance(read[2][1], UndecodableRow) and read[3][1] == rows[3]
    assert "0xe9" in read[2][1].problem

    with pytest.raises(DataValidationError) as err:
        _pku(path, tmp_path, **ONE_SPLIT).prepare()
    message = str(err.value)
    assert f"1 invalid row(s) in {path}" in message
    assert f"{path}: line 3: field '<row>': not valid UTF-8: byte 0xe9 at offset" in message

    report = _pku(path, tmp_path, on_bad_row="skip", **ONE_SPLIT).prepare()
    train = report.splits["train"]
    assert train.rows_read == 6 and train.kept == 5 and dict(train.dropped) == {"invalid:<row>": 1}


def test_every_row_check_reports_an_undecodable_row():
    bad = UndecodableRow("not valid UTF-8: byte 0xff at offset 3 of the line")
    for check in (check_pku_saferlhf_row, check_beavertails_row, check_safesora_pair, check_tree_pair_row):
        assert check(bad) == [("<row>", bad.problem)]


def test_undecodable_rows_in_gzip_and_json_arrays(tmp_path, rows):
    gz = tmp_path / "rows.jsonl.gz"
    with gzip.open(gz, "wb") as f:
        f.write(json.dumps(rows[0]).encode() + b"\n" + b'{"prompt": "\xff\xfe"}\n' + json.dumps(rows[1]).encode())
    read = list(sources.read_file(gz))
    assert [row for _, row in read][::2] == rows[:2]
    assert read[1][0] == f"{gz}: line 2" and read[1][1].problem.startswith("not valid UTF-8: byte 0xff")

    array = tmp_path / "rows.json"
    text = json.dumps(rows[:3]).encode("utf-8")
    array.write_bytes(text.replace(b'"response_1": "', b'"response_1": "\x80', 1))
    read = list(sources.read_file(array))
    bad = [(where, row) for where, row in read if isinstance(row, UndecodableRow)]
    assert [where for where, _ in bad] == [f"{array}: row 0"]
    assert bad[0][1].problem == "not valid UTF-8: byte 0x80 in field 'response_1'"
    assert [row for _, row in read[1:]] == rows[1:3]


def test_a_lone_surrogate_escape_is_a_bad_row_not_a_crash(tmp_path, rows):
    """``\\udc80`` is valid JSON but no UTF-8 text: it used to crash the sha256 check with a UnicodeEncodeError."""
    path = tmp_path / "escaped.jsonl"
    lines = [json.dumps(row) for row in rows[:3]]
    lines[1] = lines[1].replace('"response_0": "', '"response_0": "\\udc80', 1)
    lines.append(json.dumps({**rows[3], "response_1": "smile \U0001F600"}))  # a surrogate *pair* (ensure_ascii)
    path.write_text("\n".join(lines) + "\n")
    assert "\\ud83d\\ude00" in lines[3]
    read = [row for _, row in sources.read_file(path)]
    assert isinstance(read[1], UndecodableRow) and "'response_0'" in read[1].problem
    assert read[3]["response_1"] == "smile \U0001F600"
    report = _pku(path, tmp_path, on_bad_row="skip", **ONE_SPLIT).prepare()
    assert report.splits["train"].dropped["invalid:<row>"] == 1
    _balanced(report)


def test_a_byte_order_mark_is_not_a_bad_line(tmp_path, rows):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(rows[0]).encode() + b"\n")
    assert [row for _, row in sources.read_file(path)] == [rows[0]]


# --------------------------------------------------------------------------------- empty prompts, blank responses
@pytest.fixture
def blank_file(tmp_path, rows) -> Path:
    bad = copy.deepcopy(rows)
    bad[1]["prompt"] = ""
    bad[4]["response_0"] = "  \n "
    bad[7]["response_1"] = ""
    return _write_jsonl(tmp_path / "blank_texts.jsonl", [_rehash(row) for row in bad])


@pytest.mark.parametrize("view", ["preference", "safety"])
def test_pair_views_drop_and_count_empty_prompts_and_blank_responses(tmp_path, blank_file, view):
    report = _pku(blank_file, tmp_path, view=view, **ONE_SPLIT).prepare()
    train = report.splits["train"]
    assert train.rows_read == 12 and train.kept == 9
    assert dict(train.dropped) == {"empty_prompt": 1, "empty_response": 2}
    _balanced(report)


def test_sft_view_drops_and_counts_them_per_response(tmp_path, blank_file):
    report = _pku(blank_file, tmp_path, view="sft", **ONE_SPLIT).prepare()
    train = report.splits["train"]
    # both responses of the row without a prompt, one response of each row with a blank one
    assert dict(train.dropped) == {"empty_prompt": 2, "empty_response": 2}
    assert train.kept == 2 * 12 - 4


def test_moderation_view_drops_and_counts_them_per_response(tmp_path, blank_file):
    report = _pku(blank_file, tmp_path, view="moderation", **ONE_SPLIT).prepare()
    train = report.splits["train"]
    assert train.dropped["empty_prompt"] == 2 and train.dropped["empty_response"] == 2
    assert train.kept + sum(train.dropped.values()) == 2 * 12


def test_prompts_view_drops_an_empty_prompt(tmp_path, blank_file):
    report = _pku(blank_file, tmp_path, view="prompts", **ONE_SPLIT).prepare()
    assert report.splits["train"].dropped["empty_prompt"] == 1
    _balanced(report)


def _beavertails_row(prompt: str, response: str, unsafe: bool = False) -> dict:
    category = {name: False for name in BEAVERTAILS_CATEGORIES}
    category["privacy_violation"] = unsafe
    return {"prompt": prompt, "response": response, "category": category, "is_safe": not unsafe}


def test_beavertails_drops_empty_prompts_and_blank_responses_and_notes_repeats(tmp_path):
    rows = [_beavertails_row(f"Question {i}?", f"Answer number {i}.", unsafe=i % 2 == 1) for i in range(6)]
    rows += [_beavertails_row(" ", "An answer."), _beavertails_row("Question?", "\t"), rows[0], rows[3]]
    path = _write_jsonl(tmp_path / "beavertails.jsonl", rows)
    dm = BeaverTailsDataModule(tokenizer="tiny", source=str(path), prepared_dir=str(tmp_path / "prepared"),
                               num_workers=0, max_length=64, **ONE_SPLIT)
    train = dm.prepare().splits["train"]
    assert dict(train.dropped) == {"empty_prompt": 1, "empty_response": 1}
    assert train.notes["duplicate_rows"] == 2  # kept (separate annotations in the 330k release), but counted
    assert train.rows_read == 10 and train.kept == 8


# ------------------------------------------------------------------------------------------------ tree pairs
def _tree_row(i: int, **changes) -> dict:
    row = {"pair_id": f"p{i}", "prompt": f"How do I do task {i}?", "response_0": f"Carefully, step {i}.",
           "response_1": f"Quickly, step {i}.", "better_response_id": i % 2, "safer_response_id": 0,
           "is_response_0_safe": True, "is_response_1_safe": i % 3 != 0, "tree_id": f"t{i}", "lca_depth": 1}
    return {**row, **changes}


def _tree(path, tmp_path, **kwargs) -> TreePreferenceDataModule:
    return TreePreferenceDataModule(tokenizer="tiny", source=str(path), prepared_dir=str(tmp_path / "prepared"),
                                    num_workers=0, max_length=64, val_fraction=0.0, test_split=None, **kwargs)


@pytest.mark.parametrize("view", ["preference", "safety"])
def test_tree_pairs_drop_blank_texts_and_repeated_pairs(tmp_path, view):
    rows = [_tree_row(i) for i in range(8)]
    rows += [
        _tree_row(8, prompt=""),
        _tree_row(9, response_1=" "),
        _tree_row(2, pair_id="p2-again"),  # the same pair, labels and depth, under another pair id
        _tree_row(5),  # the same row
        _tree_row(6, response_0="A different answer."),  # the same prompt with another response: not a repeat
    ]
    path = _write_jsonl(tmp_path / "pairs.jsonl", rows)
    train = _tree(path, tmp_path, view=view).prepare().splits["train"]
    assert dict(train.dropped) == {"empty_prompt": 1, "empty_response": 1, "duplicate_pair": 2}
    assert train.notes["duplicate_rows"] == 1
    assert train.rows_read == 13 and train.kept == 9


# ----------------------------------------------------------------------------------------------- repeated rows
@pytest.fixture
def repeated_file(tmp_path, rows) -> Path:
    other_responses = _rehash({**copy.deepcopy(rows[5]), "prompt": rows[0]["prompt"]})
    extra = [
        copy.deepcopy(rows[0]),  # the same row again
        _swapped(rows[1]),  # the same pair, responses in the other order, labels swapped with them
        other_responses,  # the prompt of row 0 with other responses: PKU-SafeRLHF has many such rows, kept
    ]
    return _write_jsonl(tmp_path / "repeated.jsonl", rows + extra)


@pytest.mark.parametrize("view", ["preference", "safety"])
def test_pair_views_drop_and_count_repeated_pairs(tmp_path, repeated_file, view):
    report = _pku(repeated_file, tmp_path, view=view, **ONE_SPLIT).prepare()
    train = report.splits["train"]
    assert train.rows_read == 15 and train.kept == 13
    assert dict(train.dropped) == {"duplicate_pair": 2}
    assert train.notes["duplicate_rows"] == 1
    _balanced(report)


def test_a_repeated_pair_with_other_labels_is_not_a_repeat(tmp_path, rows):
    flipped = _swapped(rows[2])
    flipped["better_response_id"] = 1 - flipped["better_response_id"]  # the other response preferred this time
    path = _write_jsonl(tmp_path / "relabelled.jsonl", rows + [flipped])
    train = _pku(path, tmp_path, view="preference", **ONE_SPLIT).prepare().splits["train"]
    assert train.kept == 13 and not train.dropped


def test_sft_view_drops_repeated_responses_and_notes_repeated_rows(tmp_path, repeated_file):
    train = _pku(repeated_file, tmp_path, view="sft", **ONE_SPLIT).prepare().splits["train"]
    # rows 0 and 1 again give 4 repeated (prompt, response) pairs; prompt 0 with row 5's responses gives 2 new ones
    assert dict(train.dropped) == {"duplicate_response": 4}
    assert train.kept == 2 * 12 + 2
    assert train.notes["duplicate_rows"] == 1


@pytest.mark.parametrize("view", ["moderation", "prompts"])
def test_other_views_note_repeated_rows(tmp_path, repeated_file, view):
    train = _pku(repeated_file, tmp_path, view=view, **ONE_SPLIT).prepare().splits["train"]
    assert train.notes["duplicate_rows"] == 1
